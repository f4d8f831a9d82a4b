"""Reconciliation of a ModelVersion: resolve it in MLflow, check its gates, write the verdict back.

A ModelVersion is immutable once resolved: an alias is followed once, then the version it
pointed to is what this object stands for (``status.resolvedVersion``). Deleting a
ModelVersion never touches MLflow: registered artifacts outlive the Kubernetes object.

Three steps: :func:`read_registry` reads what MLflow holds, the pure
:func:`~mlops_operator.controllers.modelversion_decisions.decide_modelversion` decides the
status and the MLflow writes, :func:`apply_mlflow_effects` makes them. MLflow being
unreachable at any step is transient: the last known status stays, ``Ready=Unknown`` says why.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, assert_never

from mlops_operator.api.modelversion import ModelVersionSpec
from mlops_operator.controllers.base import Context
from mlops_operator.controllers.modelversion_decisions import (
    PRODUCTION_ALIAS,
    Effect,
    Observation,
    SetAlias,
    SetDescription,
    SetVersionTags,
    decide_modelversion,
    decide_registry_unavailable,
    get_pinned_version,
)
from mlops_operator.registry.artifacts import is_registry_uri, source_outside_registry
from mlops_operator.registry.mlflow_registry import (
    ModelVersionNotFound,
    RegisteredModelNotFound,
    RegistryUnavailable,
)

if TYPE_CHECKING:
    from mlops_operator.registry.mlflow_registry import Registry, VersionInfo


def reconcile(ctx: Context[ModelVersionSpec]) -> dict[str, Any]:
    """Read the registry, decide, apply the MLflow writes; the new status."""
    registry = ctx.registry
    now = dt.datetime.now(dt.UTC)
    try:
        observed = read_registry(registry, ctx.spec, ctx.status)
        decision = decide_modelversion(
            ctx.spec,
            ctx.status,
            observed,
            namespace=ctx.namespace,
            name=ctx.name,
            generation=ctx.generation,
            now=now,
        )
        apply_mlflow_effects(registry, decision.effects, ctx.event)
    except RegistryUnavailable as exc:
        # Transient: keep what we knew, say why it is stale; the timer tries again. Ready=Unknown
        # posts no flip Event of its own, so the outage is told once here, as it starts.
        status = decide_registry_unavailable(ctx.status, str(exc), generation=ctx.generation, now=now)
        ready = [c for c in ctx.status.get("conditions") or [] if c.get("type") == "Ready"]
        if not ready or ready[0].get("reason") != "RegistryUnavailable":
            ctx.event("Warning", "RegistryUnavailable", f"cannot reach MLflow, retrying: {exc}")
        return status
    return decision.status


def read_registry(registry: Registry, spec: ModelVersionSpec, status: dict[str, Any]) -> Observation:
    """The version this object stands for and the production version, as MLflow has them now.

    A missing version, alias or registered model is an observation (``version=None``), not an
    error; :class:`RegistryUnavailable` propagates.
    """
    try:
        info = _read_version(registry, spec, status)
    except (ModelVersionNotFound, RegisteredModelNotFound) as exc:
        return Observation(version=None, not_found=str(exc))
    try:
        production: VersionInfo | None = registry.resolve_alias(spec.model.name, PRODUCTION_ALIAS)
    except (ModelVersionNotFound, RegisteredModelNotFound):
        production = None
    return Observation(
        version=info, production=production, foreign_source=_foreign_source(registry, info) or ""
    )


def _foreign_source(registry: Registry, info: VersionInfo) -> str | None:
    """Why the version's source is outside the registry (the server's own rule), None when inside."""
    run_artifacts = None if is_registry_uri(info.source) else registry.run_artifact_uri(info.run_id)
    return source_outside_registry(
        info.source, tracking_uri=registry.tracking_uri, run_artifact_uri=run_artifacts
    )


def _read_version(registry: Registry, spec: ModelVersionSpec, status: dict[str, Any]) -> VersionInfo:
    pinned = get_pinned_version(spec, status)
    if pinned:
        return registry.get_version(spec.model.name, pinned)
    assert spec.model.alias is not None  # CEL + the model guarantee version xor alias
    return registry.resolve_alias(spec.model.name, spec.model.alias)


def apply_mlflow_effects(
    registry: Registry, effects: list[Effect], post_event: Callable[[str, str, str], None]
) -> None:
    """Make the decided MLflow writes, in order; an alias's Event is queued once it is set.

    Each write is idempotent, so a reconciliation cut short (MLflow went away halfway) is
    simply completed by the next one.
    """
    for effect in effects:
        match effect:
            case SetVersionTags():
                registry.set_version_tags(effect.name, effect.version, effect.tags)
            case SetDescription():
                registry.set_description(effect.name, effect.version, effect.text)
            case SetAlias():
                registry.set_alias(effect.name, effect.alias, effect.version)
                post_event(*effect.event)
            case _:
                assert_never(effect)
