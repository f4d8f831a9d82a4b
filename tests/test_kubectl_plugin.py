"""``kubectl mlops``: status, rollout commands, retrain, against the emulated API server.

No operator runs here: tests write status through the status subresource as the operator would,
and where the plugin waits for the operator, a background thread plays it (waits for the
annotation, then removes it and writes status or posts an Event).
"""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import json
import os
import pathlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from mlops_operator.credentials import load_credentials
from mlops_operator.kube_client import Kube
from mlops_operator.kubectl_plugin import format_status, main
from mlops_operator.sandbox.apiserver import ApiServerThread, write_kubeconfig
from mlops_operator.sandbox.apiserver.certificates import Certificates
from tests.fixtures_apiserver import kubectl_binary

ROOT = pathlib.Path(__file__).parent.parent
COMMAND = "mlops.dev/rollout-command"
RUN_REQUEST = "mlops.dev/run-requested-at"
RUN_TRIGGER = "mlops.dev/run-trigger"
NOW = "2025-01-06T10:00:00Z"
_names = itertools.count()

HISTORY = [
    {"modelVersion": "1", "promotedAt": "2025-01-01T09:00:00Z", "reason": "first version served"},
    {"modelVersion": "2", "promotedAt": "2025-01-03T09:00:00Z", "replaced": "1", "reason": "canary passed"},
    {
        "modelVersion": "4",
        "rolledBackAt": "2025-01-04T09:00:00Z",
        "reason": "version 4 aborted: error-rate above 0.01",
    },
]
READY = {
    "type": "Ready",
    "status": "True",
    "reason": "Serving",
    "message": "version 2 serves on 2 replicas",
    "lastTransitionTime": NOW,
}
PROGRESSING: dict[str, Any] = {
    "conditions": [READY],
    "stable": {"modelVersion": "2", "replicas": 2, "readyReplicas": 2, "weight": 75},
    "canary": {"modelVersion": "3", "replicas": 1, "readyReplicas": 1, "weight": 25},
    "rollout": {
        "phase": "Progressing",
        "reason": "StepPassed",
        "message": "version 3 at 25%: step 2 of 3",
        "target": "3",
        "candidate": "3",
        "step": 1,
        "canaryWeight": 25,
        "failedChecks": 1,
        "lastCheckAt": NOW,
        "lastAnalysis": [
            {
                "metric": "error-rate",
                "value": "0.002",
                "bound": "<= 0.01",
                "samples": 1200,
                "verdict": "Pass",
            },
            {
                "metric": "accuracy",
                "bound": ">= 0.9",
                "samples": 40,
                "verdict": "NoData",
                "message": "40 of 200 labels",
            },
        ],
    },
    "monitoring": {
        "state": "Ok",
        "driftShare": "0.25",
        "driftedFeatures": ["petal_length"],
        "accuracy": "0.94",
        "samples": 1000,
        "labelledSamples": 420,
    },
    "history": HISTORY,
}
IDLE: dict[str, Any] = {
    "conditions": [READY],
    "stable": {"modelVersion": "2", "replicas": 2, "readyReplicas": 2, "weight": 100},
    "rollout": {"phase": "Succeeded", "reason": "Promoted", "message": "version 2 serves", "target": "2"},
    "history": HISTORY,
}
PAUSED = {**PROGRESSING, "rollout": {**PROGRESSING["rollout"], "phase": "Paused", "reason": "ManualPause"}}
REJECTED = {
    **IDLE,
    "rollout": {**IDLE["rollout"], "phase": "RolledBack", "target": "4", "rejectedVersions": ["4"]},
}


# --- fixtures and helpers ---------------------------------------------------------------------


