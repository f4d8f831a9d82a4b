"""The model server's ASGI core, in process: every endpoint and every kind of bad input."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Iterator, MutableMapping
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from mlops_operator.registry.artifacts import (
    DigestMismatchError,
    ModelNotFoundError,
    resolve_model,
)
from mlops_operator.serving.asgi_app import ServerConfig, ServingApp
from mlops_operator.serving.loader import create_app, load_served_model
from mlops_operator.serving.serve_settings import ServeSettings
from mlops_operator.serving.served_model import Calibration, Prediction
from tests.test_serving_models import (  # noqa: F401  (fixtures)
    LoggedModel,
    forest_model_fixture,
    iris_model_fixture,
    mlflow_store_fixture,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


class CountingModel:
    """Wraps a served model's predict to count calls (bad input must make none)."""

    def __init__(self, app: ServingApp) -> None:
        assert app.model is not None and app.runner is not None
        self.calls = 0
        inner = app.runner._predict

        def predict(x: Any) -> Prediction:
            self.calls += 1
            return inner(x)

        app.runner._predict = predict


def ready_app(model: LoggedModel, config: ServerConfig | None = None, monitoring: bool = True) -> ServingApp:
    settings_ = ServeSettings(model_uri=model.uri, monitoring=monitoring, drift_window=50)
    resolved = resolve_model(model.uri)
    app = create_app(settings_, resolved, CollectorRegistry())
    if config is not None:
        app.config = config
    assert app.loader is not None
    served, monitor = app.loader()
    app.attach(served, monitor)
    return app


@pytest.fixture(scope="module")
def iris_app(iris_model: LoggedModel) -> ServingApp:
    return ready_app(iris_model, ServerConfig(max_rows=50, max_body_bytes=64 * 1024, freeze_gc=False))


@pytest.fixture
async def client(iris_app: ServingApp) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=iris_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://server") as c:
        yield c


@pytest.fixture
def counter(iris_app: ServingApp) -> Iterator[CountingModel]:
    assert iris_app.runner is not None
    original = iris_app.runner._predict
    yield CountingModel(iris_app)
    iris_app.runner._predict = original


def metric(app: ServingApp, name: str, **labels: str) -> float:
    value = app.registry.get_sample_value(name, labels)
    return value or 0.0


ROW = [5.1, 3.5, 1.4, 0.2]


# --- happy paths -------------------------------------------------------------------------------


async def test_predict_one_row(client: httpx.AsyncClient, iris_model: LoggedModel) -> None:
    response = await client.post("/predict", json={"features": ROW})
    assert response.status_code == 200
    body = response.json()
    assert body["prediction"] == "setosa"
    assert len(body["probability"]) == 3 and math.isclose(sum(body["probability"]), 1.0)
    assert body["model_version"] == iris_model.version
    assert body["request_id"]


async def test_predict_by_feature_name(client: httpx.AsyncClient, iris_model: LoggedModel) -> None:
    named = dict(zip(reversed(iris_model.feature_names), reversed(ROW), strict=True))
    response = await client.post("/predict", json={"features": named})
    assert response.status_code == 200
    assert response.json()["prediction"] == "setosa"


async def test_predict_instances(client: httpx.AsyncClient, iris_model: LoggedModel) -> None:
    response = await client.post("/predict", json={"instances": iris_model.sample[:3]})
    assert response.status_code == 200
    body = response.json()
    assert body["prediction"] == ["setosa"] * 3
    assert len(body["probability"]) == 3 and len(body["request_id"]) == 3
    assert len(set(body["request_id"])) == 3


async def test_health_and_readiness(client: httpx.AsyncClient, iris_model: LoggedModel) -> None:
    health = await client.get("/health")
    assert health.status_code == 200
    assert health.json() == {
        "status": "healthy",
        "model_loaded": True,
        "model_name": iris_model.name,
        "model_version": iris_model.version,
    }
    assert (await client.get("/v2/health/live")).status_code == 200
    assert (await client.get("/v2/health/ready")).status_code == 200
    assert (await client.get(f"/v2/models/{iris_model.name}/ready")).status_code == 200
    assert (
        await client.get(f"/v2/models/{iris_model.name}/versions/{iris_model.version}/ready")
    ).status_code == 200


