"""Durable capture of production data (serving/capture.py) and training on it (trainer/production_data.py)."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from prometheus_client import CollectorRegistry

from mlops_operator.api.inferenceservice import Monitoring
from mlops_operator.api.trainingjob import TrainingJobSpec
from mlops_operator.monitoring.monitoring_summary import summarize
from mlops_operator.serving.asgi_app import ServerConfig
from mlops_operator.serving.capture import CaptureConfig, CaptureWriter, sampled
from mlops_operator.trainer import train_command
from mlops_operator.trainer.production_data import join_labels
from mlops_operator.trainer.trainer_errors import TrainerError
from tests.test_serving_app import ready_app
from tests.test_serving_models import (  # noqa: F401  (fixtures)
    LoggedModel,
    iris_model_fixture,
    mlflow_store_fixture,
)
from tests.test_serving_process import free_port, serve_command, serve_env, wait_ready

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

FEATURES = ["a", "b"]
DEADLINE_S = 30.0


def rows_on_disk(root: Path, table: str = "predictions") -> int:
    return sum(pq.read_metadata(p).num_rows for p in (root / table).rglob("*.parquet"))


def wait_for(condition: Callable[[], bool], what: str, deadline_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)  # polling interval: the loop waits on the condition


@pytest.fixture
def make_writer(tmp_path: Path) -> Iterator[Callable[..., CaptureWriter]]:
    writers: list[CaptureWriter] = []

    def make(uri: str | None = None, registry: Any = None, **options: Any) -> CaptureWriter:
        config = CaptureConfig(uri=uri or (tmp_path / "capture").as_uri(), **options)
        writer = CaptureWriter(
            config,
            model_name="m",
            model_version="3",
            feature_names=FEATURES,
            classification=True,
            registry=registry,
        )
        writers.append(writer)
        return writer

    yield make
    for writer in writers:
        writer.close()


def predict(writer: CaptureWriter, ids: list[str]) -> None:
    matrix = np.arange(len(ids) * 2, dtype=np.float64).reshape(len(ids), 2)
    writer.add(matrix, ["yes"] * len(ids), ids)


# --- the writer --------------------------------------------------------------------------------


def test_rows_are_written_in_batches_of_flush_rows_and_the_rest_at_close(
    make_writer: Callable[..., CaptureWriter], tmp_path: Path
) -> None:
    writer = make_writer(flush_rows=10, flush_seconds=3600)
    root = tmp_path / "capture"
    for batch in range(2):
        for i in range(10):
            predict(writer, [f"r{batch * 10 + i}"])
        wait_for(lambda: rows_on_disk(root) == 10 * (batch + 1), f"batch {batch} on disk")  # noqa: B023
    for i in range(20, 25):
        predict(writer, [f"r{i}"])
    assert writer.status()["buffered"] == 5  # below flushRows and flushSeconds: waits in memory
    writer.close()
    files = sorted((root / "predictions").rglob("*.parquet"))
    assert rows_on_disk(root) == 25 and len(files) == 3 and len({f.name for f in files}) == 3
    today = dt.datetime.now(dt.UTC).date().isoformat()
    assert all(f.parent == root / "predictions" / "model=m" / f"date={today}" for f in files)
    table = pd.concat([pq.read_table(f).to_pandas() for f in files])
    assert list(table.columns) == ["request_id", "model_version", "request_time", "prediction", *FEATURES]
    assert sorted(table["request_id"]) == sorted(f"r{i}" for i in range(25))
    assert set(table["model_version"]) == {"3"} and set(table["prediction"]) == {"yes"}


def test_rows_are_written_after_flush_seconds(
    make_writer: Callable[..., CaptureWriter], tmp_path: Path
) -> None:
    writer = make_writer(flush_rows=1000, flush_seconds=0.2)
    predict(writer, ["x", "y"])
    writer.label("x", "no")
    wait_for(lambda: rows_on_disk(tmp_path / "capture") == 2, "the time-based flush")
    wait_for(lambda: rows_on_disk(tmp_path / "capture", "labels") == 1, "the label's flush")


def test_sample_rate_keeps_the_same_requests_for_predictions_and_labels(
    make_writer: Callable[..., CaptureWriter], tmp_path: Path
) -> None:
    writer = make_writer(sample_rate=0.25, flush_rows=100_000)
    ids = [f"req-{i}" for i in range(2000)]
    predict(writer, ids)
    for request_id in ids:
        writer.label(request_id, "yes")
    writer.close()
    kept = [i for i in ids if sampled(i, 0.25)]
    assert 400 < len(kept) < 600
    assert rows_on_disk(tmp_path / "capture") == len(kept)
    assert rows_on_disk(tmp_path / "capture", "labels") == len(kept)
    assert writer.status()["dropped"]["sampled"] == 2000 - len(kept)


def test_size_bound_drops_and_counts_rows_past_max_bytes_per_day(
    make_writer: Callable[..., CaptureWriter], tmp_path: Path
) -> None:
    registry = CollectorRegistry()
    writer = make_writer(registry=registry, max_bytes_per_day=1024, flush_rows=1000)
    for batch in range(5):
        predict(writer, [f"{batch}-{i}" for i in range(50)])
        writer.flush()
    status = writer.status()
    written = rows_on_disk(tmp_path / "capture")
    # The bound is checked before each file: it is passed by at most one file.
    assert 0 < written < 250 and status["predictions"] == written
    assert status["dropped"]["maxBytes"] == 250 - written and status["state"] == "Full"
    labels = {"model": "m", "version": "3"}
    assert registry.get_sample_value(
        "mlops_model_capture_dropped_rows_total", {**labels, "reason": "maxBytes"}
    ) == (250 - written)
    assert (
        registry.get_sample_value("mlops_model_capture_rows_total", {**labels, "table": "predictions"})
        == written
    )


def test_backlog_is_bounded_to_two_batches(make_writer: Callable[..., CaptureWriter], tmp_path: Path) -> None:
    writer = make_writer(flush_rows=10, flush_seconds=3600)
    with writer._write_lock:  # storage stalls: the writer thread cannot take a batch
        for i in range(35):
            predict(writer, [f"r{i}"])
        status = writer.status()
    assert status["buffered"] == 20 and status["dropped"]["backlog"] == 15


@pytest.mark.parametrize("uri_kind", ["under-a-file", "unknown-scheme"])
def test_an_unwritable_uri_drops_and_counts_rows(
    make_writer: Callable[..., CaptureWriter], tmp_path: Path, uri_kind: str
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    uri = f"{blocker.as_uri()}/capture" if uri_kind == "under-a-file" else "nosuchfs://bucket/capture"
    registry = CollectorRegistry()
    writer = make_writer(uri=uri, registry=registry, flush_rows=5)
    predict(writer, [f"r{i}" for i in range(7)])
    writer.flush()
    status = writer.status()
    assert status["state"] == "Failing" and status["dropped"]["writeError"] == 7
    assert uri in status["lastError"] or "nosuchfs" in status["lastError"]
    assert (
        registry.get_sample_value(
            "mlops_model_capture_dropped_rows_total", {"model": "m", "version": "3", "reason": "writeError"}
        )
        == 7
    )
    summary = summarize([{"capture": status}], Monitoring())["status"]["capture"]
    assert summary["state"] == "Failing" and summary["dropped"] == 7
    assert "1 of 1 servers cannot write" in summary["message"]


async def test_server_keeps_serving_when_capture_cannot_write(
    iris_model: LoggedModel, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    config = ServerConfig(freeze_gc=False, capture=CaptureConfig(uri=f"{blocker.as_uri()}/c", flush_rows=1))
    app = ready_app(iris_model, config)
    assert app.capture is not None
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://s") as client:
            for _ in range(3):
                answer = await client.post("/predict", json={"features": iris_model.sample[0]})
                assert answer.status_code == 200

            # Every row is dropped and counted: by the failing write, or, when requests outrun
            # the writer thread (flushRows 1 allows 2 rows waiting), as backlog.
            def lost(status: dict[str, Any]) -> int:
                return int(status["dropped"]["writeError"] + status["dropped"]["backlog"])

            wait_for(lambda: app.capture is not None and lost(app.capture.status()) == 3, "drops")
            block = (await client.get("/monitoring")).json()["capture"]
        assert block["state"] == "Failing" and block["predictions"] == 0
        assert lost(block) == 3 and block["dropped"]["writeError"] >= 1
    finally:
        app.capture.close()


# --- crash and shutdown, as a real process -----------------------------------------------------


def _start_server(iris_model: LoggedModel, capture: Path, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    environment = {
        **serve_env(iris_model.tracking_uri),
        "MLOPS_SERVE_CAPTURE_URI": capture.as_uri(),
        "MLOPS_SERVE_CAPTURE_FLUSH_ROWS": "50",
        "MLOPS_SERVE_CAPTURE_FLUSH_SECONDS": "3600",
        **env,
    }
    process = subprocess.Popen(
        serve_command("--model-uri", iris_model.uri, "--port", str(port)),
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, base)
    except BaseException:
        process.kill()
        raise
    return process, base


@pytest.mark.slow
def test_sigkill_loses_at_most_one_batch_and_sigterm_loses_nothing(
    iris_model: LoggedModel, tmp_path: Path
) -> None:
    capture = tmp_path / "capture"
    process, base = _start_server(iris_model, capture)
    try:
        with httpx.Client(base_url=base) as client:
            for i in range(237):
                assert client.post("/predict", json={"features": iris_model.sample[i % 5]}).status_code == 200
        wait_for(lambda: rows_on_disk(capture) >= 200, "four batches of 50 on disk")
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        process.kill()
    # 237 answered, batches of (at least) 50 rows: what was written survives whole, and what is
    # lost is the one batch still filling in memory.
    lost = 237 - rows_on_disk(capture)
    assert 0 < lost < 50
    survived = rows_on_disk(capture)

    process, base = _start_server(iris_model, capture)
    try:
        with httpx.Client(base_url=base) as client:
            ids = []
            for i in range(37):
                answer = client.post("/predict", json={"features": iris_model.sample[i % 5]}).json()
                ids.append(answer["request_id"])
            labelled = client.post("/feedback", json=[{"request_id": r, "label": "setosa"} for r in ids[:10]])
            assert labelled.json()["accepted"] == 10
        process.send_signal(signal.SIGTERM)
        process.wait(30)  # uvicorn shuts down gracefully, then re-raises SIGTERM (exit -15)
    finally:
        process.kill()
    assert rows_on_disk(capture) == survived + 37  # the graceful stop wrote the partial batch
    assert rows_on_disk(capture, "labels") == 10


# --- the label join and the trainer's merge ----------------------------------------------------


def _times(*seconds: int) -> pd.Series:
    return pd.Series(pd.to_datetime([1_700_000_000 + s for s in seconds], unit="s", utc=True))


def test_join_keeps_the_first_label_and_drops_unmatched_rows() -> None:
    predictions = pd.DataFrame(
        {
            "request_id": ["a", "b", "c", "a"],
            "request_time": _times(1, 2, 3, 4),
            "prediction": ["x", "y", "x", "z"],
            "f": [1.0, 2.0, 3.0, 4.0],
        }
    )
    labels = pd.DataFrame(
        {
            "request_id": ["b", "a", "b", "ghost"],
            "label": ["second", "A", "first", "?"],
            "label_time": _times(20, 10, 5, 1),
        }
    )
    joined = join_labels(predictions, labels)
    assert joined[["request_id", "label", "f", "prediction"]].to_dict("records") == [
        {"request_id": "b", "label": "first", "f": 2.0, "prediction": "y"},
        {"request_id": "a", "label": "A", "f": 4.0, "prediction": "z"},  # the latest prediction of a
    ]


IRIS = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]


def _capture_iris(
    uri: str, rows: int, *, replica_for_labels: bool = True, features: list[str] = IRIS
) -> None:
    """Predictions on one replica, their labels accepted on another (as /feedback forwarding may)."""
    options = {"model_name": "iris", "model_version": "1", "classification": True}
    predictor = CaptureWriter(CaptureConfig(uri=uri), feature_names=features, **options)  # type: ignore[arg-type]
    labeller = (
        CaptureWriter(CaptureConfig(uri=uri), feature_names=features, **options)  # type: ignore[arg-type]
        if replica_for_labels
        else predictor
    )
    rng = np.random.default_rng(3)
    ids = [f"p{i}" for i in range(rows)]
    predictor.add(rng.uniform(0.1, 7.0, size=(rows, len(features))), ["setosa"] * rows, ids)
    for i, request_id in enumerate(ids[: rows - 5]):  # five predictions never get a label
        labeller.label(request_id, ["setosa", "versicolor", "virginica"][i % 3])
    predictor.close()
    labeller.close()


def _spec(uri: str, **production: Any) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate(
        {
            "model": {"name": "iris"},
            "dataset": {
                "uri": "sklearn://iris",
                "target": "species",
                "production": {"uri": uri, **production},
            },
            "estimator": {"class": "sklearn.linear_model.LogisticRegression"},
        }
    )


def test_training_data_merges_labelled_production_rows(tmp_path: Path) -> None:
    uri = (tmp_path / "capture").as_uri()
    _capture_iris(uri, 65)
    spec = _spec(uri, since="1d")
    loaded = train_command.load_data(spec, max_bytes=None)
    base, production = loaded.sources
    assert (base["name"], base["rows"]) == ("dataset", 150)
    assert (production["name"], production["rows"], production["model"]) == ("production", 60, "iris")
    assert loaded.rows == 210 and len(loaded.frame) == 210
    assert production["firstRequestTime"] <= production["lastRequestTime"]
    assert production["firstRequestTime"].startswith(dt.datetime.now(dt.UTC).date().isoformat())
    assert set(loaded.frame["species"].iloc[150:]) == {"setosa", "versicolor", "virginica"}
    again = train_command.load_data(spec, max_bytes=None)
    assert again.sha256 == loaded.sha256 and production["sha256"] == again.sources[1]["sha256"]
    assert loaded.sha256 not in (base["sha256"], production["sha256"])
    train_command.check_data(spec, train_command.check_estimator(spec), loaded)  # valid: no raise
    lineage = train_command.dataset_result(loaded.uri, loaded.sha256, loaded.rows, loaded.sources)
    params = train_command.source_params(loaded.sources)
    assert lineage["sources"][1]["rows"] == 60 and params["rows.production"] == 60
    assert params["rows.dataset"] == 150 and params["production.from"] == production["firstRequestTime"]
    bounded = train_command.load_data(_spec(uri, maxRows=10), max_bytes=None)
    assert bounded.sources[1]["rows"] == 10


def test_production_source_without_labelled_rows_fails_validation_naming_it(tmp_path: Path) -> None:
    uri = (tmp_path / "empty").as_uri()
    with pytest.raises(TrainerError) as error:
        train_command.load_data(_spec(uri), max_bytes=None)
    assert error.value.reason == "DataValidationFailed"
    assert f"production source {uri} (model iris)" in error.value.message
    assert "0 labelled rows" in error.value.message


def test_production_rows_with_other_features_fail_validation_naming_the_columns(tmp_path: Path) -> None:
    uri = (tmp_path / "capture").as_uri()
    _capture_iris(uri, 20, features=["sepal length (cm)", "width"])
    with pytest.raises(TrainerError) as error:
        train_command.load_data(_spec(uri), max_bytes=None)
    message = error.value.message
    assert error.value.reason == "DataValidationFailed" and f"production source {uri}" in message
    assert "'sepal width (cm)'" in message and "'petal length (cm)'" in message and "'width'" in message


def test_validation_reports_problems_per_source(tmp_path: Path) -> None:
    uri = (tmp_path / "capture").as_uri()
    _capture_iris(uri, 30)
    spec = TrainingJobSpec.model_validate(
        {
            **json.loads(_spec(uri).model_dump_json(by_alias=True, exclude_none=True)),
            "dataset": {
                "uri": "sklearn://iris",
                "target": "species",
                "production": {"uri": uri},
                "validation": {"schema": [{"name": "petal width (cm)", "max": "3"}]},
            },
        }
    )
    loaded = train_command.load_data(spec, max_bytes=None)
    with pytest.raises(TrainerError) as error:
        train_command.check_data(spec, train_command.check_estimator(spec), loaded)
    message = error.value.message
    assert f"production source {uri}: column 'petal width (cm)' has" in message
    assert "dataset source sklearn://iris" not in message  # iris itself is within the bound
