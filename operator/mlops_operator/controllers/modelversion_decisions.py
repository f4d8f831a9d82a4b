"""What a ModelVersion's reconciliation decides (pure): its status and the MLflow writes to make.

The controller (:mod:`mlops_operator.controllers.modelversion_reconciler`) reads what the registry holds
into an :class:`Observation`; :func:`decide_modelversion` turns that, the spec and the recorded
status into a :class:`Decision`: the new status and the effects that make MLflow agree with it
(:class:`SetVersionTags`, :class:`SetDescription`, :class:`SetAlias`), in the order to apply
them; the controller applies them. Nothing here calls MLflow, the API or the clock (``now`` is
a parameter), so every verdict is unit-tested with plain data.

The rules: a ModelVersion stands for one version, resolved once (:func:`get_pinned_version`);
its gates are checked against its metrics (the run's, overridden by ``spec.metrics``) and, for
``minDeltaVsProduction``, against the version holding the ``production`` alias unless that is
this very version; the verdict, the object's name and each gate's outcome become version tags,
the model card its description; ``spec.aliases`` are set only once Validated, never taken away.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from mlops_operator import GROUP
from mlops_operator.api.modelversion import ModelVersionSpec
from mlops_operator.controllers.conditions import set_condition
from mlops_operator.registry.artifacts import redact_uri
from mlops_operator.registry.mlflow_registry import VersionInfo
from mlops_operator.resources.modelcard import evaluate_gates, render_model_card

VALIDATED_TAG = f"{GROUP}/validated"
OBJECT_TAG = f"{GROUP}/modelversion"
#: The alias whose holder ``minDeltaVsProduction`` gates compare with.
PRODUCTION_ALIAS = "production"


class Event(NamedTuple):
    """A Kubernetes Event to post on the ModelVersion (``type`` is Normal or Warning)."""

    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class SetVersionTags:
    """Set these tags on a version (the others it has are left alone)."""

    name: str
    version: str
    tags: dict[str, str]


@dataclass(frozen=True)
class SetDescription:
    """Replace a version's description (the rendered model card)."""

    name: str
    version: str
    text: str


@dataclass(frozen=True)
class SetAlias:
    """Point an alias of the registered model at a version; ``event`` is posted once it is set."""

    name: str
    alias: str
    version: str
    event: Event


Effect = SetVersionTags | SetDescription | SetAlias


@dataclass(frozen=True)
class Observation:
    """What the registry holds for one ModelVersion, read once per reconciliation.

    ``version`` is None when the version (or the registered model, or the alias) does not
    exist; ``not_found`` then says which, in the registry's words. ``production`` is the
    version holding :data:`PRODUCTION_ALIAS`, None when no version holds it (it is not read
    for a version that was not found).
    """

    version: VersionInfo | None
    not_found: str = ""
    production: VersionInfo | None = None
    #: Why the version's registered source lies outside the registry ("" when inside): the
    #: server would refuse to download it, so it is never Validated.
    foreign_source: str = ""


@dataclass(frozen=True)
class Decision:
    """The new status, and the MLflow writes to apply first (in order; none may be skipped)."""

    status: dict[str, Any]
    effects: list[Effect] = field(default_factory=list)


def get_pinned_version(spec: ModelVersionSpec, status: dict[str, Any]) -> str | None:
    """The version number to read; None to follow ``spec.model.alias`` (first resolution only).

    An alias is followed once: after that, ``status.resolvedVersion`` is what this object
    stands for, wherever the alias points later.
    """
    pinned = spec.model.version or status.get("resolvedVersion")
    return str(pinned) if pinned else None


def get_gate_tags(results: list[dict[str, Any]]) -> dict[str, str]:
    """One tag per gate result: ``mlops.dev/gate.<metric>.<index>`` = ``pass`` or ``fail``."""
    return {
        f"{GROUP}/gate.{r['metric']}.{i}": "pass" if r["passed"] else "fail" for i, r in enumerate(results)
    }


def decide_modelversion(
    spec: ModelVersionSpec,
    status: dict[str, Any],
    observed: Observation,
    *,
    namespace: str,
    name: str,
    generation: int | None,
    now: dt.datetime,
) -> Decision:
    """The status to write and the MLflow writes that bring the registry in line with it."""
    info = observed.version
    if info is None:
        return Decision(status=_not_found_status(status, observed.not_found, generation=generation, now=now))
    if observed.foreign_source:
        return Decision(
            status=_foreign_source_status(
                status, info, observed.foreign_source, generation=generation, now=now
            )
        )
    metrics = {**info.metrics, **(spec.metrics or {})}  # the spec's own figures win
    results = evaluate_gates(spec.gates or [], metrics, get_production_baseline(info, observed.production))
    validated = all(result["passed"] for result in results)
    verdict = _verdict_effects(
        spec, info, metrics, results, validated=validated, object_name=f"{namespace}.{name}"
    )
    aliases = _alias_effects(spec, info) if validated else []
    new = _resolved_status(status, info, results, [a.alias for a in aliases], generation=generation, now=now)
    return Decision(status=new, effects=[*verdict, *aliases])


