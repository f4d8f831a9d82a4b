"""Hostile input at the model server: size limits, nesting bombs, slow clients, feedback floods.

Promises: bad input is a 4xx that names the problem (never a 5xx) and never reaches the model;
a slow client is cut off with 408 (headers and body alike) while well-behaved clients are
served; a flood of unknown or repeated feedback ids leaves memory bounded.
"""

from __future__ import annotations

import asyncio
import json
import select
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator, MutableMapping
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from mlops_operator.monitoring.online import MonitorConfig, OnlineMonitor
from mlops_operator.serving.asgi_app import ServerConfig, ServingApp
from tests.test_serving_app import ROW, CountingModel, ready_app
from tests.test_serving_models import (  # noqa: F401  (fixtures)
    LoggedModel,
    iris_model_fixture,
    mlflow_store_fixture,
)
from tests.test_serving_process import free_port, serve_command, serve_env, wait_ready

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

LIMIT = 4096
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def app(iris_model: LoggedModel) -> ServingApp:
    return ready_app(iris_model, ServerConfig(max_body_bytes=LIMIT, body_timeout_s=0.5, freeze_gc=False))


@pytest.fixture(scope="module")
def big_app(iris_model: LoggedModel) -> ServingApp:
    """A body limit that lets the 100k-deep bombs through to the parser."""
    return ready_app(iris_model, ServerConfig(max_body_bytes=1 << 20, freeze_gc=False))


@pytest.fixture
def counter(app: ServingApp) -> Iterator[CountingModel]:
    assert app.runner is not None
    original = app.runner._predict
    yield CountingModel(app)
    app.runner._predict = original


@pytest.fixture
async def client(app: ServingApp) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://s") as c:
        yield c


def paths(model: LoggedModel) -> dict[str, bytes]:
    """A valid body per endpoint that reads a body."""
    return {
        "/predict": json.dumps({"features": ROW}).encode(),
        f"/v2/models/{model.name}/infer": json.dumps(
            {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": ROW}]}
        ).encode(),
        "/feedback": json.dumps({"request_id": "never-issued", "label": "setosa"}).encode(),
    }


def padded(body: bytes, size: int) -> bytes:
    """``body`` padded with JSON whitespace to exactly ``size`` bytes (still valid JSON)."""
    return body + b" " * (size - len(body))


async def chunks(body: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


# --- size limit --------------------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_body_at_the_limit_is_served_one_byte_over_is_413(
    client: httpx.AsyncClient, counter: CountingModel, iris_model: LoggedModel, chunked: bool
) -> None:
    for path, body in paths(iris_model).items():
        at, over = padded(body, LIMIT), padded(body, LIMIT + 1)
        ok = await client.post(path, content=chunks(at) if chunked else at, headers=JSON)
        # /feedback for an id never issued: 404 (the body itself was accepted and read)
        assert ok.status_code == (404 if path == "/feedback" else 200), (path, ok.text)
        refused = await client.post(path, content=chunks(over) if chunked else over, headers=JSON)
        assert refused.status_code == 413, (path, refused.text)
        assert f"exceeds the limit of {LIMIT} bytes" in refused.json()["error"]
        assert refused.headers["connection"] == "close"  # the rest of the body is not read
    assert counter.calls == 2  # the two bodies at the limit on the inference routes, nothing else


async def test_oversized_first_chunk_is_refused_without_reading_on(app: ServingApp) -> None:
    reads = 0

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b" " * (LIMIT + 1), "more_body": True}

    sent: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/predict",
        "headers": [(b"content-type", b"application/json")],
    }
    await app(scope, receive, send)
    assert sent[0]["status"] == 413 and reads == 1


# --- nesting, numbers, encodings, content types -------------------------------------------------

