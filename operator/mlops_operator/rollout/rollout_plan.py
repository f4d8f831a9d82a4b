"""The rollout of a new model version as a pure decision: observation in, next state out.

:func:`decide_rollout` takes what the controller observed (the spec, ``status.rollout`` as
stored, ``status.history``, the stable and candidate versions' readiness and per-process
counters, the clock, a manual command) and returns a :class:`RolloutDecision`: the new
``status.rollout``, the traffic weights, which version is stable, which candidate Deployment
should exist with how many replicas, which Deployments to retire, history entries to append
and Events. It reads nothing and writes nothing, and all progress lives in the returned
status, so a restarted operator that calls it again with the stored status resumes at the
same step with the same step start time.

Canary (``rollout.strategy: Canary``), in order:

1. A new target version starts as a candidate next to stable, provided stable has a ready
   replica (otherwise the rollout waits; the ``promote`` command forces a Replace-style
   switch, the way out of a broken stable). The candidate gets no traffic until it has a
   ready replica; a candidate pod that reports a problem (crash loop, image pull, load
   failure) aborts the rollout at once, one that merely never becomes ready aborts at
   ``progressDeadlineSeconds``; both name the reason.
2. Traffic moves through ``stepWeights``. Every ``interval`` a check compares the candidate
   with stable over the same window (counters since the window began): the fast signals
   (error rate, latency, drift share, disagreement) over the window since the last
   conclusive check, the accuracy gate over the whole rollout. A check with no failure and
   no missing fast data passes the step. A failed check adds to ``failedChecks``;
   ``threshold`` of them abort. Missing data holds the step until
   ``progressDeadlineSeconds`` after it began, then ``onNoData`` decides (Fail aborts, Hold
   keeps holding, with one Warning).
3. After the last step the candidate is scaled to full size (Promoting, holding the last
   step's weight) and becomes stable once ready; the old stable is retired. Promoting has no
   deadline (the candidate passed its analysis), but a pod problem still aborts it. The accuracy gate can fail a rollout whenever
   enough labels have arrived; **if labels never reach ``minSamples``, the promotion rests
   on the fast signals alone** (labels may take days; holding every rollout for them would
   block deployment, and the automatic rollback below still watches accuracy afterwards).
4. An aborted candidate is scaled to zero, all traffic returns to stable, and the version
   is not tried again until the target changes (or a ``retry`` command). A new target
   during a rollout drops the old candidate and starts over. A paused rollout holds its
   weight and does nothing else (no checks, no deadlines) until it is resumed; resuming
   restarts the step's analysis and clock.

Shadow (``rollout.strategy: Shadow``) keeps every request on stable. The candidate starts at
full size beside it (the same readiness rules and deadline as a canary); once it has a ready
replica the decision's ``mirror`` names it, and the controller configures stable's servers to
copy each request to it (bounded, off the request path). Every ``interval`` the candidate's
error rate and latency on the copies are checked against stable's (the fast checks, with
``threshold``), and the labelled pairs are judged by McNemar's comparison
(``shadow_analysis.py``): non-inferior within ``rollout.shadow.margin`` promotes (traffic
switches at once, the candidate already runs at full size), worse by more than the margin
rejects with the numbers, and too few pairs hold until ``progressDeadlineSeconds``, then
``onNoData`` decides.

After promotion (nothing in progress), the promoted version is watched: every interval, over
the counters since the last conclusive check, accuracy below ``monitoring.accuracy.min``
(once ``minSamples`` labels are in the window) or an error rate above the error-rate
metric's ``max`` (once ``minRequests`` requests are) is a bad check; **``autoRollback.
consecutiveChecks`` (3) bad checks in a row** roll back to the version it replaced, unless
that version was itself rolled back once (no flapping) or an automatic rollback happened
within ``autoRollback.cooldown``.

Replace (``rollout.strategy: Replace``) keeps the earlier behaviour: the target version
starts at full size and replaces stable once ready; a pod problem is reported, not acted on.

Commands come from the :data:`COMMAND_ANNOTATION` annotation (:func:`parse_command`):
``promote``, ``abort``, ``pause``, ``resume``, ``retry``, ``rollback``, ``rollback:<version>``.
One that does not apply, or does not parse, gives a Warning Event and changes nothing. The
controller removes the annotation when ``clear_command`` is set.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from mlops_operator.api.inferenceservice import InferenceServiceSpec
from mlops_operator.api.shared_fields import parse_duration
from mlops_operator.rollout.canary_analysis import (
    DEFAULT_METRICS,
    CheckResult,
    VersionCounters,
    analyse,
    is_fast,
    window,
)
from mlops_operator.rollout.shadow_analysis import paired_check, shadow_status

COMMAND_ANNOTATION = "mlops.dev/rollout-command"
IN_PROGRESS = ("Progressing", "Paused", "Promoting")
#: status.history keeps this many entries (its maxItems).
HISTORY_LIMIT = 20
#: Fields of status.rollout that outlive a rollout: they are about the target and the service.
_DURABLE = ("target", "rejectedVersions", "lastAutoRollbackAt", "lastTransitionTime")

Action = Literal["promote", "abort", "pause", "resume", "rollback", "retry"]
_ACTIONS: tuple[Action, ...] = ("promote", "abort", "pause", "resume", "rollback", "retry")
_VERSION = re.compile(r"^[1-9][0-9]{0,15}$")
Event = tuple[str, str, str]  # type, reason, message
InstanceReadings = Sequence[tuple[str, VersionCounters]]


@dataclass(frozen=True)
class Command:
    action: Action
    version: str | None = None  # rollback:<version>


def parse_command(text: str) -> Command | str:
    """The command in an annotation value, or a message saying why it is not one."""
    value = text.strip()
    action, sep, version = value.partition(":")
    action = action.strip().lower()
    if action not in _ACTIONS:
        return (
            f"unknown rollout command {text[:64]!r}: expected promote, abort, pause, resume, retry, "
            "rollback or rollback:<version>"
        )
    if sep and action != "rollback":
        return f"rollout command {action} takes no argument, got {text[:64]!r}"
    version = version.strip()
    if sep and not _VERSION.match(version):
        return f"rollback:<version> needs a version number, got {version[:32]!r}"
    return Command(action, version or None)


# --- observation and decision -------------------------------------------------------------------


@dataclass(frozen=True)
class VersionState:
    """What the controller saw of one version's Deployment and pods."""

    version: str
    ready_replicas: int = 0
    desired_replicas: int = 0
    problem: tuple[str, str] | None = None  # (reason, message) of a pod that will not serve
    not_ready: str | None = None  # which pod is not ready yet, and what it waits on
    counters: InstanceReadings = ()  # (instance id, cumulative counters) per server process
    drift_share: float | None = None


