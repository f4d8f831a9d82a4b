"""Monitoring scrape benchmark: ``python -m benchmarks.scrape_bench --output BENCHMARKS.md`` (``make bench``).

Every InferenceService's timer reads ``/monitoring`` from each of its ready pods. This measures
that scrape alone, for N services of 2 pods each, with a share of bad pods, before and after
``monitoring/scraper.py``:

- **the pods**: one separate process (asyncio) serves every pod's ``/monitoring`` on its own
  loopback address (127.1.x.y; loopback is all of 127/8), on one port as pods share
  ``containerPort``. Most answer at once with a ~3 KB snapshot; *slow* ones answer after 5 s
  (longer than any timeout); *hanging* ones accept and never answer; *dead* ones have nothing
  listening (connection refused). The process counts the requests it is answering at once.
- **the ticks**: all N timers fire together (services created together tick together) onto a
  pool of 20 threads, kopf's executor at the default ``workerLimit``; each tick runs only the
  scrape. A tick's *wait* is the time from when it was due to when a thread took it: the
  timer backlog.
- **before**: the previous code, kept here verbatim: each pod in turn with
  ``urllib.request.urlopen(timeout=2)``. It keeps no state, so one round stands for all.
- **after**: the operator's shared :class:`~mlops_operator.monitoring.scraper.Scraper` with its
  defaults (32 requests in flight, 0.5 s connect, 2 s total per pod, failing pods skipped with
  back-off). Ticks 1 to 8 are consecutive rounds 30 s apart (the scraper's clock is moved on
  to 30 s after the round's start instead of waiting), so the back-off shows: a pod that
  failed is asked again on the next tick, then about on ticks 4, 7, 13, ... while it keeps
  failing. Every service ticks at the same moment in every round, the worst case (kopf's
  timers drift apart after the first tick).

Results go into the ``## Monitoring scrape`` section of BENCHMARKS.md, leaving the others.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.markdown_sections import replace_section
from benchmarks.scale_bench import versions

MARKER = "## Monitoring scrape"
KOPF_THREADS = 20  # Settings.worker_limit's default: the threads that run reconciliations
INTERVAL_S = 30.0  # Settings.reconcile_interval's default
TICKS = 8
SLOW_S = 5.0
BEHAVIOURS = ("fast", "slow", "hanging", "dead")


# --- the pods (a separate process) -----------------------------------------------------------------


def host(index: int) -> str:
    return f"127.1.{index // 250}.{1 + index % 250}"


def snapshot(instance: str) -> bytes:
    """A /monitoring answer of about the size a model server sends (20 features)."""
    features = [
        {"name": f"f{i}", "method": "psi", "score": 0.01 * i, "p_value": None, "drifted": False}
        for i in range(20)
    ]
    body = {
        "model": "bench",
        "version": "1",
        "state": "ok",
        "window_samples": 1000,
        "features": features,
        "predictions": {"class_counts": {"a": 500, "b": 500}, "total": {"a": 9000, "b": 9000}},
        "counters": {"instance": instance, "requests": 18000, "errors": 0},
    }
    return json.dumps(body).encode()


class PodStats:
    def __init__(self) -> None:
        self.active = 0
        self.max_active = 0
        self.requests = 0


async def serve_pods(plan: list[str], port: int, control: int) -> None:
    stats = PodStats()

    async def pod(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, behaviour: str, name: str
    ) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        stats.requests += 1
        stats.active += 1
        stats.max_active = max(stats.max_active, stats.active)
        try:
            if behaviour == "hanging":
                await reader.read()  # until the client gives up and closes
                return
            if behaviour == "slow":
                # Answer after SLOW_S, unless the client gives up first (then it is no longer
                # a request in flight).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(reader.read(), SLOW_S)
                    return
            body = snapshot(name)
            head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            writer.write(head.encode() + body)
            await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client gave up, or the benchmark is over
        finally:
            stats.active -= 1
            writer.close()

    async def control_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        if line.strip() == b"reset":
            stats.max_active, stats.requests = stats.active, 0
        writer.write(json.dumps(vars(stats)).encode() + b"\n")
        await writer.drain()
        writer.close()

    servers = [await asyncio.start_server(control_handler, "127.0.0.1", control)]
    for index, behaviour in enumerate(plan):
        if behaviour == "dead":
            continue

        def handler(
            r: asyncio.StreamReader, w: asyncio.StreamWriter, b: str = behaviour, n: str = host(index)
        ) -> Any:
            return pod(r, w, b, n)

        servers.append(await asyncio.start_server(handler, host(index), port, backlog=64))
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


def control(port: int, command: str = "stats") -> dict[str, int]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(command.encode() + b"\n")
        data = sock.makefile().readline()
    stats: dict[str, int] = json.loads(data)
    return stats


# --- the scrapers under test ---------------------------------------------------------------------


def fetch_snapshots_before(
    pods: list[dict[str, Any]], port: int, timeout: float = 2.0
) -> list[dict[str, Any]]:
    """The operator's scrape before monitoring/scraper.py (its port a parameter here)."""
    snapshots = []
    for pod in pods:
        ip = pod.get("status", {}).get("podIP")
        if not ip:
            continue
        try:
            with urllib.request.urlopen(f"http://{ip}:{port}/monitoring", timeout=timeout) as response:
                snapshots.append(json.loads(response.read()))
        except (OSError, urllib.error.URLError, ValueError):
            continue
    return snapshots