DEEP = 100_000
HOSTILE_BODIES = [
    pytest.param(b"[" * DEEP + b"]" * DEEP, "depth limit exceeded", id="list-100k-deep"),
    pytest.param(b'{"a":' * DEEP + b"1" + b"}" * DEEP, "depth limit exceeded", id="object-100k-deep"),
    pytest.param(b'{"features":' + b"[" * DEEP, "depth limit exceeded", id="unclosed-100k-deep"),
    pytest.param(b'{"features": [1e400, 1, 1, 1]}', "malformed JSON", id="1e400"),
    pytest.param(b'{"features": [' + b"9" * 5000 + b", 1, 1, 1]}", "malformed JSON", id="5000-digit-int"),
    pytest.param(b'{"features": [NaN, 1, 1, 1]}', "malformed JSON", id="NaN"),
    pytest.param(b'{"features": [-Infinity, 1, 1, 1]}', "malformed JSON", id="-Infinity"),
    pytest.param(b'{"request_id": "\xff\xfe", "label": "a"}', "malformed JSON", id="not-utf8"),
    pytest.param(b"", "malformed JSON", id="empty"),
]


@pytest.mark.parametrize(("body", "message"), HOSTILE_BODIES)
async def test_hostile_bodies_are_400_on_every_route(
    big_app: ServingApp, iris_model: LoggedModel, body: bytes, message: str
) -> None:
    assert big_app.runner is not None
    original = big_app.runner._predict
    counter = CountingModel(big_app)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=big_app), base_url="http://s") as c:
            for path in paths(iris_model):
                response = await c.post(path, content=body, headers=JSON)
                assert response.status_code == 400, (path, response.text)
                assert message in response.json()["error"], (path, response.text)
    finally:
        big_app.runner._predict = original
    assert counter.calls == 0


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
)
async def test_wrong_content_type_is_415_on_every_route(
    client: httpx.AsyncClient, counter: CountingModel, iris_model: LoggedModel, content_type: str
) -> None:
    for path, body in paths(iris_model).items():
        response = await client.post(path, content=body, headers={"content-type": content_type})
        assert response.status_code == 415 and content_type.split(";")[0] in response.json()["error"]
    assert counter.calls == 0


# --- slow bodies (in process) -------------------------------------------------------------------


async def test_stalled_body_gets_408_and_the_server_keeps_serving(
    app: ServingApp, client: httpx.AsyncClient, counter: CountingModel
) -> None:
    never = asyncio.Event()
    calls = 0

    async def receive() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            return {"type": "http.request", "body": b'{"features": [5.1,', "more_body": True}
        await never.wait()  # the rest never comes
        return {"type": "http.disconnect"}  # pragma: no cover

    sent: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/predict",
        "headers": [(b"content-type", b"application/json")],
    }
    stalled = [asyncio.create_task(app(scope, receive, send)) for _ in range(3)]
    # Meanwhile, a well-behaved client is served.
    assert (await client.post("/predict", json={"features": ROW})).status_code == 200
    await asyncio.wait_for(asyncio.gather(*stalled), timeout=30)  # hang guard, not a timing assert
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert [m["status"] for m in starts] == [408] * 3
    assert (b"connection", b"close") in starts[0]["headers"]
    assert b"not received within 0.5 s" in sent[1]["body"]
    assert not any(t.cancelled() for t in stalled)
    assert app.inflight == 0 and not app._reading and not app._expired
    assert counter.calls == 1  # only the well-behaved request
    labels = {"model": app.model_name, "version": app.model_version, "endpoint": "/predict", "code": "408"}
    assert (app.registry.get_sample_value("mlops_model_requests_total", labels) or 0) >= 3


# --- feedback floods ----------------------------------------------------------------------------


def feedback_counts(app: ServingApp) -> dict[str, float]:
    ids = {"model": app.model_name, "version": app.model_version}
    return {
        result: app.registry.get_sample_value("mlops_model_feedback_total", {**ids, "result": result}) or 0.0
        for result in ("matched", "unknown", "duplicate")
    }


