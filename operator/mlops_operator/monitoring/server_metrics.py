"""The model server's Prometheus metrics: every name is defined here and nowhere else.

(The operator's own reconcile metrics live with the controllers.)

Naming: prefix ``mlops_``, base units (seconds), ``_total`` only on counters, ratios in
0..1, and bounded labels: ``model`` and ``version`` (one pair per served model version),
``endpoint`` (the route template the server passes, e.g. ``/predict``; past
:data:`MAX_ENDPOINTS` distinct values the rest share ``other``), ``code`` (HTTP status),
``feature`` (names from the reference profile), ``method`` (``psi``, ``ks``, ``chisquare``),
``class`` (classes from the profile, at most 64 seen ones otherwise, the rest ``_other``;
empty for regressors) and ``result``.

=========================================  =========  ================================  ==============================================
name                                       type       labels                            meaning
=========================================  =========  ================================  ==============================================
mlops_model_requests_total                 counter    model, version, endpoint, code    HTTP requests served
mlops_model_request_duration_seconds       histogram  model, version, endpoint, code    request latency, 100 us .. 10 s buckets
mlops_model_predictions_total              counter    model, version, class             predictions (rows) made, by predicted class
mlops_model_prediction_class_ratio         gauge      model, version, class             share of each class in the drift window
mlops_model_prediction_drift_score         gauge      model, version, method            PSI of predicted classes vs training labels
mlops_model_drift_samples                  gauge      model, version                    rows in the drift window
mlops_model_drift_score                    gauge      model, version, feature, method   per-feature statistic: PSI, KS D or chi2
mlops_model_drift_p_value                  gauge      model, version, feature, method   p-value of that statistic (KS, chi-square)
mlops_model_feature_drifted                gauge      model, version, feature, method   1 if the feature drifted, else 0
mlops_model_drift_share                    gauge      model, version                    share of evaluated features that drifted
mlops_model_dataset_drift                  gauge      model, version                    1 if drift share >= driftShare, else 0
mlops_model_accuracy                       gauge      model, version                    accuracy over the labelled window (classif.)
mlops_model_rmse                           gauge      model, version                    root mean squared error (regression)
mlops_model_mae                            gauge      model, version                    mean absolute error (regression)
mlops_model_labelled_samples               gauge      model, version                    labelled outcomes in the accuracy window
mlops_model_feedback_total                 counter    model, version, result            feedback received: matched|unknown|duplicate
mlops_model_pending_predictions            gauge      model, version                    predictions waiting for feedback (store size)
mlops_model_capture_rows_total             counter    model, version, table             rows written to the capture store (predictions|labels)
mlops_model_capture_dropped_rows_total     counter    model, version, reason            rows not captured: sampled|writeError|maxBytes|backlog
=========================================  =========  ================================  ==============================================

Insufficient data is *absence*: below the minimum sample count the drift score, p-value,
drifted, share and dataset-drift series are not exposed at all (``mlops_model_drift_samples``
always is), and the accuracy/RMSE/MAE gauges are absent until the first labelled outcome.
An absent series is what PromQL and alert rules treat as "no data" (``absent()``, the
rollout's ``onNoData``), whereas a sentinel such as -1 would poison ``avg``/``max`` across
replicas and read as "no drift" to a naive ``> 0.5`` rule.

prometheus_client also exposes ``<name>_created`` timestamps for the request counter and
histogram; ``prometheus_client.disable_created_metrics()`` turns them off process-wide (a
global switch, so it belongs in the server's startup, not here).

Counters and the histogram are updated on the request path (``record_request``); everything
else is computed at scrape time by one custom collector per registry, from the state of the
monitors attached to it, so drift costs nothing per request beyond binning. Each registry
(one per process, passed in: no global registry) has one :class:`ServerMetrics`, shared by
all the models served in that process; :meth:`ServerMetrics.detach` removes a model's series.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

REQUESTS_TOTAL = "mlops_model_requests_total"
REQUEST_DURATION_SECONDS = "mlops_model_request_duration_seconds"
PREDICTIONS_TOTAL = "mlops_model_predictions_total"
PREDICTION_CLASS_RATIO = "mlops_model_prediction_class_ratio"
PREDICTION_DRIFT_SCORE = "mlops_model_prediction_drift_score"
DRIFT_SAMPLES = "mlops_model_drift_samples"
DRIFT_SCORE = "mlops_model_drift_score"
DRIFT_P_VALUE = "mlops_model_drift_p_value"
FEATURE_DRIFTED = "mlops_model_feature_drifted"
DRIFT_SHARE = "mlops_model_drift_share"
DATASET_DRIFT = "mlops_model_dataset_drift"
ACCURACY = "mlops_model_accuracy"
RMSE = "mlops_model_rmse"
MAE = "mlops_model_mae"
LABELLED_SAMPLES = "mlops_model_labelled_samples"
FEEDBACK_TOTAL = "mlops_model_feedback_total"
PENDING_PREDICTIONS = "mlops_model_pending_predictions"
CAPTURE_ROWS_TOTAL = "mlops_model_capture_rows_total"
CAPTURE_DROPPED_ROWS_TOTAL = "mlops_model_capture_dropped_rows_total"

MODEL_LABELS = ("model", "version")
REQUEST_LABELS = (*MODEL_LABELS, "endpoint", "code")
FEATURE_LABELS = (*MODEL_LABELS, "feature", "method")
#: Sub-millisecond to seconds: a bare predict is ~0.2 ms, a batched forest tens of ms.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
#: Distinct endpoint label values per model before the rest are folded into "other".
MAX_ENDPOINTS = 32
#: The ``method`` label value of each drift method.
METHOD_LABELS = {"PSI": "psi", "KS": "ks", "ChiSquare": "chisquare"}


def _family_name(name: str) -> str:
    # prometheus_client appends "_total" to counter families itself.
    return name.removesuffix("_total")


@dataclass(frozen=True)
class FeatureSample:
    feature: str
    method: str
    score: float
    p_value: float | None
    drifted: bool


@dataclass(frozen=True)
class MonitorSample:
    """Everything one model version exposes at scrape time (plain values)."""

    model: str
    version: str
    drift_samples: int
    features: Sequence[FeatureSample] = ()
    drift_share: float | None = None
    dataset_drift: bool | None = None
    predictions_total: Mapping[str, int] = field(default_factory=dict)
    class_ratio: Mapping[str, float] = field(default_factory=dict)
    prediction_drift_psi: float | None = None
    accuracy: float | None = None
    rmse: float | None = None
    mae: float | None = None
    labelled_samples: int = 0
    feedback_total: Mapping[str, int] = field(default_factory=dict)
    pending_predictions: int = 0


class SampleSource(Protocol):
    """What a monitor offers the collector (``OnlineMonitor`` implements it)."""

    def metric_sample(self) -> MonitorSample: ...


class _MonitorCollector(Collector):
    """Computes the gauges of every attached monitor when the registry is scraped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sources: list[SampleSource] = []

    def attach(self, source: SampleSource) -> None:
        with self._lock:
            self._sources.append(source)

    def detach(self, source: SampleSource) -> None:
        with self._lock:
            self._sources = [s for s in self._sources if s is not source]

    def describe(self) -> list[Metric]:
        # Declares the names so the registry refuses a second definition of any of them.
        return list(self._families([]))

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            sources = list(self._sources)
        return iter(self._families([s.metric_sample() for s in sources]))

    @staticmethod
    def _families(samples: Sequence[MonitorSample]) -> list[Metric]:
        def gauge(name: str, doc: str, labels: Sequence[str]) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=list(labels))

        predictions = CounterMetricFamily(
            _family_name(PREDICTIONS_TOTAL),
            "Predictions (rows) made, by predicted class.",
            labels=[*MODEL_LABELS, "class"],
        )
        class_ratio = gauge(
            PREDICTION_CLASS_RATIO,
            "Share of each predicted class in the drift window.",
            [*MODEL_LABELS, "class"],
        )
        prediction_drift = gauge(
            PREDICTION_DRIFT_SCORE,
            "Drift of the predicted class distribution against the training labels.",
            [*MODEL_LABELS, "method"],
        )
        drift_samples = gauge(DRIFT_SAMPLES, "Rows in the drift window.", MODEL_LABELS)
        score = gauge(DRIFT_SCORE, "Per-feature drift statistic (PSI, KS D or chi-square).", FEATURE_LABELS)
        p_value = gauge(
            DRIFT_P_VALUE, "P-value of the per-feature drift test (KS, chi-square).", FEATURE_LABELS
        )
        drifted = gauge(FEATURE_DRIFTED, "1 if the feature drifted in the window, else 0.", FEATURE_LABELS)
        share = gauge(DRIFT_SHARE, "Share of evaluated features that drifted (0..1).", MODEL_LABELS)
        dataset = gauge(DATASET_DRIFT, "1 if the drift share reached driftShare, else 0.", MODEL_LABELS)
        accuracy = gauge(ACCURACY, "Accuracy over the window of labelled predictions (0..1).", MODEL_LABELS)
        rmse = gauge(RMSE, "Root mean squared error over the window of labelled predictions.", MODEL_LABELS)
        mae = gauge(MAE, "Mean absolute error over the window of labelled predictions.", MODEL_LABELS)
        labelled = gauge(LABELLED_SAMPLES, "Labelled outcomes in the accuracy window.", MODEL_LABELS)
        feedback = CounterMetricFamily(
            _family_name(FEEDBACK_TOTAL),
            "Feedback received, by join result.",
            labels=[*MODEL_LABELS, "result"],
        )
        pending = gauge(PENDING_PREDICTIONS, "Predictions remembered and waiting for feedback.", MODEL_LABELS)

        for s in samples:
            ids = [s.model, s.version]
            for label, count in s.predictions_total.items():
                predictions.add_metric([*ids, label], count)
            for label, ratio in s.class_ratio.items():
                class_ratio.add_metric([*ids, label], ratio)
            if s.prediction_drift_psi is not None:
                prediction_drift.add_metric([*ids, "psi"], s.prediction_drift_psi)
            drift_samples.add_metric(ids, s.drift_samples)
            for f in s.features:
                labels = [*ids, f.feature, f.method]
                score.add_metric(labels, f.score)
                if f.p_value is not None:
                    p_value.add_metric(labels, f.p_value)
                drifted.add_metric(labels, 1.0 if f.drifted else 0.0)
            if s.drift_share is not None:
                share.add_metric(ids, s.drift_share)
            if s.dataset_drift is not None:
                dataset.add_metric(ids, 1.0 if s.dataset_drift else 0.0)
            for value, family in ((s.accuracy, accuracy), (s.rmse, rmse), (s.mae, mae)):
                if value is not None:
                    family.add_metric(ids, value)
            labelled.add_metric(ids, s.labelled_samples)
            for result, count in s.feedback_total.items():
                feedback.add_metric([*ids, result], count)
            pending.add_metric(ids, s.pending_predictions)
        return [
            predictions,
            class_ratio,
            prediction_drift,
            drift_samples,
            score,
            p_value,
            drifted,
            share,
            dataset,
            accuracy,
            rmse,
            mae,
            labelled,
            feedback,
            pending,
        ]


