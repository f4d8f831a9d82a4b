"""Builders for what a TrainingJob owns or produces: the run's Job and the ModelVersion (pure)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mlops_operator import API_VERSION, __version__
from mlops_operator.api.trainingjob import RayClusterConfig, TrainingJobSpec
from mlops_operator.resources.object_meta import child_name, label_value, labels, owner_reference
from mlops_operator.resources.pods import (
    log_format_env,
    mlflow_credentials_env_from,
    restricted_container_security,
    restricted_pod_security,
)

CONTAINER = "trainer"
#: The trainer exits with this code when retrying cannot help (bad data, bad spec); the Job's
#: podFailurePolicy then fails the Job at once instead of burning its backoffLimit.
PERMANENT_FAILURE_EXIT_CODE = 3
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
RAYJOB_API_VERSION = "ray.io/v1"


def run_name(trainingjob: str, number: int) -> str:
    """The Job of run ``number``: deterministic, so a retried reconcile finds it, not a twin."""
    return child_name(trainingjob, str(number))


def trainer_env(
    owner: dict[str, Any],
    spec: TrainingJobSpec,
    *,
    name: str,
    trigger: str,
    image: str,
    mlflow_tracking_uri: str,
    code_version: str,
    log_format: str,
) -> list[dict[str, Any]]:
    """The trainer's environment: the spec, who asked for the run, MLflow, dataset credentials."""
    env: list[dict[str, Any]] = [
        {"name": "MLOPS_TRAININGJOB_SPEC", "value": json.dumps(spec.to_api(), sort_keys=True)},
        {"name": "MLOPS_TRAININGJOB_NAME", "value": owner["metadata"]["name"]},
        {"name": "MLOPS_TRAININGJOB_NAMESPACE", "value": owner["metadata"].get("namespace", "default")},
        {"name": "MLOPS_RUN_NAME", "value": name},
        {"name": "MLOPS_RUN_TRIGGER", "value": trigger},
        {"name": "MLOPS_IMAGE", "value": image},
        {"name": "MLOPS_CODE_VERSION", "value": code_version},
        {"name": "MLOPS_TERMINATION_MESSAGE_PATH", "value": TERMINATION_MESSAGE_PATH},
        {"name": "MLFLOW_TRACKING_URI", "value": mlflow_tracking_uri},
        {"name": "HOME", "value": "/tmp"},
        *log_format_env(log_format),
    ]
    for item in spec.dataset.env or []:
        env.append(
            {
                "name": item.name,
                "valueFrom": {
                    "secretKeyRef": {"name": item.secret_key_ref.name, "key": item.secret_key_ref.key}
                },
            }
        )
    return env


