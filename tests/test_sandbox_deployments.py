"""Deployments and Services in the sandbox: replicas serve through the ClusterIP, recover, roll, and
bad pods show the statuses a cluster shows (CrashLoopBackOff, RunContainerError, not ready)."""

from __future__ import annotations

import collections
import os
import re
import signal
from typing import Any

import httpx
import pytest

from mlops_operator.sandbox.processes import read_pidfile
from tests.fixtures_sandbox import DATA, Sandbox, wait_for, wait_for_condition

pytestmark = pytest.mark.slow

ECHO = str(DATA / "echo_server.py")


def deployment(
    name: str, replicas: int = 2, labels: dict[str, str] | None = None, **container: Any
) -> dict[str, Any]:
    labels = labels or {"app": name}
    spec: dict[str, Any] = {
        "name": "web",
        "image": "python:3.11",
        "command": ["python"],  # the python image has no ENTRYPOINT: args alone would replace its CMD
        "args": [ECHO, "--host", "$(POD_IP)", "--port", "8000"],
        "ports": [{"name": "http", "containerPort": 8000}],
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "VERSION", "value": "v1"},
        ],
        "readinessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 1,
            "failureThreshold": 1,
        },
    }
    spec.update(container)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [spec], "terminationGracePeriodSeconds": 1},
            },
        },
    }


def service(name: str, selector: dict[str, str], port: int = 8080) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"selector": selector, "ports": [{"name": "http", "port": port, "targetPort": "http"}]},
    }


def pods_of(sandbox: Sandbox, name: str) -> list[dict[str, Any]]:
    return [
        p for p in sandbox.api.list("Pod")
        if any(ref["name"] == name for ref in p["metadata"].get("ownerReferences", []))
    ]  # fmt: skip


def ready_replicas(sandbox: Sandbox, name: str, count: int) -> dict[str, Any] | None:
    obj = sandbox.api.get("Deployment", name)
    status = (obj or {}).get("status", {})
    done = (
        status.get("readyReplicas") == count
        and status.get("updatedReplicas") == count
        and status.get("replicas") == count
    )
    return obj if done else None


def cluster_url(sandbox: Sandbox, name: str) -> str:
    svc = wait_for(lambda: sandbox.api.get("Service", name)["spec"].get("clusterIP"), message="a ClusterIP")  # type: ignore[index]
    port = sandbox.api.get("Service", name)["spec"]["ports"][0]["port"]  # type: ignore[index]
    return f"http://{svc}:{port}"


def fetch(url: str) -> dict[str, Any]:
    # A fresh connection per request: the proxy balances connections, as kube-proxy does.
    with httpx.Client(timeout=5) as client:
        response = client.get(url, headers={"Connection": "close"})
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


