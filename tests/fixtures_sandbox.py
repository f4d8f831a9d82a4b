"""Fixtures of the local sandbox: the emulated API server plus the runtime that runs pods as processes.

``sandbox`` (module-scoped) starts both in threads of the test process (fast, and the runtime's
processes are still real processes); ``sandbox_with_mlflow`` adds a real MLflow server.
``wait_for`` and ``wait_for_condition`` poll with a deadline and fail with the last observed
state: tests never sleep to synchronise.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pathlib
import signal
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from mlops_operator.sandbox import manager
from mlops_operator.sandbox.apiserver import (
    ApiServerThread,
    sandbox_authenticator,
    sandbox_tokens,
    write_kubeconfig,
)
from mlops_operator.sandbox.mlflow_server import MlflowServer, free_port
from mlops_operator.sandbox.pod_runtime import RuntimeConfig, RuntimeThread
from mlops_operator.sandbox.processes import stop_group

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = pathlib.Path(__file__).parent / "data" / "sandbox"
T = TypeVar("T")

# kind -> (api prefix, plural, namespaced)
KINDS: dict[str, tuple[str, str, bool]] = {
    "Pod": ("/api/v1", "pods", True),
    "Service": ("/api/v1", "services", True),
    "Endpoints": ("/api/v1", "endpoints", True),
    "ConfigMap": ("/api/v1", "configmaps", True),
    "Secret": ("/api/v1", "secrets", True),
    "Event": ("/api/v1", "events", True),
    "Namespace": ("/api/v1", "namespaces", False),
    "Node": ("/api/v1", "nodes", False),
    "EndpointSlice": ("/apis/discovery.k8s.io/v1", "endpointslices", True),
    "Job": ("/apis/batch/v1", "jobs", True),
    "Deployment": ("/apis/apps/v1", "deployments", True),
    "TrainingJob": ("/apis/mlops.dev/v1alpha1", "trainingjobs", True),
    "ModelVersion": ("/apis/mlops.dev/v1alpha1", "modelversions", True),
    "InferenceService": ("/apis/mlops.dev/v1alpha1", "inferenceservices", True),
}


class Api:
    """A tiny synchronous client for tests: objects in and out as dicts, errors as exceptions."""

    def __init__(self, url: str, token: str | None, ca: bytes) -> None:
        self.url = url
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.tls = ssl.create_default_context(cadata=ca.decode())
        self.http = httpx.Client(base_url=url, timeout=10, headers=headers, verify=self.tls)

    @classmethod
    def from_kubeconfig(cls, path: pathlib.Path) -> Api:
        """The client a kubeconfig written by the sandbox describes (its server, CA and token)."""
        config = yaml.safe_load(path.read_text())
        cluster, user = config["clusters"][0]["cluster"], config["users"][0]["user"]
        return cls(
            cluster["server"], user.get("token"), base64.b64decode(cluster["certificate-authority-data"])
        )

    def path(self, kind: str, namespace: str | None = "default", name: str | None = None) -> str:
        prefix, plural, namespaced = KINDS[kind]
        base = (
            f"{prefix}/namespaces/{namespace}/{plural}" if namespaced and namespace else f"{prefix}/{plural}"
        )
        return f"{base}/{name}" if name else base

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        namespace = obj.get("metadata", {}).get("namespace", "default")
        response = self.http.post(self.path(obj["kind"], namespace), json=obj)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def get(self, kind: str, name: str, namespace: str = "default") -> dict[str, Any] | None:
        response = self.http.get(self.path(kind, namespace, name))
        if response.status_code == 404:
            return None
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def list(
        self, kind: str, namespace: str | None = "default", labels: str | None = None
    ) -> list[dict[str, Any]]:
        params = {"labelSelector": labels} if labels else {}
        response = self.http.get(self.path(kind, namespace), params=params)
        response.raise_for_status()
        items: list[dict[str, Any]] = response.json().get("items", [])
        return items

    def patch(self, kind: str, name: str, body: dict[str, Any], namespace: str = "default") -> dict[str, Any]:
        response = self.http.patch(
            self.path(kind, namespace, name), content=json.dumps(body),
            headers={"Content-Type": "application/merge-patch+json"},
        )  # fmt: skip
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def delete(self, kind: str, name: str, namespace: str = "default") -> None:
        response = self.http.delete(self.path(kind, namespace, name))
        if response.status_code != 404:
            response.raise_for_status()


class Sandbox:
    """A running sandbox: API server URL, kubeconfig, state directory, a client, the runtime."""

    def __init__(
        self,
        apiserver: ApiServerThread,
        runtime: RuntimeThread,
        directory: pathlib.Path,
        tokens: dict[str, str],
    ) -> None:
        self.apiserver = apiserver
        self.runtime = runtime
        self.dir = directory
        self.url = apiserver.url
        self.tokens = tokens
        #: The user's kubeconfig (an administrator), and the operator's (its ServiceAccount).
        ca = apiserver.certificates.ca
        self.kubeconfig = write_kubeconfig(
            directory / "kubeconfig", apiserver.url, token=tokens["admin"], ca=ca
        )
        self.operator_kubeconfig = write_kubeconfig(
            directory / "operator.kubeconfig",
            apiserver.url,
            token=tokens["operator"],
            ca=ca,
            user="mlops-operator",
        )
        self.api = Api(apiserver.url, tokens["admin"], ca)
        self.mlflow_uri: str | None = None
        #: The MLflow server of ``sandbox_with_mlflow``, for tests that stop and start it.
        self.mlflow: MlflowServer | None = None

    def log(self, pod: str, container: str, namespace: str = "default") -> str:
        path = self.dir / "logs" / f"{namespace}_{pod}_{container}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def load_manifest(name: str, **substitutions: str) -> dict[str, Any]:
    """A YAML manifest from tests/data/sandbox with ``{key}`` placeholders filled in."""
    text = (DATA / name).read_text()
    for key, value in substitutions.items():
        text = text.replace("{" + key + "}", value)
    manifest: dict[str, Any] = yaml.safe_load(text)
    return manifest


def wait_for(
    predicate: Callable[[], T | None], timeout: float = 30, interval: float = 0.1, message: str = "condition"
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail with its last value at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
        except Exception as exc:
            last = exc
        else:
            if last:
                result: T = last
                return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message}; last observed: {last!r}")
        time.sleep(interval)  # polling interval, not synchronisation: the predicate decides


def wait_for_condition(
    api: Api,
    kind: str,
    name: str,
    type_: str,
    status: str = "True",
    timeout: float = 30,
    namespace: str = "default",
) -> dict[str, Any]:
    """Wait until ``kind/name`` has condition ``type_`` with ``status``; return the object."""
    observed: dict[str, Any] = {}

    def check() -> dict[str, Any] | None:
        obj = api.get(kind, name, namespace)
        observed["last"] = obj
        if obj is None:
            return None
        for condition in obj.get("status", {}).get("conditions") or []:
            if condition.get("type") == type_ and condition.get("status") == status:
                return obj
        return None

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    last = observed.get("last")
    pytest.fail(
        f"{kind} {namespace}/{name} never had condition {type_}={status} within {timeout}s; "
        f"last status: {json.dumps((last or {}).get('status'), indent=1) if last else 'object not found'}"
    )


def _runtime_config(directory: pathlib.Path) -> RuntimeConfig:
    # Short back-offs keep crash-loop and retry tests within seconds.
    return RuntimeConfig(
        state_dir=directory, restart_backoff_base=0.5, restart_backoff_cap=4.0, job_backoff_base=0.2,
        job_backoff_cap=2.0, image_pull_backoff=0.5, max_grace_seconds=3.0, resync_seconds=0.5,
    )  # fmt: skip


def _crds_dir(directory: pathlib.Path) -> pathlib.Path:
    """What ``sandbox up`` serves: our CRDs and the Gateway API's HTTPRoute."""
    return manager.default_crds(directory)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """API server + runtime in threads of this process; pods are real processes on 127.0.0.N."""
    directory = tmp_path_factory.mktemp("sandbox")
    tokens = sandbox_tokens()
    apiserver = ApiServerThread(
        crds_dir=_crds_dir(directory), authenticator=sandbox_authenticator(tokens)
    ).start()
    try:
        runtime = RuntimeThread(
            apiserver.url, _runtime_config(directory), tokens["runtime"], apiserver.certificates.ca
        ).start()
        try:
            yield Sandbox(apiserver, runtime, directory, tokens)
        finally:
            runtime.stop()
    finally:
        apiserver.stop()


