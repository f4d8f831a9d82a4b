"""The operator's own metrics (the model server's live in ``monitoring/metrics.py``).

They mirror controller-runtime's reconcile metrics, so existing dashboards read them:

| metric | type | labels | meaning |
| --- | --- | --- | --- |
| ``mlops_reconcile_total`` | counter | kind, result | reconciliations, by result: success, requeue, invalid, error |
| ``mlops_reconcile_errors_total`` | counter | kind | reconciliations that ended in an error (requeue or error) |
| ``mlops_reconcile_time_seconds`` | histogram | kind | time spent in one reconciliation |
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import kopf
from prometheus_client import CollectorRegistry, Counter, Histogram

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


class InvalidSpecError(kopf.PermanentError):
    """The resource's spec cannot be reconciled as written; the user must change it."""


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
