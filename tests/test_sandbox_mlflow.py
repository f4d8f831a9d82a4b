"""The embedded MLflow: pods reach it with the URI they are given, as the operator's pods will."""

from __future__ import annotations

import pytest

from tests.fixtures_sandbox import Sandbox, wait_for_condition

pytestmark = pytest.mark.slow

SCRIPT = """
import mlflow
mlflow.set_experiment("sandbox-smoke")
with mlflow.start_run(run_name="from-a-pod"):
    mlflow.log_metric("answer", 42)
    mlflow.log_text("hello", "notes/hello.txt")
print("logged")
"""


def test_a_pod_logs_a_run_to_the_embedded_mlflow(sandbox_with_mlflow: Sandbox) -> None:
    from mlflow.tracking import MlflowClient

    sandbox = sandbox_with_mlflow
    assert sandbox.mlflow_uri is not None
    container = {
        "name": "main",
        "image": "ghcr.io/mlops-operator/trainer:0.1.0",
        "command": ["python", "-c", SCRIPT],
        "env": [{"name": "MLFLOW_TRACKING_URI", "value": sandbox.mlflow_uri}],
    }
    sandbox.api.create({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "mlflow-smoke"},
        "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [container]}}},
    })  # fmt: skip
    wait_for_condition(sandbox.api, "Job", "mlflow-smoke", "Complete", timeout=90)
    client = MlflowClient(tracking_uri=sandbox.mlflow_uri)
    experiment = client.get_experiment_by_name("sandbox-smoke")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.metrics["answer"] == 42
    # Artifacts go through the server (--serve-artifacts) into the sandbox directory.
    assert list((sandbox.dir / "mlflow" / "artifacts").rglob("hello.txt"))