@dataclass(frozen=True)
class RolloutObservation:
    now: dt.datetime  # timezone-aware
    spec: InferenceServiceSpec
    stable_version: str | None  # None: nothing served yet
    target_version: str | None  # the resolved desired version; None: could not be resolved
    rollout: Mapping[str, Any] | None = None  # status.rollout as stored (camelCase)
    history: Sequence[Mapping[str, Any]] = ()
    stable: VersionState | None = None
    candidate: VersionState | None = None
    command: str | None = None  # the annotation's value, unparsed


@dataclass(frozen=True)
class CandidatePlan:
    version: str
    replicas: int


@dataclass(frozen=True)
class RolloutDecision:
    rollout: dict[str, Any]  # the new status.rollout
    stable_version: str | None  # the version that is stable after this decision
    weights: dict[str, int]  # {"stable": percent, "canary": percent}
    candidate: CandidatePlan | None  # the candidate Deployment that should exist (None: none)
    retire: tuple[str, ...] = ()  # versions whose Deployments (and Services, HPAs) to delete
    history: tuple[dict[str, Any], ...] = ()  # status.history entries to append
    events: tuple[Event, ...] = ()
    clear_command: bool = False  # the command annotation was handled (applied or refused)
    requeue_after: float | None = None  # seconds until something is due (a check, a deadline)
    mirror: str | None = None  # Shadow: the candidate version stable's servers copy requests to


# --- helpers -----------------------------------------------------------------------------------------


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _time(value: Any) -> dt.datetime | None:
    if not value:
        return None
    if isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _readings_to_status(readings: InstanceReadings) -> list[dict[str, Any]]:
    return [{"instance": instance, "counters": counters.to_dict()} for instance, counters in readings][:128]


def _readings_from_status(items: Any) -> list[tuple[str, VersionCounters]]:
    return [
        (str(item["instance"]), VersionCounters.from_dict(item.get("counters") or {})) for item in items or []
    ]


def canary_replicas(desired: int, weight: int) -> int:
    """Canary pods next to ``desired`` stable ones so that its share of pods is closest to ``weight``.

    With the Replicas router traffic splits by ready pods, and stable keeps its full size (a
    canary adds capacity, it never takes it away): c / (desired + c) ~ weight. At least one pod,
    at most ``desired``; the share actually reached is reported as the effective weight.
    """
    desired = max(1, desired)
    if weight >= 100:
        return desired
    return min(desired, max(1, round(desired * weight / (100 - weight))))


def previous_version(history: Sequence[Mapping[str, Any]], stable: str) -> str | None:
    """The version the stable one replaced: where a rollback goes."""
    promoted = [entry for entry in history if entry.get("promotedAt")]
    for index in range(len(promoted) - 1, -1, -1):
        if promoted[index].get("modelVersion") != stable:
            continue
        replaced = promoted[index].get("replaced")
        if replaced:
            return str(replaced)
        for earlier in reversed(promoted[:index]):
            if earlier.get("modelVersion") != stable:
                return str(earlier["modelVersion"])
        return None
    return None


def _was_rolled_back(history: Sequence[Mapping[str, Any]], version: str) -> bool:
    return any(e.get("modelVersion") == version and e.get("rolledBackAt") for e in history)


def in_history(history: Sequence[Mapping[str, Any]], version: str) -> bool:
    return any(e.get("modelVersion") == version and e.get("promotedAt") for e in history)


