"""The operator's run and retrain metrics: bounded labels, durations, and series removed on delete."""

from __future__ import annotations

import datetime as dt

import pytest
from prometheus_client import Metric

from mlops_operator.api.inferenceservice import Retraining
from mlops_operator.controllers import operator_metrics as m
from mlops_operator.rollout import retraining

NS, NAME = "metrics-test", "iris"


def _value(metric: str, **labels: str) -> float | None:
    value = m.REGISTRY.get_sample_value(metric, labels)
    return value


def _series(family_name: str) -> list[dict[str, str]]:
    families: list[Metric] = [f for f in m.REGISTRY.collect() if f.name == family_name]
    return [dict(s.labels) for f in families for s in f.samples if s.labels.get("namespace") == NS]


@pytest.mark.parametrize(
    ("triggers", "drift", "accuracy_low", "label"),
    [
        (["Drift"], True, False, "Drift"),
        (["AccuracyDrop"], False, True, "AccuracyDrop"),
        (["Drift", "AccuracyDrop"], True, True, "DriftAndAccuracyDrop"),
    ],
    ids=["drift", "accuracy", "both"],
)
def test_retrain_reason_labels_come_from_the_decisions_sentences(
    triggers: list[str], drift: bool, accuracy_low: bool, label: str
) -> None:
    spec = Retraining.model_validate({"trainingJob": "t", "triggers": triggers, "driftMinPeriods": 1})
    now = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)
    decision = retraining.decide(spec, [], drift=drift, accuracy_low=accuracy_low, last_retrain=None, now=now)
    assert decision.reason is not None
    assert m.retrain_reason(decision.reason) == label


def test_retrains_are_counted_and_forgotten() -> None:
    m.record_retrain_requested(NS, NAME, "drift in 3 of the last 5 checks")
    m.record_retrain_requested(NS, NAME, "drift in 4 of the last 5 checks")
    assert _value("mlops_retrains_requested_total", namespace=NS, name=NAME, reason="Drift") == 2
    m.forget_retrain_metrics(NS, NAME)
    assert _series("mlops_retrains_requested") == []


def test_finished_runs_are_counted_with_their_duration_and_forgotten() -> None:
    started = "2025-03-01T10:00:00Z"
    m.record_run_finished(
        NS,
        NAME,
        {
            "phase": "Succeeded",
            "reason": "Succeeded",
            "startTime": started,
            "completionTime": "2025-03-01T10:01:30Z",
        },
    )
    m.record_run_finished(
        NS, NAME, {"phase": "Failed", "reason": "DataValidationFailed"}
    )  # no times: no duration
    assert (
        _value(
            "mlops_trainingjob_runs_total", namespace=NS, name=NAME, result="succeeded", reason="Succeeded"
        )
        == 1
    )
    labels = {"namespace": NS, "name": NAME, "result": "failed", "reason": "DataValidationFailed"}
    assert _value("mlops_trainingjob_runs_total", **labels) == 1
    duration = {"namespace": NS, "name": NAME, "result": "succeeded"}
    assert _value("mlops_trainingjob_run_duration_seconds_sum", **duration) == 90
    assert _value("mlops_trainingjob_run_duration_seconds_count", **duration) == 1
    m.forget_trainingjob_metrics(NS, NAME)
    assert _series("mlops_trainingjob_runs") == []
    assert _series("mlops_trainingjob_run_duration_seconds") == []
