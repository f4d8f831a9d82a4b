"""``mlops-operator sandbox up/down/status/url/logs`` as a user runs them: real processes, real kubectl."""

from __future__ import annotations

import json
import os
import pathlib
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from mlops_operator.sandbox.processes import is_alive, read_pidfile
from tests.fixtures_apiserver import kubectl_binary
from tests.fixtures_sandbox import wait_for

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "mlops_operator.cli", "sandbox"]

MANIFESTS = """
apiVersion: batch/v1
kind: Job
metadata: {name: hello}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
      - {name: main, image: "python:3.11", command: [python, -c, "print('hello from the sandbox')"]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: docker.io/library/python:3.11
        command: [python, -m, http.server, --bind, $(POD_IP), "8000"]
        env: [{name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}]
        ports: [{name: http, containerPort: 8000}]
        readinessProbe: {httpGet: {path: /, port: http}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 8080, targetPort: http}]
"""


def sandbox_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    directory = tmp_path_factory.mktemp("sandbox-cli")
    result = sandbox_cli("up", "--dir", str(directory), "--no-mlflow", "--no-operator")
    assert result.returncode == 0, result.stderr
    assert "✓ apiserver" in result.stderr and "✓ runtime" in result.stderr
    try:
        yield directory
    finally:
        sandbox_cli("down", "--dir", str(directory))


