"""The operator's /monitoring scraper against real loopback servers: fast, slow, trickling, dead.

Each "pod" is an HTTP server on its own 127.0.0.x address (loopback is all of 127/8), as pods
have their own IPs. Slow servers hold their answer until the test ends (an Event), so "a slow
pod does not hold up the others" is checked by the fast answers arriving while the slow one
still holds, not by a stopwatch.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from mlops_operator.controllers import inferenceservice_reconciler as reconciler
from mlops_operator.monitoring.scraper import Scraper, ScrapeTarget
from mlops_operator.resources import inferenceservice_children as children


class Pod:
    """A model server's /monitoring on ``host``: ``fast``, ``hold`` (never answers), ``gate``
    (answers once the test opens the gate), ``trickle`` (sends its body a byte at a time, too
    slowly) or ``error`` (HTTP 500)."""

    def __init__(self, host: str, behaviour: str, pods: Pods) -> None:
        self.behaviour = behaviour
        self.requests = 0
        self.active = 0
        release, lock, pod = pods.release, pods.lock, self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with lock:
                    pod.requests += 1
                    pod.active += 1
                    pods.active += 1
                    pods.max_active = max(pods.max_active, pods.active)
                try:
                    self._answer()
                finally:
                    with lock:
                        pod.active -= 1
                        pods.active -= 1

            def _answer(self) -> None:
                if pod.behaviour == "hold":
                    release.wait(30)
                    return
                if pod.behaviour == "gate":
                    pods.gate.wait(30)
                if pod.behaviour == "error":
                    self.send_error(500, "broken")
                    return
                body = json.dumps({"counters": {"instance": host}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if pod.behaviour == "trickle":
                    for byte in body:  # the server's pace, not the test's synchronisation
                        if release.wait(0.1):
                            return
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                    return
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.target = ScrapeTarget(pod=f"pod-{host}", host=host, port=self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Pods:
    def __init__(self) -> None:
        self.release = threading.Event()
        #: What ``gate`` pods wait for before they answer.
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.pods: list[Pod] = []
        #: Requests being answered at once, over every pod.
        self.active = 0
        self.max_active = 0
        self._next = 0

    def _host(self) -> str:
        self._next += 1
        return f"127.0.{40 + self._next // 250}.{1 + self._next % 250}"

    def start(self, behaviour: str) -> Pod:
        pod = Pod(self._host(), behaviour, self)
        self.pods.append(pod)
        return pod

    def dead(self) -> ScrapeTarget:
        """An address where nothing listens any more: the connection is refused."""
        host = self._host()
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        return ScrapeTarget(pod=f"dead-{host}", host=host, port=port)


@pytest.fixture
def pods() -> Iterator[Pods]:
    made = Pods()
    yield made
    made.release.set()
    made.gate.set()
    for pod in made.pods:
        pod.close()


class Clock:
    """time.monotonic that a test can move forward (past a back-off) without waiting."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


def _instances(snapshots: list[dict[str, Any]]) -> list[str]:
    return [snapshot["counters"]["instance"] for snapshot in snapshots]


def _scraper(**kwargs: Any) -> tuple[Scraper, Counter[str]]:
    results: Counter[str] = Counter()
    kwargs.setdefault("timeout", 1.0)  # fast pods answer in ms; slack for a loaded CI machine
    scraper = Scraper(observe=lambda result, _seconds: results.update([result]), **kwargs)
    return scraper, results


