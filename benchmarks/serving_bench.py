"""Serving benchmark: ``python -m benchmarks.serving_bench --output BENCHMARKS.md`` (``make bench``).

One run, same machine, same models, same load generator, side by side:

- our server (``mlops-operator serve``) on both runtimes (uvicorn, BentoML), monitoring on
  and off; for the random forest also with batching off (``--max-batch-size 1``);
- ``mlflow models serve`` on the same registered model version (``--env-manager local``);
- the floor: a bare Starlette endpoint on uvicorn that parses the row and calls
  ``model.predict`` (nothing else: no validation, no metrics, no monitoring).

Models: a LogisticRegression and a 100-tree RandomForestClassifier on 20 numeric features,
trained here on synthetic data and registered in an embedded MLflow (SQLite store, local
artifacts, in a temporary directory) with the trainer's own logging code, reference profile
included, so every server loads exactly the same artifacts.

Load: ``wrk`` (a Lua script sets the POST body) at fixed concurrency (1 and 16
connections), one warm-up second then ``--duration`` seconds measured, one server at a
time. With two or more cores the server is pinned to core 0 and wrk to core 1
(``taskset``), so the client does not steal the server's CPU, as with a client on another
machine. Numbers are written to the output file with the machine's facts (CPU, cores,
Python, package versions, load average before each run: another busy process on the
machine shows up there). Tests never assert timings: they import only the parsing of wrk's
output (``tests/test_bench_units.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

N_FEATURES = 20
TRAIN_ROWS = 5000
CONNECTIONS = (1, 16, 64)  # 64: where batching pays for a forest
PACKAGES = (
    "numpy",
    "scikit-learn",
    "mlflow",
    "bentoml",
    "uvicorn",
    "starlette",
    "prometheus-client",
    "pydantic",
)
#: Targets from the issue (see the ratios section of the output).
TARGET_VS_MLFLOW = 1.5
TARGET_VS_FLOOR_LR = 0.70
TARGET_BATCHING_RF = 10.0
TARGET_BATCHING_P99_S = 0.100
TARGET_MONITORING_COST = 0.10


@dataclasses.dataclass(frozen=True)
class Target:
    key: str
    model: str  # "lr" | "rf"
    label: str
    command: list[str]
    path: str
    body: str
    health: str


@dataclasses.dataclass
class Result:
    target: Target
    connections: int
    rps: float | None = None
    p50_s: float | None = None
    p99_s: float | None = None
    errors: int = 0
    load1: float = 0.0
    note: str = ""


# --------------------------------------------------------------------------- models


def register_models(workdir: Path, tracking_uri: str) -> dict[str, str]:
    """Train LR and RF on the same synthetic data, register both; model key -> models:/ URI."""
    import mlflow
    import numpy as np
    import pandas as pd
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    from mlops_operator.trainer.data_validation import Columns
    from mlops_operator.trainer.profile_builder import build_profile
    from mlops_operator.trainer.tracking import log_profile, register, save_and_log_model

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    mlflow.set_experiment("bench")
    x, y = make_classification(n_samples=TRAIN_ROWS, n_features=N_FEATURES, n_informative=10, random_state=0)
    columns = [f"f{i}" for i in range(N_FEATURES)]
    frame = pd.DataFrame(x, columns=columns)
    labels = pd.Series(y, name="y")
    estimators = {
        "lr": LogisticRegression(max_iter=1000),
        "rf": RandomForestClassifier(n_estimators=100, random_state=0, n_jobs=1),
    }
    uris = {}
    for key, estimator in estimators.items():
        estimator.fit(frame, labels)
        with mlflow.start_run(run_name=f"bench-{key}") as run:
            example = frame.head(5)
            logged = save_and_log_model(estimator, example, np.asarray(estimator.predict(example)))
            log_profile(
                build_profile(frame, labels, Columns(columns, columns, []), task="classification", target="y")
            )
            name = f"bench-{key}"
            version = register(
                name=name,
                source=logged.artifact_uri,
                run_id=run.info.run_id,
                tags={},
                description="benchmark model",
                model_description=None,
            )
        uris[key] = f"models:/{name}/{version}"
    return uris


def download_model(uri: str, tracking_uri: str, dst: Path) -> Path:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))


# --------------------------------------------------------------------------- the floor server


def floor_app(model_dir: str) -> Any:
    """The floor: parse JSON, ``model.predict``, answer. Nothing else."""
    import mlflow.sklearn
    import numpy as np
    import orjson
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    model = mlflow.sklearn.load_model(model_dir)

    async def predict(request: Request) -> Response:
        payload = orjson.loads(await request.body())
        prediction = model.predict(np.array([payload["features"]], dtype=np.float64))
        return Response(orjson.dumps({"prediction": prediction.tolist()[0]}), media_type="application/json")

    async def health(request: Request) -> Response:
        return Response(b"ok")

    return Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/health", health)])


def run_floor(model_dir: str, host: str, port: int) -> int:
    import uvicorn

    uvicorn.run(floor_app(model_dir), host=host, port=port, log_level="warning", access_log=False)
    return 0


# --------------------------------------------------------------------------- load


WRK_SCRIPT = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = {body}
"""

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _seconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if match is None:
        raise ValueError(f"cannot read wrk duration {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> tuple[float | None, float | None, float | None, int]:
    """Successful requests/s, p50 and p99 in seconds, and errors (non-2xx plus socket errors).

    wrk's own ``Requests/sec`` counts every answer, so a server shedding load with quick 503s
    would look fast: the rate here counts 2xx answers only (total minus non-2xx, over the run).
    """
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in ([\d.]+(?:us|ms|s|m))", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE)
    errors = non_2xx_count = 0
    if non_2xx := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output):
        non_2xx_count = int(non_2xx.group(1))
        errors += non_2xx_count
    if sockets := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output):
        errors += sum(int(g) for g in sockets.groups())
    good: float | None = float(rps.group(1)) if rps else None
    if total is not None and non_2xx_count:
        good = max(0, int(total.group(1)) - non_2xx_count) / _seconds(total.group(2))
    return (
        good,
        _seconds(p50.group(1)) if p50 else None,
        _seconds(p99.group(1)) if p99 else None,
        errors,
    )


