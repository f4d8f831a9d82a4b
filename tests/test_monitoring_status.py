"""Combining the replicas' monitoring snapshots into the InferenceService status."""

from __future__ import annotations

from typing import Any

import pytest

from mlops_operator.api.inferenceservice import Monitoring
from mlops_operator.monitoring.monitoring_summary import summarize

SPEC = Monitoring.model_validate(
    {"drift": {"minSamples": 100, "driftShare": "0.5"}, "accuracy": {"min": "0.85"}}
)


def snap(
    rows: int,
    share: float | None,
    labelled: int = 0,
    accuracy: float | None = None,
    drifted: tuple[str, ...] = (),
) -> dict[str, Any]:
    return {
        "window_samples": rows,
        "drift_share": share,
        "labelled_samples": labelled,
        "accuracy": accuracy,
        "drifted_features": list(drifted),
    }


@pytest.mark.parametrize(
    ("snapshots", "state", "drift"),
    [
        ([], "Unknown", None),
        ([snap(40, 1.0), snap(40, 1.0)], "InsufficientData", None),
        ([snap(60, 0.25), snap(60, 0.25)], "Ok", False),
        ([snap(300, 0.75, drifted=("a", "b")), snap(100, 0.25, drifted=("a",))], "Drift", True),
        ([snap(100, 0.0), snap(300, 0.75)], "Drift", True),
    ],
    ids=["no-replica-answered", "too-few-rows", "no-drift", "drift-weighted-by-rows", "one-replica-drifts"],
)
def test_drift_is_weighted_by_each_replicas_rows(
    snapshots: list[dict[str, Any]], state: str, drift: bool | None
) -> None:
    summary = summarize(snapshots, SPEC)
    assert summary["status"]["state"] == state and summary["drift"] is drift


def test_drift_share_and_features_are_reported() -> None:
    summary = summarize([snap(300, 0.75, drifted=("b", "a")), snap(100, 0.25, drifted=("a",))], SPEC)
    assert summary["status"]["driftShare"] == "0.625"
    assert summary["status"]["driftedFeatures"] == ["a", "b"]
    assert summary["status"]["samples"] == 400


def test_accuracy_is_weighted_by_labelled_outcomes() -> None:
    summary = summarize(
        [snap(10, None, labelled=300, accuracy=0.9), snap(10, None, labelled=100, accuracy=0.5)], SPEC
    )
    assert summary["status"]["accuracy"] == "0.8" and summary["accuracyLow"] is True
    assert summarize([snap(10, None)], SPEC)["accuracyLow"] is None
