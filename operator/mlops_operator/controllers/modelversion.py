"""Reconciliation of a ModelVersion: resolve it in MLflow, check its gates, write the verdict back.

A ModelVersion is immutable once resolved: an alias is followed once, then the version it
pointed to is what this object stands for (``status.resolvedVersion``). Deleting a
ModelVersion never touches MLflow: registered artifacts outlive the Kubernetes object.
"""

from __future__ import annotations

from typing import Any

from mlops_operator import GROUP
from mlops_operator.api.modelversion import ModelVersionSpec
from mlops_operator.controllers.base import Context, get_registry
from mlops_operator.controllers.conditions import set_condition
from mlops_operator.registry.client import (
    ModelVersionNotFound,
    RegisteredModelNotFound,
    RegistryUnavailable,
    VersionInfo,
)
from mlops_operator.resources.modelcard import evaluate_gates, render_model_card

VALIDATED_TAG = f"{GROUP}/validated"
OBJECT_TAG = f"{GROUP}/modelversion"


def _resolve(ctx: Context[ModelVersionSpec]) -> VersionInfo:
    registry = get_registry()
    model = ctx.spec.model
    pinned = model.version or ctx.status.get("resolvedVersion")
    if pinned:
        return registry.get_version(model.name, pinned)
    assert model.alias is not None  # CEL + the model guarantee version xor alias
    return registry.resolve_alias(model.name, model.alias)


def _gate_tags(results: list[dict[str, Any]]) -> dict[str, str]:
    return {
        f"{GROUP}/gate.{r['metric']}.{i}": "pass" if r["passed"] else "fail" for i, r in enumerate(results)
    }


def reconcile(ctx: Context[ModelVersionSpec]) -> dict[str, Any]:
    status = dict(ctx.status)
    generation = ctx.generation
    conditions = status.get("conditions")
    try:
        info = _resolve(ctx)
    except (ModelVersionNotFound, RegisteredModelNotFound) as exc:
        status["phase"] = "Failed"
        status["conditions"] = set_condition(
            set_condition(
                conditions, "Ready", "False", "ModelVersionNotFound", str(exc), generation=generation
            ),
            "Validated",
            "Unknown",
            "NotResolved",
            "the version must exist in MLflow before its gates can be checked",
            generation=generation,
        )
        return status
    except RegistryUnavailable as exc:
        # Transient: keep what we knew, say why it is stale; the timer tries again.
        status["conditions"] = set_condition(
            conditions, "Ready", "Unknown", "RegistryUnavailable", str(exc), generation=generation
        )
        return status

    registry = get_registry()
    metrics = {**info.metrics, **(ctx.spec.metrics or {})}
    try:
        production = registry.production_metrics(ctx.spec.model.name)
        holder = (
            registry.resolve_alias(ctx.spec.model.name, "production").version
            if production is not None
            else None
        )
    except (ModelVersionNotFound, RegisteredModelNotFound):
        production, holder = None, None
    except RegistryUnavailable as exc:
        status["conditions"] = set_condition(
            conditions, "Ready", "Unknown", "RegistryUnavailable", str(exc), generation=generation
        )
        return status
    if holder == info.version:
        production = None  # the production version is not compared with itself
    results = evaluate_gates(ctx.spec.gates or [], metrics, production)
    validated = all(result["passed"] for result in results)

    tags = {
        VALIDATED_TAG: "true" if validated else "false",
        OBJECT_TAG: f"{ctx.namespace}.{ctx.name}",
        **_gate_tags(results),
    }
    try:
        if any(info.tags.get(key) != value for key, value in tags.items()):
            registry.set_version_tags(info.name, info.version, tags)
        card = render_model_card(ctx.spec, info.version, metrics, results)
        if info.description != card:
            registry.set_description(info.name, info.version, card)
        aliases = list(info.aliases)
        if validated:
            for alias in ctx.spec.aliases or []:
                if alias not in aliases:
                    registry.set_alias(info.name, alias, info.version)
                    aliases.append(alias)
                    ctx.event(
                        "Normal",
                        "AliasSet",
                        f"alias {alias} now points at {info.name} version {info.version}",
                    )
    except RegistryUnavailable as exc:
        status["conditions"] = set_condition(
            conditions, "Ready", "Unknown", "RegistryUnavailable", str(exc), generation=generation
        )
        return status

    failed = [f"{r['metric']}: {r.get('message', '')}" for r in results if not r["passed"]]
    status.update(
        resolvedVersion=info.version,
        uri=info.uri,
        runId=info.run_id,
        aliases=sorted(aliases),
        gateResults=results,
        phase="Validated" if validated else "Rejected",
    )
    if not info.run_id:
        status.pop("runId")
    if validated:
        message = f"{len(results)} gate(s) passed" if results else "no gates declared"
        conditions = set_condition(
            conditions, "Validated", "True", "GatesPassed", message, generation=generation
        )
    else:
        conditions = set_condition(
            conditions, "Validated", "False", "GatesFailed", "; ".join(failed), generation=generation
        )
    status["conditions"] = set_condition(
        conditions, "Ready", "True", "Resolved", f"{info.uri} ({info.status})", generation=generation
    )
    return status
