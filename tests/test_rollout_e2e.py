"""Canary rollouts in the sandbox: real model servers, real traffic and labels, a killed operator.

The whole product runs as it would on a cluster (``sandbox up``: API server, runtime, MLflow, the
operator as a process); the test trains two versions of iris, serves them, sends predictions and
their ground truth through the Service, and watches what the operator does.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from sklearn.datasets import load_iris

from mlops_operator.rollout.rollout_plan import COMMAND_ANNOTATION
from mlops_operator.sandbox import manager
from tests.fixtures_sandbox import Api, wait_for, wait_for_condition

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


class Sandbox:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.api = Api.from_kubeconfig(directory / "kubeconfig")


@pytest.fixture(scope="module")
def sandbox_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    directory = tmp_path_factory.mktemp("rollout")
    manager.up(manager.Options(directory=directory, timeout=180), err=sys.stderr)
    try:
        yield Sandbox(directory)
    finally:
        manager.down(directory, err=sys.stderr)


class Traffic:
    """Predictions through the Service, each followed by its label (true, or wrong when told)."""

    def __init__(self, url: str) -> None:
        iris = load_iris()
        self.features, self.names = iris.data, [str(n) for n in iris.target_names]
        self.labels = [self.names[t] for t in iris.target]
        self.url, self.wrong = url, False
        self.rng = np.random.default_rng(3)
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.versions: list[str] = []  # the version that answered each prediction, in order
        self.times: list[float] = []  # when each answer came (time.time())
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with httpx.Client(
            base_url=self.url, timeout=10, limits=httpx.Limits(max_keepalive_connections=0)
        ) as http:
            while not self.stop.is_set():
                rows = self.rng.integers(0, len(self.features), size=5)
                try:
                    answer = http.post("/predict", json={"instances": self.features[rows].tolist()})
                    if answer.status_code != 200:
                        self.errors.append(f"/predict {answer.status_code}: {answer.text[:200]}")
                        continue
                    self.versions.append(str(answer.json()["model_version"]))
                    self.times.append(time.time())
                    truth = [self.labels[i] for i in rows]
                    if self.wrong:
                        truth = [self.names[(self.names.index(t) + 1) % 3] for t in truth]
                    ids = answer.json()["request_id"]
                    http.post(
                        "/feedback",
                        json=[{"request_id": i, "label": t} for i, t in zip(ids, truth, strict=True)],
                    )
                except httpx.HTTPError as exc:  # a pod going away mid-request: keep going
                    self.errors.append(str(exc))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


def _trainingjob() -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load((ROOT / "examples/iris-trainingjob.yaml").read_text())
    manifest["metadata"]["name"] = "iris-canary"
    manifest["spec"].pop("schedule")
    return manifest


def _service(version: str) -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load((ROOT / "examples/iris-inferenceservice.yaml").read_text())
    manifest["spec"].pop("retraining")
    manifest["spec"]["replicas"] = 1
    manifest["spec"]["model"] = {"name": "iris-classifier", "version": version}
    manifest["spec"]["rollout"] = {
        "strategy": "Canary",
        "analysis": {
            "interval": "4s",
            "threshold": 2,
            "stepWeights": [10, 25, 50],
            "minRequests": 10,
            "minSamples": 60,
            "progressDeadlineSeconds": 120,
            "metrics": [
                {"name": "error-rate", "max": "0.01"},
                {"name": "accuracy", "min": "0.8", "maxDropVsStable": "0.05"},
            ],
        },
        "autoRollback": {"consecutiveChecks": 3, "cooldown": "1h"},
    }
    manifest["spec"]["monitoring"]["accuracy"]["min"] = "0.85"
    return manifest


def _named_events(api: Api, name: str, reason: str) -> list[dict[str, Any]]:
    """The Events of one reason about the InferenceService ``name``, oldest first."""
    found = [
        e
        for e in api.list("Event")
        if e.get("involvedObject", {}).get("name") == name and e.get("reason") == reason
    ]
    return sorted(found, key=lambda e: int(e["metadata"]["resourceVersion"]))


def _events(api: Api, reason: str) -> list[str]:
    return [e["message"] for e in _named_events(api, "iris", reason)]


def _rollout(api: Api, name: str = "iris") -> dict[str, Any]:
    return dict(((api.get("InferenceService", name) or {}).get("status") or {}).get("rollout") or {})


def _train_version(api: Api) -> str:
    """One more run of the TrainingJob (a retrain request); the version it registered, Validated."""
    before = (
        ((api.get("TrainingJob", "iris-canary") or {}).get("status") or {}).get("lastRun", {}).get("name")
    )
    if before is not None:
        api.patch(
            "TrainingJob",
            "iris-canary",
            {"metadata": {"annotations": {"mlops.dev/run-requested-at": "2026-12-02T00:00:00Z"}}},
        )
    tj = wait_for(
        lambda: (
            (t := api.get("TrainingJob", "iris-canary") or {})
            .get("status", {})
            .get("lastRun", {})
            .get("name")
            != before
            and t["status"]["lastRun"].get("phase") == "Succeeded"
            and t
        ),
        timeout=240,
        message="a training run to succeed",
    )
    wait_for_condition(
        api, "ModelVersion", tj["status"]["latestModelVersion"], "Validated", "True", timeout=120
    )
    return str(tj["status"]["lastRun"]["modelVersion"])


@pytest.fixture(scope="module")
def two_versions(sandbox_up: Sandbox) -> tuple[str, str]:
    """Two trained, Validated versions of iris-classifier."""
    sandbox_up.api.create(_trainingjob())
    return _train_version(sandbox_up.api), _train_version(sandbox_up.api)


def test_canary_resumes_without_repeating_or_skipping_when_the_operator_is_killed_at_every_step(
    sandbox_up: Sandbox, two_versions: tuple[str, str]
) -> None:
    api = sandbox_up.api
    first, second = two_versions
    api.create(_service(first))
    wait_for(
        lambda: ((api.get("InferenceService", "iris") or {}).get("status", {}).get("stable") or {}).get(
            "readyReplicas"
        ),
        timeout=120,
        message="version 1 serving",
    )
    service = api.get("Service", "iris") or {}
    traffic = Traffic(f"http://{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}")
    try:
        api.patch("InferenceService", "iris", {"spec": {"model": {"version": second}}})
        killed_at: list[int] = []
        while True:

            def next_step() -> dict[str, Any] | None:
                r = _rollout(api)
                terminal = r.get("phase") in ("Succeeded", "RolledBack", "Failed")
                new_step = r.get("canaryWeight") and r.get("canaryWeight") not in killed_at
                return r if terminal or new_step else None

            rollout = wait_for(next_step, timeout=150, message="the next canary step")
            if rollout.get("phase") in ("Succeeded", "RolledBack", "Failed"):
                break
            killed_at.append(int(rollout["canaryWeight"]))
            manager.restart_operator(sandbox_up.directory)  # SIGKILL, then a fresh process
        assert rollout["phase"] == "Succeeded", rollout
        assert killed_at == [10, 25, 50]
        steps = [m.split(" receives ")[1].split("%")[0] for m in _events(api, "CanaryStep")]
        assert steps == ["10", "25", "50"], "a step was repeated or skipped across the restarts"
        assert len(_events(api, "Promoted")) == 1 and len(_events(api, "RolloutStarted")) == 1
        isvc = api.get("InferenceService", "iris") or {}
        assert isvc["status"]["stable"]["modelVersion"] == second

        # After promotion the labels turn wrong: live accuracy falls below monitoring.accuracy.min
        # for three checks in a row, and the operator goes back to the version it replaced.
        traffic.wrong = True
        back = wait_for(
            lambda: (
                (s := api.get("InferenceService", "iris") or {})
                .get("status", {})
                .get("rollout", {})
                .get("phase")
                == "RolledBack"
                and (s["status"].get("stable") or {}).get("modelVersion") == first
                and s
            ),
            timeout=180,
            message="the automatic rollback to the previous version",
        )
        assert back["status"]["rollout"]["reason"] == "AutoRollback"
        assert [e["modelVersion"] for e in back["status"]["history"] if e.get("rolledBackAt")] == [second]
        assert _events(api, "RollbackStarted") and "accuracy" in _events(api, "RollbackStarted")[-1]
        assert COMMAND_ANNOTATION not in (back["metadata"].get("annotations") or {})
    finally:
        traffic.close()


@pytest.mark.parametrize("router", ["Replicas", "GatewayAPI"])
def test_the_measured_split_matches_the_reported_weight(
    sandbox_up: Sandbox, two_versions: tuple[str, str], router: str
) -> None:
    api = sandbox_up.api
    first, second = two_versions
    name = f"split-{router.lower()}"
    manifest = _service(first)
    manifest["metadata"]["name"] = name
    manifest["spec"]["traffic"] = {"router": router}
    manifest["spec"]["rollout"]["analysis"].update(interval="10m", stepWeights=[25, 50])  # hold at 25%
    api.create(manifest)
    wait_for(
        lambda: ((api.get("InferenceService", name) or {}).get("status", {}).get("stable") or {}).get(
            "readyReplicas"
        ),
        timeout=120,
        message=f"{name} serving",
    )
    api.patch("InferenceService", name, {"spec": {"model": {"version": second}}})
    canary = wait_for(
        lambda: (
            (s := (api.get("InferenceService", name) or {}).get("status", {})).get("canary", {}).get("weight")
            and s["canary"]["readyReplicas"] >= 1
            and s["canary"]
        ),
        timeout=120,
        message="the canary at its first step",
    )
    reported = canary["weight"] / 100
    service = api.get("Service", name) or {}
    url = f"http://{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}"
    versions = []
    with httpx.Client(base_url=url, timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as http:
        for _ in range(400):  # a new connection each: both routers split connections
            versions.append(
                http.post("/predict", json={"features": [5.1, 3.5, 1.4, 0.2]}).json()["model_version"]
            )
    measured = versions.count(second) / len(versions)
    sigma = (reported * (1 - reported) / len(versions)) ** 0.5
    assert abs(measured - reported) <= 4 * sigma, (router, measured, reported)
    api.delete("InferenceService", name)


# --- candidates that fail on live traffic, and Shadow -------------------------------------------------

# Models from code (MLflow pyfunc): a rule that scores about 95% on iris, and three variants of
# it that pass no offline gate but get pinned directly, as a user could.
RULE_MODEL = """
import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

