"""``mlops-operator train`` end to end against a SQLite MLflow in a temporary directory.

Success paths run the real command as a subprocess (exit code, termination message, stdout);
the bad inputs run the same entry point in-process (``mlops_operator.cli.main``) to stay fast,
except two that check the process's real exit codes (3 permanent, 1 MLflow down).
"""

from __future__ import annotations

import functools
import http.server
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from mlops_operator.cli import main
from mlops_operator.registry.digest import directory_sha256

DATA = Path(__file__).parent / "data" / "trainer"
MLOPS = shutil.which("mlops-operator") or str(Path(sys.executable).parent / "mlops-operator")


@pytest.fixture(scope="module")
def mlflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite tracking store per module (creating its tables costs seconds); artifacts beside it."""
    return tmp_path_factory.mktemp("mlflow")


def tracking_uri(home: Path) -> str:
    return f"sqlite:///{home / 'mlflow.db'}"


def iris_spec(name: str, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"name": name, "description": "Iris species from flower measurements"},
        "dataset": {"uri": "sklearn://iris", "target": "species", "validation": {"minRows": 100}},
        "estimator": {
            "class": "sklearn.linear_model.LogisticRegression",
            "params": {"max_iter": 300},
            "search": {"type": "grid", "params": {"C": [0.1, 1.0, 10.0]}, "cv": 3},
        },
        "evaluation": {"testSize": "0.2", "seed": 42},
        "modelCard": {"intendedUse": "demos", "limitations": "150 flowers"},
    }
    for key, value in overrides.items():
        spec[key] = value
    return spec


def env_for(home: Path, spec: dict[str, Any], **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "MLOPS_TRAININGJOB_SPEC": json.dumps(spec),
            "MLOPS_TRAININGJOB_NAME": "iris-train",
            "MLOPS_TRAININGJOB_NAMESPACE": "team-a",
            "MLOPS_RUN_NAME": f"{spec['model']['name']}-x7k2p",
            "MLOPS_RUN_TRIGGER": "Create",
            "MLFLOW_TRACKING_URI": tracking_uri(home),
            "MLOPS_CODE_VERSION": "abc1234",
            "MLOPS_IMAGE": "ghcr.io/mlops-operator/trainer:0.1.0",
            "MLOPS_TERMINATION_MESSAGE_PATH": str(home / f"termination-{spec['model']['name']}"),
            **extra,
        }
    )
    return env


def run_trainer(
    home: Path, spec: dict[str, Any], **extra: str
) -> tuple[int, dict[str, Any], dict[str, Any], float]:
    """Run ``mlops-operator train`` in ``home``; exit code, termination message, stdout's last line, seconds."""
    env = env_for(home, spec, **extra)
    started = time.monotonic()
    proc = subprocess.run([MLOPS, "train"], env=env, cwd=home, capture_output=True, text=True, timeout=240)
    elapsed = time.monotonic() - started
    assert proc.stdout.strip(), proc.stderr[-3000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    termination = json.loads(Path(env["MLOPS_TERMINATION_MESSAGE_PATH"]).read_text())
    return proc.returncode, termination, last, elapsed


def client(home: Path) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri(home), registry_uri=tracking_uri(home))


def registered_versions(home: Path, name: str) -> list[Any]:
    return list(client(home).search_model_versions(f"name = '{name}'"))


def recompute_split(frame: pd.DataFrame, target: str, classification: bool) -> tuple[pd.DataFrame, pd.Series]:
    """The trainer's held-out split, recomputed with the same seed and preparation."""
    from sklearn.model_selection import train_test_split

    from mlops_operator.api.trainingjob import Dataset
    from mlops_operator.trainer.data_validation import column_kinds
    from mlops_operator.trainer.fit import prepare_features

    columns = column_kinds(frame, Dataset.model_validate({"uri": "sklearn://x", "target": target}))
    features = prepare_features(frame, columns)
    labels = frame[target]
    _, x_test, _, y_test = train_test_split(
        features,
        labels,
        test_size=0.2,
        random_state=42,
        stratify=labels.astype(str) if classification else None,
    )
    return x_test, y_test


