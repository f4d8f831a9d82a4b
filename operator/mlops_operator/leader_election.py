"""Leader election on a ``coordination.k8s.io/v1`` Lease: of several operator replicas, one acts.

The elector is client-go's (``k8s.io/client-go/tools/leaderelection``, which kube-controller-manager
and every controller-runtime operator use), rewritten in its own terms:

- The Lease's ``spec`` is the record: ``holderIdentity``, ``leaseDurationSeconds``,
  ``acquireTime``, ``renewTime`` (MicroTime) and ``leaseTransitions``.
- A candidate takes the Lease when nobody holds it (``holderIdentity`` empty: released) or when
  it has expired. Expiry is judged by the candidate's own monotonic clock: ``leaseDurationSeconds``
  after the candidate last *saw the record change*, never by comparing ``renewTime`` with a local
  wall clock, so clock skew between nodes cannot make two leaders.
- Every write is a PUT carrying the ``resourceVersion`` that was read: when two candidates race
  for an expired Lease, the API server lets one win and answers the other 409 Conflict.
- The leader renews every ``retry_period``. When no renewal has succeeded for ``renew_deadline``
  (shorter than ``lease_duration``, so before any standby may take over), leadership is lost
  and the process must stop acting at once: ``mlops-operator run`` exits, and the restarted pod
  is a standby. Stricter than client-go: a leader that reads the Lease and finds another holder
  gives up at once rather than at its renew deadline.
- A leader that stops on purpose (SIGTERM) releases the Lease (empty holder,
  ``leaseDurationSeconds: 1``), so a standby takes over at its next retry instead of waiting for
  the Lease to expire.

Why not kopf's own peering: with equal priorities (all replicas of one Deployment share one pod
template, hence one priority) kopf pauses *every* operator that sees another (``Pausing all
operators, including self``, ``kopf/_core/engines/peering.py``), so two replicas means none acts;
with different priorities it needs per-pod settings and its own ``KopfPeering`` CRDs. A Lease is
what Kubernetes itself uses, needs no CRD, and ``kubectl get lease`` shows who leads.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import http.server
import json
import logging
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import kopf
from prometheus_client import Gauge

from mlops_operator.config import leader_election_problems
from mlops_operator.controllers.operator_metrics import REGISTRY
from mlops_operator.kube_client import Kube, NotFound

logger = logging.getLogger(__name__)

LEASE_API_VERSION = "coordination.k8s.io/v1"
#: Where a pod finds its own namespace when the downward API does not set POD_NAMESPACE.
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
#: The exit status of ``mlops-operator run`` when it lost the Lease while acting.
EXIT_LEADERSHIP_LOST = 3

LEADER = Gauge(
    "mlops_operator_leader",
    "1 while this operator process holds the leader-election Lease and acts; 0 while it waits as a standby.",
    registry=REGISTRY,
)


class LeaseUnavailable(Exception):
    """The Lease could not be read or written (API error, 409 Conflict, 403 Forbidden, ...)."""


def micro_time(moment: dt.datetime) -> str:
    """A Kubernetes ``MicroTime``: RFC 3339 in UTC with microseconds (``2026-01-02T03:04:05.000006Z``)."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclasses.dataclass(frozen=True)
class ElectionConfig:
    """Who competes for which Lease, and the timing (client-go's defaults)."""

    lease_name: str
    namespace: str
    identity: str
    lease_duration: int = 15
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    #: Holders starting with this are earlier runs of this very container ("<POD_NAME>_"): a pod
    #: runs one instance of a container at a time, so the kubelet restarted it and the holder
    #: is dead. Only set inside a pod (POD_NAME), where that guarantee holds; empty: none.
    predecessor_prefix: str = ""

    def __post_init__(self) -> None:
        problems = leader_election_problems(self.lease_duration, self.renew_deadline, self.retry_period)
        if self.retry_period <= 0:
            problems.append(f"the retry period ({self.retry_period:g} s) must be positive")
        if not self.identity:
            problems.append("the candidate's identity is empty")
        if problems:
            raise ValueError("leader election: " + "; ".join(problems))


