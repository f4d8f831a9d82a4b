"""``MLOPS_LOG_FORMAT=json``: the operator, the trainer and the server log one JSON object per line.

Each command runs as a real process (the trainer with a bad spec, the server against a model
that does not exist, then serving a real one, the operator with no cluster to talk to) and
every line it writes must parse as JSON with time, level, logger and message. kopf's
per-object logger is checked in-process: its records carry the resource they are about.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlops_operator.config import Settings
from mlops_operator.logging_setup import JsonLogFormatter, configure_logging, log_format_from_env
from mlops_operator.serving.serve_settings import ServeSettings
from tests.test_serving_models import (  # noqa: F401  (fixtures)
    LoggedModel,
    iris_model_fixture,
    mlflow_store_fixture,
)
from tests.test_serving_process import free_port, serve_command, serve_env, wait_ready

REQUIRED = {"time", "level", "logger", "message"}


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every non-empty line of ``text`` as JSON, each with the required fields (asserts otherwise)."""
    entries = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}\nin:\n{text[-3000:]}")
        assert isinstance(entry, dict), line
        assert set(entry) >= REQUIRED, f"{line}: missing {REQUIRED - set(entry)}"
        assert entry["time"].endswith("Z") and entry["level"] in {
            "DEBUG",
            "INFO",
            "WARNING",
            "ERROR",
            "CRITICAL",
        }
        entries.append(entry)
    assert entries, "nothing was logged"
    return entries


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")}
    return {**env, "MLOPS_LOG_FORMAT": "json", **extra}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "mlops_operator.cli", *args]


# --- the formatter and the settings ---------------------------------------------------------


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    try:
        yield stream
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logging.captureWarnings(False)


def test_kopf_object_logger_records_name_the_resource(captured: io.StringIO) -> None:
    import kopf
    from kopf._core.actions.loggers import ObjectLogger

    body = kopf.Body(
        {
            "apiVersion": "mlops.dev/v1alpha1",
            "kind": "InferenceService",
            "metadata": {"name": "iris", "namespace": "ml", "uid": "u-1"},
        }
    )
    logger = ObjectLogger(body=body, settings=kopf.OperatorSettings())
    logger.info("rolled back to %s", "2", extra={"model_version": "3"})
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        logger.exception("reconcile failed")
    logging.getLogger("mlops_operator").warning("no resource here")
    first, failure, plain = json_lines(captured.getvalue())
    assert first["message"] == "rolled back to 2"
    assert (first["namespace"], first["name"], first["kind"], first["modelVersion"]) == (
        "ml",
        "iris",
        "InferenceService",
        "3",
    )
    assert first["logger"] == "kopf.objects" and first["level"] == "INFO"
    assert failure["level"] == "ERROR" and "RuntimeError: boom\nsecond line" in failure["exception"]
    assert "namespace" not in plain and plain["logger"] == "mlops_operator"


def test_static_fields_and_unknown_formats() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    entry = json.loads(JsonLogFormatter({"model": "iris", "modelVersion": "", "name": "a"}).format(record))
    assert entry["message"] == "hello you" and entry["model"] == "iris" and "modelVersion" not in entry
    with pytest.raises(ValueError, match="plain or json"):
        configure_logging("xml")
    assert log_format_from_env({"MLOPS_LOG_FORMAT": "JSON"}) == "json"
    assert log_format_from_env({"MLOPS_LOG_FORMAT": "xml"}) == "plain"


def test_every_command_reads_the_same_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_LOG_FORMAT", "json")
    assert Settings().log_format == "json"
    served = ServeSettings(model_uri="models:/x/1")
    assert served.log_format == "json"
    # BentoML's workers rebuild the settings from the environment.
    env = served.to_env()
    assert env["MLOPS_LOG_FORMAT"] == "json" and "MLOPS_SERVE_LOG_FORMAT" not in env
    monkeypatch.setenv("MLOPS_LOG_FORMAT", "yaml")
    with pytest.raises(ValueError):
        Settings()


