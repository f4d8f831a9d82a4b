"""Content digests shared by the trainer (which records them) and the server (which verifies)."""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20


def directory_sha256(path: str | Path) -> str:
    """A deterministic sha256 of a directory tree (or a single file).

    The digest covers every regular file's path relative to ``path`` and its bytes, in sorted
    order, so it is the same wherever the artifacts were downloaded to. An MLflow model is a
    directory (``MLmodel``, the pickled estimator, environment files), hence a tree digest
    rather than a file digest.
    """
    root = Path(path)
    digest = hashlib.sha256()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for file in files:
        relative = file.name if file == root else file.relative_to(root).as_posix()
        digest.update(relative.encode() + b"\0")
        with file.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()
