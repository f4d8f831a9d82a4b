"""The rollout state machine with a fake clock and simulated servers: no API server.

A :class:`World` plays the controller: it keeps ``status.rollout`` and ``status.history``
exactly as a decision returns them (through JSON, as the API server would store them), sends
simulated traffic by the decided weights into per-version cumulative counters, and calls
:func:`decide_rollout` again.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from mlops_operator.api.inferenceservice import HistoryEntry, InferenceServiceSpec, RolloutStatus
from mlops_operator.rollout.canary_analysis import VersionCounters
from mlops_operator.rollout.rollout_plan import (
    Command,
    RolloutDecision,
    RolloutObservation,
    VersionState,
    canary_replicas,
    decide_rollout,
    parse_command,
)

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
METRICS = [
    {"name": "error-rate", "max": "0.01"},
    {"name": "latency-p99", "max": "0.25"},
    {"name": "accuracy", "maxDropVsStable": "0.02"},
]


def make_spec(
    strategy: str = "Canary", metrics: list[dict[str, Any]] | None = None, **analysis: Any
) -> InferenceServiceSpec:
    return InferenceServiceSpec.model_validate(
        {
            "model": {"name": "iris", "version": "2"},
            "replicas": 2,
            "rollout": {
                "strategy": strategy,
                "analysis": {
                    "interval": "30s",
                    "threshold": 2,
                    "stepWeights": [10, 25, 50],
                    "minSamples": 200,
                    "minRequests": 100,
                    "progressDeadlineSeconds": 300,
                    "metrics": METRICS if metrics is None else metrics,
                    **analysis,
                },
            },
            "monitoring": {"accuracy": {"min": "0.85"}},
        }
    )


@dataclass
class Quality:
    error_rate: float = 0.0
    accuracy: float = 0.9
    latency: float = 0.05  # every request takes this long


@dataclass
class World:
    spec: InferenceServiceSpec = field(default_factory=make_spec)
    stable: str | None = "1"
    target: str | None = "2"
    now: dt.datetime = T0
    status: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(
        default_factory=lambda: [{"modelVersion": "1", "promotedAt": "2026-02-01T00:00:00Z"}]
    )
    ready: dict[str, int] = field(default_factory=lambda: {"1": 2})
    problems: dict[str, tuple[str, str]] = field(default_factory=dict)
    counts: dict[str, VersionCounters] = field(default_factory=dict)
    quality: dict[str, Quality] = field(default_factory=dict)
    weights: dict[str, int] = field(default_factory=lambda: {"stable": 100, "canary": 0})
    drift: float | None = 0.0
    decisions: list[RolloutDecision] = field(default_factory=list)

    @property
    def candidate(self) -> str | None:
        return (self.status or {}).get("candidate")

    @property
    def phase(self) -> str:
        return str((self.status or {}).get("phase", "Idle"))

    def state(self, version: str | None) -> VersionState | None:
        if version is None:
            return None
        readings = [(f"pod-{version}", self.counts[version])] if version in self.counts else []
        return VersionState(
            version,
            ready_replicas=self.ready.get(version, 0),
            desired_replicas=2,
            problem=self.problems.get(version),
            counters=readings,
            drift_share=self.drift,
        )

    def decide(self, command: str | None = None) -> RolloutDecision:
        observation = RolloutObservation(
            now=self.now,
            spec=self.spec,
            stable_version=self.stable,
            target_version=self.target,
            rollout=copy.deepcopy(self.status),
            history=copy.deepcopy(self.history),
            stable=self.state(self.stable),
            candidate=self.state(self.candidate),
            command=command,
        )
        decision = decide_rollout(observation)
        # What the API server would store: JSON, valid against the status schema.
        RolloutStatus.model_validate(decision.rollout)
        for entry in decision.history:
            HistoryEntry.model_validate(entry)
        self.status = json.loads(json.dumps(decision.rollout))
        self.history = [*self.history, *decision.history][-20:]
        self.stable = decision.stable_version
        self.weights = decision.weights
        self.decisions.append(decision)
        return decision

    def serve(self, requests: int, labelled_share: float = 1.0) -> None:
        """Send traffic by the current weights; labels arrive for ``labelled_share`` of it."""
        shares = [(self.stable, self.weights["stable"]), (self.candidate, self.weights["canary"])]
        for version, weight in shares:
            if version is None or weight == 0 or self.ready.get(version, 0) == 0:
                continue
            n = requests * weight // 100
            q = self.quality.get(version, Quality())
            labelled = round(n * labelled_share)
            added = VersionCounters(
                requests=n,
                errors=round(n * q.error_rate),
                latency=((0.1 if q.latency <= 0.1 else 0.5, n), (float("inf"), n)),
                predictions={"setosa": n},
                labelled=labelled,
                correct=round(labelled * q.accuracy),
            )
            self.counts[version] = self.counts.get(version, VersionCounters()) + added

    def tick(
        self,
        seconds: float = 30,
        requests: int = 2000,
        labelled_share: float = 1.0,
        command: str | None = None,
    ) -> RolloutDecision:
        self.serve(requests, labelled_share)
        self.now += dt.timedelta(seconds=seconds)
        return self.decide(command)


def events(decision: RolloutDecision, type_: str | None = None) -> list[tuple[str, str, str]]:
    return [e for e in decision.events if type_ is None or e[0] == type_]


def reasons(decision: RolloutDecision) -> list[str]:
    return [reason for _, reason, _ in decision.events]


def started_world(**kwargs: Any) -> World:
    """A canary of version 2 whose first replica is ready and that receives 10%."""
    world = World(**kwargs)
    world.serve(1000)  # stable served before: the rollout's windows must leave that out
    world.decide()
    world.ready["2"] = 2
    world.decide()
    assert world.status is not None and world.status["canaryWeight"] == 10
    return world


# --- commands ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("promote", Command("promote")),
        (" Abort ", Command("abort")),
        ("pause", Command("pause")),
        ("resume", Command("resume")),
        ("retry", Command("retry")),
        ("rollback", Command("rollback")),
        ("rollback:7", Command("rollback", "7")),
        ("rollback: 12 ", Command("rollback", "12")),
    ],
    ids=[
        "promote",
        "case-and-space",
        "pause",
        "resume",
        "retry",
        "rollback",
        "rollback-to",
        "rollback-to-spaces",
    ],
)
def test_parse_command(text: str, expected: Command) -> None:
    assert parse_command(text) == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "unknown rollout command"),
        ("yolo", "unknown rollout command"),
        ("pause:3", "takes no argument"),
        ("rollback:", "needs a version number"),
        ("rollback:v7", "needs a version number"),
        ("rollback:07", "needs a version number"),
    ],
    ids=[
        "empty",
        "garbage",
        "argument-to-pause",
        "rollback-without-version",
        "rollback-to-name",
        "leading-zero",
    ],
)
def test_parse_command_refuses(text: str, words: str) -> None:
    result = parse_command(text)
    assert isinstance(result, str) and words in result


# --- canary: the good path ---------------------------------------------------------------------------


def test_first_version_is_served_directly() -> None:
    world = World(stable=None, target="1", history=[])
    decision = world.decide()
    assert decision.stable_version == "1" and decision.candidate is None
    assert decision.weights == {"stable": 100, "canary": 0}
    assert [e["modelVersion"] for e in decision.history] == ["1"]
    assert world.decide().history == ()  # once


def test_good_candidate_is_promoted_step_by_step() -> None:
    world = World()
    first = world.decide()
    assert world.phase == "Progressing" and world.status is not None
    assert first.weights == {"stable": 100, "canary": 0}  # not ready yet: no traffic
    assert first.candidate is not None and first.candidate.version == "2"
    assert reasons(first) == ["RolloutStarted"]
    world.ready["2"] = 1
    world.now += dt.timedelta(seconds=5)
    weights = [world.decide().weights["canary"]]
    stepped_at = [world.status["stepStartedAt"]]
    for _ in range(6):
        decision = world.tick()
        weights.append(decision.weights["canary"])
        stepped_at.append(world.status["stepStartedAt"] if world.status else None)
        if decision.stable_version == "2":
            break
    assert weights[:3] == [10, 25, 50]
    assert world.phase == "Promoting"  # the candidate is not full size yet
    assert world.decisions[-1].candidate is not None and world.decisions[-1].candidate.replicas == 2
    world.ready["2"] = 2
    final = world.tick()
    assert final.stable_version == "2"
    assert final.weights == {"stable": 100, "canary": 0}
    assert final.retire == ("1",)
    assert final.candidate is None
    assert world.phase == "Succeeded"
    assert [(e["modelVersion"], e.get("replaced")) for e in final.history] == [("2", "1")]
    assert ("Normal", "Promoted") in [(t, r) for t, r, _ in final.events]
    assert all(t == "Normal" for t, _, _ in (e for d in world.decisions for e in d.events))


def test_each_step_lasts_at_least_one_interval() -> None:
    world = started_world()
    step_start = world.status["stepStartedAt"] if world.status else None
    decision = world.tick(seconds=10)
    assert decision.weights["canary"] == 10 and world.status is not None
    assert world.status["stepStartedAt"] == step_start
    assert decision.requeue_after == pytest.approx(20)
    assert world.tick(seconds=20).weights["canary"] == 25


def test_status_records_the_analysis() -> None:
    world = started_world()
    world.tick()
    assert world.status is not None
    analysis = {item["metric"]: item for item in world.status["lastAnalysis"]}
    assert set(analysis) == {"error-rate", "latency-p99", "accuracy"}
    assert analysis["error-rate"]["verdict"] == "Pass" and analysis["error-rate"]["samples"] == 200
    assert analysis["error-rate"]["bound"] == "max 0.01"
    assert world.status["baseline"]["stable"][0]["instance"] == "pod-1"


def test_promotion_without_labels_rests_on_fast_signals() -> None:
    world = started_world()
    for _ in range(3):
        decision = world.tick(labelled_share=0.0)
    assert decision.stable_version == "2"
    passed = [m for d in world.decisions for t, r, m in d.events if r == "AnalysisPassed"]
    assert passed and "accuracy not judged" in passed[0] and "promoted on the fast signals" in passed[0]


# --- canary: failures ------------------------------------------------------------------------------------


def test_high_error_rate_is_rolled_back_after_threshold_failed_checks() -> None:
    world = started_world(quality={"2": Quality(error_rate=0.05)})
    first = world.tick()
    assert world.phase == "Progressing" and world.status is not None and world.status["failedChecks"] == 1
    assert reasons(first) == ["AnalysisFailed"] and first.weights["canary"] == 10  # holds the step
    second = world.tick()
    assert world.phase == "RolledBack" and world.status is not None
    assert second.weights == {"stable": 100, "canary": 0}
    assert second.candidate is not None and second.candidate.replicas == 0  # scaled to zero
    assert second.stable_version == "1" and second.retire == ()
    [(kind, reason, message)] = second.events
    assert (kind, reason) == ("Warning", "RolledBack")
    for words in ("error-rate", "0.05", "max 0.01", "200 requests"):
        assert words in message
    assert world.status["rejectedVersions"] == ["2"]


def test_a_rejected_version_is_not_tried_again_until_the_target_changes() -> None:
    world = started_world(quality={"2": Quality(error_rate=0.05)})
    world.tick()
    world.tick()
    assert world.phase == "RolledBack"
    for _ in range(3):
        decision = world.tick()
        assert decision.events == () and world.phase == "RolledBack"
        assert decision.candidate is not None and decision.candidate.replicas == 0
    world.target = "3"
    decision = world.decide()
    assert world.phase == "Progressing" and world.candidate == "3"
    assert decision.retire == ("2",) and "rejectedVersions" not in (world.status or {})


def test_poor_accuracy_is_rolled_back_once_labels_arrive() -> None:
    world = started_world(quality={"2": Quality(accuracy=0.7)})
    world.tick(labelled_share=0.0)  # fast signals pass: 25%
    world.tick(labelled_share=0.0)  # 50%
    assert world.status is not None and world.status["canaryWeight"] == 50
    world.tick(labelled_share=1.0)  # labels arrive: the accuracy gate fails
    assert world.status is not None and world.status["failedChecks"] == 1
    decision = world.tick(labelled_share=1.0)
    assert world.phase == "RolledBack" and decision.stable_version == "1"
    [(_, reason, message)] = decision.events
    assert reason == "RolledBack"
    assert "accuracy 0.7 vs stable 0.9" in message and "maxDropVsStable 0.02" in message


def test_equal_accuracy_is_not_a_failure() -> None:
    world = started_world(quality={"2": Quality(accuracy=0.89)})
    for _ in range(3):
        decision = world.tick()
    assert decision.stable_version == "2"


@pytest.mark.parametrize("on_no_data", ["Fail", "Hold"])
def test_no_data_holds_then_on_no_data_decides(on_no_data: str) -> None:
    world = started_world(spec=make_spec(onNoData=on_no_data))
    decisions = [world.tick(requests=0) for _ in range(9)]  # 270 s: below the deadline of 300 s
    assert all(d.weights["canary"] == 10 for d in decisions)
    assert all(d.events == () for d in decisions) and world.phase == "Progressing"
    assert world.status is not None and world.status["reason"] == "NoData"
    decision = world.tick(requests=0)  # 300 s
    if on_no_data == "Fail":
        assert world.phase == "Failed" and decision.weights == {"stable": 100, "canary": 0}
        [(kind, reason, message)] = decision.events
        assert (kind, reason) == ("Warning", "RolloutFailed") and "onNoData: Fail" in message
        assert world.status is not None and world.status["reason"] == "NoData"
    else:
        assert world.phase == "Progressing" and decision.weights["canary"] == 10
        assert reasons(decision) == ["AnalysisNoData"]
        assert world.tick(requests=0).events == ()  # said once
        assert world.tick().weights["canary"] == 25  # data again: the step passes


def test_crash_looping_candidate_is_aborted_with_the_pods_reason() -> None:
    world = World()
    world.decide()
    world.problems["2"] = (
        "CrashLoopBackOff",
        "pod iris-2-abc: CrashLoopBackOff (exit code 1): model load failed",
    )
    world.now += dt.timedelta(seconds=40)
    decision = world.decide()
    assert world.phase == "Failed" and world.status is not None
    assert world.status["reason"] == "CrashLoopBackOff"
    assert decision.stable_version == "1" and decision.weights == {"stable": 100, "canary": 0}
    assert decision.candidate is not None and decision.candidate.replicas == 0
    [(kind, _, message)] = decision.events
    assert kind == "Warning" and "exit code 1" in message and "model load failed" in message


def test_a_candidate_that_never_becomes_ready_is_aborted_at_the_deadline() -> None:
    world = World()
    world.decide()
    world.now += dt.timedelta(seconds=299)
    assert world.decide().events == () and world.phase == "Progressing"
    world.now += dt.timedelta(seconds=1)
    decision = world.decide()
    assert world.phase == "Failed" and world.status is not None
    assert world.status["reason"] == "ProgressDeadlineExceeded"
    assert decision.stable_version == "1"


def test_a_rollout_does_not_start_while_stable_is_not_ready() -> None:
    world = World(ready={"1": 0})
    decision = world.decide()
    assert decision.candidate is None and world.phase == "Idle"
    assert world.status is not None and world.status["reason"] == "StableNotReady"
    assert [(t, r) for t, r, _ in decision.events] == [("Warning", "RolloutWaiting")]
    assert world.decide().events == ()  # said once
    world.ready["1"] = 1
    assert world.decide().candidate is not None and world.phase == "Progressing"


# --- restarts and new targets ------------------------------------------------------------------------------


def test_a_restarted_operator_resumes_at_the_same_step() -> None:
    world = started_world()
    world.tick()  # 25%
    world.now += dt.timedelta(seconds=12)
    world.serve(500)
    stored = copy.deepcopy(world.status)
    assert stored is not None and stored["canaryWeight"] == 25
    # The restarted operator: a new call with the stored status and the same observation.
    again = world.decide()
    assert world.status is not None
    assert world.status["step"] == stored["step"] and world.status["stepStartedAt"] == stored["stepStartedAt"]
    assert world.status["checkBaseline"] == stored["checkBaseline"]
    assert again.events == () and again.weights["canary"] == 25
    assert again.requeue_after == pytest.approx(18)
    later = world.tick(seconds=18)
    assert later.weights["canary"] == 50 and reasons(later) == [
        "CanaryStep"
    ]  # exactly one step, none skipped


def test_decisions_are_deterministic() -> None:
    world = started_world()
    world.tick()
    observation = RolloutObservation(
        now=world.now + dt.timedelta(seconds=30),
        spec=world.spec,
        stable_version=world.stable,
        target_version=world.target,
        rollout=world.status,
        history=world.history,
        stable=world.state("1"),
        candidate=world.state("2"),
    )
    assert decide_rollout(observation) == decide_rollout(observation)


def test_a_new_target_mid_rollout_starts_over() -> None:
    world = started_world()
    world.tick()
    world.target = "3"
    decision = world.decide()
    assert [r for r in reasons(decision)] == ["RolloutSuperseded", "RolloutStarted"]
    assert world.candidate == "3" and world.status is not None and world.status["step"] == 0
    assert world.status["canaryWeight"] == 0 and world.status["failedChecks"] == 0
    assert decision.retire == ("2",)
    assert decision.candidate is not None and decision.candidate.version == "3"


def test_the_target_going_back_to_stable_cancels_the_rollout() -> None:
    world = started_world()
    world.target = "1"
    decision = world.decide()
    assert reasons(decision) == ["RolloutCancelled"] and decision.retire == ("2",)
    assert decision.candidate is None and decision.weights == {"stable": 100, "canary": 0}


# --- manual commands -----------------------------------------------------------------------------------------


def test_manual_promote_skips_the_remaining_steps() -> None:
    world = started_world()
    decision = world.decide("promote")
    assert decision.clear_command and decision.stable_version == "2"  # ready at full size already
    assert reasons(decision) == ["RolloutCommand", "Promoted"]


def test_manual_abort() -> None:
    world = started_world()
    decision = world.decide("abort")
    assert (
        world.phase == "RolledBack" and world.status is not None and world.status["reason"] == "ManualAbort"
    )
    assert decision.weights == {"stable": 100, "canary": 0} and world.status["rejectedVersions"] == ["2"]


def test_pause_holds_and_resume_restarts_the_step_clock() -> None:
    world = started_world()
    world.tick()
    assert world.decide("pause").weights["canary"] == 25 and world.phase == "Paused"
    for _ in range(20):  # far past the deadline: a pause does not time out
        decision = world.tick()
        assert decision.weights["canary"] == 25 and decision.events == ()
    resumed = world.decide("resume")
    assert world.phase == "Progressing" and world.status is not None
    assert world.status["stepStartedAt"] == world.status["lastCheckAt"]
    assert resumed.weights["canary"] == 25
    assert world.tick().weights["canary"] == 50


def test_manual_rollback_after_promotion_and_to_a_version() -> None:
    world = started_world()
    for _ in range(3):
        world.tick()
    assert world.stable == "2"
    world.ready["1"] = 0  # retired: the rollback brings it back
    decision = world.decide("rollback")
    assert world.phase == "Promoting" and world.status is not None and world.status["rollbackFrom"] == "2"
    assert (
        decision.candidate is not None
        and decision.candidate.version == "1"
        and decision.candidate.replicas == 2
    )
    assert decision.weights == {"stable": 100, "canary": 0}
    world.ready["1"] = 2
    done = world.decide()
    assert done.stable_version == "1" and done.retire == ("2",) and world.phase == "RolledBack"
    assert [(e["modelVersion"], bool(e.get("rolledBackAt"))) for e in done.history] == [
        ("2", True),
        ("1", False),
    ]
    # The target is still 2 in the spec: it is not rolled out again.
    assert world.tick().candidate is None and world.phase == "RolledBack"
    # rollback:2 brings it back on purpose.
    world.ready["2"] = 2
    assert world.decide("rollback:2").candidate is not None and world.phase == "Promoting"
    assert world.decide().stable_version == "2"


@pytest.mark.parametrize(
    ("command", "setup", "words"),
    [
        ("promote", "idle", "no rollout in progress"),
        ("abort", "idle", "no rollout in progress"),
        ("pause", "idle", "nothing to pause"),
        ("resume", "progressing", "not paused"),
        ("retry", "progressing", "was not rejected"),
        ("rollback:9", "idle", "not in status.history"),
        ("rollback:1", "idle", "serves already"),
        ("rollback", "first", "no version before 1"),
        ("do-a-barrel-roll", "progressing", "unknown rollout command"),
    ],
    ids=[
        "promote-idle",
        "abort-idle",
        "pause-idle",
        "resume-not-paused",
        "retry-not-rejected",
        "rollback-unknown-version",
        "rollback-to-stable",
        "rollback-without-history",
        "garbage",
    ],
)
def test_inapplicable_commands_warn_and_change_nothing(command: str, setup: str, words: str) -> None:
    world = started_world() if setup == "progressing" else World(target="1")
    world.decide()
    if setup == "first":
        world.history = world.history[:1]
    world.now += dt.timedelta(seconds=30)
    base = copy.deepcopy(world)
    with_command = world.decide(command)
    without = base.decide()
    assert with_command.clear_command
    [(kind, _, message)] = [e for e in with_command.events if e not in without.events]
    assert kind == "Warning" and words in message
    assert with_command.rollout == without.rollout
    assert (with_command.weights, with_command.candidate, with_command.stable_version) == (
        without.weights,
        without.candidate,
        without.stable_version,
    )


def test_retry_tries_a_rejected_version_again() -> None:
    world = started_world(quality={"2": Quality(error_rate=0.05)})
    world.tick()
    world.tick()
    assert world.phase == "RolledBack"
    world.quality["2"] = Quality()
    decision = world.decide("retry")
    assert reasons(decision)[:2] == ["RolloutCommand", "RolloutStarted"] and world.phase == "Progressing"


def test_promote_forces_a_switch_when_stable_is_broken() -> None:
    world = World(ready={"1": 0, "2": 2})
    world.decide()
    assert world.phase == "Idle"
    forced = world.decide("promote")
    assert world.phase == "Promoting" and forced.candidate is not None and forced.candidate.replicas == 2
    decision = world.decide()  # the controller observes the candidate's Deployment from now on
    assert decision.stable_version == "2" and decision.retire == ("1",)


# --- after promotion: automatic rollback ------------------------------------------------------------------------


def promoted_world(**kwargs: Any) -> World:
    """Version 2 serves, promoted over version 1; version 1 is retired."""
    history = [
        {"modelVersion": "1", "promotedAt": "2026-02-01T00:00:00Z"},
        {"modelVersion": "2", "promotedAt": "2026-02-20T00:00:00Z", "replaced": "1"},
    ]
    world = World(stable="2", target="2", history=history, ready={"2": 2}, **kwargs)
    world.decide()
    return world


def test_sustained_low_accuracy_rolls_back_to_the_previous_version() -> None:
    world = promoted_world(quality={"2": Quality(accuracy=0.7)})
    first = world.tick()
    second = world.tick()
    assert first.events == second.events == () and world.status is not None
    assert world.status["watch"]["lowChecks"] == 2
    third = world.tick()
    assert world.phase == "Promoting" and world.status is not None and world.status["rollbackFrom"] == "2"
    [(kind, reason, message)] = third.events
    assert (kind, reason) == ("Warning", "RollbackStarted")
    assert "accuracy 0.7 < monitoring.accuracy.min 0.85" in message and "3 consecutive checks" in message
    assert third.candidate is not None and third.candidate.version == "1"
    world.ready["1"] = 2
    done = world.decide()
    assert done.stable_version == "1" and world.phase == "RolledBack" and done.retire == ("2",)


def test_one_good_check_resets_the_count() -> None:
    world = promoted_world(quality={"2": Quality(accuracy=0.7)})
    world.tick()
    world.tick()
    world.quality["2"] = Quality(accuracy=0.9)
    world.tick()
    world.quality["2"] = Quality(accuracy=0.7)
    world.tick()
    world.tick()
    assert world.phase == "Idle" and world.status is not None and world.status["watch"]["lowChecks"] == 2


def test_too_few_labels_is_no_check() -> None:
    world = promoted_world(quality={"2": Quality(accuracy=0.7)})
    for _ in range(10):
        world.tick(labelled_share=0.005)  # 10 labels per interval: 200 after 20 intervals
    assert world.status is not None and world.status["watch"]["lowChecks"] == 0
    for _ in range(10):
        world.tick(labelled_share=0.005)
    assert world.status["watch"]["lowChecks"] == 1


def test_no_rollback_to_a_version_that_was_rolled_back_itself() -> None:
    world = promoted_world(quality={"2": Quality(accuracy=0.7), "1": Quality(accuracy=0.7)})
    for _ in range(3):
        world.tick()
    world.ready["1"] = 2
    world.decide()
    assert world.stable == "1"
    # Version 1 is bad too: going back to 2 would flap.
    decisions = [world.tick() for _ in range(5)]
    assert all(d.stable_version == "1" and d.candidate is None for d in decisions)
    suppressed = [e for d in decisions for e in d.events]
    assert [(t, r) for t, r, _ in suppressed] == [("Warning", "AutoRollbackSuppressed")]
    assert "version 2 was itself rolled back" in suppressed[0][2]


def test_at_most_one_automatic_rollback_per_cooldown() -> None:
    history = [
        {"modelVersion": "1", "promotedAt": "2026-02-01T00:00:00Z"},
        {"modelVersion": "2", "promotedAt": "2026-02-20T00:00:00Z", "replaced": "1"},
        {"modelVersion": "3", "promotedAt": "2026-03-01T11:50:00Z", "replaced": "2"},
    ]
    world = World(
        stable="3", target="3", history=history, ready={"3": 2}, quality={"3": Quality(accuracy=0.7)}
    )
    world.status = {"phase": "Succeeded", "target": "3", "lastAutoRollbackAt": "2026-03-01T11:40:00Z"}
    world.decide()
    decisions = [world.tick() for _ in range(3)]
    assert all(d.stable_version == "3" and d.candidate is None for d in decisions)
    [(_, reason, message)] = [e for d in decisions for e in d.events]
    assert reason == "AutoRollbackSuppressed" and "cooldown until 2026-03-01T12:40:00Z" in message
    world.now = dt.datetime(2026, 3, 1, 12, 41, tzinfo=dt.UTC)
    decision = world.tick()
    assert world.phase == "Promoting" and decision.candidate is not None and decision.candidate.version == "2"


def test_sustained_error_rate_rolls_back_too() -> None:
    world = promoted_world(quality={"2": Quality(error_rate=0.2)})
    for _ in range(3):
        decision = world.tick(labelled_share=0.0)
    assert world.phase == "Promoting" and "error-rate 0.2 > max 0.01" in decision.events[0][2]


def test_auto_rollback_can_be_disabled() -> None:
    spec = make_spec()
    spec.rollout.auto_rollback.enabled = False
    world = promoted_world(spec=spec, quality={"2": Quality(accuracy=0.5)})
    for _ in range(5):
        assert world.tick().candidate is None
    assert "watch" not in (world.status or {})


# --- Replace ---------------------------------------------------------------------------------------------------------


def test_replace_starts_the_candidate_at_full_size_and_switches_when_ready() -> None:
    world = World(spec=make_spec("Replace"))
    first = world.decide()
    assert world.phase == "Promoting" and first.candidate is not None and first.candidate.replicas == 2
    assert first.weights == {"stable": 100, "canary": 0} and reasons(first) == ["RolloutStarted"]
    world.ready["2"] = 1
    assert world.decide().stable_version == "1"
    world.ready["2"] = 2
    done = world.decide()
    assert done.stable_version == "2" and done.retire == ("1",) and world.phase == "Succeeded"
    assert reasons(done) == ["Promoted"]


def test_replace_reports_a_broken_candidate_and_keeps_trying() -> None:
    world = World(spec=make_spec("Replace"))
    world.decide()
    world.problems["2"] = ("ImagePullBackOff", "pod iris-2-x: ImagePullBackOff: not found")
    world.now += dt.timedelta(hours=1)
    decision = world.decide()
    assert world.phase == "Promoting" and decision.events == ()
    assert world.status is not None and "ImagePullBackOff" in world.status["message"]


def test_replace_does_not_wait_for_a_broken_stable() -> None:
    world = World(spec=make_spec("Replace"), ready={"1": 0, "2": 2})
    world.decide()
    assert world.decide().stable_version == "2"


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        decide_rollout(
            RolloutObservation(
                now=dt.datetime(2026, 1, 1), spec=make_spec(), stable_version="1", target_version="1"
            )
        )


@pytest.mark.parametrize(
    ("desired", "weight", "expected"),
    [
        pytest.param(2, 10, 1, id="small-weight-still-one-pod"),
        pytest.param(2, 50, 2, id="half-is-as-many-as-stable"),
        pytest.param(10, 10, 1, id="ten-percent-of-ten"),
        pytest.param(10, 25, 3, id="quarter-of-ten"),
        pytest.param(4, 75, 4, id="capped-at-stable-size"),
        pytest.param(3, 100, 3, id="full-weight-full-size"),
    ],
)
def test_canary_replicas_approach_the_weight_without_shrinking_stable(
    desired: int, weight: int, expected: int
) -> None:
    assert canary_replicas(desired, weight) == expected