@pytest.fixture(scope="module")
def sandbox_with_mlflow(sandbox: Sandbox) -> Iterator[Sandbox]:
    """``sandbox`` plus a real MLflow server (SQLite + local artifacts); its URL in ``mlflow_uri``."""
    server = MlflowServer(sandbox.dir / "mlflow")
    log = sandbox.dir / "logs" / "mlflow.log"
    server.start(log)
    try:
        server.wait_ready(timeout=120, log=log)
        sandbox.mlflow_uri, sandbox.mlflow = server.url, server
        yield sandbox
    finally:
        sandbox.mlflow_uri, sandbox.mlflow = None, None
        server.stop()


def stop_mlflow(sandbox: Sandbox) -> None:
    """Stop the sandbox's MLflow server (an outage: its URL stops answering)."""
    assert sandbox.mlflow is not None, "request sandbox_with_mlflow"
    sandbox.mlflow.stop()


def start_mlflow(sandbox: Sandbox) -> None:
    """Start the sandbox's MLflow server again, on the same port and store (the outage ends)."""
    assert sandbox.mlflow is not None, "request sandbox_with_mlflow"
    log = sandbox.dir / "logs" / "mlflow.log"
    sandbox.mlflow.start(log)
    sandbox.mlflow.wait_ready(timeout=120, log=log)


