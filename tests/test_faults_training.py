"""Faults during a training run, in the sandbox: the operator killed between a child and its status,
MLflow down during training, registration and validation.

The API server and the runtime run in this process (``sandbox``), so a test can hold a status
write inside the API server (kmock's reaction DSL, see ``kmock_adapter.py``); the operator, the
trainer pods and MLflow are real processes. Each case ends with the same promise: once the fault
is gone the run converges, with one Job, one ModelVersion and one registered MLflow version, and
the fault was told in a condition and an Event with a reason.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from mlops_operator.controllers import trainingjob_runs
from mlops_operator.resources.trainingjob_children import model_version_name, run_name
from tests.fixtures_sandbox import (
    Api,
    OperatorProcess,
    Sandbox,
    start_mlflow,
    stop_mlflow,
    wait_for,
    wait_for_condition,
)

ROOT = Path(__file__).resolve().parent.parent


def _trainingjob(name: str, model: str, **changes: Any) -> dict[str, Any]:
    """The example's iris TrainingJob, without its grid search and schedule (a run of seconds)."""
    manifest: dict[str, Any] = yaml.safe_load((ROOT / "examples/iris-trainingjob.yaml").read_text())
    manifest["metadata"]["name"] = name
    manifest["spec"]["model"]["name"] = model
    manifest["spec"]["estimator"].pop("search")
    manifest["spec"].pop("schedule")
    manifest["spec"].update(changes)
    return manifest


def _condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for condition in ((obj or {}).get("status") or {}).get("conditions") or []:
        if condition["type"] == type_:
            return dict(condition)
    return {}


def _registered_versions(sandbox: Sandbox, model: str) -> list[dict[str, Any]]:
    """The versions MLflow holds of ``model`` (REST: no MLflow client state in this process)."""
    response = httpx.get(
        f"{sandbox.mlflow_uri}/api/2.0/mlflow/model-versions/search",
        params={"filter": f"name='{model}'"},
        timeout=10,
    )
    response.raise_for_status()
    versions: list[dict[str, Any]] = response.json().get("model_versions", [])
    return versions


def _events_about(api: Api, *names: str) -> list[dict[str, Any]]:
    return [e for e in api.list("Event") if e.get("involvedObject", {}).get("name") in names]


def _assert_one_of_everything(sandbox: Sandbox, name: str, model: str) -> dict[str, Any]:
    """One Job, one ModelVersion, one registered version, one run in status; the TrainingJob."""
    api = sandbox.api
    jobs = api.list("Job", labels=f"mlops.dev/trainingjob={name}")
    mvs = api.list("ModelVersion", labels=f"mlops.dev/trainingjob={name}")
    versions = _registered_versions(sandbox, model)
    assert [j["metadata"]["name"] for j in jobs] == [run_name(name, 1)], "a Job was duplicated"
    assert len(mvs) == 1, [m["metadata"]["name"] for m in mvs]
    assert len(versions) == 1, [(v["version"], v.get("tags")) for v in versions]
    tags = {t["key"]: t["value"] for t in versions[0].get("tags", [])}
    assert tags.get("mlops.dev/run-name") == run_name(name, 1), tags
    tj = api.get("TrainingJob", name) or {}
    status = tj["status"]
    assert status["runCount"] == 1 and [r["name"] for r in status["runs"]] == [run_name(name, 1)], status
    assert status["lastRun"]["phase"] == "Succeeded", status["lastRun"]
    assert status["lastRun"]["modelVersion"] == versions[0]["version"]
    assert status["lastRun"]["modelVersionName"] == status["latestModelVersion"] == mvs[0]["metadata"]["name"]
    assert _condition(tj, "Ready")["status"] == "True"
    return tj


# --- the operator killed between a child and its status ------------------------------------------


class StatusWriteHold:
    """Holds chosen status writes inside the API server until :meth:`release`, then fails them.

    Each hold point is a kind and a test on the merge patch's ``status`` (what the operator is about
    to record). The first write that matches a point is held; the point is then spent, so the
    restarted operator's same write goes through. A held write never lands (it is answered 503
    once released, after the operator that sent it is dead): the kill falls between the child
    and its status every time, not by the luck of timing.
    """

    def __init__(
        self, sandbox: Sandbox, points: dict[str, tuple[str, str, Callable[[dict[str, Any]], bool]]]
    ):
        self.thread = sandbox.apiserver
        self.points = points  # point -> (plural, object name, test on the body)
        self.held: list[str] = []
        self.gate: asyncio.Event | None = None
        self.reaction: Any = None

    def _matches(self, request: Any) -> bool:
        if request.method != "PATCH" or request.subresource != "status" or request.resource is None:
            return False
        for point, (plural, name, test) in self.points.items():
            data = request.data if isinstance(request.data, dict) else {}
            body = data.get("status") if isinstance(data.get("status"), dict) else {}
            if (
                point not in self.held
                and request.resource.plural == plural
                and request.name == name
                and test(body)
            ):
                self.held.append(point)
                return True
        return False

    async def _hold(self) -> int:
        assert self.gate is not None
        await self.gate.wait()
        return 503

    def install(self) -> None:
        def install() -> None:
            self.gate = asyncio.Event()
            self.reaction = self.thread.emulator[self._matches] << self._hold

        self.thread.call(install)

    def uninstall(self) -> None:
        """Fail what is held and take the reaction away: the API server answers as before."""
        self.release()
        self.thread.call(lambda: self.thread.emulator._payloads.remove(self.reaction))

    def release(self) -> None:
        """Answer the held writes (503), and hold the next matching ones again."""

        def release() -> None:
            assert self.gate is not None
            self.gate.set()
            self.gate = asyncio.Event()

        self.thread.call(release)


