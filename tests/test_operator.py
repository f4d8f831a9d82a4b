"""The whole operator (kopf, in-process) against the emulated API server.

No runtime runs here: Jobs and pods are given their states by the test, as kubelet and the
Job controller would, so each controller decision is observed in isolation.
"""

from __future__ import annotations

import copy
import json
import os
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kopf.testing import KopfRunner

from mlops_operator.controllers.metrics import RECONCILE_TOTAL
from mlops_operator.sandbox.apiserver import ApiServerThread, write_kubeconfig
from tests.fixtures_sandbox import Api, wait_for, wait_for_condition

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _without_cel(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_cel(v) for k, v in node.items() if k != "x-kubernetes-validations"}
    if isinstance(node, list):
        return [_without_cel(item) for item in node]
    return node


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """An API server with our CRDs minus their CEL rules (a cluster that does not run CEL),
    and the operator running against it."""
    tmp = tmp_path_factory.mktemp("operator")
    crds = tmp / "crds"
    crds.mkdir()
    for path in (ROOT / "crds").glob("*.yaml"):
        (crds / path.name).write_text(yaml.safe_dump(_without_cel(yaml.safe_load(path.read_text()))))
    server = ApiServerThread(crds_dir=crds).start()
    kubeconfig = write_kubeconfig(tmp / "kubeconfig", server.url)
    env = {
        "KUBECONFIG": str(kubeconfig),
        "MLOPS_METRICS_PORT": "0",
        "MLOPS_LIVENESS_PORT": "0",
        "MLOPS_RECONCILE_INTERVAL": "1",
        "MLOPS_MLFLOW_TRACKING_URI": "http://127.0.0.1:9",  # nothing listens: MLflow is down
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    from mlops_operator.config import get_settings
    from mlops_operator.controllers import base

    get_settings.cache_clear()
    base.set_kube(None)
    base.set_registry(None)
    try:
        args = ["run", "--standalone", "--all-namespaces", "-m", "mlops_operator.controllers.handlers"]
        with KopfRunner(args, timeout=60) as runner:
            yield Api(server.url)
        assert runner.exception is None, runner.output
    finally:
        server.stop()
        base.set_kube(None)
        base.set_registry(None)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        get_settings.cache_clear()


def example(name: str, **spec_changes: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load((ROOT / "examples" / name).read_text())
    manifest["spec"].update(copy.deepcopy(spec_changes))
    manifest["spec"] = {k: v for k, v in manifest["spec"].items() if v is not None}
    return manifest


def events_for(api: Api, name: str, reason: str) -> list[dict[str, Any]]:
    return [
        e
        for e in api.list("Event")
        if e.get("involvedObject", {}).get("name") == name and e.get("reason") == reason
    ]


def finish_job(
    api: Api, job: dict[str, Any], condition: str, reason: str, message: str, exit_code: int
) -> None:
    """Play kubelet and the Job controller: a terminated trainer pod, then the Job's condition."""
    name = job["metadata"]["name"]
    api.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"{name}-abcde", "namespace": "default", "labels": {"job-name": name}},
            "spec": {"containers": [{"name": "trainer", "image": "trainer"}]},
        }
    )
    terminated = {
        "exitCode": exit_code,
        "reason": "Completed" if exit_code == 0 else "Error",
        "message": message,
    }
    api.http.patch(
        api.path("Pod", "default", f"{name}-abcde") + "/status",
        content=json.dumps(
            {"status": {"containerStatuses": [{"name": "trainer", "state": {"terminated": terminated}}]}}
        ),
        headers={"Content-Type": "application/merge-patch+json"},
    ).raise_for_status()
    status = {
        "startTime": "2026-01-01T00:00:00Z",
        "conditions": [
            {
                "type": condition,
                "status": "True",
                "reason": reason,
                "lastTransitionTime": "2026-01-01T00:01:00Z",
            }
        ],
        ("succeeded" if condition == "Complete" else "failed"): 1,
    }
    api.http.patch(
        api.path("Job", "default", name) + "/status",
        content=json.dumps({"status": status}),
        headers={"Content-Type": "application/merge-patch+json"},
    ).raise_for_status()