def test_two_replicas_serve_through_the_service_and_recover(sandbox: Sandbox) -> None:
    sandbox.api.create(deployment("web"))
    sandbox.api.create(service("web", {"app": "web"}))
    wait_for(lambda: ready_replicas(sandbox, "web", 2), timeout=30, message="2 ready replicas")
    deployment_obj = wait_for_condition(sandbox.api, "Deployment", "web", "Available")
    assert deployment_obj["status"]["observedGeneration"] == deployment_obj["metadata"]["generation"]
    url = cluster_url(sandbox, "web")
    assert re.match(r"^http://127\.\d+\.1\.\d+", url), url
    names = {p["metadata"]["name"] for p in pods_of(sandbox, "web")}
    served = {fetch(url)["pod"] for _ in range(6)}
    assert served == names

    endpoints = sandbox.api.get("Endpoints", "web")
    assert endpoints is not None
    addresses = endpoints["subsets"][0]["addresses"]
    assert {a["targetRef"]["name"] for a in addresses} == names
    assert endpoints["subsets"][0]["ports"] == [{"name": "http", "port": 8000, "protocol": "TCP"}]
    (endpoint_slice,) = sandbox.api.list("EndpointSlice", labels="kubernetes.io/service-name=web")
    assert {e["targetRef"]["name"] for e in endpoint_slice["endpoints"] if e["conditions"]["ready"]} == names
    assert all(p["spec"]["nodeName"] == "sandbox" for p in pods_of(sandbox, "web"))
    node = sandbox.api.get("Node", "sandbox", namespace="")
    assert node is not None and node["status"]["conditions"][0]["status"] == "True"

    # A deleted pod is replaced by a new one and traffic follows.
    victim = sorted(names)[0]
    sandbox.api.delete("Pod", victim)
    wait_for(
        lambda: ready_replicas(sandbox, "web", 2) and victim not in {p["metadata"]["name"] for p in pods_of(sandbox, "web")},
        timeout=30, message="a replacement pod",
    )  # fmt: skip
    names = {p["metadata"]["name"] for p in pods_of(sandbox, "web")}
    wait_for(
        lambda: {fetch(url)["pod"] for _ in range(6)} == names, timeout=10, message="traffic on the new pods"
    )

    # A killed process is restarted in place: same pod, restartCount 1.
    survivor = sorted(names)[0]
    record = read_pidfile(sandbox.dir / "run" / "pods" / f"default_{survivor}_web.pid")
    assert record is not None
    os.kill(record[0], signal.SIGKILL)

    def restarted() -> dict[str, Any] | None:
        pod = sandbox.api.get("Pod", survivor)
        statuses = (pod or {}).get("status", {}).get("containerStatuses") or [{}]
        return pod if statuses[0].get("restartCount") == 1 and statuses[0].get("ready") else None

    pod = wait_for(restarted, timeout=20, message="the killed container to restart")
    last = pod["status"]["containerStatuses"][0]["lastState"]["terminated"]
    assert last["exitCode"] == 137
    wait_for(lambda: ready_replicas(sandbox, "web", 2), timeout=20, message="2 ready replicas again")


def test_rolling_update_and_scale(sandbox: Sandbox) -> None:
    sandbox.api.create(deployment("roll"))
    sandbox.api.create(service("roll", {"app": "roll"}))
    wait_for(lambda: ready_replicas(sandbox, "roll", 2), timeout=30, message="2 ready replicas")
    old = {p["metadata"]["name"] for p in pods_of(sandbox, "roll")}
    url = cluster_url(sandbox, "roll")

    patched = deployment("roll")
    patched["spec"]["template"]["spec"]["containers"][0]["env"][2]["value"] = "v2"
    sandbox.api.patch("Deployment", "roll", {"spec": {"template": patched["spec"]["template"]}})
    wait_for(
        lambda: ready_replicas(sandbox, "roll", 2) and not old & {p["metadata"]["name"] for p in pods_of(sandbox, "roll")},
        timeout=40, message="the rollout to replace every pod",
    )  # fmt: skip
    wait_for(lambda: {fetch(url)["version"] for _ in range(4)} == {"v2"}, timeout=10, message="v2 everywhere")
    progressing = wait_for_condition(sandbox.api, "Deployment", "roll", "Progressing")
    assert next(c for c in progressing["status"]["conditions"] if c["type"] == "Progressing")["reason"] == (
        "NewReplicaSetAvailable"
    )

    sandbox.api.patch("Deployment", "roll", {"spec": {"replicas": 1}})
    wait_for(
        lambda: ready_replicas(sandbox, "roll", 1) and len(pods_of(sandbox, "roll")) == 1,
        message="scale to 1",
    )


def test_replica_weighted_split(sandbox: Sandbox) -> None:
    # One Service over two Deployments: 1 pod of "a", 3 of "b" -> a quarter of the connections go to "a".
    a = deployment("split-a", replicas=1, labels={"app": "split", "track": "a"})
    b = deployment("split-b", replicas=3, labels={"app": "split", "track": "b"})
    a["spec"]["template"]["spec"]["containers"][0]["env"][2]["value"] = "a"
    b["spec"]["template"]["spec"]["containers"][0]["env"][2]["value"] = "b"
    sandbox.api.create(a)
    sandbox.api.create(b)
    sandbox.api.create(service("split", {"app": "split"}))
    wait_for(lambda: ready_replicas(sandbox, "split-a", 1), timeout=30, message="a ready")
    wait_for(lambda: ready_replicas(sandbox, "split-b", 3), timeout=30, message="b ready")
    url = cluster_url(sandbox, "split")
    wait_for(lambda: len((sandbox.api.get("Endpoints", "split") or {}).get("subsets", [{}])[0].get("addresses", [])) == 4,
             message="4 endpoints")  # fmt: skip
    # Endpoints are picked at random per connection (as kube-proxy's iptables mode does): with
    # 400 connections the share of A stays within 0.25 +- 0.10 (more than 4 standard deviations).
    counts = collections.Counter(fetch(url)["version"] for _ in range(400))
    assert counts["a"] + counts["b"] == 400
    assert 0.15 <= counts["a"] / 400 <= 0.35, counts