def test_the_operator_hands_its_log_format_to_the_pods_it_creates() -> None:
    import yaml

    from mlops_operator.api.inferenceservice import InferenceServiceSpec
    from mlops_operator.api.trainingjob import TrainingJobSpec
    from mlops_operator.resources import inferenceservice_children, trainingjob_children

    examples = Path(__file__).resolve().parent.parent / "examples"
    owner = {"apiVersion": "mlops.dev/v1alpha1", "metadata": {"name": "x", "namespace": "ml", "uid": "u"}}
    tj = TrainingJobSpec.model_validate(
        yaml.safe_load((examples / "iris-trainingjob.yaml").read_text())["spec"]
    )
    isvc = InferenceServiceSpec.model_validate(
        yaml.safe_load((examples / "iris-inferenceservice.yaml").read_text())["spec"]
    )

    def env_of(log_format: str) -> list[dict[str, str]]:
        job = trainingjob_children.build_training_job(
            {**owner, "kind": "TrainingJob"},
            tj,
            number=1,
            trigger="Create",
            image="i",
            mlflow_tracking_uri="u",
            log_format=log_format,
        )
        deployment = inferenceservice_children.build_predictor_deployment(
            {**owner, "kind": "InferenceService"},
            isvc,
            version="1",
            model_uri="models:/x/1",
            sha256=None,
            image="i",
            mlflow_tracking_uri="u",
            replicas=1,
            runtime="uvicorn",
            log_format=log_format,
        )
        return [
            item
            for pod in (job["spec"]["template"]["spec"], deployment["spec"]["template"]["spec"])
            for item in pod["containers"][0]["env"]
            if item["name"] == "MLOPS_LOG_FORMAT"
        ]

    assert env_of("json") == [{"name": "MLOPS_LOG_FORMAT", "value": "json"}] * 2
    assert env_of("plain") == []  # every command's default


# --- real processes -------------------------------------------------------------------------


def test_trainer_with_a_bad_spec_logs_json(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"model": {"name": "iris"}, "dataset": {"uri": "ftp://nope", "target": "y"}}))
    result = subprocess.run(
        _cli("train", "--spec-file", str(spec), "--termination-message-path", str(tmp_path / "result")),
        env=_env(MLOPS_TRAININGJOB_NAME="iris-train", MLOPS_TRAININGJOB_NAMESPACE="ml", MLOPS_RUN_NAME="iris-train-4"),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    logs = json_lines(result.stderr)
    failed = next(e for e in logs if e["level"] == "ERROR")
    assert "InvalidSpec" in failed["message"] or "spec.dataset" in failed["message"]
    assert all((e["namespace"], e["name"], e["kind"]) == ("ml", "iris-train", "TrainingJob") for e in logs)
    # stdout carries the run's result, itself one JSON object.
    assert json.loads(result.stdout.strip().splitlines()[-1])["reason"] == "InvalidSpec"


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--model-uri", "/nonexistent/model", "--model-version", "7"], id="missing-model"),
        pytest.param([], id="no-model-uri"),
    ],
)
def test_server_that_cannot_start_logs_json(args: list[str]) -> None:
    result = subprocess.run(
        _cli("serve", "--host", "127.0.0.1", "--port", "0", *args),
        env=_env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert result.stdout.strip() == ""
    logs = json_lines(result.stderr)
    assert logs[-1]["level"] == "ERROR" and logs[-1]["logger"] == "mlops_operator.serving"
    if args:
        assert logs[-1]["modelVersion"] == "7"


@pytest.mark.slow
def test_server_serving_a_model_logs_json(iris_model: LoggedModel) -> None:
    port = free_port()
    env = {**serve_env(iris_model.tracking_uri), "MLOPS_LOG_FORMAT": "json"}
    command = serve_command("--model-uri", iris_model.uri, "--port", str(port), "--runtime", "uvicorn")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_ready(process, f"http://127.0.0.1:{port}")
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    logs = json_lines(output.decode())
    loggers = {entry["logger"] for entry in logs}
    assert "uvicorn.error" in loggers, f"uvicorn's own lines go through the same formatter: {loggers}"
    assert all(entry["model"] == iris_model.name for entry in logs if entry["logger"].startswith("mlops"))


def test_operator_that_cannot_authenticate_logs_json(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    result = subprocess.run(
        _cli("run", "-A", "--metrics-port", "0", "--liveness-port", "0"),
        env={**_env(KUBECONFIG=str(kubeconfig)), "KUBERNETES_SERVICE_HOST": ""},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.strip() == ""
    logs = json_lines(result.stderr)
    assert logs[-1]["level"] == "ERROR" and "mlops-operator run:" in logs[-1]["message"]
