"""The Deployment controller's decisions, as a pure function: deployment + its pods + now -> actions.

The sandbox has no ReplicaSet objects: each pod template revision is the set of pods labelled
with its ``pod-template-hash``, owned directly by the Deployment. The rolling update follows the
real controller's two rules: never more than ``replicas + maxSurge`` pods, never fewer than
``replicas - maxUnavailable`` available ones, so new pods are ready before old ones go.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from collections.abc import Mapping, Sequence
from typing import Any

from mlops_operator.sandbox.jobs import pod_is_ready
from mlops_operator.sandbox.object_helpers import (
    Obj,
    find_condition,
    format_time,
    is_deleting,
    labels_of,
    name_of,
    parse_time,
    set_condition,
    stable_hash,
)

HASH_LABEL = "pod-template-hash"


@dataclasses.dataclass(frozen=True)
class DeploymentPlan:
    template_hash: str
    create: int = 0
    delete_pods: tuple[str, ...] = ()
    status: Obj = dataclasses.field(default_factory=dict)
    requeue_after: float | None = None


def template_hash(deployment: Mapping[str, Any]) -> str:
    return stable_hash(deployment.get("spec", {}).get("template", {}))


def _scaled(value: Any, replicas: int, default: str, round_up: bool) -> int:
    raw = default if value is None else value
    if isinstance(raw, str) and raw.endswith("%"):
        exact = float(raw[:-1]) * replicas / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(raw)


def surge_and_unavailable(deployment: Mapping[str, Any], replicas: int) -> tuple[int, int]:
    rolling = (deployment.get("spec", {}).get("strategy") or {}).get("rollingUpdate") or {}
    surge = _scaled(rolling.get("maxSurge"), replicas, "25%", round_up=True)
    unavailable = _scaled(rolling.get("maxUnavailable"), replicas, "25%", round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1  # what the API server defaults to; otherwise no rollout could progress
    return surge, unavailable


def _is_available(pod: Mapping[str, Any], min_ready: int, now: datetime.datetime) -> bool:
    if not pod_is_ready(pod):
        return False
    if min_ready <= 0:
        return True
    ready = find_condition(pod.get("status", {}).get("conditions"), "Ready") or {}
    since = parse_time(ready.get("lastTransitionTime"))
    return since is None or (now - since).total_seconds() >= min_ready


def _deletion_order(pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Which pods go first when scaling down: not ready, then most restarted, then newest (like ActivePods)."""

    def restarts(pod: Mapping[str, Any]) -> int:
        return sum(
            int(s.get("restartCount", 0)) for s in pod.get("status", {}).get("containerStatuses") or []
        )

    def created(pod: Mapping[str, Any]) -> str:
        return str(pod.get("metadata", {}).get("creationTimestamp") or "")

    by_newest = sorted(pods, key=lambda pod: (created(pod), name_of(pod)), reverse=True)
    by_restarts = sorted(by_newest, key=restarts, reverse=True)
    return sorted(by_restarts, key=pod_is_ready)