class Cluster:
    def __init__(self, server: ApiServerThread, kubeconfig: pathlib.Path) -> None:
        self.server = server
        self.kubeconfig = kubeconfig
        self.kube = Kube(lambda: load_credentials(str(kubeconfig)))

    def inferenceservice(self, status: dict[str, Any] | None = None, **annotations: str) -> str:
        """A new InferenceService (examples/iris-inferenceservice.yaml) with ``status`` written as the operator would."""
        body = yaml.safe_load((ROOT / "examples" / "iris-inferenceservice.yaml").read_text())
        name = f"iris-{next(_names)}"
        body["metadata"].update(name=name, annotations=dict(annotations))
        self.kube.create(body)
        if status is not None:
            self.kube.patch_status("InferenceService", "default", name, copy.deepcopy(status))
        return name

    def annotation(self, kind: str, name: str, key: str = COMMAND) -> str | None:
        obj = self.kube.get(kind, "default", name)
        assert obj is not None
        value: str | None = (obj["metadata"].get("annotations") or {}).get(key)
        return value

    def event(self, name: str, type_: str, reason: str, message: str) -> None:
        stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        self.kube.create(
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": f"{name}.{next(_names)}", "namespace": "default"},
                "involvedObject": {
                    "apiVersion": "mlops.dev/v1alpha1",
                    "kind": "InferenceService",
                    "name": name,
                    "namespace": "default",
                },
                "type": type_,
                "reason": reason,
                "message": message,
                "count": 1,
                "firstTimestamp": stamp,
                "lastTimestamp": stamp,
                "source": {"component": "mlops-operator"},
            }
        )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    server = ApiServerThread(crds_dir=ROOT / "crds").start()
    try:
        kubeconfig = write_kubeconfig(
            tmp_path_factory.mktemp("kube") / "config",
            server.url,
            token=server.admin_token,
            ca=server.certificates.ca,
        )
        yield Cluster(server, kubeconfig)
    finally:
        server.stop()


Plugin = Callable[..., tuple[int, str, str]]