def _kill_at_every_point(
    api: Api,
    operator: OperatorProcess,
    hold: StatusWriteHold,
    done: dict[str, Callable[[], bool]],
    name: str,
    model: str,
) -> list[list[str]]:
    """Create the TrainingJob; at each held status write, check what it records was done (the child
    exists, MLflow has the tags), SIGKILL the operator, fail the held write, start a new operator;
    the points held at each kill."""
    api.create(_trainingjob(name, model))
    kills: list[list[str]] = []
    # Until every point was killed at: a point held while the previous kill was handled (the
    # restarted operator can get there first) is killed at in the next round.
    while (seen := sum(len(k) for k in kills)) < len(hold.points):
        wait_for(
            lambda seen=seen: len(hold.held) > seen,
            timeout=180,
            message=f"a held status write after {hold.held}",
        )
        now_held = hold.held[seen:]
        for point in now_held:
            assert done[point](), f"{point}: what the held status records should be done already"
        operator.kill()  # SIGKILL while the status write is held: it never lands
        hold.release()
        kills.append(list(now_held))
        operator.start()
    return kills


@pytest.mark.slow
def test_a_training_run_converges_without_duplicates_when_the_operator_is_killed_at_every_step(
    sandbox_with_mlflow: Sandbox, operator: OperatorProcess
) -> None:
    sandbox, api = sandbox_with_mlflow, sandbox_with_mlflow.api
    name, model = "killed", "iris-killed"
    points: dict[str, tuple[str, str, Callable[[dict[str, Any]], bool]]] = {
        "Job created, run not recorded": ("trainingjobs", name, lambda body: "runCount" in body),
        "Job running, not recorded": (
            "trainingjobs", name, lambda body: (body.get("lastRun") or {}).get("phase") == "Running",
        ),
        "ModelVersion created, run's success not recorded": (
            "trainingjobs", name, lambda body: "latestModelVersion" in body,
        ),
        "MLflow tags written, verdict not recorded": (
            "modelversions", model_version_name(model, "1"), lambda body: body.get("phase") in ("Validated", "Rejected"),
        ),
    }  # fmt: skip

    def validated_in_mlflow() -> bool:
        tags = {t["key"]: t["value"] for v in _registered_versions(sandbox, model) for t in v.get("tags", [])}
        return tags.get("mlops.dev/validated") == "true"

    done = {
        "Job created, run not recorded": lambda: api.get("Job", run_name(name, 1)) is not None,
        "Job running, not recorded": lambda: bool(
            (api.get("Job", run_name(name, 1)) or {})["status"].get("active")
        ),
        "ModelVersion created, run's success not recorded": (
            lambda: api.get("ModelVersion", model_version_name(model, "1")) is not None
        ),
        "MLflow tags written, verdict not recorded": validated_in_mlflow,
    }
    hold = StatusWriteHold(sandbox, points)
    hold.install()
    try:
        kills = _kill_at_every_point(api, operator, hold, done, name, model)
    finally:
        hold.uninstall()
    restarted = time.monotonic()
    assert sorted(p for k in kills for p in k) == sorted(points)

    wait_for_condition(api, "ModelVersion", model_version_name(model, "1"), "Validated", "True", timeout=120)
    wait_for(
        lambda: (
            (api.get("TrainingJob", name) or {}).get("status", {}).get("lastRun", {}).get("phase")
            == "Succeeded"
        ),
        timeout=60,
        message="the run recorded as Succeeded",
    )
    _assert_one_of_everything(sandbox, name, model)
    print(
        f"{len(kills)} kills at {kills}; converged {time.monotonic() - restarted:.1f}s after the last restart"
    )
    # Every Event once (a restarted operator redoes the write it was killed in, not its Events).
    told = collections.Counter(
        (e["involvedObject"]["name"], e["reason"], e["message"])
        for e in _events_about(api, name, model_version_name(model, "1"))
    )
    assert {reason for _, reason, _ in told} >= {"RunStarted", "ModelVersionCreated", "GatesPassed"}, told
    assert all(count == 1 for count in told.values()), told


# --- MLflow down ----------------------------------------------------------------------------------


