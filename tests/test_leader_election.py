"""High availability: of several operator replicas, exactly one acts (leader election on a Lease).

First the elector's rules with a fake clock and an in-memory Lease that honours resourceVersion
(no waiting); then real ``mlops-operator run`` processes against the emulated API server, each
with its own token so that the server's audit tells who asked for what:

- while the leader lives, a standby makes no request but reading the Lease (no write to the
  operator's resources or their children, no watch either);
- a leader killed with SIGKILL is replaced once its Lease expires (lease duration plus at most two
  retry periods), and the new leader acts;
- a leader stopped with SIGTERM releases the Lease and the standby takes over at its next retry,
  long before the Lease could have expired;
- a leader that finds the Lease taken from it exits at once with status 3.

The processes use short durations (3 s Lease, 2 s renew deadline, 0.5 s retry) to keep the test
fast; the measured takeover times are recorded as properties and printed.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as dt
import os
import re
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from mlops_operator import leader_election
from mlops_operator.config import Settings
from mlops_operator.kube_client import Kube
from mlops_operator.leader_election import (
    EXIT_LEADERSHIP_LOST,
    ElectionConfig,
    KubeLeaseStore,
    LeaderElector,
    LeaseRecord,
    LeaseUnavailable,
    candidate_identity,
    lease_namespace,
)
from mlops_operator.operator_command import add_arguments, settings_from
from mlops_operator.sandbox.apiserver import ApiServerThread, write_kubeconfig
from mlops_operator.sandbox.apiserver.authentication import Authenticator, RequestAttributes, UserInfo
from mlops_operator.sandbox.apiserver.rbac import Authorizer
from mlops_operator.sandbox.images import bin_dir
from mlops_operator.sandbox.manager import default_crds
from mlops_operator.sandbox.mlflow_server import free_port
from tests.fixtures_operator import example
from tests.fixtures_sandbox import Api, wait_for
from tests.test_chart import NAMESPACE, render
from tests.test_rbac_audit import BOOTSTRAP

MICRO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
WRITES = {"create", "update", "patch", "delete", "deletecollection"}


# --- the rules, with a fake clock ------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class MemoryLease:
    """One Lease as the API server keeps it: resourceVersion bumped on every write, a PUT with a
    stale resourceVersion refused (409), a create of an existing Lease refused (409)."""

    def __init__(self) -> None:
        self.obj: dict[str, Any] | None = None
        self.version = 0
        self.failing = False
        self.writes = 0

    def _check(self) -> None:
        if self.failing:
            raise LeaseUnavailable("HTTP 503: the API server is unavailable")

    def get(self) -> dict[str, Any] | None:
        self._check()
        return copy.deepcopy(self.obj)

    def create(self, lease: dict[str, Any]) -> dict[str, Any]:
        self._check()
        if self.obj is not None:
            raise LeaseUnavailable("HTTP 409: already exists")
        return self._store(lease)

    def update(self, lease: dict[str, Any]) -> dict[str, Any]:
        self._check()
        assert self.obj is not None
        if lease["metadata"].get("resourceVersion") != self.obj["metadata"]["resourceVersion"]:
            raise LeaseUnavailable("HTTP 409: the object has been modified")
        return self._store(lease)

    def _store(self, lease: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        self.writes += 1
        self.obj = copy.deepcopy(lease)
        self.obj["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.obj)

    def record(self) -> LeaseRecord:
        assert self.obj is not None
        return LeaseRecord.of(self.obj)


def _elector(store: MemoryLease, clock: FakeClock, identity: str, **timing: Any) -> LeaderElector:
    config = ElectionConfig(lease_name="mlops-operator", namespace="ops", identity=identity, **timing)
    return LeaderElector(store, config, clock=clock)


def test_the_first_candidate_takes_the_lease_and_the_second_stands_by() -> None:
    store, clock = MemoryLease(), FakeClock()
    a, b = _elector(store, clock, "a"), _elector(store, clock, "b")
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    record = store.record()
    assert (record.holder, record.lease_duration, record.transitions) == ("a", 15, 0)
    assert record.acquire_time and MICRO_TIME.match(record.acquire_time), record
    assert record.renew_time and MICRO_TIME.match(record.renew_time), record
    assert a.is_leader and not b.is_leader and b.observed.holder == "a"


def test_a_renewing_leader_keeps_the_lease_and_its_acquire_time() -> None:
    store, clock = MemoryLease(), FakeClock()
    times = iter(dt.datetime(2026, 1, 1, 0, 0, s, tzinfo=dt.UTC) for s in range(60))
    a = LeaderElector(store, ElectionConfig("l", "ops", "a"), clock=clock, now=lambda: next(times))
    b = _elector(store, clock, "b")
    assert a.try_acquire_or_renew()
    acquired = store.record().acquire_time
    for _ in range(20):  # 40 s: far past one lease duration, but renewed every 2 s
        clock.advance(2)
        assert a.try_acquire_or_renew()
        assert not b.try_acquire_or_renew(), "the standby took a Lease that was being renewed"
    record = store.record()
    assert record.acquire_time == acquired and record.renew_time != acquired
    assert record.transitions == 0


def test_a_standby_takes_over_only_once_the_lease_expired_by_its_own_clock() -> None:
    """Expiry counts from when the standby last saw the record change, not from renewTime: a
    renewTime far in the past (a skewed clock) does not make the Lease expired."""
    store, clock = MemoryLease(), FakeClock()
    old = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    a = LeaderElector(store, ElectionConfig("l", "ops", "a"), clock=clock, now=lambda: old)
    b = _elector(store, clock, "b")
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()  # first sight of a's record
    clock.advance(14.9)  # a died: no renewal since
    assert not b.try_acquire_or_renew()
    clock.advance(0.2)
    assert b.try_acquire_or_renew()
    record = store.record()
    assert (record.holder, record.transitions) == ("b", 1)
    # The old leader, back from a pause, finds the Lease taken and does not take it back.
    assert not a.try_acquire_or_renew()
    assert store.record().holder == "b" and not a.is_leader


def test_a_released_lease_is_taken_at_the_next_attempt() -> None:
    store, clock = MemoryLease(), FakeClock()
    a, b = _elector(store, clock, "a"), _elector(store, clock, "b")
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    assert a.release()
    record = store.record()
    assert (record.holder, record.lease_duration) == ("", 1)
    assert b.try_acquire_or_renew(), "a released Lease must not need to expire first"
    assert (store.record().holder, store.record().transitions) == ("b", 1)
    assert a.release()  # not the leader any more: nothing to do
    assert store.record().holder == "b"


def test_of_two_candidates_racing_for_an_expired_lease_one_wins() -> None:
    store, clock = MemoryLease(), FakeClock()
    a, b, c = (_elector(store, clock, name) for name in "abc")
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew() and not c.try_acquire_or_renew()
    clock.advance(16)
    # b and c both read the expired Lease; b writes first; c's PUT carries a stale resourceVersion.
    original_get = store.get
    seen = original_get()
    store.get = lambda: copy.deepcopy(seen)  # type: ignore[method-assign]
    assert b.try_acquire_or_renew()
    assert not c.try_acquire_or_renew()
    store.get = original_get  # type: ignore[method-assign]
    assert store.record().holder == "b" and store.record().transitions == 1


def test_a_renewal_that_fails_makes_the_leader_overdue_after_the_renew_deadline() -> None:
    store, clock = MemoryLease(), FakeClock()
    a = _elector(store, clock, "a")
    assert a.try_acquire_or_renew()
    store.failing = True
    clock.advance(9)
    assert not a.try_acquire_or_renew() and not a.renewal_overdue()
    clock.advance(1.5)
    assert a.renewal_overdue()


@pytest.mark.parametrize(
    ("timing", "message"),
    [
        ({"lease_duration": 10, "renew_deadline": 10}, "LEASE_DURATION (10 s) must be longer than"),
        ({"renew_deadline": 2, "retry_period": 2}, "RENEW_DEADLINE (2 s) must be longer than"),
        ({"retry_period": 0}, "must be positive"),
    ],
    ids=["renew-deadline-not-below-lease", "retry-not-below-renew-deadline", "zero-retry"],
)
def test_timing_that_could_make_two_leaders_is_refused(timing: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        ElectionConfig("l", "ops", "a", **timing)  # type: ignore[arg-type]


def test_settings_refuse_a_renew_deadline_longer_than_the_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_LEADER_ELECTION_LEASE_DURATION", "5")
    monkeypatch.setenv("MLOPS_LEADER_ELECTION_RENEW_DEADLINE", "8")
    with pytest.raises(ValidationError, match="a leader must give up before a standby may take over"):
        Settings()


def test_each_process_is_a_new_candidate_named_after_its_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "mlops-operator-7d9f-abcde")
    first, second = candidate_identity(), candidate_identity()
    assert first.startswith("mlops-operator-7d9f-abcde_") and first != second


def test_the_lease_lives_in_the_pods_namespace(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(leader_election, "SERVICE_ACCOUNT_NAMESPACE", tmp_path / "namespace")
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    assert lease_namespace() == "default"  # outside a cluster
    (tmp_path / "namespace").write_text("from-the-token\n")
    assert lease_namespace() == "from-the-token"
    monkeypatch.setenv("POD_NAMESPACE", "mlops-system")
    assert lease_namespace() == "mlops-system"


@pytest.mark.parametrize(("flags", "expected"), [([], True), (["--no-leader-election"], False)])
def test_no_leader_election_flag(flags: list[str], expected: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLOPS_LEADER_ELECTION", raising=False)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert settings_from(parser.parse_args(flags)).leader_election is expected


def test_a_standby_stops_waiting_when_told_to() -> None:
    store = MemoryLease()
    holder = LeaderElector(store, ElectionConfig("l", "ops", "holder"))
    assert holder.try_acquire_or_renew()
    standby = LeaderElector(store, ElectionConfig("l", "ops", "standby", retry_period=0.05, renew_deadline=1))
    stop, result = threading.Event(), []
    waiting = threading.Thread(target=lambda: result.append(standby.acquire(stop)))
    waiting.start()
    wait_for(lambda: standby.observed.holder == "holder", message="the standby seeing the holder")
    stop.set()
    waiting.join(10)
    assert result == [False] and store.record().holder == "holder"


def _wait_event(event: threading.Event, timeout: float = 10) -> None:
    assert event.wait(timeout), "on_lost was not called"


def test_a_leader_that_cannot_renew_gives_up_at_its_renew_deadline_even_if_a_request_hangs() -> None:
    store = MemoryLease()
    a = LeaderElector(
        store, ElectionConfig("l", "ops", "a", lease_duration=2, renew_deadline=0.4, retry_period=0.1)
    )
    assert a.try_acquire_or_renew()
    hang = threading.Event()

    def hanging_update(lease: dict[str, Any]) -> dict[str, Any]:
        hang.wait(5)  # a request that never answers
        raise LeaseUnavailable("timed out")

    store.update = hanging_update  # type: ignore[method-assign]
    lost: list[str] = []
    called = threading.Event()
    a.keep_renewing(lambda reason: (lost.append(reason), called.set()))
    try:
        _wait_event(called)
    finally:
        hang.set()
        a.stop_renewing()
    assert "renew deadline" in lost[0] and len(lost) == 1


def test_a_leader_that_finds_another_holder_gives_up_at_once() -> None:
    store = MemoryLease()
    a = LeaderElector(
        store, ElectionConfig("l", "ops", "a", lease_duration=30, renew_deadline=20, retry_period=0.05)
    )
    assert a.try_acquire_or_renew()
    assert store.obj is not None
    intruder = copy.deepcopy(store.obj)
    intruder["spec"]["holderIdentity"] = "intruder"
    store.update(intruder)  # e.g. after a partition, another replica took the expired Lease
    lost: list[str] = []
    called = threading.Event()
    a.keep_renewing(lambda reason: (lost.append(reason), called.set()))
    try:
        _wait_event(called)
    finally:
        a.stop_renewing()
    assert lost == ["Lease ops/l is now held by intruder"]
    assert store.record().holder == "intruder"


# --- real operator processes against the emulated API server ---------------------------------


@dataclasses.dataclass
class Replica:
    name: str
    user: str
    process: subprocess.Popen[bytes]
    log: Path
    liveness: int
    metrics: int

    def healthy(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.liveness}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def leader_gauge(self) -> float | None:
        try:
            text = httpx.get(f"http://127.0.0.1:{self.metrics}/metrics", timeout=2).text
        except httpx.HTTPError:
            return None
        found = re.search(r"^mlops_operator_leader (\S+)$", text, re.M)
        return float(found.group(1)) if found else None

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@dataclasses.dataclass
class HaCluster:
    server: ApiServerThread
    admin: Api
    tmp: Path
    tokens: dict[str, str]
    replicas: list[Replica]

    def start(
        self, name: str, lease: str, *, duration: int = 3, deadline: float = 2, retry: float = 0.5
    ) -> Replica:
        token = secrets.token_urlsafe(16)
        user = UserInfo.service_account(NAMESPACE, f"replica-{name}")
        self.server.authenticator.add_token(token, user)
        kubeconfig = write_kubeconfig(
            self.tmp / f"{name}.kubeconfig", self.server.url, token=token, ca=self.server.certificates.ca
        )
        liveness, metrics = free_port(), free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "POD_NAME": f"op-{name}",
            "POD_NAMESPACE": NAMESPACE,
            "MLOPS_METRICS_PORT": str(metrics),
            "MLOPS_LIVENESS_PORT": str(liveness),
            "MLOPS_RECONCILE_INTERVAL": "1",
            "MLOPS_MLFLOW_TRACKING_URI": "http://127.0.0.1:9",  # nothing listens: MLflow is down
            "MLOPS_LEADER_ELECTION_LEASE_NAME": lease,
            "MLOPS_LEADER_ELECTION_LEASE_DURATION": str(duration),
            "MLOPS_LEADER_ELECTION_RENEW_DEADLINE": str(deadline),
            "MLOPS_LEADER_ELECTION_RETRY_PERIOD": str(retry),
        }
        log = self.tmp / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                [os.path.join(bin_dir(), "mlops-operator"), "run", "--all-namespaces"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            )  # fmt: skip
        replica = Replica(name, user.username, process, log, liveness, metrics)
        self.replicas.append(replica)
        return replica

    def lease(self, name: str) -> dict[str, Any] | None:
        response = self.admin.http.get(f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{name}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        lease: dict[str, Any] = response.json()
        return lease

    def holder(self, name: str) -> str:
        return str(((self.lease(name) or {}).get("spec") or {}).get("holderIdentity") or "")

    def requests_of(self, replica: Replica) -> list[dict[str, Any]]:
        return [e for e in list(self.server.emulator.audit.events) if e["user"]["username"] == replica.user]

    def wait_leading(self, replica: Replica, lease: str, timeout: float = 60) -> None:
        wait_for(
            lambda: self.holder(lease).startswith(f"op-{replica.name}_") and replica.leader_gauge() == 1,
            timeout=timeout,
            message=f"replica {replica.name} leading; its log:\n{replica.output()}",
        )

    def wait_standby(self, replica: Replica, timeout: float = 60) -> None:
        wait_for(
            lambda: (
                replica.healthy()
                and replica.leader_gauge() == 0
                and any(e["verb"] == "get" for e in self.requests_of(replica))
            ),
            timeout=timeout,
            message=f"replica {replica.name} standing by; its log:\n{replica.output()}",
        )


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HaCluster]:
    tmp = tmp_path_factory.mktemp("ha")
    admin_token = secrets.token_urlsafe(16)
    server = ApiServerThread(
        crds_dir=default_crds(tmp), authenticator=Authenticator({admin_token: UserInfo.admin()})
    ).start()
    admin = Api(server.url, admin_token, server.certificates.ca)
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    admin.http.post("/api/v1/namespaces", json=namespace).raise_for_status()
    cluster = HaCluster(server, admin, tmp, {}, [])
    try:
        yield cluster
    finally:
        for replica in cluster.replicas:
            if replica.process.poll() is None:
                replica.process.kill()
                replica.process.wait(10)
        server.stop()


def test_the_lease_store_speaks_to_the_api_server_as_the_elector_expects(ha: HaCluster) -> None:
    token = secrets.token_urlsafe(16)
    ha.server.authenticator.add_token(token, UserInfo.service_account(NAMESPACE, "store"))
    kubeconfig = write_kubeconfig(
        ha.tmp / "store.kubeconfig", ha.server.url, token=token, ca=ha.server.certificates.ca
    )
    kube = Kube.from_environment(str(kubeconfig))
    missing = KubeLeaseStore(kube, "no-such-namespace", "l")
    assert missing.get() is None
    with pytest.raises(LeaseUnavailable, match="does namespace no-such-namespace exist"):
        missing.create({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"}})
    store = KubeLeaseStore(kube, NAMESPACE, "store-test")
    a = LeaderElector(store, ElectionConfig("store-test", NAMESPACE, "a"))
    b = LeaderElector(store, ElectionConfig("store-test", NAMESPACE, "b"))
    assert a.try_acquire_or_renew() and not b.try_acquire_or_renew()
    stale = store.get()
    assert stale is not None and a.try_acquire_or_renew()  # a renewal: a new resourceVersion
    with pytest.raises(LeaseUnavailable, match="HTTP 409"):
        store.update(stale)
    assert a.release() and b.try_acquire_or_renew()
    assert LeaseRecord.of(store.get() or {}).holder == "b"


def _kind_of(event: dict[str, Any]) -> str:
    return str((event.get("objectRef") or {}).get("resource") or event["requestURI"])


def _measure(cluster: HaCluster, lease: str, successor: Replica, since: float, timeout: float) -> float:
    wait_for(
        lambda: cluster.holder(lease).startswith(f"op-{successor.name}_"),
        timeout=timeout,
        interval=0.05,
        message=f"replica {successor.name} taking over; its log:\n{successor.output()}",
    )
    return time.monotonic() - since


def _leader_and_standbys(
    cluster: HaCluster, lease: str, replicas: list[Replica]
) -> tuple[Replica, list[Replica]]:
    wait_for(
        lambda: cluster.holder(lease),
        timeout=60,
        message="a leader; logs:\n" + "\n".join(r.output() for r in replicas),
    )
    holder = cluster.holder(lease)
    (leader,) = [r for r in replicas if holder.startswith(f"op-{r.name}_")]
    cluster.wait_leading(leader, lease)
    standbys = [r for r in replicas if r is not leader]
    for standby in standbys:
        cluster.wait_standby(standby)
    return leader, standbys


def test_one_replica_acts_and_a_standby_takes_over(
    ha: HaCluster, record_property: Callable[[str, object], None]
) -> None:
    lease, duration, deadline, retry = "mlops-operator", 6, 4, 0.5
    timing = {"duration": duration, "deadline": deadline, "retry": retry}
    replicas = [ha.start(name, lease, **timing) for name in "abcd"]
    first, standbys = _leader_and_standbys(ha, lease, replicas)

    # Only the leader acts.
    ha.admin.create(example("iris-trainingjob.yaml", schedule=None))
    wait_for(
        lambda: ha.admin.get("Job", "iris-train-1"), message=f"the leader's Job; its log:\n{first.output()}"
    )
    wait_for(
        lambda: (ha.admin.get("TrainingJob", "iris-train") or {}).get("status", {}).get("conditions"),
        message="the leader's status",
    )
    writes = {(_kind_of(e), e["verb"]) for e in ha.requests_of(first) if e["verb"] in WRITES}
    assert {("jobs", "create"), ("trainingjobs", "patch")} <= writes, writes
    # The standby asked for nothing but the Lease: no write, no list or watch of anything.
    for standby in standbys:
        asked = {(_kind_of(e), e["verb"]) for e in ha.requests_of(standby)}
        assert asked == {("leases", "get")}, asked

    # The chart's RBAC grants every Lease request the replicas made (as its ServiceAccount);
    # wait for the leader's first renewal (an update), which the check must include.
    wait_for(
        lambda: any(_kind_of(e) == "leases" and e["verb"] == "update" for e in ha.requests_of(first)),
        message="the leader's first renewal",
    )
    account = UserInfo.service_account(NAMESPACE, "mlops-mlops-operator")
    authorizer = Authorizer.from_objects([*render("defaults"), *BOOTSTRAP], namespace=NAMESPACE)
    lease_requests = {
        RequestAttributes(
            account.username, account.groups, e["verb"], api_group="coordination.k8s.io", resource="leases",
            namespace=NAMESPACE, name=(e.get("objectRef") or {}).get("name", ""),
        )
        for replica in (first, *standbys) for e in ha.requests_of(replica) if _kind_of(e) == "leases"
    }  # fmt: skip
    assert {r.verb for r in lease_requests} == {"get", "create", "update"}
    denied = [r for r in lease_requests if not authorizer.authorize(r).allowed]
    assert not denied, denied

    # SIGTERM (a rolling update, a drain): the leader releases the Lease and a standby takes over
    # at its next attempt, long before the Lease could have expired.
    transitions = (ha.lease(lease) or {})["spec"]["leaseTransitions"]
    first.process.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    wait_for(
        lambda: (holder := ha.holder(lease)) and not holder.startswith(f"op-{first.name}_"),
        timeout=duration - retry,
        interval=0.05,
        message="a standby taking over from a stopped leader before the Lease expired",
    )
    took = time.monotonic() - stopped
    record_property("ha_takeover_after_sigterm_seconds", round(took, 2))
    print(f"takeover after SIGTERM: {took:.2f} s (lease {duration} s, retry {retry} s)")
    assert first.process.wait(30) == 0, first.output()
    assert "released Lease" in first.output()
    assert (ha.lease(lease) or {})["spec"]["leaseTransitions"] == transitions + 1
    second, standbys = _leader_and_standbys(ha, lease, standbys)

    # SIGKILL (a crash, a lost node): no release; the last standby takes over once the Lease expired.
    second.process.kill()
    killed = time.monotonic()
    second.process.wait(10)
    wait_for(
        lambda: any(ha.holder(lease).startswith(f"op-{r.name}_") for r in standbys),
        timeout=duration + 2 * retry + 10,
        interval=0.05,
        message="a standby taking over from a killed leader; logs:\n"
        + "\n".join(r.output() for r in standbys),
    )
    took = time.monotonic() - killed
    (last,) = [r for r in standbys if ha.holder(lease).startswith(f"op-{r.name}_")]
    (final,) = [r for r in standbys if r is not last]
    record_property("ha_takeover_after_sigkill_seconds", round(took, 2))
    print(f"takeover after SIGKILL: {took:.2f} s (lease {duration} s, retry {retry} s)")
    assert (ha.lease(lease) or {})["spec"]["leaseTransitions"] == transitions + 2
    # The new leader acts: it reconciles what exists and what comes.
    second_job = example("iris-trainingjob.yaml", schedule=None)
    second_job["metadata"] = {"name": "second", "namespace": "default"}
    ha.admin.create(second_job)
    wait_for(
        lambda: ha.admin.get("Job", "second-1"), message=f"the new leader's Job; its log:\n{last.output()}"
    )
    assert ("jobs", "create") in {(_kind_of(e), e["verb"]) for e in ha.requests_of(last)}

    # A leader whose Lease is taken from it (another holder, after a partition) exits at once.
    stolen = ha.lease(lease) or {}
    stolen["spec"].update(holderIdentity="intruder", leaseDurationSeconds=2)
    ha.admin.http.put(
        f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{lease}", json=stolen
    ).raise_for_status()
    wait_for(
        lambda: last.process.poll() is not None,
        timeout=30,
        message=f"the leader exiting; its log:\n{last.output()}",
    )
    assert last.process.returncode == EXIT_LEADERSHIP_LOST, last.output()
    assert "leader election lost" in last.output()

    # The intruder's Lease expires; the last standby takes it, and is stopped the moment it does
    # (a rolling update right after a failover): it still stops, and releases the Lease.
    wait_for(
        lambda: ha.holder(lease).startswith(f"op-{final.name}_"),
        timeout=30,
        interval=0.02,
        message=f"the last standby taking over; its log:\n{final.output()}",
    )
    final.process.send_signal(signal.SIGTERM)
    assert final.process.wait(30) == 0, final.output()
    assert ha.holder(lease) == ""


def test_a_restarted_container_takes_over_from_its_dead_predecessor_at_once() -> None:
    """Inside a pod (POD_NAME), a holder named ``<pod>_<suffix>`` other than this process was
    this container before the kubelet restarted it: a pod runs one instance of a container at a
    time, so the successor need not wait out the Lease. Another pod's holder is still waited for."""
    store, clock = MemoryLease(), FakeClock()
    crashed = _elector(store, clock, "op-7d9f-abc_1111", predecessor_prefix="op-7d9f-abc_")
    assert crashed.try_acquire_or_renew()
    other_pod = _elector(store, clock, "op-7d9f-xyz_2222", predecessor_prefix="op-7d9f-xyz_")
    assert not other_pod.try_acquire_or_renew()  # a live Lease of another pod: stand by
    restarted = _elector(store, clock, "op-7d9f-abc_3333", predecessor_prefix="op-7d9f-abc_")
    assert restarted.try_acquire_or_renew()  # no clock advance: taken at once
    record = store.record()
    assert (record.holder, record.transitions) == ("op-7d9f-abc_3333", 1)
    assert not other_pod.try_acquire_or_renew()


def test_the_predecessor_prefix_comes_from_the_pod_name_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlops_operator.leader_election import predecessor_prefix

    monkeypatch.delenv("POD_NAME", raising=False)
    assert predecessor_prefix() == ""  # a host name is no such guarantee: two processes may share it
    monkeypatch.setenv("POD_NAME", "mlops-operator-5c8d-q2x")
    assert predecessor_prefix() == "mlops-operator-5c8d-q2x_"
    assert candidate_identity().startswith(predecessor_prefix())