@dataclasses.dataclass(frozen=True)
class LeaseRecord:
    """The leader-election fields of a Lease's spec."""

    holder: str = ""
    lease_duration: int = 0
    acquire_time: str | None = None
    renew_time: str | None = None
    transitions: int = 0

    @classmethod
    def of(cls, lease: dict[str, Any]) -> LeaseRecord:
        spec = lease.get("spec") or {}
        return cls(
            holder=spec.get("holderIdentity") or "",
            lease_duration=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
        )

    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.lease_duration,
            "leaseTransitions": self.transitions,
        }
        if self.acquire_time:
            spec["acquireTime"] = self.acquire_time
        if self.renew_time:
            spec["renewTime"] = self.renew_time
        return spec


class LeaseStore(Protocol):
    """One Lease object on the API server: read it, create it, replace it (PUT with its resourceVersion)."""

    def get(self) -> dict[str, Any] | None: ...

    def create(self, lease: dict[str, Any]) -> dict[str, Any]: ...

    def update(self, lease: dict[str, Any]) -> dict[str, Any]: ...


class KubeLeaseStore:
    """A Lease through the operator's client (its identity, 401 reload, error mapping)."""

    def __init__(self, kube: Kube, namespace: str, name: str) -> None:
        self._kube = kube
        self.namespace, self.name = namespace, name
        self._collection = f"/apis/{LEASE_API_VERSION}/namespaces/{namespace}/leases"

    def _request(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        what = f"{method} Lease {self.namespace}/{self.name}"
        try:
            # Kube has no verb for a kind outside its KINDS table nor a PUT; its one request
            # path gives the same credentials, 401 reload and error messages as every other call.
            return self._kube._call(method, path, body=body, what=what)
        except (kopf.TemporaryError, kopf.PermanentError) as exc:
            hint = ""
            if "HTTP 403" in str(exc):
                hint = (
                    f" (the operator's identity needs get, create and update on leases.coordination.k8s.io "
                    f"in namespace {self.namespace}: the Helm chart grants them)"
                )
            raise LeaseUnavailable(f"{exc}{hint}") from exc

    def get(self) -> dict[str, Any] | None:
        try:
            return self._request("GET", f"{self._collection}/{self.name}")
        except NotFound:
            return None

    def _write(self, method: str, path: str, lease: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._request(method, path, lease)
        except NotFound as exc:  # the namespace does not exist, or the Lease was deleted meanwhile
            raise LeaseUnavailable(f"{exc} (does namespace {self.namespace} exist?)") from exc

    def create(self, lease: dict[str, Any]) -> dict[str, Any]:
        return self._write("POST", self._collection, lease)

    def update(self, lease: dict[str, Any]) -> dict[str, Any]:
        return self._write("PUT", f"{self._collection}/{self.name}", lease)


def _log_failure(action: str, lease: str, exc: LeaseUnavailable) -> None:
    """A lost race (409) is routine among candidates; anything else (403, 404, 5xx) needs a person."""
    level = logging.INFO if "HTTP 409" in str(exc) else logging.WARNING
    logger.log(level, "%s Lease %s failed: %s", action, lease, exc)


class LeaderElector:
    """One candidate for one Lease (thread-safe; see the module's docstring for the rules).

    ``clock`` (monotonic seconds) and ``now`` (wall clock, only written into the Lease for people
    to read) are injectable, so the rules can be tested without waiting.
    """

    def __init__(
        self,
        store: LeaseStore,
        config: ElectionConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.store, self.config = store, config
        self._clock, self._now = clock, now
        self._lock = threading.Lock()
        self._lease: dict[str, Any] | None = None  # the object last read or written
        self._observed = LeaseRecord()
        self._observed_at = -math.inf
        self._renewed_at = -math.inf  # when this candidate's last successful write began
        self._stopping = threading.Event()
        self._lost = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def describe(self) -> str:
        return f"{self.config.namespace}/{self.config.lease_name}"

    @property
    def observed(self) -> LeaseRecord:
        return self._observed

    @property
    def is_leader(self) -> bool:
        return self._observed.holder == self.config.identity

    def _lease_valid(self, now: float) -> bool:
        return self._observed_at + self._observed.lease_duration > now

    def _held_by_predecessor(self, holder: str) -> bool:
        """Whether ``holder`` is an earlier run of this container (see ``predecessor_prefix``)."""
        prefix = self.config.predecessor_prefix
        return bool(prefix) and holder.startswith(prefix) and holder != self.config.identity

    def renewal_overdue(self) -> bool:
        """Whether this leader has gone ``renew_deadline`` without a successful renewal."""
        return self._clock() - self._renewed_at > self.config.renew_deadline

    def _write(self, record: LeaseRecord, started: float) -> None:
        """Create or replace the Lease with ``record`` (the lock held); raises LeaseUnavailable."""
        lease: dict[str, Any]
        if self._lease is None:
            lease = {
                "apiVersion": LEASE_API_VERSION,
                "kind": "Lease",
                "metadata": {
                    "name": self.config.lease_name,
                    "namespace": self.config.namespace,
                    "labels": {
                        "app.kubernetes.io/managed-by": "mlops-operator",
                        "app.kubernetes.io/component": "leader-election",
                    },
                },
                "spec": record.spec(),
            }
            written = self.store.create(lease)
        else:
            lease = copy.deepcopy(self._lease)  # keeps metadata.resourceVersion: optimistic concurrency
            lease["spec"] = {**(lease.get("spec") or {}), **record.spec()}
            written = self.store.update(lease)
        self._lease = written
        self._observed, self._observed_at = record, self._clock()
        if record.holder == self.config.identity:
            self._renewed_at = started

    def try_acquire_or_renew(self) -> bool:
        """One attempt (client-go's ``tryAcquireOrRenew``): True when this candidate now holds the Lease."""
        with self._lock:
            started = self._clock()
            stamp = micro_time(self._now())
            mine = LeaseRecord(self.config.identity, self.config.lease_duration, stamp, stamp)
            # The leader's fast path: replace the Lease as last written, without reading it first.
            if self.is_leader and self._lease_valid(started) and self._lease is not None:
                renewed = dataclasses.replace(
                    mine, acquire_time=self._observed.acquire_time, transitions=self._observed.transitions
                )
                try:
                    self._write(renewed, started)
                    return True
                except LeaseUnavailable as exc:
                    logger.info("renewing Lease %s failed, reading it again: %s", self.describe, exc)
            try:
                current = self.store.get()
            except LeaseUnavailable as exc:
                logger.error("cannot read Lease %s: %s", self.describe, exc)
                return False
            if current is None:
                self._lease = None
                try:
                    self._write(mine, started)
                    return True
                except LeaseUnavailable as exc:
                    _log_failure("creating", self.describe, exc)
                    return False
            self._lease = current
            record = LeaseRecord.of(current)
            if record != self._observed:
                self._observed, self._observed_at = record, self._clock()
            if (
                record.holder
                and not self.is_leader
                and self._lease_valid(started)
                and not self._held_by_predecessor(record.holder)
            ):
                return False  # held by another candidate, and not expired
            if self.is_leader:
                mine = dataclasses.replace(
                    mine, acquire_time=record.acquire_time, transitions=record.transitions
                )
            else:
                mine = dataclasses.replace(mine, transitions=record.transitions + 1)
            try:
                self._write(mine, started)
                return True
            except LeaseUnavailable as exc:  # most often 409: another candidate was faster
                _log_failure("taking", self.describe, exc)
                return False

    def acquire(self, stop: threading.Event) -> bool:
        """Wait as a standby until this candidate holds the Lease (True), or ``stop`` is set (False)."""
        logger.info("leader election: %s waits for Lease %s", self.config.identity, self.describe)
        LEADER.set(0)
        seen: str | None = None
        while not stop.is_set():
            if self.try_acquire_or_renew():
                LEADER.set(1)
                logger.info(
                    "leader election: %s acquired Lease %s (transition %d): acting",
                    self.config.identity,
                    self.describe,
                    self._observed.transitions,
                )
                return True
            if self._observed.holder != seen:
                seen = self._observed.holder
                logger.info("leader election: Lease %s is held by %s; standing by", self.describe, seen)
            stop.wait(self.config.retry_period)
        return False

    def keep_renewing(self, on_lost: Callable[[str], None]) -> None:
        """Renew every ``retry_period`` in the background; call ``on_lost(reason)`` once if leadership
        is lost (another holder seen, or no renewal for ``renew_deadline``, even when a request hangs)."""
        self._stopping.clear()
        self._threads = [
            threading.Thread(target=self._renew_loop, args=(on_lost,), name="lease-renewer", daemon=True),
            threading.Thread(target=self._watchdog, args=(on_lost,), name="lease-watchdog", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _lose(self, on_lost: Callable[[str], None], reason: str) -> None:
        if self._stopping.is_set() or self._lost.is_set():
            return
        self._lost.set()
        LEADER.set(0)
        on_lost(reason)

    def _renew_loop(self, on_lost: Callable[[str], None]) -> None:
        while not self._stopping.wait(self.config.retry_period):
            if self.try_acquire_or_renew():
                continue
            holder = self._observed.holder
            if holder and holder != self.config.identity:
                self._lose(on_lost, f"Lease {self.describe} is now held by {holder}")
                return

    def _watchdog(self, on_lost: Callable[[str], None]) -> None:
        while not self._stopping.is_set() and not self._lost.is_set():
            left = self._renewed_at + self.config.renew_deadline - self._clock()
            if left <= 0:
                self._lose(
                    on_lost,
                    f"no renewal of Lease {self.describe} succeeded for {self.config.renew_deadline:g} s "
                    "(the renew deadline)",
                )
                return
            self._stopping.wait(left)

    def stop_renewing(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(self.config.renew_deadline)
        self._threads = []

    def release(self) -> bool:
        """Give the Lease up (empty holder, 1 s): a standby takes over at its next retry. True: done."""
        if not self._lock.acquire(timeout=self.config.renew_deadline):
            logger.error("leader election: cannot release Lease %s: a renewal hangs", self.describe)
            return False
        try:
            if not self.is_leader:
                return True
            stamp = micro_time(self._now())
            released = LeaseRecord("", 1, stamp, stamp, self._observed.transitions)
            try:
                self._write(released, self._clock())
            except LeaseUnavailable as exc:
                logger.error("leader election: releasing Lease %s failed: %s", self.describe, exc)
                return False
            LEADER.set(0)
            logger.info("leader election: %s released Lease %s", self.config.identity, self.describe)
            return True
        finally:
            self._lock.release()


def candidate_identity() -> str:
    """This process's identity: the pod's name (``POD_NAME``, from the downward API; else the host
    name) and a random suffix, so a restarted container is a new candidate, as with client-go."""
    base = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{base}_{secrets.token_hex(4)}"


def predecessor_prefix() -> str:
    """``<POD_NAME>_`` inside a pod (earlier holders with it were this container before a
    restart, so a crashed operator's successor need not wait out its Lease); else empty."""
    pod = os.environ.get("POD_NAME")
    return f"{pod}_" if pod else ""


def lease_namespace(configured: str = "") -> str:
    """Where the Lease lives: ``configured``, else the pod's namespace (``POD_NAMESPACE`` or its
    ServiceAccount's), else ``default`` (outside a cluster)."""
    if configured:
        return configured
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


class _HealthHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.split("?")[0] != "/healthz":
            self.send_error(404)
            return
        body = json.dumps({"leader-election": "standby"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a probe every few seconds is not worth a log line


@contextmanager
def standby_health(port: int) -> Iterator[None]:
    """``/healthz`` on ``port`` while the block runs (0: none): a standby is healthy and must not be
    restarted by its liveness probe. kopf serves the same path on the same port once leading."""
    if not port:
        yield
        return
    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), _HealthHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="standby-healthz", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