KIND = {kind!r}


class IrisRule(PythonModel):
    def load_context(self, context):
        if KIND == "broken":
            raise RuntimeError("this model cannot load: a dependency it needs is missing")

    def predict(self, context, model_input, params=None):
        x = model_input.to_numpy(dtype=float)
        if KIND == "erroring" and (x[:, 0] > 7.0).any():
            raise ValueError("sepal_length above 7.0: cannot score this row")
        labels = np.where(x[:, 2] < 2.5, "setosa", np.where(x[:, 3] < 1.75, "versicolor", "virginica"))
        if KIND == "swapped":
            labels = np.where(labels == "setosa", "versicolor", np.where(labels == "versicolor", "setosa", labels))
        return [str(label) for label in labels]


mlflow.models.set_model(IrisRule())
"""


# Logs a rule model (the file in argv[1]) and prints the version it registered. It runs in its
# own process: MLflow's fluent API keeps the tracking URI and active experiment in globals,
# which would leak into the tests that run after this module.
REGISTER_SCRIPT = """
import sys
import mlflow
import pandas as pd
from mlflow.models import infer_signature
from sklearn.datasets import load_iris

frame = pd.DataFrame(load_iris().data, columns=["sepal_length", "sepal_width", "petal_length", "petal_width"])
mlflow.set_experiment("rule-models")
with mlflow.start_run(run_name=sys.argv[2]):
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=sys.argv[1],
        signature=infer_signature(frame, ["setosa"] * len(frame)),
        pip_requirements=["mlflow", "numpy", "pandas"],  # no inference: it would load the model
        registered_model_name="iris-classifier",
    )
