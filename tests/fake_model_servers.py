"""Model servers that answer only ``/monitoring``, with counters a test or benchmark drives.

Each listens on its pod's IP and the server port (8080), as the operator expects; a
:class:`Traffic` thread makes their cumulative counters grow with the error rate, latency and
accuracy a scenario needs. What a real server reports is tested in tests/test_monitoring_online.py.
"""

from __future__ import annotations

import http.server
import itertools
import json
import threading
from typing import Any

from mlops_operator.resources import inferenceservice_children as children
from tests.fixtures_operator import make_ready
from tests.fixtures_sandbox import Api, wait_for

_ADDRESSES = (f"127.201.{i // 250}.{i % 250 + 1}" for i in itertools.count())
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class FakeServer:
    """A model server's ``/monitoring`` on ``ip:8080``: cumulative counters that grow as told."""

    def __init__(self, ip: str, instance: str) -> None:
        self.ip, self.instance = ip, instance
        self.lock = threading.Lock()
        self.requests = self.errors = self.labelled = self.correct = 0
        self.predictions: dict[str, int] = {}
        self.fast = 0  # requests answered within 10 ms (the rest within 50 ms)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps(server.snapshot()).encode()
                self.send_response(200 if self.path == "/monitoring" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer((ip, children.PORT), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def serve(
        self, requests: int, *, error_rate: float = 0.0, accuracy: float = 0.95, labelled: int = 0
    ) -> None:
        """Account for ``requests`` more answers, and ``labelled`` more labels with this accuracy."""
        with self.lock:
            self.requests += requests
            self.errors += round(requests * error_rate)
            self.fast += requests
            for index in range(requests):
                label = "setosa" if index % 2 else "versicolor"
                self.predictions[label] = self.predictions.get(label, 0) + 1
            self.labelled += labelled
            self.correct += round(labelled * accuracy)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            latency = [[le, self.fast] for le in LATENCY_BUCKETS] + [["+Inf", self.requests]]
            counters = {
                "instance": self.instance,
                "requests": self.requests,
                "errors": self.errors,
                "latency": latency,
                "predictions": dict(self.predictions),
                "labelled": self.labelled,
                "correct": self.correct,
            }
        return {"counters": counters, "window_samples": 0, "labelled_samples": 0}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Traffic:
    """Requests and labels flowing to every fake server, until stopped."""

    def __init__(self) -> None:
        self.servers: dict[str, tuple[FakeServer, dict[str, float]]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def add(self, key: str, server: FakeServer, **behaviour: float) -> None:
        self.servers[key] = (server, behaviour)

    def behave(self, key: str, **behaviour: float) -> None:
        server, _ = self.servers[key]
        self.servers[key] = (server, behaviour)

    def _run(self) -> None:
        while not self.stop.wait(0.1):
            for server, behaviour in list(self.servers.values()):
                server.serve(
                    int(behaviour.get("rate", 20)),
                    error_rate=behaviour.get("error_rate", 0.0),
                    accuracy=behaviour.get("accuracy", 0.95),
                    labelled=int(behaviour.get("labels", 10)),
                )

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for server, _ in self.servers.values():
            server.close()


def start_pod(api: Api, traffic: Traffic, isvc: str, version: str, **behaviour: float) -> FakeServer:
    """Play kubelet: a ready pod of ``version`` with its (fake) server, and its Deployment ready."""
    deployment = f"{isvc}-v{version}"
    wait_for(lambda: api.get("Deployment", deployment), message=f"{deployment}'s Deployment")
    ip = next(_ADDRESSES)
    name = f"{deployment}-{ip.rsplit('.', 1)[1]}"
    labels = {
        "mlops.dev/inferenceservice": isvc,
        "mlops.dev/model-version": version,
        "app.kubernetes.io/component": "predictor",
    }
    api.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": labels},
            "spec": {"containers": [{"name": "server", "image": "server"}]},
        }
    )
    ready = {"podIP": ip, "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    api.http.patch(
        api.path("Pod", "default", name) + "/status",
        content=json.dumps({"status": ready}),
        headers={"Content-Type": "application/merge-patch+json"},
    ).raise_for_status()
    server = FakeServer(ip, name)
    traffic.add(name, server, **behaviour)
    replicas = int((api.get("Deployment", deployment) or {})["spec"].get("replicas") or 1)
    make_ready(api, deployment, replicas)
    return server
