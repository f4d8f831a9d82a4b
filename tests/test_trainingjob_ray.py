"""TrainingJob ``engine: Ray``: the RayJob builder (golden), KubeRay's status read as runs, and the
operator (in-process, against the emulated API server) on a cluster without KubeRay, then with
KubeRay's RayJob CRD installed.

KubeRay itself does not run here (nor in the sandbox): the test plays it, writing the status
shapes KubeRay's ``ray.io/v1`` API defines (``jobDeploymentStatus``, ``jobStatus``, ``reason``,
``message``, ``succeeded``/``failed``), and the CRD is a stand-in with KubeRay's names and an
open schema (the real one embeds whole pod templates).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from mlops_operator.api.trainingjob import TrainingJobSpec
from mlops_operator.controllers import trainingjob_runs
from mlops_operator.controllers.invalid_spec import InvalidSpecError, parse_spec
from mlops_operator.controllers.trainingjob_reconciler import KUBERAY_MISSING
from mlops_operator.resources.trainingjob_children import build_training_job, build_training_rayjob
from tests.fixtures_operator import Cluster, events_for, example, running_operator
from tests.fixtures_sandbox import wait_for, wait_for_condition
from tests.golden import assert_golden

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = yaml.safe_load((ROOT / "examples/iris-trainingjob.yaml").read_text())
OWNER = {
    "apiVersion": "mlops.dev/v1alpha1",
    "kind": "TrainingJob",
    "metadata": {"name": "iris-train", "namespace": "default", "uid": "uid-1"},
}


def ray_spec(**changes: Any) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate(
        {
            **EXAMPLE["spec"],
            "engine": "Ray",
            "ray": {"workers": 3, "workerResources": {"requests": {"cpu": "2", "memory": "4Gi"}}},
            "resources": {"requests": {"cpu": "1", "memory": "2Gi"}},
            "dataset": {
                **EXAMPLE["spec"]["dataset"],
                "env": [{"name": "AWS_ACCESS_KEY_ID", "secretKeyRef": {"name": "s3", "key": "id"}}],
            },
            **changes,
        }
    )


def rayjob(spec: TrainingJobSpec | None = None) -> dict[str, Any]:
    return build_training_rayjob(
        OWNER,
        spec or ray_spec(),
        number=3,
        trigger="Schedule",
        image="ghcr.io/mlops-operator/trainer:0.1.0",
        mlflow_tracking_uri="http://mlflow:5000",
    )


# --- the RayJob -----------------------------------------------------------------------------------


def test_rayjob_golden() -> None:
    assert_golden("trainingjob-rayjob.yaml", rayjob())


def test_rayjob_maps_the_run_limits_onto_its_own_fields() -> None:
    spec = ray_spec(activeDeadlineSeconds=900, backoffLimit=4, ttlSecondsAfterFinished=120)
    body = rayjob(spec)
    assert (body["apiVersion"], body["kind"]) == ("ray.io/v1", "RayJob")
    assert body["metadata"]["name"] == "iris-train-3"
    assert body["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert body["metadata"]["labels"]["mlops.dev/trainingjob"] == "iris-train"
    assert body["metadata"]["labels"]["mlops.dev/run"] == "3"
    ray = body["spec"]
    assert ray["activeDeadlineSeconds"] == 900
    assert ray["backoffLimit"] == 4
    assert ray["ttlSecondsAfterFinished"] == 120 and ray["shutdownAfterJobFinishes"] is True
    assert ray["submissionMode"] == "K8sJobMode"
    assert ray["entrypoint"] == "mlops-operator train"
    (workers,) = ray["rayClusterSpec"]["workerGroupSpecs"]
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"] == 3


def test_the_trainer_runs_on_the_head_with_the_jobs_environment() -> None:
    """The Ray job's driver inherits the head container's environment: the same as a Job's pod."""
    spec = ray_spec()
    head = rayjob(spec)["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    job = build_training_job(
        OWNER,
        spec,
        number=3,
        trigger="Schedule",
        image="ghcr.io/mlops-operator/trainer:0.1.0",
        mlflow_tracking_uri="http://mlflow:5000",
    )
    assert head["env"] == job["spec"]["template"]["spec"]["containers"][0]["env"]
    assert head["resources"] == {"requests": {"cpu": "1", "memory": "2Gi"}}
    assert "command" not in head  # KubeRay writes `ray start ...` itself
    env = {item["name"]: item.get("value") for item in head["env"]}
    assert TrainingJobSpec.model_validate_json(env["MLOPS_TRAININGJOB_SPEC"]).engine == "Ray"
    worker = rayjob(spec)["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][
        0
    ]
    assert worker["resources"] == {"requests": {"cpu": "2", "memory": "4Gi"}}
    assert not any("valueFrom" in item for item in worker["env"]), "credentials only where data is loaded"


