"""Online monitoring of one served model version: drift, accuracy, predictions, HTTP accounting.

The model server creates one :class:`OnlineMonitor` per model version it serves and calls:

- :meth:`OnlineMonitor.observe` with every predicted batch: the feature matrix
  ``(n_rows, n_features)`` as float64 in the profile's feature order, the predictions
  (one per row) and one request id per row (or an empty list when the caller does not
  track ids). **Categorical features are passed as category codes**: the index of the value
  in the profile's ``categories`` list, as a float; ``-1`` for a value not in the list; NaN
  for a missing value. The server builds the code map once from the profile
  (``{category: index}``) and looks values up while it builds the matrix. Numeric NaN is a
  missing value too (counted apart, not as drift).
  Cost: binning plus ring-buffer updates, O(features) per row with preallocated arrays,
  under one lock; the statistics are not computed here. The call is cheap enough for the
  request path, and the server can still move it off the response's critical path (a
  Starlette ``BackgroundTask`` runs it after the response is sent).
- :meth:`OnlineMonitor.feedback` for ``/feedback``: joins a ground-truth label to the stored
  prediction by request id (see ``accuracy.py``: first label wins; unknown or expired ids
  return False).
- :meth:`OnlineMonitor.record_request` once per HTTP request (endpoint = route template,
  not the raw path, to keep labels bounded).
- :meth:`OnlineMonitor.snapshot` for a JSON status endpoint (and the operator, which copies
  parts into ``InferenceService.status.monitoring``); the same numbers are exposed on
  ``/metrics`` through the registry passed in (see ``server_metrics.py``).
- :meth:`OnlineMonitor.close` when the version stops being served: its series disappear.

The snapshot's ``counters`` block is what canary analysis reads (``rollout/canary_analysis.py``
``VersionCounters.from_snapshot``): cumulative since this monitor started, under a random
``instance`` id drawn at start (a restarted server has a new id, so the operator knows its
counters started again from zero):

- ``requests``, ``errors``: prediction requests (``/predict`` and the v2 ``infer`` routes) and
  those answered 5xx;
- ``latency``: their cumulative latency histogram, ``[[le_seconds, count], ..., ["+Inf", n]]``;
- ``predictions``: rows predicted per class (one ``""`` key for regression);
- ``labelled``, ``correct``: predictions that received a label on ``/feedback``, and those whose
  label matched (classification; ``correct`` stays 0 for regression).

Requests and latency are read from the Prometheus request counter and histogram the server
already updates on every request (at snapshot time, not on the request path); labelled and
correct are two integers incremented when feedback joins.

Without a reference profile there is nothing to compare with: drift is not computed and the
snapshot's state is ``"no_reference"`` (a fourth state besides ok / drift /
insufficient_data); accuracy still works, for the task given in the config (classification
by default).
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from mlops_operator.monitoring.accuracy import (
    AccuracyStats,
    ClassDistribution,
    ClassWindow,
    FeedbackJoin,
    OutcomeWindow,
    PredictionStore,
    Task,
    class_distribution,
    label_key,
)
from mlops_operator.monitoring.drift import (
    DEFAULT_THRESHOLDS,
    BinLayout,
    DriftMethod,
    DriftReport,
    DriftWindow,
    evaluate_drift,
    finite_or_none,
)
from mlops_operator.monitoring.reference_profile import ReferenceProfile
from mlops_operator.monitoring.server_metrics import (
    METHOD_LABELS,
    FeatureSample,
    MonitorSample,
    ServerMetrics,
)

MonitorState = Literal["ok", "drift", "insufficient_data", "no_reference"]
#: The route templates (the ``endpoint`` label) of prediction requests, as ``serving/asgi_app.py`` names them.
PREDICTION_ENDPOINTS = frozenset(
    {"/predict", "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"}
)


class _CountingOutcomes(OutcomeWindow):
    """The accuracy window, plus cumulative counts of labelled and correct outcomes."""

    def __init__(self, size: int, classification: bool) -> None:
        super().__init__(size)
        self._classification = classification
        self.labelled = 0
        self.correct = 0

    def add(self, value: float) -> None:
        super().add(value)
        self.labelled += 1
        if self._classification and value == 1.0:
            self.correct += 1


@dataclass(frozen=True)
class _Computed:
    """Statistics computed on demand from one consistent copy of the counters."""

    drift: DriftReport | None
    rows: int
    totals: dict[str, int]
    distribution: ClassDistribution
    accuracy: AccuracyStats
    feedback: dict[str, int]
    pending: int
    labelled_total: int
    correct_total: int


class MonitorConfig(BaseModel):
    """Monitoring settings of one served model (from ``InferenceService.spec.monitoring``).

    Accepts snake_case or the camelCase of the CRD (``minSamples``, ``driftShare``, ...);
    numbers may be strings, as the CRD keeps thresholds (``threshold: "0.2"``).
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    method: DriftMethod = Field(default="PSI", description="Drift statistic for numeric features.")
    threshold: float | None = Field(
        default=None,
        gt=0,
        description="PSI: drift when PSI > threshold (default 0.2). KS, ChiSquare: drift when p-value < "
        "threshold (default 0.05).",
    )
    window: int = Field(default=1000, ge=1, le=1_000_000, description="Rows in the drift window.")
    min_samples: int = Field(default=200, ge=1, description="Below this many rows: insufficient data.")
    drift_share: float = Field(default=0.5, gt=0, le=1, description="Dataset drift when this share drifts.")
    accuracy_window: int = Field(default=500, ge=1, le=1_000_000, description="Labelled outcomes kept.")
    accuracy_min: float = Field(
        default=0.85, ge=0, le=1, description="Accuracy below this is degraded (the guide's retrain level)."
    )
    accuracy_min_samples: int = Field(
        default=50, ge=1, description="Labelled outcomes before judging accuracy."
    )
    baseline_accuracy: float | None = Field(
        default=None, ge=0, le=1, description="Offline accuracy of this version (from ModelVersion metrics)."
    )
    max_accuracy_drop: float = Field(
        default=0.05, ge=0, le=1, description="Degraded when accuracy falls this far below the baseline."
    )
    prediction_store_size: int = Field(
        default=50_000,
        ge=1,
        description="Predictions awaiting feedback (about 250 bytes each with UUID request ids).",
    )
    prediction_ttl_seconds: float = Field(default=3600.0, gt=0, description="How long feedback may lag.")
    task: Task | None = Field(
        default=None, description="Only used without a profile (default classification)."
    )

    @model_validator(mode="after")
    def _min_samples_fit(self) -> MonitorConfig:
        if self.min_samples > self.window:
            raise ValueError(f"minSamples ({self.min_samples}) must not exceed window ({self.window})")
        return self

    @property
    def effective_threshold(self) -> float:
        return DEFAULT_THRESHOLDS[self.method] if self.threshold is None else self.threshold