def test_trainingjob_run_succeeds_and_creates_a_model_version(cluster: Api) -> None:
    tj = cluster.create(example("iris-trainingjob.yaml", schedule=None))
    job = wait_for(lambda: cluster.get("Job", "iris-train-1"), message="the first run's Job")
    assert job["metadata"]["ownerReferences"][0]["uid"] == tj["metadata"]["uid"]
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["mlops-operator", "train"]
    wait_for_condition(cluster, "TrainingJob", "iris-train", "Running", "True")

    result = {
        "status": "Succeeded",
        "modelName": "iris-classifier",
        "modelVersion": "1",
        "mlflowRunId": "run1",
        "sha256": "c" * 64,
        "metrics": {"accuracy": "0.9667"},
        "dataset": {"uri": "sklearn://iris", "rows": 150},
    }
    finish_job(cluster, job, "Complete", "Completed", json.dumps(result), 0)
    done = wait_for_condition(cluster, "TrainingJob", "iris-train", "Ready", "True")
    assert done["status"]["latestModelVersion"] == "iris-classifier-v1"
    assert done["status"]["lastRun"]["modelVersion"] == "1"
    mv = wait_for(lambda: cluster.get("ModelVersion", "iris-classifier-v1"), message="the ModelVersion")
    assert mv["spec"]["metrics"] == {"accuracy": "0.9667"}
    assert mv["spec"]["lineage"]["trainingJob"] == "iris-train"
    wait_for(
        lambda: events_for(cluster, "iris-train", "ModelVersionCreated"),
        message="a ModelVersionCreated Event",
    )
    # MLflow is down in this test: the ModelVersion says so, and stays retriable.
    wait_for_condition(cluster, "ModelVersion", "iris-classifier-v1", "Ready", "Unknown")


