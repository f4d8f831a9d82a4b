"""The operator's scraper of the model servers' ``/monitoring`` snapshots.

Every InferenceService's reconciliation (on its timer, every ``reconcileInterval``) reads the
``/monitoring`` snapshot of each ready predictor pod. Reconciliations run on kopf's bounded
thread pool, so a slow or dead pod must not hold a reconciliation thread for long, and a
thousand services must not queue up behind a few bad pods. Hence:

- one process-wide pool of :data:`MAX_CONCURRENCY` scraping threads: the total number of
  requests in flight is bounded whatever the number of services;
- a service's pods are scraped concurrently, and the caller waits at most ``timeout`` seconds
  in all (queueing, connect, request and reading the body: a total deadline per pod, not a
  per-``recv`` one, so a server that trickles its answer is cut off too); a request still
  queued when its deadline passes is dropped, never sent late;
- a short connect timeout (an unroutable address fails fast);
- a pod that failed (refused, timed out, bad answer) is skipped for a while, doubling from
  :data:`BACKOFF_BASE` up to :data:`BACKOFF_MAX` seconds (+-20% at random, so pods that failed
  together are not all asked again in the same tick), so a dead pod costs one timeout per
  back-off, not one per tick; its first successful answer clears it. The first back-off is
  shorter than the default 30 s interval: a pod that failed once is asked again on the next
  tick, and only one that keeps failing is asked ever more rarely (about ticks 1, 2, 4, 7, 13,
  then every 8th);
- ``mlops_monitoring_scrapes_total{result}`` and ``mlops_monitoring_scrape_duration_seconds``
  count and time every attempt (see ``controllers/operator_metrics.py``).

A pod skipped or failed is simply absent from the result: monitoring summarises the pods that
answered, as it did when a pod did not answer before.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from typing import Any

#: Requests in flight at once, for the whole operator process.
MAX_CONCURRENCY = 32
#: Seconds to establish the TCP connection to a pod.
CONNECT_TIMEOUT = 0.5
#: Seconds for one pod's whole scrape, from the moment it is asked for (queueing included).
TIMEOUT = 2.0
#: Seconds a failed pod is skipped after its first failure; doubles with each further one.
BACKOFF_BASE = 20.0
#: The longest a failing pod is skipped between two attempts.
BACKOFF_MAX = 240.0
#: Each back-off is stretched or shrunk by up to this share at random, so pods that failed
#: together (a node gone) are not all asked again in the same tick.
BACKOFF_JITTER = 0.2
#: A /monitoring answer larger than this is refused (bytes).
MAX_BODY = 16 * 1024 * 1024

#: Results, the ``result`` label of ``mlops_monitoring_scrapes_total``.
SUCCESS, ERROR, TIMEOUT_RESULT, SKIPPED, DROPPED = "success", "error", "timeout", "skipped", "dropped"


class ScrapeError(Exception):
    """A pod answered, but not with a usable snapshot."""


@dataclass(frozen=True)
class ScrapeTarget:
    """One pod to scrape: its name (for messages), the address of its server, and ``identity``:
    what tells this pod's current life from another at the same address (pod IPs are reused by
    new pods; a restarted container that is Ready again deserves a fresh start). The operator
    passes the pod's uid and when it last became Ready."""

    pod: str
    host: str
    port: int
    path: str = "/monitoring"
    identity: str = ""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def key(self) -> str:
        """What a back-off is remembered by."""
        return f"{self.identity}@{self.address}" if self.identity else self.address


@dataclass
class _Backoff:
    failures: int
    until: float


def _observe_nothing(result: str, seconds: float | None) -> None:
    pass