async def test_not_ready_until_loaded(iris_model: LoggedModel) -> None:
    app = ServingApp(model_name="iris", model_version="1", registry=CollectorRegistry())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://s") as c:
        assert (await c.get("/v2/health/ready")).status_code == 503
        assert (await c.get("/v2/health/live")).status_code == 200
        health = await c.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "loading"
        predict = await c.post("/predict", json={"features": ROW})
        assert predict.status_code == 503 and "loading" in predict.json()["error"]


async def test_v2_metadata(client: httpx.AsyncClient, iris_model: LoggedModel) -> None:
    server = (await client.get("/v2")).json()
    assert server["name"] == "mlops-operator" and "binary_tensor_data" in server["extensions"]
    meta = (await client.get(f"/v2/models/{iris_model.name}")).json()
    assert meta["name"] == iris_model.name and meta["versions"] == [iris_model.version]
    assert meta["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]
    assert [o["name"] for o in meta["outputs"]] == ["predict", "predict_proba"]
    assert meta["parameters"]["feature_names"] == iris_model.feature_names


@pytest.mark.parametrize(
    "data",
    [pytest.param([v for row in [ROW, ROW] for v in row], id="flat"), pytest.param([ROW, ROW], id="nested")],
)
async def test_v2_infer_json(client: httpx.AsyncClient, iris_model: LoggedModel, data: list[Any]) -> None:
    request = {"id": "r1", "inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP64", "data": data}]}
    response = await client.post(f"/v2/models/{iris_model.name}/infer", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "r1" and body["model_name"] == iris_model.name
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["predict"] == {
        "name": "predict",
        "datatype": "BYTES",
        "shape": [2],
        "data": ["setosa"] * 2,
    }
    assert outputs["predict_proba"]["shape"] == [2, 3] and len(outputs["predict_proba"]["data"]) == 6


async def test_v2_infer_per_feature_tensors(client: httpx.AsyncClient, iris_model: LoggedModel) -> None:
    inputs = [
        {"name": name, "shape": [1], "datatype": "FP32", "data": [value]}
        for name, value in zip(iris_model.feature_names, ROW, strict=True)
    ]
    url = f"/v2/models/{iris_model.name}/versions/{iris_model.version}/infer"
    response = await client.post(url, json={"inputs": inputs, "outputs": [{"name": "predict"}]})
    assert response.status_code == 200, response.text
    assert [o["name"] for o in response.json()["outputs"]] == ["predict"]


# --- feedback and metrics ----------------------------------------------------------------------


async def test_feedback_known_and_unknown(client: httpx.AsyncClient, iris_app: ServingApp) -> None:
    ids = (await client.post("/predict", json={"instances": [ROW, ROW]})).json()["request_id"]
    one = await client.post("/feedback", json={"request_id": ids[0], "label": "setosa"})
    assert one.status_code == 200 and one.json()["accepted"] == 1
    before = iris_app.monitor.snapshot() if iris_app.monitor else {}
    unknown = await client.post("/feedback", json={"request_id": "no-such-id", "label": "setosa"})
    assert unknown.status_code == 404 and "no-such-id" in unknown.json()["error"]
    again = await client.post("/feedback", json={"request_id": ids[0], "label": "versicolor"})
    assert again.status_code == 404  # first label wins: a second one counts nothing
    after = iris_app.monitor.snapshot() if iris_app.monitor else {}
    assert json.dumps(before.get("accuracy"), sort_keys=True) == json.dumps(
        after.get("accuracy"), sort_keys=True
    )
    mixed = await client.post(
        "/feedback", json=[{"request_id": ids[1], "label": "setosa"}, {"request_id": "x", "label": 1}]
    )
    assert mixed.status_code == 200 and mixed.json() == {
        "accepted": 1,
        "unknown": 1,
        "unknown_request_ids": ["x"],
    }


async def test_metrics_count_by_status(client: httpx.AsyncClient, iris_app: ServingApp) -> None:
    labels = {"model": iris_app.model_name, "version": iris_app.model_version, "endpoint": "/predict"}
    ok_before = metric(iris_app, "mlops_model_requests_total", code="200", **labels)
    bad_before = metric(iris_app, "mlops_model_requests_total", code="400", **labels)
    await client.post("/predict", json={"features": ROW})
    await client.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
    text = (await client.get("/metrics")).text
    assert "mlops_model_requests_total" in text and "mlops_model_request_duration_seconds_bucket" in text
    assert metric(iris_app, "mlops_model_requests_total", code="200", **labels) == ok_before + 1
    assert metric(iris_app, "mlops_model_requests_total", code="400", **labels) == bad_before + 1


# --- bad input ---------------------------------------------------------------------------------

BAD_PREDICT: list[Any] = [
    pytest.param(b"{not json", 400, "malformed JSON", id="malformed-json"),
    pytest.param(b"", 400, "malformed JSON", id="empty-body"),
    pytest.param(b"[" * 5000 + b"]" * 5000, 400, "malformed JSON", id="nesting-bomb"),
    pytest.param(b'{"features": [1e400, 1, 1, 1]}', 400, "malformed JSON", id="overflow-1e400"),
    pytest.param(b'{"features": [NaN, 1, 1, 1]}', 400, "malformed JSON", id="nan-literal"),
    pytest.param(b'{"features": [Infinity, 1, 1, 1]}', 400, "malformed JSON", id="infinity-literal"),
    pytest.param({"features": [1, 2, 3]}, 400, "has 3 values, expected 4 features", id="too-few-features"),
    pytest.param({"features": [1, 2, 3, 4, 5]}, 400, "has 5 values", id="too-many-features"),
    pytest.param(
        {"features": [1, "a", 3, 4]}, 400, "features[1] (column 1 ('sepal_width')) is a string", id="string"
    ),
    pytest.param(
        {"features": [1, None, 3, 4]}, 400, "features[1] (column 1 ('sepal_width')) is null", id="null"
    ),
    pytest.param({"features": [1, True, 3, 4]}, 400, "is a boolean", id="bool"),
    pytest.param({"features": [1, 10**400, 3, 4]}, 400, "", id="huge-int"),
    pytest.param({"features": [[1, 2, 3, 4]]}, 400, "1-D", id="2d-in-features"),
    pytest.param({"features": "1,2,3,4"}, 400, "'features' must be an array", id="features-string"),
    pytest.param(
        {"features": {"sepal_length": 1}}, 400, "missing feature(s) 'sepal_width'", id="missing-name"
    ),
    pytest.param(
        {"features": {"sepal_length": 1, "sepal_width": 1, "petal_length": 1, "petal_width": 1, "colour": 2}},
        400,
        "unknown feature(s) 'colour'",
        id="unknown-name",
    ),
    pytest.param({"instances": [1, 2, 3, 4]}, 400, "must be a 2-D array", id="1d-instances"),
    pytest.param({"instances": [[1, 2, 3, 4], [1, 2]]}, 400, "instances[1] has 2 values", id="ragged"),
    pytest.param({"instances": []}, 400, "zero rows", id="zero-rows"),
    pytest.param({"instances": [ROW] * 51}, 413, "51 rows, more than the limit of 50", id="too-many-rows"),
    pytest.param(
        {"instances": [ROW, [1, 2, "x", 4]]}, 400, "instances[1][2] (column 2 ('petal_length'))", id="row-str"
    ),
    pytest.param({"instances": [ROW, [1, 2, None, 4]]}, 400, "instances[1][2]", id="row-null"),
    pytest.param({"instances": [ROW, [1, 2, [3], 4]]}, 400, "instances[1][2]", id="row-nested"),
    pytest.param({"instances": "rows"}, 400, "'instances' must be an array", id="instances-string"),
    pytest.param({"rows": [ROW]}, 400, "'features' (one row) or 'instances'", id="no-known-key"),
    pytest.param({"features": ROW, "instances": [ROW]}, 400, "not both", id="both-keys"),
    pytest.param([ROW], 400, "body must be a JSON object", id="top-level-array"),
    pytest.param(b"null", 400, "body must be a JSON object", id="top-level-null"),
    pytest.param(b"\xff\xfe", 400, "malformed JSON", id="not-utf8"),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD_PREDICT)
async def test_bad_predict_input(
    client: httpx.AsyncClient, counter: CountingModel, body: Any, status: int, message: str
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await client.post("/predict", content=content, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert counter.calls == 0


BAD_INFER: list[Any] = [
    pytest.param({"inputs": []}, "non-empty array", id="no-inputs"),
    pytest.param(
        {"inputs": [{"name": "x", "shape": [4], "datatype": "FP64", "data": ROW}]}, "2-D tensor", id="1d"
    ),
    pytest.param(
        {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]},
        "3 columns",
        id="width",
    ),
    pytest.param(
        {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP64", "data": ROW}]},
        "needs 8",
        id="shape-mismatch",
    ),
    pytest.param(
        {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "BYTES", "data": ["a"] * 4}]},
        "numeric",
        id="bytes",
    ),
    pytest.param(
        {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP99", "data": ROW}]},
        "not a v2 datatype",
        id="dtype",
    ),
    pytest.param(
        {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1, None, 3, 4]}]},
        "data[1] is null",
        id="null",
    ),
    pytest.param(
        {"inputs": [{"name": "x", "shape": [0, 4], "datatype": "FP64", "data": []}]},
        "zero rows",
        id="zero-rows",
    ),
    pytest.param(
        {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [[[1, 2, 3, 4]]]}]},
        "nested deeper",
        id="too-deep",
    ),
    pytest.param(
        {"inputs": [{"name": "sepal_length", "shape": [1], "datatype": "FP64", "data": [1]}] * 2},
        "one tensor per feature",
        id="per-feature-missing",
    ),
    pytest.param(
        {
            "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": ROW}],
            "outputs": [{"name": "z"}],
        },
        "unknown output 'z'",
        id="unknown-output",
    ),
]


