"""Unit tests of the sandbox runtime's pure decisions: jobs, deployments, pods, env, images, services."""

from __future__ import annotations

import datetime
import sys
from typing import Any

import pytest

from mlops_operator.sandbox import images
from mlops_operator.sandbox.deployments import (
    HASH_LABEL,
    plan_deployment,
    surge_and_unavailable,
    template_hash,
)
from mlops_operator.sandbox.jobs import plan_job, pod_failure_action
from mlops_operator.sandbox.object_helpers import format_time, selector_matches, set_condition
from mlops_operator.sandbox.podspec import (
    ContainerConfigError,
    container_env,
    expand,
    parse_quantity,
    resolve_port,
)
from mlops_operator.sandbox.podstatus import ContainerState, build_pod_status, pod_phase, terminated, waiting
from mlops_operator.sandbox.services import AddressPool, build_endpoints, service_routes

NOW = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)


def ts(seconds_ago: float) -> str:
    return format_time(NOW - datetime.timedelta(seconds=seconds_ago))


def pod(name: str, phase: str = "Running", ready: bool = False, **extra: Any) -> dict[str, Any]:
    labels = extra.pop("labels", {})
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [
            {"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": ts(100)}
        ],
        "podIP": extra.pop("ip", "127.0.0.9"),
    }
    status.update(extra.pop("status", {}))
    return {
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": extra.pop("spec", {}),
        "status": status,
    }


def failed_pod(name: str, finished_ago: float) -> dict[str, Any]:
    state = terminated(1, "Error", None, NOW - datetime.timedelta(seconds=finished_ago))
    return pod(
        name, "Failed", status={"containerStatuses": [{"name": "c", "state": state, "restartCount": 0}]}
    )


def job(**spec: Any) -> dict[str, Any]:
    return {
        "kind": "Job",
        "metadata": {"name": "j", "namespace": "default", "uid": "u1"},
        "spec": {"template": {"spec": {"restartPolicy": "Never"}}, **spec},
        "status": spec.pop("status", {}),
    }


# -- jobs ------------------------------------------------------------------------------------


def test_new_job_creates_one_pod_and_starts() -> None:
    plan = plan_job(job(), [], NOW)
    assert plan.create == 1 and plan.status["startTime"] == format_time(NOW)


def test_job_with_an_active_pod_waits() -> None:
    plan = plan_job(job(), [pod("j-1")], NOW)
    assert plan.create == 0 and plan.status["active"] == 1


def test_job_completes_when_its_pod_succeeds() -> None:
    plan = plan_job(job(), [pod("j-1", "Succeeded")], NOW)
    types = [c["type"] for c in plan.status["conditions"]]
    assert types == ["SuccessCriteriaMet", "Complete"] and plan.status["succeeded"] == 1
    assert plan.status["completionTime"] == format_time(NOW) and "active" not in plan.status


@pytest.mark.parametrize(
    ("backoff_limit", "failures", "expect_failed"),
    [(0, 1, True), (1, 1, False), (1, 2, True), (None, 6, False), (None, 7, True)],
    ids=["limit0-1fail", "limit1-1fail", "limit1-2fails", "default-6", "default-7"],
)
def test_backoff_limit(backoff_limit: int | None, failures: int, expect_failed: bool) -> None:
    pods = [failed_pod(f"j-{i}", 100) for i in range(failures)]
    plan = plan_job(job(backoffLimit=backoff_limit), pods, NOW)
    failed = [c for c in plan.status.get("conditions", []) if c["type"] == "Failed"]
    assert bool(failed) is expect_failed
    if expect_failed:
        assert failed[0]["reason"] == "BackoffLimitExceeded" and plan.create == 0
    else:
        assert plan.create == 1


def test_retry_waits_for_the_backoff() -> None:
    plan = plan_job(job(backoffLimit=3), [failed_pod("j-1", 0), failed_pod("j-2", 5)], NOW, backoff_base=1.0)
    # Two failures: the third pod waits 2s after the latest failure (the real base is 10s).
    assert plan.create == 0 and plan.requeue_after == pytest.approx(2.0)


def test_deadline_exceeded_deletes_active_pods() -> None:
    spec_job = job(activeDeadlineSeconds=10)
    spec_job["status"] = {"startTime": ts(11)}
    plan = plan_job(spec_job, [pod("j-1")], NOW)
    assert plan.delete_pods == ("j-1",)
    assert [c["reason"] for c in plan.status["conditions"]] == ["DeadlineExceeded", "DeadlineExceeded"]


def test_ttl_after_finished() -> None:
    finished = job(ttlSecondsAfterFinished=5)
    finished["status"] = {
        "completionTime": ts(3),
        "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": ts(3)}],
    }
    assert plan_job(finished, [], NOW).requeue_after == pytest.approx(2.0)
    finished["status"]["completionTime"] = ts(6)
    assert plan_job(finished, [], NOW).delete_job