@dataclass
class _Plan:
    """The decision being built (mutable while :func:`decide_rollout` runs)."""

    obs: RolloutObservation
    r: dict[str, Any]
    stable: str | None
    weights: dict[str, int] = field(default_factory=lambda: {"stable": 100, "canary": 0})
    candidate: CandidatePlan | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    clear_command: bool = False
    requeue_after: float | None = None
    mirror: str | None = None

    @property
    def now(self) -> dt.datetime:
        return self.obs.now

    @property
    def spec(self) -> InferenceServiceSpec:
        return self.obs.spec

    @property
    def phase(self) -> str:
        return str(self.r.get("phase") or "Idle")

    @property
    def strategy(self) -> str:
        """The running rollout's strategy (a spec change applies to the next rollout)."""
        return str(self.r.get("strategy") or self.spec.rollout.strategy)

    @property
    def interval(self) -> float:
        return max(1.0, parse_duration(self.spec.rollout.analysis.interval))

    @property
    def deadline(self) -> float:
        return float(self.spec.rollout.analysis.progress_deadline_seconds)

    @property
    def rejected(self) -> list[str]:
        return list(self.r.get("rejectedVersions") or [])

    def event(self, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message[:1024]))

    def requeue(self, seconds: float) -> None:
        seconds = max(1.0, seconds)
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)

    def fresh(self, **fields: Any) -> None:
        """Start a new rollout state, keeping what outlives a rollout."""
        kept = {key: self.r[key] for key in _DURABLE if key in self.r}
        self.r = {**kept, **{k: v for k, v in fields.items() if v is not None}}

    def candidate_state(self) -> VersionState:
        version = str(self.r.get("candidate"))
        seen = self.obs.candidate
        if seen is not None and seen.version == version:
            return seen
        return VersionState(version)

    def stable_readings(self) -> InstanceReadings:
        return self.obs.stable.counters if self.obs.stable is not None else ()

    def reject(self, version: str) -> None:
        rejected = self.rejected
        if version not in rejected:
            rejected.append(version)
        self.r["rejectedVersions"] = rejected[-20:]

    def decision(self) -> RolloutDecision:
        before = self.obs.rollout or {}
        if (before.get("phase") or "Idle") != self.phase or not self.r.get("lastTransitionTime"):
            self.r["lastTransitionTime"] = _iso(self.now)
        keep = {self.stable, self.candidate.version if self.candidate else None}
        retire = [
            version
            for version in (before.get("candidate"), self.obs.stable_version)
            if version and version not in keep
        ]
        return RolloutDecision(
            rollout=self.r,
            stable_version=self.stable,
            weights=dict(self.weights),
            candidate=self.candidate,
            retire=tuple(dict.fromkeys(str(v) for v in retire)),
            history=tuple(self.history),
            events=tuple(self.events),
            clear_command=self.clear_command,
            requeue_after=self.requeue_after,
            mirror=self.mirror,
        )


# --- the decision ------------------------------------------------------------------------------------


def decide_rollout(observation: RolloutObservation) -> RolloutDecision:
    """The next rollout state and the actions that get there (see the module docstring)."""
    obs = observation
    if obs.now.tzinfo is None:
        raise ValueError("observation.now must be timezone-aware")
    plan = _Plan(obs, dict(obs.rollout or {}), obs.stable_version)
    target = obs.target_version
    if target is not None and plan.r.get("target") != target:
        # "Not tried again until the target changes": a new target forgives old rejections.
        plan.r.pop("rejectedVersions", None)
        plan.r["target"] = target

    if plan.stable is None:
        if target is not None:
            plan.stable = target
            plan.history.append(
                {"modelVersion": target, "promotedAt": _iso(obs.now), "reason": "first version served"}
            )
            plan.fresh(phase="Idle", message=f"serving version {target}")
        if obs.command is not None:
            plan.clear_command = True
            plan.event("Warning", "RolloutCommandIgnored", f"{obs.command[:64]!r}: nothing is served yet")
        return plan.decision()

    if obs.command is not None:
        plan.clear_command = True
        parsed = parse_command(obs.command)
        refusal = parsed if isinstance(parsed, str) else _apply_command(plan, parsed)
        if refusal is not None:
            plan.event(
                "Warning",
                "InvalidRolloutCommand" if isinstance(parsed, str) else "RolloutCommandIgnored",
                refusal,
            )
    _advance(plan)
    return plan.decision()


def _advance(plan: _Plan) -> None:
    target = plan.obs.target_version
    stable = plan.stable
    if plan.phase in IN_PROGRESS:
        candidate = plan.r.get("candidate")
        if plan.r.get("rollbackFrom"):
            _promoting(plan)  # a rollback finishes before a new target is considered
            return
        if target is None or target == candidate:
            {"Paused": _paused, "Promoting": _promoting}.get(plan.phase, _progressing)(plan)
            return
        if target == stable:
            plan.event(
                "Normal",
                "RolloutCancelled",
                f"the target is version {stable} again: version {candidate} is dropped",
            )
            plan.fresh(phase="Idle", reason="Cancelled", message=f"serving version {stable}")
        else:
            plan.event(
                "Normal",
                "RolloutSuperseded",
                f"the target changed to version {target}: version {candidate} is dropped and the rollout starts over",
            )
            plan.fresh(phase="Idle", reason="Superseded")
    if target is not None and target != stable and target not in plan.rejected:
        _start(plan)
        return
    if (
        target is not None
        and target != stable
        and plan.phase in ("RolledBack", "Failed")
        and plan.r.get("candidate") == target
    ):
        plan.candidate = CandidatePlan(target, 0)  # kept at zero for inspection until the target changes
    _watch(plan)


