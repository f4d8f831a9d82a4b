"""Shadow rollouts without an API server: the decision, the paired analysis and the mirror itself.

The decision tests drive :func:`decide_rollout` with a fake clock and simulated stable
servers whose mirror counters grow as traffic is copied and labelled. The mirror tests run
two real ASGI model servers in-process (stable copying to the candidate over HTTP on
loopback) and check what stable's ``/monitoring`` reports.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from prometheus_client import CollectorRegistry
from sklearn.linear_model import LogisticRegression

from mlops_operator.api.inferenceservice import InferenceServiceSpec, RolloutStatus
from mlops_operator.monitoring.online import MonitorConfig, OnlineMonitor
from mlops_operator.rollout.canary_analysis import ShadowCounters, VersionCounters, window
from mlops_operator.rollout.rollout_plan import (
    RolloutDecision,
    RolloutObservation,
    VersionState,
    decide_rollout,
)
from mlops_operator.rollout.shadow_analysis import paired_check
from mlops_operator.serving.asgi_app import ServerConfig, ServingApp
from mlops_operator.serving.served_model import ServedModel, sklearn_predict_fn
from mlops_operator.serving.shadow_mirror import SHADOW_HEADER, ShadowMirror

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def shadow_spec(**analysis: Any) -> InferenceServiceSpec:
    return InferenceServiceSpec.model_validate(
        {
            "model": {"name": "iris", "version": "2"},
            "replicas": 2,
            "rollout": {
                "strategy": "Shadow",
                "shadow": {"margin": "0.05"},
                "analysis": {
                    "interval": "30s",
                    "threshold": 2,
                    "minSamples": 200,
                    "minRequests": 50,
                    "progressDeadlineSeconds": 300,
                    **analysis,
                },
            },
        }
    )


@dataclass
class ShadowWorld:
    """Stable "1" and the Shadow candidate "2"; stable's process counts the mirror's pairs."""

    spec: InferenceServiceSpec = field(default_factory=shadow_spec)
    now: dt.datetime = T0
    stable: str | None = "1"
    status: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(
        default_factory=lambda: [{"modelVersion": "1", "promotedAt": "2026-02-01T00:00:00Z"}]
    )
    ready: dict[str, int] = field(default_factory=lambda: {"1": 2})
    problems: dict[str, tuple[str, str]] = field(default_factory=dict)
    stable_counts: VersionCounters = field(default_factory=VersionCounters)
    candidate_counts: VersionCounters = field(default_factory=VersionCounters)
    instance: str = "stable-a"
    mirror: str | None = None
    decisions: list[RolloutDecision] = field(default_factory=list)

    @property
    def phase(self) -> str:
        return str((self.status or {}).get("phase", "Idle"))

    def decide(self, command: str | None = None) -> RolloutDecision:
        candidate = (self.status or {}).get("candidate")
        observation = RolloutObservation(
            now=self.now,
            spec=self.spec,
            stable_version=self.stable,
            target_version="2",
            rollout=copy.deepcopy(self.status),
            history=copy.deepcopy(self.history),
            stable=VersionState(
                str(self.stable),
                ready_replicas=self.ready.get(str(self.stable), 0),
                counters=[(self.instance, self.stable_counts)],
            ),
            candidate=VersionState(
                candidate,
                ready_replicas=self.ready.get(candidate, 0),
                problem=self.problems.get(candidate),
                counters=[("cand-a", self.candidate_counts)],
            )
            if candidate
            else None,
            command=command,
        )
        decision = decide_rollout(observation)
        RolloutStatus.model_validate(decision.rollout)  # what the API server would accept
        self.status = json.loads(json.dumps(decision.rollout))
        self.history = [*self.history, *decision.history]
        self.stable = decision.stable_version
        if decision.mirror != self.mirror:
            # The controller rolls stable's pods with the new mirror setting: a new process.
            self.mirror = decision.mirror
            self.instance = f"stable-{len(self.decisions)}"
            self.stable_counts = VersionCounters()
        self.decisions.append(decision)
        return decision

    def serve(
        self, requests: int, *, b_rate: float, c_rate: float, labelled: float = 1.0, errors: int = 0
    ) -> None:
        """Requests to stable; copies to the candidate when mirroring, with b/c discordant shares."""
        self.stable_counts = self.stable_counts + VersionCounters(
            requests=requests, latency=((0.1, requests), (float("inf"), requests))
        )
        if self.mirror is None:
            return
        pairs = round(requests * labelled)
        shadow = ShadowCounters(
            version=self.mirror,
            mirrored=requests,
            compared=requests,
            agreed=round(requests * (1 - b_rate - c_rate)),
            pairs=pairs,
            stable_only=round(pairs * b_rate),
            candidate_only=round(pairs * c_rate),
        )
        self.stable_counts = self.stable_counts + VersionCounters(shadow=shadow)
        self.candidate_counts = self.candidate_counts + VersionCounters(
            requests=requests, errors=errors, latency=((0.1, requests), (float("inf"), requests))
        )

    def tick(
        self, requests: int = 100, *, b_rate: float = 0.02, c_rate: float = 0.02, **kwargs: Any
    ) -> RolloutDecision:
        self.serve(requests, b_rate=b_rate, c_rate=c_rate, **kwargs)
        self.now += dt.timedelta(seconds=30)
        return self.decide()


def mirrored_world(**spec: Any) -> ShadowWorld:
    world = ShadowWorld(spec=shadow_spec(**spec)) if spec else ShadowWorld()
    first = world.decide()
    assert world.phase == "Progressing" and first.mirror is None
    assert first.candidate is not None and first.candidate.replicas == 2  # full size: it takes all traffic
    world.ready["2"] = 2
    world.now += dt.timedelta(seconds=5)
    started = world.decide()
    assert started.mirror == "2" and world.status is not None and world.status["reason"] == "Mirroring"
    return world


# --- the decision ------------------------------------------------------------------------------------


def test_shadow_keeps_all_traffic_on_stable_and_promotes_an_equal_candidate() -> None:
    world = mirrored_world()
    seen = []
    while world.phase == "Progressing":
        decision = world.tick(100, b_rate=0.02, c_rate=0.02)
        seen.append(decision.weights)
        assert len(world.decisions) < 40, world.status
    assert all(weights == {"stable": 100, "canary": 0} for weights in seen[:-1])
    assert world.phase == "Succeeded" and world.stable == "2"
    promoted = world.decisions[-1]
    assert promoted.weights == {"stable": 100, "canary": 0} and promoted.mirror is None
    assert "AnalysisPassed" in [reason for _, reason, _ in promoted.events]
    assert world.history[-1]["modelVersion"] == "2" and world.history[-1]["replaced"] == "1"
    assert "labelled pairs" in world.history[-1]["reason"]
    # The pairs that decided it, and never before minSamples of them.
    passed = next(e for e in promoted.events if e[1] == "AnalysisPassed")[2]
    pairs = int(passed.split(" on ")[1].split(" labelled")[0])
    assert pairs >= 200


def test_shadow_rejects_a_worse_candidate_with_the_numbers() -> None:
    world = mirrored_world()
    decision = None
    while world.phase == "Progressing":
        decision = world.tick(100, b_rate=0.15, c_rate=0.01)
        assert len(world.decisions) < 40
    assert decision is not None and world.phase == "RolledBack" and world.stable == "1"
    assert world.status is not None and world.status["reason"] == "ShadowRejected"
    assert "2" in world.status["rejectedVersions"]
    assert decision.candidate is not None and decision.candidate.replicas == 0 and decision.mirror is None
    warning = next(e for e in decision.events if e[1] == "RolledBack")
    assert warning[0] == "Warning" and "worse than stable by more than 0.05" in warning[2]
    assert "stable alone right" in warning[2] and "McNemar p" in warning[2]
    shadow = world.status["shadow"]
    assert shadow["pairs"] >= 200 and float(shadow["upperBound"]) < -0.05
    # Not tried again while the target stays.
    world.tick()
    assert world.phase == "RolledBack" and world.decisions[-1].mirror is None


def test_shadow_waits_for_labels_and_applies_on_no_data() -> None:
    world = mirrored_world(onNoData="Fail")
    for _ in range(9):
        world.tick(100, labelled=0.0)
        assert world.phase == "Progressing"
    assert world.status is not None and world.status["reason"] == "NoData"
    assert "no labelled pair yet" in world.status["message"]
    world.tick(100, labelled=0.0)  # 300 s since the mirror began
    assert world.phase == "Failed" and world.status["reason"] == "NoData"


def test_shadow_rejects_a_candidate_that_errors_on_the_copies() -> None:
    world = mirrored_world(metrics=[{"name": "error-rate", "max": "0.05"}])
    world.tick(100, errors=30, labelled=0.0)
    assert world.phase == "Progressing" and world.status is not None and world.status["failedChecks"] == 1
    world.tick(100, errors=30, labelled=0.0)
    assert world.phase == "RolledBack" and world.status["reason"] == "AnalysisFailed"
    assert "error-rate" in world.status["message"]


def test_shadow_candidate_that_cannot_serve_is_aborted_before_mirroring() -> None:
    world = ShadowWorld()
    world.decide()
    world.problems["2"] = ("CrashLoopBackOff", "pod iris-2-x: CrashLoopBackOff (exit code 3): boom")
    world.now += dt.timedelta(seconds=5)
    decision = world.decide()
    assert world.phase == "Failed" and world.status is not None
    assert world.status["reason"] == "CrashLoopBackOff" and decision.mirror is None
    assert decision.candidate is not None and decision.candidate.replicas == 0


def test_shadow_waits_for_a_ready_stable() -> None:
    world = ShadowWorld(ready={"1": 0})
    decision = world.decide()
    assert world.status is not None and world.status["reason"] == "StableNotReady"
    assert decision.candidate is None and decision.mirror is None


def test_shadow_survives_a_restart_and_pauses() -> None:
    world = mirrored_world()
    world.tick(100)
    stored = copy.deepcopy(world.status)
    assert stored is not None and stored["strategy"] == "Shadow"
    # A restarted operator reads the same status: same mirror, same baseline, same start.
    again = world.decide()
    assert again.mirror == "2" and world.status is not None
    assert world.status["baseline"] == stored["baseline"] and world.status["startedAt"] == stored["startedAt"]
    # A spec edit to Canary does not change the running rollout.
    world.spec = world.spec.model_copy(
        update={"rollout": world.spec.rollout.model_copy(update={"strategy": "Canary"})}
    )
    assert world.decide().weights == {"stable": 100, "canary": 0}
    paused = world.decide("pause")
    assert world.phase == "Paused" and paused.mirror == "2"
    assert paused.candidate is not None and paused.candidate.replicas == 2
    world.decide("resume")
    assert world.phase == "Progressing"


def test_shadow_promote_and_abort_commands() -> None:
    world = mirrored_world()
    aborted = world.decide("abort")
    assert world.phase == "RolledBack" and aborted.mirror is None and world.stable == "1"
    world = mirrored_world()
    world.decide("promote")
    assert world.phase == "Succeeded" and world.stable == "2"


# --- the paired analysis -----------------------------------------------------------------------------


def test_paired_check_verdicts() -> None:
    none, _ = paired_check(None, margin=0.02, alpha=0.05, min_samples=100)
    assert none.verdict == "NoData" and none.samples == 0
    few, _ = paired_check(
        ShadowCounters("2", pairs=50, stable_only=0, candidate_only=0),
        margin=0.02,
        alpha=0.05,
        min_samples=100,
    )
    assert few.verdict == "NoData" and "50 of 100" in few.message
    equal, test = paired_check(
        ShadowCounters("2", pairs=2000, stable_only=20, candidate_only=20),
        margin=0.02,
        alpha=0.05,
        min_samples=100,
    )
    assert equal.verdict == "Pass" and test is not None and test.lower_bound > -0.02
    worse, test = paired_check(
        ShadowCounters("2", pairs=1000, stable_only=150, candidate_only=10),
        margin=0.02,
        alpha=0.05,
        min_samples=100,
    )
    assert worse.verdict == "Fail" and test is not None and test.upper_bound < -0.02
    unsure, _ = paired_check(
        ShadowCounters("2", pairs=300, stable_only=12, candidate_only=6),
        margin=0.02,
        alpha=0.05,
        min_samples=100,
    )
    assert unsure.verdict == "NoData" and "inconclusive" in unsure.message


def test_paired_check_rejects_an_equal_candidate_at_most_alpha_of_the_time() -> None:
    """Checked at every interval, the gate's false rejections stay under alpha (always-valid bounds)."""
    rng = np.random.default_rng(7)
    rollouts, looks, per_look, alpha = 400, 30, 40, 0.05
    rejected = 0
    for _ in range(rollouts):
        b = c = n = 0
        for _ in range(looks):
            # Equal models, 10% discordant pairs split evenly.
            outcome = rng.choice(3, size=per_look, p=[0.9, 0.05, 0.05])
            n += per_look
            b += int((outcome == 1).sum())
            c += int((outcome == 2).sum())
            verdict, _ = paired_check(
                ShadowCounters("2", pairs=n, stable_only=b, candidate_only=c),
                margin=0.0,
                alpha=alpha,
                min_samples=100,
            )
            if verdict.verdict == "Fail":
                rejected += 1
                break
    assert rejected / rollouts <= alpha