def test_failed_run_shows_the_trainers_reason(cluster: Api) -> None:
    manifest = example("iris-trainingjob.yaml", schedule=None)
    manifest["metadata"]["name"] = "bad-data"
    cluster.create(manifest)
    job = wait_for(lambda: cluster.get("Job", "bad-data-1"), message="the run's Job")
    reason = {
        "status": "Failed",
        "reason": "DataValidationFailed",
        "message": "target column 'species' is missing",
    }
    finish_job(cluster, job, "Failed", "PodFailurePolicy", json.dumps(reason), 3)
    tj = wait_for_condition(cluster, "TrainingJob", "bad-data", "Ready", "False")
    ready = next(c for c in tj["status"]["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "DataValidationFailed"
    assert "target column 'species' is missing" in ready["message"]
    assert tj["status"]["lastRun"]["phase"] == "Failed"
    assert wait_for(
        lambda: events_for(cluster, "bad-data", "DataValidationFailed"), message="a Warning Event"
    )


def test_invalid_spec_past_the_schema_is_reported_once_and_creates_nothing(cluster: Api) -> None:
    manifest = example("iris-inferenceservice.yaml")
    manifest["metadata"]["name"] = "broken"
    manifest["spec"]["model"]["version"] = "3"  # and track: LatestValidated (a CEL rule the cluster skips)
    cluster.create(manifest)
    isvc = wait_for_condition(cluster, "InferenceService", "broken", "Ready", "False")
    ready = next(c for c in isvc["status"]["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "InvalidSpec"
    assert ready["message"] == "spec.model: set exactly one of version, alias and track"
    assert isvc["status"]["observedGeneration"] == isvc["metadata"]["generation"]
    # The timer re-reconciles every second; wait for several invalid passes, then count Events.
    start = RECONCILE_TOTAL.labels("InferenceService", "invalid")._value.get()
    wait_for(
        lambda: RECONCILE_TOTAL.labels("InferenceService", "invalid")._value.get() >= start + 3, timeout=20
    )
    warnings = events_for(cluster, "broken", "InvalidSpec")
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning"
    assert cluster.list("Deployment") == [] and cluster.list("Service") == []


def _patch_status(api: Api, kind: str, name: str, status: dict[str, Any]) -> None:
    api.http.patch(
        api.path(kind, "default", name) + "/status",
        content=json.dumps({"status": status}),
        headers={"Content-Type": "application/merge-patch+json"},
    ).raise_for_status()


def validated_model_version(api: Api, version: str) -> None:
    """A ModelVersion as the ModelVersion controller leaves it once its gates pass."""
    name = f"demo-model-v{version}"
    api.create(
        {
            "apiVersion": "mlops.dev/v1alpha1",
            "kind": "ModelVersion",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"model": {"name": "demo-model", "version": version}, "source": {"sha256": version * 64}},
        }
    )
    condition = {
        "type": "Validated",
        "status": "True",
        "reason": "GatesPassed",
        "message": "",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    # The ModelVersion controller also reconciles these (MLflow is down here, so it leaves
    # Ready=Unknown); only Validated and resolvedVersion matter to the InferenceService.
    wait_for(
        lambda: api.get("ModelVersion", name) and api.get("ModelVersion", name).get("status"),
        message="the MV controller's first pass",
    )  # type: ignore[union-attr]
    obj = api.get("ModelVersion", name) or {}
    conditions = [c for c in obj.get("status", {}).get("conditions", []) if c["type"] != "Validated"] + [
        condition
    ]
    _patch_status(api, "ModelVersion", name, {"conditions": conditions, "resolvedVersion": version})


def make_ready(api: Api, deployment: str, replicas: int) -> None:
    """Play the Deployment controller: every replica of the current generation is ready."""
    obj = api.get("Deployment", deployment) or {}
    _patch_status(
        api,
        "Deployment",
        deployment,
        {
            "observedGeneration": obj["metadata"]["generation"],
            "replicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
            "updatedReplicas": replicas,
        },
    )


def test_inferenceservice_serves_the_latest_validated_version_and_replaces_it_safely(cluster: Api) -> None:
    manifest = example("iris-inferenceservice.yaml")
    manifest["metadata"]["name"] = "demo"
    manifest["spec"]["model"] = {"name": "demo-model", "track": "LatestValidated"}
    manifest["spec"].pop("retraining")
    cluster.create(manifest)
    waiting = wait_for_condition(cluster, "InferenceService", "demo", "Ready", "False")
    assert (
        next(c for c in waiting["status"]["conditions"] if c["type"] == "Ready")["reason"]
        == "NoValidatedVersion"
    )

    validated_model_version(cluster, "1")
    v1 = wait_for(lambda: cluster.get("Deployment", "demo-v1"), message="version 1's Deployment")
    assert v1["spec"]["replicas"] == 2
    assert "--expected-sha256=" + "1" * 64 in v1["spec"]["template"]["spec"]["containers"][0]["args"]
    stable = wait_for(lambda: cluster.get("Service", "demo"), message="the stable Service")
    assert stable["spec"]["selector"] == {
        "mlops.dev/inferenceservice": "demo",
        "app.kubernetes.io/component": "predictor",
    }
    pdb = cluster.http.get("/apis/policy/v1/namespaces/default/poddisruptionbudgets/demo")
    assert pdb.status_code == 200 and pdb.json()["spec"]["maxUnavailable"] == 1
    loading = wait_for_condition(cluster, "InferenceService", "demo", "Ready", "False")
    assert loading["status"]["url"] == "http://demo.default.svc.cluster.local"

    make_ready(cluster, "demo-v1", 2)
    ready = wait_for_condition(cluster, "InferenceService", "demo", "Ready", "True")
    assert (
        ready["status"]["stable"]["modelVersion"] == "1" and ready["status"]["stable"]["readyReplicas"] == 2
    )

    # A newer validated version: started next to version 1, which keeps serving until it is ready.
    validated_model_version(cluster, "2")
    wait_for(lambda: cluster.get("Deployment", "demo-v2"), message="version 2's Deployment")
    rolling = wait_for_condition(cluster, "InferenceService", "demo", "Progressing", "True")
    assert (
        "canary analysis is not available"
        in next(c for c in rolling["status"]["conditions"] if c["type"] == "Progressing")["message"]
    )
    wait_for(
        lambda: events_for(cluster, "demo", "CanaryNotAvailable"), message="the CanaryNotAvailable Event"
    )
    assert rolling["status"]["stable"]["modelVersion"] == "1"
    assert cluster.get("Deployment", "demo-v1") is not None
    make_ready(cluster, "demo-v2", 2)
    wait_for(lambda: cluster.get("Deployment", "demo-v1") is None, message="version 1 retired")
    done = wait_for_condition(cluster, "InferenceService", "demo", "Progressing", "False")
    assert done["status"]["stable"]["modelVersion"] == "2"
    assert done["status"]["history"][-1]["modelVersion"] == "2"


def test_crash_looping_server_is_not_ready_and_says_why(cluster: Api) -> None:
    manifest = example("iris-inferenceservice.yaml")
    manifest["metadata"]["name"] = "crashy"
    manifest["spec"]["model"] = {"name": "crashy-model", "version": "5"}
    manifest["spec"]["replicas"] = 1
    manifest["spec"].pop("retraining")
    cluster.create(manifest)
    wait_for(lambda: cluster.get("Deployment", "crashy-v5"), message="the Deployment")
    labels = {
        "mlops.dev/inferenceservice": "crashy",
        "mlops.dev/model-version": "5",
        "app.kubernetes.io/component": "predictor",
    }
    cluster.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "crashy-v5-x", "namespace": "default", "labels": labels},
                    "spec": {"containers": [{"name": "server", "image": "server"}]}})  # fmt: skip
    waiting = {"reason": "CrashLoopBackOff", "message": "back-off 20s restarting failed container"}
    last = {"exitCode": 1, "message": "mlops-operator serve: sha256 mismatch for models:/crashy-model/5"}
    _patch_status(
        cluster,
        "Pod",
        "crashy-v5-x",
        {
            "containerStatuses": [
                {
                    "name": "server",
                    "ready": False,
                    "restartCount": 3,
                    "state": {"waiting": waiting},
                    "lastState": {"terminated": last},
                }
            ]
        },
    )

    def reason() -> str | None:
        obj = cluster.get("InferenceService", "crashy") or {}
        ready = next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == "Ready"), {})
        return ready.get("message") if ready.get("reason") == "CrashLoopBackOff" else None

    message = wait_for(reason, message="Ready=False with reason CrashLoopBackOff")
    assert "crashy-v5-x" in message and "exit code 1" in message


def test_scale_subresource_scales_the_predictor(cluster: Api) -> None:
    manifest = example("iris-inferenceservice.yaml")
    manifest["metadata"]["name"] = "scaled"
    manifest["spec"]["model"] = {"name": "scaled-model", "version": "1"}
    manifest["spec"].pop("retraining")
    cluster.create(manifest)
    wait_for(lambda: cluster.get("Deployment", "scaled-v1"), message="the Deployment")
    cluster.http.patch(
        cluster.path("InferenceService", "default", "scaled") + "/scale",
        content=json.dumps({"spec": {"replicas": 4}}),
        headers={"Content-Type": "application/merge-patch+json"},
    ).raise_for_status()
    wait_for(
        lambda: (cluster.get("Deployment", "scaled-v1") or {}).get("spec", {}).get("replicas") == 4,
        message="4 replicas",
    )
    scale = cluster.http.get(cluster.path("InferenceService", "default", "scaled") + "/scale").json()
    assert scale["spec"]["replicas"] == 4
    assert (
        scale["status"]["selector"]
        == "app.kubernetes.io/component=predictor,mlops.dev/inferenceservice=scaled"
    )
