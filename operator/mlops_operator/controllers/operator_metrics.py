"""The operator's own metrics (the model server's live in ``monitoring/server_metrics.py``).

They mirror controller-runtime's reconcile metrics, so existing dashboards read them:

| metric | type | labels | meaning |
| --- | --- | --- | --- |
| ``mlops_reconcile_total`` | counter | kind, result | reconciliations, by result: success, requeue, invalid, error |
| ``mlops_reconcile_errors_total`` | counter | kind | reconciliations that ended in an error (requeue or error) |
| ``mlops_reconcile_time_seconds`` | histogram | kind | time spent in one reconciliation |
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextlib import contextmanager

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


def _label_sets(metric: Counter) -> list[tuple[str, ...]]:
    """The label values of every series of a counter (read back from what it exports)."""
    return [
        tuple(sample.labels.values())
        for family in metric.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    ]


def _remove(metric: Counter | Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)