def test_shadow_window_ignores_processes_mirroring_another_version() -> None:
    base = VersionCounters(shadow=ShadowCounters("2", mirrored=10, pairs=5))
    now = VersionCounters(shadow=ShadowCounters("2", mirrored=30, pairs=9, stable_only=1))
    assert window([("a", now)], [("a", base)]).shadow == ShadowCounters(
        "2", mirrored=20, pairs=4, stable_only=1
    )
    # A restarted process (new instance) counts from zero; the wire form round-trips.
    assert VersionCounters.from_dict(now.to_dict()) == now
    assert window([("b", now)], [("a", base)]).shadow == now.shadow


# --- the mirror, for real ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _model(flip: bool, version: str) -> ServedModel:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 2))
    y = (x[:, 0] > 0).astype(int)
    fitted = LogisticRegression().fit(x, 1 - y if flip else y)
    predict, classes = sklearn_predict_fn(fitted)
    return ServedModel(
        feature_names=None,
        n_features=2,
        predict_fn=predict,
        is_classifier=True,
        classes=classes,
        name="toy",
        version=version,
    )


def _monitor(version: str) -> OnlineMonitor:
    return OnlineMonitor(None, MonitorConfig(task="classification"), "toy", version, CollectorRegistry())


class _Server:
    """A ServingApp on uvicorn in a thread, on a free loopback port."""

    def __init__(self, app: ServingApp) -> None:
        self.port = _free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def _serving(version: str, flip: bool, shadow_url: str | None = None, **config: Any) -> ServingApp:
    app = ServingApp(
        ServerConfig(
            freeze_gc=False, shadow_url=shadow_url, shadow_version="2" if shadow_url else None, **config
        ),
        model_name="toy",
        model_version=version,
    )
    app.attach(_model(flip, version), _monitor(version))
    return app


