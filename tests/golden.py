"""Golden files: a builder's output compared with a reviewed YAML file.

``UPDATE_GOLDEN=1 pytest`` rewrites them; the diff is then reviewed like any code change.
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
    path = GOLDEN / name
    text = yaml.dump(objects, Dumper=_NoAliases, sort_keys=True, width=120)
    if os.environ.get("UPDATE_GOLDEN") == "1" or not path.exists():
        if os.environ.get("CI") == "true" and not path.exists():
            raise AssertionError(f"golden file {path} is missing")
        path.write_text(text)
    assert yaml.safe_load(path.read_text()) == yaml.safe_load(text), (
        f"{name} differs; UPDATE_GOLDEN=1 to accept"
    )