def test_on_failure_restarts_count_towards_the_limit() -> None:
    spec_job = job(backoffLimit=2)
    spec_job["spec"]["template"]["spec"]["restartPolicy"] = "OnFailure"
    restarting = pod("j-1", status={"containerStatuses": [{"name": "c", "restartCount": 3, "state": {}}]})
    plan = plan_job(spec_job, [restarting], NOW)
    assert plan.status["failed"] == 3 and plan.delete_pods == ("j-1",)


def test_parallel_completions() -> None:
    plan = plan_job(job(completions=3, parallelism=2), [pod("j-1", "Succeeded")], NOW)
    assert plan.create == 2


def test_suspended_job_deletes_its_pods() -> None:
    plan = plan_job(job(suspend=True), [pod("j-1")], NOW)
    assert plan.delete_pods == ("j-1",) and plan.status["conditions"][0]["type"] == "Suspended"


# -- deployments -----------------------------------------------------------------------------


def deployment(replicas: int = 2, **spec: Any) -> dict[str, Any]:
    return {
        "kind": "Deployment",
        "metadata": {"name": "d", "namespace": "default", "generation": 3},
        "spec": {
            "replicas": replicas,
            "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"x": 1}},
            **spec,
        },
    }


def dpod(name: str, revision: str, ready: bool = True, **extra: Any) -> dict[str, Any]:
    return pod(name, ready=ready, labels={"app": "d", HASH_LABEL: revision}, **extra)


def test_deployment_scales_up_from_nothing() -> None:
    plan = plan_deployment(deployment(3), [], NOW)
    assert plan.create == 3 and plan.status["observedGeneration"] == 3
    assert plan.status["unavailableReplicas"] == 3


def test_deployment_scales_down_unready_first() -> None:
    current = template_hash(deployment())
    pods = [dpod("a", current), dpod("b", current, ready=False), dpod("c", current)]
    plan = plan_deployment(deployment(2), pods, NOW)
    assert plan.delete_pods == ("b",)


def test_rolling_update_surges_then_removes_old_when_new_is_ready() -> None:
    current = template_hash(deployment())
    old = [dpod("o1", "old"), dpod("o2", "old")]
    # maxSurge 25% of 2 -> 1, maxUnavailable 25% of 2 -> 0: one new pod first, no old one removed yet.
    plan = plan_deployment(deployment(2), old, NOW)
    assert plan.create == 1 and plan.delete_pods == ()
    # The new pod is ready: one old pod may go, and no more than one new pod is created beyond replicas.
    plan = plan_deployment(deployment(2), [*old, dpod("n1", current)], NOW)
    assert plan.create == 0 and len(plan.delete_pods) == 1
    progressing = next(c for c in plan.status["conditions"] if c["type"] == "Progressing")
    assert progressing["reason"] == "ReplicaSetUpdated"


def test_rollout_complete_status() -> None:
    current = template_hash(deployment())
    plan = plan_deployment(deployment(2), [dpod("n1", current), dpod("n2", current)], NOW)
    conditions = {c["type"]: c for c in plan.status["conditions"]}
    assert conditions["Available"]["status"] == "True"
    assert conditions["Progressing"]["reason"] == "NewReplicaSetAvailable"
    assert plan.status["availableReplicas"] == 2 and plan.status["unavailableReplicas"] == 0


def test_progress_deadline_exceeded() -> None:
    current = template_hash(deployment())
    stuck = deployment(1, progressDeadlineSeconds=60)
    pods = [dpod("n1", current, ready=False)]
    stuck["status"] = plan_deployment(stuck, pods, NOW - datetime.timedelta(seconds=120)).status
    plan = plan_deployment(stuck, pods, NOW)
    progressing = next(c for c in plan.status["conditions"] if c["type"] == "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("False", "ProgressDeadlineExceeded")


def test_recreate_deletes_old_before_creating() -> None:
    plan = plan_deployment(deployment(2, strategy={"type": "Recreate"}), [dpod("o1", "old")], NOW)
    assert plan.delete_pods == ("o1",) and plan.create == 0


@pytest.mark.parametrize(
    ("rolling", "replicas", "expected"),
    [
        ({}, 4, (1, 1)),
        ({"maxSurge": 0, "maxUnavailable": 0}, 4, (0, 1)),
        ({"maxSurge": "50%", "maxUnavailable": 2}, 3, (2, 2)),
    ],
    ids=["defaults", "both-zero", "explicit"],
)
def test_surge_and_unavailable(rolling: dict[str, Any], replicas: int, expected: tuple[int, int]) -> None:
    assert surge_and_unavailable({"spec": {"strategy": {"rollingUpdate": rolling}}}, replicas) == expected


# -- pods ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "codes", "phase"),
    [
        ("Never", [0], "Succeeded"),
        ("Never", [0, 1], "Failed"),
        ("OnFailure", [0], "Succeeded"),
        ("Always", [0], "Running"),
    ],
)
def test_pod_phase(policy: str, codes: list[int], phase: str) -> None:
    states = [
        ContainerState(f"c{i}", "img", terminated(code, "Completed", NOW, NOW), started_once=True)
        for i, code in enumerate(codes)
    ]
    assert pod_phase(policy, states) == phase


