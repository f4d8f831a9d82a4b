"""Canary rollouts through the whole operator (kopf, in-process) against the emulated API server.

No runtime runs here: the test plays the Deployment controller and kubelet (Deployments made
ready, pods with an IP), and each pod's model server is a small HTTP server on that IP answering
``/monitoring`` with counters the test drives: exactly the error rate, latency and accuracy a
scenario needs, which a real model is hard to make produce on cue. What a real server reports is
tested in tests/test_monitoring_online.py; the decisions themselves in tests/test_rollout_plan.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from mlops_operator.rollout.rollout_plan import COMMAND_ANNOTATION
from tests.fake_model_servers import Traffic, start_pod
from tests.fixtures_operator import Cluster, example
from tests.fixtures_sandbox import Api, wait_for


@pytest.fixture
def traffic() -> Iterator[Traffic]:
    flow = Traffic()
    yield flow
    flow.close()


def canary_service(name: str, version: str, **analysis: Any) -> dict[str, Any]:
    manifest = example("iris-inferenceservice.yaml")
    manifest["metadata"]["name"] = name
    manifest["spec"].pop("retraining")
    manifest["spec"]["replicas"] = 1
    manifest["spec"]["model"] = {"name": f"{name}-model", "version": version}
    manifest["spec"]["rollout"] = {
        "strategy": "Canary",
        "analysis": {
            "interval": "2s",
            "threshold": 2,
            "stepWeights": [10, 50],
            "minRequests": 20,
            "minSamples": 100,
            "progressDeadlineSeconds": 60,
            "metrics": [
                {"name": "error-rate", "max": "0.05", "maxIncreaseVsStable": "0.01"},
                {"name": "latency-p99", "max": "0.25"},
                {"name": "accuracy", "min": "0.8", "maxDropVsStable": "0.02"},
            ],
            **analysis,
        },
    }
    return manifest


def events_for(api: Api, name: str, reason: str) -> list[dict[str, Any]]:
    """The Events of one reason about ``name``, oldest first (by resourceVersion)."""
    events = [
        e
        for e in api.list("Event")
        if e.get("involvedObject", {}).get("name") == name and e.get("reason") == reason
    ]
    return sorted(events, key=lambda e: int(e["metadata"]["resourceVersion"]))


def wait_for_phase(api: Api, name: str, phase: str, *, timeout: float, message: str) -> dict[str, Any]:
    """The InferenceService once its rollout reaches ``phase``."""
    return wait_for(
        lambda: rollout_of(api, name).get("phase") == phase and api.get("InferenceService", name),
        timeout=timeout,
        message=message,
    )


def rollout_of(api: Api, name: str) -> dict[str, Any]:
    return dict(((api.get("InferenceService", name) or {}).get("status") or {}).get("rollout") or {})


def serving_stable(api: Api, name: str, traffic: Traffic, version: str) -> None:
    """Create the service at ``version``, give it a serving pod, and wait until it is Ready."""
    api.create(canary_service(name, version))
    start_pod(api, traffic, name, version)
    wait_for(
        lambda: (
            (api.get("InferenceService", name) or {}).get("status", {}).get("stable", {}).get("readyReplicas")
        ),
        message="the stable version ready",
    )


def pin(api: Api, name: str, version: str) -> None:
    api.patch("InferenceService", name, {"spec": {"model": {"version": version}}})


def test_a_good_canary_is_promoted_step_by_step(cluster: Cluster, traffic: Traffic) -> None:
    serving_stable(cluster, "good", traffic, "1")
    pin(cluster, "good", "2")
    start_pod(cluster, traffic, "good", "2")
    done = wait_for_phase(cluster, "good", "Succeeded", timeout=60, message="the canary promoted")
    assert done["status"]["stable"]["modelVersion"] == "2"
    steps = [e["message"] for e in events_for(cluster, "good", "CanaryStep")]
    assert [m.split(" receives ")[1].split("%")[0] for m in steps] == ["10", "50"], steps
    assert events_for(cluster, "good", "AnalysisPassed") and events_for(cluster, "good", "Promoted")
    wait_for(lambda: cluster.get("Deployment", "good-v1") is None, message="version 1 retired")
    assert done["status"]["history"][-1]["modelVersion"] == "2"
    assert done["status"]["history"][-1]["replaced"] == "1"


def test_a_canary_with_a_high_error_rate_is_rolled_back(cluster: Cluster, traffic: Traffic) -> None:
    serving_stable(cluster, "errors", traffic, "1")
    pin(cluster, "errors", "2")
    start_pod(cluster, traffic, "errors", "2", error_rate=0.2)
    rolled = wait_for_phase(cluster, "errors", "RolledBack", timeout=60, message="the canary rolled back")
    assert rolled["status"]["rollout"]["reason"] == "AnalysisFailed"
    warning = events_for(cluster, "errors", "RolledBack")[-1]
    assert warning["type"] == "Warning"
    assert "error-rate" in warning["message"] and "0.05" in warning["message"]
    assert "requests" in warning["message"]  # the sample count behind the verdict
    assert rolled["status"]["stable"]["modelVersion"] == "1"
    assert (cluster.get("Deployment", "errors-v2") or {})["spec"]["replicas"] == 0
    assert (cluster.get("Service", "errors") or {})["spec"]["selector"]["mlops.dev/model-version"] == "1"
    degraded = next(c for c in rolled["status"]["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "RolledBack")
    progressing = next(c for c in rolled["status"]["conditions"] if c["type"] == "Progressing")
    assert progressing["reason"] == "RolledBack"


def test_a_canary_with_poor_live_accuracy_is_rolled_back(cluster: Cluster, traffic: Traffic) -> None:
    serving_stable(cluster, "accuracy", traffic, "1")
    pin(cluster, "accuracy", "2")
    start_pod(cluster, traffic, "accuracy", "2", accuracy=0.6, labels=20)
    rolled = wait_for_phase(
        cluster, "accuracy", "RolledBack", timeout=60, message="the canary rolled back on accuracy"
    )
    assert "accuracy" in rolled["status"]["rollout"]["message"]
    assert rolled["status"]["stable"]["modelVersion"] == "1"


def test_a_crash_looping_canary_is_aborted_with_the_pods_reason(cluster: Cluster, traffic: Traffic) -> None:
    serving_stable(cluster, "crashy-canary", traffic, "1")
    pin(cluster, "crashy-canary", "2")
    wait_for(lambda: cluster.get("Deployment", "crashy-canary-v2"), message="the candidate's Deployment")
    labels = {
        "mlops.dev/inferenceservice": "crashy-canary",
        "mlops.dev/model-version": "2",
        "app.kubernetes.io/component": "predictor",
    }
    cluster.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "crashy-canary-v2-x", "namespace": "default", "labels": labels},
                    "spec": {"containers": [{"name": "server", "image": "server"}]}})  # fmt: skip
    waiting = {
        "waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s restarting failed container"}
    }
    crashed = {"terminated": {"exitCode": 1, "message": "sha256 mismatch"}}
    status = {"containerStatuses": [{"name": "server", "state": waiting, "lastState": crashed}]}
    cluster.http.patch(
        cluster.path("Pod", "default", "crashy-canary-v2-x") + "/status",
        content=json.dumps({"status": status}),
        headers={"Content-Type": "application/merge-patch+json"},
    ).raise_for_status()
    failed = wait_for_phase(cluster, "crashy-canary", "Failed", timeout=30, message="the rollout failed")
    assert failed["status"]["rollout"]["reason"] == "CrashLoopBackOff"
    assert "sha256 mismatch" in failed["status"]["rollout"]["message"]
    assert (
        failed["status"]["stable"]["modelVersion"] == "1" and failed["status"]["stable"]["readyReplicas"] == 1
    )


def test_commands_from_the_annotation_are_carried_out_and_cleared(cluster: Cluster, traffic: Traffic) -> None:
    serving_stable(cluster, "manual", traffic, "1")

    def command(value: str) -> None:
        cluster.patch(
            "InferenceService", "manual", {"metadata": {"annotations": {COMMAND_ANNOTATION: value}}}
        )
        wait_for(
            lambda: (
                COMMAND_ANNOTATION
                not in (
                    (cluster.get("InferenceService", "manual") or {})["metadata"].get("annotations") or {}
                )
            ),
            message=f"the operator carrying out {value!r}",
        )

    command("promote")  # nothing in progress: refused, with a Warning, nothing changes
    refused = wait_for(lambda: events_for(cluster, "manual", "RolloutCommandIgnored"), message="a refusal")
    assert "no rollout in progress" in refused[-1]["message"]
    command("fly")
    assert "unknown rollout command" in events_for(cluster, "manual", "InvalidRolloutCommand")[-1]["message"]

    pin(cluster, "manual", "2")
    start_pod(cluster, traffic, "manual", "2", accuracy=0.95)
    wait_for(lambda: rollout_of(cluster, "manual").get("canaryWeight") == 10, message="the first step")
    command("pause")
    assert rollout_of(cluster, "manual")["phase"] == "Paused"
    command("resume")
    assert rollout_of(cluster, "manual")["phase"] in ("Progressing", "Promoting", "Succeeded")
    command("abort")
    aborted = rollout_of(cluster, "manual")
    assert (aborted["phase"], aborted["reason"]) == ("RolledBack", "ManualAbort")
    command("retry")
    wait_for(
        lambda: rollout_of(cluster, "manual").get("phase") == "Succeeded", timeout=60, message="promoted"
    )
    command("rollback")
    start_pod(cluster, traffic, "manual", "1")  # version 1's Deployment is back: play kubelet again
    back = wait_for_phase(cluster, "manual", "RolledBack", timeout=30, message="the manual rollback")
    assert back["status"]["stable"]["modelVersion"] == "1"
    assert [e["modelVersion"] for e in back["status"]["history"] if e.get("rolledBackAt")] == ["2"]


def test_the_gateway_api_router_splits_by_route_weights(cluster: Cluster, traffic: Traffic) -> None:
    manifest = canary_service("routed", "1")
    manifest["spec"]["traffic"] = {"router": "GatewayAPI"}
    cluster.create(manifest)
    start_pod(cluster, traffic, "routed", "1")
    route_path = "/apis/gateway.networking.k8s.io/v1/namespaces/default/httproutes/routed"

    def backends() -> list[tuple[str, int]]:
        response = cluster.http.get(route_path)
        if response.status_code != 200:
            return []
        rules = response.json()["spec"]["rules"]
        return [(ref["name"], ref["weight"]) for ref in rules[0]["backendRefs"]]

    wait_for(lambda: backends() == [("routed-v1", 100)], message="a route to version 1")
    route = cluster.http.get(route_path).json()
    # No Gateway named: the route attaches to the stable Service (a mesh applies it: GAMMA).
    assert route["spec"]["parentRefs"] == [{"group": "", "kind": "Service", "name": "routed", "port": 80}]
    assert route["metadata"]["ownerReferences"][0]["name"] == "routed"

    pin(cluster, "routed", "2")
    start_pod(cluster, traffic, "routed", "2")
    wait_for(lambda: backends() == [("routed-v1", 90), ("routed-v2", 10)], message="the first step at 10%")
    # The route is applied before status is written (in the same reconcile): poll status too.
    status = wait_for(
        lambda: (
            (s := (cluster.get("InferenceService", "routed") or {}).get("status") or {})
            .get("canary", {})
            .get("weight")
            == 10
            and s
        ),
        message="status reporting the 10% step",
    )
    assert status["router"] == "GatewayAPI"
    # The stable Service keeps to the stable version: callers outside the mesh are not split.
    assert (cluster.get("Service", "routed") or {})["spec"]["selector"]["mlops.dev/model-version"] == "1"
    wait_for(lambda: backends() == [("routed-v1", 50), ("routed-v2", 50)], timeout=30, message="50%")
    wait_for_phase(cluster, "routed", "Succeeded", timeout=60, message="promoted")
    wait_for(lambda: backends() == [("routed-v2", 100)], message="the route to version 2 alone")

    cluster.patch("InferenceService", "routed", {"spec": {"traffic": {"router": "Replicas"}}})
    wait_for(lambda: cluster.http.get(route_path).status_code == 404, message="the HTTPRoute removed")