print(info.registered_model_version)
"""


def _register_rule_model(sandbox: Sandbox, kind: str, tmp: Path) -> str:
    """Log a rule model to the sandbox's MLflow as a new version of iris-classifier; its version."""
    code = tmp / f"{kind}_model.py"
    code.write_text(RULE_MODEL.format(kind=kind))
    env = {**os.environ, "MLFLOW_TRACKING_URI": manager.read_state(sandbox.directory)["mlflow_uri"]}
    done = subprocess.run(
        [sys.executable, "-c", REGISTER_SCRIPT, str(code), kind],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def _serving(api: Api, name: str, manifest: dict[str, Any]) -> Traffic:
    api.create(manifest)
    wait_for(
        lambda: ((api.get("InferenceService", name) or {}).get("status", {}).get("stable") or {}).get(
            "readyReplicas"
        ),
        timeout=120,
        message=f"{name} serving",
    )
    service = api.get("Service", name) or {}
    return Traffic(f"http://{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}")


def _outcome(api: Api, name: str, version: str, timeout: float = 180) -> dict[str, Any]:
    """The InferenceService once the rollout of ``version`` ended (promoted, rolled back or failed)."""
    return wait_for(
        lambda: (
            (s := api.get("InferenceService", name) or {}).get("status", {}).get("rollout", {}).get("phase")
            in ("Succeeded", "RolledBack", "Failed")
            and s["status"]["rollout"].get("target") == version
            and s
        ),
        timeout=timeout,
        message=f"the rollout of version {version} to end",
    )


def test_canaries_that_error_or_crash_loop_are_rolled_back_with_the_reason(
    sandbox_up: Sandbox, two_versions: tuple[str, str], tmp_path: Path
) -> None:
    api = sandbox_up.api
    first, _ = two_versions
    erroring = _register_rule_model(sandbox_up, "erroring", tmp_path)
    broken = _register_rule_model(sandbox_up, "broken", tmp_path)
    manifest = _service(first)
    manifest["metadata"]["name"] = "faulty"
    traffic = _serving(api, "faulty", manifest)
    try:
        # About a third of the canary's requests hold a row it cannot score: 500s.
        api.patch("InferenceService", "faulty", {"spec": {"model": {"version": erroring}}})
        isvc = _outcome(api, "faulty", erroring)
        rollout = isvc["status"]["rollout"]
        assert (rollout["phase"], rollout["reason"]) == ("RolledBack", "AnalysisFailed"), rollout
        assert "error-rate" in rollout["message"] and erroring in rollout["rejectedVersions"]
        warning = _named_events(api, "faulty", "RolledBack")[-1]
        assert warning["type"] == "Warning" and "error-rate" in warning["message"]
        assert "requests" in warning["message"]  # the sample count is named
        assert isvc["status"]["stable"]["modelVersion"] == first
        assert isvc["status"]["stable"]["weight"] == 100

        # A canary whose model cannot load: the server exits, the pod crash-loops, the rollout
        # stops with the pod's reason; stable never stopped answering.
        answered = len(traffic.versions)
        api.patch("InferenceService", "faulty", {"spec": {"model": {"version": broken}}})
        isvc = _outcome(api, "faulty", broken)
        rollout = isvc["status"]["rollout"]
        assert rollout["phase"] == "Failed", rollout
        assert rollout["reason"] in ("CrashLoopBackOff", "Error"), rollout
        assert "cannot serve" in rollout["message"] and broken in rollout["message"]
        assert isvc["status"]["stable"]["modelVersion"] == first
        condition = next(c for c in isvc["status"]["conditions"] if c["type"] == "Ready")
        assert condition["status"] == "True"
        wait_for(lambda: len(traffic.versions) > answered + 20, timeout=30, message="stable still answering")
        assert set(traffic.versions[answered:]) == {first}
    finally:
        traffic.close()
    api.delete("InferenceService", "faulty")


def test_shadow_promotes_an_equal_model_and_rejects_a_worse_one(
    sandbox_up: Sandbox, two_versions: tuple[str, str], tmp_path: Path
) -> None:
    api = sandbox_up.api
    first, second = two_versions
    swapped = _register_rule_model(sandbox_up, "swapped", tmp_path)
    manifest = _service(first)
    manifest["metadata"]["name"] = "shadowed"
    manifest["spec"]["rollout"] = {
        "strategy": "Shadow",
        "shadow": {"margin": "0.05"},
        "analysis": {
            "interval": "3s",
            "threshold": 2,
            "minRequests": 10,
            "minSamples": 100,
            "progressDeadlineSeconds": 120,
            "metrics": [{"name": "error-rate", "max": "0.05"}],
        },
    }
    traffic = _serving(api, "shadowed", manifest)
    try:
        # The same training run's twin: equal on every row, so promoted once enough pairs are in.
        api.patch("InferenceService", "shadowed", {"spec": {"model": {"version": second}}})
        isvc = _outcome(api, "shadowed", second)
        rollout = isvc["status"]["rollout"]
        assert (rollout["phase"], rollout["reason"]) == ("Succeeded", "Promoted"), rollout
        assert isvc["status"]["stable"]["modelVersion"] == second
        shadow = rollout["shadow"]  # the numbers that decided it stay in status
        assert shadow["pairs"] >= 100 and shadow["mirrored"] > 0 and shadow["agreement"] == "1", shadow
        assert shadow["stableOnlyCorrect"] == shadow["candidateOnlyCorrect"] == 0
        # Clients got only stable's answers until the promotion (promotedAt is rounded down).
        promoted = dt.datetime.fromisoformat(
            isvc["status"]["history"][-1]["promotedAt"].replace("Z", "+00:00")
        )
        before = [
            v for v, t in zip(traffic.versions, traffic.times, strict=False) if t < promoted.timestamp()
        ]
        assert before and set(before) == {first}, set(before)
        passed = _named_events(api, "shadowed", "AnalysisPassed")[-1]["message"]
        assert "not worse than stable by more than 0.05" in passed and "labelled pairs" in passed
        assert _named_events(api, "shadowed", "ShadowStarted")

        # A candidate that swaps two classes: the pairs show it, and it is rejected.
        api.patch("InferenceService", "shadowed", {"spec": {"model": {"version": swapped}}})
        isvc = _outcome(api, "shadowed", swapped)
        rollout = isvc["status"]["rollout"]
        assert (rollout["phase"], rollout["reason"]) == ("RolledBack", "ShadowRejected"), rollout
        assert float(rollout["shadow"]["upperBound"]) < -0.05
        assert rollout["shadow"]["stableOnlyCorrect"] > rollout["shadow"]["candidateOnlyCorrect"]
        assert isvc["status"]["stable"]["modelVersion"] == second
        warning = _named_events(api, "shadowed", "RolledBack")[-1]
        assert warning["type"] == "Warning" and "worse than stable by more than 0.05" in warning["message"]
        assert swapped not in set(traffic.versions)  # never answered a client
        # The mirror is switched off again on stable's pods.
        deployment = api.get("Deployment", f"shadowed-v{second}") or {}
        env = {e["name"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert "MLOPS_SERVE_SHADOW_URL" not in env
    finally:
        traffic.close()
    api.delete("InferenceService", "shadowed")
