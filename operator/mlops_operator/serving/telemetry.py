"""The server's side of monitoring: HTTP metrics and a buffered feed into the online monitor.

Metric names are defined in :mod:`mlops_operator.monitoring.server_metrics` (one source of truth);
this module only binds them to the server's registry and caches labelled children, so that
counting a response costs two dictionary lookups and two increments.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from prometheus_client import CollectorRegistry

from mlops_operator.serving.served_model import FloatArray

logger = logging.getLogger(__name__)


class MonitorLike(Protocol):
    """The part of ``monitoring.online.OnlineMonitor`` the server calls."""

    def observe(self, features: Any, predictions: Any, request_ids: list[str]) -> None: ...

    def feedback(self, request_id: str, label: str | float) -> bool: ...

    def snapshot(self) -> dict[str, Any]: ...


class HttpMetrics:
    """Request count and latency by endpoint and status code, for one model version."""

    def __init__(self, registry: CollectorRegistry, model: str, version: str) -> None:
        from mlops_operator.monitoring.server_metrics import RequestRecorder, ServerMetrics

        # Not ServerMetrics.attach: requests are counted from the first probe on, before a
        # model (and its monitor, which attaches its own gauges) exists.
        self._recorder = RequestRecorder(ServerMetrics.for_registry(registry), model, version)
        self.observe = self._recorder.record


class ObservationFeed:
    """Buffers served rows and hands them to the monitor in vectorised chunks.

    ``observe`` per request would cost a Python call and small-array overhead per row; one
    call per ``flush_rows`` rows (or every ``flush_s`` seconds) amortises it. The buffer is
    flushed before feedback is matched and before /metrics is scraped, so neither sees stale
    state.
    """

    def __init__(self, monitor: MonitorLike, *, flush_rows: int = 256, flush_s: float = 0.05) -> None:
        self.monitor = monitor
        self.flush_rows = flush_rows
        self.flush_s = flush_s
        self._matrices: list[FloatArray] = []
        self._labels: list[Any] = []
        self._ids: list[str] = []
        self._rows = 0
        self._timer: asyncio.TimerHandle | None = None
        self.failures = 0

    def add(self, matrix: FloatArray, labels: Sequence[Any], request_ids: list[str]) -> None:
        """Queue the rows of one response (call it after the response is sent)."""
        self._matrices.append(matrix)
        self._labels.extend(labels)
        self._ids.extend(request_ids)
        self._rows += matrix.shape[0]
        if self._rows >= self.flush_rows:
            self.flush()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(self.flush_s, self.flush)
            except RuntimeError:  # no loop (a synchronous caller): flush now
                self.flush()

    def flush(self) -> None:
        """Hand everything buffered to the monitor."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._rows:
            return
        matrices, labels, ids = self._matrices, self._labels, self._ids
        self._matrices, self._labels, self._ids, self._rows = [], [], [], 0
        features = matrices[0] if len(matrices) == 1 else np.concatenate(matrices)
        started = time.perf_counter()
        try:
            self.monitor.observe(features, np.asarray(labels), ids)
        except Exception:
            # Monitoring must never fail serving; count and log instead.
            self.failures += 1
            logger.exception("online monitor failed to observe %d rows", len(ids))
        elapsed = time.perf_counter() - started
        if elapsed > 0.05:
            logger.warning("online monitor took %.0f ms for %d rows", elapsed * 1000, len(ids))