@pytest.mark.parametrize(("body", "message"), BAD_INFER)
async def test_bad_infer_input(
    client: httpx.AsyncClient,
    counter: CountingModel,
    iris_model: LoggedModel,
    body: Any,
    message: str,
) -> None:
    response = await client.post(f"/v2/models/{iris_model.name}/infer", json=body)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
    assert counter.calls == 0


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        pytest.param("GET", "/nope", 404, id="unknown-route"),
        pytest.param("GET", "/v2/models/other/ready", 404, id="unknown-model"),
        pytest.param("GET", "/v2/models/iris/versions/999/ready", 404, id="unknown-version"),
        pytest.param("GET", "/predict", 405, id="get-predict"),
        pytest.param("POST", "/health", 405, id="post-health"),
        pytest.param("DELETE", "/v2/models/iris/infer", 405, id="delete-infer"),
    ],
)
async def test_routes(client: httpx.AsyncClient, method: str, path: str, status: int) -> None:
    response = await client.request(method, path)
    assert response.status_code == status
    assert response.json()["error"]


async def test_wrong_content_type(client: httpx.AsyncClient, counter: CountingModel) -> None:
    response = await client.post("/predict", content=b"features=1", headers={"content-type": "text/plain"})
    assert response.status_code == 415 and "text/plain" in response.json()["error"]
    assert counter.calls == 0