def pin(core: int | None, command: list[str]) -> list[str]:
    if core is None:
        return command
    return ["taskset", "-c", str(core), *command]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not ready after {timeout:.0f} s")


@contextlib.contextmanager
def running(command: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield process
        finally:
            # The server started its own session: stop exactly that process group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def load(
    target: Target, url: str, connections: int, duration: float, script: Path, core: int | None
) -> Result:
    threads = min(connections, 2)
    base = ["wrk", f"-t{threads}", f"-c{connections}", "--latency", "-s", str(script), url]
    subprocess.run(pin(core, [*base[:4], "-d1s", *base[4:]]), capture_output=True, check=False, timeout=60)
    load1 = os.getloadavg()[0]
    done = subprocess.run(
        pin(core, [*base[:4], f"-d{duration:g}s", "--timeout", "5s", *base[4:]]),
        capture_output=True,
        text=True,
        check=False,
        timeout=duration + 60,
    )
    rps, p50, p99, errors = parse_wrk(done.stdout)
    return Result(target, connections, rps, p50, p99, errors, load1, "" if rps else done.stderr.strip()[:200])


# --------------------------------------------------------------------------- plan


def row_body(kind: str) -> str:
    row = [round(0.1 * ((i * 7) % 13) - 0.6, 3) for i in range(N_FEATURES)]
    if kind == "mlflow":
        columns = [f"f{i}" for i in range(N_FEATURES)]
        return json.dumps({"dataframe_split": {"columns": columns, "data": [row]}})
    return json.dumps({"features": row})


PORT = "{port}"  # replaced by a fresh free port when the target starts


def plan(uris: dict[str, str], model_dirs: dict[str, Path], quick: bool) -> list[Target]:
    python = sys.executable
    cli = str(Path(python).parent / "mlops-operator")
    serve = [cli, "serve", "--host", "127.0.0.1", "--port", PORT]
    ours_body = row_body("ours")
    targets = []
    for model, uri in uris.items():
        variants: list[tuple[str, str, list[str]]] = [
            ("uvicorn", "ours uvicorn", []),
            ("uvicorn-nomon", "ours uvicorn, monitoring off", ["--no-monitoring"]),
        ]
        if not quick:
            variants += [
                ("bentoml", "ours BentoML", []),
                ("bentoml-nomon", "ours BentoML, monitoring off", ["--no-monitoring"]),
            ]
        if model == "rf":
            variants.append(("uvicorn-unbatched", "ours uvicorn, batching off", ["--max-batch-size", "1"]))
        for key, label, extra in variants:
            runtime = "bentoml" if key.startswith("bentoml") else "uvicorn"
            targets.append(
                Target(
                    f"{model}/{key}",
                    model,
                    label,
                    [*serve, "--model-uri", uri, "--runtime", runtime, *extra],
                    "/predict",
                    ours_body,
                    "/v2/health/ready",
                )
            )
        targets.append(
            Target(
                f"{model}/mlflow",
                model,
                "mlflow models serve",
                [
                    python,
                    "-m",
                    "mlflow",
                    "models",
                    "serve",
                    "-m",
                    uri,
                    "--env-manager",
                    "local",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    PORT,
                    "-w",
                    "1",
                ],
                "/invocations",
                row_body("mlflow"),
                "/ping",
            )
        )
        targets.append(
            Target(
                f"{model}/floor",
                model,
                "floor: bare Starlette + predict",
                [
                    python,
                    "-m",
                    "benchmarks.serving_bench",
                    "floor",
                    str(model_dirs[model]),
                    "127.0.0.1",
                    PORT,
                ],
                "/predict",
                ours_body,
                "/health",
            )
        )
    return targets


