"""OnlineMonitor end to end: config, observe/feedback/snapshot, metric exposition, threads."""

from __future__ import annotations

import json
import re
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from mlops_operator.monitoring import server_metrics
from mlops_operator.monitoring.online import MonitorConfig, OnlineMonitor
from mlops_operator.monitoring.reference_profile import ReferenceProfile
from tests.test_monitoring_drift import build_profile

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def scrape(registry: CollectorRegistry) -> Samples:
    text = generate_latest(registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(42)


@pytest.fixture
def profile(rng: np.random.Generator) -> ReferenceProfile:
    reference = np.column_stack([rng.normal(size=(5000, 3)), rng.integers(0, 3, size=5000)])
    return build_profile(
        reference, categorical={3: ["red", "green", "blue"]}, classes=["0", "1"], class_frequencies=[0.5, 0.5]
    )


def live_rows(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    return np.column_stack([rng.normal(size=(n, 3)) + shift, rng.integers(0, 3, size=n)]).astype(np.float64)


def monitor(
    profile: ReferenceProfile | None, registry: CollectorRegistry | None = None, **config: object
) -> OnlineMonitor:
    return OnlineMonitor(
        profile,
        MonitorConfig.model_validate({"window": 500, "minSamples": 100, **config}),
        "iris",
        "7",
        registry or CollectorRegistry(),
        clock=FakeClock(),
    )


# --------------------------------------------------------------------------- config


def test_config_from_crd_spelling() -> None:
    config = MonitorConfig.model_validate(
        {"method": "KS", "threshold": "0.01", "window": 1000, "driftShare": "0.3", "minSamples": 200}
    )
    assert (config.method, config.threshold, config.drift_share, config.min_samples) == ("KS", 0.01, 0.3, 200)


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        pytest.param("PSI", 0.2, id="psi"),
        pytest.param("KS", 0.05, id="ks"),
        pytest.param("ChiSquare", 0.05, id="chi"),
    ],
)
def test_config_default_threshold_per_method(method: str, expected: float) -> None:
    assert MonitorConfig.model_validate({"method": method}).effective_threshold == expected


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"method": "Wasserstein"}, id="unknown-method"),
        pytest.param({"window": 100, "minSamples": 200}, id="min-samples-above-window"),
        pytest.param({"driftShare": 0}, id="zero-share"),
        pytest.param({"predictionTtlSeconds": 0}, id="zero-ttl"),
        pytest.param({"windo": 5}, id="typo"),
    ],
)
def test_config_rejects(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        MonitorConfig.model_validate(bad)


# --------------------------------------------------------------------------- monitor


def test_snapshot_states_through_a_drift_episode(profile: ReferenceProfile, rng: np.random.Generator) -> None:
    m = monitor(profile)
    m.observe(live_rows(rng, 50), np.zeros(50, dtype=int))
    snap = m.snapshot()
    assert (snap["state"], snap["dataset_drift"], snap["window_samples"]) == ("insufficient_data", None, 50)

    m.observe(live_rows(rng, 450), rng.integers(0, 2, 450))
    assert m.snapshot()["state"] == "ok"

    m.observe(live_rows(rng, 500, shift=1.0), rng.integers(0, 2, 500))
    snap = m.snapshot()
    assert snap["state"] == "drift"
    assert snap["drifted_features"] == ["x0", "x1", "x2"]
    assert snap["drift_share"] == 0.75

    # Window eviction: 500 rows from the reference distribution push the drifted rows out.
    m.observe(live_rows(rng, 500), rng.integers(0, 2, 500))
    assert m.snapshot()["state"] == "ok"


def test_snapshot_is_json(profile: ReferenceProfile, rng: np.random.Generator) -> None:
    m = monitor(profile)
    rows = live_rows(rng, 200)
    rows[:, 3] = -1.0  # every category unseen: chi-square statistic is huge but finite
    rows[:5, 0] = np.nan
    m.observe(rows, rng.integers(0, 2, 200), [f"r{i}" for i in range(200)])
    m.feedback("r1", "1")
    snap = m.snapshot()
    text = json.dumps(snap, allow_nan=False)
    assert json.loads(text)["features"][0]["missing"] == 5
    assert snap["pending_predictions"] == 200


def test_no_reference_profile(rng: np.random.Generator) -> None:
    m = monitor(None)
    m.observe(rng.normal(size=(10, 7)), ["a"] * 10, [str(i) for i in range(10)])
    assert m.feedback("3", "a") is True
    snap = m.snapshot()
    assert snap["state"] == "no_reference"
    assert snap["accuracy"] == 1.0
    assert snap["predictions"]["total"] == {"a": 10}


def test_feedback_through_monitor_with_clock(profile: ReferenceProfile, rng: np.random.Generator) -> None:
    clock = FakeClock()
    m = OnlineMonitor(
        profile,
        MonitorConfig(prediction_ttl_seconds=30, accuracy_min_samples=2, baseline_accuracy=0.9),
        "iris",
        "7",
        CollectorRegistry(),
        clock=clock,
    )
    m.observe(live_rows(rng, 3), np.array([1, 0, 1]), ["a", "b", "c"])
    clock.now = 10.0
    assert m.feedback("a", "1") is True
    assert m.feedback("a", "1") is False  # duplicate
    assert m.feedback("nope", "1") is False  # unknown
    assert m.feedback("b", 1) is True  # wrong prediction
    clock.now = 31.0
    assert m.feedback("c", "1") is False  # expired
    snap = m.snapshot()
    assert (snap["accuracy"], snap["labelled_samples"]) == (0.5, 2)
    assert snap["feedback"] == {"matched": 2, "unknown": 2, "duplicate": 1}
    assert snap["accuracy_state"] == "degraded"  # below accuracyMin 0.85 and 0.4 below the baseline
    assert snap["accuracy_drop"] == pytest.approx(0.4)


def test_regression_monitor(rng: np.random.Generator) -> None:
    profile = build_profile(rng.normal(size=(1000, 2)), task="regression")
    m = monitor(profile)
    m.observe(rng.normal(size=(2, 2)), np.array([[1.0], [3.0]]), ["a", "b"])  # (n, 1) predictions
    assert m.feedback("a", 2.0) and m.feedback("b", "1")
    snap = m.snapshot()
    assert snap["rmse"] == pytest.approx(np.sqrt((1 + 4) / 2))
    assert snap["mae"] == pytest.approx(1.5)
    assert snap["accuracy"] is None and snap["accuracy_state"] is None
    assert snap["predictions"]["total"] == {"": 2}


@pytest.mark.parametrize(
    ("features", "predictions", "ids"),
    [
        pytest.param(np.zeros((2, 3)), np.zeros(2), [], id="wrong-feature-count"),
        pytest.param(np.zeros(4), np.zeros(1), [], id="one-dimensional"),
        pytest.param(np.zeros((2, 4)), np.zeros(3), [], id="prediction-count"),
        pytest.param(np.zeros((2, 4)), np.zeros(2), ["a"], id="id-count"),
    ],
)
def test_observe_rejects_bad_shapes(
    profile: ReferenceProfile, features: np.ndarray, predictions: np.ndarray, ids: list[str]
) -> None:
    with pytest.raises(ValueError):
        monitor(profile).observe(features, predictions, ids)


@settings(max_examples=100, deadline=None)
@given(
    rows=hnp.arrays(
        np.float64,
        st.tuples(st.integers(0, 40), st.just(4)),
        elements=st.floats(allow_nan=True, allow_infinity=True),
    ),
    label=st.sampled_from([0, 1, 7]),
)
def test_observe_never_raises_for_right_shape(rows: np.ndarray, label: int) -> None:
    profile = build_profile(
        np.column_stack([np.linspace(-1, 1, 300).reshape(100, 3), np.arange(100) % 3]),
        categorical={3: ["a", "b", "c"]},
        classes=["0", "1"],
        class_frequencies=[0.5, 0.5],
    )
    m = monitor(profile, window=50, minSamples=1)
    m.observe(rows, np.full(rows.shape[0], label), [str(i) for i in range(rows.shape[0])])
    snap = m.snapshot()
    json.dumps(snap, allow_nan=False)
    assert snap["drift_share"] is None or 0.0 <= snap["drift_share"] <= 1.0
    assert snap["window_samples"] == min(50, rows.shape[0])


def test_concurrent_observe_keeps_counts_consistent(profile: ReferenceProfile) -> None:
    m = monitor(profile, window=1000)
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        local = np.random.default_rng(seed)
        try:
            for i in range(300):
                n = int(local.integers(1, 4))
                m.observe(live_rows(local, n), local.integers(0, 2, n), [f"{seed}-{i}-{k}" for k in range(n)])
                if i % 50 == 0:
                    m.snapshot()
        except BaseException as error:  # surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    snap = m.snapshot()
    assert snap["window_samples"] == 1000
    assert all(f["samples"] + f["missing"] == 1000 for f in snap["features"])
    assert sum(snap["predictions"]["class_counts"].values()) == 1000


# --------------------------------------------------------------------------- metrics


def test_metric_exposition(profile: ReferenceProfile, rng: np.random.Generator) -> None:
    registry = CollectorRegistry()
    m = monitor(profile, registry)
    m.record_request("/predict", 200, 0.0004)
    m.record_request("/predict", 200, 0.002)
    m.record_request("/predict", 422, 0.0001)
    m.observe(live_rows(rng, 300), np.array([0, 1, 1] * 100), [str(i) for i in range(300)])
    m.feedback("0", "0")
    m.feedback("missing", "0")
    ids = {"model": "iris", "version": "7"}

    samples = scrape(registry)
    assert value(samples, "mlops_model_requests_total", **ids, endpoint="/predict", code="200") == 2
    assert value(samples, "mlops_model_requests_total", **ids, endpoint="/predict", code="422") == 1
    assert (
        value(
            samples,
            "mlops_model_request_duration_seconds_bucket",
            **ids,
            endpoint="/predict",
            code="200",
            le="0.0005",
        )
        == 1
    )
    assert (
        value(samples, "mlops_model_request_duration_seconds_count", **ids, endpoint="/predict", code="200")
        == 2
    )
    assert value(samples, "mlops_model_predictions_total", **ids, **{"class": "1"}) == 200
    assert value(samples, "mlops_model_prediction_class_ratio", **ids, **{"class": "0"}) == pytest.approx(
        1 / 3
    )
    assert value(samples, "mlops_model_drift_samples", **ids) == 300
    snap = m.snapshot()
    assert value(samples, "mlops_model_drift_share", **ids) == snap["drift_share"]
    assert value(samples, "mlops_model_dataset_drift", **ids) == 0
    first = snap["features"][0]
    assert value(samples, "mlops_model_drift_score", **ids, feature="x0", method="psi") == pytest.approx(
        first["score"]
    )
    assert value(samples, "mlops_model_feature_drifted", **ids, feature="c3", method="psi") == 0
    assert value(samples, "mlops_model_accuracy", **ids) == 1.0
    assert value(samples, "mlops_model_labelled_samples", **ids) == 1
    assert value(samples, "mlops_model_feedback_total", **ids, result="matched") == 1
    assert value(samples, "mlops_model_feedback_total", **ids, result="unknown") == 1
    assert value(samples, "mlops_model_pending_predictions", **ids) == 300
    assert "mlops_model_rmse" not in names(samples)


def test_p_values_exposed_for_ks(profile: ReferenceProfile, rng: np.random.Generator) -> None:
    registry = CollectorRegistry()
    m = monitor(profile, registry, method="KS")
    m.observe(live_rows(rng, 300), np.zeros(300, dtype=int))
    samples = scrape(registry)
    ids = {"model": "iris", "version": "7"}
    assert value(samples, "mlops_model_drift_p_value", **ids, feature="x0", method="ks") is not None
    assert value(samples, "mlops_model_drift_p_value", **ids, feature="c3", method="chisquare") is not None


def test_insufficient_data_is_absent(profile: ReferenceProfile, rng: np.random.Generator) -> None:
    registry = CollectorRegistry()
    m = monitor(profile, registry)
    m.observe(live_rows(rng, 10), np.zeros(10, dtype=int))
    found = names(scrape(registry))
    assert "mlops_model_drift_samples" in found
    absent = {"mlops_model_drift_share", "mlops_model_dataset_drift", "mlops_model_drift_score"}
    assert absent.isdisjoint(found)
    assert "mlops_model_accuracy" not in found


def test_registries_do_not_leak(profile: ReferenceProfile, rng: np.random.Generator) -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    a = OnlineMonitor(profile, MonitorConfig(window=500, min_samples=100), "iris", "7", first)
    b = OnlineMonitor(profile, MonitorConfig(window=500, min_samples=100), "wine", "1", second)
    a.record_request("/predict", 200, 0.001)
    a.observe(live_rows(rng, 5), np.zeros(5, dtype=int))
    b.observe(live_rows(rng, 7), np.zeros(7, dtype=int))
    for registry, model in ((first, "iris"), (second, "wine")):
        models = {dict(labels).get("model") for _, labels in scrape(registry)}
        assert models == {model}
    assert value(scrape(second), "mlops_model_drift_samples", model="wine", version="1") == 7


def test_two_models_share_one_registry_and_close_removes_series(
    profile: ReferenceProfile, rng: np.random.Generator
) -> None:
    registry = CollectorRegistry()
    a = OnlineMonitor(profile, MonitorConfig(window=500, min_samples=100), "iris", "7", registry)
    b = OnlineMonitor(profile, MonitorConfig(window=500, min_samples=100), "iris", "8", registry)
    for m in (a, b):
        m.record_request("/predict", 200, 0.001)
        m.observe(live_rows(rng, 5), np.zeros(5, dtype=int))
    versions = {dict(labels).get("version") for _, labels in scrape(registry)}
    assert versions == {"7", "8"}
    a.close()
    versions = {dict(labels).get("version") for _, labels in scrape(registry)}
    assert versions == {"8"}


def test_endpoint_label_is_bounded(profile: ReferenceProfile) -> None:
    registry = CollectorRegistry()
    m = monitor(profile, registry)
    for i in range(server_metrics.MAX_ENDPOINTS + 20):
        m.record_request(f"/random/{i}", 404, 0.001)
    endpoints = {
        dict(labels)["endpoint"] for name, labels in scrape(registry) if name == "mlops_model_requests_total"
    }
    assert len(endpoints) == server_metrics.MAX_ENDPOINTS + 1
    assert "other" in endpoints


def test_metric_names_follow_conventions() -> None:
    """Every name is defined once in server_metrics.py, documented in its table, and well formed."""
    defined = {
        getattr(server_metrics, attr)
        for attr in dir(server_metrics)
        if attr.isupper()
        and isinstance(getattr(server_metrics, attr), str)
        and getattr(server_metrics, attr).startswith("mlops_")
    }
    table = set(
        re.findall(r"^(mlops_\w+)\s+(?:counter|gauge|histogram)", server_metrics.__doc__ or "", re.MULTILINE)
    )
    assert defined == table
    registry = CollectorRegistry()
    m = OnlineMonitor(None, MonitorConfig(), "m", "v", registry)
    m.record_request("/predict", 200, 0.01)
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        if family.name.endswith("_created"):
            continue  # prometheus_client's creation timestamps of counters and histograms
        full = family.name + ("_total" if family.type == "counter" else "")
        assert full in defined, full
        assert full.startswith("mlops_model_")
        assert full.endswith("_total") == (family.type == "counter"), full


# --------------------------------------------------------------------------- counters (canary analysis)


def test_snapshot_counters_are_cumulative_and_read_by_canary_analysis(
    profile: ReferenceProfile, rng: np.random.Generator
) -> None:
    from mlops_operator.rollout.canary_analysis import VersionCounters

    m = monitor(profile, accuracy_window=2)  # a window smaller than the totals: counters are not windows
    m.observe(live_rows(rng, 4), np.array([1, 0, 1, 1]), ["a", "b", "c", "d"])
    assert m.feedback("a", "1") and m.feedback("b", "1") and m.feedback("c", "1")
    m.record_request("/predict", 200, 0.002)
    m.record_request("/predict", 500, 0.3)
    m.record_request("/v2/models/{name}/infer", 200, 0.004)
    m.record_request("/v2/models/{name}/versions/{version}/infer", 503, 0.0001)
    m.record_request("/health", 500, 0.001)  # not a prediction request
    m.record_request("/feedback", 200, 0.001)
    block = m.snapshot()["counters"]
    assert block["instance"] == m.instance and len(block["instance"]) == 16
    assert (block["requests"], block["errors"]) == (4, 2)
    assert (block["labelled"], block["correct"]) == (3, 2)
    assert block["predictions"] == {"0": 1, "1": 3}
    assert block["latency"][-1] == ["+Inf", 4]
    assert [le for le, _ in block["latency"][:-1]] == list(server_metrics.LATENCY_BUCKETS)
    json.dumps(block)  # plain JSON
    counters = VersionCounters.from_snapshot(m.snapshot())
    assert counters.error_rate == 0.5 and counters.accuracy == pytest.approx(2 / 3)
    assert counters.latency_quantile(0.5) is not None and counters.latency_quantile(0.5) <= 0.005


def test_counters_belong_to_one_model_version_and_instance(profile: ReferenceProfile) -> None:
    registry = CollectorRegistry()
    a, b = monitor(profile, registry), OnlineMonitor(profile, MonitorConfig(), "iris", "8", registry)
    a.record_request("/predict", 200, 0.001)
    b.record_request("/predict", 500, 0.001)
    b.record_request("/predict", 200, 0.001)
    assert (a.snapshot()["counters"]["requests"], b.snapshot()["counters"]["requests"]) == (1, 2)
    assert b.snapshot()["counters"]["errors"] == 1
    assert a.instance != b.instance


def test_regression_counters_have_no_correct(rng: np.random.Generator) -> None:
    m = monitor(build_profile(rng.normal(size=(1000, 2)), task="regression"))
    m.observe(rng.normal(size=(2, 2)), np.array([1.0, 3.0]), ["a", "b"])
    assert m.feedback("a", 1.0)
    block = m.snapshot()["counters"]
    assert (block["labelled"], block["correct"], block["predictions"]) == (1, 0, {"": 2})