@dataclass
class Round:
    label: str
    wall_s: float = 0.0
    waits: list[float] = field(default_factory=list)
    tick_s: list[float] = field(default_factory=list)
    snapshots: int = 0
    requests: int = 0
    max_in_flight: int = 0


def run_round(label: str, n: int, control_port: int, scrape: Callable[[int], int]) -> Round:
    """All n ticks due now, onto kopf's 20 threads; ``scrape(service)`` returns its snapshot count."""
    result = Round(label)
    control(control_port, "reset")
    lock = threading.Lock()
    due = time.monotonic()

    def tick(service: int) -> None:
        started = time.monotonic()
        count = scrape(service)
        ended = time.monotonic()
        with lock:
            result.waits.append(started - due)
            result.tick_s.append(ended - started)
            result.snapshots += count

    with ThreadPoolExecutor(KOPF_THREADS) as pool:
        list(pool.map(tick, range(n)))
    result.wall_s = time.monotonic() - due
    stats = control(control_port)
    result.requests, result.max_in_flight = stats["requests"], stats["max_active"]
    print(
        f"{label}: {result.wall_s:.1f} s, max tick wait {max(result.waits):.1f} s, "
        f"{result.snapshots} snapshots, {result.requests} requests, max in flight {result.max_in_flight}",
        flush=True,
    )
    return result


