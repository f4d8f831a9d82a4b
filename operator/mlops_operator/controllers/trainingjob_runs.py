"""Training runs: what happened to them and whether to start another (pure decisions).

Observation turns a Job and its pods into a run record; :func:`decide` takes the spec, the
recorded status, the observed runs and the clock, and says which run (if any) to start and
which Jobs to delete. It reads nothing and writes nothing, so the whole CronJob-like
behaviour (schedule, missed runs, startingDeadlineSeconds, concurrencyPolicy, suspend,
manual requests, history limits) is unit-tested with a fake clock.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter

from mlops_operator.api.trainingjob import TrainingJobSpec
from mlops_operator.controllers.conditions import now_iso
from mlops_operator.resources.trainingjob_children import CONTAINER

RUN_REQUEST_ANNOTATION = "mlops.dev/run-requested-at"
RUN_TRIGGER_ANNOTATION = "mlops.dev/run-trigger"
ACTIVE = ("Pending", "Running")
#: Spec fields that change when, how often and where runs happen, not what a run trains. The
#: engine is one: the same data, estimator and seeds train the same model on a Job or on Ray
#: (tests/test_trainer_ray.py), and the default engine must not change existing runs' hashes.
_SCHEDULING_FIELDS = {
    "engine",
    "ray",
    "schedule",
    "timeZone",
    "startingDeadlineSeconds",
    "suspend",
    "concurrencyPolicy",
    "successfulRunsHistoryLimit",
    "failedRunsHistoryLimit",
    "ttlSecondsAfterFinished",
}


def spec_hash(spec: TrainingJobSpec) -> str:
    """A digest of what a run trains: editing only the schedule does not retrain."""
    relevant = {k: v for k, v in spec.to_api().items() if k not in _SCHEDULING_FIELDS}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


# --- observing runs -----------------------------------------------------------------------------


def _trainer_state(pod: dict[str, Any]) -> dict[str, Any]:
    for status in pod.get("status", {}).get("containerStatuses") or []:
        if status.get("name") == CONTAINER:
            return dict(status.get("state") or {})
    return {}


def result_in_text(text: str) -> dict[str, Any] | None:
    """The trainer's result in a text that ends with it (its last JSON line with a ``status``)."""
    for line in reversed(text.strip().splitlines()):
        try:
            parsed = json.loads(line)
        except ValueError:
            continue
        if isinstance(parsed, dict) and "status" in parsed:
            return parsed
    return None


