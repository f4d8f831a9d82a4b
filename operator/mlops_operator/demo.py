"""``mlops-operator demo``: the product's story, end to end, on this machine.

Starts the sandbox (emulated API server, local runtime, embedded MLflow, the operator), then
plays the loop as a user would see it: a TrainingJob trains the iris model and registers it;
its ModelVersion passes its gates; an InferenceService serves it on two replicas and captures
its predictions and the labels it receives to Parquet (``spec.capture``); steady traffic with
correct ground truth keeps drift and accuracy healthy; then the measurements shift (a new
instrument) and the labels that come back follow the flowers' real species, a rule the old
model never learnt for these measurements: drift and accuracy move, the operator reports it
(DriftDetected, Degraded) and asks the TrainingJob for a new run, which trains on the iris data
plus the captured, labelled production rows (``dataset.production``) and is validated against
production; the new version rolls out as a canary on the shifted traffic, judged against the
version it replaces on the same live labels, and is promoted, and the demo checks that its live
accuracy on that traffic beats the old version's by :data:`LIVE_MARGIN`; a version that passed
its offline gates (trained on data with two labels swapped) is rolled back by the live analysis
on its own; a killed replica comes back.
Every stage waits for the cluster's own status (with a deadline) and the
demo exits non-zero naming the stage that did not happen. The sandbox is stopped at the end
(``--keep`` leaves it running to explore with kubectl).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar

import httpx
import numpy as np
import yaml

from mlops_operator.controllers.conditions import get_condition
from mlops_operator.demo_report import EVENT_REASONS, DemoRecorder
from mlops_operator.kube_client import Kube

T = TypeVar("T")
#: The demo's rollout: the example's analysis, at a pace a person watches (5 s steps, few samples).
DEMO_ROLLOUT: dict[str, Any] = {
    "strategy": "Canary",
    "analysis": {
        "interval": "5s",
        "threshold": 2,
        "stepWeights": [10, 25, 50],
        "minRequests": 10,
        "minSamples": 60,
        "progressDeadlineSeconds": 180,
        "metrics": [
            {"name": "error-rate", "max": "0.01"},
            {"name": "latency-p99", "max": "0.25"},
            {"name": "accuracy", "min": "0.9", "maxDropVsStable": "0.05"},
        ],
    },
}
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NAMESPACE = "default"
#: The shift of the demo's skewed traffic (cm added to sepal length, sepal width, petal length,
#: petal width): a new instrument. Three of the four features drift, and the model trained on
#: iris alone puts most of these flowers in the wrong species (about a third are right).
SHIFT = np.array([2.0, -1.0, 0.0, 1.0])
#: How much better (accuracy, 0..1) the retrained version must do than the old one on the same
#: shifted live traffic, or the demo fails: 10 points.
LIVE_MARGIN = 0.10
#: Fewest labelled predictions of each version on the shifted traffic to compare them at all.
LIVE_MIN_SAMPLES = 50


class DemoError(Exception):
    """A stage did not happen: the message says what was expected and what was seen."""


@dataclass
class Traffic:
    sent: int = 0
    labelled: int = 0
    shifted: int = 0  # labelled rows of shifted traffic


class LiveAccuracy:
    """Accuracy per served version on the shifted traffic, from the answers and the labels sent.

    The demo knows each row's label and each answer names the version that made it
    (``model_version``), so this is the accuracy the servers' monitors compute, per version,
    on exactly the requests each version served. Thread-safe: background traffic adds too.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[int, int]] = {}

    def add(self, version: str, correct: int, total: int) -> None:
        with self._lock:
            right, seen = self._counts.get(version, (0, 0))
            self._counts[version] = (right + correct, seen + total)

    def snapshot(self) -> dict[str, tuple[int, int]]:
        with self._lock:
            return dict(self._counts)

    @staticmethod
    def since(
        now: dict[str, tuple[int, int]], before: dict[str, tuple[int, int]]
    ) -> dict[str, dict[str, Any]]:
        """Per version: correct, labelled and accuracy between two snapshots."""
        window = {}
        for version, (right, seen) in now.items():
            right -= before.get(version, (0, 0))[0]
            seen -= before.get(version, (0, 0))[1]
            if seen:
                window[version] = {"correct": right, "labelled": seen, "accuracy": round(right / seen, 4)}
        return window