# --- success ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_iris_end_to_end(mlflow_home: Path) -> None:
    import mlflow
    from sklearn.metrics import accuracy_score, f1_score

    from mlops_operator.monitoring.reference_profile import PROFILE_ARTIFACT, ReferenceProfile
    from mlops_operator.trainer.dataset_loading import load_sklearn

    code, result, last, _ = run_trainer(mlflow_home, iris_spec("iris-e2e"))
    assert code == 0, result
    assert result == last
    assert result["status"] == "Succeeded" and result["task"] == "classification"
    assert (
        result["modelUri"] == f"models:/iris-e2e/{result['modelVersion']}" and result["modelVersion"] == "1"
    )
    assert set(result["metrics"]) == {"accuracy", "precision", "recall", "f1", "roc_auc"}
    assert all(len(v.split(".")[1]) == 4 for v in result["metrics"].values())
    assert result["dataset"]["uri"] == "sklearn://iris" and result["dataset"]["rows"] == 150
    assert result["params"]["C"] in (0.1, 1.0, 10.0) and result["params"]["max_iter"] == 300
    assert result["codeVersion"] == "abc1234" and result["image"].endswith("trainer:0.1.0")
    assert result["search"] == {
        "type": "grid",
        "metric": "f1",
        "trials": 3,
        "bestTrial": result["search"]["bestTrial"],
        "truncated": False,
    }

    mlflow_client = client(mlflow_home)
    version = mlflow_client.get_model_version("iris-e2e", "1")
    assert version.status == "READY" and version.run_id == result["mlflowRunId"]
    assert (
        version.tags["mlops.dev/trainingjob"] == "iris-train"
        and version.tags["mlops.dev/namespace"] == "team-a"
    )
    assert version.tags["mlops.dev/dataset-sha256"] == result["dataset"]["sha256"]
    assert version.tags["mlops.dev/sha256"] == result["sha256"]
    assert version.tags["mlops.dev/code-version"] == "abc1234"
    assert "## Intended use" in version.description and "demos" in version.description

    run = mlflow_client.get_run(result["mlflowRunId"])
    assert run.info.status == "FINISHED" and run.info.run_name == "iris-e2e-x7k2p"
    assert run.data.tags["mlops.dev/run-name"] == "iris-e2e-x7k2p" and run.data.params["param.C"]
    trials = mlflow_client.search_runs(
        [result["experimentId"]], filter_string=f"tags.mlflow.parentRunId = '{result['mlflowRunId']}'"
    )
    assert len(trials) == 3 and all("cv_f1" in t.data.metrics and "C" in t.data.params for t in trials)
    artifacts = {a.path for a in mlflow_client.list_artifacts(result["mlflowRunId"])}
    assert {"confusion_matrix.png", "model", PROFILE_ARTIFACT} <= artifacts

    mlflow.set_tracking_uri(tracking_uri(mlflow_home))
    mlflow.set_registry_uri(tracking_uri(mlflow_home))  # another module's store may be the global one
    png = mlflow.artifacts.download_artifacts(
        run_id=result["mlflowRunId"],
        artifact_path="confusion_matrix.png",
        dst_path=str(mlflow_home / "dl-png"),
    )
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    profile_path = mlflow.artifacts.download_artifacts(
        run_id=result["mlflowRunId"], artifact_path=PROFILE_ARTIFACT, dst_path=str(mlflow_home / "dl-profile")
    )
    profile = ReferenceProfile.model_validate_json(Path(profile_path).read_text())
    assert profile.rows == 120 and profile.classes == ["setosa", "versicolor", "virginica"]
    assert len(profile.features) == 4 and all(
        len(f.bin_frequencies) == len(f.bin_edges) + 1 for f in profile.features
    )

    # The sha256 round trip: what the registry serves is byte for byte what the trainer digested.
    source = mlflow_client.get_model_version_download_uri("iris-e2e", "1")
    assert source == result["artifactUri"]
    model_dir = mlflow.artifacts.download_artifacts(source, dst_path=str(mlflow_home / "dl-source"))
    assert directory_sha256(model_dir) == result["sha256"]
    # MLflow quirk: downloading ``models:/NAME/V`` adds a ``registered_model_meta`` file to the directory,
    # so a verifier that downloads by models:/ URI must leave that one file out of the digest.
    via_models = Path(
        mlflow.artifacts.download_artifacts(result["modelUri"], dst_path=str(mlflow_home / "dl-m"))
    )
    (via_models / "registered_model_meta").unlink()
    assert directory_sha256(via_models) == result["sha256"]

    # MLflow's own client loads the registered version and scores the trainer's held-out split as reported.
    x_test, y_test = recompute_split(load_sklearn("sklearn://iris", "species").frame, "species", True)
    model = mlflow.pyfunc.load_model(result["modelUri"])
    predictions = model.predict(x_test)
    assert f"{accuracy_score(y_test, predictions):.4f}" == result["metrics"]["accuracy"]
    assert f"{f1_score(y_test, predictions, average='macro'):.4f}" == result["metrics"]["f1"]
    assert list(mlflow.sklearn.load_model(result["modelUri"]).predict(x_test)) == list(predictions)
    assert model.metadata.get_input_schema().input_names() == list(x_test.columns)


