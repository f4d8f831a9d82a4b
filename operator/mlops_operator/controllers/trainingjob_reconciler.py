"""Reconciliation of a TrainingJob: runs as Jobs (or KubeRay RayJobs), their outcomes, the ModelVersions.

The decisions (when to run, what a Job's or RayJob's state means) are pure functions in
``trainingjob_runs.py``; this module reads the Jobs, RayJobs and pods, applies those decisions
and writes the status.

``engine: Ray`` needs KubeRay's RayJob CRD. Without it (discovery does not list ``rayjobs`` in
``ray.io/v1``) no run starts and ``Ready=False, reason=KubeRayNotInstalled`` says what to
install. That is not an error kopf retries: the next timer tick looks again, so the runs start
once KubeRay is installed.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import kopf

from mlops_operator.api.trainingjob import TrainingJobSpec
from mlops_operator.controllers import trainingjob_runs
from mlops_operator.controllers.base import Context
from mlops_operator.controllers.conditions import now_iso, set_condition
from mlops_operator.controllers.invalid_spec import InvalidSpecError
from mlops_operator.controllers.operator_metrics import record_run_finished
from mlops_operator.registry.mlflow_registry import RegistryUnavailable
from mlops_operator.resources.trainingjob_children import (
    build_model_version,
    build_training_job,
    build_training_rayjob,
    run_name,
)

#: Ready's reason while engine: Ray waits for KubeRay.
KUBERAY_MISSING = "KubeRayNotInstalled"
KUBERAY_MISSING_MESSAGE = (
    "spec.engine is Ray, but this cluster does not serve KubeRay's RayJob (ray.io/v1 rayjobs): "
    "install KubeRay (helm install kuberay-operator kuberay/kuberay-operator), or set spec.engine: Job; "
    "no run starts until then"
)


def _finished(run: dict[str, Any] | None) -> bool:
    return run is not None and run.get("phase") in ("Succeeded", "Failed")


def _kind(run: dict[str, Any]) -> str:
    """The kind of a run's object: a RayJob for engine Ray, else (older records too) a Job."""
    return "RayJob" if run.get("engine") == "Ray" else "Job"


def _serves_rayjobs(ctx: Context[TrainingJobSpec], recorded: dict[str, dict[str, Any]]) -> bool:
    """Whether KubeRay's RayJobs are served, asked (discovery) only when engine Ray or a live Ray run needs it."""
    wanted = ctx.spec.engine == "Ray" or any(
        _kind(run) == "RayJob" and not _finished(run) for run in recorded.values()
    )
    return wanted and ctx.kube.serves("RayJob")