class OnlineMonitor:
    """Monitoring state of one model version. Thread-safe: one lock, short critical sections."""

    def __init__(
        self,
        profile: ReferenceProfile | None,
        config: MonitorConfig,
        model_name: str,
        model_version: str,
        registry: CollectorRegistry,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.profile = profile
        self.config = config
        self.model_name = model_name
        self.model_version = model_version
        self._clock = clock
        self._lock = threading.Lock()
        self.task: Task = profile.task if profile is not None else (config.task or "classification")
        self._layout = (
            BinLayout.from_profile(profile.features) if profile is not None and profile.features else None
        )
        self._window = DriftWindow(self._layout, config.window) if self._layout is not None else None
        classes = profile.classes if profile is not None and self.task == "classification" else None
        self._classes = ClassWindow(config.window, classes) if self.task == "classification" else None
        self._regression_predictions = 0
        self._outcomes = _CountingOutcomes(config.accuracy_window, self.task == "classification")
        self._join = FeedbackJoin(
            self.task,
            PredictionStore(config.prediction_store_size, config.prediction_ttl_seconds),
            self._outcomes,
        )
        #: Identifies this monitor's cumulative counters: new ones, a new id.
        self.instance = secrets.token_hex(8)
        self._metrics = ServerMetrics.for_registry(registry)
        self._recorder = self._metrics.attach(self, model_name, model_version)

    # ------------------------------------------------------------------ request path

    def observe(
        self, features: npt.ArrayLike, predictions: npt.ArrayLike, request_ids: Sequence[str] = ()
    ) -> None:
        """Record a predicted batch: rows for drift, predicted classes, predictions for feedback.

        ``predictions`` has one value per row (an ``(n, 1)`` array is accepted);
        ``request_ids`` one id per row, or is empty. Raises ValueError on a shape mismatch
        (a caller bug); any finite or non-finite float values are accepted.
        """
        rows = np.asarray(features, dtype=np.float64)
        if rows.ndim != 2:
            raise ValueError(f"features must be 2-D (rows, features), got shape {rows.shape}")
        if self._layout is not None and rows.shape[1] != self._layout.features:
            raise ValueError(f"expected {self._layout.features} features, got {rows.shape[1]}")
        values = np.asarray(predictions)
        if values.ndim == 2 and values.shape[1] == 1:
            values = values[:, 0]
        if values.ndim != 1 or values.shape[0] != rows.shape[0]:
            raise ValueError(f"expected one prediction per row ({rows.shape[0]}), got shape {values.shape}")
        if request_ids and len(request_ids) != rows.shape[0]:
            raise ValueError(f"expected one request id per row ({rows.shape[0]}), got {len(request_ids)}")
        # Pure conversions outside the lock.
        keys: list[str] | list[float]
        if self.task == "classification":
            keys = [label_key(v) for v in values.tolist()]
        else:
            keys = [float(v) for v in values.tolist()] if request_ids else []
        now = self._clock() if request_ids else 0.0
        with self._lock:
            if self._window is not None:
                self._window.add(rows)
            if self._classes is not None:
                self._classes.add(keys)  # type: ignore[arg-type]  # str keys for classification
            else:
                self._regression_predictions += rows.shape[0]
            if request_ids:
                self._join.record(request_ids, keys, now)

    def feedback(self, request_id: str, label: str | float) -> bool:
        """Join a ground-truth label to a stored prediction. True if it counted.

        Raises ValueError for a regression label that is not a finite number.
        """
        now = self._clock()
        with self._lock:
            return self._join.feedback(request_id, label, now) == "matched"

    def record_request(self, endpoint: str, code: int | str, seconds: float) -> None:
        """Count one HTTP request and observe its latency (endpoint: the route template)."""
        self._recorder.record(endpoint, code, seconds)

    def close(self) -> None:
        """Stop exposing this model version's series (it is no longer served)."""
        self._metrics.detach(self, self._recorder)

    # ------------------------------------------------------------------ on demand

    def _compute(self) -> _Computed:
        """Copy the counters under the lock, compute statistics outside it."""
        with self._lock:
            counts = self._window.counts() if self._window is not None else None
            rows = self._window.rows if self._window is not None else 0
            window_classes = self._classes.window_counts() if self._classes is not None else {}
            totals = self._classes.totals() if self._classes is not None else {}
            regression_predictions = self._regression_predictions
            accuracy = self._join.stats()
            feedback = dict(self._join.results)
            pending = len(self._join.store)
            labelled_total, correct_total = self._outcomes.labelled, self._outcomes.correct
        report = None
        if self._layout is not None and counts is not None:
            report = evaluate_drift(
                self._layout,
                counts,
                rows,
                method=self.config.method,
                threshold=self.config.effective_threshold,
                min_samples=self.config.min_samples,
                drift_share=self.config.drift_share,
            )
        profile = self.profile
        distribution = class_distribution(
            window_classes,
            profile.classes if profile is not None else None,
            profile.class_frequencies if profile is not None else None,
        )
        return _Computed(
            drift=report,
            rows=rows,
            totals=totals if self._classes is not None else {"": regression_predictions},
            distribution=distribution,
            accuracy=accuracy,
            feedback=feedback,
            pending=pending,
            labelled_total=labelled_total,
            correct_total=correct_total,
        )

    def metric_sample(self) -> MonitorSample:
        """The values the scrape-time collector exposes (see ``server_metrics.py``)."""
        computed = self._compute()
        report = computed.drift
        features: list[FeatureSample] = []
        if report is not None and report.share is not None:
            features = [
                FeatureSample(f.name, METHOD_LABELS[f.method], f.score, f.p_value, f.drifted)
                for f in report.features
                if f.score is not None and f.drifted is not None
            ]
        distribution = computed.distribution
        accuracy = computed.accuracy
        return MonitorSample(
            model=self.model_name,
            version=self.model_version,
            drift_samples=computed.rows,
            features=features,
            drift_share=report.share if report is not None else None,
            dataset_drift=report.dataset_drift if report is not None else None,
            predictions_total=computed.totals,
            class_ratio=distribution.ratios,
            prediction_drift_psi=distribution.psi,
            accuracy=accuracy.accuracy,
            rmse=accuracy.rmse,
            mae=accuracy.mae,
            labelled_samples=accuracy.labelled,
            feedback_total=computed.feedback,
            pending_predictions=computed.pending,
        )

    def snapshot(self) -> dict[str, Any]:
        """The monitoring state as JSON-able plain data (infinite statistics become None)."""
        computed = self._compute()
        report = computed.drift
        state: MonitorState = "no_reference" if report is None else report.state
        accuracy = computed.accuracy
        distribution = computed.distribution
        cfg = self.config
        accuracy_state: str | None = None
        accuracy_drop: float | None = None
        if accuracy.task == "classification":
            if accuracy.accuracy is None or accuracy.labelled < cfg.accuracy_min_samples:
                accuracy_state = "insufficient_data"
            else:
                if cfg.baseline_accuracy is not None:
                    accuracy_drop = cfg.baseline_accuracy - accuracy.accuracy
                degraded = accuracy.accuracy < cfg.accuracy_min or (
                    accuracy_drop is not None and accuracy_drop > cfg.max_accuracy_drop
                )
                accuracy_state = "degraded" if degraded else "ok"
        features = [] if report is None else [f.as_dict() for f in report.features]
        for f in features:
            for key in ("score", "p_value", "critical_value"):
                value = f[key]
                f[key] = finite_or_none(value) if isinstance(value, float) else value
        return {
            "model": self.model_name,
            "version": self.model_version,
            "task": self.task,
            "state": state,
            "method": cfg.method,
            "threshold": cfg.effective_threshold,
            "window_samples": computed.rows,
            "window_size": cfg.window,
            "min_samples": cfg.min_samples,
            "drift_share": None if report is None else report.share,
            "drift_share_threshold": cfg.drift_share,
            "dataset_drift": None if report is None else report.dataset_drift,
            "drifted_features": [] if report is None else report.drifted_features,
            "features": features,
            "predictions": {
                "window_samples": distribution.rows,
                "class_counts": dict(distribution.counts),
                "class_ratios": dict(distribution.ratios),
                "psi": finite_or_none(distribution.psi),
                "chi_square_p_value": distribution.chi_square_p_value,
                "total": dict(computed.totals),
            },
            "accuracy": accuracy.accuracy,
            "accuracy_state": accuracy_state,
            "accuracy_drop": accuracy_drop,
            "rmse": accuracy.rmse,
            "mae": accuracy.mae,
            "mean_error": accuracy.mean_error,
            "labelled_samples": accuracy.labelled,
            "feedback": dict(computed.feedback),
            "pending_predictions": computed.pending,
            "counters": self._counters(computed),
        }

    def _counters(self, computed: _Computed) -> dict[str, Any]:
        """The cumulative counters block of the snapshot (see the module docstring)."""
        requests = errors = 0
        for metric in self._metrics.requests.collect():
            for sample in metric.samples:
                labels = sample.labels
                if (
                    not sample.name.endswith("_total")
                    or labels.get("endpoint") not in PREDICTION_ENDPOINTS
                    or labels.get("model") != self.model_name
                    or labels.get("version") != self.model_version
                ):
                    continue
                requests += int(sample.value)
                if labels.get("code", "").startswith("5"):
                    errors += int(sample.value)
        buckets: dict[float, int] = {}
        for metric in self._metrics.duration.collect():
            for sample in metric.samples:
                labels = sample.labels
                if (
                    not sample.name.endswith("_bucket")
                    or labels.get("endpoint") not in PREDICTION_ENDPOINTS
                    or labels.get("model") != self.model_name
                    or labels.get("version") != self.model_version
                ):
                    continue
                le = float(labels["le"])
                buckets[le] = buckets.get(le, 0) + int(sample.value)
        latency: list[list[float | int | str]] = [
            ["+Inf" if math.isinf(le) else le, count] for le, count in sorted(buckets.items())
        ]
        return {
            "instance": self.instance,
            "requests": requests,
            "errors": errors,
            "latency": latency,
            "predictions": dict(computed.totals),
            "labelled": computed.labelled_total,
            "correct": computed.correct_total,
        }