def kubectl(
    directory: pathlib.Path, *args: str, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    command = [
        kubectl_binary(),
        f"--kubeconfig={directory / 'kubeconfig'}",
        f"--cache-dir={directory / 'kube-cache'}",
    ]
    return subprocess.run(
        [*command, *args], input=input, capture_output=True, text=True, timeout=90, check=False
    )


def test_second_up_says_already_running(running: pathlib.Path) -> None:
    result = sandbox_cli("up", "--dir", str(running), "--no-mlflow", "--no-operator")
    assert result.returncode == 1
    assert "already running" in result.stderr and "Traceback" not in result.stderr


def test_kubectl_applies_and_gets_through_the_kubeconfig(running: pathlib.Path) -> None:
    applied = kubectl(running, "apply", "-f", "-", input=MANIFESTS)
    assert applied.returncode == 0, applied.stderr
    waited = kubectl(running, "wait", "--for=condition=complete", "job/hello", "--timeout=60s")
    assert waited.returncode == 0, waited.stderr
    succeeded = kubectl(running, "get", "job", "hello", "-o", "jsonpath={.status.succeeded}")
    assert succeeded.stdout == "1"
    rolled = kubectl(running, "rollout", "status", "deployment/web", "--timeout=60s")
    assert rolled.returncode == 0, rolled.stderr + rolled.stdout
    pods = json.loads(kubectl(running, "get", "pods", "-l", "app=web", "-o", "json").stdout)["items"]
    assert len(pods) == 2 and all(p["status"]["phase"] == "Running" for p in pods)

    url = sandbox_cli("url", "svc/web", "--dir", str(running))
    assert url.returncode == 0, url.stderr
    assert re.match(r"^http://127\.\d+\.1\.\d+:8080$", url.stdout.strip()), url.stdout
    assert httpx.get(url.stdout.strip(), timeout=5).status_code == 200

    job_pod = json.loads(kubectl(running, "get", "pods", "-l", "job-name=hello", "-o", "json").stdout)[
        "items"
    ][0]
    logs = sandbox_cli("logs", job_pod["metadata"]["name"], "--dir", str(running))
    assert logs.returncode == 0 and "hello from the sandbox" in logs.stdout
    missing = sandbox_cli("logs", "no-such-pod", "--dir", str(running))
    assert missing.returncode == 1 and "no logs for pod default/no-such-pod" in missing.stderr

    status = sandbox_cli("status", "--dir", str(running))
    assert status.returncode == 0 and "apiserver" in status.stdout and "runtime" in status.stdout


def test_url_of_an_unknown_inferenceservice(running: pathlib.Path) -> None:
    result = sandbox_cli("url", "mlisvc/nope", "--dir", str(running))
    assert result.returncode == 1 and "not found" in result.stderr and "Traceback" not in result.stderr


def test_a_busy_port_is_reported_by_number(tmp_path: pathlib.Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = sandbox_cli(
            "up", "--dir", str(tmp_path), "--no-mlflow", "--no-operator", "--port", str(port)
        )
    assert result.returncode == 1
    assert f"port {port}" in result.stderr and "Traceback" not in result.stderr


def _pids(directory: pathlib.Path) -> list[tuple[int, int | None]]:
    state: dict[str, Any] = json.loads((directory / "state.json").read_text())
    pids = [(c["pid"], c["started"]) for c in state["components"]]
    for pidfile in (directory / "run" / "pods").glob("*.pid"):
        record = read_pidfile(pidfile)
        if record:
            pids.append(record)
    return pids


def test_down_leaves_no_process_behind(tmp_path: pathlib.Path) -> None:
    assert sandbox_cli("up", "--dir", str(tmp_path), "--no-mlflow", "--no-operator").returncode == 0
    assert kubectl(tmp_path, "apply", "-f", "-", input=MANIFESTS).returncode == 0
    wait_for(lambda: len(list((tmp_path / "run" / "pods").glob("default_web-*.pid"))) == 2, timeout=30,
             message="two web pod processes")  # fmt: skip
    pids = _pids(tmp_path)
    assert len(pids) >= 4 and all(is_alive(pid, started) for pid, started in pids[:2])

    result = sandbox_cli("down", "--dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "stopped runtime" in result.stderr and "stopped apiserver" in result.stderr
    alive = [pid for pid, started in pids if is_alive(pid, started)]
    assert alive == [], f"processes left behind: {alive}"
    leftovers = [
        entry.name for entry in pathlib.Path("/proc").iterdir()
        if entry.name.isdigit() and str(tmp_path).encode() in _cmdline(entry)
    ]  # fmt: skip
    assert leftovers == []

    again = sandbox_cli("down", "--dir", str(tmp_path))
    assert again.returncode == 0 and "nothing is running" in again.stderr
    assert sandbox_cli("status", "--dir", str(tmp_path)).returncode == 1


def _cmdline(entry: pathlib.Path) -> bytes:
    try:
        return (entry / "cmdline").read_bytes()
    except OSError:
        return b""


def test_down_after_the_runtime_was_killed_still_stops_the_pods(tmp_path: pathlib.Path) -> None:
    assert sandbox_cli("up", "--dir", str(tmp_path), "--no-mlflow", "--no-operator").returncode == 0
    assert kubectl(tmp_path, "apply", "-f", "-", input=MANIFESTS).returncode == 0
    wait_for(lambda: len(list((tmp_path / "run" / "pods").glob("default_web-*.pid"))) == 2, timeout=30,
             message="two web pod processes")  # fmt: skip
    pods = [read_pidfile(p) for p in (tmp_path / "run" / "pods").glob("default_web-*.pid")]
    runtime = next(
        c for c in json.loads((tmp_path / "state.json").read_text())["components"] if c["name"] == "runtime"
    )
    os.kill(runtime["pid"], 9)  # the runtime cannot clean up: `down` must find the pods itself
    assert sandbox_cli("down", "--dir", str(tmp_path)).returncode == 0
    assert not [record for record in pods if record and is_alive(*record)]


def test_an_operator_that_fails_to_start_is_reported_and_nothing_is_left(tmp_path: pathlib.Path) -> None:
    broken = f"{sys.executable} -c \"import sys; sys.exit('boom: the operator cannot start')\""
    env = {**os.environ, "MLOPS_SANDBOX_OPERATOR_COMMAND": broken}
    result = subprocess.run(
        [*CLI, "up", "--dir", str(tmp_path), "--no-mlflow"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert result.returncode == 1
    assert (
        "the operator exited with code 1" in result.stderr
        and "boom: the operator cannot start" in result.stderr
    )
    assert "--no-operator" in result.stderr and "Traceback" not in result.stderr
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["components"] == []  # the API server and runtime it had started were stopped again
    assert sandbox_cli("status", "--dir", str(tmp_path)).returncode == 1
