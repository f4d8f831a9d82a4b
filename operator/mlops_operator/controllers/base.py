"""What every controller does the same way: parse, reconcile under a lock, write status, emit Events.

A controller module provides one pure-ish function ``reconcile(ctx) -> dict`` that returns the
new ``status`` (it may call the API through ``ctx.kube`` to converge children). This module
wraps it for kopf: it parses the spec into the pydantic model (an invalid spec becomes
``Ready=False, reason=InvalidSpec`` with the field named, a Warning Event once, and no
retries), serialises reconciliations of one object (event handlers and timers may overlap),
writes ``status`` only when it changed, and posts an Event whenever a condition flips.

Status is read fresh and written through the ``/status`` subresource *inside* the per-object
lock, not through kopf's ``patch``: kopf applies ``patch`` after the handler returns, so a
timer that started meanwhile would still see the old status, decide the same flip again and
post a second Event. Reading and writing under one lock makes "flip -> one Event" exact.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

import kopf
from pydantic import BaseModel, ValidationError

from mlops_operator.api import cel
from mlops_operator.config import get_settings
from mlops_operator.controllers.conditions import set_condition
from mlops_operator.controllers.metrics import InvalidSpecError, reconcile_metrics
from mlops_operator.kube import Kube

if TYPE_CHECKING:
    from mlops_operator.registry.client import Registry

SpecT = TypeVar("SpecT", bound=BaseModel)

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()
_kube: Kube | None = None
_registry: Registry | None = None


def get_kube() -> Kube:
    """The process-wide API client (created on first use, from the environment)."""
    global _kube
    if _kube is None:
        _kube = Kube.from_environment()
    return _kube


def set_kube(kube: Kube | None) -> None:
    """Replace the API client (tests point it at the emulated API server)."""
    global _kube
    _kube = kube


def get_registry() -> Registry:
    """The process-wide MLflow registry client (from ``MLOPS_MLFLOW_TRACKING_URI``)."""
    global _registry
    if _registry is None:
        from mlops_operator.registry.client import Registry

        _registry = Registry(get_settings().mlflow_tracking_uri)
    return _registry


def set_registry(registry: Registry | None) -> None:
    """Replace the registry client (tests point it at a local MLflow)."""
    global _registry
    _registry = registry


def _lock_for(uid: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(uid, threading.Lock())


def forget(uid: str) -> None:
    """Drop per-object state once the object is gone."""
    with _locks_guard:
        _locks.pop(uid, None)


def format_validation_error(exc: ValidationError, prefix: str = "spec") -> str:
    """``spec.rollout.analysis.stepWeights[1]: Input should be less than or equal to 100`` ..."""
    parts = []
    for error in exc.errors()[:10]:
        path = prefix
        for item in error["loc"]:
            path += f"[{item}]" if isinstance(item, int) else f".{item}"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        elif error["type"] == "missing":
            message = "required field is missing"
        parts.append(f"{path}: {message}")
    more = len(exc.errors()) - 10
    if more > 0:
        parts.append(f"... and {more} more")
    return "; ".join(parts)


def parse_spec(model: type[SpecT], spec: Mapping[str, Any] | None) -> SpecT:
    """The spec as the pydantic model, or :class:`InvalidSpecError` naming every bad field.

    Both the per-field schema (pydantic) and the cross-field CEL rules are checked: on a
    cluster that does not evaluate CEL, this is the only place they are enforced.
    """
    try:
        parsed = model.model_validate(dict(spec or {}))
    except ValidationError as exc:
        raise InvalidSpecError(format_validation_error(exc)) from exc
    violations = cel.validate_model(model, dict(spec or {}))
    if violations:
        raise InvalidSpecError("; ".join(str(violation) for violation in violations))
    return parsed


@dataclass
class Context(Generic[SpecT]):
    """Everything one reconciliation reads: the object, its parsed spec, and the client."""

    body: Mapping[str, Any]
    spec: SpecT
    status: dict[str, Any]
    kube: Kube
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger]
    events: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.body["metadata"].get("namespace") or "default")

    @property
    def generation(self) -> int | None:
        generation = self.body["metadata"].get("generation")
        return int(generation) if generation is not None else None

    @property
    def owner(self) -> dict[str, Any]:
        return {
            "apiVersion": self.body["apiVersion"],
            "kind": self.body["kind"],
            "metadata": dict(self.body["metadata"]),
        }

    def event(self, type_: str, reason: str, message: str) -> None:
        """Queue an Event (posted after the reconciliation, so a failed one posts nothing twice)."""
        self.events.append((type_, reason, message))


Reconciler = Callable[[Context[SpecT]], dict[str, Any]]


def _condition_events(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """One Event per condition whose status or reason changed."""
    before = {condition["type"]: condition for condition in old}
    events = []
    for condition in new:
        previous = before.get(condition["type"])
        if previous and (previous["status"], previous["reason"]) == (
            condition["status"],
            condition["reason"],
        ):
            continue
        if condition["status"] == "Unknown":
            continue
        bad = (
            condition["type"] in ("Ready", "Validated", "Succeeded") and condition["status"] == "False"
        ) or (
            condition["type"] in ("Failed", "Degraded", "DriftDetected", "RolledBack")
            and condition["status"] == "True"
        )
        message = (
            f"{condition['type']}={condition['status']}: {condition.get('message') or condition['reason']}"
        )
        events.append(("Warning" if bad else "Normal", condition["reason"], message))
    return events


def reconcile(
    kind: str,
    model: type[SpecT],
    reconciler: Reconciler[SpecT],
    *,
    body: Mapping[str, Any],
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
) -> None:
    """Run one reconciliation of the object ``body`` names; record the outcome in status and Events."""
    meta = body["metadata"]
    if meta.get("deletionTimestamp"):
        return
    try:
        with _lock_for(str(meta.get("uid") or meta["name"])), reconcile_metrics(kind):
            _reconcile_locked(kind, model, reconciler, body=body, logger=logger)
    except InvalidSpecError:
        # Recorded in status and (once) in a Warning Event. Not re-raised: kopf would retry or
        # post an error Event on every timer tick; nothing can change until the spec does.
        return


def _reconcile_locked(
    kind: str,
    model: type[SpecT],
    reconciler: Reconciler[SpecT],
    *,
    body: Mapping[str, Any],
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
) -> None:
    kube = get_kube()
    meta = body["metadata"]
    fresh = kube.get(kind, meta.get("namespace"), meta["name"])
    if fresh is None or fresh["metadata"].get("deletionTimestamp"):
        return  # deleted meanwhile: nothing to converge
    old_status = dict(fresh.get("status") or {})
    generation = fresh["metadata"].get("generation")
    events: list[tuple[str, str, str]] = []
    try:
        spec = parse_spec(model, fresh.get("spec"))
    except InvalidSpecError as exc:
        _write(
            kube, kind, fresh, old_status, _invalid_status(old_status, str(exc), generation), events, logger
        )
        raise
    ctx: Context[SpecT] = Context(
        body=fresh, spec=spec, status=old_status, kube=kube, logger=logger, events=events
    )
    try:
        new_status = reconciler(ctx)
    except InvalidSpecError as exc:
        # A problem only the controller can see (an invalid cron expression, say).
        _write(
            kube, kind, fresh, old_status, _invalid_status(old_status, str(exc), generation), events, logger
        )
        raise
    if generation is not None:
        new_status["observedGeneration"] = generation
    _write(kube, kind, fresh, old_status, new_status, events, logger)


def _invalid_status(old: dict[str, Any], message: str, generation: int | None) -> dict[str, Any]:
    status = dict(old)
    status["conditions"] = set_condition(
        old.get("conditions"), "Ready", "False", "InvalidSpec", message, generation=generation
    )
    if generation is not None:
        status["observedGeneration"] = generation
    return status


def _write(
    kube: Kube,
    kind: str,
    body: Mapping[str, Any],
    old: dict[str, Any],
    new: dict[str, Any],
    events: list[tuple[str, str, str]],
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
) -> None:
    """Patch the changed status fields (merge patch: None deletes), then post the Events."""
    changes: dict[str, Any] = {key: value for key, value in new.items() if old.get(key) != value}
    for key in old.keys() - new.keys():
        changes[key] = None
    if changes:
        meta = body["metadata"]
        kube.patch_status(kind, meta.get("namespace"), meta["name"], changes)
    for type_, reason, message in (
        _condition_events(old.get("conditions") or [], new.get("conditions") or []) + events
    ):
        try:
            kopf.event(cast(kopf.Body, body), type=type_, reason=reason, message=message)
        except Exception:  # an Event is best effort; never fail a reconciliation over it
            logger.warning("could not post Event %s: %s", reason, message)