@pytest.mark.parametrize("group", ["head", "worker"])
def test_ray_pod_templates_are_valid_restricted_pod_templates(group: str) -> None:
    cluster = rayjob()["spec"]["rayClusterSpec"]
    template = (
        cluster["headGroupSpec"]["template"]
        if group == "head"
        else cluster["workerGroupSpecs"][0]["template"]
    )
    # KubeRay's schema embeds core/v1 PodTemplateSpec: validated with Kubernetes' own schema.
    pod_template = {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": "x"},
        "template": template,
    }
    kubernetes_validate.validate(pod_template, kubernetes_validate.latest_version(), strict=True)
    pod = template["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp", "/dev/shm"}


def test_engine_defaults_to_job_and_ray_settings_need_engine_ray() -> None:
    assert TrainingJobSpec.model_validate(EXAMPLE["spec"]).engine == "Job"
    with pytest.raises(InvalidSpecError, match=r"spec\.ray needs engine: Ray"):
        parse_spec(TrainingJobSpec, {**EXAMPLE["spec"], "ray": {"workers": 2}})
    with pytest.raises(InvalidSpecError, match=r"spec\.engine"):
        parse_spec(TrainingJobSpec, {**EXAMPLE["spec"], "engine": "Spark"})


def test_changing_the_engine_does_not_retrain() -> None:
    """Where trials run does not change what is trained (and an upgrade keeps every run's hash)."""
    job = TrainingJobSpec.model_validate(EXAMPLE["spec"])
    assert trainingjob_runs.spec_hash(job) == trainingjob_runs.spec_hash(
        ray_spec(dataset=EXAMPLE["spec"]["dataset"], resources=None)
    )


# --- KubeRay's status, read as a run ----------------------------------------------------------------


def a_rayjob(**status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {
            "name": "iris-train-3",
            "labels": {"mlops.dev/run": "3"},
            "annotations": {"mlops.dev/trigger": "Manual"},
        },
        "status": status,
    }


SUCCESS = {
    "status": "Succeeded",
    "mlflowRunId": "abc",
    "modelName": "iris-classifier",
    "modelVersion": "7",
    "metrics": {"accuracy": "0.9667"},
}
TRAINER_FAILED = {"status": "Failed", "reason": "DataValidationFailed", "message": "column species: 12 nulls"}
RAY_FAILURE_MESSAGE = (
    "Job entrypoint command failed with exit code 3, last available logs (truncated to 20,000 chars):\n"
    "2026-01-01 00:00:01 ERROR training failed: DataValidationFailed: column species: 12 nulls\n"
    + json.dumps(TRAINER_FAILED)
    + "\n"
)