@pytest.mark.slow
def test_regressor_on_diabetes_with_random_search(mlflow_home: Path) -> None:
    import mlflow
    from sklearn.metrics import r2_score

    from mlops_operator.trainer.dataset_loading import load_sklearn

    spec = iris_spec(
        "diabetes-e2e",
        dataset={"uri": "sklearn://diabetes", "target": "progression"},
        estimator={
            "class": "sklearn.linear_model.Ridge",
            "search": {
                "type": "random",
                "params": {"alpha": {"low": 0.01, "high": 10, "log": True}},
                "maxTrials": 2,
                "metric": "rmse",
                "cv": 3,
                "seed": 1,
            },
        },
        evaluation={"testSize": "0.2", "seed": 42, "metrics": ["rmse", "mae", "r2"]},
    )
    code, result, _, _ = run_trainer(mlflow_home, spec)
    assert code == 0, result
    assert result["task"] == "regression" and set(result["metrics"]) == {"rmse", "mae", "r2"}
    assert result["search"]["metric"] == "rmse" and result["search"]["trials"] == 2
    artifacts = {a.path for a in client(mlflow_home).list_artifacts(result["mlflowRunId"])}
    assert "predicted_vs_actual.png" in artifacts and "reference_profile.json" in artifacts

    mlflow.set_tracking_uri(tracking_uri(mlflow_home))
    mlflow.set_registry_uri(tracking_uri(mlflow_home))  # another module's store may be the global one
    x_test, y_test = recompute_split(
        load_sklearn("sklearn://diabetes", "progression").frame, "progression", False
    )
    predictions = mlflow.pyfunc.load_model(result["modelUri"]).predict(x_test)
    assert f"{r2_score(y_test, predictions):.4f}" == result["metrics"]["r2"]


# --- bad input: real process exit codes ---------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.slow
def test_process_exits_3_on_malformed_data(mlflow_home: Path) -> None:
    spec = iris_spec("malformed-proc", dataset={"uri": f"file://{DATA / 'malformed.csv'}", "target": "label"})
    code, result, last, _ = run_trainer(mlflow_home, spec)
    assert (code, result["reason"]) == (3, "DatasetMalformed") and result == last
    assert registered_versions(mlflow_home, "malformed-proc") == []