def _poll(fetch: Any, done: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"not reached: {value}"
        time.sleep(0.05)


@pytest.mark.parametrize("flip", [False, True], ids=["same-model", "opposite-model"])
def test_stable_server_mirrors_and_counts_pairs(flip: bool) -> None:
    with (
        _Server(_serving("2", flip)) as candidate_url,
        _Server(_serving("1", False, candidate_url)) as stable_url,
    ):
        rows = [[1.0, 0.3], [-1.0, 0.2], [2.0, -1.0], [-0.5, 0.5]] * 10
        ids = []
        with httpx.Client(base_url=stable_url) as client:
            for row in rows:
                answer = client.post("/predict", json={"features": row}).json()
                assert answer["model_version"] == "1"
                ids.append((answer["request_id"], answer["prediction"], row))
            # v2 requests are mirrored too.
            v2 = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 2], "data": [1.0, 0.3]}]}
            assert client.post("/v2/models/toy/infer", json=v2).status_code == 200

            def shadow() -> dict[str, Any]:
                return dict(client.get("/monitoring").json()["counters"]["shadow"])

            counters = _poll(shadow, lambda s: s["mirrored"] == len(rows) + 1)
            assert counters["version"] == "2" and counters["dropped"] == counters["failed"] == 0
            assert counters["compared"] == len(rows) + 1
            assert counters["agreed"] == (0 if flip else len(rows) + 1)
            # Labels: the truth is x0 > 0, so stable is right and the flipped candidate wrong.
            feedback = [{"request_id": rid, "label": int(row[0] > 0)} for rid, _, row in ids]
            assert client.post("/feedback", json=feedback).json()["accepted"] == len(rows)
            counters = shadow()
        assert counters["pairs"] == len(rows)
        assert counters["stableOnly"] == (len(rows) if flip else 0) and counters["candidateOnly"] == 0
    # The candidate saw the copies as ordinary requests, marked as copies.
    assert SHADOW_HEADER.startswith("x-")


