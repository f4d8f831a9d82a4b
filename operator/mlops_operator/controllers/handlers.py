"""Every kopf handler of the operator, registered for one set of settings.

Each kind is reconciled level-based: the same idempotent ``reconcile`` runs when the object
is created, when its spec changes, when the operator starts (resume), and on a timer, so
state that drifts without an event (a pod crash-looping, a Job finishing, traffic drifting)
is converged too. The handlers only delegate; the decisions live in the controller modules.

:func:`register` builds a fresh kopf registry, so the timer interval comes from the settings
the operator was started with rather than from whatever the environment held at import. The
clients reach the handlers through kopf's ``memo``: the operator command puts them there; when
absent (kopf started some other way, as in tests), the startup handler builds them from the
same settings.
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
from mlops_operator.config import Settings
from mlops_operator.controllers import (
    base,
    inferenceservice_reconciler,
    modelversion_reconciler,
    trainingjob_reconciler,
)
from mlops_operator.controllers.collaborators import Collaborators
from mlops_operator.controllers.kopf_settings import configure, start_metrics_server
from mlops_operator.controllers.operator_metrics import (
    forget_retrain_metrics,
    forget_rollout_metrics,
    forget_trainingjob_metrics,
)
from mlops_operator.credentials import CredentialsError, connection_info, load_credentials
from mlops_operator.kube_client import CACHED_KINDS, KINDS, ObjectCache, index_keys
from mlops_operator.resources.object_meta import MANAGED_BY

Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]


def login(logger: Logger, **_: Any) -> kopf.ConnectionInfo:
    """The identity kubectl would use, loaded now (in a pod: the service account; else ``$KUBECONFIG``).

    kopf runs this again whenever the API server answers 401, so a rotated token is picked up.
    kopf's default login reads ``$KUBECONFIG`` once, at import, and knows no exec plugins.
    """
    try:
        credentials = load_credentials()
    except CredentialsError as exc:
        raise kopf.LoginError(str(exc)) from exc
    if credentials.impersonation is not None:
        logger.warning(
            "the kubeconfig impersonates %s: the operator's calls do, but kopf's watch streams run "
            "as the authenticated identity (kopf cannot send Impersonate-* headers)",
            credentials.impersonation.user,
        )
    return connection_info(credentials)


def _cache_index_id(kind: str) -> str:
    return f"cache_{kind.lower()}"


def _reconcile_handler(kind: str, model: type[Any], reconciler: Any) -> Any:
    """The kopf handler that runs ``reconciler`` for objects of ``kind`` (one per kind)."""

    def reconcile(body: kopf.Body, logger: Logger, memo: kopf.Memo, **kwargs: Any) -> None:
        collaborators: Collaborators = memo["collaborators"]
        _attach_cache(collaborators, kwargs)
        base.reconcile(kind, model, reconciler, body=body, logger=logger, collaborators=collaborators)

    return reconcile


def _attach_cache(collaborators: Collaborators, kwargs: dict[str, Any]) -> None:
    """Serve the client's reads of every cached kind from kopf's indexes (handed in as kwargs).

    kopf hands a handler its indexes only as keyword arguments, so they are attached on the
    first call; kopf starts no handler before they hold their initial lists.
    """
    kube = collaborators.kube
    if kube.cache is not None and all(kube.cache.covers(kind) for kind in CACHED_KINDS):
        return
    cache = kube.cache or ObjectCache()
    for kind in CACHED_KINDS:
        index = kwargs.get(_cache_index_id(kind))
        if index is not None:
            cache.attach(kind, index)
    kube.cache = cache


def _register_cache_indexes(registry: kopf.OperatorRegistry) -> None:
    """One kopf index per cached kind: the operator's own kinds (watched anyway), and the
    children it creates (those labelled ``managed-by: mlops-operator``) and the pods it selects
    (model servers by ``mlops.dev/inferenceservice``, and Job pods: the Job controller labels
    them ``job-name``)."""
    for kind in CACHED_KINDS:
        info = KINDS[kind]
        group, _, version = info.api_version.rpartition("/")
        when: Any = None
        labels: Any = None
        if kind == "Pod":
            when = _operator_pod
        elif group != GROUP:
            labels = {"app.kubernetes.io/managed-by": MANAGED_BY}

        def index(body: kopf.Body, kind: str = kind, **_: Any) -> dict[Any, dict[str, Any]]:
            return index_keys(kind, body)

        kopf.index(
            group=group,
            version=version,
            plural=info.plural,
            id=_cache_index_id(kind),
            labels=labels,
            when=when,
            registry=registry,
        )(index)


def _operator_pod(labels: kopf.Labels, **_: Any) -> bool:
    """The pods the operator selects: an InferenceService's (by its label) and Jobs' pods."""
    return f"{GROUP}/inferenceservice" in labels or "job-name" in labels


def register(
    settings: Settings,
    *,
    collaborators: Collaborators | None = None,
    registry: kopf.OperatorRegistry | None = None,
) -> kopf.OperatorRegistry:
    """Register every handler of the operator, for ``settings``, in ``registry`` (a new one by default).

    ``collaborators`` (tests hand in their own) are put into kopf's memo at startup, unless the
    memo already has some; without either, they are built from ``settings``.
    """
    registry = registry if registry is not None else kopf.OperatorRegistry()
    interval = settings.reconcile_interval
    operator_settings = settings  # kopf calls its own settings `settings` in handler kwargs

    @kopf.on.startup(registry=registry)
    def on_startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        configure(settings, operator_settings)
        if "collaborators" not in memo:
            memo["collaborators"] = collaborators or Collaborators.from_settings(operator_settings)
        start_metrics_server(operator_settings.metrics_port)

    kopf.on.login(registry=registry)(login)
    _register_cache_indexes(registry)

    @kopf.on.probe(id="controllers", registry=registry)
    def liveness_probe(**_: Any) -> str:
        return "ok"

    kinds: list[tuple[str, str, type[Any], Any]] = [
        (TJ, "TrainingJob", TrainingJobSpec, trainingjob_reconciler.reconcile),
        (MV, "ModelVersion", ModelVersionSpec, modelversion_reconciler.reconcile),
        (ISVC, "InferenceService", InferenceServiceSpec, inferenceservice_reconciler.reconcile),
    ]
    for plural, kind, model, reconciler in kinds:
        reconcile = _reconcile_handler(kind, model, reconciler)
        # Level-based: the same reconcile on create, spec change, resume and every interval.
        kopf.on.resume(GROUP, VERSION, plural, id="reconcile-resume", registry=registry)(reconcile)
        kopf.on.create(GROUP, VERSION, plural, id="reconcile-create", registry=registry)(reconcile)
        kopf.on.update(GROUP, VERSION, plural, id="reconcile-update", registry=registry)(reconcile)
        kopf.timer(GROUP, VERSION, plural, interval=interval, id="reconcile-timer", registry=registry)(
            reconcile
        )
        if plural in (TJ, ISVC):
            # A run request (TrainingJob) or a rollout command (InferenceService) is an
            # annotation: act on it at once rather than at the next timer tick.
            kopf.on.update(
                GROUP, VERSION, plural, id="annotations", field=("metadata", "annotations"), registry=registry
            )(reconcile)

    @kopf.on.delete(GROUP, VERSION, TJ, id="forget", optional=True, registry=registry)
    @kopf.on.delete(GROUP, VERSION, MV, id="forget", optional=True, registry=registry)
    @kopf.on.delete(GROUP, VERSION, ISVC, id="forget", optional=True, registry=registry)
    def forget(meta: kopf.Meta, memo: kopf.Memo, **_: Any) -> None:
        """Drop per-object state; children go with their ownerReferences (no finalizer needed)."""
        collaborators: Collaborators = memo["collaborators"]
        collaborators.locks.forget(str(meta.get("uid") or meta.get("name")))
        collaborators.specs.forget(str(meta.get("uid")))

    @kopf.on.delete(GROUP, VERSION, ISVC, id="forget-metrics", optional=True, registry=registry)
    def forget_metrics(meta: kopf.Meta, **_: Any) -> None:
        """Remove the service's rollout and retrain series from /metrics."""
        forget_rollout_metrics(str(meta.get("namespace")), str(meta.get("name")))
        forget_retrain_metrics(str(meta.get("namespace")), str(meta.get("name")))

    @kopf.on.delete(GROUP, VERSION, TJ, id="forget-metrics", optional=True, registry=registry)
    def forget_run_metrics(meta: kopf.Meta, **_: Any) -> None:
        """Remove the TrainingJob's run series from /metrics."""
        forget_trainingjob_metrics(str(meta.get("namespace")), str(meta.get("name")))

    return registry
