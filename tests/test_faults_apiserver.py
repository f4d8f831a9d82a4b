"""The operator under API server faults: it converges once they are gone, and loses or doubles nothing.

The emulated API server injects faults as kube-apiserver answers them
(``mlops_operator/sandbox/apiserver/faults.py``): 409 Conflict, 500 InternalError (also after
the write was stored), 429 TooManyRequests with Retry-After, slow answers, and watch streams cut
mid-body or answered 410 Expired on resume. The operator (kopf, in-process) reconciles
TrainingJobs and InferenceServices through them; each test lifts its faults, waits with a
deadline until the objects converge, and counts the children: exactly one Job per run, one
Deployment and one Service per version. The faults must have fired (their counts are checked),
so a test whose fault missed its target fails rather than passing vacuously.
"""

from __future__ import annotations

import json
import pathlib
import threading
import types
from collections.abc import Iterator
from typing import Any

import kopf
import pytest

from mlops_operator import kube_client
from mlops_operator.kube_client import Kube
from mlops_operator.sandbox.apiserver import ApiServerThread, write_kubeconfig
from mlops_operator.sandbox.apiserver.faults import FaultInjector
from tests.fixtures_operator import (
    Cluster,
    events_for,
    example,
    finish_job,
    make_ready,
    running_operator,
)
from tests.fixtures_sandbox import Api, wait_for, wait_for_condition

#: The User-Agent prefixes of the operator's own client and of kopf (its watches and patches).
OPERATOR = "mlops-operator/"
KOPF = "kopf/"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_operator(tmp_path_factory.mktemp("faults")) as running:
        yield running


@pytest.fixture
def faults(cluster: Cluster) -> Iterator[FaultInjector]:
    injector = cluster.server.emulator.faults
    yield injector
    injector.clear()


def owned_by(api: Api, kind: str, owner: dict[str, Any]) -> list[dict[str, Any]]:
    """The objects of ``kind`` whose controller is ``owner``."""
    uid = owner["metadata"]["uid"]
    return [
        obj
        for obj in api.list(kind)
        if any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])
    ]


def trainingjob(api: Api, name: str) -> dict[str, Any]:
    manifest = example("iris-trainingjob.yaml", schedule=None)
    manifest["metadata"]["name"] = name
    return api.create(manifest)


def inferenceservice(api: Api, name: str, version: str, replicas: int = 1) -> dict[str, Any]:
    manifest = example("iris-inferenceservice.yaml", replicas=replicas)
    manifest["metadata"]["name"] = name
    manifest["spec"]["model"] = {"name": f"{name}-model", "version": version}
    manifest["spec"]["rollout"] = {"strategy": "Replace"}
    manifest["spec"].pop("retraining")
    return api.create(manifest)


def assert_one_run(api: Api, tj: dict[str, Any]) -> None:
    """The TrainingJob runs: one Job (its first run), Running=True, and status says so."""
    name = tj["metadata"]["name"]
    wait_for_condition(api, "TrainingJob", name, "Running", "True", timeout=30)
    jobs = owned_by(api, "Job", tj)
    assert [job["metadata"]["name"] for job in jobs] == [f"{name}-1"]
    status = (api.get("TrainingJob", name) or {})["status"]
    assert status["lastRun"]["name"] == f"{name}-1"


def assert_serving(api: Api, isvc: dict[str, Any], version: str, replicas: int = 1) -> None:
    """One Deployment and one Service per version, the stable Service selecting it, Ready=True."""
    name = isvc["metadata"]["name"]
    deployment = wait_for(lambda: api.get("Deployment", f"{name}-v{version}"), message="the Deployment")
    make_ready(api, f"{name}-v{version}", replicas)
    ready = wait_for_condition(api, "InferenceService", name, "Ready", "True", timeout=30)
    assert ready["status"]["stable"]["modelVersion"] == version
    assert [d["metadata"]["name"] for d in owned_by(api, "Deployment", isvc)] == [f"{name}-v{version}"]
    assert deployment["metadata"]["ownerReferences"][0]["uid"] == isvc["metadata"]["uid"]
    services = sorted(s["metadata"]["name"] for s in owned_by(api, "Service", isvc))
    assert services == sorted({name, f"{name}-v{version}"})
    selector = (api.get("Service", name) or {})["spec"]["selector"]
    assert selector.get("mlops.dev/model-version") == version


