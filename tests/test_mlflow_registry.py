"""registry.mlflow_registry.Registry against a SQLite MLflow store (and a closed port for 'unavailable')."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest

from mlops_operator.registry.mlflow_registry import (
    ModelVersionNotFound,
    RegisteredModelNotFound,
    Registry,
    RegistryUnavailable,
    RunArtifactNotFound,
    VersionInfo,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A registered model ``reg-model`` with two versions, each from a run with metrics and an artifact."""
    from mlflow import MlflowClient

    home = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("registry-tests", artifact_location=(home / "artifacts").as_uri())
    client.create_registered_model("reg-model")
    runs = []
    for accuracy in (0.91234, 0.95):
        run = client.create_run(experiment)
        client.log_metric(run.info.run_id, "accuracy", accuracy)
        (home / "profile.json").write_text('{"rows": 3}')
        client.log_artifact(run.info.run_id, str(home / "profile.json"))
        client.set_terminated(run.info.run_id)
        client.create_model_version(
            "reg-model",
            f"{run.info.artifact_uri}/model",
            run_id=run.info.run_id,
            tags={"mlops.dev/sha256": "abc"},
        )
        runs.append(run.info.run_id)
    client.create_registered_model("empty-model")
    return {"uri": uri, "runs": runs, "home": home}


@pytest.fixture
def registry(store: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Registry:
    for key in (
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER",
        "MLFLOW_HTTP_REQUEST_TIMEOUT",
    ):
        monkeypatch.delenv(key, raising=False)  # Registry sets them; restored after the test
    return Registry(store["uri"])


def test_get_version_has_metrics_as_decimal_strings(registry: Registry, store: dict[str, Any]) -> None:
    info = registry.get_version("reg-model", 1)
    assert isinstance(info, VersionInfo)
    assert (info.version, info.run_id, info.status) == ("1", store["runs"][0], "READY")
    assert info.metrics == {"accuracy": "0.9123"} and info.tags == {"mlops.dev/sha256": "abc"}
    assert info.uri == "models:/reg-model/1" and info.source.endswith("/model")


def test_latest_version(registry: Registry) -> None:
    latest = registry.latest_version("reg-model")
    assert latest is not None and latest.version == "2"
    assert registry.latest_version("empty-model") is None


def test_aliases_resolve_move_and_delete(registry: Registry) -> None:
    assert registry.production_metrics("reg-model") is None
    registry.set_alias("reg-model", "production", "1")
    registry.set_alias("reg-model", "production", "1")  # idempotent
    assert registry.resolve_alias("reg-model", "production").version == "1"
    assert registry.production_metrics("reg-model") == {"accuracy": "0.9123"}
    registry.set_alias("reg-model", "production", 2)
    assert registry.get_version("reg-model", 2).aliases == ["production"]
    assert registry.get_version("reg-model", 1).aliases == []
    assert registry.production_metrics("reg-model") == {"accuracy": "0.9500"}
    registry.delete_alias("reg-model", "production")
    registry.delete_alias("reg-model", "production")  # already gone: no error
    assert registry.production_metrics("reg-model") is None


def test_tags_and_description(registry: Registry) -> None:
    registry.set_version_tags(
        "reg-model", "2", {"mlops.dev/validated": "true", "mlops.dev/gate.accuracy": "pass"}
    )
    registry.set_description("reg-model", "2", "# reg-model\n\nA model card.")
    info = registry.get_version("reg-model", "2")
    assert info.tags["mlops.dev/validated"] == "true" and info.tags["mlops.dev/gate.accuracy"] == "pass"
    assert info.description == "# reg-model\n\nA model card."


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (
            lambda r: r.get_version("no-such-model", "1"),
            RegisteredModelNotFound,
            "'no-such-model' does not exist",
        ),
        (lambda r: r.get_version("reg-model", "99"), ModelVersionNotFound, "no version 99"),
        (lambda r: r.resolve_alias("reg-model", "champion"), ModelVersionNotFound, "no alias 'champion'"),
        (lambda r: r.resolve_alias("no-such-model", "champion"), RegisteredModelNotFound, "does not exist"),
        (lambda r: r.set_alias("reg-model", "production", "99"), ModelVersionNotFound, "no version 99"),
        (lambda r: r.latest_version("no-such-model"), RegisteredModelNotFound, "does not exist"),
        (lambda r: r.set_description("reg-model", "42", "x"), ModelVersionNotFound, "no version 42"),
        (
            lambda r: r.set_version_tags("no-such-model", "1", {"a": "b"}),
            RegisteredModelNotFound,
            "does not exist",
        ),
    ],
    ids=[
        "model",
        "version",
        "alias",
        "alias-of-missing-model",
        "alias-to-missing-version",
        "latest-of-missing",
        "describe-missing",
        "tag-missing-model",
    ],
)
def test_not_found_errors(registry: Registry, call: Any, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        call(registry)


def test_production_metrics_of_a_missing_model_is_none(registry: Registry) -> None:
    assert registry.production_metrics("no-such-model") is None


def test_download_run_artifact(registry: Registry, store: dict[str, Any], tmp_path: Path) -> None:
    local = registry.download_run_artifact(store["runs"][0], "profile.json", str(tmp_path))
    assert Path(local).read_text() == '{"rows": 3}'
    with pytest.raises(RunArtifactNotFound, match=r"nope\.json"):
        registry.download_run_artifact(store["runs"][0], "nope.json", str(tmp_path))


def test_unavailable_quickly(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in (
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER",
        "MLFLOW_HTTP_REQUEST_TIMEOUT",
    ):
        monkeypatch.delenv(key, raising=False)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    registry = Registry(f"http://user:secret@127.0.0.1:{port}")
    for call in (
        lambda: registry.get_version("m", "1"),
        lambda: registry.resolve_alias("m", "production"),
        lambda: registry.set_alias("m", "production", "1"),
        lambda: registry.production_metrics("m"),
    ):
        started = time.monotonic()
        with pytest.raises(RegistryUnavailable) as info:
            call()
        assert time.monotonic() - started < 5
        assert f"127.0.0.1:{port}" in str(info.value) and "secret" not in str(info.value)