def _start(plan: _Plan) -> None:
    obs, target, stable = plan.obs, str(plan.obs.target_version), str(plan.stable)
    now = _iso(obs.now)
    if obs.spec.rollout.strategy == "Replace":
        plan.fresh(
            phase="Promoting",
            reason="Replace",
            strategy="Replace",
            candidate=target,
            startedAt=now,
            stepStartedAt=now,
            message=f"version {target} replaces version {stable} once ready",
        )
        plan.event("Normal", "RolloutStarted", f"version {target} starts next to version {stable}")
        _promoting(plan)
        return
    if obs.stable is None or obs.stable.ready_replicas < 1:
        message = f"version {target} waits: stable version {stable} has no ready replica to compare with"
        if plan.r.get("reason") != "StableNotReady":
            plan.event("Warning", "RolloutWaiting", message)
        plan.r.update(reason="StableNotReady", message=message)
        plan.requeue(plan.interval)
        return
    weights = obs.spec.rollout.analysis.step_weights
    if obs.spec.rollout.strategy == "Shadow":
        plan.fresh(
            phase="Progressing",
            reason="CandidateStarting",
            strategy="Shadow",
            candidate=target,
            failedChecks=0,
            startedAt=now,
            stepStartedAt=now,
            message=f"waiting for version {target} to become ready",
        )
        shadow = obs.spec.rollout.shadow
        plan.event(
            "Normal",
            "RolloutStarted",
            f"shadow of version {target} next to version {stable}: version {stable} answers every request, "
            f"version {target} gets a mirrored copy; promoted when not worse by more than {shadow.margin} "
            f"on {obs.spec.rollout.analysis.min_samples}+ labelled pairs",
        )
        _shadowing(plan)
        return
    plan.fresh(
        phase="Progressing",
        reason="CandidateStarting",
        strategy="Canary",
        candidate=target,
        step=0,
        canaryWeight=0,
        failedChecks=0,
        startedAt=now,
        stepStartedAt=now,
        message=f"waiting for version {target} to become ready",
    )
    plan.event(
        "Normal",
        "RolloutStarted",
        f"canary of version {target} next to version {stable}: steps {', '.join(map(str, weights))}% "
        f"every {obs.spec.rollout.analysis.interval}",
    )
    _progressing(plan)


def _hold(plan: _Plan, weight: int) -> None:
    candidate = str(plan.r["candidate"])
    plan.weights = {"stable": 100 - weight, "canary": weight}
    if plan.strategy == "Shadow":
        # The candidate takes a copy of all of stable's traffic: it runs at full size.
        plan.candidate = CandidatePlan(candidate, max(1, plan.spec.desired_replicas))
        if plan.r.get("baseline"):
            plan.mirror = candidate
        return
    steps = plan.spec.rollout.analysis.step_weights
    step = min(int(plan.r.get("step") or 0), len(steps) - 1)
    # The Gateway API router splits by request weight: the canary runs at full size from the
    # start (its capacity does not limit the split). The Replicas router splits by pods.
    replicas = (
        max(1, plan.spec.desired_replicas)
        if plan.spec.traffic.router == "GatewayAPI"
        else canary_replicas(plan.spec.desired_replicas, weight or steps[step])
    )
    plan.candidate = CandidatePlan(candidate, replicas)


def _abort(plan: _Plan, phase: str, reason: str, message: str) -> None:
    candidate = str(plan.r["candidate"])
    plan.r.update(phase=phase, reason=reason, message=message[:1024], canaryWeight=0)
    for key in ("baseline", "checkBaseline", "lastCheckAt", "stepStartedAt"):
        plan.r.pop(key, None)
    plan.reject(candidate)
    plan.weights = {"stable": 100, "canary": 0}
    plan.candidate = CandidatePlan(candidate, 0)
    plan.mirror = None
    plan.event("Warning", "RolledBack" if phase == "RolledBack" else "RolloutFailed", message)


def _not_ready_yet(plan: _Plan, candidate: VersionState, started: dt.datetime, stable_note: str) -> None:
    """The candidate has no ready replica: wait for it, or abort once past the deadline."""
    waited = (plan.now - started).total_seconds()
    why = f": {candidate.not_ready}" if candidate.not_ready else ""
    if waited >= plan.deadline:
        _abort(
            plan,
            "Failed",
            "ProgressDeadlineExceeded",
            f"version {candidate.version} has no ready replica after {int(waited)}s "
            f"(progressDeadlineSeconds {int(plan.deadline)}){why}; stable version {plan.stable} {stable_note}",
        )
        return
    plan.r["message"] = (
        f"waiting for version {candidate.version} to become ready ({candidate.ready_replicas} ready){why}"
    )
    plan.requeue(min(plan.interval, plan.deadline - waited))