def test_an_http_route_splits_by_its_weights_not_by_pods(sandbox: Sandbox) -> None:
    """traffic.router GatewayAPI in the sandbox: an HTTPRoute attached to a Service (GAMMA)
    sends each connection to a backend Service by relative weight, whatever the pod counts."""
    a = deployment("route-a", replicas=3, labels={"app": "route", "track": "a"})
    b = deployment("route-b", replicas=1, labels={"app": "route", "track": "b"})
    a["spec"]["template"]["spec"]["containers"][0]["env"][2]["value"] = "a"
    b["spec"]["template"]["spec"]["containers"][0]["env"][2]["value"] = "b"
    for obj in (
        a,
        b,
        service("route-a", {"track": "a", "app": "route"}),
        service("route-b", {"track": "b", "app": "route"}),
    ):
        sandbox.api.create(obj)
    sandbox.api.create(service("route", {"app": "route"}))  # alone it would send 3 in 4 connections to "a"
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "route", "namespace": "default"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "route", "port": 8080}],
            "rules": [{"backendRefs": [{"name": "route-a", "port": 8080, "weight": 20},
                                       {"name": "route-b", "port": 8080, "weight": 80}]}],
        },
    }  # fmt: skip
    response = sandbox.api.http.post(
        "/apis/gateway.networking.k8s.io/v1/namespaces/default/httproutes", json=route
    )
    assert response.status_code == 201, response.text
    wait_for(lambda: ready_replicas(sandbox, "route-a", 3), timeout=30, message="a ready")
    wait_for(lambda: ready_replicas(sandbox, "route-b", 1), timeout=30, message="b ready")
    url = cluster_url(sandbox, "route")
    wait_for(
        lambda: {fetch(url)["version"] for _ in range(20)} == {"a", "b"}, message="both backends reached"
    )
    # 400 connections: the share of "a" stays within 0.20 +- 0.08 (4 standard deviations).
    counts = collections.Counter(fetch(url)["version"] for _ in range(400))
    assert counts["a"] + counts["b"] == 400
    assert 0.12 <= counts["a"] / 400 <= 0.28, counts


def _container_status(sandbox: Sandbox, name: str) -> dict[str, Any] | None:
    pods = pods_of(sandbox, name)
    statuses = pods[0].get("status", {}).get("containerStatuses") if pods else None
    return statuses[0] if statuses else None


def test_crash_at_start_shows_crash_loop_back_off_with_the_cause(sandbox: Sandbox) -> None:
    command = [
        "python",
        "-c",
        "import sys; print('model file missing: /models/x.pkl', file=sys.stderr); sys.exit(3)",
    ]
    sandbox.api.create(deployment("crash", replicas=1, command=command, args=None, readinessProbe=None))

    def crash_looping() -> dict[str, Any] | None:
        status = _container_status(sandbox, "crash")
        waiting = (status or {}).get("state", {}).get("waiting", {})
        return (
            status
            if waiting.get("reason") == "CrashLoopBackOff" and status and status["restartCount"] >= 2
            else None
        )

    status = wait_for(crash_looping, timeout=30, message="CrashLoopBackOff")
    assert status["lastState"]["terminated"]["exitCode"] == 3
    assert "model file missing" in status["state"]["waiting"]["message"]
    assert status["ready"] is False
    obj = sandbox.api.get("Deployment", "crash")
    assert obj is not None and obj["status"].get("readyReplicas", 0) == 0
    assert next(c for c in obj["status"]["conditions"] if c["type"] == "Available")["status"] == "False"