def test_pod_is_pending_until_every_container_started() -> None:
    states = [ContainerState("a", "img", waiting("ErrImagePull"))]
    assert pod_phase("Always", states) == "Pending"


def test_pod_status_conditions_follow_readiness() -> None:
    ready = ContainerState("c", "img", {"running": {}}, started_once=True, ready=True)
    body = {"spec": {"restartPolicy": "Always"}, "metadata": {"name": "p"}}
    status = build_pod_status(
        body, pod_ip="127.0.0.5", start_time=NOW, init_containers=[], containers=[ready],
        initialized=True, init_failed=False, now=NOW,
    )  # fmt: skip
    assert [c["type"] for c in status["conditions"]] == [
        "PodScheduled",
        "Initialized",
        "ContainersReady",
        "Ready",
    ]
    assert all(c["status"] == "True" for c in status["conditions"])
    assert status["podIP"] == "127.0.0.5" and status["phase"] == "Running"


def test_condition_transition_time_moves_only_on_change() -> None:
    first = set_condition([], "Ready", "True", now=NOW)
    later = NOW + datetime.timedelta(seconds=5)
    assert set_condition(first, "Ready", "True", now=later)[0]["lastTransitionTime"] == format_time(NOW)
    assert set_condition(first, "Ready", "False", now=later)[0]["lastTransitionTime"] == format_time(later)


# -- env, images, quantities ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("$(A)", "1"), ("x$(A)y$(B)", "x1y2"), ("$$(A)", "$(A)"), ("$(MISSING)", "$(MISSING)"), ("$A", "$A")],
)
def test_expand(value: str, expected: str) -> None:
    assert expand(value, {"A": "1", "B": "2"}) == expected


def test_container_env_order_and_sources() -> None:
    body = {
        "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "x"}},
        "status": {"podIP": "127.0.0.7"},
    }
    container = {
        "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}, {"secretRef": {"name": "s"}}],
        "env": [
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "URL", "value": "http://$(IP):80"},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "KEY", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}},
            {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k", "optional": True}}},
        ],
    }
    configmaps = {("ns", "cm"): {"data": {"k": "v"}}}
    secrets = {("ns", "s"): {"data": {"TOKEN": "c2VjcmV0"}}}
    env = container_env(body, container, configmaps=configmaps, secrets=secrets)
    assert env == {
        "CM_k": "v",
        "TOKEN": "secret",
        "IP": "127.0.0.7",
        "URL": "http://127.0.0.7:80",
        "APP": "x",
        "KEY": "v",
    }


