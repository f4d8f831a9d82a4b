"""End to end in the sandbox: the real operator, trainer, MLflow and model server as processes.

This is what a user does: `mlops-operator sandbox up`, then kubectl. The README's first
command (`make demo`) is run here too, and must pass.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlops_operator.sandbox import manager
from tests.fixtures_apiserver import kubectl_binary
from tests.fixtures_sandbox import Api, wait_for, wait_for_condition

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


class Cluster:
    def __init__(self, directory: Path, state: dict[str, Any]) -> None:
        self.directory = directory
        self.kubeconfig = directory / "kubeconfig"
        self.api = Api.from_kubeconfig(self.kubeconfig)
        self.mlflow = state["mlflow_uri"]

    def kubectl(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [kubectl_binary(), f"--kubeconfig={self.kubeconfig}", *args],
            input=input, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    def apply(self, manifest: dict[str, Any]) -> None:
        result = self.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
        assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("sandbox")
    state = manager.up(manager.Options(directory=directory, timeout=180), err=sys.stderr)
    try:
        yield Cluster(directory, state)
    finally:
        manager.down(directory, err=sys.stderr)


def trainingjob(name: str, **changes: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load((ROOT / "examples/iris-trainingjob.yaml").read_text())
    manifest["metadata"]["name"] = name
    manifest["spec"].update(changes)
    manifest["spec"] = {k: v for k, v in manifest["spec"].items() if v is not None}
    return manifest


def test_failing_dataset_shows_its_reason_in_kubectl_get(cluster: Cluster) -> None:
    manifest = trainingjob("too-few-rows", schedule=None)
    manifest["spec"]["dataset"]["validation"]["minRows"] = 1000  # iris has 150
    cluster.apply(manifest)
    wait_for_condition(cluster.api, "TrainingJob", "too-few-rows", "Ready", "False", timeout=180)
    table = cluster.kubectl("get", "tj", "too-few-rows")
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()[:2]
    assert header.split()[:3] == ["NAME", "READY", "REASON"]
    assert row.split()[:3] == ["too-few-rows", "False", "DataValidationFailed"]
    wide = cluster.kubectl("get", "tj", "too-few-rows", "-o", "wide").stdout
    assert "150" in wide and "1000" in wide  # the message says how many rows there were and are needed
    # A permanent failure is not retried: one attempt, and the Job failed at once.
    tj = cluster.api.get("TrainingJob", "too-few-rows") or {}
    assert tj["status"]["lastRun"]["attempts"] == 1


def test_scheduled_trainingjob_runs_on_time_and_registers(cluster: Cluster) -> None:
    cluster.apply(trainingjob("every-minute", schedule="* * * * *"))
    created = wait_for_condition(cluster.api, "TrainingJob", "every-minute", "Ready", "True", timeout=240)
    assert created["status"]["runs"][-1]["trigger"] == "Create"

    def scheduled_run() -> dict[str, Any] | None:
        tj = cluster.api.get("TrainingJob", "every-minute") or {}
        runs = [r for r in tj.get("status", {}).get("runs", []) if r.get("trigger") == "Schedule"]
        return tj if runs else None

    tj = wait_for(scheduled_run, timeout=100, message="a run started by the schedule")
    slot = dt.datetime.fromisoformat(tj["status"]["lastScheduleTime"].replace("Z", "+00:00"))
    assert slot.second == 0
    run = next(r for r in tj["status"]["runs"] if r["trigger"] == "Schedule")
    job = cluster.api.get("Job", run["name"]) or {}
    started = dt.datetime.fromisoformat(job["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
    assert 0 <= (started - slot).total_seconds() < 30, "the scheduled run started late"
    assert tj["status"]["nextScheduleTime"] > tj["status"]["lastScheduleTime"]
    wait_for_condition(
        cluster.api, "ModelVersion", tj["status"]["latestModelVersion"], "Validated", "True", timeout=240
    )


def test_mlflow_loads_the_registered_model_and_predicts_like_the_server(cluster: Cluster) -> None:
    cluster.apply(trainingjob("iris", schedule=None))
    tj = wait_for_condition(cluster.api, "TrainingJob", "iris", "Ready", "True", timeout=240)
    version = tj["status"]["lastRun"]["modelVersion"]
    mv = wait_for_condition(
        cluster.api, "ModelVersion", tj["status"]["latestModelVersion"], "Validated", "True"
    )
    assert [g["passed"] for g in mv["status"]["gateResults"]] == [True, True]
    script = f"""
import json, mlflow
from sklearn.datasets import load_iris
mlflow.set_tracking_uri({cluster.mlflow!r})
model = mlflow.pyfunc.load_model("models:/iris-classifier/{version}")
import pandas as pd
data = load_iris(as_frame=True).frame.drop(columns=["target"]).head(20)
print(json.dumps([str(p) for p in model.predict(data)]))
"""
    loaded = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=180, check=False
    )
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    mlflow_predictions = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert len(mlflow_predictions) == 20 and set(mlflow_predictions) <= {"setosa", "versicolor", "virginica"}

    isvc = yaml.safe_load((ROOT / "examples/iris-inferenceservice.yaml").read_text())
    isvc["metadata"]["name"] = "iris-e2e"
    isvc["spec"]["model"] = {"name": "iris-classifier", "version": version}
    isvc["spec"]["replicas"] = 1
    cluster.apply(isvc)
    wait_for_condition(cluster.api, "InferenceService", "iris-e2e", "Ready", "True", timeout=180)
    url = cluster_url(cluster, "iris-e2e")
    import httpx
    from sklearn.datasets import load_iris

    rows = load_iris().data[:20].tolist()
    served = httpx.post(f"{url}/predict", json={"instances": rows}, timeout=10).json()["prediction"]
    assert served == mlflow_predictions
    # What serves is what MLflow's production alias names (gates compare candidates with it).
    from mlops_operator.registry.mlflow_registry import Registry

    registry = Registry(cluster.mlflow)
    wait_for(
        lambda: registry.resolve_alias("iris-classifier", "production").version == version, message="alias"
    )


def cluster_url(cluster: Cluster, name: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "mlops_operator.cli", "sandbox", "url", f"mlisvc/{name}", "--dir", str(cluster.directory)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()
