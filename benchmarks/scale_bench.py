"""Operator scale benchmark: ``python -m benchmarks.scale_bench --output BENCHMARKS.md`` (``make bench``).

mlops-operator and the kopf floor (benchmarks/kopf_floor.py: kopf with handlers that make the
same first calls per resource and nothing else) each run as their own process against their own
emulated API server (``python -m mlops_operator.sandbox.apiserver``, a separate process that
writes an audit log: every request of the operator is counted from it). For each:

1. **N created at once**: N InferenceServices (pinned version, 2 replicas: a Deployment, a version
   Service, the stable Service, a PodDisruptionBudget) and N TrainingJobs (one run: a Job)
   posted by 16 client threads; time until every child exists, then until the operator is idle
   (no request but its watches for 5 s); its API calls per resource by verb.
2. **Cold start**: the operator stopped (SIGTERM) and a new one started over those 2N converged
   resources and their children: time until idle (every object reconciled, by the operator's
   ``mlops_reconcile_total``; for the floor, which has no such count, its CPU under 5% of a core
   over a second; and no request but watches for 5 s), its API writes meanwhile, its peak RSS (VmHWM), and its CPU over the
   60 s that follow (two timer rounds at the default 30 s interval).
3. **One create**: K InferenceServices created one at a time next to the 2N, each timed from its
   POST until all four children exist (polled every 5 ms): p50 and p99.

What runs, honestly: no kubelet and no controllers but the operator, so no pod starts: the
Deployments stay at 0 ready replicas and their InferenceServices at ``Ready=False, Loading``,
which is their converged state (the operator has nothing left to do); no monitoring scrape
happens (it needs ready pods) and MLflow is not reached (a pinned version needs no lookup). The
operator runs as one replica without leader election (``--no-leader-election``), as the floor. The
Jobs stay active (no pod runs them). CEL rules are evaluated by the emulated API server, as
a real one does. Timings are wall-clock on a shared 2-core machine: treat differences under
~10% as noise. Results go into the ``## Scale`` section of BENCHMARKS.md, leaving the others.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

from benchmarks.markdown_sections import replace_section

MARKER = "## Scale"
ROOT = Path(__file__).resolve().parent.parent
WRITES = ("create", "update", "patch", "delete", "deletecollection")
MANAGED = "app.kubernetes.io/managed-by=mlops-operator"
IDLE_QUIET_S = 5.0
IDLE_CPU = 0.05


# --- processes -------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    audit: Path
    admin: Any  # tests.fixtures_sandbox.Api
    operator_kubeconfig: Path
    operator_user: str
    _offset: int = 0
    _events: list[dict[str, Any]] = field(default_factory=list)

    def operator_requests(self) -> list[dict[str, Any]]:
        """Every audited request of the operator so far (read incrementally), with its arrival time."""
        with self.audit.open("rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        end = data.rfind(b"\n") + 1
        self._offset += end
        now = time.monotonic()
        for line in data[:end].splitlines():
            event = json.loads(line)
            if event["user"]["username"] == self.operator_user:
                event["seen"] = now
                self._events.append(event)
        return self._events

    def mark(self) -> int:
        self.operator_requests()
        return len(self._events)


@contextlib.contextmanager
def api_server(tmp: Path) -> Iterator[Server]:
    from tests.fixtures_sandbox import Api

    from mlops_operator.sandbox.apiserver.server import (
        SANDBOX_IDENTITIES,
        sandbox_tokens,
        write_kubeconfig,
        write_token_auth_file,
    )
    from mlops_operator.sandbox.manager import default_crds

    tokens = sandbox_tokens()
    auth = write_token_auth_file(tmp / "tokens.csv", tokens)
    url_file, audit = tmp / "url", tmp / "audit.jsonl"
    audit.touch()
    process = subprocess.Popen(
        [
            sys.executable, "-m", "mlops_operator.sandbox.apiserver", "--crds", str(default_crds(tmp)),
            "--token-auth-file", str(auth), "--url-file", str(url_file), "--tls-dir", str(tmp / "tls"),
            "--audit-log-path", str(audit), "--log-level", "WARNING",
        ],
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not url_file.exists():
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the emulated API server did not start")
            time.sleep(0.05)
        url = url_file.read_text().strip()
        ca = (tmp / "tls" / "ca.crt").read_bytes()
        kubeconfig = write_kubeconfig(tmp / "operator.kubeconfig", url, token=tokens["operator"], ca=ca)
        admin = Api(url, tokens["admin"], ca)
        yield Server(process, url, audit, admin, kubeconfig, SANDBOX_IDENTITIES["operator"].username)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


@dataclass
class Operator:
    process: subprocess.Popen[bytes]
    metrics_port: int | None
    started: float

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def reconciles(self) -> dict[str, float]:
        """mlops_reconcile_total by result, from the operator's /metrics (empty for the floor)."""
        if self.metrics_port is None:
            return {}
        try:
            text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        except httpx.HTTPError:
            return {}
        totals: dict[str, float] = {}
        for match in re.finditer(
            r'^mlops_reconcile_total\{kind="[^"]+",result="([^"]+)"\} (\S+)$', text, re.M
        ):
            totals[match.group(1)] = totals.get(match.group(1), 0.0) + float(match.group(2))
        return totals

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def start_operator(which: str, server: Server, log: Path) -> Operator:
    env = {
        **os.environ,
        "KUBECONFIG": str(server.operator_kubeconfig),
        "MLOPS_MLFLOW_TRACKING_URI": "http://127.0.0.1:9",  # nothing listens; nothing should ask
        "MLOPS_LIVENESS_PORT": "0",
        "MLOPS_EVENT_LEVEL": "WARNING",
    }
    port: int | None = None
    if which == "mlops-operator":
        port = _free_port()
        env["MLOPS_METRICS_PORT"] = str(port)
        # One replica, like the floor: no Lease. With leader election on, an emulated API server
        # busy with 2N creates on a loaded machine answered the Lease renewal after more than the
        # 10 s renew deadline and the operator exited (as it must); that is not what is measured.
        command = [
            sys.executable,
            "-m",
            "mlops_operator.cli",
            "run",
            "--all-namespaces",
            "--no-leader-election",
        ]
    else:
        command = [sys.executable, "-m", "benchmarks.kopf_floor"]
    with log.open("ab") as out:
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    return Operator(process, port, time.monotonic())


