"""The README's first command: `make demo` runs `mlops-operator demo`, and every stage must happen.

In a module of its own: the sandbox's pod and Service address pools are per machine, so no
other sandbox may be running while it does.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mlops_operator.sandbox import manager

pytestmark = pytest.mark.slow


@pytest.mark.timeout(900)
def test_demo_tells_the_whole_story(tmp_path: Path) -> None:
    """`make demo` runs `mlops-operator demo`: every stage must happen."""
    directory = tmp_path / "demo"
    try:
        result = subprocess.run(
            [sys.executable, "-m", "mlops_operator.cli", "demo", "--dir", str(directory)],
            capture_output=True, text=True, timeout=840, check=False,
        )  # fmt: skip
    finally:
        manager.down(directory)  # whatever happened, leave no process behind
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    out = result.stdout
    assert out.count("✓") >= 12 and "✗" not in out
    assert "retrain requested: " in out
    assert "version 2 went 10% -> 25% -> 50% -> promoted" in out
    assert (
        "version 3 rolled back at " in out and "accuracy" in out.split("version 3 rolled back at ")[1][:400]
    )
    assert "DriftDetected=True" in out and "Degraded=True(AccuracyBelowThreshold)" in out
    assert "Done: every stage happened." in out
    assert "every process the sandbox started is stopped" in out