def _no_data_past_deadline(plan: _Plan, started: dt.datetime, last_check: dt.datetime, what: str) -> bool:
    """``onNoData`` once data has been missing for ``progressDeadlineSeconds``; True if it aborted.

    ``what`` says what is missing and where the rollout holds. Hold warns once, at the first
    check past the deadline.
    """
    elapsed = (plan.now - started).total_seconds()
    if elapsed < plan.deadline:
        return False
    version = plan.r.get("candidate")
    if plan.spec.rollout.analysis.on_no_data == "Fail":
        _abort(plan, "Failed", "NoData", f"version {version}: {what} for {int(elapsed)}s (onNoData: Fail)")
        return True
    if (last_check - started).total_seconds() < plan.deadline:
        plan.event(
            "Warning",
            "AnalysisNoData",
            f"version {version} holds: {what} for {int(elapsed)}s (onNoData: Hold)",
        )
    return False


def _count_failed_check(plan: _Plan, failed: Sequence[CheckResult], rolled_back: str) -> bool:
    """Count a failed check; True if it reached ``threshold`` and the rollout was aborted."""
    analysis = plan.spec.rollout.analysis
    count = int(plan.r.get("failedChecks") or 0) + 1
    detail = "; ".join(result.message for result in failed)
    plan.r["failedChecks"] = count
    if count >= analysis.threshold:
        _abort(plan, "RolledBack", "AnalysisFailed", f"{rolled_back} after {count} failed checks: {detail}")
        return True
    plan.r.update(reason="CheckFailed", message=f"check failed ({count} of {analysis.threshold}): {detail}")
    plan.event("Warning", "AnalysisFailed", plan.r["message"])
    return False


def _progressing(plan: _Plan) -> None:
    if plan.strategy == "Shadow":
        _shadowing(plan)
        return
    r, now = plan.r, plan.now
    analysis = plan.spec.rollout.analysis
    steps = analysis.step_weights
    candidate = plan.candidate_state()
    version = candidate.version
    step = min(int(r.get("step") or 0), len(steps) - 1)
    weight = int(r.get("canaryWeight") or 0)
    step_started = _time(r.get("stepStartedAt")) or now
    if candidate.problem is not None:
        _abort(
            plan,
            "Failed",
            candidate.problem[0],
            f"version {version} cannot serve: {candidate.problem[1]}; stable version {plan.stable} keeps all traffic",
        )
        return
    if weight == 0:
        if candidate.ready_replicas >= 1:
            weight = steps[step]
            readings = {
                "stable": _readings_to_status(plan.stable_readings()),
                "candidate": _readings_to_status(candidate.counters),
            }
            r.update(
                canaryWeight=weight,
                stepStartedAt=_iso(now),
                lastCheckAt=_iso(now),
                baseline=readings,
                checkBaseline=readings,
                reason="Analysing",
                message=f"version {version} receives {weight}% of traffic (step {step + 1} of {len(steps)})",
            )
            plan.event("Normal", "CanaryStep", r["message"])
            _hold(plan, weight)
            plan.requeue(plan.interval)
            return
        _hold(plan, 0)
        _not_ready_yet(plan, candidate, step_started, "keeps all traffic")
        return

    _hold(plan, weight)
    last_check = _time(r.get("lastCheckAt")) or step_started
    due = last_check + dt.timedelta(seconds=plan.interval)
    if now < due:
        plan.requeue((due - now).total_seconds())
        return
    results = _analyse(plan, candidate)
    r["lastAnalysis"] = [result.to_dict() for result in results][:24]
    r["lastCheckAt"] = _iso(now)
    plan.requeue(plan.interval)
    current = {
        "stable": _readings_to_status(plan.stable_readings()),
        "candidate": _readings_to_status(candidate.counters),
    }
    failed = [result for result in results if result.verdict == "Fail"]
    if failed:
        r["checkBaseline"] = current
        _count_failed_check(plan, failed, f"version {version} rolled back at {weight}%")
        return
    missing = [result for result in results if result.fast and result.verdict == "NoData"]
    if missing:
        detail = "; ".join(result.message for result in missing)
        if _no_data_past_deadline(plan, step_started, last_check, f"no data at {weight}% ({detail})"):
            return
        r.update(reason="NoData", message=f"holding at {weight}%: {detail}")
        return
    r["checkBaseline"] = current
    if step + 1 < len(steps):
        weight = steps[step + 1]
        r.update(
            step=step + 1,
            canaryWeight=weight,
            stepStartedAt=_iso(now),
            reason="Analysing",
            message=f"version {version} receives {weight}% of traffic (step {step + 2} of {len(steps)})",
        )
        plan.event("Normal", "CanaryStep", r["message"])
        _hold(plan, weight)
        return
    slow = [result for result in results if not result.fast]
    note = "".join(
        f"; {result.metric} not judged ({result.message}): promoted on the fast signals"
        for result in slow
        if result.verdict == "NoData"
    )
    r.update(
        phase="Promoting",
        reason="AnalysisPassed",
        stepStartedAt=_iso(now),
        message=f"version {version} passed {len(steps)} steps{note}",
    )
    plan.event("Normal", "AnalysisPassed", r["message"])
    _promoting(plan)