class Demo:
    def __init__(self, directory: Path, out: TextIO, timeout: float) -> None:
        self.directory = directory
        self.out = out
        self.timeout = timeout
        self.started = time.monotonic()
        self.kube: Kube | None = None
        self.url = ""
        self.traffic = Traffic()
        self.retrained = ""
        self.live = LiveAccuracy()
        self.live_before: dict[str, dict[str, Any]] = {}
        self.capture_uri = (directory.resolve() / "capture").as_uri()
        self.sender: tuple[threading.Thread, threading.Event] | None = None
        self.sender_error: Exception | None = None
        self.report = DemoRecorder()
        rng = np.random.default_rng(7)
        from sklearn.datasets import load_iris

        iris = load_iris()
        self.rng = rng
        self.features = iris.data
        self.labels = [str(iris.target_names[t]) for t in iris.target]
        self.classes = [str(name) for name in iris.target_names]

    # --- output -----------------------------------------------------------------------------

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def stage(self, number: int, total: int, key: str, title: str, action: Callable[[], str]) -> None:
        self.say(f"\n[{number}/{total}] {title} ...")
        began = time.monotonic()
        self.report.stage_started(key, title)
        try:
            detail = action()
        except DemoError as exc:
            self.say(f"  ✗ {title}: {exc}")
            self.report.stage_finished("failed", str(exc))
            raise
        except Exception as exc:  # anything unexpected still names the stage, then stops the demo
            self.say(f"  ✗ {title}: {type(exc).__name__}: {exc}")
            self.report.stage_finished("failed", f"{type(exc).__name__}: {exc}")
            raise DemoError(str(exc)) from exc
        self.report.stage_finished("passed", detail)
        self.say(f"  ✓ {title} ({time.monotonic() - began:.1f}s){': ' + detail if detail else ''}")

    # --- helpers ----------------------------------------------------------------------------

    def wait(self, what: str, probe: Callable[[], T | None], timeout: float | None = None) -> T:
        deadline = time.monotonic() + (timeout or self.timeout)
        last: Any = None
        while time.monotonic() < deadline:
            try:
                found = probe()
            except httpx.HTTPError as exc:
                last = exc
            else:
                if found:
                    return found
                last = found
            time.sleep(0.5)  # polling period; the probe decides
        raise DemoError(f"timed out waiting for {what}; last seen: {last!r}"[:2000])

    def get(self, kind: str, name: str) -> dict[str, Any]:
        assert self.kube is not None
        return self.kube.get(kind, NAMESPACE, name) or {}

    def condition(self, kind: str, name: str, type_: str) -> dict[str, Any]:
        return get_condition(self.get(kind, name).get("status", {}).get("conditions"), type_) or {}

    def wait_condition(
        self, kind: str, name: str, type_: str, status: str, timeout: float | None = None
    ) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            condition = self.condition(kind, name, type_)
            if condition.get("status") == status:
                return self.get(kind, name)
            # A terminal failure is worth stopping on at once, with its reason.
            ready = self.condition(kind, name, "Ready")
            if ready.get("status") == "False" and ready.get("reason") in (
                "InvalidSpec",
                "DataValidationFailed",
            ):
                raise DemoError(f"{kind} {name} failed: {ready.get('reason')}: {ready.get('message')}")
            return None

        return self.wait(f"{kind} {name} {type_}={status}", probe, timeout)

    def apply_example(self, name: str, **spec_changes: Any) -> dict[str, Any]:
        assert self.kube is not None
        manifest: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
        manifest["spec"].update(spec_changes)
        manifest["spec"] = {k: v for k, v in manifest["spec"].items() if v is not None}
        live, _ = self.kube.apply(manifest)
        return live

    # --- stages -----------------------------------------------------------------------------

    def start(self) -> str:

        from mlops_operator.sandbox import manager

        try:
            manager.up(manager.Options(directory=self.directory, timeout=self.timeout), err=self.out)
        except (manager.SandboxError, Exception) as exc:
            raise DemoError(str(exc)) from exc
        kubeconfig = self.directory.resolve() / "kubeconfig"
        self.kube = Kube.from_environment(str(kubeconfig))
        return f"kubectl --kubeconfig {kubeconfig} get mlops"

    def train(self) -> str:
        self.apply_example("iris-trainingjob.yaml", schedule=None)
        tj = self.wait_condition("TrainingJob", "iris-train", "Ready", "True", timeout=self.timeout * 2)
        run = tj["status"]["lastRun"]
        metrics = ", ".join(f"{k} {v}" for k, v in sorted((run.get("metrics") or {}).items()))
        self.report.note(
            run=run["name"], modelVersion=run.get("modelVersion"), metrics=run.get("metrics") or {}
        )
        return f"run {run['name']} registered iris-classifier version {run.get('modelVersion')} ({metrics})"

    def validate(self) -> str:
        name = self.get("TrainingJob", "iris-train")["status"]["latestModelVersion"]
        mv = self.wait_condition("ModelVersion", name, "Validated", "True")
        self.report.note(modelVersion=name, gateResults=mv["status"].get("gateResults") or [])
        gates = "; ".join(
            f"{g['metric']} {g.get('threshold', '')} -> {g.get('value', '-')} {'pass' if g['passed'] else 'FAIL'}"
            for g in mv["status"].get("gateResults") or []
        )
        return f"ModelVersion {name} Validated ({gates}); MLflow: {mv['status']['uri']}"

    def serve(self) -> str:
        assert self.kube is not None
        # Every server writes its predictions and the labels it receives under the demo's
        # directory (small batches, so the labels are on disk seconds after they arrive).
        capture = {"uri": self.capture_uri, "flushRows": 50, "flushSeconds": 2}
        self.apply_example("iris-inferenceservice.yaml", replicas=2, rollout=DEMO_ROLLOUT, capture=capture)
        # The TrainingJob's next runs add those labelled rows to the iris data. It is suspended
        # meanwhile: a spec change starts a run at once, and one now would find no labels
        # (DataValidationFailed). The retrain the operator will request waits for the resume.
        production = {"uri": self.capture_uri, "model": "iris-classifier", "since": "1d"}
        self.kube.patch(
            "TrainingJob",
            NAMESPACE,
            "iris-train",
            {"spec": {"suspend": True, "dataset": {"production": production}}},
        )
        isvc = self.wait(
            "InferenceService iris Ready with 2 replicas",
            lambda: (
                lambda obj: (
                    obj if (obj.get("status", {}).get("stable") or {}).get("readyReplicas") == 2 else None
                )
            )(self.wait_condition("InferenceService", "iris", "Ready", "True")),
        )
        service = self.get("Service", "iris")
        self.url = f"http://{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}"
        self.report.note(
            modelVersion=isvc["status"]["stable"]["modelVersion"], readyReplicas=2, capture=self.capture_uri
        )
        self.report.sample(isvc, self.traffic.sent)
        return (
            f"version {isvc['status']['stable']['modelVersion']} on 2 replicas at {self.url} (in a cluster: "
            f"{isvc['status']['url']}), capturing to {self.capture_uri}; iris-train will add the labelled "
            "rows (dataset.production), suspended until there are some"
        )

    def predict(self) -> str:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            one = client.post("/predict", json={"features": [5.1, 3.5, 1.4, 0.2]})
            v2 = client.post(
                "/v2/models/iris-classifier/infer",
                json={
                    "inputs": [
                        {"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [6.7, 3.0, 5.2, 2.3]}
                    ]
                },
            )
        if one.status_code != 200 or v2.status_code != 200:
            raise DemoError(
                f"/predict answered {one.status_code} {one.text[:200]}; v2 answered {v2.status_code} {v2.text[:200]}"
            )
        body = one.json()
        outputs = {o["name"]: o["data"] for o in v2.json()["outputs"]}
        self.report.note(prediction=body["prediction"], v2Prediction=outputs.get("predict"))
        return f"/predict -> {body['prediction']} (p={max(body['probability']):.2f}); v2 infer -> {outputs.get('predict')}"

    def send(self, rounds: int, *, skew: bool) -> None:
        """``rounds`` requests of 10 rows each, each followed by its ground truth.

        ``skew``: the measurements move by :data:`SHIFT` (a new instrument) while the labels stay
        the flowers' species, so the rule from measurements to species changed in that region;
        the accuracy of each version that answered is counted in :attr:`live`.
        """
        shift = SHIFT if skew else np.zeros(4)
        # A new connection per request, so the Service spreads them over both replicas.
        with httpx.Client(
            base_url=self.url, timeout=10, limits=httpx.Limits(max_keepalive_connections=0)
        ) as client:
            for _ in range(rounds):
                rows = self.rng.integers(0, len(self.features), size=10)
                batch = self.features[rows] + self.rng.normal(0, 0.05, size=(10, 4)) + shift
                response = client.post("/predict", json={"instances": batch.round(3).tolist()})
                if response.status_code != 200:
                    raise DemoError(f"/predict answered {response.status_code}: {response.text[:300]}")
                answer = response.json()
                ids = answer["request_id"]
                truth = [self.labels[i] for i in rows]
                feedback = client.post(
                    "/feedback", json=[{"request_id": i, "label": t} for i, t in zip(ids, truth, strict=True)]
                )
                if feedback.status_code != 200 or feedback.json()["unknown"]:
                    raise DemoError(f"/feedback answered {feedback.status_code}: {feedback.text[:300]}")
                self.traffic.sent += 10
                self.traffic.labelled += 10
                if skew:
                    correct = sum(str(p) == t for p, t in zip(answer["prediction"], truth, strict=True))
                    self.live.add(str(answer["model_version"]), correct, len(truth))
                    self.traffic.shifted += 10

    def timeline(self, until: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        """Print the operator's view of monitoring as it changes, until ``until`` holds."""
        seen: set[tuple[Any, ...]] = set()

        def probe() -> dict[str, Any] | None:
            isvc = self.get("InferenceService", "iris")
            monitoring = isvc.get("status", {}).get("monitoring") or {}
            drift = self.condition("InferenceService", "iris", "DriftDetected")
            degraded = self.condition("InferenceService", "iris", "Degraded")
            self.report.sample(isvc, self.traffic.sent)
            row = (
                monitoring.get("samples"),
                monitoring.get("driftShare"),
                monitoring.get("accuracy"),
                drift.get("status"),
                degraded.get("reason"),
            )
            if row not in seen:
                seen.add(row)
                features = ",".join(monitoring.get("driftedFeatures") or []) or "-"
                self.say(
                    f"  t={time.monotonic() - self.started:6.1f}s  sent {self.traffic.sent:5d} rows  "
                    f"window {monitoring.get('samples', 0):4d}  drift share {monitoring.get('driftShare', '-'):>5}  "
                    f"drifted {features:<40.40}  accuracy {monitoring.get('accuracy', '-'):>6}  "
                    f"DriftDetected={drift.get('status', '?')}  Degraded={degraded.get('status', '?')}({degraded.get('reason', '')})"
                )
            return isvc if until(isvc) else None

        return self.wait(what, probe, timeout=self.timeout)

    def steady(self) -> str:
        self.send(30, skew=False)

        def healthy(isvc: dict[str, Any]) -> bool:
            monitoring = isvc.get("status", {}).get("monitoring") or {}
            drift = get_condition(isvc["status"].get("conditions"), "DriftDetected") or {}
            return (
                monitoring.get("state") == "Ok"
                and drift.get("status") == "False"
                and "accuracy" in monitoring
            )

        isvc = self.timeline(healthy, "monitoring to report Ok with accuracy")
        monitoring = isvc["status"]["monitoring"]
        self._note_monitoring(monitoring)
        return f"no drift (share {monitoring['driftShare']}), accuracy {monitoring['accuracy']}"

    def skewed(self) -> str:
        before = self.live.snapshot()
        self.send(90, skew=True)
        self.live_before = LiveAccuracy.since(self.live.snapshot(), before)

        def degraded(isvc: dict[str, Any]) -> bool:
            conditions = isvc["status"].get("conditions")
            drift = get_condition(conditions, "DriftDetected") or {}
            bad = get_condition(conditions, "Degraded") or {}
            return drift.get("status") == "True" and bad.get("reason") == "AccuracyBelowThreshold"

        isvc = self.timeline(degraded, "DriftDetected=True and Degraded=AccuracyBelowThreshold")
        drift = get_condition(isvc["status"]["conditions"], "DriftDetected") or {}
        bad = get_condition(isvc["status"]["conditions"], "Degraded") or {}
        self._note_monitoring(isvc["status"].get("monitoring") or {})
        self.report.note(
            driftDetected=drift.get("message"), degraded=bad.get("reason"), liveAccuracy=self.live_before
        )
        served = ", ".join(
            f"version {v} {a['accuracy']} ({a['labelled']} labelled)" for v, a in self.live_before.items()
        )
        self.say(f"  live accuracy on the shifted traffic: {served}")
        return f"{drift.get('message')}; {bad.get('message')}"

    def _note_monitoring(self, monitoring: dict[str, Any]) -> None:
        self.report.note(
            driftShare=monitoring.get("driftShare"),
            driftedFeatures=monitoring.get("driftedFeatures") or [],
            accuracy=monitoring.get("accuracy"),
            labelledSamples=monitoring.get("labelledSamples"),
            rowsSent=self.traffic.sent,
        )

    def retrain(self) -> str:
        def retrained() -> dict[str, Any] | None:
            self.report.sample(self.get("InferenceService", "iris"), self.traffic.sent)
            tj = self.get("TrainingJob", "iris-train")
            runs = [r for r in tj.get("status", {}).get("runs") or [] if r.get("trigger") == "Retrain"]
            return (
                tj
                if runs and runs[-1].get("phase") == "Succeeded" and tj["status"].get("latestModelVersion")
                else None
            )

        assert self.kube is not None
        requested = self.wait(
            "the operator to request a retrain",
            lambda: (self.get("InferenceService", "iris").get("status", {}).get("retraining") or {}).get(
                "reason"
            ),
        )
        self.say(f"  retrain requested: {requested}")
        # The request waits on the suspended TrainingJob until the servers have written every
        # label the demo sent (the operator sums their capture counters in status).
        capture = self.wait(
            f"the servers to capture the {self.traffic.labelled} labels sent",
            lambda: (lambda c: c if c.get("labels", 0) >= self.traffic.labelled else None)(
                (self.get("InferenceService", "iris").get("status", {}).get("monitoring") or {}).get(
                    "capture"
                )
                or {}
            ),
        )
        if capture.get("state") != "Ok" or capture.get("dropped"):
            raise DemoError(f"capture is not healthy: {capture}")
        self.say(
            f"  the servers captured {capture['predictions']} predictions and {capture['labels']} labels "
            f"to {self.capture_uri}: resuming iris-train"
        )
        self.kube.patch("TrainingJob", NAMESPACE, "iris-train", {"spec": {"suspend": False}})
        tj = self.wait("the retraining run to register a new version", retrained, timeout=self.timeout * 2)
        name = tj["status"]["latestModelVersion"]
        version = tj["status"]["lastRun"]["modelVersion"]
        mv = self.wait_condition("ModelVersion", name, "Validated", "True")
        sources = {s["name"]: s for s in mv["spec"]["lineage"]["dataset"].get("sources") or []}
        production = sources.get("production") or {}
        # Every label sent must have reached the run: the new rule is learnt from the shifted ones.
        if production.get("rows", 0) < self.traffic.labelled:
            raise DemoError(
                f"{name} was trained on {production.get('rows', 0)} production rows; the demo sent "
                f"{self.traffic.labelled} labelled rows, {self.traffic.shifted} of them shifted "
                f"(lineage: {list(sources.values())})"
            )
        self.retrained = version
        self.report.note(
            reason=requested,
            run=tj["status"]["lastRun"]["name"],
            modelVersion=version,
            trigger=tj["status"]["lastRun"].get("trigger"),
            sources={k: v.get("rows") for k, v in sources.items()},
            production=production,
        )
        dataset = sources.get("dataset") or {}
        return (
            f"run {tj['status']['lastRun']['name']} ({requested}) trained on {dataset.get('rows')} rows of "
            f"{dataset.get('uri', 'the dataset')} + {production['rows']} labelled production rows (predicted "
            f"{production.get('firstRequestTime')} .. {production.get('lastRequestTime')}) -> {name} "
            "Validated against production (version 1)"
        )

    # --- rollouts ---------------------------------------------------------------------------

    def start_background_traffic(self) -> None:
        """The shifted traffic with its ground truth, flowing until the demo stops it."""
        if self.sender is not None:
            return
        stop = threading.Event()

        def loop() -> None:
            # A connection cut while a pod goes away (a retired version, a scaled-down canary)
            # is retried, as any client of a rolling Service must; failures that persist for
            # ~10 s are reported by the stage that waits on the rollout.
            failures = 0
            while not stop.is_set():
                try:
                    self.send(5, skew=True)
                    failures = 0
                except (httpx.TransportError, DemoError) as exc:
                    failures += 1
                    if failures >= 20:
                        self.sender_error = exc
                    stop.wait(0.5)
                except Exception as exc:  # anything else is a bug in the demo: report it at once
                    self.sender_error = exc
                    stop.wait(1.0)

        thread = threading.Thread(target=loop, name="demo-traffic", daemon=True)
        thread.start()
        self.sender = (thread, stop)

    def stop_background_traffic(self) -> None:
        if self.sender is not None:
            thread, stop = self.sender
            stop.set()
            thread.join(30)
            self.sender = None

    def watch_rollout(self, candidate: str, what: str) -> dict[str, Any]:
        """Print the rollout as the operator reports it, until it ends for ``candidate``."""
        seen: set[tuple[Any, ...]] = set()

        def probe() -> dict[str, Any] | None:
            if self.sender_error is not None:
                raise DemoError(f"the demo's traffic failed: {self.sender_error}")
            isvc = self.get("InferenceService", "iris")
            self.report.sample(isvc, self.traffic.sent)
            status = isvc.get("status", {})
            rollout = status.get("rollout") or {}
            if rollout.get("candidate") != candidate and rollout.get("target") != candidate:
                return None
            canary = status.get("canary") or {}
            analysis = ", ".join(
                f"{a['metric']} {a.get('value', '-')} ({a.get('verdict')})"
                for a in rollout.get("lastAnalysis") or []
            )
            row = (
                rollout.get("phase"),
                rollout.get("canaryWeight"),
                canary.get("weight"),
                rollout.get("failedChecks"),
                analysis,
            )
            if row not in seen:
                seen.add(row)
                self.say(
                    f"  t={time.monotonic() - self.started:6.1f}s  {rollout.get('phase', '?'):<11} step weight "
                    f"{rollout.get('canaryWeight', 0):>3}% (measured {canary.get('weight', 0):>3}%)  "
                    f"failed checks {rollout.get('failedChecks', 0)}  {analysis or rollout.get('message', '')}"[
                        :400
                    ]
                )
            if rollout.get("phase") in ("Succeeded", "RolledBack", "Failed") and rollout.get("candidate") in (
                None,
                candidate,
            ):
                return isvc
            return None

        return self.wait(what, probe, timeout=self.timeout * 2)

    def canary(self) -> str:
        version = self.retrained
        old = str(
            (self.get("InferenceService", "iris").get("status", {}).get("stable") or {}).get("modelVersion")
        )
        before = self.live.snapshot()
        self.start_background_traffic()
        isvc = self.watch_rollout(version, f"the canary of version {version} to end")
        live = LiveAccuracy.since(self.live.snapshot(), before)
        status = isvc["status"]
        rollout = status.get("rollout") or {}
        steps = [
            e["message"] for e in self.events("iris", "CanaryStep") if f"version {version} " in e["message"]
        ]
        if rollout.get("phase") != "Succeeded" or (status.get("stable") or {}).get("modelVersion") != version:
            raise DemoError(
                f"version {version} was not promoted: {rollout.get('phase')}: {rollout.get('message')}"
            )
        weights = [m.split(" receives ")[1].split("%")[0] for m in steps]
        # The operator's own evidence: the last accuracy comparison of its analysis.
        evidence = next(
            (
                a.get("message", "")
                for a in rollout.get("lastAnalysis") or []
                if a.get("metric") == "accuracy" and str(a.get("bound", "")).startswith("maxDropVsStable")
            ),
            "",
        )
        self.report.note(
            modelVersion=version,
            stepWeights=[int(w) for w in weights],
            promoted=True,
            liveAccuracy=live,
            liveMargin=LIVE_MARGIN,
            analysis=evidence,
        )
        self.recovered(old, version, live, evidence)
        if weights != [str(w) for w in DEMO_ROLLOUT["analysis"]["stepWeights"]]:
            raise DemoError(
                f"expected the canary steps {DEMO_ROLLOUT['analysis']['stepWeights']}, saw {weights}"
            )
        self.wait(
            f"version {version} on 2 ready replicas",
            lambda: (
                (self.get("InferenceService", "iris").get("status", {}).get("stable") or {}).get(
                    "readyReplicas"
                )
                == 2
            ),
        )
        return f"version {version} went {' -> '.join(w + '%' for w in weights)} -> promoted: {rollout.get('message')}"

    def recovered(self, old: str, new: str, live: dict[str, dict[str, Any]], evidence: str) -> None:
        """Print the live accuracy of both versions on the same shifted traffic; fail unless the
        retrained one is better by :data:`LIVE_MARGIN`."""
        for version in (old, new):
            seen = (live.get(version) or {}).get("labelled", 0)
            if seen < LIVE_MIN_SAMPLES:
                raise DemoError(
                    f"version {version} answered {seen} labelled rows of the shifted traffic during the canary; "
                    f"need {LIVE_MIN_SAMPLES} to compare ({live})"
                )
        before, after = live[old]["accuracy"], live[new]["accuracy"]
        gain = round((after - before) * 100, 1)
        first = self.live_before.get(old)
        self.say(
            "  live accuracy on the shifted traffic: "
            + (f"before the retrain version {old} {first['accuracy']}; " if first else "")
            + f"during the canary, on the same requests, version {old} {before} ({live[old]['labelled']} "
            f"labelled) vs version {new} {after} ({live[new]['labelled']} labelled): {gain:+} points "
            f"(the demo requires +{LIVE_MARGIN * 100:.0f})"
        )
        if evidence:
            self.say(f"  the operator's analysis: {evidence}")
        self.report.live_accuracy(
            before={"version": old, **(first or live[old])},
            after={"version": new, **live[new]},
            oldDuringCanary={"version": old, **live[old]},
            margin=LIVE_MARGIN,
        )
        if after - before < LIVE_MARGIN:
            raise DemoError(
                f"version {new}, retrained on the captured labels, is not better than version {old} on the "
                f"shifted traffic by {LIVE_MARGIN * 100:.0f} points: {after} vs {before}"
            )

    def bad_candidate(self) -> str:
        """A version that passes its offline gates but does worse on live traffic is rolled back."""
        assert self.kube is not None
        stable = str(
            (self.get("InferenceService", "iris").get("status", {}).get("stable") or {}).get("modelVersion")
        )
        # An upstream labelling bug: setosa and versicolor swapped in the exported data. The model
        # learns the swap, so it scores as well as ever on its own held-out split.
        data = self.directory.resolve() / "data" / "iris-relabelled.csv"
        data.parent.mkdir(parents=True, exist_ok=True)
        swap = {"setosa": "versicolor", "versicolor": "setosa", "virginica": "virginica"}
        rows = ["sepal_length,sepal_width,petal_length,petal_width,species"] + [
            ",".join(f"{x:.1f}" for x in features) + f",{swap[label]}"
            for features, label in zip(self.features, self.labels, strict=True)
        ]
        data.write_text("\n".join(rows) + "\n")
        manifest: dict[str, Any] = yaml.safe_load((EXAMPLES / "iris-trainingjob.yaml").read_text())
        manifest["metadata"]["name"] = "iris-train-relabelled"
        spec = manifest["spec"]
        spec.pop("schedule", None)
        spec["dataset"] = {**spec["dataset"], "uri": f"file://{data}"}
        spec["evaluation"]["gates"] = [{"metric": "accuracy", "min": "0.9"}]
        self.kube.apply(manifest)
        tj = self.wait_condition(
            "TrainingJob", "iris-train-relabelled", "Ready", "True", timeout=self.timeout * 2
        )
        name, version = tj["status"]["latestModelVersion"], tj["status"]["lastRun"]["modelVersion"]
        mv = self.wait_condition("ModelVersion", name, "Validated", "True")
        offline = (mv["status"].get("gateResults") or [{}])[0].get("value")
        self.say(f"  {name}: offline accuracy {offline}, Validated: it becomes the canary")
        isvc = self.watch_rollout(version, f"the analysis of version {version} to end")
        rollout = isvc["status"].get("rollout") or {}
        if rollout.get("phase") != "RolledBack" or rollout.get("reason") != "AnalysisFailed":
            raise DemoError(
                f"version {version} was not rolled back by the analysis: {rollout.get('phase')}: {rollout.get('message')}"
            )
        if (isvc["status"].get("stable") or {}).get("modelVersion") != stable:
            raise DemoError(f"version {stable} should serve after the rollback")
        self.stop_background_traffic()
        self.report.note(
            modelVersion=version,
            offlineAccuracy=offline,
            rolledBack=rollout.get("reason"),
            failedChecks=rollout.get("failedChecks"),
            stableVersion=stable,
        )
        return f"{rollout.get('message')}; version {stable} keeps serving"

    def events(self, name: str, reason: str) -> list[dict[str, Any]]:
        assert self.kube is not None
        found = [
            e
            for e in self.kube.list("Event", NAMESPACE)
            if e.get("involvedObject", {}).get("name") == name and e.get("reason") == reason
        ]
        return sorted(found, key=lambda e: int(e["metadata"]["resourceVersion"]))

    def recover(self) -> str:
        assert self.kube is not None
        pods = self.kube.list("Pod", NAMESPACE, label_selector="mlops.dev/inferenceservice=iris")
        if not pods:
            raise DemoError("no predictor pod found")
        victim = pods[0]["metadata"]["name"]
        self.kube.delete("Pod", NAMESPACE, victim)
        kube = self.kube

        def replaced() -> list[str] | None:
            ready = [
                pod["metadata"]["name"]
                for pod in kube.list("Pod", NAMESPACE, label_selector="mlops.dev/inferenceservice=iris")
                if any(
                    c.get("type") == "Ready" and c.get("status") == "True"
                    for c in pod.get("status", {}).get("conditions") or []
                )
            ]
            return ready if len(ready) == 2 and victim not in ready else None

        ready = self.wait("a replacement replica to become ready", replaced)
        self.wait(
            "the InferenceService to report 2 ready replicas again",
            lambda: (
                self.condition("InferenceService", "iris", "Ready").get("status") == "True"
                and (self.get("InferenceService", "iris")["status"].get("stable") or {}).get("readyReplicas")
                == 2
            ),
        )
        with httpx.Client(base_url=self.url, timeout=10) as client:
            answer = client.post("/predict", json={"features": [5.9, 3.0, 5.1, 1.8]})
        new = next(name for name in ready if name not in {p["metadata"]["name"] for p in pods})
        self.report.note(deleted=victim, replacement=new, readyReplicas=2)
        return f"deleted pod {victim}; {new} replaced it, 2/2 ready; /predict -> {answer.json().get('prediction')}"

    def collect_events(self) -> None:
        """The loop's events as the cluster recorded them (before the sandbox stops)."""
        assert self.kube is not None
        events = [
            e
            for e in self.kube.list("Event", NAMESPACE)
            if e.get("involvedObject", {}).get("name") == "iris" and e.get("reason") in EVENT_REASONS
        ]
        self.report.add_cluster_events(events, self.kube.list("ModelVersion", NAMESPACE))

    def stop(self) -> str:
        from mlops_operator.sandbox import manager

        self.stop_background_traffic()
        manager.down(self.directory, err=self.out)
        return "every process the sandbox started is stopped"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, default=Path(".sandbox/demo"), help="the sandbox's directory")
    parser.add_argument("--keep", action="store_true", help="leave the sandbox running at the end")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds each stage may take")


def _stop_on_sigterm(signum: int, frame: object) -> None:
    # SIGTERM (a CI timeout, `kill`) must still stop the sandbox: unwind through `finally`.
    raise SystemExit(128 + signum)


def run(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    demo = Demo(args.dir, sys.stdout, args.timeout)
    demo.say("mlops-operator demo: train, validate, serve, monitor, on this machine (no cluster, no Docker)")
    stages: list[tuple[str, str, Callable[[], str]]] = [
        ("start", "start the sandbox (API server, runtime, MLflow, operator)", demo.start),
        ("train", "train iris: TrainingJob iris-train", demo.train),
        ("validate", "validate: the run's ModelVersion passes its gates", demo.validate),
        ("serve", "serve: InferenceService iris on 2 replicas", demo.serve),
        ("predict", "predict: /predict and Open Inference Protocol v2", demo.predict),
        ("steady", "steady traffic with correct labels", demo.steady),
        (
            "skewed",
            "shifted traffic (a new instrument), labelled with the real species: drift and accuracy move",
            demo.skewed,
        ),
        (
            "retrain",
            "the loop closes: retrain on the captured labels and validate a new version",
            demo.retrain,
        ),
        (
            "canary",
            "the new version rolls out as a canary on the shifted traffic, judged on live labels, "
            "and beats the old one",
            demo.canary,
        ),
        (
            "bad_candidate",
            "a version that passed its offline gates but is worse on live traffic is rolled back",
            demo.bad_candidate,
        ),
        ("recover", "a replica is killed and comes back", demo.recover),
    ]
    code = 0
    try:
        for number, (key, title, action) in enumerate(stages, 1):
            demo.stage(number, len(stages) + (0 if args.keep else 1), key, title, action)
    except DemoError:
        code = 1
    finally:
        if demo.kube is not None:
            try:
                demo.collect_events()
            except Exception as exc:  # the report goes without the cluster's events, and says why
                demo.say(f"  (the report has no cluster events: {type(exc).__name__}: {exc})")
        if args.keep and code == 0:
            demo.say(f"\nThe sandbox keeps running: mlops-operator sandbox down --dir {args.dir}")
        else:
            demo.stage(len(stages) + 1, len(stages) + 1, "stop", "stop the sandbox", demo.stop)
    demo.say(
        "\nDone: every stage happened."
        if code == 0
        else "\nThe demo stopped: a stage did not happen (above)."
    )
    report = demo.report.write(args.dir.resolve() / "report", "passed" if code == 0 else "failed")
    demo.say(f"Report: {report}/timeline.json and {report}/demo.png")
    return code
