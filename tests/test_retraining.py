"""When a degraded model gets retrained: drift in 3 of the last 5 checks, low accuracy, cooldown."""

from __future__ import annotations

import datetime as dt

import pytest

from mlops_operator.api.inferenceservice import Retraining
from mlops_operator.rollout.retraining import decide

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
SPEC = Retraining.model_validate({"trainingJob": "iris-train", "cooldown": "1h"})


@pytest.mark.parametrize(
    ("history", "drift", "reason"),
    [
        ([], True, None),
        ([True, False], True, None),
        ([True, False, True], True, "drift in 3 of the last 4 checks"),
        ([True, True, False, False, False], True, None),  # the oldest True falls out of the window of 5
        ([True, True, False, False], None, None),  # no verdict (too little data) counts for nothing
    ],
    ids=["one-check", "two-of-three", "three-of-four", "window-slides", "no-verdict"],
)
def test_drift_in_three_of_the_last_five_checks(
    history: list[bool], drift: bool | None, reason: str | None
) -> None:
    decision = decide(SPEC, history, drift=drift, accuracy_low=None, last_retrain=None, now=NOW)
    assert decision.reason == reason
    assert len(decision.history) <= 5


def test_low_accuracy_retrains_at_once_and_resets_the_count() -> None:
    decision = decide(SPEC, [True], drift=False, accuracy_low=True, last_retrain=None, now=NOW)
    assert decision.reason == "accuracy below monitoring.accuracy.min" and decision.history == []


def test_cooldown_holds_a_wanted_retrain() -> None:
    recent = NOW - dt.timedelta(minutes=20)
    decision = decide(SPEC, [True, True], drift=True, accuracy_low=True, last_retrain=recent, now=NOW)
    assert decision.reason is None and "cooldown until 2026-03-01T12:40:00+00:00" in (decision.waiting or "")
    later = decide(
        SPEC, [True, True], drift=True, accuracy_low=None, last_retrain=NOW - dt.timedelta(hours=2), now=NOW
    )
    assert later.reason is not None


def test_triggers_choose_what_counts() -> None:
    only_accuracy = Retraining.model_validate({"trainingJob": "t", "triggers": ["AccuracyDrop"]})
    assert (
        decide(only_accuracy, [True, True], drift=True, accuracy_low=False, last_retrain=None, now=NOW).reason
        is None
    )