STATUS_CASES = [
    pytest.param({}, None, {"phase": "Pending", "attempts": 0}, id="new"),
    pytest.param(
        {"jobDeploymentStatus": "Initializing", "startTime": "2026-01-01T00:00:00Z"},
        None,
        {
            "phase": "Pending",
            "attempts": 0,
            "message": "KubeRay: Initializing",
            "startTime": "2026-01-01T00:00:00Z",
        },
        id="initializing",
    ),
    pytest.param(
        {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"},
        None,
        {"phase": "Running", "attempts": 1},
        id="running",
    ),
    pytest.param(
        {"jobDeploymentStatus": "Retrying", "failed": 1, "message": "boom"},
        None,
        {"phase": "Running", "attempts": 2, "message": "attempt 1 failed, retrying: boom"},
        id="retrying",
    ),
    pytest.param(
        {"jobDeploymentStatus": "Suspended"},
        None,
        {
            "phase": "Pending",
            "attempts": 0,
            "message": "the RayJob is suspended (spec.suspend or a queue such as Kueue)",
        },
        id="suspended",
    ),
    pytest.param(
        {
            "jobDeploymentStatus": "Complete",
            "jobStatus": "SUCCEEDED",
            "succeeded": 1,
            "endTime": "2026-01-01T00:05:00Z",
            "message": "Job finished successfully.",
        },
        SUCCESS,
        {
            "phase": "Succeeded",
            "attempts": 1,
            "completionTime": "2026-01-01T00:05:00Z",
            "reason": "Succeeded",
            "message": "registered iris-classifier version 7",
            "mlflowRunId": "abc",
            "modelVersion": "7",
            "metrics": {"accuracy": "0.9667"},
        },
        id="succeeded",
    ),
    pytest.param(
        {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED", "endTime": "2026-01-01T00:05:00Z"},
        None,
        {
            "phase": "Succeeded",
            "attempts": 1,
            "completionTime": "2026-01-01T00:05:00Z",
            "reason": "ResultMissing",
            "message": "the Ray job succeeded but no registered version carries its result",
        },
        id="succeeded-without-result",
    ),
    pytest.param(
        {
            "jobDeploymentStatus": "Failed",
            "jobStatus": "FAILED",
            "reason": "AppFailed",
            "failed": 3,
            "endTime": "2026-01-01T00:05:00Z",
            "message": RAY_FAILURE_MESSAGE,
        },
        None,
        {
            "phase": "Failed",
            "attempts": 3,
            "completionTime": "2026-01-01T00:05:00Z",
            "reason": "DataValidationFailed",
            "message": "column species: 12 nulls",
        },
        id="trainer-failed",
    ),
    pytest.param(
        {
            "jobDeploymentStatus": "Failed",
            "reason": "DeadlineExceeded",
            "failed": 1,
            "endTime": "2026-01-01T01:00:00Z",
            "message": "The RayJob has passed the activeDeadlineSeconds.",
        },
        None,
        {
            "phase": "Failed",
            "attempts": 1,
            "completionTime": "2026-01-01T01:00:00Z",
            "reason": "DeadlineExceeded",
            "message": "the run exceeded activeDeadlineSeconds; The RayJob has passed the activeDeadlineSeconds.",
        },
        id="deadline",
    ),
    pytest.param(
        {"jobDeploymentStatus": "Failed", "reason": "SubmissionFailed", "endTime": "2026-01-01T00:01:00Z"},
        None,
        {
            "phase": "Failed",
            "attempts": 1,
            "completionTime": "2026-01-01T00:01:00Z",
            "reason": "SubmissionFailed",
            "message": "KubeRay could not submit the Ray job (the submitter failed)",
        },
        id="submission-failed",
    ),
    pytest.param(
        # KubeRay before 1.2: a failed Ray job leaves the RayJob Complete.
        {"jobDeploymentStatus": "Complete", "jobStatus": "STOPPED", "endTime": "2026-01-01T00:01:00Z"},
        None,
        {
            "phase": "Failed",
            "attempts": 1,
            "completionTime": "2026-01-01T00:01:00Z",
            "reason": "Stopped",
            "message": "the Ray job was stopped before it finished",
        },
        id="complete-but-stopped",
    ),
]


@pytest.mark.parametrize(("status", "result", "expected"), STATUS_CASES)
def test_rayjob_status_as_a_run(
    status: dict[str, Any], result: dict[str, Any] | None, expected: dict[str, Any]
) -> None:
    run = trainingjob_runs.observe_rayjob(a_rayjob(**status), result)
    assert run == {"name": "iris-train-3", "number": 3, "trigger": "Manual", "engine": "Ray", **expected}


# --- a cluster without KubeRay ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_operator(tmp_path_factory.mktemp("operator")) as running:
        yield running


def _condition(cluster: Cluster, type_: str) -> dict[str, Any]:
    body = cluster.get("TrainingJob", "iris-train") or {}
    return next(c for c in body.get("status", {}).get("conditions") or [] if c["type"] == type_)


def test_engine_ray_waits_for_kuberay_then_runs_as_a_rayjob(cluster: Cluster) -> None:
    # The emulated API server, like a cluster without KubeRay, serves no ray.io group.
    assert cluster.http.get("/apis/ray.io/v1").status_code == 404
    cluster.create(example("iris-trainingjob.yaml", schedule=None, engine="Ray", ray={"workers": 2}))
    wait_for_condition(cluster, "TrainingJob", "iris-train", "Ready", "False")
    ready = _condition(cluster, "Ready")
    assert ready["reason"] == KUBERAY_MISSING
    assert "install KubeRay" in ready["message"] and "spec.engine: Job" in ready["message"]
    running = _condition(cluster, "Running")
    assert running["status"] == "False" and "install KubeRay" in running["message"]
    events = wait_for(lambda: events_for(cluster, "iris-train", KUBERAY_MISSING), message="the Warning Event")
    assert events[0]["type"] == "Warning"

    # A manual run request and a spec change, reconciled: still no run, no Job made instead, no
    # second Event (the operator does not retry in a loop; its timer looks again).
    cluster.patch(
        "TrainingJob", "iris-train", {"metadata": {"annotations": {"mlops.dev/run-requested-at": "1"}}}
    )
    generation = cluster.patch("TrainingJob", "iris-train", {"spec": {"ray": {"workers": 3}}})["metadata"][
        "generation"
    ]
    wait_for(
        lambda: (
            (cluster.get("TrainingJob", "iris-train") or {}).get("status", {}).get("observedGeneration")
            == generation
        ),
        message="the spec change reconciled",
    )
    status = (cluster.get("TrainingJob", "iris-train") or {})["status"]
    assert _condition(cluster, "Ready")["reason"] == KUBERAY_MISSING
    assert not status.get("runs") and not status.get("lastHandledRequest")
    assert cluster.get("Job", "iris-train-1") is None
    assert len(events_for(cluster, "iris-train", KUBERAY_MISSING)) == 1

    _install_kuberay_then_run(cluster)


#: A stand-in for KubeRay's RayJob CRD (the real one's schema embeds whole pod templates): the
#: group, version, names and status subresource KubeRay serves, the schema left open.
RAYJOB_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "rayjobs.ray.io"},
    "spec": {
        "group": "ray.io",
        "names": {"kind": "RayJob", "listKind": "RayJobList", "plural": "rayjobs", "singular": "rayjob"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            part: {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                            for part in ("spec", "status")
                        },
                    }
                },
            }
        ],
    },
}
RAYJOBS = "/apis/ray.io/v1/namespaces/default/rayjobs"