def build_training_job(
    owner: dict[str, Any],
    spec: TrainingJobSpec,
    *,
    number: int,
    trigger: str,
    image: str,
    mlflow_tracking_uri: str,
    image_pull_policy: str = "IfNotPresent",
    code_version: str = __version__,
    log_format: str = "plain",
    mlflow_credentials_secret: str = "",
    run_annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ``batch/v1`` Job of one training run (the trainer logs in the operator's ``log_format``).

    ``mlflow_credentials_secret``: the Secret whose keys reach the trainer as environment
    variables (``envFrom``), never copied into the Job."""
    name = run_name(owner["metadata"]["name"], number)
    namespace = owner["metadata"].get("namespace", "default")
    run_labels = labels(owner, "training", model=spec.model.name, run=str(number))
    env = trainer_env(
        owner,
        spec,
        name=name,
        trigger=trigger,
        image=image,
        mlflow_tracking_uri=mlflow_tracking_uri,
        code_version=code_version,
        log_format=log_format,
    )
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "imagePullPolicy": image_pull_policy,
        "command": ["mlops-operator", "train"],
        "env": env,
        "securityContext": restricted_container_security(),
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    if env_from := mlflow_credentials_env_from(mlflow_credentials_secret):
        container["envFrom"] = env_from
    if spec.resources is not None:
        container["resources"] = spec.resources.to_api()
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": restricted_pod_security(),
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    if spec.service_account_name:
        pod_spec["serviceAccountName"] = spec.service_account_name
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": run_labels,
            # What the run was started for (spec hash, request, schedule slot): a status write
            # that recorded it can be lost (the operator died in between), the Job cannot.
            "annotations": {"mlops.dev/trigger": trigger, **(run_annotations or {})},
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": {
            "backoffLimit": spec.backoff_limit,
            "activeDeadlineSeconds": spec.active_deadline_seconds,
            "ttlSecondsAfterFinished": spec.ttl_seconds_after_finished,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": CONTAINER,
                            "operator": "In",
                            "values": [PERMANENT_FAILURE_EXIT_CODE],
                        },
                    },
                    # A pod evicted or preempted is not the trainer's fault: do not count it.
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                ]
            },
            "template": {"metadata": {"labels": dict(run_labels)}, "spec": pod_spec},
        },
    }


#: The container names KubeRay expects first in the head and worker pod templates.
RAY_HEAD_CONTAINER = "ray-head"
RAY_WORKER_CONTAINER = "ray-worker"
RAY_WORKER_GROUP = "trials"
RAY_SUBMITTER_CONTAINER = "ray-job-submitter"


def _ray_pod_template(
    run_labels: dict[str, str],
    container: dict[str, Any],
    service_account_name: str | None,
) -> dict[str, Any]:
    """A Ray pod: restricted like the Job's, with a writable /tmp (Ray's session directory lives in
    it, HOME too) and a memory-backed /dev/shm (Ray's object store: trials' data travel through it)."""
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "securityContext": restricted_pod_security(),
        "containers": [
            {
                **container,
                "securityContext": restricted_container_security(),
                "volumeMounts": [
                    {"name": "tmp", "mountPath": "/tmp"},
                    {"name": "dshm", "mountPath": "/dev/shm"},
                ],
            }
        ],
        "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "dshm", "emptyDir": {"medium": "Memory"}}],
    }
    if service_account_name:
        pod_spec["serviceAccountName"] = service_account_name
    return {"metadata": {"labels": dict(run_labels)}, "spec": pod_spec}


def _ray_submitter_template(run_labels: dict[str, str], image: str, image_pull_policy: str) -> dict[str, Any]:
    """The pod that runs ``ray job submit`` (KubeRay fills in the command): KubeRay's default
    (head image, 500m/200Mi requests, 1 CPU/1Gi limits, restartPolicy Never), made restricted."""
    return {
        "metadata": {"labels": dict(run_labels)},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": restricted_pod_security(),
            "containers": [
                {
                    "name": RAY_SUBMITTER_CONTAINER,
                    "image": image,
                    "imagePullPolicy": image_pull_policy,
                    "env": [{"name": "HOME", "value": "/tmp"}],
                    "resources": {
                        "requests": {"cpu": "500m", "memory": "200Mi"},
                        "limits": {"cpu": "1", "memory": "1Gi"},
                    },
                    "securityContext": restricted_container_security(),
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                }
            ],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    }


def build_training_rayjob(
    owner: dict[str, Any],
    spec: TrainingJobSpec,
    *,
    number: int,
    trigger: str,
    image: str,
    mlflow_tracking_uri: str,
    image_pull_policy: str = "IfNotPresent",
    code_version: str = __version__,
    log_format: str = "plain",
    mlflow_credentials_secret: str = "",
    run_annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The KubeRay ``RayJob`` (``ray.io/v1``) of one training run with ``engine: Ray``.

    KubeRay makes a Ray cluster for it (a head and ``spec.ray.workers`` workers, all from the
    trainer image, which needs the ``ray`` extra), submits ``mlops-operator train`` as the Ray
    job (its driver runs on the head with the head container's environment) and deletes the
    cluster when the job ends (``shutdownAfterJobFinishes``). The run's limits map onto the
    RayJob's own fields: ``activeDeadlineSeconds`` (the whole RayJob), ``backoffLimit`` (each
    retry is a new cluster) and ``ttlSecondsAfterFinished`` (the cluster's, after the job ends:
    the RayJob itself stays, as the run's record, until the history limits prune it).

    KubeRay writes the container commands itself (``ray start ...``, ``ray job submit ...``): the
    templates set none. The submitter pod's template is given, not left to KubeRay's default,
    because that default has no securityContext and a namespace enforcing the ``restricted`` Pod
    Security Standard would refuse it. Only the head (where the trainer runs) gets the MLflow
    credentials Secret.
    """
    ray = spec.ray or RayClusterConfig()
    name = run_name(owner["metadata"]["name"], number)
    namespace = owner["metadata"].get("namespace", "default")
    run_labels = labels(owner, "training", model=spec.model.name, run=str(number))
    head: dict[str, Any] = {
        "name": RAY_HEAD_CONTAINER,
        "image": image,
        "imagePullPolicy": image_pull_policy,
        "env": trainer_env(
            owner,
            spec,
            name=name,
            trigger=trigger,
            image=image,
            mlflow_tracking_uri=mlflow_tracking_uri,
            code_version=code_version,
            log_format=log_format,
        ),
    }
    if env_from := mlflow_credentials_env_from(mlflow_credentials_secret):
        head["envFrom"] = env_from
    if spec.resources is not None:
        head["resources"] = spec.resources.to_api()
    worker: dict[str, Any] = {
        "name": RAY_WORKER_CONTAINER,
        "image": image,
        "imagePullPolicy": image_pull_policy,
        "env": [{"name": "HOME", "value": "/tmp"}, *log_format_env(log_format)],
    }
    if ray.worker_resources is not None:
        worker["resources"] = ray.worker_resources.to_api()
    return {
        "apiVersion": RAYJOB_API_VERSION,
        "kind": "RayJob",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": run_labels,
            # What the run was started for (spec hash, request, schedule slot): a status write
            # that recorded it can be lost (the operator died in between), the Job cannot.
            "annotations": {"mlops.dev/trigger": trigger, **(run_annotations or {})},
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": {
            "entrypoint": "mlops-operator train",
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": spec.ttl_seconds_after_finished,
            "activeDeadlineSeconds": spec.active_deadline_seconds,
            "backoffLimit": spec.backoff_limit,
            "submitterPodTemplate": _ray_submitter_template(run_labels, image, image_pull_policy),
            "rayClusterSpec": {
                "rayVersion": ray.ray_version,
                "headGroupSpec": {
                    "rayStartParams": {"dashboard-host": "0.0.0.0"},
                    "template": _ray_pod_template(run_labels, head, spec.service_account_name),
                },
                "workerGroupSpecs": [
                    {
                        "groupName": RAY_WORKER_GROUP,
                        "replicas": ray.workers,
                        "minReplicas": ray.workers,
                        "maxReplicas": ray.workers,
                        "rayStartParams": {},
                        "template": _ray_pod_template(run_labels, worker, spec.service_account_name),
                    }
                ],
            },
        },
    }


