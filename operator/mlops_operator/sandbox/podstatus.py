"""A pod's status from what the local kubelet knows about its containers, as a pure function.

Mirrors the kubelet's rules: ``phase`` Pending until every container has started once, Running
while any runs or restarts, Succeeded/Failed when all ended and the restart policy lets them stay
ended; conditions PodScheduled, Initialized, ContainersReady and Ready.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from mlops_operator.sandbox.object_helpers import Obj, format_time, set_condition

HOST_IP = "127.0.0.1"


@dataclasses.dataclass
class ContainerState:
    """What the kubelet knows about one container, in the API's shape (``state``/``lastState`` dicts)."""

    name: str
    image: str
    state: Obj = dataclasses.field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: Obj = dataclasses.field(default_factory=dict)
    restart_count: int = 0
    ready: bool = False
    started_once: bool = False

    @property
    def running(self) -> bool:
        return "running" in self.state

    @property
    def terminated(self) -> Obj | None:
        value = self.state.get("terminated")
        return dict(value) if value is not None else None

    def to_api(self) -> Obj:
        return {
            "name": self.name,
            "image": self.image,
            "imageID": f"sandbox://{self.image}",
            "state": self.state,
            "lastState": self.last_state,
            "ready": self.ready,
            "started": self.running,
            "restartCount": self.restart_count,
            **({"containerID": f"sandbox://{self.name}"} if self.started_once else {}),
        }


def pod_phase(restart_policy: str, containers: Sequence[ContainerState], init_failed: bool = False) -> str:
    if init_failed:
        return "Failed"
    if not containers or any(not c.started_once for c in containers):
        return "Pending"
    ended = [c.terminated for c in containers]
    if all(t is not None for t in ended):
        codes = [int(t.get("exitCode", 0)) for t in ended if t is not None]
        if all(code == 0 for code in codes) and restart_policy != "Always":
            return "Succeeded"
        if restart_policy == "Never":
            return "Failed"
    return "Running"


def build_pod_status(
    pod: Mapping[str, Any],
    *,
    pod_ip: str | None,
    start_time: datetime.datetime,
    init_containers: Sequence[ContainerState],
    containers: Sequence[ContainerState],
    initialized: bool,
    init_failed: bool,
    now: datetime.datetime,
    message: str = "",
    reason: str = "",
) -> Obj:
    restart_policy = str(pod.get("spec", {}).get("restartPolicy", "Always"))
    phase = pod_phase(restart_policy, containers, init_failed)
    old = dict(pod.get("status") or {})
    conditions = list(old.get("conditions") or [])
    conditions = set_condition(conditions, "PodScheduled", "True", now=now, probe_time=True)
    if initialized:
        conditions = set_condition(conditions, "Initialized", "True", now=now, probe_time=True)
    else:
        pending = [
            c.name for c in init_containers if not (c.terminated and c.terminated.get("exitCode") == 0)
        ]
        conditions = set_condition(
            conditions, "Initialized", "False", now=now, reason="ContainersNotInitialized",
            message=f"containers with incomplete status: [{' '.join(pending)}]", probe_time=True,
        )  # fmt: skip
    not_ready = [c.name for c in containers if not c.ready]
    if phase in ("Succeeded", "Failed"):
        ready_args = ("False", "PodCompleted", "")
    elif not_ready:
        ready_args = (
            "False",
            "ContainersNotReady",
            f"containers with unready status: [{' '.join(not_ready)}]",
        )
    else:
        ready_args = ("True", "", "")
    for type_ in ("ContainersReady", "Ready"):
        conditions = set_condition(
            conditions,
            type_,
            ready_args[0],
            now=now,
            reason=ready_args[1],
            message=ready_args[2],
            probe_time=True,
        )
    order = {"PodScheduled": 0, "Initialized": 1, "ContainersReady": 2, "Ready": 3}
    conditions.sort(key=lambda c: order.get(str(c.get("type")), 9))
    status: Obj = {
        "phase": phase,
        "conditions": conditions,
        "hostIP": HOST_IP,
        "hostIPs": [{"ip": HOST_IP}],
        "startTime": old.get("startTime") or format_time(start_time),
        "containerStatuses": [c.to_api() for c in containers],
        "qosClass": _qos_class(pod),
    }
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    if init_containers:
        status["initContainerStatuses"] = [c.to_api() for c in init_containers]
    if message:
        status["message"] = message
    if reason:
        status["reason"] = reason
    return status


def _qos_class(pod: Mapping[str, Any]) -> str:
    containers = pod.get("spec", {}).get("containers") or []
    resources = [c.get("resources") or {} for c in containers]
    if not any(r.get("limits") or r.get("requests") for r in resources):
        return "BestEffort"
    guaranteed = all(
        (r.get("limits") or {}).get(k) is not None
        and (r.get("requests") or {}).get(k, (r.get("limits") or {}).get(k)) == (r.get("limits") or {}).get(k)
        for r in resources
        for k in ("cpu", "memory")
    )
    return "Guaranteed" if guaranteed else "Burstable"


def waiting(reason: str, message: str = "") -> Obj:
    return {"waiting": {"reason": reason, **({"message": message} if message else {})}}


def terminated(
    exit_code: int,
    reason: str,
    started: datetime.datetime | None,
    finished: datetime.datetime,
    message: str = "",
) -> Obj:
    value: Obj = {"exitCode": exit_code, "reason": reason, "finishedAt": format_time(finished)}
    if started is not None:
        value["startedAt"] = format_time(started)
    if message:
        value["message"] = message
    return {"terminated": value}
