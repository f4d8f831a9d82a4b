"""The operator's own metrics (the model server's live in ``monitoring/server_metrics.py``).

They mirror controller-runtime's reconcile metrics, so existing dashboards read them:

| metric | type | labels | meaning |
| --- | --- | --- | --- |
| ``mlops_reconcile_total`` | counter | kind, result | reconciliations, by result: success, requeue, invalid, error |
| ``mlops_reconcile_errors_total`` | counter | kind | reconciliations that ended in an error (requeue or error) |
| ``mlops_reconcile_time_seconds`` | histogram | kind | time spent in one reconciliation |

and, per resource (series removed when it is deleted):

| metric | type | labels | meaning |
| --- | --- | --- | --- |
| ``mlops_rollout_phase`` | gauge | namespace, name, phase | 1 for an InferenceService's current rollout phase |
| ``mlops_rollout_canary_weight`` | gauge | namespace, name | share of requests the canary receives (0..1) |
| ``mlops_rollout_promotions_total`` | counter | namespace, name | versions promoted |
| ``mlops_rollout_rollbacks_total`` | counter | namespace, name, reason | rollouts aborted or rolled back |
| ``mlops_retrains_requested_total`` | counter | namespace, name, reason | runs an InferenceService asked of its TrainingJob (Drift, AccuracyDrop, DriftAndAccuracyDrop) |
| ``mlops_trainingjob_runs_total`` | counter | namespace, name, result, reason | finished runs of a TrainingJob (result succeeded or failed; reason Succeeded, DataValidationFailed, ...) |
| ``mlops_trainingjob_run_duration_seconds`` | histogram | namespace, name, result | a finished run's time from start to completion |

and for the scraping of the model servers' ``/monitoring`` (``monitoring/scraper.py``):

| metric | type | labels | meaning |
| --- | --- | --- | --- |
| ``mlops_monitoring_scrapes_total`` | counter | result | pods asked for: success, error, timeout, skipped (backing off after failures), dropped (deadline passed while queued) |
| ``mlops_monitoring_scrape_duration_seconds`` | histogram | result | time of one pod's scrape (success, error, timeout) |
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import kopf
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from mlops_operator.controllers.invalid_spec import InvalidSpecError

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILE_TOTAL = Counter(
    "mlops_reconcile_total", "Reconciliations by kind and result.", ["kind", "result"], registry=REGISTRY
)
RECONCILE_ERRORS = Counter(
    "mlops_reconcile_errors_total", "Reconciliations that ended in an error.", ["kind"], registry=REGISTRY
)
RECONCILE_TIME = Histogram(
    "mlops_reconcile_time_seconds",
    "Time spent in one reconciliation.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)


@contextmanager
def reconcile_metrics(kind: str) -> Iterator[None]:
    """Count and time one reconciliation, classifying how it ended."""
    started = time.perf_counter()
    result = "success"
    try:
        yield
    except InvalidSpecError:
        result = "invalid"
        raise
    except kopf.TemporaryError:
        result = "requeue"
        raise
    except Exception:
        result = "error"
        raise
    finally:
        RECONCILE_TIME.labels(kind).observe(time.perf_counter() - started)
        RECONCILE_TOTAL.labels(kind, result).inc()
        if result in ("requeue", "error"):
            RECONCILE_ERRORS.labels(kind).inc()


# --- rollouts -----------------------------------------------------------------------------------

#: The phases a rollout can be in (``status.rollout.phase``): one series each, 1 for the current.
ROLLOUT_PHASES = ("Idle", "Progressing", "Paused", "Promoting", "Succeeded", "RolledBack", "Failed")

ROLLOUT_PHASE = Gauge(
    "mlops_rollout_phase",
    "The rollout phase of an InferenceService (1 for the current phase, 0 for the others).",
    ["namespace", "name", "phase"],
    registry=REGISTRY,
)
ROLLOUT_CANARY_WEIGHT = Gauge(
    "mlops_rollout_canary_weight",
    "Share of requests (0..1) the canary version receives, as measured from ready pods.",
    ["namespace", "name"],
    registry=REGISTRY,
)
ROLLOUT_PROMOTIONS = Counter(
    "mlops_rollout_promotions_total",
    "Versions promoted to stable after a rollout.",
    ["namespace", "name"],
    registry=REGISTRY,
)
ROLLOUT_ROLLBACKS = Counter(
    "mlops_rollout_rollbacks_total",
    "Rollouts aborted or versions rolled back, by reason (AnalysisFailed, CrashLoopBackOff, ...).",
    ["namespace", "name", "reason"],
    registry=REGISTRY,
)
#: Event reasons that mean "traffic is back on a previous version" (posted once per rollback).
_ROLLBACK_EVENTS = ("RolledBack", "RolloutFailed")


def set_rollout_metrics(namespace: str, name: str, phase: str, canary_percent: int) -> None:
    """Publish an InferenceService's rollout phase and measured canary weight."""
    for each in ROLLOUT_PHASES:
        ROLLOUT_PHASE.labels(namespace, name, each).set(1 if each == phase else 0)
    ROLLOUT_CANARY_WEIGHT.labels(namespace, name).set(canary_percent / 100)


