"""Reconciliation of a TrainingJob: runs as Jobs, their outcomes, the ModelVersions they produce.

The decisions (when to run, what a Job's state means) are pure functions in ``trainingjob_runs.py``; this
module reads the Jobs and pods, applies those decisions and writes the status.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from mlops_operator.api.trainingjob import TrainingJobSpec
from mlops_operator.controllers import trainingjob_runs
from mlops_operator.controllers.base import Context
from mlops_operator.controllers.conditions import now_iso, set_condition
from mlops_operator.controllers.invalid_spec import InvalidSpecError
from mlops_operator.controllers.operator_metrics import record_run_finished
from mlops_operator.resources.trainingjob_children import build_model_version, build_training_job, run_name


def _finished(run: dict[str, Any] | None) -> bool:
    return run is not None and run.get("phase") in ("Succeeded", "Failed")


def _observe(ctx: Context[TrainingJobSpec], recorded: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every run: live Jobs observed afresh, finished ones as recorded, vanished ones settled."""
    jobs = ctx.kube.list("Job", ctx.namespace, label_selector=f"mlops.dev/trainingjob={ctx.name}")
    observed: dict[str, dict[str, Any]] = {}
    for job in jobs:
        name = job["metadata"]["name"]
        previous = recorded.get(name)
        if _finished(previous):
            observed[name] = previous  # type: ignore[assignment]
            continue
        pods = ctx.kube.list("Pod", ctx.namespace, label_selector=f"job-name={name}")
        run = trainingjob_runs.observe_run(job, pods)
        if run["phase"] == "Succeeded":
            _register(ctx, run, trainingjob_runs.trainer_result(pods))
        elif run["phase"] == "Failed":
            ctx.event("Warning", run.get("reason", "Failed"), f"run {name} failed: {run.get('message', '')}")
        if _finished(run):  # first seen finished: later reconciles take it as recorded
            record_run_finished(ctx.namespace, ctx.name, run)
        observed[name] = run
    for name, previous in recorded.items():
        if name in observed:
            continue
        if previous.get("phase") in trainingjob_runs.ACTIVE:
            previous = {
                **previous,
                "phase": "Failed",
                "reason": "JobDeleted",
                "message": f"the Job {name} was deleted before it finished",
                "completionTime": now_iso(),
            }
            record_run_finished(ctx.namespace, ctx.name, previous)
        observed[name] = previous  # a finished Job removed by its TTL keeps its record
    return list(observed.values())


def _register(ctx: Context[TrainingJobSpec], run: dict[str, Any], result: dict[str, Any] | None) -> None:
    """Create the ModelVersion of a run that just succeeded."""
    if not result or result.get("status") != "Succeeded" or not result.get("modelVersion"):
        ctx.event("Warning", "ResultMissing", f"run {run['name']} succeeded but left no trainer result")
        return
    model_version = build_model_version(ctx.owner, ctx.spec, result, run["name"])
    _, created = ctx.kube.apply(model_version)
    run["modelVersionName"] = model_version["metadata"]["name"]
    if created:
        ctx.event(
            "Normal",
            "ModelVersionCreated",
            f"run {run['name']} registered {ctx.spec.model.name} version {result['modelVersion']}: "
            f"ModelVersion {model_version['metadata']['name']}",
        )


def _start(ctx: Context[TrainingJobSpec], number: int, trigger: str) -> dict[str, Any]:
    settings = ctx.settings
    job = build_training_job(
        ctx.owner,
        ctx.spec,
        number=number,
        trigger=trigger,
        image=ctx.spec.image or settings.trainer_image,
        mlflow_tracking_uri=settings.mlflow_tracking_uri,
        image_pull_policy=settings.image_pull_policy,
        log_format=settings.log_format,
    )
    ctx.kube.apply(job)
    ctx.event("Normal", "RunStarted", f"run {job['metadata']['name']} started ({trigger})")
    return {"name": job["metadata"]["name"], "number": number, "trigger": trigger, "phase": "Pending"}