def test_missing_configmap_is_a_config_error() -> None:
    container = {"env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}}]}
    with pytest.raises(ContainerConfigError, match='configmap "cm" not found'):
        container_env({"metadata": {"namespace": "ns"}}, container, configmaps={}, secrets={})


@pytest.mark.parametrize(
    ("image", "known"),
    [
        ("python:3.11", True), ("docker.io/library/python:3.12-slim", True), ("python", True),
        ("ghcr.io/mlops-operator/trainer:0.1.0", True), ("ghcr.io/mlops-operator/server:latest", True),
        ("ghcr.io/mlops-operator/other:1", False), ("nginx:1.27", False), ("pythonic:1", False),
    ],
)  # fmt: skip
def test_known_images(image: str, known: bool) -> None:
    if known:
        images.resolve_image(image)
    else:
        with pytest.raises(images.ImageNotAvailable, match="known images"):
            images.resolve_image(image)


def test_container_argv_follows_entrypoint_rules() -> None:
    ours = images.resolve_image("ghcr.io/mlops-operator/trainer:1")
    assert images.container_argv(ours, None, ["train", "--x"]) == ["mlops-operator", "train", "--x"]
    python = images.resolve_image("python:3.11")
    assert images.container_argv(python, None, None) == [sys.executable]
    assert images.container_argv(python, ["python", "-c", "1"], None) == [sys.executable, "-c", "1"]
    assert images.container_argv(python, ["sh"], ["-c", "x"]) == ["sh", "-c", "x"]


@pytest.mark.parametrize(
    ("text", "value"),
    [("512Mi", 512 * 2**20), ("1G", 1e9), ("500m", 0.5), ("1e3", 1000.0), ("128974848", 128974848.0)],
)
def test_parse_quantity(text: str, value: float) -> None:
    assert parse_quantity(text) == value


# -- services --------------------------------------------------------------------------------


def test_address_pool_reuses_released_addresses() -> None:
    pool = AddressPool("127.0.0.2", "127.0.0.3")
    assert [pool.claim("a"), pool.claim("b"), pool.claim("a")] == ["127.0.0.2", "127.0.0.3", "127.0.0.2"]
    with pytest.raises(RuntimeError):
        pool.claim("c")
    pool.release("a")
    assert pool.claim("c") == "127.0.0.2"


def test_selector_expressions() -> None:
    selector = {
        "matchLabels": {"app": "x"},
        "matchExpressions": [{"key": "v", "operator": "In", "values": ["1", "2"]}],
    }
    assert selector_matches(selector, {"app": "x", "v": "2"})
    assert not selector_matches(selector, {"app": "x", "v": "3"})
    assert not selector_matches({}, {"app": "x"})


def _svc() -> dict[str, Any]:
    return {
        "metadata": {"name": "s", "namespace": "default"},
        "spec": {
            "selector": {"app": "x"},
            "clusterIP": "127.0.1.4",
            "ports": [{"name": "http", "port": 80, "targetPort": "web"}],
        },
    }


def _web_pod(name: str, ip: str, ready: bool, port: int = 8000) -> dict[str, Any]:
    spec = {"containers": [{"name": "c", "ports": [{"name": "web", "containerPort": port}]}]}
    return pod(name, ready=ready, ip=ip, labels={"app": "x"}, spec=spec)


def test_routes_and_endpoints_resolve_named_ports_and_readiness() -> None:
    pods = [
        _web_pod("a", "127.0.0.2", True),
        _web_pod("b", "127.0.0.3", False),
        _web_pod("c", "127.0.0.4", True, 9000),
    ]
    (route,) = service_routes(_svc(), pods)
    assert (route.cluster_ip, route.port) == ("127.0.1.4", 80)
    assert route.backends == (("127.0.0.2", 8000), ("127.0.0.4", 9000))
    endpoints = build_endpoints(_svc(), pods)
    assert len(endpoints["subsets"]) == 2  # two port sets
    first = endpoints["subsets"][0]
    assert [a["ip"] for a in first["addresses"]] == ["127.0.0.2"]
    assert [a["ip"] for a in first["notReadyAddresses"]] == ["127.0.0.3"]


def test_resolve_port() -> None:
    body = {"spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]}}
    assert (
        resolve_port(body, "http") == 8080
        and resolve_port(body, 81) == 81
        and resolve_port(body, "x") is None
    )


def _failed_pod(
    exit_code: int, container: str = "trainer", conditions: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    return {
        "metadata": {"name": "j-abcde", "namespace": "default"},
        "status": {
            "phase": "Failed",
            "conditions": conditions or [],
            "containerStatuses": [{"name": container, "state": {"terminated": {"exitCode": exit_code}}}],
        },
    }


_POLICY = {
    "rules": [
        {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [3]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
    ]
}


@pytest.mark.parametrize(
    ("pod", "action"),
    [
        (_failed_pod(3), "FailJob"),
        (_failed_pod(1), "Count"),
        (_failed_pod(3, container="sidecar"), "Count"),
        (_failed_pod(137, conditions=[{"type": "DisruptionTarget", "status": "True"}]), "Ignore"),
    ],
    ids=["exit-3-fails-the-job", "other-exit-counts", "other-container", "disruption-ignored"],
)
def test_pod_failure_policy(pod: dict[str, Any], action: str) -> None:
    assert pod_failure_action(_POLICY, pod)[0] == action


def test_fail_job_rule_fails_the_job_without_retry() -> None:
    job = {
        "metadata": {"name": "j", "namespace": "default"},
        "spec": {"backoffLimit": 6, "podFailurePolicy": _POLICY},
    }
    plan = plan_job(job, [_failed_pod(3)], datetime.datetime.now(datetime.UTC))
    failed = next(c for c in plan.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "PodFailurePolicy" and "exit code 3" in failed["message"]
    assert plan.create == 0


def test_each_sandbox_gets_its_own_network() -> None:
    from mlops_operator.sandbox import network

    first = network.claim("first")
    second = network.claim("second")
    try:
        assert first.index != second.index
        assert not set(first.pod_range) & set(second.pod_range)
        assert not set(first.service_range) & set(second.service_range)
        assert (
            second.describe() == f"pods on 127.{second.index}.0.2-254, services on 127.{second.index}.1.1-254"
        )
    finally:
        first.release()
    again = network.claim("third")  # a released network is free again
    try:
        assert again.index == first.index
    finally:
        again.release()
        second.release()