def plan_deployment(
    deployment: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], now: datetime.datetime
) -> DeploymentPlan:
    spec = deployment.get("spec", {})
    replicas = int(spec.get("replicas") if spec.get("replicas") is not None else 1)
    min_ready = int(spec.get("minReadySeconds") or 0)
    current = template_hash(deployment)
    live = [pod for pod in pods if not is_deleting(pod)]
    # A pod that ended (evicted, or its restartPolicy let it finish) is replaced, as a ReplicaSet does.
    ended = [pod for pod in live if pod.get("status", {}).get("phase") in ("Succeeded", "Failed")]
    running = [pod for pod in live if pod not in ended]
    new = [pod for pod in running if labels_of(pod).get(HASH_LABEL) == current]
    old = [pod for pod in running if labels_of(pod).get(HASH_LABEL) != current]
    available = [pod for pod in running if _is_available(pod, min_ready, now)]
    surge, max_unavailable = surge_and_unavailable(deployment, replicas)
    recreate = (spec.get("strategy") or {}).get("type") == "Recreate"

    delete: list[str] = [name_of(pod) for pod in ended]
    create = 0
    if spec.get("paused"):
        pass  # a paused Deployment changes nothing but its status
    elif recreate and old:
        delete += [name_of(pod) for pod in old]
    elif old:
        create = max(0, min(replicas - len(new), replicas + surge - len(running)))
        # Old pods that are not available cost nothing to remove; available ones only down to the floor.
        unhealthy_old = [pod for pod in old if not _is_available(pod, min_ready, now)]
        delete += [name_of(pod) for pod in unhealthy_old]
        removable = len(available) - (replicas - max_unavailable)
        healthy_old = [pod for pod in _deletion_order(old) if pod not in unhealthy_old]
        delete += [name_of(pod) for pod in healthy_old[: max(0, removable)]]
    elif len(new) < replicas:
        create = replicas - len(new)
    elif len(new) > replicas:
        delete += [name_of(pod) for pod in _deletion_order(new)[: len(new) - replicas]]

    status = _status(deployment, running, new, available, replicas, max_unavailable, current, now)
    requeue = float(min_ready) if min_ready and len(available) < len(running) else None
    return DeploymentPlan(
        template_hash=current, create=create, delete_pods=tuple(delete), status=status, requeue_after=requeue
    )


def _status(
    deployment: Mapping[str, Any],
    running: Sequence[Mapping[str, Any]],
    new: Sequence[Mapping[str, Any]],
    available: Sequence[Mapping[str, Any]],
    replicas: int,
    max_unavailable: int,
    current: str,
    now: datetime.datetime,
) -> Obj:
    old_status: Obj = dict(deployment.get("status") or {})
    status: Obj = {
        "replicas": len(running),
        "updatedReplicas": len(new),
        "readyReplicas": sum(1 for pod in running if pod_is_ready(pod)),
        "availableReplicas": len(available),
        "unavailableReplicas": max(0, replicas - len(available)),
    }
    generation = deployment.get("metadata", {}).get("generation")
    if generation is not None:
        status["observedGeneration"] = generation
    counts_changed = any(
        status[key] != old_status.get(key, 0) for key in status if key != "observedGeneration"
    )
    conditions = list(old_status.get("conditions") or [])
    if len(available) >= replicas - max_unavailable:
        conditions = set_condition(
            conditions, "Available", "True", now=now, reason="MinimumReplicasAvailable",
            message="Deployment has minimum availability.",
        )  # fmt: skip
    else:
        conditions = set_condition(
            conditions, "Available", "False", now=now, reason="MinimumReplicasUnavailable",
            message="Deployment does not have minimum availability.",
        )  # fmt: skip

    revision = f"{name_of(deployment)}-{current}"
    complete = len(new) == replicas and len(running) == replicas and len(available) == replicas
    previous = find_condition(conditions, "Progressing")
    last_update = parse_time(previous.get("lastUpdateTime") if previous else None) or now
    deadline = int(deployment.get("spec", {}).get("progressDeadlineSeconds") or 600)
    if complete:
        progressing = (
            "True",
            "NewReplicaSetAvailable",
            f'ReplicaSet "{revision}" has successfully progressed.',
        )
    elif not counts_changed and (now - last_update).total_seconds() > deadline:
        progressing = (
            "False",
            "ProgressDeadlineExceeded",
            f'ReplicaSet "{revision}" has timed out progressing.',
        )
    else:
        progressing = ("True", "ReplicaSetUpdated", f'ReplicaSet "{revision}" is progressing.')
    changed = (
        previous is None
        or counts_changed
        or (previous.get("status"), previous.get("reason")) != progressing[:2]
    )
    conditions = set_condition(
        conditions, "Progressing", progressing[0], now=now, reason=progressing[1], message=progressing[2]
    )
    for condition in conditions:
        if condition["type"] == "Progressing":
            condition["lastUpdateTime"] = format_time(now) if changed else format_time(last_update)
        elif condition["type"] == "Available" and "lastUpdateTime" not in condition:
            condition["lastUpdateTime"] = condition["lastTransitionTime"]
    status["conditions"] = conditions
    return status