def test_a_dead_or_slow_candidate_never_delays_stable() -> None:
    dead = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    stable = _serving("1", False, dead, shadow_max_inflight=2, shadow_timeout_ms=200)
    with _Server(stable) as stable_url, httpx.Client(base_url=stable_url) as client:
        for _ in range(20):
            response = client.post("/predict", json={"features": [1.0, 0.0]})
            assert response.status_code == 200
        counters = _poll(
            lambda: client.get("/monitoring").json()["counters"]["shadow"],
            lambda s: s["mirrored"] + s["dropped"] == 20,
        )
    assert counters["failed"] == counters["mirrored"] and counters["pairs"] == 0


def test_mirror_drops_beyond_its_bound() -> None:
    async def scenario() -> dict[str, Any]:
        release = asyncio.Event()

        async def slow(request: httpx.Request) -> httpx.Response:
            await release.wait()
            return httpx.Response(200, json={"prediction": [0]})

        mirror = ShadowMirror("http://candidate", "2", classification=True, max_inflight=3, timeout_s=5)
        mirror._client = httpx.AsyncClient(transport=httpx.MockTransport(slow))
        for i in range(10):
            mirror.submit(np.array([[1.0, 2.0]]), [0], [f"id-{i}"])
        assert mirror.inflight == 3
        mirror.label("id-1", 1)  # the label comes before the candidate's answer: counted once it does
        release.set()
        await asyncio.wait_for(asyncio.gather(*mirror._tasks), 5)
        mirror.label("id-0", 0)
        mirror.label("id-9", 0)  # dropped: never compared, so not a pair
        counters = mirror.counters()
        await mirror.close()
        return counters

    counters = asyncio.run(scenario())
    assert counters["dropped"] == 7 and counters["mirrored"] == 3 and counters["agreed"] == 3
    assert counters["pairs"] == 2 and counters["stableOnly"] == counters["candidateOnly"] == 0
