"""Canary analysis: counters, windows across restarts, derived values and the checks."""

from __future__ import annotations

import math
from typing import Any

import pytest

from mlops_operator.api.inferenceservice import AnalysisMetric, Counters
from mlops_operator.rollout.canary_analysis import (
    DEFAULT_METRICS,
    FAST_METRICS,
    SLOW_METRICS,
    CheckResult,
    VersionCounters,
    analyse,
    decimal_text,
    disagreement,
    is_fast,
    total_variation,
    window,
)

INF = math.inf
BUCKETS = ((0.1, 0), (0.2, 0), (0.5, 0), (INF, 0))


def hist(*counts: int, bounds: tuple[float, ...] = (0.1, 0.2, 0.5, INF)) -> tuple[tuple[float, int], ...]:
    """A cumulative histogram from per-bucket counts."""
    total, result = 0, []
    for bound, count in zip(bounds, counts, strict=True):
        total += count
        result.append((bound, total))
    return tuple(result)


def counters(
    requests: int = 0,
    errors: int = 0,
    labelled: int = 0,
    correct: int = 0,
    predictions: dict[str, int] | None = None,
    latency: tuple[tuple[float, int], ...] | None = None,
) -> VersionCounters:
    return VersionCounters(
        requests=requests,
        errors=errors,
        latency=latency if latency is not None else hist(requests, 0, 0, 0),
        predictions=predictions if predictions is not None else {"a": requests},
        labelled=labelled,
        correct=correct,
    )


SNAPSHOT: dict[str, Any] = {
    "state": "ok",
    "counters": {
        "instance": "3f2a",
        "requests": 10,
        "errors": 1,
        "latency": [[0.1, 7], [0.5, 9], ["+Inf", 10]],
        "predictions": {"setosa": 6, "virginica": 4},
        "labelled": 5,
        "correct": 4,
    },
}


# --- wire forms ----------------------------------------------------------------------------------------


def test_from_snapshot_reads_the_servers_counters_block() -> None:
    c = VersionCounters.from_snapshot(SNAPSHOT)
    assert (c.requests, c.errors, c.labelled, c.correct) == (10, 1, 5, 4)
    assert c.latency == ((0.1, 7), (0.5, 9), (INF, 10))
    assert c.predictions == {"setosa": 6, "virginica": 4}
    assert VersionCounters.from_snapshot(SNAPSHOT["counters"]) == c


def test_a_snapshot_without_counters_reads_as_zero() -> None:
    assert VersionCounters.from_snapshot({"state": "ok"}) == VersionCounters()


def test_dict_round_trip_is_camel_case_and_fits_the_status_schema() -> None:
    c = VersionCounters.from_snapshot(SNAPSHOT)
    data = c.to_dict()
    assert data["latency"][-1] == {"le": "+Inf", "count": 10}
    assert VersionCounters.from_dict(data) == c
    Counters.model_validate(data)  # what status.rollout stores


# --- arithmetic and windows ----------------------------------------------------------------------------


def test_add_sums_everything() -> None:
    a = counters(10, 1, 4, 3, {"x": 6, "y": 4}, hist(5, 3, 2, 0))
    b = counters(5, 0, 2, 2, {"y": 5}, hist(1, 1, 1, 2))
    total = a + b
    assert (total.requests, total.errors, total.labelled, total.correct) == (15, 1, 6, 5)
    assert total.predictions == {"x": 6, "y": 9}
    assert total.latency == hist(6, 4, 3, 2)


def test_add_merges_different_bucket_layouts_conservatively() -> None:
    a = VersionCounters(latency=((0.1, 2), (INF, 4)))
    b = VersionCounters(latency=((0.2, 1), (INF, 1)))
    assert (a + b).latency == ((0.1, 2), (0.2, 3), (INF, 5))


@pytest.mark.parametrize(
    ("current", "baseline", "expected"),
    [
        (counters(30, 3, 10, 9), counters(10, 1, 4, 4), counters(20, 2, 6, 5)),
        (counters(5, 0, 1, 1), counters(10, 1, 4, 4), counters(5, 0, 1, 1)),  # restarted: all new
        (counters(10, 1, 4, 4), counters(10, 1, 4, 4), counters(0, 0, 0, 0)),
        (counters(10, 1, 2, 1), VersionCounters(), counters(10, 1, 2, 1)),
    ],
    ids=["increase", "counter-reset", "no-change", "from-zero"],
)
def test_since(current: VersionCounters, baseline: VersionCounters, expected: VersionCounters) -> None:
    assert current.since(baseline) == expected


def test_a_reset_is_seen_in_any_counter() -> None:
    before = counters(10, 0, 0, 0, {"a": 10})
    after = counters(12, 0, 0, 0, {"a": 2, "b": 10})  # class counts went down: a new process
    assert after.since(before) == after