def model_version_name(model: str, version: str) -> str:
    """``<model>-v<version>``, as a valid object name."""
    return child_name(model, f"v{version}", max_length=253)


def build_model_version(
    owner: dict[str, Any], spec: TrainingJobSpec, result: dict[str, Any], run: str
) -> dict[str, Any]:
    """The ModelVersion a successful run produces, from the trainer's result message.

    It has no ownerReference on purpose: a ModelVersion records what is registered in MLflow
    and may be served; deleting the TrainingJob that produced it must not take it away.
    """
    version = str(result["modelVersion"])
    card = spec.model_card
    model_card = {
        key: value
        for key, value in {
            "description": spec.model.description,
            "intendedUse": card.intended_use if card else None,
            "limitations": card.limitations if card else None,
            "owners": card.owners if card else None,
        }.items()
        if value
    }
    dataset = result.get("dataset") or {}
    lineage: dict[str, Any] = {
        "trainingJob": owner["metadata"]["name"],
        "runName": run,
        "dataset": {
            k: v for k, v in dataset.items() if k in ("uri", "sha256", "rows", "sources") and v is not None
        },
        "params": result.get("params") or {},
        "estimator": result.get("estimator") or spec.estimator.class_,
        "codeVersion": result.get("codeVersion") or "",
        "image": result.get("image") or "",
    }
    body: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "ModelVersion",
        "metadata": {
            "name": model_version_name(spec.model.name, version),
            "namespace": owner["metadata"].get("namespace", "default"),
            "labels": {
                **labels(owner, "model", model=spec.model.name),
                "mlops.dev/model": label_value(spec.model.name),
                "mlops.dev/model-version": version,
            },
        },
        "spec": {
            "model": {"name": spec.model.name, "version": version},
            "source": {
                key: value
                for key, value in {
                    "runId": result.get("mlflowRunId"),
                    "artifactUri": result.get("artifactUri"),
                    "sha256": result.get("sha256"),
                }.items()
                if value
            },
            "metrics": {str(k): str(v) for k, v in (result.get("metrics") or {}).items()},
            "lineage": lineage,
        },
    }
    if spec.evaluation.gates:
        body["spec"]["gates"] = [gate.to_api() for gate in spec.evaluation.gates]
    if model_card:
        body["spec"]["modelCard"] = model_card
    return body