def _shadowing(plan: _Plan) -> None:
    """A Shadow rollout: wait for the candidate, mirror to it, judge the labelled pairs."""
    r, now = plan.r, plan.now
    analysis = plan.spec.rollout.analysis
    candidate = plan.candidate_state()
    version, stable = candidate.version, str(plan.stable)
    started = _time(r.get("stepStartedAt")) or now
    if candidate.problem is not None:
        _abort(
            plan,
            "Failed",
            candidate.problem[0],
            f"version {version} cannot serve: {candidate.problem[1]}; stable version {stable} answers alone",
        )
        return
    if not r.get("baseline"):
        _hold(plan, 0)
        if candidate.ready_replicas >= 1:
            readings = {
                "stable": _readings_to_status(plan.stable_readings()),
                "candidate": _readings_to_status(candidate.counters),
            }
            r.update(
                baseline=readings,
                checkBaseline=readings,
                stepStartedAt=_iso(now),
                lastCheckAt=_iso(now),
                reason="Mirroring",
                message=f"version {version} receives a mirrored copy of version {stable}'s requests",
            )
            plan.event("Normal", "ShadowStarted", r["message"])
            plan.mirror = version
            plan.requeue(plan.interval)
            return
        _not_ready_yet(plan, candidate, started, "answers alone")
        return

    _hold(plan, 0)
    last_check = _time(r.get("lastCheckAt")) or started
    due = last_check + dt.timedelta(seconds=plan.interval)
    if now < due:
        plan.requeue((due - now).total_seconds())
        return
    plan.requeue(plan.interval)
    # Errors and latency of the candidate's answers to the copies, against stable's (fast).
    fast = [result for result in _analyse(plan, candidate) if result.fast]
    # The labelled pairs, over the whole mirror (from the processes mirroring to this version).
    mirroring = [(i, c) for i, c in plan.stable_readings() if c.shadow and c.shadow.version == version]
    shadow = window(mirroring, _readings_from_status((r.get("baseline") or {}).get("stable"))).shadow
    paired, test = paired_check(
        shadow,
        margin=float(plan.spec.rollout.shadow.margin),
        alpha=float(analysis.alpha),
        min_samples=max(1, analysis.min_samples),
    )
    r.update(
        lastAnalysis=[result.to_dict() for result in [*fast, paired]][:24],
        lastCheckAt=_iso(now),
        shadow=shadow_status(shadow, test),
        checkBaseline={
            "stable": _readings_to_status(plan.stable_readings()),
            "candidate": _readings_to_status(candidate.counters),
        },
    )
    failed = [result for result in fast if result.verdict == "Fail"]
    if failed:
        _count_failed_check(plan, failed, f"version {version} rejected in shadow")
        return
    if paired.verdict == "Fail":
        _abort(plan, "RolledBack", "ShadowRejected", f"version {version} rejected: {paired.message}")
        return
    if paired.verdict == "Pass":
        r.update(
            phase="Promoting",
            reason="ShadowPassed",
            stepStartedAt=_iso(now),
            message=f"version {version} passed its shadow analysis: {paired.message}",
        )
        plan.event("Normal", "AnalysisPassed", r["message"])
        _promoting(plan)
        return
    waiting = paired.samples < max(1, analysis.min_samples)
    if waiting and _no_data_past_deadline(plan, started, last_check, f"in shadow, {paired.message}"):
        return
    r.update(reason="NoData" if waiting else "Analysing", message=f"in shadow: {paired.message}")


def _analyse(plan: _Plan, candidate: VersionState) -> list[CheckResult]:
    """Fast signals over the window since the last conclusive check; accuracy over the rollout."""
    analysis = plan.spec.rollout.analysis
    r = plan.r
    specs = list(DEFAULT_METRICS if analysis.metrics is None else analysis.metrics)
    check = r.get("checkBaseline") or {}
    start = r.get("baseline") or {}
    stable_now = plan.stable_readings()
    options: dict[str, Any] = {
        "min_requests": analysis.min_requests,
        "min_samples": analysis.min_samples,
        "alpha": float(analysis.alpha),
    }
    fast = analyse(
        [m for m in specs if is_fast(m.name)],
        window(candidate.counters, _readings_from_status(check.get("candidate"))),
        window(stable_now, _readings_from_status(check.get("stable"))),
        candidate.drift_share,
        **options,
    )
    slow = analyse(
        [m for m in specs if not is_fast(m.name)],
        window(candidate.counters, _readings_from_status(start.get("candidate"))),
        window(stable_now, _readings_from_status(start.get("stable"))),
        candidate.drift_share,
        **options,
    )
    return fast + slow


def _paused(plan: _Plan) -> None:
    weight = int(plan.r.get("canaryWeight") or 0)
    _hold(plan, weight)