def record_rollout_event(namespace: str, name: str, event_reason: str, rollout_reason: str) -> None:
    """Count promotions and rollbacks from the Events a rollout decision posts."""
    if event_reason == "Promoted":
        ROLLOUT_PROMOTIONS.labels(namespace, name).inc()
    elif event_reason in _ROLLBACK_EVENTS:
        ROLLOUT_ROLLBACKS.labels(namespace, name, rollout_reason or event_reason).inc()


def forget_rollout_metrics(namespace: str, name: str) -> None:
    """Remove an InferenceService's rollout series once it is deleted."""
    for each in ROLLOUT_PHASES:
        _remove(ROLLOUT_PHASE, namespace, name, each)
    _remove(ROLLOUT_CANARY_WEIGHT, namespace, name)
    _remove(ROLLOUT_PROMOTIONS, namespace, name)
    for labels in [key for key in _label_sets(ROLLOUT_ROLLBACKS) if key[:2] == (namespace, name)]:
        _remove(ROLLOUT_ROLLBACKS, *labels)


# --- retraining and training runs ------------------------------------------------------------

RETRAINS_REQUESTED = Counter(
    "mlops_retrains_requested_total",
    "Runs an InferenceService requested of its retraining TrainingJob, by trigger.",
    ["namespace", "name", "reason"],
    registry=REGISTRY,
)
TRAININGJOB_RUNS = Counter(
    "mlops_trainingjob_runs_total",
    "Finished runs of a TrainingJob, by result (succeeded, failed) and reason.",
    ["namespace", "name", "result", "reason"],
    registry=REGISTRY,
)
TRAININGJOB_RUN_DURATION = Histogram(
    "mlops_trainingjob_run_duration_seconds",
    "Time from a run's start to its completion.",
    ["namespace", "name", "result"],
    buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200, 86400),
    registry=REGISTRY,
)


def retrain_reason(reason: str) -> str:
    """A bounded label from the reason ``rollout/retraining.py`` gives for a retrain.

    That reason is a sentence ("drift in 3 of the last 5 checks and accuracy below ..."); a
    label must take few values, so only which triggers fired is kept.
    """
    drift = "drift" in reason.lower()
    accuracy = "accuracy" in reason.lower()
    if drift and accuracy:
        return "DriftAndAccuracyDrop"
    if accuracy:
        return "AccuracyDrop"
    return "Drift" if drift else "Other"


def record_retrain_requested(namespace: str, name: str, reason: str) -> None:
    """Count one retrain an InferenceService requested (``reason``: the decision's sentence)."""
    RETRAINS_REQUESTED.labels(namespace, name, retrain_reason(reason)).inc()


def forget_retrain_metrics(namespace: str, name: str) -> None:
    """Remove an InferenceService's retrain series once it is deleted."""
    for labels in [key for key in _label_sets(RETRAINS_REQUESTED) if key[:2] == (namespace, name)]:
        _remove(RETRAINS_REQUESTED, *labels)


def record_run_finished(namespace: str, name: str, run: dict[str, Any]) -> None:
    """Count a run seen finished for the first time, and its duration when both times are known.

    ``run`` is a TrainingJob's ``status.runs[]`` entry (phase Succeeded or Failed).
    """
    result = "succeeded" if run.get("phase") == "Succeeded" else "failed"
    TRAININGJOB_RUNS.labels(namespace, name, result, str(run.get("reason") or run.get("phase"))).inc()
    started, completed = _timestamp(run.get("startTime")), _timestamp(run.get("completionTime"))
    if started is not None and completed is not None and completed >= started:
        TRAININGJOB_RUN_DURATION.labels(namespace, name, result).observe(
            (completed - started).total_seconds()
        )


def forget_trainingjob_metrics(namespace: str, name: str) -> None:
    """Remove a TrainingJob's series once it is deleted."""
    for labels in [key for key in _label_sets(TRAININGJOB_RUNS) if key[:2] == (namespace, name)]:
        _remove(TRAININGJOB_RUNS, *labels)
    for result in ("succeeded", "failed"):
        _remove(TRAININGJOB_RUN_DURATION, namespace, name, result)


def _timestamp(value: object) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _label_sets(metric: Counter) -> list[tuple[str, ...]]:
    """The label values of every series of a counter (read back from what it exports)."""
    return [
        tuple(sample.labels.values())
        for family in metric.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    ]


def _remove(metric: Counter | Gauge | Histogram, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)


# --- monitoring scrapes ------------------------------------------------------------------------

MONITORING_SCRAPES = Counter(
    "mlops_monitoring_scrapes_total",
    "Pods whose /monitoring the operator asked for, by result "
    "(success, error, timeout, skipped while backing off, dropped when queued past the deadline).",
    ["result"],
    registry=REGISTRY,
)
MONITORING_SCRAPE_TIME = Histogram(
    "mlops_monitoring_scrape_duration_seconds",
    "Time of one pod's /monitoring scrape, by result.",
    ["result"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
    registry=REGISTRY,
)


def record_scrape(result: str, seconds: float | None) -> None:
    """Count one pod's scrape and, when a request was made, time it."""
    MONITORING_SCRAPES.labels(result).inc()
    if seconds is not None:
        MONITORING_SCRAPE_TIME.labels(result).observe(seconds)
