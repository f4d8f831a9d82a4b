"""Training on production data, in the sandbox: labelled traffic captured, a pod killed, a retrain.

The whole product runs as on a cluster (``sandbox up``): a TrainingJob trains iris, an
InferenceService with ``spec.capture`` serves it, labelled traffic goes through the Service,
the serving pod is deleted (its replacement serves on), and a second TrainingJob that adds
``dataset.production`` trains on the captured rows; its ModelVersion counts them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from sklearn.datasets import load_iris

from mlops_operator.sandbox import manager
from tests.fixtures_sandbox import Api, wait_for, wait_for_condition

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

REQUESTS = 24
ROWS_PER_REQUEST = 5


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, Path]]:
    directory = tmp_path_factory.mktemp("capture")
    manager.up(manager.Options(directory=directory, timeout=180), err=sys.stderr)
    try:
        yield Api.from_kubeconfig(directory / "kubeconfig"), directory
    finally:
        manager.down(directory, err=sys.stderr)


def _trainingjob(name: str, production: dict[str, Any] | None = None) -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load((ROOT / "examples/iris-trainingjob.yaml").read_text())
    manifest["metadata"]["name"] = name
    spec = manifest["spec"]
    spec.pop("schedule")
    spec["estimator"].pop("search")  # one fit: the test is about the data, not the search
    spec["evaluation"]["gates"] = [{"metric": "accuracy", "min": "0.8"}]
    if production is not None:
        spec["dataset"]["production"] = production
    return manifest


def _finished_run(api: Api, name: str) -> dict[str, Any]:
    tj = wait_for(
        lambda: (
            (t := api.get("TrainingJob", name) or {}).get("status", {}).get("lastRun", {}).get("phase")
            in ("Succeeded", "Failed")
            and t
        ),
        timeout=300,
        message=f"a run of {name} to finish",
    )
    run: dict[str, Any] = tj["status"]["lastRun"]
    assert run["phase"] == "Succeeded", run
    return tj


def _rows(directory: Path, table: str) -> int:
    return sum(pq.read_metadata(p).num_rows for p in (directory / table).rglob("*.parquet"))


def _ready_pod(api: Api, isvc: str) -> dict[str, Any] | None:
    for pod in api.list("Pod"):
        labels = pod["metadata"].get("labels") or {}
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in pod.get("status", {}).get("conditions") or []
        )
        if (
            labels.get("mlops.dev/inferenceservice") == isvc
            and ready
            and not pod["metadata"].get("deletionTimestamp")
        ):
            return pod
    return None


def test_labelled_traffic_is_captured_survives_a_pod_kill_and_trains_the_next_version(
    sandbox: tuple[Api, Path], tmp_path: Path
) -> None:
    api, _ = sandbox
    capture = tmp_path / "capture"
    uri = capture.as_uri()
    api.create(_trainingjob("iris-base"))
    base = _finished_run(api, "iris-base")
    wait_for_condition(api, "ModelVersion", base["status"]["latestModelVersion"], "Validated", timeout=120)

    service: dict[str, Any] = yaml.safe_load((ROOT / "examples/iris-inferenceservice.yaml").read_text())
    service["spec"].pop("retraining")
    service["spec"]["replicas"] = 1
    service["spec"]["model"] = {
        "name": "iris-classifier",
        "version": str(base["status"]["lastRun"]["modelVersion"]),
    }
    service["spec"]["rollout"] = {"strategy": "Replace"}
    service["spec"]["capture"] = {"uri": uri, "flushRows": 40, "flushSeconds": 1}
    api.create(service)
    first_pod = wait_for(lambda: _ready_pod(api, "iris"), timeout=180, message="the server ready")

    # Labelled traffic through the Service.
    iris = load_iris()
    names = [str(n) for n in iris.target_names]
    rng = np.random.default_rng(5)
    svc = api.get("Service", "iris") or {}
    url = f"http://{svc['spec']['clusterIP']}:{svc['spec']['ports'][0]['port']}"
    with httpx.Client(base_url=url, timeout=10) as http:
        for _ in range(REQUESTS):
            rows = rng.integers(0, len(iris.data), size=ROWS_PER_REQUEST)
            answer = http.post("/predict", json={"instances": iris.data[rows].tolist()})
            assert answer.status_code == 200, answer.text
            labels = [
                {"request_id": i, "label": names[iris.target[r]]}
                for i, r in zip(answer.json()["request_id"], rows, strict=True)
            ]
            assert http.post("/feedback", json=labels).json()["accepted"] == ROWS_PER_REQUEST
    sent = REQUESTS * ROWS_PER_REQUEST
    wait_for(
        lambda: _rows(capture, "predictions") == sent and _rows(capture, "labels") == sent,
        timeout=30,
        message="the captured rows on disk",
    )
    status = wait_for(
        lambda: (
            (
                c := (
                    (api.get("InferenceService", "iris") or {}).get("status", {}).get("monitoring") or {}
                ).get("capture")
            )
            and c.get("labels") == sent
            and c
        ),
        timeout=60,
        message="status.monitoring.capture to count the rows",
    )
    assert status["state"] == "Ok" and status["predictions"] == sent and status["dropped"] == 0

    # The pod goes; its replacement serves, and what was captured is still there.
    api.delete("Pod", first_pod["metadata"]["name"])
    wait_for(
        lambda: (p := _ready_pod(api, "iris")) and p["metadata"]["name"] != first_pod["metadata"]["name"],
        timeout=180,
        message="a replacement pod ready",
    )
    assert _rows(capture, "predictions") == sent and _rows(capture, "labels") == sent

    # A retrain that adds the captured, labelled rows to the dataset.
    api.create(
        _trainingjob("iris-retrain", production={"uri": uri, "model": "iris-classifier", "since": "1d"})
    )
    retrained = _finished_run(api, "iris-retrain")
    version = api.get("ModelVersion", retrained["status"]["latestModelVersion"]) or {}
    dataset = version["spec"]["lineage"]["dataset"]
    by_name = {s["name"]: s for s in dataset["sources"]}
    assert by_name["dataset"]["rows"] == 150 and by_name["production"]["rows"] == sent
    assert dataset["rows"] == 150 + sent and len(dataset["sha256"]) == 64
    assert by_name["production"]["firstRequestTime"] <= by_name["production"]["lastRequestTime"]
