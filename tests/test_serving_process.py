"""``mlops-operator serve`` as a real process, on each runtime, called by real clients."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.test_serving_models import (  # noqa: F401  (fixtures)
    LoggedModel,
    forest_model_fixture,
    iris_model_fixture,
    mlflow_store_fixture,
)

pytestmark = pytest.mark.slow

START_DEADLINE_S = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mlops_operator.cli", "serve", "--host", "127.0.0.1", *args]


def serve_env(tracking_uri: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_SERVE_")}
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    env["BENTOML_HOME"] = str(Path(tracking_uri.removeprefix("sqlite:///")).parent / "bentoml")
    return env


def wait_ready(process: subprocess.Popen[bytes], base: str) -> None:
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read().decode() if process.stdout else ""
            raise AssertionError(f"server exited with {process.returncode}:\n{output[-3000:]}")
        try:
            if httpx.get(f"{base}/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)  # polling interval, not synchronisation: the loop waits on the condition
    raise AssertionError(f"server not ready within {START_DEADLINE_S} s")


@pytest.fixture(params=["uvicorn", "bentoml"])
def served(request: pytest.FixtureRequest, iris_model: LoggedModel) -> Iterator[tuple[str, LoggedModel]]:
    port = free_port()
    command = serve_command(
        "--model-uri",
        iris_model.uri,
        "--port",
        str(port),
        "--runtime",
        request.param,
        "--expected-sha256",
        iris_model.sha256,
    )
    process = subprocess.Popen(
        command, env=serve_env(iris_model.tracking_uri), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, base)
        yield base, iris_model
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_plain_http_and_tritonclient(served: tuple[str, LoggedModel]) -> None:
    import tritonclient.http as triton

    base, model = served
    row = model.sample[0]
    answer = httpx.post(f"{base}/predict", json={"features": row}, timeout=10)
    assert answer.status_code == 200 and answer.json()["prediction"] == "setosa"
    bad = httpx.post(f"{base}/predict", json={"features": row[:2]}, timeout=10)
    assert bad.status_code == 400 and "expected 4 features" in bad.json()["error"]
    feedback = httpx.post(
        f"{base}/feedback", json={"request_id": answer.json()["request_id"], "label": "setosa"}
    )
    assert feedback.status_code == 200
    assert 'code="400"' in httpx.get(f"{base}/metrics").text

    client = triton.InferenceServerClient(url=base.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(model.name, model.version)
    metadata = client.get_model_metadata(model.name)
    assert metadata["inputs"][0]["shape"] == [-1, 4]
    matrix = np.array(model.sample[:3], dtype=np.float64)
    for binary in (True, False):
        tensor = triton.InferInput("input-0", list(matrix.shape), "FP64")
        tensor.set_data_from_numpy(matrix, binary_data=binary)
        outputs = [
            triton.InferRequestedOutput("predict", binary_data=binary),
            triton.InferRequestedOutput("predict_proba", binary_data=binary),
        ]
        result = client.infer(model.name, [tensor], outputs=outputs)
        labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("predict").tolist()]
        assert labels == ["setosa"] * 3
        proba = result.as_numpy("predict_proba")
        assert proba.shape == (3, 3) and np.allclose(proba.sum(axis=1), 1.0)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        pytest.param("unknown-model", "does not exist", id="unknown-model"),
        pytest.param("unknown-version", "does not exist", id="unknown-version"),
        pytest.param("sha-mismatch", "sha256 mismatch", id="sha-mismatch"),
        pytest.param("unreachable", "unreachable", id="unreachable-mlflow"),
        pytest.param("port-in-use", "already in use", id="port-in-use"),
        pytest.param("no-uri", "MLOPS_SERVE_MODEL_URI", id="no-model-uri"),
    ],
)
def test_fails_fast(iris_model: LoggedModel, case: str, message: str) -> None:
    env = serve_env(iris_model.tracking_uri)
    port = free_port()
    args = ["--model-uri", iris_model.uri, "--port", str(port)]
    blocker = None
    if case == "unknown-model":
        args[1] = "models:/no-such-model/1"
    elif case == "unknown-version":
        args[1] = f"models:/{iris_model.name}/999"
    elif case == "sha-mismatch":
        args += ["--expected-sha256", "0" * 64]
    elif case == "unreachable":
        env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{free_port()}"
    elif case == "port-in-use":
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
    elif case == "no-uri":
        args = ["--port", str(port)]
    try:
        started = time.monotonic()
        done = subprocess.run(serve_command(*args), env=env, capture_output=True, timeout=90, check=False)
    finally:
        if blocker is not None:
            blocker.close()
    assert done.returncode != 0
    assert message in done.stderr.decode(), done.stderr.decode()[-2000:]
    assert time.monotonic() - started < 60
