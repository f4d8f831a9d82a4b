"""The demo's report: what happened when, as ``timeline.json`` and a picture (``demo.png``).

:class:`DemoRecorder` collects three things while ``mlops-operator demo`` runs: each stage
(start, end, outcome, its numbers), samples of the InferenceService's status as the demo polls
it (the versions served and their traffic weights, accuracy, drift share, rollout phase), and
the events of the loop (retrain requested, version validated, canary steps, promotion,
rollback), taken from the cluster's own Events and conditions; and the live accuracy of the old
and the retrained version on the same shifted traffic (``liveAccuracy``). Times are seconds since
the demo started. :func:`draw_report` turns the timeline into the picture with matplotlib (Agg: no
display needed).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Event kinds in the timeline, and how the picture draws them (colour, label in the legend).
EVENT_STYLES: dict[str, tuple[str, str]] = {
    "retrain-requested": ("tab:purple", "retrain requested"),
    "version-validated": ("tab:green", "version validated"),
    "canary-step": ("tab:orange", "canary step"),
    "promoted": ("tab:blue", "promoted"),
    "rolled-back": ("tab:red", "rolled back"),
}
#: Event reasons of the InferenceService, as the operator posts them, and their kind here.
EVENT_REASONS = {
    "RetrainRequested": "retrain-requested",
    "CanaryStep": "canary-step",
    "Promoted": "promoted",
    "RolledBack": "rolled-back",
    "RolloutFailed": "rolled-back",
}

#: The message of the Event the operator posts when a condition flips (its reason is the
#: condition's, such as RolledBack).
CONDITION_FLIP = re.compile(r"^[A-Z][A-Za-z]*=(True|False|Unknown)\b")


def _number(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def parse_time(value: Any) -> float | None:
    """Seconds since the epoch of a Kubernetes timestamp ("2025-03-01T10:00:00Z"), or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass
class DemoRecorder:
    """The demo's timeline, filled in as the demo goes (thread-safe: traffic runs in a thread)."""

    started: float = field(default_factory=time.time)
    stages: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    #: The old and the retrained version's accuracy on the shifted traffic (see ``live_accuracy``).
    live: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def now(self) -> float:
        return round(time.time() - self.started, 2)

    def since_start(self, epoch: float) -> float:
        return round(epoch - self.started, 2)

    # --- stages -----------------------------------------------------------------------------

    def stage_started(self, key: str, title: str) -> None:
        with self._lock:
            self.stages.append({"key": key, "title": title, "start": self.now(), "numbers": {}})

    def note(self, **numbers: Any) -> None:
        """Numbers of the current stage (accuracy, versions, weights, ...)."""
        with self._lock:
            if self.stages:
                self.stages[-1]["numbers"].update(numbers)

    def stage_finished(self, outcome: str, detail: str) -> None:
        with self._lock:
            if self.stages:
                self.stages[-1].update(end=self.now(), outcome=outcome, detail=detail)

    def live_accuracy(self, **comparison: Any) -> None:
        """The loop's outcome: ``before`` (the old version on the shifted traffic), ``after`` (the
        retrained one on the same traffic), each ``{version, accuracy, labelled, correct}``, and
        the ``margin`` the demo requires."""
        with self._lock:
            self.live.update(comparison)

    # --- samples and events -------------------------------------------------------------------

    def sample(self, isvc: dict[str, Any], sent: int) -> None:
        """One observation of the InferenceService's status (skipped when nothing changed)."""
        status = isvc.get("status") or {}
        monitoring = status.get("monitoring") or {}
        rollout = status.get("rollout") or {}
        served = []
        for role in ("stable", "canary"):
            version = status.get(role) or {}
            if version.get("modelVersion"):
                served.append(
                    {
                        "role": role,
                        "version": str(version["modelVersion"]),
                        "weight": int(version.get("weight") or 0),
                    }
                )
        point = {
            "served": served,
            "accuracy": _number(monitoring.get("accuracy")),
            "driftShare": _number(monitoring.get("driftShare")),
            "labelledSamples": monitoring.get("labelledSamples"),
            "rolloutPhase": rollout.get("phase"),
            "rolloutStep": rollout.get("step"),
        }
        with self._lock:
            if (
                self.samples
                and {k: v for k, v in self.samples[-1].items() if k not in ("t", "sent")} == point
            ):
                return
            self.samples.append({"t": self.now(), "sent": sent, **point})

    def event(self, kind: str, message: str, at: float | None = None) -> None:
        """An event of the loop; ``at``: seconds since the epoch (default: now)."""
        with self._lock:
            t = self.since_start(at) if at is not None else self.now()
            entry = {"t": t, "kind": kind, "message": message}
            if entry not in self.events:
                self.events.append(entry)

    def add_cluster_events(self, events: list[dict[str, Any]], model_versions: list[dict[str, Any]]) -> None:
        """Events from the InferenceService's Kubernetes Events and the ModelVersions' conditions."""
        for item in events:
            if CONDITION_FLIP.match(str(item.get("message") or "")):
                continue  # "Degraded=True: ..." repeats, as a condition, an event already here
            kind = EVENT_REASONS.get(str(item.get("reason")))
            at = parse_time(item.get("lastTimestamp") or item.get("eventTime") or item.get("firstTimestamp"))
            if kind is not None and at is not None:
                self.event(kind, str(item.get("message") or ""), at)
        for mv in model_versions:
            for condition in (mv.get("status") or {}).get("conditions") or []:
                at = parse_time(condition.get("lastTransitionTime"))
                if (
                    condition.get("type") == "Validated"
                    and condition.get("status") == "True"
                    and at is not None
                ):
                    version = (mv.get("status") or {}).get("resolvedVersion") or mv["metadata"]["name"]
                    self.event(
                        "version-validated",
                        f"version {version} validated: {condition.get('message', '')}",
                        at,
                    )

    # --- output -------------------------------------------------------------------------------

    def timeline(self, outcome: str) -> dict[str, Any]:
        with self._lock:
            return {
                "startedAt": dt.datetime.fromtimestamp(self.started, dt.UTC).isoformat(),
                "duration": self.now(),
                "outcome": outcome,
                "stages": [dict(stage) for stage in self.stages],
                "samples": list(self.samples),
                "events": sorted(self.events, key=lambda e: e["t"]),
                "liveAccuracy": dict(self.live),
            }

    def write(self, directory: Path, outcome: str) -> Path:
        """``directory/timeline.json`` and ``directory/demo.png``; returns ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        timeline = self.timeline(outcome)
        (directory / "timeline.json").write_text(json.dumps(timeline, indent=2) + "\n")
        draw_report(timeline, directory / "demo.png")
        return directory


def _weights(samples: list[dict[str, Any]]) -> tuple[list[float], dict[str, list[float]]]:
    """Sample times, and each version's traffic share (%) at each of them."""
    versions = sorted({s["version"] for p in samples for s in p["served"]}, key=lambda v: (len(v), v))
    times = [p["t"] for p in samples]
    shares: dict[str, list[float]] = {v: [] for v in versions}
    for point in samples:
        served = {s["version"]: s["weight"] for s in point["served"]}
        for version in versions:
            shares[version].append(float(served.get(version, 0)))
    return times, shares