def _conditions(
    status: dict[str, Any], runs: list[dict[str, Any]], waiting: str | None, generation: int | None
) -> list[dict[str, Any]]:
    conditions = status.get("conditions")
    active = [run for run in runs if run.get("phase") in trainingjob_runs.ACTIVE]
    finished = [run for run in runs if _finished(run)]
    last = max(finished, key=lambda run: run.get("number", 0)) if finished else status.get("lastRun")
    last = last if _finished(last) else None
    if active:
        run = active[0]
        conditions = set_condition(
            conditions,
            "Running",
            "True",
            "Running",
            f"run {run['name']} is {run['phase'].lower()}",
            generation=generation,
        )
    else:
        conditions = set_condition(
            conditions, "Running", "False", "Idle", waiting or "no run is active", generation=generation
        )
    if last is None:
        conditions = set_condition(
            conditions,
            "Ready",
            "Unknown",
            "NoRunYet",
            waiting or "the first run has not finished",
            generation=generation,
        )
        return conditions
    message = f"run {last['name']}: {last.get('message') or last.get('reason', '')}"
    if last["phase"] == "Succeeded":
        conditions = set_condition(
            conditions, "Succeeded", "True", "Succeeded", message, generation=generation
        )
        conditions = set_condition(conditions, "Failed", "False", "Succeeded", message, generation=generation)
        conditions = set_condition(conditions, "Ready", "True", "Succeeded", message, generation=generation)
    else:
        reason = last.get("reason") or "Failed"
        conditions = set_condition(conditions, "Succeeded", "False", reason, message, generation=generation)
        conditions = set_condition(conditions, "Failed", "True", reason, message, generation=generation)
        conditions = set_condition(conditions, "Ready", "False", reason, message, generation=generation)
    return conditions


def reconcile(ctx: Context[TrainingJobSpec]) -> dict[str, Any]:
    """Observe the runs, start one if due, prune history, and report."""
    problem = trainingjob_runs.validate_schedule(ctx.spec)
    if problem:
        raise InvalidSpecError(problem)
    status = dict(ctx.status)
    recorded = {run["name"]: dict(run) for run in status.get("runs") or []}
    last_run = status.get("lastRun")
    if last_run and last_run.get("name") not in recorded:
        recorded[last_run["name"]] = dict(last_run)
    runs = _observe(ctx, recorded)

    now = dt.datetime.now(dt.UTC)
    created = trainingjob_runs.parse_time(ctx.body["metadata"].get("creationTimestamp")) or now
    annotations = dict(ctx.body["metadata"].get("annotations") or {})
    decision = trainingjob_runs.decide(
        ctx.spec, status, runs, annotations=annotations, created=created, now=now
    )

    for name in decision.delete_jobs:
        ctx.kube.delete("Job", ctx.namespace, name)
        for run in runs:
            if run["name"] == name:
                run.update(
                    phase="Failed",
                    reason="Replaced",
                    message="replaced by a newer run (concurrencyPolicy: Replace)",
                    completionTime=now_iso(now),
                )
    if decision.start:
        number = int(status.get("runCount") or 0) + 1
        runs = [run for run in runs if run["name"] != run_name(ctx.name, number)]
        runs.append(_start(ctx, number, decision.start))
        status["runCount"] = number
        status["lastRunSpecHash"] = trainingjob_runs.spec_hash(ctx.spec)
        if decision.handled_request:
            status["lastHandledRequest"] = decision.handled_request
    if decision.schedule_time is not None:
        status["lastScheduleTime"] = now_iso(decision.schedule_time)
    if decision.next_schedule_time is not None and not ctx.spec.suspend:
        status["nextScheduleTime"] = now_iso(decision.next_schedule_time)
    else:
        status.pop("nextScheduleTime", None)

    kept, stale_jobs = trainingjob_runs.prune(runs, ctx.spec)
    for name in stale_jobs:
        ctx.kube.delete("Job", ctx.namespace, name)
    newest = max(runs, key=lambda run: run.get("number", 0)) if runs else None
    status["runs"] = kept
    if newest is not None:
        status["lastRun"] = newest
    succeeded = [run for run in runs if run.get("modelVersionName")]
    if succeeded:
        status["latestModelVersion"] = max(succeeded, key=lambda run: run.get("number", 0))[
            "modelVersionName"
        ]
    status["conditions"] = _conditions(status, runs, decision.waiting, ctx.generation)
    phase = "Suspended" if ctx.spec.suspend else (newest or {}).get("phase", "Pending")
    status["phase"] = phase
    return status