async def test_same_label_twice_counts_once(client: httpx.AsyncClient, app: ServingApp) -> None:
    request_id = (await client.post("/predict", json={"features": ROW})).json()["request_id"]
    assert app.monitor is not None
    labelled = app.monitor.snapshot()["counters"]["labelled"]
    before = feedback_counts(app)
    item = {"request_id": request_id, "label": "setosa"}
    first = await client.post("/feedback", json=[item, item])  # repeated within one batch
    assert first.status_code == 200 and first.json()["accepted"] == 1 and first.json()["unknown"] == 1
    again = await client.post("/feedback", json=item)  # and repeated later (a client retry)
    assert again.status_code == 404
    assert app.monitor.snapshot()["counters"]["labelled"] == labelled + 1
    after = feedback_counts(app)
    assert after["matched"] == before["matched"] + 1 and after["duplicate"] == before["duplicate"] + 2


async def test_unknown_feedback_flood_is_counted_and_stores_nothing(big_app: ServingApp) -> None:
    app = big_app
    assert app.monitor is not None
    pending = app.monitor.snapshot()["pending_predictions"]
    before = feedback_counts(app)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://s") as client:
        for batch in range(20):
            items = [{"request_id": f"forged-{batch}-{i}", "label": "setosa"} for i in range(1000)]
            response = await client.post("/feedback", json=items)
            assert response.status_code == 404 and "all 1000 request_ids" in response.json()["error"]
        too_many = await client.post("/feedback", json=[{"request_id": "x", "label": 1}] * 1001)
        assert too_many.status_code == 413 and "limit of 1000" in too_many.json()["error"]
        scraped = (await client.get("/metrics")).text
    assert app.monitor.snapshot()["pending_predictions"] == pending
    assert feedback_counts(app)["unknown"] == before["unknown"] + 20_000
    assert 'mlops_model_feedback_total{model="iris"' in scraped and 'result="unknown"' in scraped


async def test_feedback_before_the_model_is_loaded_is_503(iris_model: LoggedModel) -> None:
    loading = ServingApp(ServerConfig(freeze_gc=False), model_name="iris", model_version="1")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=loading), base_url="http://s") as c:
        response = await c.post("/feedback", json={"request_id": "a", "label": 1})
    assert response.status_code == 503 and "loading" in response.json()["error"]


async def test_regression_feedback_with_a_non_numeric_label_is_400_and_records_nothing(
    iris_model: LoggedModel,
) -> None:
    app = ready_app(iris_model, ServerConfig(freeze_gc=False), monitoring=False)
    monitor = OnlineMonitor(None, MonitorConfig(task="regression"), "iris", "1", CollectorRegistry())
    assert app.model is not None
    app.attach(app.model, monitor)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://s") as c:
        for label in ("abc", "NaN", "1e400"):
            items = [{"request_id": "a", "label": 1.5}, {"request_id": "b", "label": label}]
            response = await c.post("/feedback", json=items)
            assert response.status_code == 400, response.text
            assert "feedback[1].label must be a finite number" in response.json()["error"]
        assert (await c.post("/feedback", json={"request_id": "a", "label": "2.5"})).status_code == 404
    assert monitor.snapshot()["feedback"] == {"matched": 0, "unknown": 1, "duplicate": 0}


# --- a real server process: slow clients and a flood, with its RSS ------------------------------

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def server(iris_model: LoggedModel) -> Iterator[tuple[str, int, subprocess.Popen[bytes]]]:
    port = free_port()
    command = serve_command(
        "--model-uri",
        iris_model.uri,
        "--port",
        str(port),
        "--header-timeout-seconds",
        str(HEADER_TIMEOUT_S),
        "--body-timeout-seconds",
        str(BODY_TIMEOUT_S),
    )
    process = subprocess.Popen(
        command, env=serve_env(iris_model.tracking_uri), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, base)
        yield base, port, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def read_until_closed(sock: socket.socket, deadline: float) -> bytes:
    """Everything the server sends until it closes the connection (or the deadline)."""
    data = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"connection still open at the deadline; received {data[:200]!r}")