# --- resources -------------------------------------------------------------------------------------


def inference_service(index: int) -> dict[str, Any]:
    from tests.fixtures_operator import example

    manifest = example("iris-inferenceservice.yaml")
    manifest["metadata"] = {"name": f"svc-{index}", "namespace": "default"}
    manifest["spec"].pop("retraining")
    manifest["spec"]["model"] = {"name": f"model-{index}", "version": "1"}
    manifest["spec"]["rollout"] = {"strategy": "Replace"}
    return manifest


def training_job(index: int) -> dict[str, Any]:
    from tests.fixtures_operator import example

    manifest = example("iris-trainingjob.yaml", schedule=None)
    manifest["metadata"] = {"name": f"train-{index}", "namespace": "default"}
    manifest["spec"]["model"]["name"] = f"model-{index}"
    return manifest


def children_count(server: Server) -> dict[str, int]:
    api = server.admin
    counts = {kind: len(api.list(kind, "default", MANAGED)) for kind in ("Deployment", "Service", "Job")}
    response = api.http.get(
        "/apis/policy/v1/namespaces/default/poddisruptionbudgets", params={"labelSelector": MANAGED}
    )
    counts["PodDisruptionBudget"] = len(response.json().get("items", []))
    return counts


def _wait(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.5) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic()


def wait_idle(
    server: Server, operator: Operator, since: int, minimum_reconciles: int, timeout: float
) -> float:
    """The moment the operator fell idle: all objects reconciled (``minimum_reconciles``; the floor,
    which counts nothing, by its CPU under 5% of a core over a second), and no request but
    watches for ``IDLE_QUIET_S``.
    Returns the time of its last non-watch request, or of the CPU drop if later."""
    deadline = time.monotonic() + timeout
    cpu_before, at_before = operator.cpu_seconds(), time.monotonic()
    quiet_cpu_at: float | None = None
    done = False
    while time.monotonic() < deadline:
        time.sleep(1.0)
        cpu, now = operator.cpu_seconds(), time.monotonic()
        busy = (cpu - cpu_before) / (now - at_before)
        cpu_before, at_before = cpu, now
        requests = [e for e in server.operator_requests()[since:] if e["verb"] != "watch"]
        last_request = requests[-1]["seen"] if requests else operator.started
        # /metrics is scraped only until the count is reached: with thousands of objects its
        # exposition costs the operator more CPU than its idle timers do.
        done = done or not operator.metrics_port or sum(operator.reconciles().values()) >= minimum_reconciles
        # Ours reports when every object was reconciled; the floor has no such count, its CPU says.
        if (busy >= IDLE_CPU and not operator.metrics_port) or not done:
            quiet_cpu_at = None
            continue
        quiet_cpu_at = quiet_cpu_at or now - 1.0
        if now - last_request >= IDLE_QUIET_S:
            return max(last_request, quiet_cpu_at)
    raise RuntimeError(f"the operator was not idle within {timeout:.0f} s")


# --- the measurements ------------------------------------------------------------------------------


