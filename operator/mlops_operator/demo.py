"""``mlops-operator demo``: the product's story, end to end, on this machine.

Starts the sandbox (emulated API server, local runtime, embedded MLflow, the operator), then
plays the loop as a user would see it: a TrainingJob trains the iris model and registers it;
its ModelVersion passes its gates; an InferenceService serves it on two replicas; steady
traffic with correct ground truth keeps drift and accuracy healthy; skewed traffic with wrong
labels makes both move, and the operator reports it (DriftDetected, Degraded) and asks the
TrainingJob for a new run, whose version is validated against production and rolled out; a
killed replica comes back. Every stage waits for the cluster's own status (with a deadline) and the
demo exits non-zero naming the stage that did not happen. The sandbox is stopped at the end
(``--keep`` leaves it running to explore with kubectl).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar

import httpx
import numpy as np
import yaml

from mlops_operator.controllers.conditions import get_condition
from mlops_operator.kube import Kube

T = TypeVar("T")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NAMESPACE = "default"


class DemoError(Exception):
    """A stage did not happen: the message says what was expected and what was seen."""


@dataclass
class Traffic:
    sent: int = 0
    labelled: int = 0


class Demo:
    def __init__(self, directory: Path, out: TextIO, timeout: float) -> None:
        self.directory = directory
        self.out = out
        self.timeout = timeout
        self.started = time.monotonic()
        self.kube: Kube | None = None
        self.url = ""
        self.traffic = Traffic()
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

    def stage(self, number: int, total: int, title: str, action: Callable[[], str]) -> None:
        self.say(f"\n[{number}/{total}] {title} ...")
        began = time.monotonic()
        try:
            detail = action()
        except DemoError as exc:
            self.say(f"  ✗ {title}: {exc}")
            raise
        except Exception as exc:  # anything unexpected still names the stage, then stops the demo
            self.say(f"  ✗ {title}: {type(exc).__name__}: {exc}")
            raise DemoError(str(exc)) from exc
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
        import kubernetes

        from mlops_operator.sandbox import manager

        try:
            manager.up(manager.Options(directory=self.directory, timeout=self.timeout), err=self.out)
        except (manager.SandboxError, Exception) as exc:
            raise DemoError(str(exc)) from exc
        kubeconfig = self.directory.resolve() / "kubeconfig"
        self.kube = Kube(kubernetes.config.new_client_from_config(config_file=str(kubeconfig)))
        return f"kubectl --kubeconfig {kubeconfig} get mlops"

    def train(self) -> str:
        self.apply_example("iris-trainingjob.yaml", schedule=None)
        tj = self.wait_condition("TrainingJob", "iris-train", "Ready", "True", timeout=self.timeout * 2)
        run = tj["status"]["lastRun"]
        metrics = ", ".join(f"{k} {v}" for k, v in sorted((run.get("metrics") or {}).items()))
        return f"run {run['name']} registered iris-classifier version {run.get('modelVersion')} ({metrics})"

    def validate(self) -> str:
        name = self.get("TrainingJob", "iris-train")["status"]["latestModelVersion"]
        mv = self.wait_condition("ModelVersion", name, "Validated", "True")
        gates = "; ".join(
            f"{g['metric']} {g.get('threshold', '')} -> {g.get('value', '-')} {'pass' if g['passed'] else 'FAIL'}"
            for g in mv["status"].get("gateResults") or []
        )
        return f"ModelVersion {name} Validated ({gates}); MLflow: {mv['status']['uri']}"

    def serve(self) -> str:
        self.apply_example("iris-inferenceservice.yaml", replicas=2)
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
        return f"version {isvc['status']['stable']['modelVersion']} on 2 replicas at {self.url} (in a cluster: {isvc['status']['url']})"

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
        return f"/predict -> {body['prediction']} (p={max(body['probability']):.2f}); v2 infer -> {outputs.get('predict')}"

    def send(self, rounds: int, *, skew: bool) -> None:
        """``rounds`` requests of 10 rows each, each followed by its ground truth (or a wrong label)."""
        shift = np.array([1.5, -1.0, 3.0, 1.5]) if skew else np.zeros(4)
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
                ids = response.json()["request_id"]
                truth = [self.labels[i] for i in rows]
                if skew:  # the world changed: what the model says is now wrong
                    truth = [self.classes[(self.classes.index(t) + 1) % 3] for t in truth]
                feedback = client.post(
                    "/feedback", json=[{"request_id": i, "label": t} for i, t in zip(ids, truth, strict=True)]
                )
                if feedback.status_code != 200 or feedback.json()["unknown"]:
                    raise DemoError(f"/feedback answered {feedback.status_code}: {feedback.text[:300]}")
                self.traffic.sent += 10
                self.traffic.labelled += 10

    def timeline(self, until: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        """Print the operator's view of monitoring as it changes, until ``until`` holds."""
        seen: set[tuple[Any, ...]] = set()

        def probe() -> dict[str, Any] | None:
            isvc = self.get("InferenceService", "iris")
            monitoring = isvc.get("status", {}).get("monitoring") or {}
            drift = self.condition("InferenceService", "iris", "DriftDetected")
            degraded = self.condition("InferenceService", "iris", "Degraded")
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
        return f"no drift (share {monitoring['driftShare']}), accuracy {monitoring['accuracy']}"

    def skewed(self) -> str:
        self.send(90, skew=True)

        def degraded(isvc: dict[str, Any]) -> bool:
            conditions = isvc["status"].get("conditions")
            drift = get_condition(conditions, "DriftDetected") or {}
            bad = get_condition(conditions, "Degraded") or {}
            return drift.get("status") == "True" and bad.get("reason") == "AccuracyBelowThreshold"

        isvc = self.timeline(degraded, "DriftDetected=True and Degraded=AccuracyBelowThreshold")
        drift = get_condition(isvc["status"]["conditions"], "DriftDetected") or {}
        bad = get_condition(isvc["status"]["conditions"], "Degraded") or {}
        return f"{drift.get('message')}; {bad.get('message')}"

    def retrain(self) -> str:
        def retrained() -> dict[str, Any] | None:
            tj = self.get("TrainingJob", "iris-train")
            runs = [r for r in tj.get("status", {}).get("runs") or [] if r.get("trigger") == "Retrain"]
            return (
                tj
                if runs and runs[-1].get("phase") == "Succeeded" and tj["status"].get("latestModelVersion")
                else None
            )

        requested = self.wait(
            "the operator to request a retrain",
            lambda: (self.get("InferenceService", "iris").get("status", {}).get("retraining") or {}).get(
                "reason"
            ),
        )
        self.say(f"  retrain requested: {requested}")
        tj = self.wait("the retraining run to register a new version", retrained, timeout=self.timeout * 2)
        name = tj["status"]["latestModelVersion"]
        version = tj["status"]["lastRun"]["modelVersion"]
        self.wait_condition("ModelVersion", name, "Validated", "True")
        self.say(f"  {name} validated against production (version 1)")
        self.wait(
            f"InferenceService iris to serve version {version} on 2 ready replicas",
            lambda: (
                (stable := (self.get("InferenceService", "iris").get("status", {}).get("stable") or {})).get(
                    "modelVersion"
                )
                == version
                and stable.get("readyReplicas") == 2
            ),
        )
        history = self.get("InferenceService", "iris")["status"].get("history") or []
        return f"run {tj['status']['lastRun']['name']} ({requested}) -> {name} Validated -> serving version {version} ({history[-1]['reason']})"

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
        return f"deleted pod {victim}; {new} replaced it, 2/2 ready; /predict -> {answer.json().get('prediction')}"

    def stop(self) -> str:
        from mlops_operator.sandbox import manager

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
    stages: list[tuple[str, Callable[[], str]]] = [
        ("start the sandbox (API server, runtime, MLflow, operator)", demo.start),
        ("train iris: TrainingJob iris-train", demo.train),
        ("validate: the run's ModelVersion passes its gates", demo.validate),
        ("serve: InferenceService iris on 2 replicas", demo.serve),
        ("predict: /predict and Open Inference Protocol v2", demo.predict),
        ("steady traffic with correct labels", demo.steady),
        ("skewed traffic with wrong labels: drift and accuracy move", demo.skewed),
        ("the loop closes: retrain, validate, roll out the new version", demo.retrain),
        ("a replica is killed and comes back", demo.recover),
    ]
    code = 0
    try:
        for number, (title, action) in enumerate(stages, 1):
            demo.stage(number, len(stages) + (0 if args.keep else 1), title, action)
    except DemoError:
        code = 1
    finally:
        if args.keep and code == 0:
            demo.say(f"\nThe sandbox keeps running: mlops-operator sandbox down --dir {args.dir}")
        else:
            demo.stage(len(stages) + 1, len(stages) + 1, "stop the sandbox", demo.stop)
    demo.say(
        "\nDone: every stage happened."
        if code == 0
        else "\nThe demo stopped: a stage did not happen (above)."
    )
    return code
