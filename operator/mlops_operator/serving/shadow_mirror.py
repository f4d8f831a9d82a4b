"""The mirror of a Shadow rollout: stable's server copies each prediction request to the candidate.

The copy leaves after stable's answer went out, from a task on the server's event loop, and
is bounded: at most ``max_inflight`` copies wait for the candidate at once and each waits at
most ``timeout_s``; a copy beyond either is dropped and counted, never queued, so a slow or
dead candidate cannot move stable's latency or memory. The candidate's answers are compared
with stable's row by row (agreement), and both predictions are kept per request id (bounded,
oldest evicted first) until the label for that id arrives on stable's ``/feedback``; then the
pair is counted for McNemar's test (``rollout/shadow_analysis.py`` judges the counters).

Why the server mirrors, not the router: the paired comparison needs both answers to the same
request in one place, and a Gateway API ``RequestMirror`` filter discards the mirror's
response by design, so it cannot give them. Mirroring here works the same with either router.

The copy is sent to the candidate's ``/predict`` as ``{"instances": rows}`` with the rows
stable parsed (from ``/predict`` or the v2 ``infer`` endpoint alike), marked with the
:data:`SHADOW_HEADER` header.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from mlops_operator.monitoring.accuracy import label_key
from mlops_operator.serving.request_validation import dumps, loads

logger = logging.getLogger(__name__)

SHADOW_HEADER = "x-mlops-shadow"
#: Predictions kept per request id until their label arrives (oldest evicted first).
DEFAULT_MAX_PAIRS = 100_000


class ShadowMirror:
    """Copies requests to a candidate and counts how its answers compare with stable's."""

    def __init__(
        self,
        url: str,
        version: str,
        *,
        classification: bool,
        max_inflight: int = 32,
        timeout_s: float = 1.0,
        max_pairs: int = DEFAULT_MAX_PAIRS,
    ) -> None:
        self.url = url.rstrip("/") + "/predict"
        self.version = version
        self.classification = classification
        self.max_inflight = max(1, max_inflight)
        self.timeout_s = timeout_s
        self.max_pairs = max(1, max_pairs)
        self.inflight = 0
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # /monitoring and /feedback run on the event loop too, but BentoML may host the app in
        # threads: one lock, held only to update counters and the pair store.
        self._lock = threading.Lock()
        self._pending: OrderedDict[str, tuple[str, str]] = OrderedDict()
        # Ids whose copy is still out, and labels that arrived before the candidate answered
        # (a client may send the label right after stable's answer): counted once it does.
        self._awaiting: set[str] = set()
        self._early: dict[str, str] = {}
        self.mirrored = self.dropped = self.failed = 0
        self.compared = self.agreed = 0
        self.pairs = self.stable_only = self.candidate_only = 0

    # --- request path ---------------------------------------------------------------------------

    def submit(
        self, matrix: npt.NDArray[np.float64], stable_labels: Sequence[Any], ids: Sequence[str]
    ) -> None:
        """Copy one answered request to the candidate, or drop it when too many copies wait."""
        if self.inflight >= self.max_inflight:
            with self._lock:
                self.dropped += 1
            return
        self.inflight += 1
        with self._lock:
            self._awaiting.update(ids)
        task = asyncio.get_running_loop().create_task(self._send(matrix, stable_labels, ids))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(
        self, matrix: npt.NDArray[np.float64], stable_labels: Sequence[Any], ids: Sequence[str]
    ) -> None:
        try:
            if self._client is None:
                limits = httpx.Limits(
                    max_connections=self.max_inflight, max_keepalive_connections=self.max_inflight
                )
                self._client = httpx.AsyncClient(limits=limits, timeout=self.timeout_s)
            body = dumps({"instances": matrix.tolist()})
            headers = {"content-type": "application/json", SHADOW_HEADER: "1"}
            try:
                response = await self._client.post(self.url, content=body, headers=headers)
            except httpx.TimeoutException:
                with self._lock:
                    self.dropped += 1
                return
            except httpx.HTTPError as exc:
                self._count_failure(f"{type(exc).__name__}: {exc}")
                return
            if response.status_code != 200:
                self._count_failure(f"HTTP {response.status_code}")
                return
            try:
                predictions = loads(response.content)["prediction"]
            except (ValueError, KeyError, TypeError) as exc:
                self._count_failure(f"unreadable answer: {exc}")
                return
            if not isinstance(predictions, list) or len(predictions) != len(stable_labels):
                self._count_failure("answer does not have one prediction per row")
                return
            self._compare(stable_labels, predictions, ids)
        finally:
            self.inflight -= 1
            with self._lock:
                self._awaiting.difference_update(ids)
                for request_id in ids:
                    self._early.pop(request_id, None)

    def _count_failure(self, why: str) -> None:
        with self._lock:
            self.mirrored += 1
            self.failed += 1
            first = self.failed == 1
        if first:
            logger.warning("shadow copy to version %s at %s failed: %s", self.version, self.url, why)

    def _compare(self, stable_labels: Sequence[Any], predictions: Sequence[Any], ids: Sequence[str]) -> None:
        if self.classification:
            stable_keys = [label_key(v) for v in stable_labels]
            candidate_keys = [label_key(v) for v in predictions]
        else:
            stable_keys = [repr(float(v)) for v in stable_labels]
            candidate_keys = [repr(float(v)) for v in predictions]
        agreed = sum(1 for a, b in zip(stable_keys, candidate_keys, strict=True) if a == b)
        with self._lock:
            self.mirrored += 1
            self.compared += len(stable_keys)
            self.agreed += agreed
            if not self.classification:
                return  # right or wrong needs a class label: regression pairs are not judged
            pending = self._pending
            for request_id, pair in zip(ids, zip(stable_keys, candidate_keys, strict=True), strict=True):
                early = self._early.pop(request_id, None)
                if early is not None:
                    self._count_pair(pair, early)
                else:
                    pending[request_id] = pair
            while len(pending) > self.max_pairs:
                pending.popitem(last=False)

    # --- feedback -------------------------------------------------------------------------------

    def label(self, request_id: str, label: Any) -> None:
        """Count the pair of ``request_id`` (if both answered it) against its ground truth."""
        truth = label_key(label)
        with self._lock:
            pair = self._pending.pop(request_id, None)
            if pair is not None:
                self._count_pair(pair, truth)
            elif request_id in self._awaiting:
                self._early[request_id] = truth

    def _count_pair(self, pair: tuple[str, str], truth: str) -> None:
        """Count one labelled pair (the lock is held)."""
        stable_right, candidate_right = pair[0] == truth, pair[1] == truth
        self.pairs += 1
        if stable_right and not candidate_right:
            self.stable_only += 1
        elif candidate_right and not stable_right:
            self.candidate_only += 1

    # --- reporting and shutdown -----------------------------------------------------------------

    def counters(self) -> dict[str, Any]:
        """``counters.shadow`` of the ``/monitoring`` snapshot (cumulative since the process began)."""
        with self._lock:
            return {
                "version": self.version,
                "mirrored": self.mirrored,
                "dropped": self.dropped,
                "failed": self.failed,
                "compared": self.compared,
                "agreed": self.agreed,
                "pairs": self.pairs,
                "stableOnly": self.stable_only,
                "candidateOnly": self.candidate_only,
            }

    async def close(self) -> None:
        """Cancel the copies in flight and close the connections."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None
