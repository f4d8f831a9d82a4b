"""Kubernetes Events about the operator's objects, posted exactly once per occurrence.

kopf's ``kopf.event`` queues an Event and posts it later from a background task, with a random
name: an operator killed in between loses it, and one killed after posting but before its
status write posts it again on the next run. Here each Event is posted synchronously, *before*
the status write that records the change it reports, under a name derived from the object, the
status it was decided from and the Event itself. A run that dies before its status write is
redone from the same status, so it derives the same names, and the API server's 409
AlreadyExists keeps the second copy out: every Event appears once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from mlops_operator.kube_client import AlreadyExists, Kube

#: ``source.component`` / ``reportingComponent`` of every Event the operator posts.
COMPONENT = "mlops-operator"

Event = tuple[str, str, str]  # type, reason, message


def occurrence_of(status: Mapping[str, Any]) -> str:
    """A digest of the status a reconciliation started from: same status, same occurrence."""
    return hashlib.sha256(json.dumps(status, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_event(body: Mapping[str, Any], event: Event, occurrence: str, now: dt.datetime) -> dict[str, Any]:
    """A ``v1/Event`` about ``body`` with a deterministic name (pure)."""
    meta = body["metadata"]
    type_, reason, message = event
    digest = hashlib.sha256(
        "\0".join((str(meta.get("uid", "")), occurrence, type_, reason, message)).encode()
    ).hexdigest()[:16]
    stamp = now.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{digest}", "namespace": meta.get("namespace") or "default"},
        "involvedObject": {
            "apiVersion": body.get("apiVersion"),
            "kind": body.get("kind"),
            "name": meta["name"],
            "namespace": meta.get("namespace") or "default",
            "uid": meta.get("uid"),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": COMPONENT,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


def post_events(
    kube: Kube,
    body: Mapping[str, Any],
    events: Sequence[Event],
    occurrence: str,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
) -> None:
    """Post each Event once; one that exists already (a redone run) is left as it is."""
    now = dt.datetime.now(dt.UTC)
    for event in events:
        try:
            kube.create(build_event(body, event, occurrence, now))
        except AlreadyExists:
            continue
        except Exception as exc:  # an Event is best effort; never fail a reconciliation over it
            logger.warning("could not post Event %s: %s (%s)", event[1], event[2], exc)
