"""Every kopf handler of the operator, in one thin module.

Each kind is reconciled level-based: the same idempotent ``reconcile`` runs when the object
is created, when its spec changes, when the operator starts (resume), and on a timer, so
state that drifts without an event (a pod crash-looping, a Job finishing, traffic drifting)
is converged too. The handlers only delegate; the decisions live in the controller modules.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from mlops_operator import GROUP, VERSION
from mlops_operator.api.inferenceservice import PLURAL as ISVC
from mlops_operator.api.inferenceservice import InferenceServiceSpec
from mlops_operator.api.modelversion import PLURAL as MV
from mlops_operator.api.modelversion import ModelVersionSpec
from mlops_operator.api.trainingjob import PLURAL as TJ
from mlops_operator.api.trainingjob import TrainingJobSpec
from mlops_operator.config import get_settings
from mlops_operator.controllers import base, inferenceservice, modelversion, runtime, trainingjob

INTERVAL = get_settings().reconcile_interval
Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]


# --- the operator itself ------------------------------------------------------------------------


@kopf.on.startup()
def on_startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    runtime.configure(settings)
    runtime.start_metrics_server()


@kopf.on.login()
def on_login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod: the service account; elsewhere: ``$KUBECONFIG`` as it is *now*.

    kopf's default login goes through the kubernetes client, which reads ``$KUBECONFIG`` once,
    at import time; reading it at login makes the operator follow the environment it is run in.
    """
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.probe(id="controllers")
def liveness_probe(**_: Any) -> str:
    return "ok"


# --- TrainingJob --------------------------------------------------------------------------------


@kopf.on.resume(GROUP, VERSION, TJ, id="reconcile-resume")
@kopf.on.create(GROUP, VERSION, TJ, id="reconcile-create")
@kopf.on.update(GROUP, VERSION, TJ, id="reconcile-update")
@kopf.on.update(GROUP, VERSION, TJ, id="run-request", field=("metadata", "annotations"))
@kopf.timer(GROUP, VERSION, TJ, interval=INTERVAL, id="reconcile-timer")
def reconcile_trainingjob(body: kopf.Body, logger: Logger, **_: Any) -> None:
    base.reconcile("TrainingJob", TrainingJobSpec, trainingjob.reconcile, body=body, logger=logger)


# --- ModelVersion -------------------------------------------------------------------------------


@kopf.on.resume(GROUP, VERSION, MV, id="reconcile-resume")
@kopf.on.create(GROUP, VERSION, MV, id="reconcile-create")
@kopf.on.update(GROUP, VERSION, MV, id="reconcile-update")
@kopf.timer(GROUP, VERSION, MV, interval=INTERVAL, id="reconcile-timer")
def reconcile_modelversion(body: kopf.Body, logger: Logger, **_: Any) -> None:
    base.reconcile("ModelVersion", ModelVersionSpec, modelversion.reconcile, body=body, logger=logger)


# --- InferenceService ---------------------------------------------------------------------------


@kopf.on.resume(GROUP, VERSION, ISVC, id="reconcile-resume")
@kopf.on.create(GROUP, VERSION, ISVC, id="reconcile-create")
@kopf.on.update(GROUP, VERSION, ISVC, id="reconcile-update")
@kopf.timer(GROUP, VERSION, ISVC, interval=INTERVAL, id="reconcile-timer")
def reconcile_inferenceservice(body: kopf.Body, logger: Logger, **_: Any) -> None:
    base.reconcile(
        "InferenceService",
        InferenceServiceSpec,
        inferenceservice.reconcile,
        body=body,
        logger=logger,
    )


@kopf.on.delete(GROUP, VERSION, TJ, id="forget", optional=True)
@kopf.on.delete(GROUP, VERSION, MV, id="forget", optional=True)
@kopf.on.delete(GROUP, VERSION, ISVC, id="forget", optional=True)
def forget(meta: kopf.Meta, **_: Any) -> None:
    """Drop per-object state; children go with their ownerReferences (no finalizer needed)."""
    base.forget(str(meta.get("uid") or meta.get("name")))