def test_conflicts_are_retried_and_each_child_is_made_once(cluster: Cluster, faults: FaultInjector) -> None:
    # The operator's status writes lose optimistic-concurrency races: five in a row, one more
    # than one call retries in place, so kopf retries a handler as well.
    status = faults.conflict("patch", subresource="status", user_agent=OPERATOR, count=5)
    # kopf's own patch (its finalizer and annotations) conflicts once: kopf throttles the
    # object for a second and handles it again.
    kopf_patch = faults.conflict("patch", resource="inferenceservices", subresource="", user_agent=KOPF)
    tj = trainingjob(cluster, "conflicted")
    isvc = inferenceservice(cluster, "conflicted", "1")
    assert_one_run(cluster, tj)
    assert_serving(cluster, isvc, "1")
    assert status.injected == 5 and kopf_patch.injected == 1

    # A spec change whose child patch conflicts three times (retried in place): applied, not lost.
    children = faults.conflict("patch", resource="deployments", user_agent=OPERATOR, count=3)
    cluster.patch("InferenceService", "conflicted", {"spec": {"replicas": 3}})
    wait_for(
        lambda: (cluster.get("Deployment", "conflicted-v1") or {}).get("spec", {}).get("replicas") == 3,
        message="the Deployment scaled to 3 despite the conflicts",
    )
    assert children.injected == 3
    assert len(owned_by(cluster, "Deployment", isvc)) == 1


def test_server_errors_are_retried_and_a_create_stored_before_its_500_is_adopted(
    cluster: Cluster, faults: FaultInjector
) -> None:
    # 500s before the request is served: retried in place (the operator's and kopf's calls).
    jobs = faults.internal_error("create", resource="jobs", user_agent=OPERATOR, count=2)
    kopf_patches = faults.internal_error("patch", resource="trainingjobs", user_agent=KOPF, count=1)
    # 500s after the object was stored (the answer was lost): the retried create meets 409
    # AlreadyExists, and the operator adopts its own child rather than making another.
    lost = [
        faults.stored_then_error("create", resource=resource, user_agent=OPERATOR, count=1)
        for resource in ("deployments", "services", "events")
    ]
    tj = trainingjob(cluster, "erring")
    isvc = inferenceservice(cluster, "erring", "1")
    assert_one_run(cluster, tj)
    assert_serving(cluster, isvc, "1")
    assert jobs.injected == 2 and kopf_patches.injected == 1
    assert [rule.injected for rule in lost] == [1, 1, 1]
    # Events are posted under deterministic names: the one stored before its 500 is not doubled.
    own = [
        (e["involvedObject"]["kind"], e["reason"], e["message"])
        for e in cluster.list("Event")
        if e["involvedObject"]["name"] == "erring" and e.get("reportingComponent") == "mlops-operator"
    ]
    assert own and len(own) == len(set(own)), own

    # A run's ModelVersion whose create was stored and then answered 500: one ModelVersion, and
    # the Event that tells it was created (it was, by this operator) is not lost either.
    lost_mv = faults.stored_then_error("create", resource="modelversions", user_agent=OPERATOR, count=1)
    job = cluster.get("Job", "erring-1") or {}
    result = {
        "status": "Succeeded",
        "modelName": "iris-classifier",
        "modelVersion": "7",
        "mlflowRunId": "run7",
        "sha256": "7" * 64,
        "metrics": {"accuracy": "0.97"},
        "dataset": {"uri": "sklearn://iris", "rows": 150},
    }
    finish_job(cluster, job, "Complete", "Completed", json.dumps(result), 0)
    done = wait_for_condition(cluster, "TrainingJob", "erring", "Ready", "True")
    assert done["status"]["latestModelVersion"] == "iris-classifier-v7"
    versions = [
        mv
        for mv in cluster.list("ModelVersion")
        if mv["spec"].get("lineage", {}).get("trainingJob") == "erring"
    ]
    assert [mv["metadata"]["name"] for mv in versions] == ["iris-classifier-v7"]
    assert lost_mv.injected == 1
    created = wait_for(lambda: events_for(cluster, "erring", "ModelVersionCreated"), message="the Event")
    assert len(created) == 1


