"""The framework's floor for benchmarks/scale_bench.py: kopf with handlers that only make the calls.

``python -m benchmarks.kopf_floor`` (with ``KUBECONFIG`` set) runs kopf, with the operator's own
kopf settings, over the same three kinds, and per resource makes the API calls a first
reconciliation of mlops-operator makes for it, with none of its logic: for an InferenceService,
create its Deployment, version Service, stable Service and PodDisruptionBudget (built by the
same pure builders) and patch its status once; for a TrainingJob, create its first run's Job and
patch its status once. Resume handlers and timers (same interval) do nothing: a converged
object costs the floor no call. What mlops-operator spends beyond this is its own.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from mlops_operator import GROUP, VERSION
from mlops_operator.api.inferenceservice import InferenceServiceSpec
from mlops_operator.api.trainingjob import TrainingJobSpec
from mlops_operator.config import Settings
from mlops_operator.controllers.kopf_settings import configure
from mlops_operator.kube_client import Kube
from mlops_operator.resources import inferenceservice_children as children
from mlops_operator.resources.trainingjob_children import build_training_job

SETTINGS = Settings(metrics_port=0, liveness_port=0)
KUBE = Kube.from_environment()


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    configure(settings, SETTINGS)


def _owner(body: kopf.Body) -> dict[str, Any]:
    return {"apiVersion": body["apiVersion"], "kind": body["kind"], "metadata": dict(body["metadata"])}


@kopf.on.create(GROUP, VERSION, "inferenceservices")
def create_isvc(body: kopf.Body, spec: kopf.Spec, name: str, namespace: str | None, **_: Any) -> None:
    owner = _owner(body)
    parsed = InferenceServiceSpec.model_validate(dict(spec))
    version = str(parsed.model.version)
    KUBE.create(
        children.build_predictor_deployment(
            owner,
            parsed,
            version=version,
            model_uri=f"models:/{parsed.model.name}/{version}",
            sha256=None,
            image=SETTINGS.server_image,
            mlflow_tracking_uri=SETTINGS.mlflow_tracking_uri,
            replicas=parsed.desired_replicas,
            runtime="uvicorn",
        )
    )
    KUBE.create(children.build_version_service(owner, version))
    KUBE.create(children.build_stable_service(owner, version))
    pdb = children.build_pdb(owner, parsed.desired_replicas)
    if pdb is not None:
        KUBE.create(pdb)
    KUBE.patch_status("InferenceService", namespace or "default", name, {"replicas": 0})


@kopf.on.create(GROUP, VERSION, "trainingjobs")
def create_tj(body: kopf.Body, spec: kopf.Spec, name: str, namespace: str | None, **_: Any) -> None:
    parsed = TrainingJobSpec.model_validate(dict(spec))
    KUBE.create(
        build_training_job(
            _owner(body),
            parsed,
            number=1,
            trigger="Created",
            image=SETTINGS.trainer_image,
            mlflow_tracking_uri=SETTINGS.mlflow_tracking_uri,
        )
    )
    KUBE.patch_status("TrainingJob", namespace or "default", name, {"runCount": 1})


@kopf.on.resume(GROUP, VERSION, "inferenceservices")
@kopf.on.resume(GROUP, VERSION, "trainingjobs")
def resume(**_: Any) -> None:
    """A converged object: nothing to do."""


@kopf.timer(GROUP, VERSION, "inferenceservices", interval=SETTINGS.reconcile_interval)
@kopf.timer(GROUP, VERSION, "trainingjobs", interval=SETTINGS.reconcile_interval)
def tick(**_: Any) -> None:
    """The same timers as mlops-operator's, doing nothing."""


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    kopf.run(standalone=True, clusterwide=True)