async def test_body_over_limit_by_content_length(client: httpx.AsyncClient, counter: CountingModel) -> None:
    response = await client.post(
        "/predict", content=b" " * (64 * 1024 + 1), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413 and "exceeds the limit" in response.json()["error"]
    assert counter.calls == 0


async def test_body_over_limit_while_streaming(iris_app: ServingApp, counter: CountingModel) -> None:
    """A chunked upload (no Content-Length) is cut off at the limit, not read to the end."""
    chunks_sent = 0

    async def receive() -> dict[str, Any]:
        nonlocal chunks_sent
        chunks_sent += 1
        return {"type": "http.request", "body": b" " * 16384, "more_body": chunks_sent < 1000}

    sent: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/predict",
        "headers": [(b"content-type", b"application/json")],
    }
    await iris_app(scope, receive, send)
    assert sent[0]["status"] == 413
    assert chunks_sent <= 5  # stopped at 64 KiB, not after 16 MB
    assert counter.calls == 0


async def test_overload_answers_503_at_once(iris_model: LoggedModel) -> None:
    app = ready_app(iris_model, ServerConfig(max_inflight=2, freeze_gc=False), monitoring=False)
    release = asyncio.Event()
    both_in = asyncio.Event()
    entered = 0
    inner = app.runner._predict  # type: ignore[union-attr]

    async def slow_run(matrix: Any) -> Prediction:
        nonlocal entered
        entered += 1
        if entered == 2:
            both_in.set()
        await release.wait()
        return inner(matrix)

    app.runner.run = slow_run  # type: ignore[method-assign,union-attr]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://s") as c:
        held = [asyncio.create_task(c.post("/predict", json={"features": ROW})) for _ in range(2)]
        await asyncio.wait_for(both_in.wait(), timeout=5)
        rejected = await asyncio.wait_for(c.post("/predict", json={"features": ROW}), timeout=5)
        assert rejected.status_code == 503 and rejected.headers["retry-after"] == "1"
        assert "overloaded" in rejected.json()["error"]
        release.set()
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.recursive(
        st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=5),
        lambda children: (
            st.lists(children, max_size=6)
            | st.dictionaries(
                st.sampled_from(["features", "instances", "inputs", "x"]) | st.text(max_size=3), children
            )
        ),
        max_leaves=30,
    )
)
def test_arbitrary_json_never_5xx(iris_app: ServingApp, body: Any) -> None:
    async def post() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=iris_app), base_url="http://s") as c:
            content = json.dumps(body).encode()
            headers = {"content-type": "application/json"}
            return [
                await c.post("/predict", content=content, headers=headers),
                await c.post("/v2/models/iris/infer", content=content, headers=headers),
                await c.post("/feedback", content=content, headers=headers),
            ]

    for response in asyncio.run(post()):
        assert response.status_code < 500, response.text


