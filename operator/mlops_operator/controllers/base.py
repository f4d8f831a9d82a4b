"""What every controller does the same way: parse, reconcile under a lock, write status, emit Events.

A controller module provides one pure-ish function ``reconcile(ctx) -> dict`` that returns the
new ``status`` (it may call the API through ``ctx.kube`` to converge children). This module
wraps it for kopf: it parses the spec into the pydantic model (an invalid spec becomes
``Ready=False, reason=InvalidSpec`` with the field named, a Warning Event once, and no
retries), serialises reconciliations of one object (event handlers and timers may overlap),
writes ``status`` only when it changed, and posts an Event whenever a condition flips (once,
even when the operator dies in between: :mod:`object_events`).

Status is read fresh and written through the ``/status`` subresource *inside* the per-object
lock, not through kopf's ``patch``: kopf applies ``patch`` after the handler returns, so a
timer that started meanwhile would still see the old status, decide the same flip again and
post a second Event. Reading and writing under one lock makes "flip -> one Event" exact.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel

from mlops_operator.config import Settings
from mlops_operator.controllers.collaborators import Collaborators
from mlops_operator.controllers.conditions import set_condition
from mlops_operator.controllers.invalid_spec import InvalidSpecError, parse_spec
from mlops_operator.controllers.object_events import occurrence_of, post_events
from mlops_operator.controllers.operator_metrics import reconcile_metrics
from mlops_operator.kube_client import ApiPermanentError, ApiTemporaryError, Kube

if TYPE_CHECKING:
    from mlops_operator.registry.mlflow_registry import Registry

SpecT = TypeVar("SpecT", bound=BaseModel)


@dataclass
class Context(Generic[SpecT]):
    """Everything one reconciliation reads: the object, its parsed spec, the settings and clients."""

    body: Mapping[str, Any]
    spec: SpecT
    status: dict[str, Any]
    collaborators: Collaborators
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger]
    events: list[tuple[str, str, str]] = field(default_factory=list)
    #: Writes that must follow the status (clearing a command annotation: once it is gone, the
    #: command's outcome is already in status for whoever waited on it).
    after_status: list[Callable[[], object]] = field(default_factory=list)

    @property
    def kube(self) -> Kube:
        return self.collaborators.kube

    @property
    def registry(self) -> Registry:
        return self.collaborators.registry

    @property
    def settings(self) -> Settings:
        return self.collaborators.settings

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
    collaborators: Collaborators,
) -> None:
    """Run one reconciliation of the object ``body`` names; record the outcome in status and Events."""
    meta = body["metadata"]
    if meta.get("deletionTimestamp"):
        return
    try:
        with collaborators.locks.lock_for(str(meta.get("uid") or meta["name"])), reconcile_metrics(kind):
            _reconcile_locked(kind, model, reconciler, body=body, logger=logger, collaborators=collaborators)
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
    collaborators: Collaborators,
) -> None:
    kube = collaborators.kube
    meta = body["metadata"]
    fresh = kube.get(kind, meta.get("namespace"), meta["name"])
    if fresh is None or fresh["metadata"].get("deletionTimestamp"):
        return  # deleted meanwhile: nothing to converge
    old_status = dict(fresh.get("status") or {})
    generation = fresh["metadata"].get("generation")
    events: list[tuple[str, str, str]] = []
    uid = str(fresh["metadata"].get("uid") or "")
    spec = collaborators.specs.get(uid, kind, generation) if uid and generation is not None else None
    try:
        if spec is None:
            spec = parse_spec(model, fresh.get("spec"), cel=not _accepted_before(old_status, generation))
            if uid and generation is not None:
                collaborators.specs.put(uid, kind, generation, spec)
    except InvalidSpecError as exc:
        _write(
            kube, kind, fresh, old_status, _invalid_status(old_status, str(exc), generation), events, logger
        )
        raise
    ctx: Context[SpecT] = Context(
        body=fresh, spec=spec, status=old_status, collaborators=collaborators, logger=logger, events=events
    )
    try:
        new_status = reconciler(ctx)
        if generation is not None:
            new_status["observedGeneration"] = generation
        _write(kube, kind, fresh, old_status, new_status, events, logger)
    except InvalidSpecError as exc:
        # A problem only the controller can see (an invalid cron expression, say).
        _write(
            kube, kind, fresh, old_status, _invalid_status(old_status, str(exc), generation), events, logger
        )
        raise
    except (ApiTemporaryError, ApiPermanentError) as exc:
        # The API server failed a call after the client's retries (kopf retries the handler),
        # or refused it (a 403 of missing RBAC, a 422 of an invalid child): people see which
        # call failed, and why, on the object (kopf posts no Event for either).
        _tell_api_failure(kube, fresh, old_status, exc, logger)
        raise
    for action in ctx.after_status:
        action()


def _tell_api_failure(
    kube: Kube,
    body: Mapping[str, Any],
    old_status: dict[str, Any],
    exc: ApiTemporaryError | ApiPermanentError,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
) -> None:
    """A Warning Event ``Failed<Verb>`` (FailedCreate, FailedPatch, ... as the Job and ReplicaSet
    controllers name theirs) with the call, HTTP status, reason and the server's message; posted
    once per status it failed from and message (best effort: the API server may be down)."""
    verb = exc.call.split(" ", 1)[0].capitalize() if exc.call else "Call"
    post_events(kube, body, [("Warning", f"Failed{verb}", str(exc))], occurrence_of(old_status), logger)


def _accepted_before(status: Mapping[str, Any], generation: int | None) -> bool:
    """Whether this generation's spec already passed the CEL rules: its status was written for
    this generation (``observedGeneration``) and does not say ``InvalidSpec``. A spec never
    changes within a generation, so a restarted operator need not evaluate them again (the
    API server does not re-validate stored objects either); pydantic still parses the spec."""
    if generation is None or status.get("observedGeneration") != generation:
        return False
    return not any(c.get("reason") == "InvalidSpec" for c in status.get("conditions") or [])


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
    """Post the Events, then patch the changed status fields (merge patch: None deletes).

    Events first, under names derived from ``old`` (see :mod:`object_events`): a run killed
    between the two is redone from the same status, and its Events are not posted twice.
    """
    # A condition flip whose reason a controller's own Event already tells (with more detail)
    # is not told twice.
    told = {reason for _, reason, _ in events}
    flips = [
        event
        for event in _condition_events(old.get("conditions") or [], new.get("conditions") or [])
        if event[1] not in told
    ]
    post_events(kube, body, flips + events, occurrence_of(old), logger)
    changes: dict[str, Any] = {key: value for key, value in new.items() if old.get(key) != value}
    for key in old.keys() - new.keys():
        changes[key] = None
    if changes:
        meta = body["metadata"]
        kube.patch_status(kind, meta.get("namespace"), meta["name"], changes)