@dataclass
class Result:
    operator: str
    n: int
    create_children_s: float = 0.0
    create_idle_s: float = 0.0
    create_calls: dict[str, int] = field(default_factory=dict)
    create_reconciles: dict[str, float] = field(default_factory=dict)
    create_rss_mb: float = 0.0
    cold_idle_s: float = 0.0
    cold_calls: dict[str, int] = field(default_factory=dict)
    cold_rss_mb: float = 0.0
    idle_cpu: float = 0.0
    idle_calls: int = 0
    one_create_ms: list[float] = field(default_factory=list)


def _verbs(events: list[dict[str, Any]]) -> dict[str, int]:
    return dict(Counter(e["verb"] for e in events if "objectRef" in e))


def run_one(which: str, n: int, singles: int, tmp: Path) -> Result:
    result = Result(which, n)
    log = tmp / f"{which}.log"
    with api_server(tmp) as server:
        # 1. N of each created at once.
        operator = start_operator(which, server, log)
        _wait(
            lambda: any(e["verb"] == "watch" for e in server.operator_requests()),
            120,
            "the operator's watches",
        )
        time.sleep(2)  # its initial lists done: the timing starts with the first POST
        since = server.mark()
        start = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: server.admin.create(inference_service(i)), range(n)))
            list(pool.map(lambda i: server.admin.create(training_job(i)), range(n)))
        posted = time.monotonic()
        target = {"Deployment": n, "Service": 2 * n, "PodDisruptionBudget": n, "Job": n}

        def all_children() -> bool:
            try:
                return children_count(server) == target
            except httpx.TimeoutException:  # the emulated server is busy: not an answer, ask again
                return False

        done = _wait(all_children, 1800, "every child", interval=1.0)
        result.create_children_s = done - start
        print(
            f"{which}: {2 * n} posted in {posted - start:.1f} s, children after {done - start:.1f} s",
            flush=True,
        )
        idle = wait_idle(server, operator, since, 2 * n, 1800)
        result.create_idle_s = idle - start
        result.create_calls = _verbs(server.operator_requests()[since:])
        result.create_reconciles = operator.reconciles()  # one scrape, after the timing
        result.create_rss_mb = operator.peak_rss_mb()
        operator.stop()

        # 2. Cold start over the 2N converged resources.
        since = server.mark()
        operator = start_operator(which, server, log)
        idle = wait_idle(server, operator, since, 2 * n, 1800)
        result.cold_idle_s = idle - operator.started
        result.cold_calls = _verbs(server.operator_requests()[since:])
        print(
            f"{which}: cold start idle after {result.cold_idle_s:.1f} s, calls {result.cold_calls}",
            flush=True,
        )
        since = server.mark()
        cpu, at = operator.cpu_seconds(), time.monotonic()
        time.sleep(60)
        result.idle_cpu = (operator.cpu_seconds() - cpu) / (time.monotonic() - at)
        idle_requests = [e for e in server.operator_requests()[since:] if e["verb"] != "watch"]
        result.idle_calls = len(idle_requests)
        if idle_requests:
            print(
                f"{which}: requests when idle: {Counter(e['verb'] + ' ' + e['requestURI'].split('?')[0] for e in idle_requests).most_common(10)}",
                flush=True,
            )
        result.cold_rss_mb = operator.peak_rss_mb()

        # 3. One create at a time, next to the 2N.
        for i in range(n, n + singles):
            manifest = inference_service(i)
            name = manifest["metadata"]["name"]
            begin = time.monotonic()
            server.admin.create(manifest)

            def complete(name: str = name) -> bool:
                api = server.admin
                pdb = api.http.get(f"/apis/policy/v1/namespaces/default/poddisruptionbudgets/{name}")
                return bool(
                    pdb.status_code == 200
                    and api.get("Service", name)
                    and api.get("Service", f"{name}-v1")
                    and api.get("Deployment", f"{name}-v1")
                )

            end = _wait(complete, 60, f"{name}'s children", interval=0.005)
            result.one_create_ms.append((end - begin) * 1000)
        operator.stop()
    return result


# --- the report ------------------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _per_resource(calls: dict[str, int], n: int) -> str:
    total = sum(calls.values())
    verbs = ", ".join(f"{verb} {count / (2 * n):.2f}" for verb, count in sorted(calls.items()))
    return f"{total / (2 * n):.2f} ({verbs})"


def _writes(calls: dict[str, int]) -> int:
    return sum(count for verb, count in calls.items() if verb in WRITES)


def _ratio(ours: float, floor: float) -> str:
    return f"{ours / floor:.2f}x" if floor > 0 else ("-" if ours == 0 else "inf")