@settings(max_examples=100, deadline=None)
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes_never_5xx(iris_app: ServingApp, raw: bytes) -> None:
    async def post() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=iris_app), base_url="http://s") as c:
            return await c.post("/predict", content=raw, headers={"content-type": "application/json"})

    assert asyncio.run(post()).status_code < 500


# --- batching and model loading ----------------------------------------------------------------


async def test_forest_batches_concurrent_requests(forest_model: LoggedModel) -> None:
    app = ready_app(forest_model, ServerConfig(max_batch_size=32, max_batch_wait_ms=20, freeze_gc=False))
    rows = np.random.default_rng(1).normal(size=(32, 20)).tolist()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://s") as c:
        answers = await asyncio.gather(*(c.post("/predict", json={"features": row}) for row in rows))
    batcher = app.runner
    assert all(a.status_code == 200 for a in answers)
    assert batcher.rows == 32 and batcher.batches < 32  # type: ignore[union-attr]
    # Each answer is its own row's prediction, not a neighbour's.
    assert app.model is not None
    expected = app.model.predict(np.array(rows)).labels
    assert [a.json()["prediction"] for a in answers] == expected


@pytest.mark.parametrize(
    ("one_row_s", "batch_s", "batch"),
    [
        pytest.param(60e-6, 90e-6, False, id="linear-cheap-call-inline"),
        pytest.param(5.8e-3, 11e-3, True, id="forest-fixed-cost-batched"),
        pytest.param(5.8e-3, 64 * 5.8e-3, False, id="cost-per-row-no-gain"),
        pytest.param(150e-6, 160e-6, False, id="below-the-inline-limit"),
    ],
)
def test_batching_decision_rule(one_row_s: float, batch_s: float, batch: bool) -> None:
    """The rule over measured costs (the measurement itself varies with the machine's load)."""
    assert Calibration(one_row_s=one_row_s, batch_rows=64, batch_s=batch_s).should_batch() is batch


def test_calibration_measures_one_row_and_a_batch(iris_model: LoggedModel) -> None:
    calibration = load_served_model(resolve_model(iris_model.uri), "iris", "1").calibrate(batch_rows=32)
    assert calibration.batch_rows == 32
    assert 0 < calibration.one_row_s < 1 and 0 < calibration.batch_s < 1