def test_window_sums_instances_and_handles_new_and_restarted_ones() -> None:
    baseline = [("pod-a", counters(100, 1)), ("pod-b", counters(50, 0)), ("gone", counters(70, 7))]
    current = [
        ("pod-a", counters(130, 2)),  # +30 requests, +1 error
        ("pod-b", counters(20, 1)),  # reset: 20 requests, 1 error are new
        ("pod-c", counters(10, 0)),  # started since: all new
    ]
    w = window(current, baseline)
    assert (w.requests, w.errors) == (60, 2)
    assert window([], baseline) == VersionCounters()


# --- derived values --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("latency", "q", "expected"),
    [
        (hist(10, 0, 0, 0), 0.5, 0.05),  # inside the first bucket, which starts at 0
        (hist(50, 50, 0, 0), 0.99, 0.198),  # 99th of 100 in (0.1, 0.2]
        (hist(0, 0, 100, 0), 0.99, 0.2 + 0.3 * 0.99),
        (hist(90, 0, 0, 10), 0.99, 0.5),  # in the +Inf bucket: the largest finite bound
        ((), 0.99, None),
        (BUCKETS, 0.99, None),
    ],
    ids=["first-bucket", "interpolated", "third-bucket", "inf-bucket", "no-histogram", "no-observations"],
)
def test_latency_quantile_like_prometheus(
    latency: tuple[tuple[float, int], ...], q: float, expected: float | None
) -> None:
    value = VersionCounters(latency=latency).latency_quantile(q)
    assert value == (pytest.approx(expected) if expected is not None else None)


def test_rates_and_distribution() -> None:
    c = counters(200, 4, 50, 45, {"a": 150, "b": 50})
    assert c.error_rate == 0.02 and c.accuracy == 0.9
    assert c.class_distribution() == {"a": 0.75, "b": 0.25}
    empty = VersionCounters()
    assert empty.error_rate is None and empty.accuracy is None and empty.class_distribution() == {}


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ({"x": 10}, {"x": 30}, 0.0),
        ({"x": 10}, {"y": 10}, 1.0),
        ({"x": 50, "y": 50}, {"x": 80, "y": 20}, 0.3),
        ({"x": 1}, {}, None),
    ],
    ids=["same", "disjoint", "shifted", "no-stable-predictions"],
)
def test_disagreement_is_total_variation(
    a: dict[str, int], b: dict[str, int], expected: float | None
) -> None:
    value = disagreement(VersionCounters(predictions=a), VersionCounters(predictions=b))
    assert value == (pytest.approx(expected) if expected is not None else None)


def test_total_variation_is_symmetric() -> None:
    p, q = {"a": 0.2, "b": 0.8}, {"a": 0.5, "c": 0.5}
    assert total_variation(p, q) == total_variation(q, p) == pytest.approx(0.8)


# --- checks ------------------------------------------------------------------------------------------------


def metric(name: str, **bounds: str) -> AnalysisMetric:
    return AnalysisMetric.model_validate({"name": name, **bounds})


STABLE = counters(5000, 10, 2000, 1800, {"a": 2500, "b": 2500}, hist(4000, 900, 100, 0))