def get_production_baseline(info: VersionInfo, production: VersionInfo | None) -> dict[str, str] | None:
    """The metrics ``minDeltaVsProduction`` compares with; None when there is nothing to compare.

    The production version is not compared with itself: it would fail any positive margin.
    """
    if production is None or production.version == info.version:
        return None
    return production.metrics


def _verdict_effects(
    spec: ModelVersionSpec,
    info: VersionInfo,
    metrics: dict[str, str],
    results: list[dict[str, Any]],
    *,
    validated: bool,
    object_name: str,
) -> list[Effect]:
    """The verdict tags and the model card, each written only when MLflow holds something else."""
    effects: list[Effect] = []
    tags = {
        VALIDATED_TAG: "true" if validated else "false",
        OBJECT_TAG: object_name,
        **get_gate_tags(results),
    }
    if any(info.tags.get(key) != value for key, value in tags.items()):
        effects.append(SetVersionTags(info.name, info.version, tags))
    card = render_model_card(spec, info.version, metrics, results)
    if info.description != card:
        effects.append(SetDescription(info.name, info.version, card))
    return effects


def _alias_effects(spec: ModelVersionSpec, info: VersionInfo) -> list[SetAlias]:
    """The wanted aliases the version does not hold yet (each once), with their Events."""
    effects: list[SetAlias] = []
    held = set(info.aliases)
    for alias in spec.aliases or []:
        if alias in held:
            continue
        held.add(alias)
        message = f"alias {alias} now points at {info.name} version {info.version}"
        effects.append(SetAlias(info.name, alias, info.version, Event("Normal", "AliasSet", message)))
    return effects


def _resolved_status(
    status: dict[str, Any],
    info: VersionInfo,
    results: list[dict[str, Any]],
    new_aliases: list[str],
    *,
    generation: int | None,
    now: dt.datetime,
) -> dict[str, Any]:
    """The version, its gate results and the verdict (``Validated``/``Rejected``); ``Ready=True``."""
    validated = all(result["passed"] for result in results)
    new = dict(status)
    new.update(
        resolvedVersion=info.version,
        uri=info.uri,
        runId=info.run_id,
        aliases=sorted([*info.aliases, *new_aliases]),
        gateResults=results,
        phase="Validated" if validated else "Rejected",
    )
    if not info.run_id:
        new.pop("runId")
    conditions = new.get("conditions")
    if validated:
        message = f"{len(results)} gate(s) passed" if results else "no gates declared"
        conditions = set_condition(
            conditions, "Validated", "True", "GatesPassed", message, generation=generation, now=now
        )
    else:
        failed = [f"{r['metric']}: {r.get('message', '')}" for r in results if not r["passed"]]
        conditions = set_condition(
            conditions, "Validated", "False", "GatesFailed", "; ".join(failed), generation=generation, now=now
        )
    new["conditions"] = set_condition(
        conditions, "Ready", "True", "Resolved", f"{info.uri} ({info.status})", generation=generation, now=now
    )
    return new


def _foreign_source_status(
    status: dict[str, Any], info: VersionInfo, why: str, *, generation: int | None, now: dt.datetime
) -> dict[str, Any]:
    """``Rejected``: the registered source is not the registry's, so no gate can make it servable."""
    message = (
        f"{info.uri} is registered from {redact_uri(info.source)!r}, outside the configured registry: {why}. "
        "Model servers refuse to download it; register the version from its training run"
    )
    new = dict(status)
    new.update(resolvedVersion=info.version, uri=info.uri, phase="Rejected")
    conditions = set_condition(
        status.get("conditions"),
        "Validated",
        "False",
        "SourceOutsideRegistry",
        message,
        generation=generation,
        now=now,
    )
    new["conditions"] = set_condition(
        conditions, "Ready", "False", "SourceOutsideRegistry", message, generation=generation, now=now
    )
    return new


def decide_registry_unavailable(
    status: dict[str, Any], message: str, *, generation: int | None, now: dt.datetime
) -> dict[str, Any]:
    """The status when MLflow cannot be reached: what was known stays, ``Ready=Unknown`` says why.

    Transient: nothing else changes (no phase, no verdict), and the timer tries again.
    """
    new = dict(status)
    new["conditions"] = set_condition(
        status.get("conditions"),
        "Ready",
        "Unknown",
        "RegistryUnavailable",
        message,
        generation=generation,
        now=now,
    )
    return new


def _not_found_status(
    status: dict[str, Any], message: str, *, generation: int | None, now: dt.datetime
) -> dict[str, Any]:
    """``Failed``: the version must exist in MLflow before anything else can be said of it."""
    new = dict(status)
    new["phase"] = "Failed"
    new["conditions"] = set_condition(
        set_condition(
            status.get("conditions"),
            "Ready",
            "False",
            "ModelVersionNotFound",
            message,
            generation=generation,
            now=now,
        ),
        "Validated",
        "Unknown",
        "NotResolved",
        "the version must exist in MLflow before its gates can be checked",
        generation=generation,
        now=now,
    )
    return new