def test_a_persistent_fault_is_told_on_the_object_and_the_operator_converges_after_it(
    cluster: Cluster, faults: FaultInjector, caplog: pytest.LogCaptureFixture
) -> None:
    # Job creation keeps failing: 500s for one TrainingJob, then 429s with Retry-After for another.
    failing = faults.internal_error("create", resource="jobs", user_agent=OPERATOR, count=None)
    tj = trainingjob(cluster, "blocked")

    def told(fragment: str) -> list[str]:
        """kopf's log of the handler that failed after the client's retries ran out."""
        messages = [r.getMessage() for r in caplog.records if r.name == "kopf.objects"]
        return [m for m in messages if fragment in m and "failed temporarily" in m]

    told_500 = wait_for(
        lambda: told("create Job blocked-1: HTTP 500: Internal error occurred"), message="the 500 told"
    )
    assert "(InternalError)" in told_500[0]
    # On the object too, as the Job controller tells its own failed creates: a Warning Event.
    event = wait_for(lambda: events_for(cluster, "blocked", "FailedCreate"), message="the FailedCreate Event")
    assert event[0]["type"] == "Warning" and "create Job blocked-1: HTTP 500" in event[0]["message"]
    assert owned_by(cluster, "Job", tj) == []
    faults.remove(failing)

    throttling = faults.too_many_requests("create", resource="jobs", user_agent=OPERATOR, count=None)
    tj2 = trainingjob(cluster, "throttled")
    told_429 = wait_for(
        lambda: told("create Job throttled-1: HTTP 429: Too many requests"), message="the 429"
    )
    assert "please try again later. (TooManyRequests)" in told_429[0]
    faults.remove(throttling)

    assert_one_run(cluster, tj)
    assert_one_run(cluster, tj2)
    assert failing.injected >= 4 and throttling.injected >= 4


def test_a_refused_call_is_told_on_the_object_and_converges_once_allowed(
    cluster: Cluster, faults: FaultInjector
) -> None:
    """A 403 (the operator's RBAC lacks a rule) is not retried in place, but told as a Warning
    Event naming the call and the server's words; once the rule exists, the run starts once."""
    user = "system:serviceaccount:mlops-system:mlops-operator"
    message = (
        f'jobs.batch is forbidden: User "{user}" cannot create resource "jobs" in API group "batch" '
        'in the namespace "default"'
    )
    refusing = faults.refuse(
        "create", code=403, reason="Forbidden", message=message, resource="jobs", count=None
    )
    tj = trainingjob(cluster, "refused")
    event = wait_for(lambda: events_for(cluster, "refused", "FailedCreate"), message="the FailedCreate Event")
    assert event[0]["type"] == "Warning"
    assert event[0]["message"] == f"create Job refused-1: HTTP 403: {message} (Forbidden)"
    assert owned_by(cluster, "Job", tj) == []
    faults.remove(refusing)
    assert_one_run(cluster, tj)
    assert len(events_for(cluster, "refused", "FailedCreate")) == 1  # told once, not every tick
    assert refusing.injected >= 1


@pytest.fixture
def bare(tmp_path: pathlib.Path) -> Iterator[tuple[ApiServerThread, Kube, Api]]:
    """An API server without an operator: the client under faults, and an administrator's client."""
    with ApiServerThread() as server:
        assert server.admin_token is not None
        config = write_kubeconfig(
            tmp_path / "kubeconfig", server.url, token=server.admin_token, ca=server.certificates.ca
        )
        yield (
            server,
            Kube.from_environment(str(config)),
            Api(server.url, server.admin_token, server.certificates.ca),
        )