# --- the report ------------------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def render(n: int, counts: dict[str, int], rounds: list[Round]) -> str:
    fast = counts["fast"]
    lines = [
        MARKER,
        "",
        f"Generated by `python -m benchmarks.scrape_bench` ({n} InferenceServices x 2 pods: "
        + ", ".join(f"{counts[b]} {b}" for b in BEHAVIOURS)
        + f"; slow = answers after {SLOW_S:.0f} s, hanging = never answers, dead = connection refused). "
        f"All {n} timers fire together onto {KOPF_THREADS} reconciliation threads; each tick only scrapes. "
        "Method in that module's docstring.",
        "",
        "| machine | |",
        "| --- | --- |",
        *[f"| {key} | {value} |" for key, value in versions()],
        "",
        f"| | round wall time (interval {INTERVAL_S:.0f} s) | tick wait p50 / p99 / max (timer backlog) | "
        f"tick duration p50 / max | snapshots of {fast} fast pods | requests sent | max requests in flight |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rounds:
        lines.append(
            f"| {r.label} | {r.wall_s:.1f} s | {_percentile(r.waits, 0.5):.2f} / {_percentile(r.waits, 0.99):.2f} / "
            f"{max(r.waits):.2f} s | {_percentile(r.tick_s, 0.5) * 1000:.0f} ms / {max(r.tick_s):.2f} s | "
            f"{r.snapshots} | {r.requests} | {r.max_in_flight} |"
        )
    before, after = rounds[0], rounds[1:]
    if after:
        mean_after = sum(r.wall_s for r in after) / len(after)
        lines.append(
            f"| mean round over the {len(after)} ticks: before / after | {before.wall_s:.1f} s / {mean_after:.1f} s "
            f"| | | | {before.requests} / {sum(r.requests for r in after) / len(after):.0f} | |"
        )
    lines += [
        "",
        "A round longer than the interval means the next ticks are due before this round ends: the "
        "backlog then grows without bound. Snapshots short of the fast pods are fast pods not scraped "
        "in time (queued behind the bound past their deadline).",
        "",
    ]
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    """Replace the ``## Monitoring scrape`` section of ``path`` (or append it), keeping everything else."""
    replace_section(path, MARKER, section)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def plan_pods(n: int, slow: float, hanging: float, dead: float) -> list[str]:
    """Behaviour of each of the 2n pods, bad ones spread evenly."""
    pods = 2 * n
    plan = ["fast"] * pods
    step = 0
    for behaviour, share in (("slow", slow), ("hanging", hanging), ("dead", dead)):
        count = round(pods * share)
        stride = pods / count if count else 0
        for i in range(count):
            index = (int(i * stride) + step) % pods
            while plan[index] != "fast":
                index = (index + 1) % pods
            plan[index] = behaviour
        step += 7
    return plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scrape_bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("-n", type=int, default=1000, help="InferenceServices (2 pods each)")
    parser.add_argument("--slow", type=float, default=0.04, help="share of pods answering after 5 s")
    parser.add_argument("--hanging", type=float, default=0.03, help="share of pods never answering")
    parser.add_argument("--dead", type=float, default=0.03, help="share of pods refusing connections")
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # internal: run the pods' process
    args = parser.parse_args(argv)

    if args.serve:
        port, control_port, plan_file = args.serve.split(",")
        asyncio.run(serve_pods(json.loads(Path(plan_file).read_text()), int(port), int(control_port)))
        return 0

    from mlops_operator.monitoring.scraper import Scraper, ScrapeTarget

    n = args.n
    plan = plan_pods(n, args.slow, args.hanging, args.dead)
    counts = {b: plan.count(b) for b in BEHAVIOURS}
    port, control_port = _free_port(), _free_port()
    plan_file = Path(f"/tmp/scrape-bench-plan-{os.getpid()}.json")
    plan_file.write_text(json.dumps(plan))
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.scrape_bench", "--serve", f"{port},{control_port},{plan_file}"],
        stdout=subprocess.PIPE,
    )
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != b"ready":
            raise RuntimeError("the pods' process did not start")
        services = [
            [{"metadata": {"name": f"svc-{s}-{p}"}, "status": {"podIP": host(2 * s + p)}} for p in range(2)]
            for s in range(n)
        ]

        rounds = [
            run_round(
                "before: each pod in turn, urllib, 2 s timeout",
                n,
                control_port,
                lambda s: len(fetch_snapshots_before(services[s], port)),
            )
        ]
        offset = [0.0]
        scraper = Scraper(clock=lambda: time.monotonic() + offset[0])
        targets = [
            [ScrapeTarget(pod["metadata"]["name"], pod["status"]["podIP"], port) for pod in svc]
            for svc in services
        ]
        for number in range(1, TICKS + 1):
            rounds.append(
                run_round(
                    f"after, tick {number}" + (" (no pod known bad yet)" if number == 1 else ""),
                    n,
                    control_port,
                    lambda s: len(scraper.fetch(targets[s])),
                )
            )
            # The next tick is due INTERVAL_S after this one was (less the time this round took).
            offset[0] += INTERVAL_S - rounds[-1].wall_s
        scraper.shutdown()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        plan_file.unlink(missing_ok=True)

    section = render(n, counts, rounds)
    write_section(args.output, section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