def _rayjob_runs(ctx: Context[TrainingJobSpec], recorded: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The RayJobs of the TrainingJob observed as runs (call only when RayJobs are served)."""
    rayjobs = ctx.kube.list("RayJob", ctx.namespace, label_selector=f"mlops.dev/trainingjob={ctx.name}")
    runs = []
    for rayjob in rayjobs:
        name = rayjob["metadata"]["name"]
        previous = recorded.get(name)
        if previous is not None and _finished(previous):
            runs.append(previous)
            continue
        result = None
        if trainingjob_runs.rayjob_finished(rayjob) == "Succeeded":
            # The identity tags the trainer puts on its version (trainer/tracking.py *_TAG).
            identity = {
                "mlops.dev/run-name": name,
                "mlops.dev/namespace": ctx.namespace,
                "mlops.dev/trainingjob": ctx.name,
            }
            try:
                result = ctx.registry.run_result(ctx.spec.model.name, identity)
            except RegistryUnavailable as exc:
                # The run stays unrecorded as finished: the next attempt reads the result again.
                raise kopf.TemporaryError(f"reading run {name}'s result: {exc}", delay=30) from exc
        runs.append(_settle(ctx, trainingjob_runs.observe_rayjob(rayjob, result), result))
    return runs


def _settle(
    ctx: Context[TrainingJobSpec], run: dict[str, Any], result: dict[str, Any] | None
) -> dict[str, Any]:
    """Act on a run seen finished for the first time: register its ModelVersion, or tell its failure."""
    if run["phase"] == "Succeeded":
        _register(ctx, run, result)
    elif run["phase"] == "Failed":
        ctx.event(
            "Warning", run.get("reason", "Failed"), f"run {run['name']} failed: {run.get('message', '')}"
        )
    if _finished(run):  # first seen finished: later reconciles take it as recorded
        record_run_finished(ctx.namespace, ctx.name, run)
    return run


def _observe(
    ctx: Context[TrainingJobSpec], recorded: dict[str, dict[str, Any]], rayjobs_served: bool
) -> list[dict[str, Any]]:
    """Every run: live Jobs and RayJobs observed afresh, finished ones as recorded, vanished ones settled."""
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
        if (
            run["phase"] in trainingjob_runs.ACTIVE
            and run.get("reason")
            and ((previous or {}).get("message") != run.get("message"))
        ):
            # Each failed attempt once (its message names the attempt), as a Warning.
            ctx.event("Warning", run["reason"], f"run {name}: {run['message']}")
        result = trainingjob_runs.trainer_result(pods) if run["phase"] == "Succeeded" else None
        observed[name] = _settle(ctx, run, result)
    for run in _rayjob_runs(ctx, recorded) if rayjobs_served else []:
        observed[run["name"]] = run
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


#: Annotations of a run's Job (or RayJob) saying what it was started for.
SPEC_HASH_ANNOTATION = "mlops.dev/spec-hash"
REQUEST_ANNOTATION = "mlops.dev/handled-request"
SCHEDULE_ANNOTATION = "mlops.dev/schedule-time"


def _recover_unrecorded_run(
    ctx: Context[TrainingJobSpec], status: dict[str, Any], runs: list[dict[str, Any]]
) -> None:
    """Record a run whose Job exists but whose status write was lost (the operator died between
    creating the Job and writing status): count it, and take from its Job what it was started
    for, so that the same run is not started a second time (``status`` is updated in place)."""
    newest = max(runs, key=lambda run: run.get("number", 0), default=None)
    if newest is None or newest.get("number", 0) <= int(status.get("runCount") or 0):
        return
    status["runCount"] = newest["number"]
    child = ctx.kube.get(_kind(newest), ctx.namespace, newest["name"]) or {}
    started_for = (child.get("metadata") or {}).get("annotations") or {}
    if started_for.get(SPEC_HASH_ANNOTATION):
        status["lastRunSpecHash"] = started_for[SPEC_HASH_ANNOTATION]
    if started_for.get(REQUEST_ANNOTATION):
        status["lastHandledRequest"] = started_for[REQUEST_ANNOTATION]
    if started_for.get(SCHEDULE_ANNOTATION):
        status["lastScheduleTime"] = started_for[SCHEDULE_ANNOTATION]


def _start(
    ctx: Context[TrainingJobSpec], number: int, trigger: str, started_for: dict[str, str]
) -> dict[str, Any]:
    settings = ctx.settings
    build = build_training_rayjob if ctx.spec.engine == "Ray" else build_training_job
    job = build(
        ctx.owner,
        ctx.spec,
        number=number,
        trigger=trigger,
        image=ctx.spec.image or settings.trainer_image,
        mlflow_tracking_uri=settings.mlflow_tracking_uri,
        image_pull_policy=settings.image_pull_policy,
        log_format=settings.log_format,
        mlflow_credentials_secret=settings.mlflow_credentials_secret,
        run_annotations=started_for,
    )
    ctx.kube.apply(job)
    ctx.event("Normal", "RunStarted", f"run {job['metadata']['name']} started ({trigger}) as a {job['kind']}")
    run = {"name": job["metadata"]["name"], "number": number, "trigger": trigger, "phase": "Pending"}
    if ctx.spec.engine == "Ray":
        run["engine"] = "Ray"
    return run


def _delete_runs(ctx: Context[TrainingJobSpec], names: list[str], runs: list[dict[str, Any]]) -> None:
    """Delete the Jobs or RayJobs of the named runs."""
    kinds = {run["name"]: _kind(run) for run in runs}
    for name in names:
        ctx.kube.delete(kinds.get(name, "Job"), ctx.namespace, name)


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
        detail = f": {run['message']}" if run.get("message") else ""
        conditions = set_condition(
            conditions,
            "Running",
            "True",
            run.get("reason") or "Running",  # a failed attempt's reason while the Job retries
            f"run {run['name']} is {run['phase'].lower()}{detail}",
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
    rayjobs_served = _serves_rayjobs(ctx, recorded)
    runs = _observe(ctx, recorded, rayjobs_served)
    _recover_unrecorded_run(ctx, status, runs)
    kuberay_missing = ctx.spec.engine == "Ray" and not rayjobs_served

    now = dt.datetime.now(dt.UTC)
    created = trainingjob_runs.parse_time(ctx.body["metadata"].get("creationTimestamp")) or now
    annotations = dict(ctx.body["metadata"].get("annotations") or {})
    decision = trainingjob_runs.decide(
        ctx.spec, status, runs, annotations=annotations, created=created, now=now
    )

    if kuberay_missing and decision.start:
        # Nothing to start the run with; a request stays unhandled, so it runs once KubeRay is there.
        decision.start, decision.delete_jobs, decision.handled_request = None, [], None
        decision.waiting = KUBERAY_MISSING_MESSAGE
    _delete_runs(ctx, decision.delete_jobs, runs)
    for name in decision.delete_jobs:
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
        started_for = {SPEC_HASH_ANNOTATION: trainingjob_runs.spec_hash(ctx.spec)}
        if decision.handled_request:
            started_for[REQUEST_ANNOTATION] = decision.handled_request
        if decision.schedule_time is not None:
            started_for[SCHEDULE_ANNOTATION] = now_iso(decision.schedule_time)
        runs.append(_start(ctx, number, decision.start, started_for))
        status["runCount"] = number
        status["lastRunSpecHash"] = started_for[SPEC_HASH_ANNOTATION]
        if decision.handled_request:
            status["lastHandledRequest"] = decision.handled_request
    if decision.schedule_time is not None:
        status["lastScheduleTime"] = now_iso(decision.schedule_time)
    if decision.next_schedule_time is not None and not ctx.spec.suspend:
        status["nextScheduleTime"] = now_iso(decision.next_schedule_time)
    else:
        status.pop("nextScheduleTime", None)

    kept, stale_jobs = trainingjob_runs.prune(runs, ctx.spec)
    _delete_runs(ctx, stale_jobs, runs)
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
    if kuberay_missing:
        status["conditions"] = set_condition(
            status["conditions"],
            "Ready",
            "False",
            KUBERAY_MISSING,
            KUBERAY_MISSING_MESSAGE,
            generation=ctx.generation,
        )
    phase = "Suspended" if ctx.spec.suspend else (newest or {}).get("phase", "Pending")
    status["phase"] = phase
    return status