def trainer_result(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The JSON result the trainer wrote to its termination message (newest pod first)."""
    for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "", reverse=True):
        message = (_trainer_state(pod).get("terminated") or {}).get("message") or ""
        # FallbackToLogsOnError may put log lines before it: the result is the last JSON line.
        parsed = result_in_text(message)
        if parsed is not None:
            return parsed
    return None


def _record_success(run: dict[str, Any], result: dict[str, Any] | None, missing: str) -> None:
    """A finished run's outcome from the trainer's result (``missing``: why there is none)."""
    if result and result.get("status") == "Succeeded":
        run["mlflowRunId"] = result.get("mlflowRunId")
        run["modelVersion"] = str(result.get("modelVersion"))
        run["metrics"] = {str(k): str(v) for k, v in (result.get("metrics") or {}).items()}
        run["reason"] = "Succeeded"
        run["message"] = f"registered {result.get('modelName')} version {result.get('modelVersion')}"
    else:
        run["reason"] = "ResultMissing"
        run["message"] = missing


def observe_run(job: dict[str, Any], pods: list[dict[str, Any]]) -> dict[str, Any]:
    """The run record (status.runs[] item, wire form) of one Job."""
    meta, status = job["metadata"], job.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    run: dict[str, Any] = {
        "name": meta["name"],
        "number": int(meta.get("labels", {}).get("mlops.dev/run", "0") or 0) or 1,
        "trigger": meta.get("annotations", {}).get("mlops.dev/trigger", "Create"),
        "phase": "Pending",
        "attempts": int(status.get("failed", 0))
        + int(status.get("succeeded", 0))
        + int(status.get("active", 0)),
    }
    if status.get("startTime"):
        run["startTime"] = status["startTime"]
    result = trainer_result(pods)
    if "Complete" in conditions:
        run["phase"] = "Succeeded"
        run["completionTime"] = status.get("completionTime") or conditions["Complete"].get(
            "lastTransitionTime"
        )
        _record_success(run, result, "the trainer exited 0 but left no result in its termination message")
    elif "Failed" in conditions:
        failed = conditions["Failed"]
        run["phase"] = "Failed"
        run["completionTime"] = failed.get("lastTransitionTime") or now_iso()
        run["reason"] = failed.get("reason") or "Failed"
        run["message"] = failed.get("message") or ""
        oom = any((_trainer_state(p).get("terminated") or {}).get("reason") == "OOMKilled" for p in pods)
        if result and result.get("status") == "Failed":
            # The trainer's own reason (DataValidationFailed, ...) says more than the Job's.
            run["reason"] = result.get("reason") or run["reason"]
            run["message"] = result.get("message") or run["message"]
        elif oom:
            run["reason"] = "OOMKilled"
            run["message"] = "the trainer ran out of memory: raise spec.resources.limits.memory"
        if run["reason"] == "DeadlineExceeded" and not result:
            run["message"] = f"the run exceeded activeDeadlineSeconds; {run['message']}".rstrip("; ")
    elif status.get("active"):
        run["phase"] = "Running"
    if run["phase"] in ACTIVE and int(status.get("failed", 0)):
        _record_retry(run, int(status["failed"]), result, pods)
    if run.get("message"):
        run["message"] = run["message"][:4096]  # the status field's bound
    return {k: v for k, v in run.items() if v is not None}


def _record_retry(
    run: dict[str, Any], failed: int, result: dict[str, Any] | None, pods: list[dict[str, Any]]
) -> None:
    """Why the last attempt of a run the Job still retries failed (MLflow down, say).

    Without it the run reads ``Running`` for as long as the retries last, and the reason the
    trainer gave (``MLflowUnavailable``) is only in a pod nobody looks at.
    """
    if result and result.get("status") == "Failed":
        reason, message = str(result.get("reason") or "AttemptFailed"), str(result.get("message") or "")
    elif any((_trainer_state(p).get("terminated") or {}).get("reason") == "OOMKilled" for p in pods):
        reason, message = "OOMKilled", "the trainer ran out of memory: raise spec.resources.limits.memory"
    else:
        reason, message = "AttemptFailed", "the trainer exited with an error and left no result"
    run["reason"] = reason
    run["message"] = (
        f"attempt {failed} failed ({f'{reason}: {message}' if message else reason}); the Job retries it"
    )


#: KubeRay's jobDeploymentStatus values (ray.io/v1 RayJobStatus) that mean the run is under way.
_RAY_RUNNING = ("Running", "Retrying")
#: KubeRay's failure reasons (status.reason) and what they mean to the TrainingJob's user.
_RAY_FAILURES = {
    "DeadlineExceeded": "the run exceeded activeDeadlineSeconds",
    "SubmissionFailed": "KubeRay could not submit the Ray job (the submitter failed)",
    "AppFailed": "the trainer failed on the Ray cluster",
    "JobDeploymentStatusTransitionGracePeriodExceeded": "KubeRay lost track of the Ray job",
    "Stopped": "the Ray job was stopped before it finished",
    "Failed": "the Ray job failed",
}


def rayjob_finished(rayjob: dict[str, Any]) -> str | None:
    """``Succeeded`` or ``Failed`` once KubeRay considers the RayJob done, else None (pure)."""
    status = rayjob.get("status") or {}
    deployment, job = status.get("jobDeploymentStatus") or "", status.get("jobStatus") or ""
    if deployment == "Failed":
        return "Failed"
    if deployment == "Complete":
        # Complete: the Ray job reached a terminal state; only SUCCEEDED is a success (KubeRay
        # before 1.2 also leaves a FAILED or STOPPED job as Complete).
        return "Succeeded" if job == "SUCCEEDED" else "Failed"
    return None


def observe_rayjob(rayjob: dict[str, Any], result: dict[str, Any] | None) -> dict[str, Any]:
    """The run record (status.runs[] item, wire form) of one KubeRay RayJob (pure).

    ``status.jobDeploymentStatus`` is KubeRay's view of the whole run (cluster, submission,
    retries), ``status.jobStatus`` Ray's view of the job. ``result`` is the trainer's result of
    a succeeded run (from MLflow: a Ray job's driver has no termination message). A failed
    run's reason comes from the trainer when Ray kept its output: Ray puts the failed job's last
    log lines in the message, and the trainer's last line is its result (``DataValidationFailed``
    says more than ``AppFailed``); else from KubeRay's ``status.reason``.
    """
    meta, status = rayjob["metadata"], rayjob.get("status") or {}
    deployment = status.get("jobDeploymentStatus") or ""
    run: dict[str, Any] = {
        "name": meta["name"],
        "number": int(meta.get("labels", {}).get("mlops.dev/run", "0") or 0) or 1,
        "trigger": meta.get("annotations", {}).get("mlops.dev/trigger", "Create"),
        "engine": "Ray",
        "phase": "Pending",
        "attempts": int(status.get("succeeded") or 0) + int(status.get("failed") or 0),
    }
    if status.get("startTime"):
        run["startTime"] = status["startTime"]
    finished = rayjob_finished(rayjob)
    if finished is None:
        if deployment in _RAY_RUNNING:
            run["phase"] = "Running"
            run["attempts"] += 1
            if deployment == "Retrying":
                run["message"] = (
                    f"attempt {run['attempts'] - 1} failed, retrying: {status.get('message') or ''}"
                )
        elif deployment in ("Suspending", "Suspended"):
            run["message"] = f"the RayJob is {deployment.lower()} (spec.suspend or a queue such as Kueue)"
        elif deployment:
            run["message"] = f"KubeRay: {deployment}"  # Initializing, Waiting, Scheduling, ...
    else:
        run["phase"] = finished
        run["completionTime"] = status.get("endTime") or now_iso()
        run["attempts"] = max(run["attempts"], 1)
    if finished == "Succeeded":
        _record_success(run, result, "the Ray job succeeded but no registered version carries its result")
    elif finished == "Failed":
        reason = status.get("reason") or ("Stopped" if status.get("jobStatus") == "STOPPED" else "Failed")
        message = status.get("message") or ""
        trainer = result_in_text(message) if message else None
        if trainer and trainer.get("status") == "Failed":
            run["reason"] = trainer.get("reason") or reason
            run["message"] = trainer.get("message") or message
        else:
            run["reason"] = reason
            explained = _RAY_FAILURES.get(reason)
            run["message"] = f"{explained}; {message}".rstrip("; ") if explained else message
    if run.get("message"):
        run["message"] = run["message"][:4096]  # the status field's bound
    return {k: v for k, v in run.items() if v is not None}


# --- deciding -------------------------------------------------------------------------------------


@dataclass
class Decision:
    start: str | None = None  # the trigger of the run to start, if any
    delete_jobs: list[str] = field(default_factory=list)
    handled_request: str | None = None  # the annotation value the new run answers
    schedule_time: dt.datetime | None = None  # the schedule slot the new run (or a skip) answers
    next_schedule_time: dt.datetime | None = None
    waiting: str | None = None  # why a wanted run is not started (concurrency, suspend)


def _zone(spec: TrainingJobSpec) -> dt.tzinfo:
    return ZoneInfo(spec.time_zone) if spec.time_zone else dt.UTC


def next_schedule_time(spec: TrainingJobSpec, after: dt.datetime) -> dt.datetime | None:
    if not spec.schedule:
        return None
    local = after.astimezone(_zone(spec))
    result: dt.datetime = croniter(spec.schedule, local).get_next(dt.datetime)
    return result.astimezone(dt.UTC)


def due_schedule_time(spec: TrainingJobSpec, last: dt.datetime, now: dt.datetime) -> dt.datetime | None:
    """The most recent schedule slot in (last, now], as CronJob runs only the latest missed one."""
    if not spec.schedule:
        return None
    iterator = croniter(spec.schedule, last.astimezone(_zone(spec)))
    due = None
    for _ in range(10_000):  # bounded: a schedule missed for years must not spin
        slot: dt.datetime = iterator.get_next(dt.datetime)
        if slot.astimezone(dt.UTC) > now:
            break
        due = slot.astimezone(dt.UTC)
    return due


def validate_schedule(spec: TrainingJobSpec) -> str | None:
    """An error message when the schedule or time zone cannot be used, else None."""
    if spec.schedule and not croniter.is_valid(spec.schedule):
        return f"spec.schedule: {spec.schedule!r} is not a valid cron expression"
    if spec.time_zone:
        try:
            ZoneInfo(spec.time_zone)
        except (KeyError, ValueError):
            return f"spec.timeZone: unknown time zone {spec.time_zone!r}"
    return None


def decide(
    spec: TrainingJobSpec,
    status: dict[str, Any],
    runs: list[dict[str, Any]],
    *,
    annotations: dict[str, str],
    created: dt.datetime,
    now: dt.datetime,
) -> Decision:
    """Whether to start a run now, and which Jobs to delete."""
    decision = Decision()
    active = [run for run in runs if run.get("phase") in ACTIVE]
    wanted: list[str] = []

    request = annotations.get(RUN_REQUEST_ANNOTATION)
    if request and request != status.get("lastHandledRequest"):
        wanted.append("Retrain" if annotations.get(RUN_TRIGGER_ANNOTATION) == "Retrain" else "Manual")
        decision.handled_request = request

    current_hash = spec_hash(spec)
    if status.get("lastRunSpecHash") != current_hash:
        wanted.append("SpecChange" if status.get("lastRunSpecHash") else "Create")

    last_slot = parse_time(status.get("lastScheduleTime")) or created
    due = due_schedule_time(spec, last_slot, now)
    if due is not None:
        late = (
            spec.starting_deadline_seconds is not None
            and (now - due).total_seconds() > spec.starting_deadline_seconds
        )
        decision.schedule_time = due  # recorded even when skipped, so a missed slot is not retried
        if not late:
            wanted.append("Schedule")
    decision.next_schedule_time = next_schedule_time(spec, max(now, due or now))

    if not wanted:
        return decision
    if spec.suspend:
        decision.waiting = "suspended: no new runs start while spec.suspend is true"
        decision.handled_request = None
        return decision
    if active and spec.concurrency_policy == "Forbid":
        decision.waiting = f"run {active[0]['name']} is still active (concurrencyPolicy: Forbid)"
        # Requests and spec changes wait for the active run; a schedule slot is skipped.
        decision.handled_request = None
        return decision
    if active and spec.concurrency_policy == "Replace":
        decision.delete_jobs = [run["name"] for run in active]
    decision.start = wanted[0]
    return decision


def prune(runs: list[dict[str, Any]], spec: TrainingJobSpec) -> tuple[list[dict[str, Any]], list[str]]:
    """Runs to keep in status (newest first) and the finished Jobs beyond the history limits."""
    ordered = sorted(runs, key=lambda run: run.get("number", 0), reverse=True)
    kept: list[dict[str, Any]] = []
    dropped: list[dict[str, Any]] = []
    succeeded = failed = 0
    for run in ordered:
        phase = run.get("phase")
        if phase == "Succeeded":
            succeeded += 1
            keep = succeeded <= spec.successful_runs_history_limit
        elif phase == "Failed":
            failed += 1
            keep = failed <= spec.failed_runs_history_limit
        else:
            keep = True
        (kept if keep else dropped).append(run)
    return kept, [run["name"] for run in dropped]