def _wait_for(predicate: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_fast_pods_answer_in_full_while_slow_and_dead_ones_do_not(pods: Pods) -> None:
    fast = [pods.start("fast") for _ in range(4)]
    slow, trickle = pods.start("hold"), pods.start("trickle")
    targets = [fast[0].target, slow.target, fast[1].target, pods.dead(), fast[2].target]
    targets += [trickle.target, fast[3].target]
    scraper, results = _scraper()

    snapshots = scraper.fetch(targets)

    assert _instances(snapshots) == [pod.target.host for pod in fast]  # complete, in order
    # The slow pod still holds its answer (until the test ends): the fast ones did not wait for it.
    _wait_for(lambda: slow.active == 1, "the slow pod to hold the request")
    assert results == {"success": 4, "timeout": 2, "error": 1}


def test_concurrency_is_bounded_across_services(pods: Pods) -> None:
    gated = [pods.start("gate") for _ in range(8)]
    scraper, results = _scraper(max_concurrency=3, timeout=20)
    services = [[pod.target for pod in gated[i : i + 2]] for i in range(0, 8, 2)]
    answers: list[list[dict[str, Any]]] = []
    threads = [
        threading.Thread(target=lambda t=targets: answers.append(scraper.fetch(t))) for targets in services
    ]
    for thread in threads:
        thread.start()

    # Four services ask for eight pods at once: three requests reach the pods, the rest wait.
    _wait_for(lambda: pods.active == 3, "three requests in flight")
    assert sum(pod.requests for pod in gated) == 3
    assert all(thread.is_alive() for thread in threads)

    pods.gate.set()
    for thread in threads:
        thread.join(30)
    assert scraper.max_in_flight == 3
    assert sorted(snap["counters"]["instance"] for answer in answers for snap in answer) == sorted(
        pod.target.host for pod in gated
    )
    assert results == {"success": 8}


def test_requests_still_queued_at_the_deadline_are_dropped_not_sent_late(pods: Pods) -> None:
    holding = [pods.start("hold") for _ in range(5)]
    scraper, results = _scraper(max_concurrency=2, timeout=0.3)

    assert scraper.fetch([pod.target for pod in holding]) == []

    assert results == {"timeout": 2, "dropped": 3}
    assert sum(pod.requests for pod in holding) == 2


def test_a_failed_pod_is_skipped_until_its_back_off_ends_then_tried_again(pods: Pods) -> None:
    hanging, fast = pods.start("hold"), pods.start("fast")
    dead = pods.dead()
    clock = Clock()
    scraper, results = _scraper(clock=clock, backoff_base=10, backoff_max=40)
    targets = [hanging.target, dead, fast.target]

    assert _instances(scraper.fetch(targets)) == [fast.target.host]
    assert scraper.backing_off() == sorted([hanging.target.address, dead.address])

    # The next ticks within the back-off cost the failed pods nothing: no request is made.
    assert _instances(scraper.fetch(targets)) == [fast.target.host]
    assert hanging.requests == 1
    assert results["skipped"] == 2

    clock.offset += 13  # past the first back-off (10 s +-20%): asked again, fails, waits longer
    scraper.fetch(targets)
    assert hanging.requests == 2
    clock.offset += 13  # within the doubled back-off (20 s +-20%)
    scraper.fetch(targets)
    assert hanging.requests == 2
    assert fast.requests == 4


def test_a_pod_that_recovers_is_scraped_again(pods: Pods) -> None:
    pod = pods.start("error")
    clock = Clock()
    scraper, results = _scraper(clock=clock, backoff_base=5)

    assert scraper.fetch([pod.target]) == []
    assert results == {"error": 1}
    pod.behaviour = "fast"
    clock.offset += 7  # past the back-off (5 s +-20%)

    assert _instances(scraper.fetch([pod.target])) == [pod.target.host]
    assert scraper.backing_off() == []


def test_reconciler_scrapes_ready_pods_on_the_servers_port(
    pods: Pods, monkeypatch: pytest.MonkeyPatch
) -> None:
    scraper = Scraper()
    ready, unready = pods.start("fast"), pods.start("fast")
    assert ready.target.port != unready.target.port or ready.target.host != unready.target.host
    monkeypatch.setattr(children, "PORT", ready.target.port)

    def pod(server: Pod, is_ready: bool) -> dict[str, Any]:
        condition = {"type": "Ready", "status": "True" if is_ready else "False"}
        return {
            "metadata": {"name": server.target.pod},
            "status": {"podIP": server.target.host, "conditions": [condition]},
        }

    no_ip = {"metadata": {"name": "pending"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    snapshots = reconciler.fetch_snapshots(scraper, [pod(ready, True), pod(unready, False), no_ip])

    assert _instances(snapshots) == [ready.target.host]
    assert unready.requests == 0


def test_a_new_pod_at_a_failed_pods_address_is_not_skipped(
    pods: Pods, monkeypatch: pytest.MonkeyPatch
) -> None:
    scraper = Scraper()
    server = pods.start("error")
    monkeypatch.setattr(children, "PORT", server.target.port)

    def pod(uid: str, ready_since: str) -> dict[str, Any]:
        ready = {"type": "Ready", "status": "True", "lastTransitionTime": ready_since}
        return {
            "metadata": {"name": "predictor", "uid": uid},
            "status": {"podIP": server.target.host, "conditions": [ready]},
        }

    assert reconciler.fetch_snapshots(scraper, [pod("first", "2026-01-01T00:00:00Z")]) == []
    server.behaviour = "fast"
    assert reconciler.fetch_snapshots(scraper, [pod("first", "2026-01-01T00:00:00Z")]) == []  # backing off
    assert server.requests == 1

    # Ready again after a restart, or another pod given the same IP: asked at once.
    restarted = reconciler.fetch_snapshots(scraper, [pod("first", "2026-01-01T00:05:00Z")])
    replaced = reconciler.fetch_snapshots(scraper, [pod("second", "2026-01-01T00:00:00Z")])
    assert _instances(restarted) == _instances(replaced) == [server.target.host]
