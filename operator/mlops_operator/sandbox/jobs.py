"""The Job controller's decisions, as a pure function: job + its pods + now -> what to do.

Follows ``batch/v1`` Job semantics for NonIndexed jobs: ``completions``/``parallelism``,
``backoffLimit`` (failed pods, plus container restarts when ``restartPolicy: OnFailure``),
``activeDeadlineSeconds``, ``suspend`` and ``ttlSecondsAfterFinished``. The retry backoff grows
like the real one (base * 2^(failures-1), capped) but from a shorter base in the sandbox.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from collections.abc import Mapping, Sequence
from typing import Any

from mlops_operator.sandbox.object_helpers import (
    Obj,
    find_condition,
    format_time,
    is_deleting,
    name_of,
    parse_time,
    set_condition,
    uid_of,
)

DEFAULT_BACKOFF_LIMIT = 6


@dataclasses.dataclass(frozen=True)
class JobPlan:
    create: int = 0
    delete_pods: tuple[str, ...] = ()
    status: Obj = dataclasses.field(default_factory=dict)
    delete_job: bool = False
    requeue_after: float | None = None


def pod_is_ready(pod: Mapping[str, Any]) -> bool:
    condition = find_condition(pod.get("status", {}).get("conditions"), "Ready")
    return bool(condition and condition.get("status") == "True")


def job_pod_labels(job: Mapping[str, Any]) -> dict[str, str]:
    """The labels the Job controller adds to its pods (both the legacy and the prefixed ones)."""
    labels = {"job-name": name_of(job), "batch.kubernetes.io/job-name": name_of(job)}
    if uid_of(job):
        labels.update({"controller-uid": uid_of(job), "batch.kubernetes.io/controller-uid": uid_of(job)})
    return labels


def is_finished(job: Mapping[str, Any]) -> bool:
    for type_ in ("Complete", "Failed"):
        condition = find_condition(job.get("status", {}).get("conditions"), type_)
        if condition and condition.get("status") == "True":
            return True
    return False


def _last_failure(pods: Sequence[Mapping[str, Any]]) -> datetime.datetime | None:
    latest: datetime.datetime | None = None
    for pod in pods:
        for status in pod.get("status", {}).get("containerStatuses") or []:
            for state in (status.get("state", {}), status.get("lastState", {})):
                finished = parse_time((state.get("terminated") or {}).get("finishedAt"))
                if finished and (state.get("terminated") or {}).get("exitCode", 0) != 0:
                    latest = finished if latest is None or finished > latest else latest
    return latest


def plan_job(
    job: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    now: datetime.datetime,
    *,
    backoff_base: float = 1.0,
    backoff_cap: float = 30.0,
) -> JobPlan:
    """Decide the next step of ``job`` given the pods it controls."""
    spec = job.get("spec", {})
    old_status: Obj = dict(job.get("status") or {})
    status: Obj = dict(old_status)
    conditions = list(status.get("conditions") or [])
    completions = int(spec.get("completions") or 1)
    parallelism = int(spec.get("parallelism") if spec.get("parallelism") is not None else 1)
    backoff_limit = int(
        spec.get("backoffLimit") if spec.get("backoffLimit") is not None else DEFAULT_BACKOFF_LIMIT
    )
    restart_policy = spec.get("template", {}).get("spec", {}).get("restartPolicy", "Never")

    live = [pod for pod in pods if not is_deleting(pod)]
    succeeded = [pod for pod in live if pod.get("status", {}).get("phase") == "Succeeded"]
    failed = [pod for pod in live if pod.get("status", {}).get("phase") == "Failed"]
    active = [pod for pod in live if pod not in succeeded and pod not in failed]
    verdicts = [pod_failure_action(spec.get("podFailurePolicy"), pod) for pod in failed]
    fail_job = next((v for v in verdicts if v[0] == "FailJob"), None)
    failures = sum(1 for action, _ in verdicts if action != "Ignore")
    if restart_policy == "OnFailure":
        failures += sum(
            int(status_.get("restartCount", 0))
            for pod in active
            for status_ in pod.get("status", {}).get("containerStatuses") or []
        )
    # Pods the controller already deleted are gone from the list; keep the counts monotonic.
    status["succeeded"] = max(len(succeeded), int(old_status.get("succeeded") or 0))
    status["failed"] = max(failures, int(old_status.get("failed") or 0))
    status["active"] = len(active)
    status["ready"] = sum(1 for pod in active if pod_is_ready(pod))
    status["terminating"] = len(pods) - len(live)
    for key in ("succeeded", "failed", "active", "terminating"):
        if not status[key]:
            status.pop(key)  # a real server omits zero counters

    active_names = tuple(name_of(pod) for pod in active)
    if is_finished(job):
        return _plan_finished(job, status, active_names, now)

    if spec.get("suspend"):
        status["conditions"] = set_condition(
            conditions, "Suspended", "True", now=now, reason="JobSuspended", message="Job suspended"
        )
        return JobPlan(delete_pods=active_names, status=status)
    if find_condition(conditions, "Suspended"):
        conditions = set_condition(
            conditions, "Suspended", "False", now=now, reason="JobResumed", message="Job resumed"
        )

    start = parse_time(status.get("startTime")) or now
    status["startTime"] = format_time(start)

    deadline = spec.get("activeDeadlineSeconds")
    failure: tuple[str, str] | None = None
    if fail_job is not None:
        failure = ("PodFailurePolicy", fail_job[1])
    elif deadline is not None and (now - start).total_seconds() >= float(deadline):
        failure = ("DeadlineExceeded", "Job was active longer than specified deadline")
    elif int(status.get("failed", 0)) > backoff_limit:
        failure = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
    if failure:
        for type_ in ("FailureTarget", "Failed"):
            conditions = set_condition(
                conditions, type_, "True", now=now, reason=failure[0], message=failure[1]
            )
        status["conditions"] = conditions
        status.pop("active", None)
        status.pop("ready", None)
        return JobPlan(delete_pods=active_names, status=status)

    if int(status.get("succeeded", 0)) >= completions:
        message = "Reached expected number of succeeded pods"
        for type_ in ("SuccessCriteriaMet", "Complete"):
            conditions = set_condition(
                conditions, type_, "True", now=now, reason="CompletionsReached", message=message
            )
        status["conditions"] = conditions
        status["completionTime"] = format_time(now)
        status.pop("active", None)
        status.pop("ready", None)
        return JobPlan(delete_pods=active_names, status=status)

    if conditions:
        status["conditions"] = conditions
    wanted = min(parallelism, completions - int(status.get("succeeded", 0))) - len(active)
    if wanted <= 0:
        return JobPlan(status=status, requeue_after=_until_deadline(deadline, start, now))
    failures_so_far = int(status.get("failed", 0))
    last_failure = _last_failure(pods)
    if failures_so_far and last_failure is not None:
        delay = min(backoff_base * 2 ** (failures_so_far - 1), backoff_cap)
        remaining = delay - (now - last_failure).total_seconds()
        if remaining > 0:
            return JobPlan(status=status, requeue_after=remaining)
    return JobPlan(create=wanted, status=status, requeue_after=_until_deadline(deadline, start, now))


def pod_failure_action(policy: Mapping[str, Any] | None, pod: Mapping[str, Any]) -> tuple[str, str]:
    """The podFailurePolicy action for one failed pod (``FailJob``, ``Ignore`` or ``Count``) and why.

    As the Job controller does: the rules are tried in order and the first that matches
    decides; ``onExitCodes`` matches a terminated container's exit code (``In``/``NotIn``,
    optionally one container), ``onPodConditions`` a pod condition; no match counts.
    """
    for index, rule in enumerate((policy or {}).get("rules") or []):
        action = str(rule.get("action", "Count"))
        exit_codes = rule.get("onExitCodes")
        if exit_codes:
            wanted = set(exit_codes.get("values") or [])
            for container in pod.get("status", {}).get("containerStatuses") or []:
                if exit_codes.get("containerName") not in (None, container.get("name")):
                    continue
                code = (container.get("state", {}).get("terminated") or {}).get("exitCode")
                if code is None or code == 0:
                    continue
                if (code in wanted) == (exit_codes.get("operator", "In") == "In"):
                    name = f"{pod.get('metadata', {}).get('namespace')}/{pod.get('metadata', {}).get('name')}"
                    return action, (
                        f"Container {container.get('name')} for pod {name} failed with exit code {code} "
                        f"matching {action} rule at index {index}"
                    )
        for wanted_condition in rule.get("onPodConditions") or []:
            for condition in pod.get("status", {}).get("conditions") or []:
                if condition.get("type") == wanted_condition.get("type") and condition.get(
                    "status"
                ) == wanted_condition.get("status", "True"):
                    return (
                        action,
                        f"Pod has condition {condition.get('type')} matching {action} rule at index {index}",
                    )
    return "Count", ""


def _until_deadline(deadline: Any, start: datetime.datetime, now: datetime.datetime) -> float | None:
    if deadline is None:
        return None
    return max(0.0, float(deadline) - (now - start).total_seconds())


def _plan_finished(
    job: Mapping[str, Any], status: Obj, active: tuple[str, ...], now: datetime.datetime
) -> JobPlan:
    status.pop("active", None)
    status.pop("ready", None)
    ttl = job.get("spec", {}).get("ttlSecondsAfterFinished")
    if ttl is None:
        return JobPlan(delete_pods=active, status=status)
    conditions = status.get("conditions")
    finished_at = parse_time(status.get("completionTime"))
    if finished_at is None:
        failed = find_condition(conditions, "Failed")
        finished_at = parse_time(failed.get("lastTransitionTime") if failed else None) or now
    remaining = float(ttl) - (now - finished_at).total_seconds()
    if remaining <= 0:
        return JobPlan(delete_pods=active, status=status, delete_job=True)
    return JobPlan(delete_pods=active, status=status, requeue_after=math.ceil(remaining * 10) / 10)