def test_faults_are_answered_as_kube_apiserver_answers_them(bare: tuple[ApiServerThread, Kube, Api]) -> None:
    server, _, api = bare
    faults = server.emulator.faults
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "default"}}
    path = api.path("ConfigMap")

    faults.too_many_requests("create", resource="configmaps", retry_after=2)
    throttled = api.http.post(path, json=cm)
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "2"
    assert throttled.json() == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "Too many requests, please try again later.", "reason": "TooManyRequests",
        "code": 429, "details": {"retryAfterSeconds": 2},
    }  # fmt: skip

    faults.stored_then_error("create", resource="configmaps")
    lost = api.http.post(path, json=cm)
    assert lost.status_code == 500 and lost.json()["reason"] == "InternalError"
    assert lost.json()["message"].startswith("Internal error occurred: ")
    again = api.http.post(path, json=cm)  # it was stored: the retry meets AlreadyExists
    assert again.status_code == 409 and again.json()["reason"] == "AlreadyExists"

    faults.conflict("patch", resource="configmaps", name="a")
    conflict = api.http.patch(
        api.path("ConfigMap", name="a"), content=json.dumps({"data": {"k": "v"}}),
        headers={"Content-Type": "application/merge-patch+json"},
    )  # fmt: skip
    assert conflict.status_code == 409 and conflict.json()["reason"] == "Conflict"
    assert conflict.json()["message"] == (
        'Operation cannot be fulfilled on configmaps "a": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )
    assert (api.get("ConfigMap", "a") or {}).get("data") is None  # the conflicting patch did nothing

    faults.internal_error("get", code=503, resource="configmaps")
    assert api.http.get(api.path("ConfigMap", name="a")).json()["reason"] == "ServiceUnavailable"

    since = api.http.get(path).json()["metadata"]["resourceVersion"]
    faults.expire_watch(resource="configmaps")
    with api.http.stream("GET", path, params={"watch": "true", "resourceVersion": since}) as watch:
        first = json.loads(next(watch.iter_lines()))
    assert first["type"] == "ERROR" and first["object"]["code"] == 410
    assert first["object"]["reason"] == "Expired"
    assert first["object"]["message"].startswith(f"too old resource version: {since} (")
    assert dict(faults.injected) == {
        "too_many_requests": 1, "stored_then_error": 1, "conflict": 1, "internal_error": 1, "expire_watch": 1
    }  # fmt: skip


def test_429_waits_as_long_as_retry_after_says_within_a_bound(
    bare: tuple[ApiServerThread, Kube, Api], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, kube, _ = bare
    waits: list[float] = []
    monkeypatch.setattr(kube_client, "time", types.SimpleNamespace(sleep=waits.append, monotonic=lambda: 0.0))
    faults = server.emulator.faults
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "default"}}
    throttle = faults.too_many_requests("create", resource="configmaps", retry_after=3, count=2)
    kube.create(cm)
    assert waits == [3.0, 3.0] and throttle.injected == 2
    assert server.emulator.get_object("v1", "ConfigMap", "default", "a") is not None

    # Longer than the bound: not waited for in a worker thread (nor by urllib3), but handed to
    # kopf as the handler's retry delay.
    waits.clear()
    faults.too_many_requests("get", resource="configmaps", retry_after=120, count=1)
    with pytest.raises(
        kopf.TemporaryError, match=r"HTTP 429: Too many requests, please try again later. \(TooManyRequests\)"
    ) as raised:
        kube.read("ConfigMap", "default", "a")
    assert waits == [] and raised.value.delay == 120


def test_a_child_another_owner_controls_is_not_adopted(bare: tuple[ApiServerThread, Kube, Api]) -> None:
    _, kube, api = bare
    owners = [
        api.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": n, "namespace": "default"}})
        for n in ("mine", "theirs")
    ]

    def controlled_by(owner: dict[str, Any]) -> dict[str, Any]:
        ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": owner["metadata"]["name"],
               "uid": owner["metadata"]["uid"], "controller": True}  # fmt: skip
        return {"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "child", "namespace": "default", "ownerReferences": [ref]},
                "spec": {"ports": [{"port": 80}]}}  # fmt: skip

    api.create(controlled_by(owners[1]))
    with pytest.raises(kopf.TemporaryError, match=r"controlled by ConfigMap theirs .* not by ConfigMap mine"):
        kube.apply(controlled_by(owners[0]))
    live = api.get("Service", "child") or {}
    assert live["metadata"]["ownerReferences"][0]["uid"] == owners[1]["metadata"]["uid"]  # untouched