@pytest.fixture
def plugin(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> Plugin:
    """Run ``kubectl mlops ARGS --kubeconfig ...`` in-process: (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([*args, "--kubeconfig", str(cluster.kubeconfig)])
        out, err = capsys.readouterr()
        return code, out, err

    return run


class PlayOperator:
    """A background thread standing in for the operator: when the command annotation appears,
    ``act(value)`` does what the operator would (status, Events) and the annotation is removed."""

    def __init__(
        self, cluster: Cluster, name: str, act: Callable[[str], None], timeout: float = 20.0
    ) -> None:
        self.cluster, self.name, self.act, self.timeout = cluster, name, act, timeout
        self.seen: list[str] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PlayOperator:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(self.timeout)
        assert not self.thread.is_alive(), "the stand-in operator never saw the command"
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            deadline = time.monotonic() + self.timeout
            while time.monotonic() < deadline:
                value = self.cluster.annotation("InferenceService", self.name)
                if value is not None:
                    self.seen.append(value)
                    self.act(value)
                    patch = {"metadata": {"annotations": {COMMAND: None}}}
                    self.cluster.kube.patch("InferenceService", "default", self.name, patch)
                    return
                time.sleep(0.05)  # polling interval; the deadline decides
        except BaseException as exc:  # reported by __exit__, in the test's thread
            self.error = exc


# --- status -----------------------------------------------------------------------------------


def test_status_shows_rollout_analysis_monitoring_history_and_pending_command(
    cluster: Cluster, plugin: Plugin
) -> None:
    name = cluster.inferenceservice(PROGRESSING, **{COMMAND: "pause"})
    code, out, err = plugin("status", f"mlisvc/{name}")
    assert code == 0, err
    assert f"InferenceService default/{name}" in out
    assert "Ready:       True (Serving): version 2 serves on 2 replicas" in out
    assert "Stable:      version 2, 2/2 replicas ready, weight 75%" in out
    assert "Canary:      version 3, 1/1 replicas ready, weight 25%" in out
    assert "Rollout:     Progressing (StepPassed)" in out
    assert "candidate 3, step 2/3 (weights 10%, 25%, 50%), canary weight 25%, failed checks 1/3" in out
    assert "version 3 at 25%: step 2 of 3" in out
    lines = out.splitlines()
    table = lines[lines.index(f"Last analysis (at {NOW}):") + 1 :][:3]
    assert table[0].split() == ["METRIC", "VALUE", "BOUND", "SAMPLES", "VERDICT", "MESSAGE"]
    assert table[1].split() == ["error-rate", "0.002", "<=", "0.01", "1200", "Pass", "-"]
    assert table[2].split()[:6] == ["accuracy", "-", ">=", "0.9", "40", "NoData"]
    assert "drift share 0.25 (drifted: petal_length), accuracy 0.94, 420 labelled of 1000 samples" in out
    history = lines[lines.index("History:") + 1 :][:4]
    assert history[0].split() == ["VERSION", "PROMOTED-AT", "ROLLED-BACK-AT", "REASON"]
    assert history[2].split()[:3] == ["2", "2025-01-03T09:00:00Z", "-"]
    assert history[3].split()[:3] == ["4", "-", "2025-01-04T09:00:00Z"]
    assert "Pending command: 'pause'" in out


@pytest.mark.parametrize("kind", ["inferenceservice", "inferenceservices", "inferenceservice.mlops.dev"])
def test_status_json_is_the_status(cluster: Cluster, plugin: Plugin, kind: str) -> None:
    name = cluster.inferenceservice(PROGRESSING)
    code, out, err = plugin("status", f"{kind}/{name}", "-o", "json")
    assert code == 0, err
    status = json.loads(out)
    assert status["rollout"]["phase"] == "Progressing"
    assert status["rollout"]["lastAnalysis"][0]["metric"] == "error-rate"
    assert [entry["modelVersion"] for entry in status["history"]] == ["1", "2", "4"]


def test_status_of_a_service_the_operator_has_not_seen(cluster: Cluster, plugin: Plugin) -> None:
    code, out, _ = plugin("status", f"mlisvc/{cluster.inferenceservice()}")
    assert code == 0
    assert "Ready:       Unknown" in out and "Rollout:     Idle" in out


# --- commands: the annotation, and refusals ---------------------------------------------------


@pytest.mark.parametrize(
    ("status", "args", "written"),
    [
        (PROGRESSING, ["promote"], "promote"),
        (PROGRESSING, ["abort"], "abort"),
        (PROGRESSING, ["pause"], "pause"),
        (PAUSED, ["resume"], "resume"),
        (PAUSED, ["promote"], "promote"),
        (REJECTED, ["retry"], "retry"),
        (PROGRESSING, ["rollback"], "rollback"),
        (IDLE, ["rollback"], "rollback"),
        (IDLE, ["rollback", "--to-version", "1"], "rollback:1"),
    ],
    ids=lambda value: "-".join(value) if isinstance(value, list) else None,
)
def test_command_writes_the_annotation(
    cluster: Cluster, plugin: Plugin, status: dict[str, Any], args: list[str], written: str
) -> None:
    name = cluster.inferenceservice(status)
    code, out, err = plugin(args[0], f"mlisvc/{name}", *args[1:], "--no-wait")
    assert code == 0, err
    assert cluster.annotation("InferenceService", name) == written
    assert f"requested {written}" in out


@pytest.mark.parametrize(
    ("status", "args", "message"),
    [
        (IDLE, ["promote"], "promote: no rollout in progress (rollout phase Succeeded)"),
        (IDLE, ["abort"], "abort: no rollout in progress"),
        (PAUSED, ["pause"], "pause: nothing to pause (rollout phase Paused)"),
        (PROGRESSING, ["resume"], "resume: the rollout is not paused (phase Progressing)"),
        (IDLE, ["retry"], "retry: the target version was not rejected"),
        (
            IDLE,
            ["rollback", "--to-version", "7"],
            "version 7 is not in status.history (promoted versions: 1, 2)",
        ),
        (
            IDLE,
            ["rollback", "--to-version", "4"],
            "version 4 is not in status.history",
        ),  # rolled back, never promoted
        (IDLE, ["rollback", "--to-version", "2"], "rollback: version 2 serves already"),
        (IDLE, ["rollback", "--to-version", "v1"], "rollback:<version> needs a version number, got 'v1'"),
        (IDLE, ["rollback", "--to-version", "1; rm"], "needs a version number"),
        (None, ["promote"], "promote: nothing is served yet"),
    ],
    ids=lambda value: "-".join(value) if isinstance(value, list) else None,
)
def test_refused_command_exits_1_and_writes_nothing(
    cluster: Cluster, plugin: Plugin, status: dict[str, Any] | None, args: list[str], message: str
) -> None:
    name = cluster.inferenceservice(status)
    code, out, err = plugin(args[0], f"mlisvc/{name}", *args[1:])
    assert code == 1
    assert message in err and "refused, nothing written" in err
    assert "Traceback" not in err and out == ""
    assert cluster.annotation("InferenceService", name) is None


# --- waiting for the operator -----------------------------------------------------------------


def test_wait_reports_what_the_operator_did(cluster: Cluster, plugin: Plugin) -> None:
    name = cluster.inferenceservice(PROGRESSING)
    # An older refusal about the same service must not be taken for this command's outcome.
    cluster.event(
        name, "Warning", "RolloutCommandIgnored", "resume: the rollout is not paused (phase Progressing)"
    )

    def promote(value: str) -> None:
        rollout = {**PROGRESSING["rollout"], "phase": "Promoting", "reason": "ManualPromote"}
        cluster.kube.patch_status("InferenceService", "default", name, {"rollout": rollout})
        cluster.event(name, "Normal", "RolloutCommand", "promote: version 3 skips the remaining analysis")

    with PlayOperator(cluster, name, promote) as operator:
        code, out, err = plugin("promote", f"mlisvc/{name}", "--timeout", "20s")
    assert operator.seen == ["promote"]
    assert code == 0, err
    assert "the operator carried out 'promote'" in out
    assert "promote: version 3 skips the remaining analysis" in out
    assert "rollout: Promoting (ManualPromote): version 3 at 25%" in out
    assert cluster.annotation("InferenceService", name) is None


def test_wait_reads_the_outcome_from_status_when_no_command_event_comes(
    cluster: Cluster, plugin: Plugin
) -> None:
    name = cluster.inferenceservice(PROGRESSING)

    def abort(value: str) -> None:
        # An abort posts RolledBack, not RolloutCommand: status is what says it was carried out.
        message = "version 3 aborted by command; version 2 keeps all traffic"
        rollout = {
            **PROGRESSING["rollout"],
            "phase": "RolledBack",
            "reason": "ManualAbort",
            "message": message,
        }
        cluster.kube.patch_status("InferenceService", "default", name, {"rollout": rollout})
        cluster.event(name, "Warning", "RolledBack", message)

    with PlayOperator(cluster, name, abort):
        code, out, err = plugin("abort", f"mlisvc/{name}")
    assert code == 0, err
    assert "the operator carried out 'abort'" in out
    assert (
        "rollout: RolledBack (ManualAbort): version 3 aborted by command; version 2 keeps all traffic" in out
    )


def test_wait_reports_the_operators_refusal(cluster: Cluster, plugin: Plugin) -> None:
    name = cluster.inferenceservice(IDLE)

    def refuse(value: str) -> None:
        cluster.event(name, "Warning", "RolloutCommandIgnored", "rollback: a rollback is in progress")

    with PlayOperator(cluster, name, refuse):
        code, out, err = plugin("rollback", f"mlisvc/{name}", "--to-version", "1")
    assert code == 1 and out == ""
    assert "the operator refused 'rollback:1': rollback: a rollback is in progress" in err


def test_wait_times_out_when_no_operator_acts(cluster: Cluster, plugin: Plugin) -> None:
    name = cluster.inferenceservice(PROGRESSING)
    started = time.monotonic()
    code, _, err = plugin("pause", f"mlisvc/{name}", "--timeout", "1s")
    assert code == 2
    assert time.monotonic() - started < 10
    assert "has not acted on 'pause' within 1s (is it running?)" in err
    assert cluster.annotation("InferenceService", name) == "pause"  # left for the operator


def test_bad_timeout_is_a_usage_error(plugin: Plugin) -> None:
    with pytest.raises(SystemExit) as exit_:
        plugin("pause", "mlisvc/x", "--timeout", "soon")
    assert exit_.value.code == 1


# --- retrain ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tj", "trainingjob"])
def test_retrain_requests_a_manual_run(cluster: Cluster, plugin: Plugin, kind: str) -> None:
    body = yaml.safe_load((ROOT / "examples" / "iris-trainingjob.yaml").read_text())
    name = f"train-{next(_names)}"
    # A drift retrain asked before: this request is a manual one, so that trigger goes.
    body["metadata"].update(
        name=name, annotations={RUN_REQUEST: "2025-01-01T00:00:00Z", RUN_TRIGGER: "Retrain"}
    )
    cluster.kube.create(body)
    before = dt.datetime.now(dt.UTC)
    code, out, err = plugin("retrain", f"{kind}/{name}")
    assert code == 0, err
    requested = cluster.annotation("TrainingJob", name, RUN_REQUEST)
    assert requested is not None and requested in out
    assert dt.datetime.fromisoformat(requested.replace("Z", "+00:00")) >= before
    assert cluster.annotation("TrainingJob", name, RUN_TRIGGER) is None


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["status", "mlisvc/missing"], 'inferenceservice "missing" not found in namespace "default"'),
        (["promote", "mlisvc/missing"], 'inferenceservice "missing" not found'),
        (["retrain", "tj/missing"], 'trainingjob "missing" not found'),
        (["status", "deployment/iris"], "this command works on mlisvc/NAME, not 'deployment'"),
        (["status", "tj/iris"], "this command works on mlisvc/NAME, not 'tj'"),
        (["retrain", "mlisvc/iris"], "this command works on tj/NAME, not 'mlisvc'"),
        (["status", "iris"], "expected TYPE/NAME"),
        (["status", "mlisvc/Not_A_Name"], "is not a valid object name"),
    ],
    ids=lambda value: "-".join(value) if isinstance(value, list) else None,
)
def test_errors_are_one_line_and_exit_1(plugin: Plugin, args: list[str], message: str) -> None:
    code, out, err = plugin(*args)
    assert code == 1
    assert message in err
    assert len(err.strip().splitlines()) == 1 and out == ""


def test_namespace_comes_from_the_context_then_the_flag(
    cluster: Cluster, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = cluster.inferenceservice(IDLE)
    kubeconfig = write_kubeconfig(
        tmp_path / "config",
        cluster.server.url,
        namespace="team-a",
        token=cluster.server.admin_token,
        ca=cluster.server.certificates.ca,
    )
    assert main(["status", f"mlisvc/{name}", "--kubeconfig", str(kubeconfig)]) == 1
    assert 'not found in namespace "team-a"' in capsys.readouterr().err
    # Flags before the subcommand work too, as with kubectl.
    assert main(["-n", "default", "--kubeconfig", str(kubeconfig), "status", f"mlisvc/{name}"]) == 0


def test_rejected_credentials_and_unreachable_server(
    cluster: Cluster, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad_token = write_kubeconfig(
        tmp_path / "bad-token", cluster.server.url, token="not-a-token", ca=cluster.server.certificates.ca
    )
    assert main(["status", "mlisvc/x", "--kubeconfig", str(bad_token)]) == 1
    err = capsys.readouterr().err
    assert "HTTP 401" in err and len(err.strip().splitlines()) == 1

    # A port nothing listens on: the server's port once it has stopped.
    stopped = ApiServerThread(certificates=Certificates.generate()).start()
    url = stopped.url
    stopped.stop()
    unreachable = write_kubeconfig(tmp_path / "gone", url, token="t", ca=stopped.certificates.ca)
    assert main(["status", "mlisvc/x", "--kubeconfig", str(unreachable)]) == 1
    err = capsys.readouterr().err
    assert "API server unreachable" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err

    assert main(["status", "mlisvc/x", "--kubeconfig", str(tmp_path / "missing")]) == 1
    assert "no usable kubeconfig" in capsys.readouterr().err


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in (
        "status",
        "promote",
        "abort",
        "pause",
        "resume",
        "retry",
        "rollback",
        "retrain",
        "version",
    ):
        assert f"    {command} " in out
    with pytest.raises(SystemExit):
        main(["rollback", "--help"])
    assert "--to-version V" in capsys.readouterr().out
    assert main(["version"]) == 0
    assert capsys.readouterr().out.startswith("kubectl-mlops 0.1.0")


# --- the real kubectl finds the plugin --------------------------------------------------------


def test_kubectl_discovers_the_plugin_on_path(cluster: Cluster, tmp_path: pathlib.Path) -> None:
    venv_bin = pathlib.Path(sys.executable).parent
    if not (venv_bin / "kubectl-mlops").exists():
        pytest.fail(
            f"kubectl-mlops is not in {venv_bin}: run `pip install -e . --no-deps` (pyproject's scripts)"
        )
    name = cluster.inferenceservice(PROGRESSING)
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": str(tmp_path)}
    result = subprocess.run(
        [kubectl_binary(), "mlops", "status", f"mlisvc/{name}", "--kubeconfig", str(cluster.kubeconfig)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"InferenceService default/{name}" in result.stdout
    assert "Rollout:     Progressing (StepPassed)" in result.stdout


def test_status_of_a_shadow_rollout_shows_the_paired_comparison() -> None:
    isvc = {
        "metadata": {"namespace": "default", "name": "iris"},
        "spec": {"rollout": {"strategy": "Shadow"}},
        "status": {
            "stable": {"modelVersion": "2", "replicas": 2, "readyReplicas": 2, "weight": 100},
            "rollout": {
                "phase": "Progressing",
                "reason": "Analysing",
                "strategy": "Shadow",
                "candidate": "3",
                "failedChecks": 0,
                "shadow": {
                    "mirrored": 900,
                    "dropped": 4,
                    "failed": 0,
                    "compared": 900,
                    "agreement": "0.97",
                    "pairs": 310,
                    "stableOnlyCorrect": 9,
                    "candidateOnlyCorrect": 5,
                    "difference": "-0.0129",
                    "lowerBound": "-0.041",
                    "upperBound": "0.0152",
                },
            },
        },
    }
    out = format_status(isvc)
    assert "candidate 3 in shadow (no traffic: a mirrored copy), failed checks 0/5" in out
    assert (
        "mirrored 900 requests (dropped 4, failed 0), agreement 0.97 on 900 rows, 310 labelled pairs" in out
    )
    assert (
        "(stable alone right 9, candidate alone right 5), accuracy difference -0.0129 in [-0.041, 0.0152]"
        in out
    )
    assert "step 1/3" not in out  # no canary steps in a shadow
