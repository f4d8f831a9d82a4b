"""Reconciliation of an InferenceService: serve the resolved model version, report whether it serves.

Which version: ``spec.model.version`` (pinned), ``alias`` (resolved in MLflow), or
``track: LatestValidated`` (the newest ModelVersion of that model with ``Validated=True``).
A change of version is rolled out by starting the new version's Deployment next to the old
one and retiring the old one only once the new one is ready (the ``Replace`` strategy);
while both run, the stable Service spreads traffic over both by replica count.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from mlops_operator.api.inferenceservice import InferenceServiceSpec
from mlops_operator.config import get_settings
from mlops_operator.controllers.base import Context, get_registry
from mlops_operator.controllers.conditions import Status, is_true, now_iso, set_condition
from mlops_operator.controllers.runs import RUN_REQUEST_ANNOTATION, RUN_TRIGGER_ANNOTATION
from mlops_operator.monitoring.status import summarize
from mlops_operator.registry.client import (
    ModelVersionNotFound,
    RegisteredModelNotFound,
    RegistryError,
    RegistryUnavailable,
)
from mlops_operator.resources import serving as S
from mlops_operator.rollout import retraining as retrain

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
_GATEWAY_NOTE = "traffic.router GatewayAPI is not available in this release: traffic splits by replica counts"


class NoModel(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _model_versions(ctx: Context[InferenceServiceSpec]) -> list[dict[str, Any]]:
    return [
        mv
        for mv in ctx.kube.list("ModelVersion", ctx.namespace)
        if mv.get("spec", {}).get("model", {}).get("name") == ctx.spec.model.name
    ]


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
            info = get_registry().resolve_alias(model.name, model.alias)
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


def _converge_version(ctx: Context[InferenceServiceSpec], target: Target, role: str) -> dict[str, Any]:
    """Deployment, Service and HPA of one version; the live Deployment."""
    settings = get_settings()
    runtime = S.choose_runtime(ctx.spec.runtime)
    replicas = None if ctx.spec.autoscaling is not None else ctx.spec.desired_replicas
    deployment = S.build_predictor_deployment(
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
    )
    live, _ = ctx.kube.apply(deployment)
    ctx.kube.apply(S.build_version_service(ctx.owner, target.version))
    hpa = S.build_hpa(ctx.owner, ctx.spec, target.version)
    name = S.predictor_name(ctx.name, target.version)
    if hpa is not None:
        ctx.kube.apply(hpa)
    else:
        ctx.kube.delete("HorizontalPodAutoscaler", ctx.namespace, name)
    return live


def _retire(ctx: Context[InferenceServiceSpec], version: str) -> None:
    name = S.predictor_name(ctx.name, version)
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler"):
        ctx.kube.delete(kind, ctx.namespace, name)


def _ready_count(deployment: dict[str, Any] | None) -> int:
    return int((deployment or {}).get("status", {}).get("readyReplicas") or 0)


def _is_available(deployment: dict[str, Any], desired: int) -> bool:
    status = deployment.get("status", {})
    current = status.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 0)
    return (
        current
        and _ready_count(deployment) >= max(1, desired)
        and int(status.get("updatedReplicas") or 0) >= max(1, desired)
    )


def pod_problem(pods: list[dict[str, Any]]) -> tuple[str, str] | None:
    """The first reason a pod of this version will not serve (reason, message), if any."""
    for pod in pods:
        for container in pod.get("status", {}).get("containerStatuses") or []:
            waiting = container.get("state", {}).get("waiting") or {}
            if waiting.get("reason") in _BROKEN:
                last = (container.get("lastState") or {}).get("terminated") or {}
                detail = waiting.get("message") or last.get("message") or ""
                exit_code = f" (exit code {last['exitCode']})" if "exitCode" in last else ""
                return waiting[
                    "reason"
                ], f"pod {pod['metadata']['name']}: {waiting['reason']}{exit_code}: {detail}".rstrip(": ")
    return None


def _pods(ctx: Context[InferenceServiceSpec], version: str) -> list[dict[str, Any]]:
    selector = f"mlops.dev/inferenceservice={ctx.name},mlops.dev/model-version={version}"
    return ctx.kube.list("Pod", ctx.namespace, label_selector=selector)


def _pod_ready(pod: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in pod.get("status", {}).get("conditions") or []
    )


def fetch_snapshots(pods: list[dict[str, Any]], timeout: float = 2.0) -> list[dict[str, Any]]:
    """``GET /monitoring`` of every ready pod; a pod that does not answer is skipped (and logged by the caller)."""
    snapshots = []
    for pod in pods:
        ip = pod.get("status", {}).get("podIP")
        if not ip or not _pod_ready(pod):
            continue
        try:
            with urllib.request.urlopen(f"http://{ip}:{S.PORT}/monitoring", timeout=timeout) as response:
                snapshots.append(json.loads(response.read()))
        except (OSError, urllib.error.URLError, ValueError):
            continue
    return snapshots


def _monitoring(
    ctx: Context[InferenceServiceSpec], status: dict[str, Any], pods: list[dict[str, Any]]
) -> tuple[Verdict, Verdict | None, dict[str, Any] | None]:
    """status.monitoring, the DriftDetected verdict, and an accuracy problem (Degraded) if any."""
    if not ctx.spec.monitoring.enabled:
        status.pop("monitoring", None)
        return ("Unknown", "MonitoringDisabled", "spec.monitoring.enabled is false"), None, None
    summary = summarize(fetch_snapshots(pods), ctx.spec.monitoring)
    status["monitoring"] = {**summary["status"], "lastChecked": now_iso()}
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
    if retraining:
        status["retraining"] = retraining
    else:
        status.pop("retraining", None)


def _alias(ctx: Context[InferenceServiceSpec], alias: str, version: str | None) -> bool:
    """Point an MLflow alias of the served model at ``version`` (None: remove it); best effort."""
    registry = get_registry()
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


def reconcile(ctx: Context[InferenceServiceSpec]) -> dict[str, Any]:
    status = dict(ctx.status)
    generation = ctx.generation
    conditions = status.get("conditions")
    desired = ctx.spec.desired_replicas
    versions = _model_versions(ctx)
    stable_version = (status.get("stable") or {}).get("modelVersion")

    if ctx.spec.traffic.router == "GatewayAPI" and ctx.kube.get("Service", ctx.namespace, ctx.name) is None:
        ctx.event("Warning", "GatewayAPINotAvailable", _GATEWAY_NOTE)  # once: when the service is first built
    ctx.kube.apply(S.build_stable_service(ctx.owner))
    pdb = S.build_pdb(ctx.owner, desired)
    if pdb is not None:
        ctx.kube.apply(pdb)
    else:
        ctx.kube.delete("PodDisruptionBudget", ctx.namespace, ctx.name)
    status.update(
        url=S.service_url(ctx.owner),
        runtime=S.choose_runtime(ctx.spec.runtime),
        selector=S.selector_string(ctx.owner),
    )

    try:
        target: Target | None = resolve_target(ctx, versions)
        no_model: NoModel | None = None
    except NoModel as exc:
        target, no_model = None, exc

    if stable_version is None and target is None:
        assert no_model is not None
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
    if stable_version is None:
        assert target is not None
        stable_version = target.version

    stable_target = _target_for(stable_version, versions)
    stable = _converge_version(ctx, stable_target, "stable")
    progressing: Verdict = ("False", "Stable", f"serving version {stable_version}")
    if ctx.spec.traffic.router == "GatewayAPI":
        progressing = ("False", "Stable", f"serving version {stable_version}; {_GATEWAY_NOTE}")
    if target is not None and target.version != stable_version:
        first = ctx.kube.get("Deployment", ctx.namespace, S.predictor_name(ctx.name, target.version)) is None
        if first:
            ctx.event(
                "Normal",
                "RolloutStarted",
                f"version {target.version} starts next to version {stable_version}",
            )
        if first and ctx.spec.rollout.strategy == "Canary":
            # Said once per version, in an Event and below, rather than pretending to analyse.
            ctx.event(
                "Warning",
                "CanaryNotAvailable",
                f"rollout.strategy Canary: step-wise analysis is not available in this release; "
                f"version {target.version} rolls out with the Replace strategy",
            )
        candidate = _converge_version(ctx, target, "candidate")
        if _is_available(candidate, desired):
            _retire(ctx, stable_version)
            history = list(status.get("history") or [])
            history.append(
                {
                    "modelVersion": target.version,
                    "promotedAt": now_iso(),
                    "reason": f"replaced version {stable_version}",
                }
            )
            status["history"] = history[-20:]
            ctx.event(
                "Normal",
                "Promoted",
                f"version {target.version} serves all traffic; version {stable_version} retired",
            )
            stable_version, stable_target, stable = target.version, target, candidate
            _alias(ctx, "candidate", None)
        else:
            problem = pod_problem(_pods(ctx, target.version))
            message = f"rolling out version {target.version}: {_ready_count(candidate)}/{desired} ready"
            if ctx.spec.rollout.strategy == "Canary":
                message += " (Replace strategy: canary analysis is not available in this release)"
            if problem:
                message += f"; {problem[1]}"
            progressing = ("True", "RollingOut", message)
    elif no_model is not None:
        progressing = ("False", no_model.reason, f"keeps serving version {stable_version}: {no_model}")

    ready = _ready_count(stable)
    stable_pods = _pods(ctx, stable_version)
    status["stable"] = {
        "modelVersion": stable_version,
        "deployment": S.predictor_name(ctx.name, stable_version),
        "replicas": int(stable.get("status", {}).get("replicas") or 0),
        "readyReplicas": ready,
        "weight": 100,
        **(
            {"modelVersionName": stable_target.model_version_name} if stable_target.model_version_name else {}
        ),
    }
    status["replicas"] = int(stable.get("status", {}).get("replicas") or 0)
    status.pop("canary", None)

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
    conditions = set_condition(conditions, "Ready", *ready_condition, generation=generation)
    conditions = set_condition(conditions, "Progressing", *progressing, generation=generation)

    drift, accuracy_problem, summary = _monitoring(ctx, status, stable_pods)
    if ready >= 1:
        _production_alias(ctx, status, stable_version)
    if ctx.spec.retraining is not None and summary is not None:
        _retrain(ctx, status, summary)
    conditions = set_condition(conditions, "DriftDetected", *drift, generation=generation)
    degraded: Verdict
    if 0 < ready < desired:
        degraded = ("True", "ReplicasUnavailable", f"{ready}/{desired} replicas ready")
    elif accuracy_problem is not None:
        degraded = accuracy_problem
    else:
        degraded = ("False", "AllReplicasReady" if ready else ready_condition[1], "")
    status["conditions"] = set_condition(conditions, "Degraded", *degraded, generation=generation)
    return status