def test_slow_answers_overlapping_the_timer_make_no_second_child(
    cluster: Cluster, faults: FaultInjector
) -> None:
    # Creates take longer than the reconcile interval (1 s): timer ticks pile up behind them.
    slow_creates = faults.slow("create", delay=1.5, user_agent=OPERATOR, count=None)
    slow_status = faults.slow("patch", subresource="status", delay=0.3, user_agent=OPERATOR, count=None)
    slow_kopf = faults.slow("patch", delay=0.5, user_agent=KOPF, count=None)
    tj = trainingjob(cluster, "slowed")
    isvc = inferenceservice(cluster, "slowed", "1")
    wait_for_condition(cluster, "TrainingJob", "slowed", "Running", "True")  # its status, slowly
    wait_for(lambda: cluster.get("Deployment", "slowed-v1"), message="the Deployment, slowly")
    faults.clear()
    assert_one_run(cluster, tj)
    assert_serving(cluster, isvc, "1")
    assert slow_creates.injected >= 3 and slow_status.injected >= 1 and slow_kopf.injected >= 1


class WatchCutter:
    """Cuts every open watch stream of the server again and again, from a thread, until stopped."""

    def __init__(self, server: ApiServerThread, interval: float) -> None:
        self.server, self.interval = server, interval
        self.cut = 0
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watch-cutter", daemon=True)

    def _run(self) -> None:
        faults = self.server.emulator.faults
        while not self._stop.wait(self.interval):  # the cadence of the fault, not a synchronisation
            self.cut += self.server.call(faults.drop_watches)
            self.rounds += 1

    def wait_rounds(self, rounds: int) -> None:
        """Until the streams have been cut ``rounds`` more times (changes made before now overlap)."""
        target = self.rounds + rounds
        wait_for(lambda: self.rounds >= target, message=f"{rounds} rounds of cut watch streams")

    def __enter__(self) -> WatchCutter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_dropped_and_expired_watches_lose_no_change(cluster: Cluster, faults: FaultInjector) -> None:
    # Every stream is cut mid-body every 0.5 s and takes 0.3 s to come back, so most changes
    # happen while kopf is not watching and must reach it when it resumes from its last
    # resourceVersion. The next few resumed watches are answered 410 Expired (kopf must
    # relist), and the next few streams are cut after their first event. Few relists: each
    # one would also repair what a resume that skipped its missed events lost.
    reconnects = faults.slow("watch", delay=0.3, count=None)
    expired = faults.expire_watch(count=3)
    after_one = faults.drop_watch(after_events=1, count=5)
    with WatchCutter(cluster.server, 0.5) as cutter:
        tjs = [trainingjob(cluster, f"watched-{n}") for n in range(2)]
        services = [inferenceservice(cluster, f"watched-{n}", "1") for n in range(2)]
        cutter.wait_rounds(2)
        for isvc in services:
            wait_for(lambda isvc=isvc: owned_by(cluster, "Deployment", isvc), message="a Deployment")
        # Changes made while the streams keep breaking: a new replica count for each service,
        # then their replicas becoming ready (the Deployments' status, seen through kopf's index).
        for isvc in services:
            cluster.patch("InferenceService", isvc["metadata"]["name"], {"spec": {"replicas": 2}})
        cutter.wait_rounds(2)
        for isvc in services:
            name = isvc["metadata"]["name"]
            wait_for(
                lambda name=name: (cluster.get("Deployment", f"{name}-v1") or {})["spec"]["replicas"] == 2,
                message=f"{name}'s Deployment scaled to 2",
            )
            assert_serving(cluster, isvc, "1", replicas=2)
        for tj in tjs:
            assert_one_run(cluster, tj)
    faults.clear()
    assert cutter.cut >= 20 and expired.injected == 3 and after_one.injected == 5
    assert reconnects.injected >= 20  # kopf came back after its streams were cut, every time slowly
    for tj in tjs:
        assert len(owned_by(cluster, "Job", tj)) == 1
    for isvc in services:
        assert len(owned_by(cluster, "Deployment", isvc)) == 1