class OperatorProcess:
    """The operator (``mlops-operator run -A``) as a process against a sandbox, which a test may
    kill with SIGKILL (no cleanup at all, as a crashed or evicted pod) and start again."""

    #: The process plays one pod's operator container (POD_NAME), so a restart is the kubelet
    #: restarting it: the successor takes over its dead predecessor's Lease at once. Short
    #: timings for the rest (a standby of another "pod" would wait the Lease out).
    LEADER_ELECTION = {
        "POD_NAME": "mlops-operator-test",
        "MLOPS_LEADER_ELECTION_LEASE_DURATION": "4",
        "MLOPS_LEADER_ELECTION_RENEW_DEADLINE": "3",
        "MLOPS_LEADER_ELECTION_RETRY_PERIOD": "1",
    }

    def __init__(self, sandbox: Sandbox, env: dict[str, str] | None = None) -> None:
        self.sandbox = sandbox
        self.env = {**self.LEADER_ELECTION, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        liveness, metrics = free_port(), free_port()
        env = manager.build_operator_env(
            self.sandbox.operator_kubeconfig, metrics_port=metrics, liveness_port=liveness,
            mlflow_uri=self.sandbox.mlflow_uri, reconcile_interval=self.env.get("MLOPS_RECONCILE_INTERVAL", "2"),
        )  # fmt: skip
        log = self.sandbox.dir / "logs" / "operator.log"
        self.process = manager._spawn(manager.operator_command(), log, {**env, **self.env})
        self.starts += 1
        health = f"http://127.0.0.1:{liveness}/healthz"
        manager._wait(
            "the operator", self.process, log, lambda: health if manager._http_ok(health) else None, 60
        )

    def kill(self) -> None:
        """SIGKILL the operator's process group and reap it."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_group(self.process.pid, None, grace=10)


@pytest.fixture(scope="module")
def operator(sandbox_with_mlflow: Sandbox) -> Iterator[OperatorProcess]:
    """The operator as a process against ``sandbox_with_mlflow``, for the module; tests kill and
    restart it through the :class:`OperatorProcess`."""
    process = OperatorProcess(sandbox_with_mlflow)
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def sandbox_operator(sandbox: Sandbox) -> Iterator[Callable[[], str]]:
    """A function starting the operator (``mlops-operator run -A``) against ``sandbox``, once per module.

    Asked for explicitly because it costs a process; it uses ``sandbox.mlflow_uri`` if MLflow runs
    (request ``sandbox_with_mlflow`` first). Returns the operator's metrics URL.
    """
    started: list[tuple[int, str]] = []

    def start() -> str:
        if started:
            return started[0][1]
        liveness, metrics = free_port(), free_port()
        env = {"KUBECONFIG": str(sandbox.operator_kubeconfig), "MLOPS_METRICS_PORT": str(metrics),
               "MLOPS_LIVENESS_PORT": str(liveness)}  # fmt: skip
        if sandbox.mlflow_uri:
            env["MLOPS_MLFLOW_TRACKING_URI"] = sandbox.mlflow_uri
        log = sandbox.dir / "logs" / "operator.log"
        process = manager._spawn(manager.operator_command(), log, env)
        url = f"http://127.0.0.1:{metrics}/metrics"
        started.append((process.pid, url))
        health = f"http://127.0.0.1:{liveness}/healthz"
        manager._wait("the operator", process, log, lambda: health if manager._http_ok(health) else None, 60)
        return url

    try:
        yield start
    finally:
        for pid, _ in started:
            stop_group(pid, None, grace=10)