class Scraper:
    """Bounded, deadline-driven scraping of many small JSON endpoints from synchronous code.

    ``observe(result, seconds)`` is called once per target asked for (``seconds`` is None for
    a pod skipped or dropped without a request).
    """

    def __init__(
        self,
        max_concurrency: int = MAX_CONCURRENCY,
        connect_timeout: float = CONNECT_TIMEOUT,
        timeout: float = TIMEOUT,
        backoff_base: float = BACKOFF_BASE,
        backoff_max: float = BACKOFF_MAX,
        backoff_jitter: float = BACKOFF_JITTER,
        observe: Callable[[str, float | None], None] = _observe_nothing,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self.max_concurrency = max_concurrency
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.backoff_jitter = backoff_jitter
        self._observe = observe
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="monitoring-scrape")
        self._lock = threading.Lock()
        self._backoff: dict[str, _Backoff] = {}
        self._in_flight = 0
        #: The most requests ever in flight at once (for tests and the benchmark).
        self.max_in_flight = 0

    # --- the public side ----------------------------------------------------------------------

    def fetch(self, targets: Sequence[ScrapeTarget]) -> list[dict[str, Any]]:
        """The snapshots of the targets that answered in time, in the targets' order."""
        started = self._clock()
        deadline = started + self.timeout
        futures: list[Future[dict[str, Any] | None]] = []
        for target in targets:
            if self._backing_off(target, started):
                self._observe(SKIPPED, None)
                continue
            futures.append(self._pool.submit(self._scrape, target, deadline))
        if not futures:
            return []
        # The workers enforce the deadline themselves; the margin covers their bookkeeping.
        wait_futures(futures, timeout=max(0.0, deadline - self._clock()) + 0.05)
        snapshots = []
        for future in futures:
            if future.done() and not future.cancelled() and future.exception() is None:
                snapshot = future.result()
                if snapshot is not None:
                    snapshots.append(snapshot)
        return snapshots

    def backing_off(self) -> list[str]:
        """Targets (by :attr:`ScrapeTarget.key`) currently skipped after failures."""
        now = self._clock()
        with self._lock:
            return sorted(key for key, entry in self._backoff.items() if entry.until > now)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- the workers ---------------------------------------------------------------------------

    def _backing_off(self, target: ScrapeTarget, now: float) -> bool:
        with self._lock:
            entry = self._backoff.get(target.key)
            return entry is not None and entry.until > now

    def _scrape(self, target: ScrapeTarget, deadline: float) -> dict[str, Any] | None:
        started = self._clock()
        if started >= deadline:  # queued behind other pods for longer than a whole scrape
            self._observe(DROPPED, None)
            return None
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            snapshot = get_json(target, self.connect_timeout, deadline, self._clock)
        except TimeoutError:
            self._failed(target, TIMEOUT_RESULT, started)
            return None
        except (OSError, http.client.HTTPException, ScrapeError, ValueError):
            self._failed(target, ERROR, started)
            return None
        finally:
            with self._lock:
                self._in_flight -= 1
        with self._lock:
            self._backoff.pop(target.key, None)
        self._observe(SUCCESS, self._clock() - started)
        return snapshot

    def _failed(self, target: ScrapeTarget, result: str, started: float) -> None:
        now = self._clock()
        with self._lock:
            previous = self._backoff.get(target.key)
            failures = (previous.failures if previous else 0) + 1
            delay = min(self.backoff_max, self.backoff_base * 2 ** (failures - 1))
            delay *= 1 + random.uniform(-self.backoff_jitter, self.backoff_jitter)
            self._backoff[target.key] = _Backoff(failures, now + delay)
            # Forget pods long gone (nobody asks for them any more).
            if len(self._backoff) > 4096:
                horizon = now - self.backoff_max
                for key in [k for k, e in self._backoff.items() if e.until < horizon]:
                    del self._backoff[key]
        self._observe(result, now - started)


def get_json(
    target: ScrapeTarget,
    connect_timeout: float,
    deadline: float,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """``GET`` a JSON object, all of it by ``deadline`` (a ``clock()`` value), or raise."""

    def remaining() -> float:
        left = deadline - clock()
        if left <= 0:
            raise TimeoutError(f"{target.address}: no complete answer in time")
        return left

    connection = http.client.HTTPConnection(
        target.host, target.port, timeout=min(connect_timeout, remaining())
    )
    try:
        connection.connect()
        sock = connection.sock
        assert sock is not None
        sock.settimeout(remaining())
        connection.request("GET", target.path, headers={"Accept": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            raise ScrapeError(f"{target.address}{target.path}: HTTP {response.status}")
        body = bytearray()
        while True:
            # Each read waits at most what is left of the deadline: a total, not per-read, limit.
            sock.settimeout(remaining())
            chunk = response.read1(65536)
            if not chunk:
                break
            body += chunk
            if len(body) > MAX_BODY:
                raise ScrapeError(f"{target.address}{target.path}: answer larger than {MAX_BODY} bytes")
        snapshot = json.loads(body)
        if not isinstance(snapshot, dict):
            raise ScrapeError(f"{target.address}{target.path}: not a JSON object")
        return snapshot
    finally:
        connection.close()


def operator_scraper() -> Scraper:
    """The operator's scraper, recording each scrape in the operator's metrics (one per
    process: :class:`~mlops_operator.controllers.collaborators.Collaborators` holds it)."""
    from mlops_operator.controllers.operator_metrics import record_scrape

    return Scraper(observe=record_scrape)