# --------------------------------------------------------------------------- report


def machine_facts() -> list[tuple[str, str]]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    facts = [
        ("date", datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")),
        ("CPU", cpu),
        ("cores", f"{os.cpu_count()} (usable: {len(os.sched_getaffinity(0))})"),
        ("platform", platform.platform()),
        ("Python", platform.python_version()),
    ]
    for package in PACKAGES:
        try:
            facts.append((package, importlib.metadata.version(package)))
        except importlib.metadata.PackageNotFoundError:
            facts.append((package, "not installed"))
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    facts.append(("wrk", (wrk.stdout or wrk.stderr).splitlines()[0] if (wrk.stdout or wrk.stderr) else "?"))
    return facts


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.2f}"


def _find(results: Sequence[Result], key: str, connections: int) -> Result | None:
    return next((r for r in results if r.target.key == key and r.connections == connections and r.rps), None)


def ratios(results: Sequence[Result]) -> list[str]:
    lines = []

    def ratio(a: Result | None, b: Result | None) -> float | None:
        return a.rps / b.rps if a and b and a.rps and b.rps else None

    def fmt(value: float | None, target: float, higher: bool = True) -> str:
        if value is None:
            return "n/a"
        ok = value >= target if higher else value <= target
        return f"{value:.2f} ({'meets' if ok else 'misses'} {'>=' if higher else '<='} {target:g})"

    for model in ("lr", "rf"):
        for c in CONNECTIONS:
            ours, mlflow = _find(results, f"{model}/uvicorn", c), _find(results, f"{model}/mlflow", c)
            p99_ok = "n/a"
            if ours and mlflow and ours.p99_s is not None and mlflow.p99_s is not None:
                p99_ok = f"p99 {_ms(ours.p99_s)} vs {_ms(mlflow.p99_s)} ms"
            lines.append(
                f"| {model} | ours (uvicorn) / mlflow serve, c={c} | {fmt(ratio(ours, mlflow), TARGET_VS_MLFLOW)} "
                f"| {p99_ok} |"
            )
            bento = _find(results, f"{model}/bentoml", c)
            lines.append(
                f"| {model} | ours (BentoML) / mlflow serve, c={c} | {fmt(ratio(bento, mlflow), TARGET_VS_MLFLOW)} | |"
            )
    for c in CONNECTIONS:
        ours, floor = _find(results, "lr/uvicorn", c), _find(results, "lr/floor", c)
        lines.append(
            f"| lr | ours (uvicorn) / floor, c={c} | {fmt(ratio(ours, floor), TARGET_VS_FLOOR_LR)} | |"
        )
    for c in CONNECTIONS:
        batched, unbatched = _find(results, "rf/uvicorn", c), _find(results, "rf/uvicorn-unbatched", c)
        p99 = (
            f"batched p99 {_ms(batched.p99_s)} ms (target < {TARGET_BATCHING_P99_S * 1000:g})"
            if batched
            else ""
        )
        lines.append(
            f"| rf | batched / unbatched, c={c} | {fmt(ratio(batched, unbatched), TARGET_BATCHING_RF)} | {p99} |"
        )
    for model in ("lr", "rf"):
        for runtime in ("uvicorn", "bentoml"):
            for c in CONNECTIONS:
                on, off = (
                    _find(results, f"{model}/{runtime}", c),
                    _find(results, f"{model}/{runtime}-nomon", c),
                )
                cost = 1 - on.rps / off.rps if on and off and on.rps and off.rps else None
                lines.append(
                    f"| {model} | monitoring cost ({runtime}), c={c} "
                    f"| {fmt(cost, TARGET_MONITORING_COST, higher=False)} | 1 - rps(on) / rps(off) |"
                )
    return lines