def test_resolve_by_alias_run_and_path(iris_model: LoggedModel, tmp_path: Any) -> None:
    by_alias = resolve_model(f"models:/{iris_model.name}@champion", expected_sha256=iris_model.sha256)
    assert by_alias.registered_version == iris_model.version and by_alias.run_id == iris_model.run_id
    assert by_alias.profile is not None and by_alias.profile.feature_names == iris_model.feature_names
    by_run = resolve_model(f"runs:/{iris_model.run_id}/model")
    assert by_run.run_id == iris_model.run_id
    by_path = resolve_model(f"file://{by_alias.local_dir}", expected_sha256=iris_model.sha256)
    assert [f.name for f in by_path.features or []] == iris_model.feature_names


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param("models:/no-such-model/1", id="unknown-model"),
        pytest.param("models:/iris/999", id="unknown-version"),
        pytest.param("models:/iris@nope", id="unknown-alias"),
        pytest.param("/no/such/path", id="missing-path"),
    ],
)
def test_resolve_unknown(iris_model: LoggedModel, uri: str) -> None:
    with pytest.raises(ModelNotFoundError):
        resolve_model(uri)


def test_sha256_mismatch_refuses_before_loading(
    iris_model: LoggedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow.sklearn

    def never(*_: Any, **__: Any) -> None:
        raise AssertionError("deserialised a model whose digest did not match")

    monkeypatch.setattr(mlflow.sklearn, "load_model", never)
    with pytest.raises(DigestMismatchError, match="sha256 mismatch"):
        resolve_model(iris_model.uri, expected_sha256="0" * 64)


async def test_monitoring_snapshot_moves_with_skewed_data_and_wrong_labels(iris_model: LoggedModel) -> None:
    app = ready_app(iris_model)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://server") as c:
        before = (await c.get("/monitoring")).json()
        assert before["state"] == "insufficient_data" and before["window_samples"] == 0
        # Far outside the training data: every feature shifted by +10.
        skewed = [[15.0, 13.0, 11.5, 10.3]] * 60
        response = await c.post("/predict", json={"instances": skewed})
        assert response.status_code == 200
        ids = response.json()["request_id"]
        assert (
            await c.post("/feedback", json=[{"request_id": i, "label": "no-such-class"} for i in ids])
        ).status_code == 200
        after = (await c.get("/monitoring")).json()
    assert after["state"] == "drift" and after["dataset_drift"] is True
    assert after["drift_share"] == 1.0 and len(after["drifted_features"]) == 4
    assert after["accuracy"] == 0.0 and after["labelled_samples"] == 60


async def test_monitoring_endpoint_says_when_monitoring_is_off(iris_model: LoggedModel) -> None:
    app = ready_app(iris_model, monitoring=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://server") as c:
        response = await c.get("/monitoring")
    assert response.status_code == 404 and "disabled" in response.json()["error"]


async def test_monitoring_counters_count_prediction_requests(iris_model: LoggedModel) -> None:
    from mlops_operator.rollout.canary_analysis import VersionCounters

    app = ready_app(iris_model)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://server") as c:
        start = (await c.get("/monitoring")).json()["counters"]
        ids = (await c.post("/predict", json={"instances": [ROW, ROW, ROW]})).json()["request_id"]
        assert (await c.post("/predict", json={"instances": [[1.0]]})).status_code == 400
        request = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": ROW}]}
        assert (await c.post(f"/v2/models/{iris_model.name}/infer", json=request)).status_code == 200
        await c.post(
            "/feedback",
            json=[{"request_id": ids[0], "label": "setosa"}, {"request_id": ids[1], "label": "virginica"}],
        )
        await c.get("/health")
        snapshot = (await c.get("/monitoring")).json()
    block = snapshot["counters"]
    assert start["requests"] == 0 and block["instance"] == start["instance"]
    assert (block["requests"], block["errors"]) == (3, 0)  # two predicts (one refused 400) and one infer
    assert block["predictions"] == {"setosa": 4, "versicolor": 0, "virginica": 0}
    assert (block["labelled"], block["correct"]) == (2, 1)
    assert block["latency"][-1] == ["+Inf", 3]
    counters = VersionCounters.from_snapshot(snapshot)
    assert counters.requests == 3 and counters.accuracy == 0.5
