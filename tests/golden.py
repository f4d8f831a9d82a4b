"""Golden files: a builder's output compared with a reviewed YAML file in tests/data/golden/.

A missing or different golden file fails the test, on every machine. ``UPDATE_GOLDEN=1 pytest``
writes the files instead (and passes); the diff is then reviewed like any code change. The
helper never passes by writing the file it compares against unless asked to.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

GOLDEN = Path(__file__).parent / "data" / "golden"


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def assert_golden(name: str, objects: Any) -> None:
    """Assert that ``objects`` equal the YAML in ``GOLDEN / name``; with UPDATE_GOLDEN=1, write it."""
    path = GOLDEN / name
    text = yaml.dump(objects, Dumper=_NoAliases, sort_keys=True, width=120)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text)
        return
    if not path.exists():
        raise AssertionError(f"golden file {path} is missing; UPDATE_GOLDEN=1 to write it, then review it")
    assert yaml.safe_load(path.read_text()) == yaml.safe_load(text), (
        f"{name} differs from {path}; UPDATE_GOLDEN=1 to accept, then review the diff"
    )