def connect(port: int, first_bytes: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    if first_bytes:
        sock.sendall(first_bytes)
    return sock


@pytest.mark.slow
def test_slow_clients_are_cut_off_while_others_are_served(
    server: tuple[str, int, subprocess.Popen[bytes]],
) -> None:
    base, port, _ = server
    header = b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    slow: dict[str, list[socket.socket]] = {
        # nothing at all after connecting
        "idle": [connect(port, b"") for _ in range(50)],
        # a request line and part of the headers, then a byte now and then (slowloris)
        "headers": [connect(port, header[:20]) for _ in range(75)],
        # complete headers promising 100 bytes of body, 10 sent
        "body": [connect(port, header + b"content-length: 100\r\n\r\n" + b'{"features"') for _ in range(75)],
    }
    for sock in slow["headers"]:
        sock.sendall(header[20:21])
    # While 200 slow connections are open, well-behaved clients are served.
    with httpx.Client(base_url=base, timeout=10) as good:
        statuses = [good.post("/predict", json={"features": ROW}).status_code for _ in range(20)]
    assert statuses == [200] * 20
    deadline = time.monotonic() + 30
    answers = {kind: [read_until_closed(s, deadline) for s in socks] for kind, socks in slow.items()}
    for kind, received in answers.items():
        assert all(r.startswith(b"HTTP/1.1 408 ") for r in received), (kind, received[0][:200])
    assert b"headers not received within 1 s" in answers["idle"][0]
    assert b"body not received within 1 s" in answers["body"][0]
    for socks in slow.values():
        for sock in socks:
            sock.close()


@pytest.mark.slow
def test_oversized_headers_and_lying_content_length(server: tuple[str, int, subprocess.Popen[bytes]]) -> None:
    _, port, _ = server
    deadline = time.monotonic() + 30
    # A header that never ends: sent 16 KiB at a time until the server answers.
    endless = connect(port, b"GET /health HTTP/1.1\r\nx-padding: ")
    for _ in range(256):
        try:
            endless.sendall(b"a" * 16384)
        except (BrokenPipeError, ConnectionResetError):
            break
        if select.select([endless], [], [], 0.05)[0]:
            break
    assert read_until_closed(endless, deadline).startswith(b"HTTP/1.1 431 ")
    endless.close()
    body = json.dumps({"features": ROW}).encode()
    # Content-Length shorter than the body: the request is cut there (400), and the rest of
    # the body is not a request (400 from the HTTP parser); never a 5xx.
    short = connect(port, b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\n" + body)
    received = read_until_closed(short, deadline)
    short.close()
    assert received.startswith(b"HTTP/1.1 400 ") and b"HTTP/1.1 5" not in received
    # Content-Length longer than the body: waits for the rest, then 408.
    long = connect(port, b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-length: 500\r\n\r\n" + body)
    assert read_until_closed(long, deadline).startswith(b"HTTP/1.1 408 ")
    long.close()
    # Declared over the limit: 413 at once, before any of the body is read.
    huge = connect(port, b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-length: 2000000000\r\n\r\n")
    assert read_until_closed(huge, deadline).startswith(b"HTTP/1.1 413 ")
    huge.close()


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")  # pragma: no cover


def request(path: str, body: bytes, content_type: str = "application/json") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: {content_type}\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


def pipelined(port: int, requests: list[bytes]) -> list[int]:
    """Send the requests pipelined on one connection; the status of each response, in order."""
    sock = socket.create_connection(("127.0.0.1", port))
    sender = threading.Thread(target=sock.sendall, args=(b"".join(requests),))
    sender.start()
    statuses: list[int] = []
    buffer = b""
    sock.settimeout(30)
    while len(statuses) < len(requests):
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            chunk = sock.recv(1 << 20)
            assert chunk, f"closed after {len(statuses)} responses"
            buffer += chunk
            continue
        head = buffer[:end].decode("latin-1")
        length = int(head.lower().split("content-length: ", 1)[1].split("\r\n", 1)[0])
        while len(buffer) < end + 4 + length:
            buffer += sock.recv(1 << 20)
        statuses.append(int(head[9:12]))
        buffer = buffer[end + 4 + length :]
    sender.join()
    sock.close()
    return statuses


#: RSS growth allowed while the flood runs (derivation in the test's docstring).
RSS_BOUND = 16 * 1024 * 1024


@pytest.mark.slow
def test_feedback_and_bad_request_flood_keeps_memory_bounded(
    server: tuple[str, int, subprocess.Popen[bytes]], iris_model: LoggedModel
) -> None:
    """200k unknown and repeated feedback ids and 50k bad requests: zero 5xx, RSS bounded.

    Bound: unknown ids are stored nowhere; a repeated id only flips a flag on its stored
    prediction; the prediction store is capped at 50,000 entries (~250 B each: 12.5 MB at
    most, and this test makes only 1,000 predictions). Each request's body (<= 1 MiB) and
    parsed items are freed when it is answered; at most 8 pipelined requests wait per connection
    (http_protocol.MAX_PIPELINED). So after a warm-up round of every request kind, growth is
    allocator noise, under RSS_BOUND (16 MiB): a leak of 80 bytes per id (a dict slot and a
    short string) would exceed it.
    """
    base, port, process = server
    infer = f"/v2/models/{iris_model.name}/infer"
    bad = [
        request("/predict", b"{not json"),
        request("/predict", b"[" * 2000 + b"]" * 2000),
        request(infer, b'{"a":' * 2000 + b"1" + b"}" * 2000),
        request("/feedback", b"[" * 2000),
        request("/predict", b'{"features": [NaN, 1, 2, 3]}'),
        request(infer, b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1e400]}]}'),
        request("/feedback", b'{"request_id": "\xff", "label": 1}'),
        request("/predict", json.dumps({"features": ROW}).encode(), "text/plain"),
        request("/predict", b""),
        request("/feedback", json.dumps({"request_id": "", "label": 1}).encode()),
    ]
    with httpx.Client(base_url=base, timeout=30) as client:
        issued = client.post("/predict", json={"instances": [ROW] * 1000}).json()["request_id"]

        def monitoring() -> dict[str, Any]:
            snapshot: dict[str, Any] = client.get("/monitoring").json()
            return snapshot

        def flood(round_: int, ids: int, bad_requests: int) -> list[int]:
            statuses = []
            for batch in range(ids // 1000):
                if batch % 2:  # repeated ids: the ones issued above, labelled again and again
                    items = [{"request_id": rid, "label": "setosa"} for rid in issued]
                else:  # unknown ids, never seen before, 64 characters each
                    items = [
                        {"request_id": f"{round_:04d}-{batch:06d}-{i:06d}".ljust(64, "x"), "label": "setosa"}
                        for i in range(1000)
                    ]
                statuses.append(client.post("/feedback", json=items).status_code)
            statuses += pipelined(port, (bad * (bad_requests // len(bad) + 1))[:bad_requests])
            return statuses

        start = monitoring()
        predictions = sum(start["counters"]["predictions"].values())
        warm = flood(0, 20_000, 5_000)
        before = rss_bytes(process.pid)
        statuses = flood(1, 200_000, 50_000)
        after = rss_bytes(process.pid)
        snapshot = monitoring()
    growth = after - before
    print(
        f"RSS before {before / 2**20:.1f} MiB, after {after / 2**20:.1f} MiB, growth {growth / 2**20:.2f} MiB"
    )
    # 200 once (the first labels for the issued ids), 404 for unknown and repeated ids, 4xx for bad input
    assert sorted(set(warm + statuses)) == [200, 400, 404, 415], sorted(set(warm + statuses))
    assert (warm + statuses).count(200) == 1
    assert growth < RSS_BOUND, f"RSS grew by {growth / 2**20:.1f} MiB under the flood"
    # Zero model calls for invalid input: no prediction was made beyond the 1,000 rows above.
    assert sum(snapshot["counters"]["predictions"].values()) == predictions
    assert snapshot["pending_predictions"] == start["pending_predictions"]
    unknown, duplicate = (snapshot["feedback"][k] - start["feedback"][k] for k in ("unknown", "duplicate"))
    assert (unknown, duplicate) == (110_000, 109_000)  # counted on /metrics too (feedback_total)
