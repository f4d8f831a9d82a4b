"""Faults of model servers in the sandbox: a server killed under traffic, one that never becomes ready,
and MLflow down while a new version rolls out.

The API server and the runtime run in this process (``sandbox``); the operator, the model servers
and MLflow are real processes, requests go through the InferenceService's Service. The models are
MLflow pyfunc rules registered from code (one process, see ``REGISTER_SCRIPT``): seconds, not a
training run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
import pytest

from mlops_operator.controllers.inferenceservice_reconciler import pod_not_ready
from mlops_operator.rollout.rollout_plan import COMMAND_ANNOTATION
from mlops_operator.sandbox.processes import read_pidfile
from tests.fixtures_sandbox import (
    Api,
    OperatorProcess,
    Sandbox,
    start_mlflow,
    stop_mlflow,
    wait_for,
)

MODEL = "iris-rules"

RULE_MODEL = """
import time
import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

KIND = {kind!r}


class IrisRule(PythonModel):
    def load_context(self, context):
        if KIND == "hanging":
            time.sleep(10**6)  # a load that never ends: the server stays live, never ready

    def predict(self, context, model_input, params=None):
        x = model_input.to_numpy(dtype=float)
        labels = np.where(x[:, 2] < 2.5, "setosa", np.where(x[:, 3] < 1.75, "versicolor", "virginica"))
        return [str(label) for label in labels]


mlflow.models.set_model(IrisRule())
"""

# Registers each rule model file in argv[1:] as the next version of MODEL, printing the versions.
# Its own process: MLflow's fluent API keeps the tracking URI in globals.
REGISTER_SCRIPT = """
import sys
import mlflow
import pandas as pd
from mlflow.models import infer_signature

columns = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
frame = pd.DataFrame([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], columns=columns)
mlflow.set_experiment("rule-models")
for path in sys.argv[2:]:
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model", python_model=path, signature=infer_signature(frame, ["setosa", "virginica"]),
            pip_requirements=["mlflow", "numpy", "pandas"], registered_model_name=sys.argv[1],
        )
    print("REGISTERED", info.registered_model_version)
"""


@pytest.fixture(scope="module")
def versions(sandbox_with_mlflow: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Versions of MODEL: ``good`` and ``good2`` (the same rule), ``hanging`` (never loads)."""
    tmp = tmp_path_factory.mktemp("rules")
    kinds = ["good", "good2", "hanging"]
    for kind in kinds:
        (tmp / f"{kind}.py").write_text(RULE_MODEL.format(kind=kind))
    env = {**os.environ, "MLFLOW_TRACKING_URI": str(sandbox_with_mlflow.mlflow_uri)}
    done = subprocess.run(
        [sys.executable, "-c", REGISTER_SCRIPT, MODEL, *[str(tmp / f"{k}.py") for k in kinds]],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    registered = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("REGISTERED ")]
    return dict(zip(kinds, registered, strict=True))


def _service(name: str, version: str, deadline: int = 120) -> dict[str, Any]:
    return {
        "apiVersion": "mlops.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "model": {"name": MODEL, "version": version},
            "replicas": 1,
            "rollout": {
                "strategy": "Canary",
                "analysis": {
                    "interval": "2s",
                    "threshold": 2,
                    "stepWeights": [50],
                    "minRequests": 5,
                    "progressDeadlineSeconds": deadline,
                    "metrics": [{"name": "error-rate", "max": "0.05"}],
                },
            },
        },
    }


