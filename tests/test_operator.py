"""The whole operator (kopf, in-process) against the emulated API server.

No runtime runs here: Jobs and pods are given their states by the test, as kubelet and the
Job controller would, so each controller decision is observed in isolation (the ``cluster``
fixture and the helpers that play the cluster are in tests/fixtures_operator.py).
"""

from __future__ import annotations

import json

import httpx

from mlops_operator.controllers.operator_metrics import RECONCILE_TOTAL
from mlops_operator.sandbox.apiserver import SANDBOX_IDENTITIES
from tests.fixtures_operator import (
    Cluster,
    events_for,
    example,
    finish_job,
    make_ready,
    patch_status,
    validated_model_version,
)
from tests.fixtures_sandbox import Api, wait_for, wait_for_condition


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


def test_a_run_whose_status_write_was_lost_is_recorded_from_its_job_not_started_again(cluster: Api) -> None:
    """An operator killed between creating a run's Job and writing status leaves the Job and an
    old status: the next pass counts the run and takes what it was started for from the Job."""
    manifest = example("iris-trainingjob.yaml", schedule=None)
    manifest["metadata"]["name"] = "lost-write"
    cluster.create(manifest)
    job = wait_for(lambda: cluster.get("Job", "lost-write-1"), message="the first run's Job")
    assert job["metadata"]["annotations"]["mlops.dev/spec-hash"]
    wait_for(lambda: (cluster.get("TrainingJob", "lost-write") or {}).get("status", {}).get("runCount") == 1)
    # The status as it was before the run started (the write recording it never landed).
    lost = {"runCount": None, "lastRunSpecHash": None, "runs": None, "lastRun": None}
    patch_status(cluster, "TrainingJob", "lost-write", lost)
    result = {"status": "Succeeded", "modelName": "lost-model", "modelVersion": "1", "mlflowRunId": "r",
              "sha256": "d" * 64, "metrics": {}, "dataset": {"uri": "sklearn://iris", "rows": 150}}  # fmt: skip
    finish_job(cluster, job, "Complete", "Completed", json.dumps(result), 0)
    done = wait_for_condition(cluster, "TrainingJob", "lost-write", "Ready", "True")
    assert done["status"]["runCount"] == 1 and done["status"]["lastRun"]["phase"] == "Succeeded"
    assert done["status"]["lastRunSpecHash"] == job["metadata"]["annotations"]["mlops.dev/spec-hash"]
    jobs = [j for j in cluster.list("Job") if j["metadata"]["name"].startswith("lost-write-")]
    assert [j["metadata"]["name"] for j in jobs] == ["lost-write-1"]
    assert len(events_for(cluster, "lost-write", "RunStarted")) == 1


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


def test_inferenceservice_serves_the_latest_validated_version_and_replaces_it_safely(cluster: Api) -> None:
    manifest = example("iris-inferenceservice.yaml")
    manifest["metadata"]["name"] = "demo"
    manifest["spec"]["model"] = {"name": "demo-model", "track": "LatestValidated"}
    manifest["spec"]["rollout"] = {"strategy": "Replace"}
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
    # Only the stable version's pods take traffic (a starting version's do not). The Service
    # existed before (selecting nothing yet): the same pass that made the Deployment patches it.
    selector = {
        "mlops.dev/inferenceservice": "demo",
        "app.kubernetes.io/component": "predictor",
        "mlops.dev/model-version": "1",
    }
    wait_for(
        lambda: (cluster.get("Service", "demo") or {}).get("spec", {}).get("selector") == selector,
        message="the stable Service selecting version 1",
    )
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
    progressing = next(c for c in rolling["status"]["conditions"] if c["type"] == "Progressing")
    assert "promoting version 2: 0/2 ready" in progressing["message"]
    assert rolling["status"]["stable"]["modelVersion"] == "1"
    assert cluster.get("Deployment", "demo-v1") is not None
    assert (cluster.get("Service", "demo") or {})["spec"]["selector"]["mlops.dev/model-version"] == "1"
    make_ready(cluster, "demo-v2", 2)
    wait_for(lambda: cluster.get("Deployment", "demo-v1") is None, message="version 1 retired")
    done = wait_for_condition(cluster, "InferenceService", "demo", "Progressing", "False")
    assert done["status"]["stable"]["modelVersion"] == "2"
    assert done["status"]["history"][-1]["modelVersion"] == "2"
    assert done["status"]["rollout"]["phase"] == "Succeeded"
    assert (cluster.get("Service", "demo") or {})["spec"]["selector"]["mlops.dev/model-version"] == "2"
    wait_for(lambda: events_for(cluster, "demo", "Promoted"), message="the Promoted Event")


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
    patch_status(
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


def test_every_call_of_the_operator_carries_its_service_account_identity(cluster: Cluster) -> None:
    """The bug this guards against: the operator's own client sent no credentials at all."""
    operator = SANDBOX_IDENTITIES["operator"].username
    requests = cluster.server.emulator.audit.attributes()
    mine = {attrs for attrs in requests if attrs.user == operator}
    # kopf's watches and the operator's own writes (through mlops_operator.kube_client) alike; its
    # reads are served by the watch-fed cache (tests/test_operator_idle_writes.py).
    assert ("watch", "mlops.dev", "trainingjobs") in {(a.verb, a.api_group, a.resource) for a in mine}
    assert ("create", "batch", "jobs") in {(a.verb, a.api_group, a.resource) for a in mine}
    assert ("patch", "status") in {(a.verb, a.subresource) for a in mine if a.resource == "trainingjobs"}
    assert not [a for a in requests if a.user == "system:anonymous"]


def test_a_rotated_token_keeps_the_operator_converging(cluster: Cluster) -> None:
    """The kubelet rotates a pod's ServiceAccount token: the old one stops working mid-run."""
    authenticator = cluster.server.authenticator
    old = cluster.operator_token_file.read_text()
    new = "rotated-" + old[::-1]
    authenticator.add_token(new, SANDBOX_IDENTITIES["operator"])
    cluster.operator_token_file.write_text(new)
    authenticator.revoke(old)
    unauthorized = httpx.get(
        cluster.url + cluster.path("TrainingJob"),
        headers={"Authorization": f"Bearer {old}"},
        verify=cluster.tls,
        timeout=5,
    )
    assert unauthorized.status_code == 401

    manifest = example("iris-trainingjob.yaml", schedule=None)
    manifest["metadata"]["name"] = "after-rotation"
    tj = cluster.create(manifest)
    job = wait_for(lambda: cluster.get("Job", "after-rotation-1"), message="a Job made with the new token")
    assert job["metadata"]["ownerReferences"][0]["uid"] == tj["metadata"]["uid"]
    wait_for_condition(cluster, "TrainingJob", "after-rotation", "Running", "True")
    # The operator's own client got its 401, read the file again, and retried.
    assert cluster.collaborators.kube.credentials.authorization() == f"Bearer {new}"