def draw_report(timeline: dict[str, Any], path: Path) -> None:
    """The picture: traffic per version, accuracy and drift share over time, the loop's events
    as marks, and the stages underneath."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    samples = [p for p in timeline["samples"] if p["served"]]
    end = max([timeline["duration"], *(s.get("end", s["start"]) for s in timeline["stages"])])
    figure, (traffic, quality, stages) = plt.subplots(
        3, 1, figsize=(14, 9), sharex=True, gridspec_kw={"height_ratios": [3, 3, 1.4]}
    )
    figure.suptitle(f"mlops-operator demo ({timeline['outcome']}, {end:.0f} s)", fontsize=14)

    times, shares = _weights(samples)
    if times:
        times = [*times, end]
        bottom = [0.0] * len(times)
        colours = plt.get_cmap("Set2")
        for index, (version, share) in enumerate(shares.items()):
            values = [*share, share[-1]]
            top = [b + v for b, v in zip(bottom, values, strict=True)]
            traffic.fill_between(
                times, bottom, top, step="post", color=colours(index), alpha=0.85, label=f"version {version}"
            )
            bottom = top
    traffic.set_ylim(0, 105)
    traffic.set_ylabel("traffic per version (%)")
    traffic.legend(loc="upper left", fontsize=9)

    accuracy = [(p["t"], p["accuracy"]) for p in samples if p["accuracy"] is not None]
    drift = [(p["t"], p["driftShare"]) for p in samples if p["driftShare"] is not None]
    if accuracy:
        quality.step(
            *zip(*accuracy, strict=True), where="post", color="black", label="accuracy (live labels)"
        )
    if drift:
        quality.step(*zip(*drift, strict=True), where="post", color="tab:brown", label="drift share")
    live = timeline.get("liveAccuracy") or {}
    if live.get("before") and live.get("after"):
        before, after = live["before"], live["after"]
        quality.text(
            0.99,
            0.04,
            f"live accuracy on the shifted traffic: version {before['version']} {before['accuracy']:.2f} "
            f"-> version {after['version']} {after['accuracy']:.2f} (retrained on captured labels)",
            transform=quality.transAxes,
            ha="right",
            fontsize=9,
            bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "tab:gray"},
        )
    quality.set_ylim(-0.05, 1.08)
    quality.set_ylabel("accuracy, drift share")
    quality.grid(alpha=0.3)
    quality.legend(loc="lower left", fontsize=9)

    handles = []
    for kind, (colour, label) in EVENT_STYLES.items():
        marks = [e for e in timeline["events"] if e["kind"] == kind]
        if not marks:
            continue
        handles.append(Line2D([0], [0], color=colour, linestyle="--", label=label))
        for mark in marks:
            for axes in (traffic, quality):
                axes.axvline(mark["t"], color=colour, linestyle="--", linewidth=1.2, alpha=0.8)
            if kind == "canary-step":
                text = (
                    mark["message"].split(" receives ")[-1].split(" ")[0]
                    if " receives " in mark["message"]
                    else ""
                )
                traffic.annotate(text, (mark["t"], 101), fontsize=8, color=colour, ha="center")
    if handles:
        quality.legend(
            handles=[*quality.get_legend_handles_labels()[0], *handles], loc="lower left", fontsize=9, ncol=2
        )

    palette = {"passed": "tab:green", "failed": "tab:red"}
    for row, stage in enumerate(timeline["stages"]):
        start, finish = stage["start"], stage.get("end", end)
        stages.broken_barh(
            [(start, max(finish - start, 0.5))],
            (row % 2, 0.8),
            color=palette.get(str(stage.get("outcome")), "tab:gray"),
            alpha=0.6,
        )
        stages.text(start + 0.5, row % 2 + 0.4, stage["key"], va="center", fontsize=8)
    stages.set_yticks([])
    stages.set_ylim(0, 2)
    stages.set_xlim(0, end)
    stages.set_xlabel("seconds since the demo started")
    stages.set_ylabel("stages")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