@pytest.mark.parametrize(
    ("spec", "candidate", "drift", "verdict", "words"),
    [
        (
            metric("error-rate", max="0.01"),
            counters(1000, 5),
            None,
            "Pass",
            ["0.005", "<= max 0.01", "1000 requests"],
        ),
        (
            metric("error-rate", max="0.01"),
            counters(1000, 50),
            None,
            "Fail",
            ["0.05", "> max 0.01", "1000 requests"],
        ),
        (metric("error-rate", max="0.01"), counters(20, 5), None, "NoData", ["20 requests", "need 100"]),
        (
            metric("error-rate", maxIncreaseVsStable="0.005"),
            counters(2000, 60),
            None,
            "Fail",
            ["0.03 vs stable 0.002", "maxIncreaseVsStable 0.005", "2000 candidate"],
        ),
        (
            metric("error-rate", maxIncreaseVsStable="0.005"),
            counters(2000, 6),
            None,
            "Pass",
            ["not significantly"],
        ),
        (
            metric("latency-p99", max="0.25"),
            counters(1000, latency=hist(990, 10, 0, 0)),
            None,
            "Pass",
            ["0.1"],
        ),
        (
            metric("latency-p99", max="0.25"),
            counters(1000, latency=hist(0, 0, 1000, 0)),
            None,
            "Fail",
            ["> max 0.25"],
        ),
        (
            metric("latency-p99", maxIncreaseVsStable="0.05"),
            counters(1000, latency=hist(0, 0, 1000, 0)),
            None,
            "Fail",
            ["vs stable", "maxIncreaseVsStable 0.05"],
        ),
        (
            metric("accuracy", min="0.9"),
            counters(1000, labelled=250, correct=200),
            None,
            "Fail",
            ["0.8 < min 0.9", "250"],
        ),
        (
            metric("accuracy", min="0.9"),
            counters(1000, labelled=250, correct=240),
            None,
            "Pass",
            [">= min 0.9"],
        ),
        (
            metric("accuracy", min="0.9"),
            counters(1000, labelled=50, correct=50),
            None,
            "NoData",
            ["50 labelled", "need 200"],
        ),
        (
            metric("accuracy", maxDropVsStable="0.02"),
            counters(1000, labelled=1000, correct=750),
            None,
            "Fail",
            ["0.75 vs stable 0.9", "maxDropVsStable 0.02", "1000 candidate"],
        ),
        (
            metric("accuracy", maxDropVsStable="0.02"),
            counters(1000, labelled=300, correct=268),
            None,
            "Pass",
            ["not significantly"],
        ),
        (metric("drift-share", max="0.5"), counters(1000), 0.75, "Fail", ["0.75 > max 0.5"]),
        (metric("drift-share", max="0.5"), counters(1000), 0.25, "Pass", ["0.25 <= max 0.5"]),
        (metric("drift-share", max="0.5"), counters(1000), None, "NoData", ["no drift share"]),
        (
            metric("disagreement", max="0.2"),
            counters(1000, predictions={"a": 900, "b": 100}),
            None,
            "Fail",
            ["0.4 > max 0.2", "1000 predictions"],
        ),
        (
            metric("disagreement", max="0.2"),
            counters(1000, predictions={"a": 500, "b": 500}),
            None,
            "Pass",
            ["0 <= max"],
        ),
        (
            metric("disagreement", max="0.2"),
            counters(10, predictions={"a": 10}),
            None,
            "NoData",
            ["need 100"],
        ),
    ],
    ids=[
        "error-rate-max-pass",
        "error-rate-max-fail",
        "error-rate-no-data",
        "error-rate-vs-stable-fail",
        "error-rate-vs-stable-noise",
        "latency-pass",
        "latency-fail",
        "latency-vs-stable-fail",
        "accuracy-min-fail",
        "accuracy-min-pass",
        "accuracy-no-labels",
        "accuracy-vs-stable-fail",
        "accuracy-vs-stable-noise",
        "drift-fail",
        "drift-pass",
        "drift-no-data",
        "disagreement-fail",
        "disagreement-pass",
        "disagreement-no-data",
    ],
)
def test_checks(
    spec: AnalysisMetric, candidate: VersionCounters, drift: float | None, verdict: str, words: list[str]
) -> None:
    [result] = analyse([spec], candidate, STABLE, drift, min_requests=100, min_samples=200, alpha=0.05)
    assert result.verdict == verdict, result.message
    assert result.metric == spec.name
    for word in words:
        assert word in result.message, result.message
    if verdict == "NoData":
        assert result.value is None


def test_one_result_per_bound_with_bound_text() -> None:
    results = analyse(
        [metric("error-rate", max="0.01", maxIncreaseVsStable="0.005")],
        counters(1000, 3),
        STABLE,
        None,
        min_requests=100,
        min_samples=200,
    )
    assert [r.bound for r in results] == ["max 0.01", "maxIncreaseVsStable 0.005"]
    assert all(r.samples == 1000 for r in results)


def test_default_metrics_compare_with_stable() -> None:
    results = analyse(None, counters(1000, 1), STABLE, None, min_requests=100, min_samples=200)
    assert [(r.metric, r.bound) for r in results] == [
        ("error-rate", "maxIncreaseVsStable 0.01"),
        ("accuracy", "maxDropVsStable 0.02"),
    ]
    assert [m.name for m in DEFAULT_METRICS] == ["error-rate", "accuracy"]


def test_no_data_is_never_a_pass_even_with_zero_minimums() -> None:
    results = analyse(
        [metric("error-rate", max="0.01"), metric("accuracy", min="0.5")],
        VersionCounters(),
        VersionCounters(),
        None,
        min_requests=0,
        min_samples=0,
    )
    assert [r.verdict for r in results] == ["NoData", "NoData"]


def test_fast_and_slow_signals() -> None:
    assert sorted(FAST_METRICS) == ["disagreement", "drift-share", "error-rate", "latency-p99"]
    assert sorted(SLOW_METRICS) == ["accuracy"]
    assert is_fast("error-rate") and not is_fast("accuracy")
    result = CheckResult("accuracy", 0.8, "min 0.9", 300, "Fail", "accuracy 0.8 < min 0.9 over 300")
    assert not result.fast


def test_check_result_status_form() -> None:
    result = CheckResult(
        "error-rate", 0.0123456789, "max 0.01", 1000, "Fail", "error-rate 0.01235 > max 0.01"
    )
    assert result.to_dict() == {
        "metric": "error-rate",
        "value": "0.012346",
        "bound": "max 0.01",
        "samples": 1000,
        "verdict": "Fail",
        "message": "error-rate 0.01235 > max 0.01",
    }
    no_data = CheckResult("accuracy", None, "min 0.9", 3, "NoData", "accuracy: 3 labelled")
    assert "value" not in no_data.to_dict()


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.5, "0.5"), (3.0, "3"), (-0.02, "-0.02"), (1e-9, "0"), (-1e-9, "0"), (0.0001234, "0.000123")],
    ids=["half", "integral", "negative", "tiny", "tiny-negative", "small"],
)
def test_decimal_text_matches_the_api_pattern(value: float, text: str) -> None:
    assert decimal_text(value) == text