def _retried_job(failed: int, message: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    job = {
        "metadata": {"name": "outage-1", "labels": {"mlops.dev/run": "1"}},
        "status": {"active": 1, "failed": failed, "startTime": "2026-01-01T00:00:00Z"},
    }
    failed_pod = {
        "metadata": {"name": "outage-1-a", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "status": {
            "containerStatuses": [
                {
                    "name": "trainer",
                    "state": {"terminated": {"exitCode": 1, "reason": "Error", "message": message}},
                }
            ]
        },
    }
    running_pod = {
        "metadata": {"name": "outage-1-b", "creationTimestamp": "2026-01-01T00:00:09Z"},
        "status": {"containerStatuses": [{"name": "trainer", "state": {"running": {}}}]},
    }
    return job, [failed_pod, running_pod]


@pytest.mark.parametrize(
    ("message", "reason", "words"),
    [
        (
            '{"status": "Failed", "reason": "MLflowUnavailable", "message": "cannot reach MLflow at http://m:5000"}',
            "MLflowUnavailable",
            "attempt 2 failed (MLflowUnavailable: cannot reach MLflow at http://m:5000); the Job retries it",
        ),
        ("Traceback (most recent call last): ...", "AttemptFailed", "attempt 2 failed (AttemptFailed: "),
    ],
    ids=["trainer-reason", "no-result"],
)
def test_a_run_the_job_retries_says_why_its_last_attempt_failed(
    message: str, reason: str, words: str
) -> None:
    job, pods = _retried_job(2, message)
    run = trainingjob_runs.observe_run(job, pods)
    assert (run["phase"], run["reason"]) == ("Running", reason), run
    assert words in run["message"], run["message"]


def test_a_run_without_failed_attempts_has_no_reason() -> None:
    job, pods = _retried_job(0, "")
    run = trainingjob_runs.observe_run(job, pods[1:])
    assert run["phase"] == "Running" and "reason" not in run and "message" not in run, run


@pytest.mark.slow
def test_mlflow_down_during_training_registration_and_validation_is_told_and_then_converges(
    sandbox_with_mlflow: Sandbox, operator: OperatorProcess
) -> None:
    sandbox, api = sandbox_with_mlflow, sandbox_with_mlflow.api
    name, model = "outage", "iris-outage"
    stop_mlflow(sandbox)
    try:
        # Training: the trainer cannot reach MLflow and exits 1; the Job retries; the
        # TrainingJob says why it is still running, and an Event does too.
        api.create(_trainingjob(name, model, backoffLimit=12))
        tj = wait_for(
            lambda: (
                (t := api.get("TrainingJob", name))
                and _condition(t, "Running").get("reason") == "MLflowUnavailable"
                and t
            ),
            timeout=120,
            message="the Running condition to say MLflow is unavailable",
        )
        running = _condition(tj, "Running")
        assert running["status"] == "True" and "MLflow" in running["message"], running
        assert "retries" in running["message"] and run_name(name, 1) in running["message"], running
        warnings = [e for e in _events_about(api, name) if e["reason"] == "MLflowUnavailable"]
        assert warnings and warnings[0]["type"] == "Warning" and "attempt 1 failed" in warnings[0]["message"]
    finally:
        # MLflow comes back while no operator runs (killed), and goes away again once the
        # trainer registered: the next operator finds a finished run with MLflow down.
        operator.kill()
        start_mlflow(sandbox)
        started = time.monotonic()
    wait_for(
        lambda: any(
            c["type"] == "Complete" and c["status"] == "True"
            for c in ((api.get("Job", run_name(name, 1)) or {}).get("status") or {}).get("conditions") or []
        ),
        timeout=180,
        message="the retried attempt to succeed",
    )
    print(f"the retried attempt succeeded {time.monotonic() - started:.1f}s after MLflow answered again")
    stop_mlflow(sandbox)
    operator.start()

    # Registration needs no MLflow (the trainer's result is in its termination message);
    # validation does: the ModelVersion exists, its Ready condition and an Event say why it waits.
    mv_name = model_version_name(model, "1")
    mv = wait_for(
        lambda: (
            (m := api.get("ModelVersion", mv_name))
            and _condition(m, "Ready").get("status") == "Unknown"
            and m
        ),
        timeout=60,
        message="the ModelVersion waiting for MLflow",
    )
    ready = _condition(mv, "Ready")
    assert (
        ready["reason"] == "RegistryUnavailable"
        and str(sandbox.mlflow_uri).split("//")[1] in ready["message"]
    ), ready
    assert "phase" not in mv.get("status", {}) or mv["status"]["phase"] != "Validated"
    assert any(
        e["reason"] == "RegistryUnavailable" and e["type"] == "Warning" for e in _events_about(api, mv_name)
    )
    tj = api.get("TrainingJob", name) or {}
    assert tj["status"]["lastRun"]["phase"] == "Succeeded" and tj["status"]["latestModelVersion"] == mv_name

    start_mlflow(sandbox)
    started = time.monotonic()
    wait_for_condition(api, "ModelVersion", mv_name, "Validated", "True", timeout=120)
    print(f"the ModelVersion was Validated {time.monotonic() - started:.1f}s after MLflow answered again")
    tj = _assert_one_of_everything(sandbox, name, model)
    assert tj["status"]["lastRun"]["attempts"] >= 2, tj["status"]["lastRun"]  # it was retried
    assert _condition(api.get("ModelVersion", mv_name), "Ready")["reason"] == "Resolved"
