"""The README's first command: `make demo` runs `mlops-operator demo`, and every stage must happen.

In a module of its own: the sandbox's pod and Service address pools are per machine, so no
other sandbox may be running while it does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

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
    assert "labelled production rows" in out and ": resuming iris-train" in out
    assert "live accuracy on the shifted traffic: before the retrain version 1 " in out
    assert "version 2 went 10% -> 25% -> 50% -> promoted" in out
    assert (
        "version 3 rolled back at " in out and "accuracy" in out.split("version 3 rolled back at ")[1][:400]
    )
    assert "DriftDetected=True" in out and "Degraded=True(AccuracyBelowThreshold)" in out
    assert "Done: every stage happened." in out
    assert "every process the sandbox started is stopped" in out
    check_report(directory / "report", out)


#: The demo's stages, in order, as timeline.json names them.
STAGES = [
    "train",
    "validate",
    "serve",
    "predict",
    "steady",
    "skewed",
    "retrain",
    "canary",
    "bad_candidate",
    "recover",
]


def check_report(report: Path, out: str) -> None:
    """The report folder: its path on the last line, timeline.json with every stage, a PNG."""
    assert (
        out.strip().splitlines()[-1]
        == f"Report: {report.resolve()}/timeline.json and {report.resolve()}/demo.png"
    )
    timeline = json.loads((report / "timeline.json").read_text())
    assert timeline["outcome"] == "passed"
    stages = {stage["key"]: stage for stage in timeline["stages"]}
    assert [key for key in stages if key in STAGES] == STAGES
    for key in STAGES:
        stage = stages[key]
        assert stage["outcome"] == "passed" and 0 <= stage["start"] <= stage["end"], stage
        assert stage["numbers"], f"stage {key} recorded no numbers"
    assert stages["canary"]["numbers"]["stepWeights"] == [10, 25, 50]
    check_loop_closed(timeline, stages)
    assert stages["bad_candidate"]["numbers"]["rolledBack"] == "AnalysisFailed"
    kinds = {event["kind"] for event in timeline["events"]}
    assert {"retrain-requested", "version-validated", "canary-step", "promoted", "rolled-back"} <= kinds
    served = {s["version"] for sample in timeline["samples"] for s in sample["served"]}
    assert {"1", "2", "3"} <= served, "the samples show every version that served traffic"
    assert any(sample["accuracy"] is not None for sample in timeline["samples"])
    assert any((sample["driftShare"] or 0) > 0.5 for sample in timeline["samples"])
    png = (report / "demo.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000


def check_loop_closed(timeline: dict[str, Any], stages: dict[str, dict[str, Any]]) -> None:
    """Version 2 was trained on the captured labels and beats version 1 on the shifted traffic."""
    retrain = stages["retrain"]["numbers"]
    steady_rows, skewed_rows = 300, 900  # 30 and 90 requests of 10 labelled rows
    assert retrain["trigger"] == "Retrain" and retrain["sources"]["dataset"] == 150
    # The ModelVersion's lineage: every label sent before the retrain came from production.
    assert retrain["sources"]["production"] == steady_rows + skewed_rows, retrain
    assert retrain["production"]["uri"] == stages["serve"]["numbers"]["capture"]
    assert retrain["production"]["firstRequestTime"] <= retrain["production"]["lastRequestTime"]
    # Before: the old version on the shifted traffic; it is wrong on most of it.
    before = stages["skewed"]["numbers"]["liveAccuracy"]["1"]
    assert before["labelled"] == skewed_rows and before["accuracy"] < 0.6, before
    # After: both versions on the same shifted requests during the canary.
    live = stages["canary"]["numbers"]["liveAccuracy"]
    assert live["1"]["labelled"] >= 50 and live["2"]["labelled"] >= 50, live
    assert live["2"]["accuracy"] >= 0.9 and live["2"]["accuracy"] - live["1"]["accuracy"] >= 0.1, live
    assert stages["canary"]["numbers"]["analysis"].startswith("accuracy ")
    recorded = timeline["liveAccuracy"]
    assert recorded["margin"] == 0.1
    assert recorded["before"]["version"] == "1" and recorded["after"]["version"] == "2"
    assert recorded["after"]["accuracy"] == live["2"]["accuracy"]