@pytest.mark.slow
def test_process_exits_1_quickly_when_mlflow_is_down(mlflow_home: Path) -> None:
    spec = iris_spec("mlflow-down-proc")
    code, result, _, elapsed = run_trainer(
        mlflow_home, spec, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{closed_port()}"
    )
    assert (code, result["reason"]) == (1, "MLflowUnavailable"), result
    assert "127.0.0.1" in result["message"]
    assert elapsed < 20  # imports ~5 s + bounded retries ~3 s; MLflow's defaults would take minutes


# --- bad input, in-process ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("served")
    shutil.copy(DATA / "tiny.csv", root / "tiny.csv")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def run_in_process(
    home: Path,
    spec: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    **extra: str,
) -> tuple[int, dict[str, Any]]:
    for key, value in env_for(home, spec, **extra).items():
        if key.startswith(("MLOPS_", "MLFLOW_")):
            monkeypatch.setenv(key, value)
    for key in (
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER",
        "MLFLOW_HTTP_REQUEST_TIMEOUT",
    ):
        monkeypatch.delenv(key, raising=False)  # restored after the test: the trainer sets them
    monkeypatch.chdir(home)
    code = main(["train"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads(Path(os.environ["MLOPS_TERMINATION_MESSAGE_PATH"]).read_text()) == result
    return code, result


TINY = {"uri": f"file://{DATA / 'tiny.csv'}", "target": "label", "validation": {"minRows": 10}}
LOGREG = {"class": "sklearn.linear_model.LogisticRegression"}

BAD_INPUTS: list[tuple[str, dict[str, Any], str, int, list[str]]] = [
    (
        "file-missing",
        {"dataset": {**TINY, "uri": "file:///nonexistent/train.csv"}},
        "DatasetUnreachable",
        3,
        ["file:///nonexistent/train.csv", "not found"],
    ),
    (
        "http-404",
        {"dataset": {**TINY, "uri": "HTTP/nope.csv"}},
        "DatasetUnreachable",
        3,
        ["nope.csv", "HTTP 404"],
    ),
    (
        "malformed-csv",
        {"dataset": {**TINY, "uri": f"file://{DATA / 'malformed.csv'}"}},
        "DatasetMalformed",
        3,
        ["malformed.csv", "Expected 3 fields"],
    ),
    (
        "missing-target",
        {"dataset": {**TINY, "target": "species"}},
        "DataValidationFailed",
        3,
        ["target column 'species' not found", "'label'"],
    ),
    (
        "too-few-rows",
        {"dataset": {**TINY, "validation": {"minRows": 50}}},
        "DataValidationFailed",
        3,
        ["12 rows", "minRows=50"],
    ),
    (
        "too-many-nulls",
        {"dataset": {**TINY, "uri": f"file://{DATA / 'nulls.csv'}"}},
        "DataValidationFailed",
        3,
        ["'size'", "null", "maxNullFraction=0"],
    ),
    (
        "class-imbalance",
        {
            "dataset": {
                **TINY,
                "uri": f"file://{DATA / 'imbalanced.csv'}",
                "validation": {"minRows": 10, "minClassFraction": "0.2"},
            }
        },
        "DataValidationFailed",
        3,
        ["class imbalance", "'rare'", "minClassFraction=0.2"],
    ),
    (
        "schema-dtype",
        {
            "dataset": {
                **TINY,
                "validation": {
                    "minRows": 10,
                    "schema": [{"name": "size", "dtype": "float"}, {"name": "color", "dtype": "int"}],
                },
            }
        },
        "DataValidationFailed",
        3,
        ["'color' should be int", "'blue'"],
    ),
    (
        "kmeans",
        {"dataset": TINY, "estimator": {"class": "sklearn.cluster.KMeans"}},
        "EstimatorNotAllowed",
        3,
        ["sklearn.cluster.KMeans", "allow-list"],
    ),
    (
        "injection",
        {"dataset": TINY, "estimator": {"class": "sklearn.os.system"}},
        "EstimatorNotAllowed",
        3,
        ["sklearn.os.system", "allow-list"],
    ),
    (
        "unknown-hyperparameter",
        {"dataset": TINY, "estimator": {**LOGREG, "params": {"max_iters": 10}}},
        "InvalidHyperparameters",
        3,
        ["'max_iters'", "did you mean 'max_iter'"],
    ),
    (
        "rejected-value",
        {"dataset": TINY, "estimator": {**LOGREG, "params": {"C": -1}}},
        "InvalidHyperparameters",
        3,
        ["'C' parameter", "Got -1"],
    ),
    (
        "rejected-value-in-grid",
        {
            "dataset": TINY,
            "estimator": {**LOGREG, "search": {"type": "grid", "params": {"C": [1.0, -2.0]}, "cv": 2}},
        },
        "InvalidHyperparameters",
        3,
        ["search trial 1", "Got -2.0"],
    ),
    ("invalid-spec", {"dataset": {**TINY, "uri": "ftp://x/y.csv"}}, "InvalidSpec", 3, ["spec.dataset.uri"]),
    (
        "regression-metric-on-classifier",
        {
            "dataset": TINY,
            "estimator": {**LOGREG, "search": {"params": {"C": [1.0]}, "metric": "rmse", "cv": 2}},
        },
        "InvalidSpec",
        3,
        ["'rmse'", "does not apply to classification"],
    ),
]


@pytest.mark.parametrize(
    ("case", "overrides", "reason", "exit_code", "words"), BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS]
)
def test_bad_input(
    case: str,
    overrides: dict[str, Any],
    reason: str,
    exit_code: int,
    words: list[str],
    mlflow_home: Path,
    http_base: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = f"bad-{case}"
    spec = iris_spec(name, **json.loads(json.dumps(overrides).replace("HTTP/", f"{http_base}/")))
    spec["estimator"].setdefault("params", None)
    code, result = run_in_process(mlflow_home, spec, monkeypatch, capsys)
    assert (code, result["status"], result["reason"]) == (exit_code, "Failed", reason), result
    for word in words:
        assert word in result["message"], result["message"]
    assert registered_versions(mlflow_home, name) == []


def test_mlflow_down_in_process(
    mlflow_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = iris_spec("mlflow-down", dataset=TINY, estimator=LOGREG)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed_port()}")
    started = time.monotonic()
    env = env_for(mlflow_home, spec)
    env["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_TRACKING_URI"]
    for key, value in env.items():
        if key.startswith(("MLOPS_", "MLFLOW_")):
            monkeypatch.setenv(key, value)
    for key in (
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER",
        "MLFLOW_HTTP_REQUEST_TIMEOUT",
    ):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(mlflow_home)
    code = main(["train"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (code, result["reason"]) == (1, "MLflowUnavailable")
    # The first request is the lookup of a version this run may already have registered.
    assert "unavailable" in result["message"] and "looking for a version" in result["message"]
    assert os.environ["MLFLOW_TRACKING_URI"] in result["message"]
    assert time.monotonic() - started < 10


def test_failed_registration_leaves_nothing_behind(
    mlflow_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failure after ``create_model_version`` deletes the version and marks the run FAILED."""
    from mlops_operator.trainer import tracking
    from mlops_operator.trainer.trainer_errors import TrainerError

    def broken_wait(client: Any, name: str, version: str) -> None:
        assert client.get_model_version(name, version).status == "READY"  # it was created ...
        raise TrainerError(
            "RegistrationFailed", f"version {version} of {name} ended in status FAILED_REGISTRATION"
        )

    monkeypatch.setattr(tracking, "_wait_ready", broken_wait)
    spec = iris_spec("half-registered", dataset=TINY, estimator=LOGREG)
    code, result = run_in_process(mlflow_home, spec, monkeypatch, capsys)
    assert (code, result["reason"]) == (3, "RegistrationFailed"), result
    assert "FAILED_REGISTRATION" in result["message"]
    assert registered_versions(mlflow_home, "half-registered") == []  # ... and deleted again
    assert client(mlflow_home).search_registered_models("name = 'half-registered'") == []
    runs = client(mlflow_home).search_runs(
        [e.experiment_id for e in client(mlflow_home).search_experiments()],
        filter_string="tags.`mlops.dev/run-name` = 'half-registered-x7k2p'",
    )
    assert [r.info.status for r in runs] == ["FAILED"]
    assert runs[0].data.tags["mlops.dev/failure-reason"] == "RegistrationFailed"


def test_tabular_csv_with_categories_trains(
    mlflow_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Text columns go through the one-hot branch; a small CSV trains and registers in-process."""
    spec = iris_spec(
        "tiny-csv", dataset=TINY, estimator={**LOGREG, "params": {"C": 1.0}}, evaluation={"testSize": "0.34"}
    )
    code, result = run_in_process(mlflow_home, spec, monkeypatch, capsys)
    assert code == 0, result
    assert result["modelVersion"] == "1" and "search" not in result
    assert [str(v.version) for v in registered_versions(mlflow_home, "tiny-csv")] == ["1"]


# --- idempotent per run: a retried pod reports the version its run registered -------------------------


def runs_named(home: Path, run_name: str) -> list[Any]:
    mlflow_client = client(home)
    return list(
        mlflow_client.search_runs(
            [e.experiment_id for e in mlflow_client.search_experiments()],
            filter_string=f"tags.`mlops.dev/run-name` = '{run_name}'",
        )
    )


def test_retried_run_reports_its_version_without_training(
    mlflow_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Same MLOPS_RUN_NAME twice: one version, the same result (to the byte), no second MLflow run."""
    caplog.set_level(logging.INFO, logger="mlops_operator.trainer")
    spec = iris_spec(
        "retried",
        estimator={**LOGREG, "params": {"max_iter": 300}, "search": {"params": {"C": [0.5, 2.0]}, "cv": 2}},
    )
    code, first = run_in_process(mlflow_home, spec, monkeypatch, capsys)
    assert code == 0, first
    assert first["search"]["trials"] == 2 and first["params"]["C"] in (0.5, 2.0)
    [run] = runs_named(mlflow_home, "retried-x7k2p")
    assert "loaded sklearn://iris" in caplog.text
    caplog.clear()

    code, second = run_in_process(mlflow_home, spec, monkeypatch, capsys)
    assert code == 0, second
    assert json.dumps(second) == json.dumps(first)  # every field, in the same order
    assert [r.info.run_id for r in runs_named(mlflow_home, "retried-x7k2p")] == [run.info.run_id]
    assert [str(v.version) for v in registered_versions(mlflow_home, "retried")] == ["1"]
    assert "run retried-x7k2p had already registered version 1 of retried" in caplog.text
    assert "loaded sklearn://iris" not in caplog.text  # not even the data

    # A new run of the TrainingJob (a new Job, so a new run name) trains and registers anew.
    code, third = run_in_process(mlflow_home, spec, monkeypatch, capsys, MLOPS_RUN_NAME="retried-b9q4z")
    assert (code, third["modelVersion"]) == (0, "2"), third
    assert third["mlflowRunId"] != first["mlflowRunId"]
    assert sorted(str(v.version) for v in registered_versions(mlflow_home, "retried")) == ["1", "2"]


class PodKilled(BaseException):
    """Not an Exception: nothing in the trainer catches it, as nothing runs after a SIGKILL."""


def test_pod_killed_after_registering_is_not_registered_twice(
    mlflow_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Registered, then killed before the result: the retry reports that version and ends its run."""
    import mlflow

    from mlops_operator.trainer import tracking

    real_register = tracking.register

    def register_then_die(**kwargs: Any) -> str:
        real_register(**kwargs)
        raise PodKilled

    spec = iris_spec("killed", dataset=TINY, estimator={**LOGREG, "params": {"C": 1.0}})
    spec["evaluation"] = {"testSize": "0.34"}
    with monkeypatch.context() as patched:
        patched.setattr(tracking, "register", register_then_die)
        with pytest.raises(PodKilled):
            run_in_process(mlflow_home, spec, monkeypatch, capsys)
    assert not Path(os.environ["MLOPS_TERMINATION_MESSAGE_PATH"]).exists()
    [run] = runs_named(mlflow_home, "killed-x7k2p")
    mlflow.end_run()  # the fluent API's run of this process; a killed pod's stays RUNNING:
    client(mlflow_home).update_run(run.info.run_id, status="RUNNING")
    assert client(mlflow_home).get_run(run.info.run_id).info.status == "RUNNING"
    [version] = registered_versions(mlflow_home, "killed")

    code, result = run_in_process(mlflow_home, spec, monkeypatch, capsys)
    assert code == 0, result
    assert (result["modelVersion"], result["mlflowRunId"]) == ("1", run.info.run_id)
    assert result["sha256"] == version.tags["mlops.dev/sha256"] and result["artifactUri"] == version.source
    assert result["metrics"] == {
        k.removeprefix("mlops.dev/metric."): v for k, v in version.tags.items() if "/metric." in k
    }
    assert result["dataset"] == {
        "uri": TINY["uri"],
        "sha256": version.tags["mlops.dev/dataset-sha256"],
        "rows": 12,
    }
    logged = {k.removeprefix("param."): v for k, v in run.data.params.items() if k.startswith("param.")}
    assert {k: str(v) for k, v in result["params"].items()} == logged and result["params"]["C"] == 1.0
    assert result["experimentId"] == run.info.experiment_id and "search" not in result
    assert [str(v.version) for v in registered_versions(mlflow_home, "killed")] == ["1"]
    finished = client(mlflow_home).get_run(run.info.run_id)
    assert finished.info.status == "FINISHED" and finished.data.tags["mlops.dev/model-version"] == "1"
    assert len(runs_named(mlflow_home, "killed-x7k2p")) == 1
    assert "had already registered version 1 of killed" in caplog.text


def test_version_not_ready_is_not_reused(
    mlflow_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A version of the run stuck in PENDING_REGISTRATION (killed while waiting) is skipped, left alone."""
    import sqlite3

    mlflow_client = client(mlflow_home)
    mlflow_client.create_registered_model("pending")
    identity = {
        "mlops.dev/run-name": "pending-x7k2p",
        "mlops.dev/namespace": "team-a",
        "mlops.dev/trainingjob": "iris-train",
    }
    tags = {**identity, "mlops.dev/sha256": "0" * 64, "mlops.dev/metric.accuracy": "1.0000"}
    mlflow_client.create_model_version("pending", "file:///nowhere/model", tags=tags)
    with sqlite3.connect(mlflow_home / "mlflow.db") as db:
        db.execute("UPDATE model_versions SET status = 'PENDING_REGISTRATION' WHERE name = 'pending'")

    spec = iris_spec("pending", dataset=TINY, estimator=LOGREG, evaluation={"testSize": "0.34"})
    code, result = run_in_process(mlflow_home, spec, monkeypatch, capsys)
    assert (code, result["modelVersion"]) == (0, "2"), result
    assert result["sha256"] != "0" * 64
    assert "version 1 of pending from run pending-x7k2p is PENDING_REGISTRATION" in caplog.text
    statuses = {str(v.version): v.status for v in registered_versions(mlflow_home, "pending")}
    assert statuses == {"1": "PENDING_REGISTRATION", "2": "READY"}


def test_manual_run_is_not_looked_up(
    mlflow_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlops_operator.trainer import tracking

    def no_lookup(name: str, identity: Any) -> None:
        raise AssertionError("a run without MLOPS_RUN_NAME looked for an earlier registration")

    monkeypatch.setattr(tracking, "find_registration", no_lookup)
    spec = iris_spec("manual", dataset=TINY, estimator=LOGREG, evaluation={"testSize": "0.34"})
    code, result = run_in_process(mlflow_home, spec, monkeypatch, capsys, MLOPS_RUN_NAME="")
    assert (code, result["modelVersion"]) == (0, "1"), result