def _promoting(plan: _Plan) -> None:
    r, now, obs = plan.r, plan.now, plan.obs
    candidate = plan.candidate_state()
    version, old = candidate.version, str(plan.stable)
    desired = max(1, obs.spec.desired_replicas)
    rollback_from = r.get("rollbackFrom")
    weight = int(r.get("canaryWeight") or 0)
    plan.candidate = CandidatePlan(version, desired)
    plan.weights = {"stable": 100 - weight, "canary": weight}
    plan.mirror = None  # promoting: the candidate answers for itself
    if candidate.ready_replicas >= desired:
        plan.stable, plan.candidate = version, None
        plan.weights = {"stable": 100, "canary": 0}
        stamp = _iso(now)
        why = str(r.get("message") or "")
        if rollback_from:
            plan.history.append({"modelVersion": old, "rolledBackAt": stamp, "reason": why[:1024]})
            plan.history.append(
                {
                    "modelVersion": version,
                    "promotedAt": stamp,
                    "replaced": old,
                    "reason": f"rolled back from version {old}",
                }
            )
            plan.reject(old)
            plan.fresh(
                phase="RolledBack",
                reason=r.get("reason"),
                message=f"version {version} serves all traffic again; version {old} rolled back: {why}"[
                    :1024
                ],
            )
            plan.event("Normal", "RolledBack", str(plan.r["message"]))
            return
        plan.history.append(
            {
                "modelVersion": version,
                "promotedAt": stamp,
                "replaced": old,
                "reason": f"replaced version {old}: {why}"[:1024],
            }
        )
        plan.fresh(
            phase="Succeeded",
            reason="Promoted",
            message=f"version {version} serves all traffic; version {old} retired",
            startedAt=r.get("startedAt"),
            strategy=r.get("strategy"),
            lastAnalysis=r.get("lastAnalysis"),
            failedChecks=r.get("failedChecks"),
            shadow=r.get("shadow"),
        )
        plan.event("Normal", "Promoted", str(plan.r["message"]))
        return
    elapsed = (now - (_time(r.get("stepStartedAt")) or now)).total_seconds()
    problem = candidate.problem
    if rollback_from and (problem is not None or elapsed >= plan.deadline):
        reason = problem[0] if problem else "ProgressDeadlineExceeded"
        detail = problem[1] if problem else f"no full set of ready replicas after {int(elapsed)}s"
        plan.candidate = None
        plan.fresh(
            phase="Failed",
            reason=reason,
            message=f"rollback to version {version} failed: {detail}; version {old} keeps serving",
        )
        plan.event("Warning", "RollbackFailed", str(plan.r["message"]))
        return
    if problem is not None and plan.strategy != "Replace" and not rollback_from:
        _abort(
            plan,
            "Failed",
            problem[0],
            f"version {version} cannot serve: {problem[1]}; stable version {old} keeps all traffic",
        )
        return
    status = f"{candidate.ready_replicas}/{desired} ready"
    verb = "rolling back to" if rollback_from else "promoting"
    r["message"] = f"{verb} version {version}: {status}" + (f"; {problem[1]}" if problem else "")
    plan.requeue(min(plan.interval, max(1.0, plan.deadline - elapsed)))


def _start_rollback(plan: _Plan, to: str, why: str, *, auto: bool) -> None:
    stable = str(plan.stable)
    plan.fresh(
        phase="Promoting",
        reason="AutoRollback" if auto else "ManualRollback",
        candidate=to,
        rollbackFrom=stable,
        startedAt=_iso(plan.now),
        stepStartedAt=_iso(plan.now),
        message=why[:1024],
    )
    if auto:
        plan.r["lastAutoRollbackAt"] = _iso(plan.now)
    plan.event(
        "Warning" if auto else "Normal",
        "RollbackStarted",
        f"rolling back from version {stable} to version {to}: {why}",
    )


def _watch(plan: _Plan) -> None:
    """After promotion: roll back a version whose live accuracy or error rate stays bad."""
    spec, obs, r, now = plan.spec, plan.obs, plan.r, plan.now
    auto = spec.rollout.auto_rollback
    if (
        not auto.enabled
        or not spec.monitoring.enabled
        or obs.stable is None
        or obs.stable.version != plan.stable
    ):
        r.pop("watch", None)
        return
    readings = obs.stable.counters
    watch = dict(r.get("watch") or {})
    checked = _time(watch.get("checkedAt"))
    if checked is None:
        r["watch"] = {"baseline": _readings_to_status(readings), "checkedAt": _iso(now), "lowChecks": 0}
        plan.requeue(plan.interval)
        return
    due = checked + dt.timedelta(seconds=plan.interval)
    if now < due:
        plan.requeue((due - now).total_seconds())
        return
    plan.requeue(plan.interval)
    analysis = spec.rollout.analysis
    counts = window(readings, _readings_from_status(watch.get("baseline")))
    accuracy_min = float(spec.monitoring.accuracy.min)
    error_max = next(
        (float(m.max) for m in analysis.metrics or () if m.name == "error-rate" and m.max is not None), None
    )
    bad: list[str] = []
    judged = []
    if counts.labelled >= max(1, analysis.min_samples):
        judged.append("accuracy")
        if (counts.accuracy or 0.0) < accuracy_min:
            bad.append(
                f"accuracy {counts.accuracy:.4g} < monitoring.accuracy.min {spec.monitoring.accuracy.min} "
                f"over {counts.labelled} labelled predictions"
            )
    if error_max is not None and counts.requests >= max(1, analysis.min_requests):
        judged.append("error-rate")
        if (counts.error_rate or 0.0) > error_max:
            bad.append(
                f"error-rate {counts.error_rate:.4g} > max {error_max:g} over {counts.requests} requests"
            )
    wanted = 1 + (error_max is not None)
    if not bad and len(judged) < wanted:
        # Not enough data for a verdict: the window grows, and status stays as it is (moving
        # checkedAt here would be a heartbeat: a status write per service per interval).
        return
    watch["checkedAt"] = _iso(now)
    low = int(watch.get("lowChecks") or 0) + 1 if bad else 0
    watch.update(baseline=_readings_to_status(readings), lowChecks=low)
    r["watch"] = watch
    if low < auto.consecutive_checks:
        return
    history, stable = plan.obs.history, str(plan.stable)
    previous = previous_version(history, stable)
    why = f"{'; '.join(bad)} in {low} consecutive checks"
    blocker = None
    last = _time(r.get("lastAutoRollbackAt"))
    if previous is None:
        blocker = "no previous version in status.history"
    elif _was_rolled_back(history, previous):
        blocker = f"version {previous} was itself rolled back once (no flapping)"
    elif last is not None and now < last + dt.timedelta(seconds=parse_duration(auto.cooldown)):
        ready = last + dt.timedelta(seconds=parse_duration(auto.cooldown))
        blocker = f"an automatic rollback happened at {_iso(last)}; cooldown until {_iso(ready)}"
    if blocker is not None:
        if low == auto.consecutive_checks:
            plan.event(
                "Warning", "AutoRollbackSuppressed", f"version {stable}: {why}; not rolled back: {blocker}"
            )
        r.update(reason="Degraded", message=f"version {stable}: {why}; not rolled back: {blocker}"[:1024])
        return
    _start_rollback(plan, previous, f"version {stable}: {why}", auto=True)  # type: ignore[arg-type]  # previous is set
    _promoting(plan)


