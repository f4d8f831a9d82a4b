"""Feedback reaches the replica that made the prediction, whichever replica the Service picked."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from mlops_operator.registry.artifacts import resolve_model
from mlops_operator.serving import feedback
from mlops_operator.serving.asgi_app import ServingApp
from mlops_operator.serving.loader import create_app
from mlops_operator.serving.serve_settings import ServeSettings
from tests.test_serving_models import (  # noqa: F401  (fixtures)
    LoggedModel,
    iris_model_fixture,
    mlflow_store_fixture,
)


def test_ids_carry_their_replicas_address() -> None:
    prefix = feedback.id_prefix("10.1.2.3:8080", "deadbeef")
    assert prefix == "p0a0102031f90deadbeef-"
    assert feedback.owner(prefix + "2a") == "10.1.2.3:8080"
    assert feedback.owner(prefix + "2a-3") == "10.1.2.3:8080"  # one row of an instances request
    assert feedback.owner("my-own-id") is None
    assert feedback.id_prefix(None, "deadbeef") == "deadbeef-"


class Peer:
    """Another replica, as far as forwarding can tell: records what it is sent."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], Any]] = []
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                peer.received.append((dict(self.headers), body))
                answer = json.dumps({"accepted": len(body), "unknown": 0, "unknown_request_ids": []}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def peer() -> Iterator[Peer]:
    running = Peer()
    yield running
    running.server.shutdown()


def same_port(address: str) -> str:
    """Another replica's address on ``address``'s port: replicas of one version share their port."""
    return f"127.0.0.99:{address.rpartition(':')[2]}"


def app_at(model: LoggedModel, address: str) -> ServingApp:
    """A loaded app as ``serve --advertise-address`` builds it."""
    settings = ServeSettings(model_uri=model.uri, advertise_address=address, freeze_gc=False)
    app = create_app(settings, resolve_model(model.uri), CollectorRegistry())
    assert app.loader is not None
    app.attach(*app.loader())
    return app


async def test_feedback_for_another_replica_is_forwarded_once(iris_model: LoggedModel, peer: Peer) -> None:
    app = app_at(iris_model, same_port(peer.address))
    other_id = feedback.id_prefix(peer.address, "0badf00d") + "7"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://server") as c:
        own_id = (await c.post("/predict", json={"features": [5.1, 3.5, 1.4, 0.2]})).json()["request_id"]
        assert feedback.owner(own_id) == same_port(peer.address)
        response = await c.post(
            "/feedback",
            json=[{"request_id": own_id, "label": "setosa"}, {"request_id": other_id, "label": "virginica"}],
        )
    assert response.status_code == 200 and response.json()["accepted"] == 2
    [(headers, body)] = peer.received
    assert body == [{"request_id": other_id, "label": "virginica"}]
    assert {k.lower(): v for k, v in headers.items()}.get(feedback.FORWARDED_HEADER) == "1"


async def test_forwarded_feedback_is_not_forwarded_again(iris_model: LoggedModel, peer: Peer) -> None:
    app = app_at(iris_model, same_port(peer.address))
    other_id = feedback.id_prefix(peer.address, "0badf00d") + "7"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://server") as c:
        response = await c.post(
            "/feedback",
            json={"request_id": other_id, "label": "setosa"},
            headers={feedback.FORWARDED_HEADER: "1"},
        )
    assert response.status_code == 404 and peer.received == []


async def test_feedback_for_a_replica_that_is_gone_counts_as_unknown(
    iris_model: LoggedModel, unused_tcp_port: int
) -> None:
    app = app_at(iris_model, f"127.0.0.99:{unused_tcp_port}")
    gone = feedback.id_prefix(f"127.0.0.1:{unused_tcp_port}", "0badf00d") + "1"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://server") as c:
        response = await c.post("/feedback", json={"request_id": gone, "label": "setosa"})
    assert response.status_code == 404 and gone in response.json()["error"]


async def test_forged_ids_cannot_point_forwarding_at_other_ports_or_many_hosts(
    iris_model: LoggedModel, peer: Peer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request id names the replica to forward to, and clients can forge ids: only peers on the
    replica's own port are reached, and at most MAX_PEERS of them per request."""
    port = int(peer.address.rpartition(":")[2])
    app = app_at(iris_model, same_port(peer.address))
    other_port = feedback.id_prefix(f"127.0.0.1:{port + 1 if port < 65535 else port - 1}", "0badf00d") + "1"
    many = [feedback.id_prefix(f"127.0.1.{i}:{port}", "0badf00d") + "1" for i in range(1, 40)]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://server") as c:
        response = await c.post("/feedback", json={"request_id": other_port, "label": "setosa"})
        assert response.status_code == 404 and other_port in response.json()["error"]
        reached: list[str] = []

        def counting_forward(address: str, items: Any, timeout: float = 2.0) -> tuple[int, list[str]]:
            reached.append(address)
            return 0, [rid for rid, _ in items]

        monkeypatch.setattr(feedback, "forward", counting_forward)
        response = await c.post("/feedback", json=[{"request_id": rid, "label": "setosa"} for rid in many])
    assert response.status_code == 404 and response.json()["error"].startswith("unknown or expired all 39")
    assert len(reached) == feedback.MAX_PEERS == len(set(reached))
    assert peer.received == []