def versions() -> list[tuple[str, str]]:
    rows = [
        ("date", datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")),
        ("load average (1 min) at the end", f"{os.getloadavg()[0]:.1f} (the machine is shared)"),
        ("CPU", platform.processor() or platform.machine()),
        ("cores", f"{os.cpu_count()} (usable: {len(os.sched_getaffinity(0))})"),
        ("platform", platform.platform()),
        ("Python", platform.python_version()),
    ]
    for package in ("kopf", "kmock", "kubernetes", "aiohttp", "pydantic", "mlops-operator"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            rows.append((package, metadata.version(package)))
    return rows


def render(ours: Result, floor: Result, singles: int) -> str:
    n = ours.n
    lines = [
        MARKER,
        "",
        f"Generated by `python -m benchmarks.scale_bench` (N={n}, {singles} single creates); method and what "
        "runs (no pods, no MLflow) in that module's docstring. Each operator is its own process against its "
        "own emulated API server; calls are counted from the server's audit log.",
        "",
        "| machine | |",
        "| --- | --- |",
        *[f"| {key} | {value} |" for key, value in versions()],
        "",
        f"### {n} InferenceServices and {n} TrainingJobs created at once",
        "",
        "| | mlops-operator | kopf floor | ratio |",
        "| --- | ---: | ---: | ---: |",
        f"| time until every child exists | {ours.create_children_s:.1f} s | {floor.create_children_s:.1f} s | "
        f"{_ratio(ours.create_children_s, floor.create_children_s)} |",
        f"| time until idle | {ours.create_idle_s:.1f} s | {floor.create_idle_s:.1f} s | "
        f"{_ratio(ours.create_idle_s, floor.create_idle_s)} |",
        f"| API calls per resource (by verb) | {_per_resource(ours.create_calls, n)} | "
        f"{_per_resource(floor.create_calls, n)} | "
        f"{_ratio(sum(ours.create_calls.values()), sum(floor.create_calls.values()))} |",
        f"| peak RSS | {ours.create_rss_mb:.0f} MB | {floor.create_rss_mb:.0f} MB | "
        f"{_ratio(ours.create_rss_mb, floor.create_rss_mb)} |",
        "",
        f"mlops-operator's reconciliations meanwhile, by result: {ours.create_reconciles} (a `requeue` is a "
        "409/429/5xx or an unreachable API server, retried by kopf).",
        "",
        f"### Cold start over {n} converged InferenceServices and {n} TrainingJobs (goals: idle < 30 s, "
        "0 writes, peak RSS < 150 MB)",
        "",
        "| | mlops-operator | kopf floor | ratio |",
        "| --- | ---: | ---: | ---: |",
        f"| time until idle | {ours.cold_idle_s:.1f} s | {floor.cold_idle_s:.1f} s | "
        f"{_ratio(ours.cold_idle_s, floor.cold_idle_s)} |",
        f"| API writes until idle | {_writes(ours.cold_calls)} | {_writes(floor.cold_calls)} | |",
        f"| API requests until idle (by verb; kopf's own lists and watches included) | "
        f"{sum(ours.cold_calls.values())} {ours.cold_calls} | {sum(floor.cold_calls.values())} {floor.cold_calls} | |",
        f"| peak RSS | {ours.cold_rss_mb:.0f} MB | {floor.cold_rss_mb:.0f} MB | "
        f"{_ratio(ours.cold_rss_mb, floor.cold_rss_mb)} |",
        f"| CPU when idle (60 s, two timer rounds) | {ours.idle_cpu:.1%} of a core | {floor.idle_cpu:.1%} of a core | "
        f"{_ratio(ours.idle_cpu, floor.idle_cpu)} |",
        f"| API requests when idle (60 s, watches excluded) | {ours.idle_calls} | {floor.idle_calls} | |",
        "",
        f"### One InferenceService created next to the {2 * n}: POST to all four children (goal p50 < 200 ms)",
        "",
        "| | mlops-operator | kopf floor | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, q in (("p50", 0.5), ("p99", 0.99)):
        a, b = _percentile(ours.one_create_ms, q), _percentile(floor.one_create_ms, q)
        lines.append(f"| {label} | {a:.0f} ms | {b:.0f} ms | {_ratio(a, b)} |")
    lines += [
        "",
        f"p99 of {singles} samples is close to their maximum. Children polled every 5 ms (4 GETs a poll).",
        "",
    ]
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    """Replace the ``## Scale`` section of ``path`` (or append it), keeping everything else."""
    replace_section(path, MARKER, section)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scale_bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("-n", type=int, default=1000, help="InferenceServices and TrainingJobs (each)")
    parser.add_argument("--singles", type=int, default=50, help="single creates timed one by one")
    args = parser.parse_args(argv)
    results = {}
    for which in ("mlops-operator", "kopf-floor"):
        with tempfile.TemporaryDirectory(prefix=f"scale-{which}-") as tmp:
            results[which] = run_one(which, args.n, args.singles, Path(tmp))
    section = render(results["mlops-operator"], results["kopf-floor"], args.singles)
    write_section(args.output, section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