def _apply_command(plan: _Plan, command: Command) -> str | None:
    """Apply a manual command; a message when it does not apply (nothing is changed then)."""
    r, obs = plan.r, plan.obs
    phase, target, stable = plan.phase, obs.target_version, str(plan.stable)
    running = phase in IN_PROGRESS and not r.get("rollbackFrom")
    candidate = r.get("candidate")
    if command.action == "promote":
        if running and phase == "Promoting":
            return f"promote: version {candidate} is being promoted already"
        if running:
            r.update(phase="Promoting", reason="ManualPromote", stepStartedAt=_iso(plan.now))
            plan.event(
                "Normal", "RolloutCommand", f"promote: version {candidate} skips the remaining analysis"
            )
            return None
        blocked = (
            phase not in IN_PROGRESS
            and target is not None
            and target != stable
            and target not in plan.rejected
            and obs.spec.rollout.strategy != "Replace"
            and (obs.stable is None or obs.stable.ready_replicas < 1)
        )
        if blocked:
            plan.fresh(
                phase="Promoting",
                reason="ManualPromote",
                candidate=target,
                startedAt=_iso(plan.now),
                stepStartedAt=_iso(plan.now),
                message=f"version {target} replaces version {stable} without analysis (promote command)",
            )
            plan.event("Normal", "RolloutCommand", str(plan.r["message"]))
            return None
        return "promote: no rollout in progress"
    if command.action == "abort":
        if not running:
            return (
                "abort: no rollout in progress"
                if not r.get("rollbackFrom")
                else "abort: a rollback is in progress"
            )
        _abort(
            plan,
            "RolledBack",
            "ManualAbort",
            f"version {candidate} aborted by command; version {stable} keeps all traffic",
        )
        return None
    if command.action == "pause":
        if phase != "Progressing":
            return f"pause: nothing to pause (rollout phase {phase})"
        r.update(
            phase="Paused", reason="ManualPause", message=f"paused at {r.get('canaryWeight', 0)}% by command"
        )
        plan.event("Normal", "RolloutCommand", str(r["message"]))
        return None
    if command.action == "resume":
        if phase != "Paused":
            return f"resume: the rollout is not paused (phase {phase})"
        current = {
            "stable": _readings_to_status(plan.stable_readings()),
            "candidate": _readings_to_status(plan.candidate_state().counters),
        }
        r.update(
            phase="Progressing",
            reason="ManualResume",
            stepStartedAt=_iso(plan.now),
            lastCheckAt=_iso(plan.now),
        )
        if int(r.get("canaryWeight") or 0) > 0:
            r["checkBaseline"] = current
        r["message"] = f"resumed at {r.get('canaryWeight', 0)}%: the step's analysis starts again"
        plan.event("Normal", "RolloutCommand", str(r["message"]))
        return None
    if command.action == "retry":
        if target is None or target not in plan.rejected:
            return "retry: the target version was not rejected"
        r["rejectedVersions"] = [v for v in plan.rejected if v != target]
        plan.event("Normal", "RolloutCommand", f"retry: version {target} may be rolled out again")
        return None
    # rollback
    if r.get("rollbackFrom"):
        return "rollback: a rollback is in progress"
    to = command.version
    if to is None and running:
        _abort(
            plan,
            "RolledBack",
            "ManualRollback",
            f"version {candidate} rolled back by command; version {stable} keeps all traffic",
        )
        return None
    to = to or previous_version(obs.history, stable)
    if to is None:
        return f"rollback: no version before {stable} in status.history"
    if to == stable:
        return f"rollback: version {to} serves already"
    if not in_history(obs.history, to):
        return f"rollback: version {to} is not in status.history"
    if running:
        _abort(
            plan,
            "RolledBack",
            "ManualRollback",
            f"version {candidate} dropped: rollback to version {to} by command",
        )
    _start_rollback(plan, to, f"rollback to version {to} by command", auto=False)
    return None
