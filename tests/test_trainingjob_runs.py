"""TrainingJob: the Job builder (golden) and the CronJob-like run decisions, with a fake clock."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlops_operator.api.trainingjob import TrainingJobSpec
from mlops_operator.controllers import trainingjob_runs
from mlops_operator.resources.trainingjob_children import build_model_version, build_training_job
from tests.golden import assert_golden

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = yaml.safe_load((ROOT / "examples/iris-trainingjob.yaml").read_text())
OWNER = {
    "apiVersion": "mlops.dev/v1alpha1",
    "kind": "TrainingJob",
    "metadata": {"name": "iris-train", "namespace": "default", "uid": "uid-1"},
}
CREATED = dt.datetime(2026, 1, 5, 2, 0, tzinfo=dt.UTC)  # a Monday, 02:00 UTC


def spec(**changes: Any) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate({**EXAMPLE["spec"], **changes})


def test_job_golden() -> None:
    job = build_training_job(
        OWNER,
        spec(),
        number=3,
        trigger="Schedule",
        image="ghcr.io/mlops-operator/trainer:0.1.0",
        mlflow_tracking_uri="http://mlflow:5000",
    )
    assert_golden("trainingjob-job.yaml", job)


def test_job_is_restricted_and_fails_fast_on_permanent_errors() -> None:
    job = build_training_job(OWNER, spec(), number=1, trigger="Create", image="i", mlflow_tracking_uri="u")
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert job["metadata"]["name"] == "iris-train-1"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    rule = job["spec"]["podFailurePolicy"]["rules"][0]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["values"] == [3]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert TrainingJobSpec.model_validate_json(env["MLOPS_TRAININGJOB_SPEC"]) == spec()


def test_dataset_credentials_come_from_secrets_only() -> None:
    with_secret = spec(
        dataset={
            **EXAMPLE["spec"]["dataset"],
            "env": [{"name": "AWS_ACCESS_KEY_ID", "secretKeyRef": {"name": "s3", "key": "id"}}],
        }
    )
    job = build_training_job(
        OWNER, with_secret, number=1, trigger="Create", image="i", mlflow_tracking_uri="u"
    )
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "id"}}} in env


def test_model_version_from_result() -> None:
    result = {
        "status": "Succeeded",
        "mlflowRunId": "abc",
        "modelName": "iris-classifier",
        "modelVersion": "7",
        "sha256": "a" * 64,
        "metrics": {"accuracy": "0.9667", "f1": "0.9665"},
        "dataset": {"uri": "sklearn://iris", "sha256": "b" * 64, "rows": 150},
        "params": {"C": 1.0},
        "estimator": "sklearn.linear_model.LogisticRegression",
    }
    mv = build_model_version(OWNER, spec(), result, "iris-train-3")
    assert mv["metadata"]["name"] == "iris-classifier-v7"
    assert "ownerReferences" not in mv["metadata"]
    assert mv["spec"]["model"] == {"name": "iris-classifier", "version": "7"}
    assert mv["spec"]["gates"] == [
        {"metric": "accuracy", "min": "0.9"},
        {"metric": "accuracy", "minDeltaVsProduction": "0"},
    ]
    assert mv["spec"]["lineage"]["dataset"] == {"uri": "sklearn://iris", "sha256": "b" * 64, "rows": 150}
    assert mv["spec"]["modelCard"]["limitations"].startswith("Trained on 150 flowers")


def _job(conditions: list[dict[str, str]] | None = None, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "iris-train-2",
            "labels": {"mlops.dev/run": "2"},
            "annotations": {"mlops.dev/trigger": "Manual"},
        },
        "status": {**status, "conditions": conditions or []},
    }


def _pod(message: str, reason: str = "Completed") -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "status": {
            "containerStatuses": [
                {
                    "name": "trainer",
                    "state": {"terminated": {"exitCode": 3, "reason": reason, "message": message}},
                }
            ]
        },
    }


def test_observe_failed_run_carries_the_trainers_reason() -> None:
    message = '{"status": "Failed", "reason": "DataValidationFailed", "message": "column species is missing"}'
    job = _job(
        [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": "exit 3"}], failed=1
    )
    run = trainingjob_runs.observe_run(job, [_pod("Traceback...\n" + message, "Error")])
    assert (run["phase"], run["reason"], run["message"]) == (
        "Failed",
        "DataValidationFailed",
        "column species is missing",
    )
    assert (run["number"], run["trigger"], run["attempts"]) == (2, "Manual", 1)


@pytest.mark.parametrize(
    ("condition", "pod_reason", "expected"),
    [
        ({"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}, "Error", "DeadlineExceeded"),
        ({"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}, "OOMKilled", "OOMKilled"),
        (
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"},
            "Error",
            "BackoffLimitExceeded",
        ),
    ],
    ids=["deadline", "oom", "backoff"],
)
def test_observe_failed_run_without_result(condition: dict[str, str], pod_reason: str, expected: str) -> None:
    run = trainingjob_runs.observe_run(_job([condition], failed=3), [_pod("", pod_reason)])
    assert run["reason"] == expected and run["phase"] == "Failed"


def test_observe_succeeded_run() -> None:
    message = '{"status": "Succeeded", "modelName": "iris-classifier", "modelVersion": 4, "mlflowRunId": "r", "metrics": {"accuracy": "0.97"}}'
    run = trainingjob_runs.observe_run(
        _job([{"type": "Complete", "status": "True"}], succeeded=1), [_pod(message)]
    )
    assert (
        run["phase"] == "Succeeded" and run["modelVersion"] == "4" and run["metrics"] == {"accuracy": "0.97"}
    )


def _decide(
    s: TrainingJobSpec,
    status: dict[str, Any],
    runs: list[dict[str, Any]] | None = None,
    now: dt.datetime = CREATED,
    **annotations: str,
) -> trainingjob_runs.Decision:
    return trainingjob_runs.decide(s, status, runs or [], annotations=annotations, created=CREATED, now=now)


def test_first_run_on_creation_then_nothing_until_something_changes() -> None:
    s = spec(schedule=None)
    first = _decide(s, {})
    assert first.start == "Create"
    settled = {"lastRunSpecHash": trainingjob_runs.spec_hash(s)}
    assert _decide(s, settled, now=CREATED + dt.timedelta(days=30)).start is None


def test_spec_change_retrains_but_schedule_change_does_not() -> None:
    s = spec(schedule=None)
    status = {"lastRunSpecHash": trainingjob_runs.spec_hash(s)}
    assert _decide(spec(schedule="@daily", suspend=False), status).start is None
    changed = spec(schedule=None, estimator={**EXAMPLE["spec"]["estimator"], "params": {"max_iter": 900}})
    assert _decide(changed, status).start == "SpecChange"


def test_schedule_runs_latest_missed_slot_only() -> None:
    s = spec(schedule="0 3 * * *")
    status = {"lastRunSpecHash": trainingjob_runs.spec_hash(s)}
    assert _decide(s, status, now=CREATED + dt.timedelta(minutes=59)).start is None
    # Three days of missed slots: one run, for the latest slot.
    decision = _decide(s, status, now=dt.datetime(2026, 1, 8, 3, 0, 30, tzinfo=dt.UTC))
    assert decision.start == "Schedule"
    assert decision.schedule_time == dt.datetime(2026, 1, 8, 3, 0, tzinfo=dt.UTC)
    assert decision.next_schedule_time == dt.datetime(2026, 1, 9, 3, 0, tzinfo=dt.UTC)


def test_starting_deadline_skips_a_slot_that_is_too_late() -> None:
    s = spec(schedule="0 3 * * *", startingDeadlineSeconds=60)
    status = {"lastRunSpecHash": trainingjob_runs.spec_hash(s)}
    late = _decide(s, status, now=dt.datetime(2026, 1, 5, 3, 5, tzinfo=dt.UTC))
    assert late.start is None and late.schedule_time == dt.datetime(2026, 1, 5, 3, 0, tzinfo=dt.UTC)


def test_time_zone_moves_the_slot() -> None:
    s = spec(schedule="0 3 * * *", timeZone="Europe/Berlin")  # 03:00 in Berlin is 02:00 UTC in winter
    status = {"lastRunSpecHash": trainingjob_runs.spec_hash(s)}
    decision = _decide(s, status, now=dt.datetime(2026, 1, 6, 2, 0, 10, tzinfo=dt.UTC))
    assert decision.start == "Schedule" and decision.schedule_time == dt.datetime(
        2026, 1, 6, 2, 0, tzinfo=dt.UTC
    )


def test_manual_request_runs_once() -> None:
    s = spec(schedule=None)
    status = {"lastRunSpecHash": trainingjob_runs.spec_hash(s)}
    decision = _decide(s, status, **{trainingjob_runs.RUN_REQUEST_ANNOTATION: "2026-01-05T02:10:00Z"})
    assert decision.start == "Manual" and decision.handled_request == "2026-01-05T02:10:00Z"
    handled = {**status, "lastHandledRequest": "2026-01-05T02:10:00Z"}
    assert (
        _decide(s, handled, **{trainingjob_runs.RUN_REQUEST_ANNOTATION: "2026-01-05T02:10:00Z"}).start is None
    )
    retrain = _decide(
        s,
        status,
        **{trainingjob_runs.RUN_REQUEST_ANNOTATION: "x", trainingjob_runs.RUN_TRIGGER_ANNOTATION: "Retrain"},
    )
    assert retrain.start == "Retrain"


@pytest.mark.parametrize(
    ("policy", "start", "deletes"),
    [("Forbid", None, []), ("Allow", "Manual", []), ("Replace", "Manual", ["iris-train-1"])],
    ids=["forbid", "allow", "replace"],
)
def test_concurrency_policy(policy: str, start: str | None, deletes: list[str]) -> None:
    s = spec(schedule=None, concurrencyPolicy=policy)
    status = {"lastRunSpecHash": trainingjob_runs.spec_hash(s)}
    active = [{"name": "iris-train-1", "number": 1, "phase": "Running"}]
    decision = _decide(s, status, active, **{trainingjob_runs.RUN_REQUEST_ANNOTATION: "now"})
    assert (decision.start, decision.delete_jobs) == (start, deletes)
    if policy == "Forbid":
        assert decision.handled_request is None and "still active" in (decision.waiting or "")


def test_suspend_starts_nothing() -> None:
    decision = _decide(spec(suspend=True), {}, **{trainingjob_runs.RUN_REQUEST_ANNOTATION: "now"})
    assert decision.start is None and "suspend" in (decision.waiting or "")


def test_history_limits() -> None:
    s = spec(successfulRunsHistoryLimit=1, failedRunsHistoryLimit=1)
    runs = [
        {"name": "j1", "number": 1, "phase": "Succeeded"},
        {"name": "j2", "number": 2, "phase": "Failed"},
        {"name": "j3", "number": 3, "phase": "Succeeded"},
        {"name": "j4", "number": 4, "phase": "Failed"},
        {"name": "j5", "number": 5, "phase": "Running"},
    ]
    kept, dropped = trainingjob_runs.prune(runs, s)
    assert [run["name"] for run in kept] == ["j5", "j4", "j3"]
    assert dropped == ["j2", "j1"]


def test_invalid_schedule_and_zone_are_reported() -> None:
    assert "spec.schedule" in (trainingjob_runs.validate_schedule(spec(schedule="every monday")) or "")
    assert "spec.timeZone" in (trainingjob_runs.validate_schedule(spec(timeZone="Mars/Olympus")) or "")
