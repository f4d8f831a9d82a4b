"""Reconciliation of an InferenceService: serve the resolved model version, roll new ones out.

Which version: ``spec.model.version`` (pinned), ``alias`` (resolved in MLflow), or
``track: LatestValidated`` (the newest ModelVersion of that model with ``Validated=True``).

Every reconciliation observes (the stable and candidate Deployments, their pods, and each ready
server's ``/monitoring`` counters), asks the pure :func:`~mlops_operator.rollout.rollout_plan.decide_rollout`
what to do, applies it (Deployments and their sizes, the stable Service's selector, retired
versions, the command annotation cleared, MLflow's ``candidate`` and ``production`` aliases) and
reports (status, conditions, Events, metrics). All rollout progress lives in ``status.rollout``,
so a restarted operator resumes where it was.

Traffic with the ``Replicas`` router: the stable Service selects the stable version alone until
the canary's first step, then every ready predictor pod; the canary's replica count follows its
weight, and the weight reported is the measured share of ready pods.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from mlops_operator.api.inferenceservice import InferenceServiceSpec
from mlops_operator.controllers.base import Context
from mlops_operator.controllers.conditions import Status, is_true, now_iso, set_condition
from mlops_operator.controllers.operator_metrics import (
    record_retrain_requested,
    record_rollout_event,
    set_rollout_metrics,
)
from mlops_operator.controllers.trainingjob_runs import RUN_REQUEST_ANNOTATION, RUN_TRIGGER_ANNOTATION
from mlops_operator.kube_client import NotFound
from mlops_operator.monitoring.monitoring_summary import summarize
from mlops_operator.monitoring.scraper import Scraper, ScrapeTarget
from mlops_operator.registry.mlflow_registry import (
    ModelVersionNotFound,
    RegisteredModelNotFound,
    RegistryError,
    RegistryUnavailable,
)
from mlops_operator.resources import inferenceservice_children as children
from mlops_operator.rollout import retraining as retrain
from mlops_operator.rollout.canary_analysis import VersionCounters
from mlops_operator.rollout.rollout_plan import (
    COMMAND_ANNOTATION,
    HISTORY_LIMIT,
    IN_PROGRESS,
    RolloutObservation,
    VersionState,
    decide_rollout,
)

#: Waiting reasons of a container that mean "this pod will not serve until someone acts".
_BROKEN = (
    "CrashLoopBackOff",
    "ErrImagePull",
    "ImagePullBackOff",
    "CreateContainerError",
    "RunContainerError",
    "CreateContainerConfigError",
)


@dataclass(frozen=True)
class Target:
    version: str
    model_version_name: str | None = None
    sha256: str | None = None
    validated: bool | None = None

    def model_uri(self, model: str) -> str:
        return f"models:/{model}/{self.version}"


Verdict = tuple[Status, str, str]  # status, reason, message
_NO_GATEWAY_API = (
    "traffic.router GatewayAPI: this cluster serves no gateway.networking.k8s.io/v1 HTTPRoute "
    "(install the Gateway API CRDs and an implementation): traffic splits by replica counts meanwhile"
)


class NoModel(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _model_versions(ctx: Context[InferenceServiceSpec]) -> list[dict[str, Any]]:
    """The ModelVersions of the served model (the operator's cache indexes them by model name)."""
    return ctx.kube.list(
        "ModelVersion", ctx.namespace, field_selector=f"spec.model.name={ctx.spec.model.name}"
    )


def _version_of(mv: dict[str, Any]) -> str | None:
    version = mv.get("status", {}).get("resolvedVersion") or mv.get("spec", {}).get("model", {}).get(
        "version"
    )
    return str(version) if version else None


def _target_for(version: str, versions: list[dict[str, Any]]) -> Target:
    for mv in versions:
        if _version_of(mv) == version:
            return Target(
                version=version,
                model_version_name=mv["metadata"]["name"],
                sha256=mv.get("spec", {}).get("source", {}).get("sha256"),
                validated=is_true(mv.get("status", {}).get("conditions"), "Validated"),
            )
    return Target(version=version)


def resolve_target(ctx: Context[InferenceServiceSpec], versions: list[dict[str, Any]]) -> Target:
    model = ctx.spec.model
    if model.version:
        return _target_for(model.version, versions)
    if model.alias:
        try:
            info = ctx.registry.resolve_alias(model.name, model.alias)
        except (ModelVersionNotFound, RegisteredModelNotFound) as exc:
            raise NoModel("ModelVersionNotFound", str(exc)) from exc
        except RegistryUnavailable as exc:
            raise NoModel("RegistryUnavailable", str(exc)) from exc
        return _target_for(info.version, versions)
    validated = [
        mv
        for mv in versions
        if is_true(mv.get("status", {}).get("conditions"), "Validated") and _version_of(mv)
    ]
    if not validated:
        raise NoModel(
            "NoValidatedVersion",
            f"no ModelVersion of {model.name} in {ctx.namespace} is Validated yet (track: LatestValidated)",
        )
    newest = max(validated, key=lambda mv: int(_version_of(mv) or 0))
    return _target_for(str(_version_of(newest)), versions)


def _converge_version(
    ctx: Context[InferenceServiceSpec],
    target: Target,
    role: str,
    replicas: int | None = None,
    shadow: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Deployment, Service and HPA of one version; the live Deployment.

    ``replicas`` fixes the size (a canary's, set by its weight): no HPA then. Without it, the
    spec decides (an HPA when ``autoscaling`` is set).
    """
    settings = ctx.settings
    runtime = children.choose_runtime(ctx.spec.runtime)
    fixed = replicas is not None
    if replicas is None and ctx.spec.autoscaling is None:
        replicas = ctx.spec.desired_replicas
    deployment = children.build_predictor_deployment(
        ctx.owner,
        ctx.spec,
        version=target.version,
        model_uri=target.model_uri(ctx.spec.model.name),
        sha256=target.sha256,
        image=ctx.spec.image or settings.server_image,
        mlflow_tracking_uri=settings.mlflow_tracking_uri,
        replicas=replicas,
        runtime=runtime,
        role=role,
        image_pull_policy=settings.image_pull_policy,
        log_format=settings.log_format,
        mlflow_credentials_secret=settings.mlflow_credentials_secret,
        shadow=shadow,
    )
    live, _ = ctx.kube.apply(deployment)
    ctx.kube.apply(children.build_version_service(ctx.owner, target.version))
    hpa = None if fixed else children.build_hpa(ctx.owner, ctx.spec, target.version)
    name = children.predictor_name(ctx.name, target.version)
    if hpa is not None:
        ctx.kube.apply(hpa)
    elif ctx.kube.get("HorizontalPodAutoscaler", ctx.namespace, name) is not None:
        ctx.kube.delete("HorizontalPodAutoscaler", ctx.namespace, name)
    return live


def _retire(ctx: Context[InferenceServiceSpec], version: str) -> None:
    name = children.predictor_name(ctx.name, version)
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler"):
        ctx.kube.delete(kind, ctx.namespace, name)


def _ready_count(deployment: dict[str, Any] | None) -> int:
    return int((deployment or {}).get("status", {}).get("readyReplicas") or 0)


def pod_problem(pods: list[dict[str, Any]]) -> tuple[str, str] | None:
    """The first reason a pod of this version will not serve (reason, message), if any."""
    for pod in pods:
        for container in pod.get("status", {}).get("containerStatuses") or []:
            waiting = container.get("state", {}).get("waiting") or {}
            if waiting.get("reason") in _BROKEN:
                last = (container.get("lastState") or {}).get("terminated") or {}
                # Why the container died says more than the back-off it now waits in.
                detail = last.get("message") or waiting.get("message") or ""
                exit_code = f" (exit code {last['exitCode']})" if "exitCode" in last else ""
                return waiting[
                    "reason"
                ], f"pod {pod['metadata']['name']}: {waiting['reason']}{exit_code}: {detail}".rstrip(": ")
    return None


def pod_not_ready(pods: list[dict[str, Any]]) -> str | None:
    """Which pod of this version is not ready, and what it waits on (a readiness probe that does
    not pass: a model still loading, or one whose load hangs), for the rollout's message."""
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        if _pod_ready(pod) or pod["metadata"].get("deletionTimestamp"):
            continue
        name = pod["metadata"]["name"]
        probes = {
            c["name"]: c.get("readinessProbe") or {} for c in pod.get("spec", {}).get("containers") or []
        }
        for container in pod.get("status", {}).get("containerStatuses") or []:
            running = (container.get("state") or {}).get("running")
            if running is not None and not container.get("ready"):
                path = (probes.get(container["name"], {}).get("httpGet") or {}).get("path")
                probe = f"its readiness probe (GET {path})" if path else "its readiness probe"
                return (
                    f"pod {name}: container {container['name']} runs since {running.get('startedAt', '?')} "
                    f"but {probe} has not passed"
                )
        return f"pod {name} is {pod.get('status', {}).get('phase') or 'Pending'}, not ready"
    return None


def _pods(ctx: Context[InferenceServiceSpec], version: str) -> list[dict[str, Any]]:
    selector = f"mlops.dev/inferenceservice={ctx.name},mlops.dev/model-version={version}"
    return ctx.kube.list("Pod", ctx.namespace, label_selector=selector)


def _pod_ready(pod: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in pod.get("status", {}).get("conditions") or []
    )


def fetch_snapshots(scraper: Scraper, pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``GET /monitoring`` of every ready pod, concurrently; a pod that does not answer is left out.

    ``scraper`` is the operator's one :class:`~mlops_operator.monitoring.scraper.Scraper`
    (``ctx.collaborators.scraper``): it bounds the requests in flight across all services,
    gives each pod a total deadline and skips failing pods for a while.
    """
    targets = [
        ScrapeTarget(
            pod=pod["metadata"]["name"],
            host=ip,
            port=children.PORT,
            # A pod at a reused IP, or Ready again after a restart, is not the one that failed.
            identity=f"{pod['metadata'].get('uid', '')}/{_ready_since(pod)}",
        )
        for pod in pods
        if (ip := pod.get("status", {}).get("podIP")) and _pod_ready(pod)
    ]
    return scraper.fetch(targets) if targets else []


def _ready_since(pod: dict[str, Any]) -> str:
    for condition in pod.get("status", {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return str(condition.get("lastTransitionTime") or "")
    return ""


def _monitoring(
    ctx: Context[InferenceServiceSpec],
    status: dict[str, Any],
    pods: list[dict[str, Any]],
    snapshots: list[dict[str, Any]] | None = None,
) -> tuple[Verdict, Verdict | None, dict[str, Any] | None]:
    """status.monitoring, the DriftDetected verdict, and an accuracy problem (Degraded) if any."""
    if not ctx.spec.monitoring.enabled:
        status.pop("monitoring", None)
        return ("Unknown", "MonitoringDisabled", "spec.monitoring.enabled is false"), None, None
    summary = summarize(
        fetch_snapshots(ctx.collaborators.scraper, pods) if snapshots is None else snapshots,
        ctx.spec.monitoring,
    )
    # No check timestamp here: a status that moves on every scrape is a write per service per
    # interval; the servers' own /metrics say how fresh their figures are.
    status["monitoring"] = dict(summary["status"])
    block = summary["status"]
    if summary["drift"] is None:
        drift: Verdict = (
            "Unknown",
            "InsufficientData",
            f"{block['samples']} rows in the drift window; need {ctx.spec.monitoring.drift.min_samples}",
        )
    elif summary["drift"]:
        features = ", ".join(block.get("driftedFeatures") or [])
        drift = (
            "True",
            "DatasetDrift",
            f"drift share {block['driftShare']} >= {ctx.spec.monitoring.drift.drift_share}: {features}",
        )
    else:
        drift = (
            "False",
            "NoDrift",
            f"drift share {block['driftShare']} < {ctx.spec.monitoring.drift.drift_share}",
        )
    accuracy: Verdict | None = None
    if summary["accuracyLow"]:
        accuracy = (
            "True",
            "AccuracyBelowThreshold",
            f"accuracy {block['accuracy']} < {ctx.spec.monitoring.accuracy.min} over {block['labelledSamples']} labelled predictions",
        )
    return drift, accuracy, summary


def _retrain(ctx: Context[InferenceServiceSpec], status: dict[str, Any], summary: dict[str, Any]) -> None:
    """Request a run of the retraining TrainingJob when the served model has degraded enough."""
    spec = ctx.spec.retraining
    assert spec is not None
    now = dt.datetime.now(dt.UTC)
    retraining = dict(status.get("retraining") or {})
    previous = (ctx.status.get("monitoring") or {}).get("recentDrift") or []
    last = retraining.get("lastRequested")
    decision = retrain.decide(
        spec,
        list(previous),
        drift=summary["drift"],
        accuracy_low=summary["accuracyLow"],
        last_retrain=dt.datetime.fromisoformat(last.replace("Z", "+00:00")) if last else None,
        now=now,
    )
    status.setdefault("monitoring", {})["recentDrift"] = decision.history
    if decision.reason is None:
        if decision.waiting:
            retraining["message"] = decision.waiting
        else:
            retraining.pop("message", None)
    elif ctx.kube.get("TrainingJob", ctx.namespace, spec.training_job) is None:
        message = f"retraining.trainingJob {spec.training_job} does not exist in {ctx.namespace}"
        if retraining.get("message") != message:
            ctx.event("Warning", "RetrainingJobNotFound", message)
        retraining["message"] = message
    else:
        stamp = now_iso(now)
        annotations = {RUN_REQUEST_ANNOTATION: stamp, RUN_TRIGGER_ANNOTATION: "Retrain"}
        ctx.kube.patch(
            "TrainingJob", ctx.namespace, spec.training_job, {"metadata": {"annotations": annotations}}
        )
        retraining = {"lastRequested": stamp, "reason": decision.reason}
        ctx.event(
            "Normal",
            "RetrainRequested",
            f"asked TrainingJob {spec.training_job} for a run: {decision.reason}",
        )
        record_retrain_requested(ctx.namespace, ctx.name, decision.reason)
    if retraining:
        status["retraining"] = retraining
    else:
        status.pop("retraining", None)


def _alias(ctx: Context[InferenceServiceSpec], alias: str, version: str | None) -> bool:
    """Point an MLflow alias of the served model at ``version`` (None: remove it); best effort."""
    registry = ctx.registry
    try:
        if version is None:
            registry.delete_alias(ctx.spec.model.name, alias)
        else:
            registry.set_alias(ctx.spec.model.name, alias, version)
    except RegistryError as exc:  # the rollout does not wait for MLflow; production is retried
        ctx.logger.warning(
            "could not move alias %s of %s to %s: %s", alias, ctx.spec.model.name, version, exc
        )
        return False
    return True


def _production_alias(ctx: Context[InferenceServiceSpec], status: dict[str, Any], version: str) -> None:
    """Point MLflow's ``production`` alias at the version that serves (gates compare against it)."""
    if status.get("productionVersion") == version or not _alias(ctx, "production", version):
        return  # done already, or MLflow is unavailable: retried on the next reconciliation
    status["productionVersion"] = version
    ctx.event(
        "Normal", "ProductionAliasSet", f"MLflow alias production -> {ctx.spec.model.name} version {version}"
    )


@dataclass(frozen=True)
class ObservedVersion:
    """One served version as seen now: its Deployment, pods, and the servers' own snapshots."""

    deployment: dict[str, Any]
    pods: list[dict[str, Any]]
    snapshots: list[dict[str, Any]]
    state: VersionState


def observe_version(
    ctx: Context[InferenceServiceSpec], version: str, monitoring: bool = True
) -> ObservedVersion:
    """Read one version's Deployment and pods, and the ``/monitoring`` snapshot of each ready pod."""
    deployment = ctx.kube.get("Deployment", ctx.namespace, children.predictor_name(ctx.name, version)) or {}
    pods = _pods(ctx, version) if deployment else []
    snapshots = fetch_snapshots(ctx.collaborators.scraper, pods) if monitoring and pods else []
    counters = [
        (
            str((snap.get("counters") or {}).get("instance") or f"pod-{index}"),
            VersionCounters.from_snapshot(snap),
        )
        for index, snap in enumerate(snapshots)
    ]
    drift = summarize(snapshots, ctx.spec.monitoring)["status"].get("driftShare") if snapshots else None
    state = VersionState(
        version=version,
        ready_replicas=_ready_count(deployment),
        desired_replicas=int(deployment.get("spec", {}).get("replicas") or 0),
        problem=pod_problem(pods),
        not_ready=pod_not_ready(pods),
        counters=counters,
        drift_share=float(drift) if drift is not None else None,
    )
    return ObservedVersion(deployment, pods, snapshots, state)


def _mirror(ctx: Context[InferenceServiceSpec], version: str | None) -> tuple[str, str] | None:
    """Where stable's servers copy requests in a Shadow rollout: the candidate Service's address."""
    if version is None:
        return None
    service = ctx.kube.get("Service", ctx.namespace, children.predictor_name(ctx.name, version))
    url = children.version_service_url(service)
    return (url, version) if url else None


def _effective_weight(stable_ready: int, canary_ready: int, canary_selected: bool) -> int:
    """The share of requests the canary gets with the Replicas router: its share of ready pods."""
    if not canary_selected or canary_ready == 0:
        return 0
    return round(100 * canary_ready / max(1, stable_ready + canary_ready))


def _apply_router(
    ctx: Context[InferenceServiceSpec],
    status: dict[str, Any],
    stable_version: str,
    canary_version: str | None,
    canary_weight: int,
) -> str:
    """Converge the HTTPRoute (GatewayAPI router) or remove the one left from it; the router in effect."""
    if ctx.spec.traffic.router == "GatewayAPI":
        route = children.build_http_route(
            ctx.owner, ctx.spec.traffic.gateway, stable_version, canary_version, canary_weight
        )
        try:
            ctx.kube.apply(route)
        except NotFound:
            if status.get("router") != "Replicas":
                ctx.event("Warning", "GatewayAPINotInstalled", _NO_GATEWAY_API)
            status["router"] = "Replicas"
            status.pop("httpRoute", None)
            return "Replicas"
        status.update(router="GatewayAPI", httpRoute=ctx.name)
        return "GatewayAPI"
    if status.get("httpRoute"):
        ctx.kube.delete("HTTPRoute", ctx.namespace, str(status.pop("httpRoute")))
    status["router"] = "Replicas"
    return "Replicas"


def _progressing_condition(rollout: dict[str, Any], stable: str) -> Verdict:
    phase = str(rollout.get("phase") or "Idle")
    message = str(rollout.get("message") or f"serving version {stable}")
    if phase in IN_PROGRESS:
        return ("True", str(rollout.get("reason") or phase), message)
    if phase == "RolledBack":
        return ("False", "RolledBack", message)
    if phase == "Failed":
        return ("False", str(rollout.get("reason") or "RolloutFailed"), message)
    return ("False", "Stable", message)


def reconcile(ctx: Context[InferenceServiceSpec]) -> dict[str, Any]:
    """Observe, decide the rollout (pure: :func:`decide_rollout`), apply, and report."""
    status = dict(ctx.status)
    generation = ctx.generation
    conditions = status.get("conditions")
    desired = ctx.spec.desired_replicas
    versions = _model_versions(ctx)
    stable_version = (status.get("stable") or {}).get("modelVersion")

    pdb = children.build_pdb(ctx.owner, desired)
    if pdb is not None:
        ctx.kube.apply(pdb)
    elif ctx.kube.get("PodDisruptionBudget", ctx.namespace, ctx.name) is not None:
        ctx.kube.delete("PodDisruptionBudget", ctx.namespace, ctx.name)
    status.update(
        url=children.service_url(ctx.owner),
        runtime=children.choose_runtime(ctx.spec.runtime),
        selector=children.selector_string(ctx.owner),
    )

    try:
        target: Target | None = resolve_target(ctx, versions)
        no_model: NoModel | None = None
    except NoModel as exc:
        target, no_model = None, exc

    if stable_version is None and target is None:
        assert no_model is not None
        ctx.kube.apply(children.build_stable_service(ctx.owner))
        status["conditions"] = set_condition(
            conditions, "Ready", "False", no_model.reason, str(no_model), generation=generation
        )
        status["conditions"] = set_condition(
            status["conditions"],
            "Progressing",
            "False",
            no_model.reason,
            str(no_model),
            generation=generation,
        )
        return status

    # -- observe --------------------------------------------------------------------------------
    before = dict(status.get("rollout") or {})
    stable_seen = observe_version(ctx, stable_version) if stable_version else None
    candidate_name = before.get("candidate") if before.get("candidate") != stable_version else None
    candidate_seen = observe_version(ctx, str(candidate_name)) if candidate_name else None
    command = (ctx.body["metadata"].get("annotations") or {}).get(COMMAND_ANNOTATION)
    decision = decide_rollout(
        RolloutObservation(
            now=dt.datetime.now(dt.UTC),
            spec=ctx.spec,
            stable_version=stable_version,
            target_version=target.version if target is not None else None,
            rollout=before or None,
            history=list(status.get("history") or []),
            stable=stable_seen.state if stable_seen else None,
            candidate=candidate_seen.state if candidate_seen else None,
            command=command,
        )
    )

    # -- apply ----------------------------------------------------------------------------------
    stable_version = str(decision.stable_version)
    stable_target = _target_for(stable_version, versions)
    stable = _converge_version(ctx, stable_target, "stable", shadow=_mirror(ctx, decision.mirror))
    canary_weight = decision.weights.get("canary", 0)
    candidate_live: dict[str, Any] | None = None
    if decision.candidate is not None:
        candidate_live = _converge_version(
            ctx,
            _target_for(decision.candidate.version, versions),
            "candidate",
            replicas=decision.candidate.replicas,
        )
    canary_serving = decision.candidate is not None and canary_weight > 0
    router = _apply_router(
        ctx,
        status,
        stable_version,
        decision.candidate.version if canary_serving and decision.candidate else None,
        canary_weight,
    )
    # Replicas router: a canary shares the stable Service only from its first step on. With an
    # HTTPRoute the stable Service keeps to the stable version (what callers outside the mesh get).
    share = canary_serving and router == "Replicas"
    ctx.kube.apply(children.build_stable_service(ctx.owner, None if share else stable_version))
    for version in decision.retire:
        _retire(ctx, version)
    if command is not None and decision.clear_command:
        clear = {"metadata": {"annotations": {COMMAND_ANNOTATION: None}}}
        ctx.after_status.append(lambda: ctx.kube.patch("InferenceService", ctx.namespace, ctx.name, clear))
    for type_, reason, message in decision.events:
        ctx.event(type_, reason, message)
        record_rollout_event(ctx.namespace, ctx.name, reason, str(decision.rollout.get("reason") or ""))
    if decision.history:
        status["history"] = (list(status.get("history") or []) + list(decision.history))[-HISTORY_LIMIT:]
    candidate_alias = (
        decision.candidate.version if decision.candidate and decision.candidate.replicas else None
    )
    # MLflow's candidate alias follows the canary; status remembers where it points, so MLflow
    # is written only when that changes (and retried when MLflow was down).
    if candidate_alias != status.get("candidateAlias") and _alias(ctx, "candidate", candidate_alias):
        if candidate_alias is None:
            status.pop("candidateAlias", None)
        else:
            status["candidateAlias"] = candidate_alias

    # -- report ---------------------------------------------------------------------------------
    ready = _ready_count(stable)
    stable_pods = (
        stable_seen.pods
        if stable_seen and stable_seen.state.version == stable_version
        else _pods(ctx, stable_version)
    )
    canary_ready = _ready_count(candidate_live)
    effective = (
        canary_weight
        if router == "GatewayAPI" and canary_serving
        else _effective_weight(ready, canary_ready, share)
    )
    status["stable"] = {
        "modelVersion": stable_version,
        "deployment": children.predictor_name(ctx.name, stable_version),
        "replicas": int(stable.get("status", {}).get("replicas") or 0),
        "readyReplicas": ready,
        "weight": 100 - effective,
        **(
            {"modelVersionName": stable_target.model_version_name} if stable_target.model_version_name else {}
        ),
    }
    if decision.candidate is not None and candidate_live is not None:
        status["canary"] = {
            "modelVersion": decision.candidate.version,
            "deployment": children.predictor_name(ctx.name, decision.candidate.version),
            "replicas": int(candidate_live.get("status", {}).get("replicas") or 0),
            "readyReplicas": canary_ready,
            "weight": effective,
        }
    else:
        status.pop("canary", None)
    status["rollout"] = decision.rollout
    status["replicas"] = int(stable.get("status", {}).get("replicas") or 0)
    set_rollout_metrics(ctx.namespace, ctx.name, str(decision.rollout.get("phase") or "Idle"), effective)

    ready_condition: Verdict
    problem = pod_problem(stable_pods)
    if desired == 0:
        ready_condition = ("False", "ScaledToZero", "replicas is 0: nothing serves")
    elif ready >= 1:
        ready_condition = ("True", "Serving", f"version {stable_version}: {ready}/{desired} replicas ready")
    elif problem:
        ready_condition = ("False", problem[0], problem[1])
    else:
        ready_condition = (
            "False",
            "Loading",
            f"version {stable_version}: no replica is ready yet (model loading)",
        )
    progressing = _progressing_condition(decision.rollout, stable_version)
    if no_model is not None and decision.rollout.get("phase") not in IN_PROGRESS:
        progressing = ("False", no_model.reason, f"keeps serving version {stable_version}: {no_model}")
    if ctx.spec.traffic.router == "GatewayAPI" and router != "GatewayAPI":
        progressing = (progressing[0], progressing[1], f"{progressing[2]}; {_NO_GATEWAY_API}")
    conditions = set_condition(conditions, "Ready", *ready_condition, generation=generation)
    conditions = set_condition(conditions, "Progressing", *progressing, generation=generation)

    stable_snapshots = (
        stable_seen.snapshots if stable_seen and stable_seen.state.version == stable_version else None
    )
    drift, accuracy_problem, summary = _monitoring(ctx, status, stable_pods, stable_snapshots)
    if ready >= 1:
        _production_alias(ctx, status, stable_version)
    if ctx.spec.retraining is not None and summary is not None:
        _retrain(ctx, status, summary)
    conditions = set_condition(conditions, "DriftDetected", *drift, generation=generation)
    degraded: Verdict
    rolled_back = (
        decision.rollout.get("phase") == "RolledBack"
        and target is not None
        and target.version != stable_version
    )
    if 0 < ready < desired:
        degraded = ("True", "ReplicasUnavailable", f"{ready}/{desired} replicas ready")
    elif rolled_back:
        degraded = ("True", "RolledBack", str(decision.rollout.get("message") or ""))
    elif accuracy_problem is not None:
        degraded = accuracy_problem
    else:
        degraded = ("False", "AllReplicasReady" if ready else ready_condition[1], "")
    status["conditions"] = set_condition(conditions, "Degraded", *degraded, generation=generation)
    return status