class RequestRecorder:
    """Request count and latency of one model version, children cached per (endpoint, code)."""

    def __init__(self, metrics: ServerMetrics, model: str, version: str) -> None:
        self._metrics = metrics
        self._model = model
        self._version = version
        self._children: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        self._lock = threading.Lock()

    def record(self, endpoint: str, code: int | str, seconds: float) -> None:
        children = self._children.get((endpoint, str(code)))
        if children is None:
            children = self._child(endpoint, str(code))
        children[0].inc()
        children[1].observe(seconds)

    def _child(self, endpoint: str, code: str) -> tuple[Counter, Histogram]:
        with self._lock:
            endpoints = {e for e, _ in self._children}
            if endpoint not in endpoints and len(endpoints - {"other"}) >= MAX_ENDPOINTS:
                # Folded: not cached under the raw name, so unbounded raw names cost no memory.
                endpoint = "other"
            children = self._children.get((endpoint, code))
            if children is None:
                labels = (self._model, self._version, endpoint, code)
                children = (self._metrics.requests.labels(*labels), self._metrics.duration.labels(*labels))
                self._children[(endpoint, code)] = children
            return children

    def remove(self) -> None:
        """Drop this model version's request series from the registry."""
        with self._lock:
            for endpoint, code in self._children:
                self._metrics.requests.remove(self._model, self._version, endpoint, code)
                self._metrics.duration.remove(self._model, self._version, endpoint, code)
            self._children.clear()


