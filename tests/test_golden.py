"""The golden-file helper itself: it fails on a missing or different file, and writes only when asked."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests import golden

OBJECTS = [{"kind": "Service", "metadata": {"name": "iris"}, "spec": {"ports": [{"port": 80}]}}]


@pytest.fixture
def golden_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(golden, "GOLDEN", tmp_path)
    monkeypatch.delenv("UPDATE_GOLDEN", raising=False)
    return tmp_path


@pytest.mark.parametrize("ci", [None, "true"], ids=["local", "ci"])
def test_missing_golden_fails_and_writes_nothing(
    golden_dir: Path, monkeypatch: pytest.MonkeyPatch, ci: str | None
) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(AssertionError, match="missing"):
        golden.assert_golden("new.yaml", OBJECTS)
    assert not (golden_dir / "new.yaml").exists()


def test_matching_golden_passes_whatever_its_formatting(golden_dir: Path) -> None:
    (golden_dir / "same.yaml").write_text(yaml.safe_dump(OBJECTS, default_flow_style=True))
    golden.assert_golden("same.yaml", OBJECTS)


def test_different_golden_fails_and_is_kept(golden_dir: Path) -> None:
    reviewed = yaml.safe_dump([{"kind": "Service", "metadata": {"name": "other"}}])
    (golden_dir / "old.yaml").write_text(reviewed)
    with pytest.raises(AssertionError, match="differs"):
        golden.assert_golden("old.yaml", OBJECTS)
    assert (golden_dir / "old.yaml").read_text() == reviewed


@pytest.mark.parametrize("existing", [None, "- stale\n"], ids=["missing", "different"])
def test_update_golden_writes_and_passes(
    golden_dir: Path, monkeypatch: pytest.MonkeyPatch, existing: str | None
) -> None:
    if existing is not None:
        (golden_dir / "out.yaml").write_text(existing)
    monkeypatch.setenv("UPDATE_GOLDEN", "1")
    golden.assert_golden("out.yaml", OBJECTS)
    assert yaml.safe_load((golden_dir / "out.yaml").read_text()) == OBJECTS
    monkeypatch.delenv("UPDATE_GOLDEN")
    golden.assert_golden("out.yaml", OBJECTS)  # what was written is what a plain run compares with
