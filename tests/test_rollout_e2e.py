"""Canary rollouts in the sandbox: real model servers, real traffic and labels, a killed operator.

The whole product runs as it would on a cluster (``sandbox up``: API server, runtime, MLflow, the
operator as a process); the test trains two versions of iris, serves them, sends predictions and
their ground truth through the Service, and watches what the operator does.
"""

from __future__ import annotations

import sys
import threading
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


def _events(api: Api, reason: str) -> list[str]:
    found = [
        e
        for e in api.list("Event")
        if e.get("involvedObject", {}).get("name") == "iris" and e.get("reason") == reason
    ]
    return [e["message"] for e in sorted(found, key=lambda e: int(e["metadata"]["resourceVersion"]))]


def _rollout(api: Api) -> dict[str, Any]:
    return dict(((api.get("InferenceService", "iris") or {}).get("status") or {}).get("rollout") or {})


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