class ServerMetrics:
    """The metrics of one registry: request counter and histogram, and the monitor collector.

    Use :meth:`for_registry`: a registry gets exactly one instance, so two models served
    from one process share the metric families (and differ by labels) instead of colliding.
    """

    _instances: weakref.WeakKeyDictionary[CollectorRegistry, ServerMetrics] = weakref.WeakKeyDictionary()
    _instances_lock = threading.Lock()

    def __init__(self, registry: CollectorRegistry) -> None:
        # No reference back to the registry: it is the key of the weak cache in for_registry.
        self.requests = Counter(
            _family_name(REQUESTS_TOTAL),
            "HTTP requests served by the model server.",
            REQUEST_LABELS,
            registry=registry,
        )
        self.duration = Histogram(
            REQUEST_DURATION_SECONDS,
            "Latency of HTTP requests to the model server.",
            REQUEST_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._collector = _MonitorCollector()
        registry.register(self._collector)

    @classmethod
    def for_registry(cls, registry: CollectorRegistry) -> ServerMetrics:
        with cls._instances_lock:
            instance = cls._instances.get(registry)
            if instance is None:
                instance = cls._instances[registry] = cls(registry)
            return instance

    def attach(self, source: SampleSource, model: str, version: str) -> RequestRecorder:
        """Expose ``source``'s gauges at scrape time; returns its request recorder."""
        self._collector.attach(source)
        return RequestRecorder(self, model, version)

    def detach(self, source: SampleSource, recorder: RequestRecorder) -> None:
        """Remove every series of one model version (when it stops being served)."""
        self._collector.detach(source)
        recorder.remove()