def _rayjob(cluster: Cluster, name: str) -> dict[str, Any] | None:
    response = cluster.http.get(f"{RAYJOBS}/{name}")
    return None if response.status_code == 404 else response.json()


def _play_kuberay(cluster: Cluster, name: str, status: dict[str, Any]) -> None:
    cluster.http.patch(
        f"{RAYJOBS}/{name}/status",
        content=json.dumps({"status": status}),
        headers={"Content-Type": "application/merge-patch+json"},
    ).raise_for_status()


def _install_kuberay_then_run(cluster: Cluster) -> None:
    """KubeRay's CRD arrives: the waiting run starts as a RayJob; the test plays KubeRay."""
    cluster.http.post(
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=RAYJOB_CRD
    ).raise_for_status()
    rayjob = wait_for(lambda: _rayjob(cluster, "iris-train-1"), message="the run's RayJob")
    owner = cluster.get("TrainingJob", "iris-train") or {}
    assert rayjob["metadata"]["ownerReferences"][0]["uid"] == owner["metadata"]["uid"]
    assert rayjob["metadata"]["annotations"]["mlops.dev/trigger"] == "Manual"  # the request that waited
    assert rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] == 3
    assert cluster.get("Job", "iris-train-1") is None
    wait_for(
        lambda: _condition(cluster, "Ready")["reason"] != KUBERAY_MISSING,
        message="Ready not KubeRayNotInstalled",
    )
    wait_for_condition(cluster, "TrainingJob", "iris-train", "Running", "True")

    _play_kuberay(
        cluster,
        "iris-train-1",
        {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING", "startTime": "2026-01-01T00:00:00Z"},
    )
    wait_for(
        lambda: (
            ((cluster.get("TrainingJob", "iris-train") or {})["status"].get("lastRun") or {}).get("phase")
            == "Running"
        ),
        message="the run Running",
    )
    _play_kuberay(
        cluster,
        "iris-train-1",
        {
            "jobDeploymentStatus": "Failed",
            "jobStatus": "FAILED",
            "reason": "AppFailed",
            "failed": 3,
            "endTime": "2026-01-01T00:05:00Z",
            "message": RAY_FAILURE_MESSAGE,
        },
    )
    wait_for_condition(cluster, "TrainingJob", "iris-train", "Failed", "True")
    ready = _condition(cluster, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "DataValidationFailed")
    assert "12 nulls" in ready["message"]
    last = (cluster.get("TrainingJob", "iris-train") or {})["status"]["lastRun"]
    assert (last["engine"], last["attempts"], last["phase"]) == ("Ray", 3, "Failed")
    wait_for(lambda: events_for(cluster, "iris-train", "DataValidationFailed"), message="the failure's Event")
    assert _rayjob(cluster, "iris-train-2") is None, "a failed run is not started again"
    cluster.delete("TrainingJob", "iris-train")