def test_missing_command_in_deployment(sandbox: Sandbox) -> None:
    sandbox.api.create(
        deployment("nocmd", replicas=1, command=["definitely-not-a-command"], args=None, readinessProbe=None)
    )

    def failing() -> dict[str, Any] | None:
        status = _container_status(sandbox, "nocmd")
        waiting = (status or {}).get("state", {}).get("waiting", {})
        return status if waiting.get("reason") in ("RunContainerError", "CrashLoopBackOff") else None

    status = wait_for(failing, timeout=20, message="RunContainerError")
    assert "executable file not found" in status["state"]["waiting"]["message"]
    assert status["lastState"]["terminated"]["reason"] == "StartError"


def test_never_ready_pod_gets_no_traffic(sandbox: Sandbox, tmp_path: Any) -> None:
    marker = tmp_path / "not-ready"
    marker.write_text("x")
    manifest = deployment("unready", replicas=1)
    manifest["spec"]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "NOT_READY_FILE", "value": str(marker)}
    )
    sandbox.api.create(manifest)
    sandbox.api.create(service("unready", {"app": "unready"}))

    def running_unready() -> dict[str, Any] | None:
        pods = pods_of(sandbox, "unready")
        if not pods or pods[0].get("status", {}).get("phase") != "Running":
            return None
        ready: dict[str, Any] = next((c for c in pods[0]["status"]["conditions"] if c["type"] == "Ready"), {})
        endpoints = sandbox.api.get("Endpoints", "unready") or {}
        subsets = endpoints.get("subsets") or [{}]
        return pods[0] if ready.get("status") == "False" and subsets[0].get("notReadyAddresses") else None

    pod = wait_for(running_unready, timeout=20, message="a running, not ready pod")
    ready = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "ContainersNotReady"
    url = cluster_url(sandbox, "unready")
    with pytest.raises(httpx.TransportError):
        fetch(url)
    marker.unlink()  # the probe passes now: the pod becomes ready and serves
    wait_for(lambda: ready_replicas(sandbox, "unready", 1), timeout=20, message="the pod to become ready")
    wait_for(lambda: fetch(url)["version"] == "v1", timeout=10, message="traffic once ready")


def test_unknown_image_in_deployment(sandbox: Sandbox) -> None:
    sandbox.api.create(deployment("badimage", replicas=1, image="nginx:1.27"))

    def pull_error() -> dict[str, Any] | None:
        status = _container_status(sandbox, "badimage")
        waiting = (status or {}).get("state", {}).get("waiting", {})
        return status if waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff") else None

    status = wait_for(pull_error, timeout=20, message="ErrImagePull")
    assert 'image "nginx:1.27" is not available in the sandbox' in status["state"]["waiting"]["message"]


def test_deleting_a_deployment_stops_its_processes(sandbox: Sandbox) -> None:
    sandbox.api.create(deployment("gone", replicas=1))
    wait_for(lambda: ready_replicas(sandbox, "gone", 1), timeout=30, message="1 ready replica")
    (pod,) = pods_of(sandbox, "gone")
    pidfile = sandbox.dir / "run" / "pods" / f"default_{pod['metadata']['name']}_web.pid"
    record = read_pidfile(pidfile)
    assert record is not None
    sandbox.api.delete("Deployment", "gone")
    wait_for(lambda: not pods_of(sandbox, "gone"), timeout=15, message="the pods to be collected")
    wait_for(lambda: not os.path.exists(f"/proc/{record[0]}") and not pidfile.exists(), timeout=15,
             message="the process to be gone")  # fmt: skip


def test_failing_liveness_probe_restarts_the_container(sandbox: Sandbox, tmp_path: Any) -> None:
    marker = tmp_path / "unhealthy"
    marker.write_text("x")
    manifest = deployment("liveness", replicas=1, readinessProbe=None)
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    container["env"].append({"name": "NOT_READY_FILE", "value": str(marker)})
    container["livenessProbe"] = {
        "httpGet": {"path": "/healthz", "port": 8000},
        "periodSeconds": 1,
        "failureThreshold": 2,
    }
    sandbox.api.create(manifest)

    def restarted() -> dict[str, Any] | None:
        status = _container_status(sandbox, "liveness")
        return status if status and status.get("restartCount", 0) >= 1 and status.get("lastState") else None

    status = wait_for(restarted, timeout=30, message="a liveness restart")
    last = status["lastState"]["terminated"]
    assert last["exitCode"] == 143  # SIGTERM, which http.server does not handle
    assert "Liveness probe failed: HTTP probe failed with statuscode: 503" in last["message"]
