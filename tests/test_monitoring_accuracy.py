"""Feedback join, rolling accuracy / error, predicted class distribution (monitoring.accuracy)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mlops_operator.monitoring.accuracy import (
    MAX_DYNAMIC_CLASSES,
    OTHER_CLASS,
    ClassWindow,
    FeedbackJoin,
    OutcomeWindow,
    PredictionStore,
    class_distribution,
    label_key,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("setosa", "setosa", id="str"),
        pytest.param(1, "1", id="int"),
        pytest.param(np.int64(1), "1", id="numpy-int"),
        pytest.param(1.0, "1", id="integral-float"),
        pytest.param(np.float32(2.0), "2", id="numpy-float"),
        pytest.param(0.5, "0.5", id="fraction"),
        pytest.param(True, "True", id="bool"),
        pytest.param(b"yes", "yes", id="bytes"),
    ],
)
def test_label_key(value: object, expected: str) -> None:
    assert label_key(value) == expected


def _join(
    task: str = "classification", *, size: int = 100, ttl: float = 60.0, window: int = 10
) -> FeedbackJoin:
    return FeedbackJoin(task, PredictionStore(size, ttl), OutcomeWindow(window))  # type: ignore[arg-type]


def test_feedback_matched_and_accuracy() -> None:
    join = _join()
    join.record(["a", "b", "c", "d"], ["1", "0", "1", "1"], now=0.0)
    labels: list[tuple[str, str | float]] = [("a", 1), ("b", "1"), ("c", 1.0), ("d", "0")]
    assert [join.feedback(i, label, now=1.0) for i, label in labels] == ["matched"] * 4
    stats = join.stats()
    assert (stats.labelled, stats.accuracy) == (4, 0.5)
    assert join.results == {"matched": 4, "unknown": 0, "duplicate": 0}


def test_feedback_unknown_counts_nothing() -> None:
    join = _join()
    join.record(["a"], ["1"], now=0.0)
    assert join.feedback("zzz", "1", now=1.0) == "unknown"
    assert join.stats().labelled == 0
    assert join.results["unknown"] == 1


def test_feedback_expired_by_clock() -> None:
    join = _join(ttl=10.0)
    join.record(["old"], ["1"], now=0.0)
    join.record(["new"], ["1"], now=5.0)
    assert join.feedback("old", "1", now=10.5) == "unknown"  # 10.5 s old: past the TTL
    assert join.feedback("new", "1", now=10.5) == "matched"
    assert len(join.store) == 1
    assert join.stats().labelled == 1


def test_duplicate_feedback_first_wins() -> None:
    join = _join()
    join.record(["a"], ["1"], now=0.0)
    assert join.feedback("a", "1", now=1.0) == "matched"
    assert join.feedback("a", "0", now=2.0) == "duplicate"
    stats = join.stats()
    assert (stats.labelled, stats.accuracy) == (1, 1.0)
    assert join.results == {"matched": 1, "unknown": 0, "duplicate": 1}


def test_repeated_request_id_replaces_prediction() -> None:
    join = _join()
    join.record(["a"], ["1"], now=0.0)
    join.record(["a"], ["0"], now=1.0)
    assert join.feedback("a", "0", now=2.0) == "matched"
    assert join.stats().accuracy == 1.0


def test_store_is_bounded_oldest_dropped() -> None:
    store = PredictionStore(max_entries=3, ttl_seconds=100.0)
    for i in range(5):
        store.put(str(i), "x", now=float(i))
    assert len(store) == 3
    assert store.claim("0", now=5.0)[0] == "unknown"
    assert store.claim("1", now=5.0)[0] == "unknown"
    assert store.claim("4", now=5.0) == ("matched", "x")


def test_accuracy_window_keeps_last_outcomes() -> None:
    join = _join(window=3)
    ids = [str(i) for i in range(5)]
    join.record(ids, ["1"] * 5, now=0.0)
    for request_id, label in zip(ids, ["0", "0", "1", "1", "1"], strict=True):
        join.feedback(request_id, label, now=1.0)
    stats = join.stats()
    assert (stats.labelled, stats.accuracy) == (3, 1.0)


def test_regression_rmse_mae() -> None:
    join = _join("regression")
    predictions = [1.0, 2.0, 3.0, 4.0]
    truths = [1.5, 1.0, 3.0, 6.0]
    join.record(["a", "b", "c", "d"], predictions, now=0.0)
    for request_id, truth in zip("abcd", truths, strict=True):
        assert join.feedback(request_id, str(truth), now=1.0) == "matched"
    errors = np.asarray(predictions) - np.asarray(truths)
    stats = join.stats()
    assert stats.rmse == pytest.approx(math.sqrt(np.mean(errors**2)))
    assert stats.mae == pytest.approx(np.mean(np.abs(errors)))
    assert stats.mean_error == pytest.approx(np.mean(errors))
    assert stats.accuracy is None


@pytest.mark.parametrize("label", [pytest.param("abc", id="text"), pytest.param(float("nan"), id="nan")])
def test_regression_bad_label_rejected_without_side_effects(label: str | float) -> None:
    join = _join("regression")
    join.record(["a"], [1.0], now=0.0)
    with pytest.raises(ValueError):
        join.feedback("a", label, now=1.0)
    assert join.feedback("a", 2.0, now=1.0) == "matched"  # the bad label did not consume the id


def test_outcome_window_empty() -> None:
    assert len(OutcomeWindow(5)) == 0
    assert _join().stats().accuracy is None


def test_class_window_counts_over_window_and_totals() -> None:
    window = ClassWindow(4, ["a", "b"])
    window.add(["a", "a", "b", "zzz", "b", "b"])
    assert window.window_counts() == {"a": 0, "b": 3, OTHER_CLASS: 1}
    assert window.totals() == {"a": 2, "b": 3, OTHER_CLASS: 1}
    assert window.rows == 4


def test_class_window_dynamic_classes_are_bounded() -> None:
    window = ClassWindow(1000, None)
    window.add([str(i) for i in range(MAX_DYNAMIC_CLASSES + 10)])
    totals = window.totals()
    assert len(totals) == MAX_DYNAMIC_CLASSES + 1
    assert totals[OTHER_CLASS] == 10


def test_class_distribution_against_reference() -> None:
    same = class_distribution({"a": 50, "b": 50}, ["a", "b"], [0.5, 0.5])
    assert same.psi == pytest.approx(0.0, abs=1e-12)
    assert same.chi_square_p_value == pytest.approx(1.0)
    assert same.ratios == {"a": 0.5, "b": 0.5}
    skewed = class_distribution({"a": 90, "b": 10}, ["a", "b"], [0.5, 0.5])
    assert skewed.psi == pytest.approx(0.4 * math.log(0.9 / 0.5) + (-0.4) * math.log(0.1 / 0.5))
    assert skewed.chi_square_p_value is not None and skewed.chi_square_p_value < 1e-10
    assert class_distribution({}, ["a"], [1.0]).psi is None