class Traffic:
    """Predictions through the Service on a thread: which version answered, which requests failed."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[tuple[float, str]] = []  # (time.monotonic(), model_version)
        self.failures: list[tuple[float, str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with httpx.Client(
            base_url=self.url, timeout=5, limits=httpx.Limits(max_keepalive_connections=0)
        ) as http:
            while not self.stop.is_set():
                try:
                    answer = http.post("/predict", json={"features": [5.1, 3.5, 1.4, 0.2]})
                    if answer.status_code == 200:
                        self.answers.append((time.monotonic(), str(answer.json()["model_version"])))
                    else:
                        self.failures.append((time.monotonic(), f"{answer.status_code}: {answer.text[:200]}"))
                except httpx.HTTPError as exc:
                    self.failures.append((time.monotonic(), repr(exc)))
                self.stop.wait(0.05)  # a steady trickle, not a load test

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


def _isvc(api: Api, name: str) -> dict[str, Any]:
    return api.get("InferenceService", name) or {}


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition["type"] == type_:
            return dict(condition)
    return {}


def _serve(api: Api, name: str, version: str, **kwargs: Any) -> Traffic:
    api.create(_service(name, version, **kwargs))
    wait_for(
        lambda: (_isvc(api, name).get("status", {}).get("stable") or {}).get("readyReplicas"),
        timeout=120,
        message=f"{name} serving version {version}",
    )
    service = api.get("Service", name) or {}
    return Traffic(f"http://{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}")


def _pods(api: Api, name: str, version: str) -> list[dict[str, Any]]:
    return api.list("Pod", labels=f"mlops.dev/inferenceservice={name},mlops.dev/model-version={version}")


def _ready(pod: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions") or []
    )


def _pod_events(api: Api, pod: str, reason: str) -> list[dict[str, Any]]:
    return [
        e
        for e in api.list("Event")
        if e.get("involvedObject", {}).get("name") == pod and e.get("reason") == reason
    ]


def _outcome(api: Api, name: str, version: str, timeout: float = 180) -> dict[str, Any]:
    return wait_for(
        lambda: (
            (s := _isvc(api, name)).get("status", {}).get("rollout", {}).get("phase")
            in ("Succeeded", "RolledBack", "Failed")
            and s["status"]["rollout"].get("target") == version
            and s
        ),
        timeout=timeout,
        message=f"the rollout of version {version} to end",
    )


@pytest.mark.parametrize(
    ("pod", "words"),
    [
        (
            {"phase": "Running", "containerStatuses": [{"name": "server", "ready": False,
             "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]},
            "pod p: container server runs since 2026-01-01T00:00:00Z but its readiness probe "
            "(GET /v2/health/ready) has not passed",
        ),
        ({"phase": "Pending"}, "pod p is Pending, not ready"),
        ({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}, None),
    ],
    ids=["probe-not-passing", "pending", "ready"],
)  # fmt: skip
def test_a_pod_that_is_not_ready_is_named_with_what_it_waits_on(
    pod: dict[str, Any], words: str | None
) -> None:
    spec = {"containers": [{"name": "server", "readinessProbe": {"httpGet": {"path": "/v2/health/ready"}}}]}
    assert pod_not_ready([{"metadata": {"name": "p"}, "spec": spec, "status": pod}]) == words


@pytest.mark.slow
def test_a_killed_model_server_restarts_in_place_and_serves_again(
    sandbox_with_mlflow: Sandbox,
    operator: OperatorProcess,
    versions: dict[str, str],
) -> None:
    sandbox, api = sandbox_with_mlflow, sandbox_with_mlflow.api
    good = versions["good"]
    traffic = _serve(api, "killpod", good)
    try:
        wait_for(lambda: len(traffic.answers) >= 10, timeout=30, message="traffic flowing")
        (pod,) = _pods(api, "killpod", good)
        name = pod["metadata"]["name"]
        record = read_pidfile(sandbox.dir / "run" / "pods" / f"default_{name}_server.pid")
        assert record is not None
        killed = time.monotonic()
        os.kill(record[0], signal.SIGKILL)

        # Restarted in place, as restartPolicy Always says: the same pod, restartCount 1, Ready again.
        def restarted() -> dict[str, Any] | None:
            current = api.get("Pod", name) or {}
            statuses = current.get("status", {}).get("containerStatuses") or [{}]
            return current if statuses[0].get("restartCount", 0) >= 1 and _ready(current) else None

        current = wait_for(restarted, timeout=90, message="the killed server to restart and be ready")
        recovered = time.monotonic()
        last = current["status"]["containerStatuses"][0]["lastState"]["terminated"]
        assert last["exitCode"] == 137 or last.get("signal") == 9 or "9" in str(last.get("reason")), last
        assert _pod_events(api, name, "BackOff"), "the restart is not told in an Event"
        isvc = wait_for(
            lambda: (s := _isvc(api, "killpod")) and _condition(s, "Ready").get("status") == "True" and s,
            timeout=60,
            message="the InferenceService Ready again",
        )
        assert isvc["status"]["stable"]["modelVersion"] == good
        answered = len(traffic.answers)
        wait_for(
            lambda: len(traffic.answers) >= answered + 20, timeout=30, message="answers after the restart"
        )
        after = [f for t, f in traffic.failures if t > recovered + 1]
        assert not after, after[:5]  # once ready again, every request succeeds
        print(
            f"killed server ready again after {recovered - killed:.1f}s; {len(traffic.failures)} requests failed"
        )
    finally:
        traffic.close()
    api.delete("InferenceService", "killpod")


@pytest.mark.slow
def test_a_canary_that_never_becomes_ready_fails_with_the_reason_while_stable_serves(
    sandbox_with_mlflow: Sandbox,
    operator: OperatorProcess,
    versions: dict[str, str],
) -> None:
    api = sandbox_with_mlflow.api
    good, hanging = versions["good"], versions["hanging"]
    traffic = _serve(api, "hang", good, deadline=40)
    try:
        api.patch("InferenceService", "hang", {"spec": {"model": {"version": hanging}}})
        (pod,) = wait_for(lambda: _pods(api, "hang", hanging), timeout=60, message="the canary's pod")
        name = pod["metadata"]["name"]
        # The server is live (its startup probe passes) but its readiness probe never does: the
        # sandbox runtime posts its Unhealthy Event once failureThreshold (3) probes 5 s apart failed.
        unhealthy = wait_for(
            lambda: _pod_events(api, name, "Unhealthy"), timeout=90, message="a failed readiness probe"
        )
        assert unhealthy[0]["type"] == "Warning" and "Readiness probe failed" in unhealthy[0]["message"]
        waiting = wait_for(
            lambda: (
                (r := _isvc(api, "hang")["status"]["rollout"]).get("phase") == "Progressing"
                and name in r.get("message", "")
                and r
            ),
            timeout=30,
            message="the rollout naming the pod it waits for",
        )
        assert (
            hanging in waiting["message"] and "readiness probe (GET /v2/health/ready)" in waiting["message"]
        )

        isvc = _outcome(api, "hang", hanging)
        rollout = isvc["status"]["rollout"]
        assert (rollout["phase"], rollout["reason"]) == ("Failed", "ProgressDeadlineExceeded"), rollout
        assert hanging in rollout["message"] and "progressDeadlineSeconds 40" in rollout["message"], rollout
        assert f"pod {name}" in rollout["message"] and "has not passed" in rollout["message"], rollout
        assert hanging in rollout["rejectedVersions"]
        failed = [
            e
            for e in api.list("Event")
            if e.get("involvedObject", {}).get("name") == "hang" and e.get("reason") == "RolloutFailed"
        ]
        assert failed and failed[-1]["type"] == "Warning" and "no ready replica" in failed[-1]["message"]
        assert isvc["status"]["stable"]["modelVersion"] == good
        assert _condition(isvc, "Ready")["status"] == "True"
        # The canary never answered a client, and stable never stopped answering.
        assert {version for _, version in traffic.answers} == {good}
        assert not traffic.failures, traffic.failures[:5]
        wait_for(lambda: not _pods(api, "hang", hanging), timeout=60, message="the canary's pod removed")
    finally:
        traffic.close()


@pytest.mark.slow
def test_mlflow_down_during_a_rollout_fails_it_with_the_reason_and_a_retry_converges(
    sandbox_with_mlflow: Sandbox,
    operator: OperatorProcess,
    versions: dict[str, str],
) -> None:
    sandbox, api = sandbox_with_mlflow, sandbox_with_mlflow.api
    good, good2 = versions["good"], versions["good2"]
    traffic = _serve(api, "outage", good)
    try:
        stop_mlflow(sandbox)
        try:
            # The new version's server cannot download its model: it exits saying so, the pod
            # crash-loops, and the rollout stops with that reason; stable keeps every request.
            api.patch("InferenceService", "outage", {"spec": {"model": {"version": good2}}})
            isvc = _outcome(api, "outage", good2)
            rollout = isvc["status"]["rollout"]
            assert rollout["phase"] == "Failed" and rollout["reason"] in ("CrashLoopBackOff", "Error"), (
                rollout
            )
            assert "MLflow" in rollout["message"] and good2 in rollout["message"], rollout
            assert good2 in rollout["rejectedVersions"]
            assert isvc["status"]["stable"]["modelVersion"] == good
            assert _condition(isvc, "Ready")["status"] == "True"
        finally:
            start_mlflow(sandbox)
        # Once MLflow is back, the user's retry (the command kubectl mlops retry writes) rolls it out.
        back = time.monotonic()
        api.patch("InferenceService", "outage", {"metadata": {"annotations": {COMMAND_ANNOTATION: "retry"}}})
        isvc = wait_for(
            lambda: (
                (s := _isvc(api, "outage")).get("status", {}).get("rollout", {}).get("phase") == "Succeeded"
                and s["status"]["stable"]["modelVersion"] == good2
                and s
            ),
            timeout=180,
            message=f"version {good2} promoted after the retry",
        )
        print(f"version {good2} promoted {time.monotonic() - back:.1f}s after the retry")
        assert good2 not in (isvc["status"]["rollout"].get("rejectedVersions") or [])
        answered = len(traffic.answers)
        wait_for(lambda: len(traffic.answers) >= answered + 10, timeout=30, message="answers after promotion")
        assert traffic.answers[-1][1] == good2
        assert not traffic.failures, traffic.failures[:5]  # no request failed, outage or not
    finally:
        traffic.close()