def render(
    results: Sequence[Result], facts: Sequence[tuple[str, str]], args: argparse.Namespace, pinned: bool
) -> str:
    out = [
        "# Serving benchmarks",
        "",
        "Generated by `make bench` (`python -m benchmarks.serving_bench`); see that module's docstring for the method.",
        f"wrk, {args.duration:g} s per measurement after a 1 s warm-up, single runs (no repetition: treat"
        " differences under ~10% as noise), one server at a time, "
        + (
            "server pinned to core 0 and wrk to core 1." if pinned else "no CPU pinning (fewer than 2 cores)."
        ),
        "Request: one row of 20 floats. A load average (1 min) well above the server's own share at the"
        " start of a run means something else was using the machine.",
        "req/s counts successful (2xx) answers only; `errors` are non-2xx answers (our server sheds load"
        " past `--max-inflight` with a quick 503) and socket errors, and the latency percentiles include"
        " those quick answers.",
        "",
        "## Machine",
        "",
        "| fact | value |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in facts],
        "",
        "## Results",
        "",
        "| model | server | conns | req/s | p50 ms | p99 ms | errors | load1 | note |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        rps = "n/a" if r.rps is None else f"{r.rps:,.0f}"
        out.append(
            f"| {r.target.model} | {r.target.label} | {r.connections} | {rps} | {_ms(r.p50_s)} | {_ms(r.p99_s)} "
            f"| {r.errors} | {r.load1:.2f} | {r.note} |"
        )
    out += [
        "",
        "## Against the targets",
        "",
        "| model | ratio | value | detail |",
        "| --- | --- | --- | --- |",
        *ratios(results),
        "",
    ]
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def bench(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        print("bench: wrk not found (Debian: apt-get install -y wrk)", file=sys.stderr)
        return 2
    pinned = len(os.sched_getaffinity(0)) >= 2 and shutil.which("taskset") is not None
    server_core, client_core = (0, 1) if pinned else (None, None)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="mlops-bench-"))
    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_REGISTRY_URI": tracking_uri,
        "PYTHONUNBUFFERED": "1",
    }
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    print(f"bench: registering models in {workdir}", file=sys.stderr)
    uris = register_models(workdir, tracking_uri)
    model_dirs = {
        key: download_model(uri, tracking_uri, workdir / f"floor-{key}") for key, uri in uris.items()
    }
    results: list[Result] = []
    selected = set(args.only.split(",")) if args.only else None
    for target in plan(uris, model_dirs, args.quick):
        if selected is not None and target.key not in selected:
            continue
        port = free_port()
        command = [str(port) if part == PORT else part for part in target.command]
        script = workdir / f"{target.key.replace('/', '-')}.lua"
        script.write_text(WRK_SCRIPT.format(body=json.dumps(target.body)))
        log = workdir / f"{target.key.replace('/', '-')}.log"
        print(f"bench: {target.key}", file=sys.stderr)
        with running(pin(server_core, command), env, log) as process:
            try:
                wait_ready(f"http://127.0.0.1:{port}{target.health}", process, timeout=180)
            except (RuntimeError, TimeoutError) as exc:
                tail = log.read_text(errors="replace")[-300:].replace("\n", " ").replace("|", "/")
                results += [Result(target, c, note=f"{exc}: {tail}") for c in CONNECTIONS]
                continue
            url = f"http://127.0.0.1:{port}{target.path}"
            for c in CONNECTIONS:
                results.append(load(target, url, c, args.duration, script, client_core))
                last = results[-1]
                print(
                    f"bench:   c={c} {last.rps or 0:,.0f} req/s p50 {_ms(last.p50_s)} ms p99 {_ms(last.p99_s)} ms"
                    f" errors {last.errors}",
                    file=sys.stderr,
                )
    Path(args.output).write_text(render(results, machine_facts(), args, pinned))
    print(f"bench: wrote {args.output} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["floor"]:
        model_dir, host, port = argv[1:4]
        return run_floor(model_dir, host, int(port))
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.serving_bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--output", default="BENCHMARKS.md", help="markdown file to write")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per run (default 5)")
    parser.add_argument("--quick", action="store_true", help="skip the BentoML runtime (a faster smoke run)")
    parser.add_argument("--only", help="comma-separated target keys, e.g. lr/uvicorn,lr/floor")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, MLflow store)")
    return bench(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
