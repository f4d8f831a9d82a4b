"""Serving benchmark: ``python -m benchmarks.serving_bench --output BENCHMARKS.md`` (``make bench``).

One run, same machine, same models, same load generator, side by side:

- our server (``mlops-operator serve``) on both runtimes (uvicorn, BentoML), monitoring on
  and off, on ``/predict`` and on the Open Inference Protocol v2 (``/v2/models/.../infer``);
  for the random forest also with batching off (``--max-batch-size 1``) and with
  scikit-learn's own ``predict_proba`` (``MLOPS_SERVE_FOREST_FAST_PATH=0``), so that the
  batcher is compared with MLServer's on the very same cost per call;
- the peers, each configured for speed (access logs off) and otherwise as shipped:
  ``mlflow models serve`` on the same registered model version (``--env-manager local``);
  MLServer with its scikit-learn runtime (``mlserver`` + ``mlserver-sklearn``), adaptive
  batching off and on (up to 32 rows within 2 ms), the latter also with ``parallel_workers: 0``
  (inference in the HTTP process: no inter-process hop on a single core); KServe's Python
  model server (``kserve``)
  with a minimal ``kserve.Model`` that loads the same ``model.joblib`` and calls ``predict`` as
  KServe's sklearn server does. MLServer and KServe pin packages of their own, so each runs in
  a virtual environment of its own, created on first use under ``--peers-dir`` with the same
  scikit-learn as ours (a pickled model needs the version that wrote it);
- the floor: a bare Starlette endpoint on uvicorn that parses the row and calls
  ``model.predict`` (nothing else: no validation, no metrics, no monitoring).

Models: a LogisticRegression and a 100-tree RandomForestClassifier on 20 numeric features,
trained here on synthetic data and registered in an embedded MLflow (SQLite store, local
artifacts, in a temporary directory) with the trainer's own logging code, reference profile
included, so every server loads exactly the same fitted estimator.

Before any timing, every server answers 20 rows one request at a time, and its labels must
equal scikit-learn's ``predict`` on those rows; a server that disagrees is not timed.

Load: ``wrk`` (a Lua script sets the POST body) at 1, 16 and 64 connections. All servers of
one model run at once (idle when not measured) and the measurements alternate between them:
round after round, each concurrency, each server in turn (a warm-up second in the first round), then
``--duration`` seconds measured. The machine is shared and small, so a background burst hits
whichever server runs at that moment; alternating spreads it over all of them, and the report
gives medians over rounds and, for the comparisons, the median of the per-round ratios. With two
or more cores the servers are pinned to core 0 and wrk to core 1 (``taskset``), as with a
client on another machine. req/s counts 2xx answers only. Tests never assert timings: they
import only the parsing of wrk's output and the rendering (``tests/test_bench_units.py``).
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
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

N_FEATURES = 20
TRAIN_ROWS = 5000
CONNECTIONS = (1, 16, 64)  # 64: where batching pays for a forest
CHECK_ROWS = 20
PACKAGES = (
    "numpy",
    "scikit-learn",
    "mlflow",
    "bentoml",
    "uvicorn",
    "starlette",
    "prometheus-client",
    "pydantic",
    "orjson",
)
#: The peers' own environments: pinned versions, plus our scikit-learn version (added at run time).
PEER_ENVS: dict[str, tuple[str, ...]] = {
    # uvloop 0.22 raises from get_event_loop() without a running loop, which MLServer 1.7's
    # inference workers call at start: with it, no model loads.
    "mlserver": ("mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop<0.22"),
    "kserve": ("kserve==0.21.0",),
}
PEER_PACKAGES = {"mlserver": ("mlserver", "mlserver-sklearn"), "kserve": ("kserve",)}
#: MLServer's adaptive batching as measured against ours (its docs' example settings).
MLSERVER_BATCH_ROWS, MLSERVER_BATCH_TIME_S = 32, 0.002
#: Targets from the issues (see the ratios section of the output).
TARGET_VS_PEER_LR = 1.5
TARGET_VS_BATCHED_PEER_RF = 1.0
TARGET_V2_VS_PREDICT = 0.90
TARGET_VS_FLOOR_LR = 0.70
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
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    protocol: str = "ours"  # how to read its answers: ours | v2 | mlflow | kserve
    config: str = ""  # a file to write before starting (MLServer's settings), as "path\ncontent"


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
    round: int = 1


# --------------------------------------------------------------------------- models


def register_models(workdir: Path, tracking_uri: str) -> tuple[dict[str, str], dict[str, Any], Any]:
    """Train LR and RF on the same synthetic data and register both.

    Returns model key -> ``models:/`` URI, model key -> fitted estimator, and the feature rows
    (for the prediction check).
    """
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
    return uris, estimators, x


def download_model(uri: str, tracking_uri: str, dst: Path) -> Path:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))


def export_joblib(model_dir: Path, dst: Path) -> Path:
    """The registered model's estimator as ``model.joblib``, the file MLServer and KServe load."""
    import joblib
    import mlflow.sklearn

    dst.mkdir(parents=True, exist_ok=True)
    joblib.dump(_numpy_ready(mlflow.sklearn.load_model(str(model_dir))), dst / "model.joblib")
    return dst / "model.joblib"


def _numpy_ready(estimator: Any) -> Any:
    """The estimator without its fitted column names, as if trained on an array.

    Fitted on a DataFrame, scikit-learn warns on every call with an array ("X does not have
    valid feature names"), which costs each server that passes arrays a warning per request;
    our server drops the names at load time, and so it is done here for the floor and peers.
    """
    from mlops_operator.serving.served_model import _drop_fitted_feature_names

    _drop_fitted_feature_names(estimator)
    return estimator


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

    model = _numpy_ready(mlflow.sklearn.load_model(model_dir))

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


# --------------------------------------------------------------------------- peers

#: KServe: a minimal ``kserve.Model`` as KServe's sklearn server is (load a joblib file,
#: ``get_predict_input`` -> ``predict`` -> ``get_predict_response``), run by the kserve venv.
KSERVE_SERVER = """
import sys

import joblib
import kserve
from kserve.utils.utils import get_predict_input, get_predict_response


class SKLearnModel(kserve.Model):
    def __init__(self, name, path):
        super().__init__(name)
        self.path = path
        self.load()

    def load(self):
        self._model = joblib.load(self.path)
        self.ready = True
        return self.ready

    def predict(self, payload, headers=None):
        result = self._model.predict(get_predict_input(payload))
        return get_predict_response(payload, result, self.name)


if __name__ == "__main__":
    name, path, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    kserve.ModelServer(http_port=port, enable_grpc=False, enable_latency_logging=False).start(
        [SKLearnModel(name, path)]
    )
"""


def peer_python(peers_dir: Path, peer: str) -> Path:
    """The Python of ``peer``'s own virtual environment, created and installed on first use."""
    venv = peers_dir / peer
    python = venv / "bin" / "python"
    sklearn = importlib.metadata.version("scikit-learn")
    wanted = [*PEER_ENVS[peer], f"scikit-learn=={sklearn}"]
    stamp = venv / ".installed"
    if python.exists() and stamp.exists() and stamp.read_text() == "\n".join(wanted):
        return python
    print(f"bench: creating the {peer} environment in {venv} (one time)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *wanted], check=True, timeout=1800)
    stamp.write_text("\n".join(wanted))
    return python


def peer_versions(peers_dir: Path) -> list[tuple[str, str]]:
    facts = []
    for peer, packages in PEER_PACKAGES.items():
        python = peers_dir / peer / "bin" / "python"
        for package in packages:
            version = "not installed"
            if python.exists():
                done = subprocess.run(
                    [str(python), "-c", f"import importlib.metadata as m; print(m.version({package!r}))"],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                version = done.stdout.strip() or version
            facts.append((f"{package} ({peer} venv)", version))
    return facts


def mlserver_settings(model_file: Path, name: str, batched: bool) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "name": name,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": str(model_file), "version": "1"},
    }
    if batched:
        settings["max_batch_size"] = MLSERVER_BATCH_ROWS
        settings["max_batch_time"] = MLSERVER_BATCH_TIME_S
    return settings


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


def stop(process: subprocess.Popen[bytes]) -> None:
    # Each server started its own session: stop exactly that process group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def load(
    target: Target,
    url: str,
    connections: int,
    duration: float,
    script: Path,
    core: int | None,
    warm_up: bool = True,
) -> Result:
    threads = min(connections, 2)
    base = ["wrk", f"-t{threads}", f"-c{connections}", "--latency", "-s", str(script), url]
    if warm_up:
        subprocess.run(
            pin(core, [*base[:4], "-d1s", *base[4:]]), capture_output=True, check=False, timeout=60
        )
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


# --------------------------------------------------------------------------- requests and answers


def row_body(protocol: str, row: Sequence[float], model_name: str = "") -> str:
    """One row as ``protocol`` expects it."""
    values = [float(v) for v in row]
    if protocol == "mlflow":
        columns = [f"f{i}" for i in range(N_FEATURES)]
        return json.dumps({"dataframe_split": {"columns": columns, "data": [values]}})
    if protocol == "v2":
        tensor = {"name": "input-0", "shape": [1, len(values)], "datatype": "FP64", "data": values}
        return json.dumps({"inputs": [tensor]})
    if protocol == "kserve":
        return json.dumps({"instances": [values]})
    return json.dumps({"features": values})


def read_label(protocol: str, answer: Any) -> Any:
    """The predicted label in an answer of ``protocol``."""
    if protocol == "v2":
        output = next(o for o in answer["outputs"] if o["name"] == "predict")
        return output["data"][0]
    if protocol in ("mlflow", "kserve"):
        return answer["predictions"][0]
    return answer["prediction"]


def check_predictions(target: Target, base_url: str, rows: Any, expected: Sequence[Any]) -> str | None:
    """None when the server's labels equal scikit-learn's on ``rows``, else what differs."""
    for i, row in enumerate(rows):
        body = row_body(target.protocol, row).encode()
        request = urllib.request.Request(
            base_url + target.path, data=body, headers={"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                label = read_label(target.protocol, json.loads(response.read()))
        except (urllib.error.URLError, KeyError, IndexError, StopIteration, ValueError) as exc:
            return f"row {i}: {type(exc).__name__}: {exc}"
        if label != expected[i]:
            return f"row {i}: predicted {label!r}, scikit-learn says {expected[i]!r}"
    return None


# --------------------------------------------------------------------------- plan


REPO = Path(__file__).resolve().parent.parent
PORT = "{port}"  # replaced by a fresh free port when the target starts
WORKDIR = "{workdir}"  # replaced by the target's own directory


def plan(
    uris: dict[str, str],
    model_dirs: dict[str, Path],
    joblibs: dict[str, Path],
    peers: dict[str, Path],
    quick: bool,
) -> list[Target]:
    python = sys.executable
    cli = str(Path(python).parent / "mlops-operator")
    serve = [cli, "serve", "--host", "127.0.0.1", "--port", PORT]
    bench_row = [round(0.1 * ((i * 7) % 13) - 0.6, 3) for i in range(N_FEATURES)]
    targets = []
    for model, uri in uris.items():
        name = f"bench-{model}"
        ours_body = row_body("ours", bench_row)
        v2_body = row_body("v2", bench_row)
        v2_path = f"/v2/models/{name}/infer"
        variants: list[tuple[str, str, list[str], dict[str, str]]] = [
            ("uvicorn", "ours uvicorn", [], {}),
            ("uvicorn-nomon", "ours uvicorn, monitoring off", ["--no-monitoring"], {}),
        ]
        if not quick:
            variants += [
                ("bentoml", "ours BentoML", [], {}),
                ("bentoml-nomon", "ours BentoML, monitoring off", ["--no-monitoring"], {}),
            ]
        if model == "rf":
            variants += [
                ("uvicorn-unbatched", "ours uvicorn, batching off", ["--max-batch-size", "1"], {}),
                (
                    "uvicorn-sklearn",
                    "ours uvicorn, scikit-learn's predict_proba",
                    [],
                    {"MLOPS_SERVE_FOREST_FAST_PATH": "0"},
                ),
                (
                    "uvicorn-sklearn-greedy",
                    "ours uvicorn, scikit-learn's predict_proba, greedy batching (window 1 us)",
                    ["--max-batch-wait-ms", "0.001"],
                    {"MLOPS_SERVE_FOREST_FAST_PATH": "0"},
                ),
            ]
        for key, label, extra, env in variants:
            runtime = "bentoml" if key.startswith("bentoml") else "uvicorn"
            command = [*serve, "--model-uri", uri, "--runtime", runtime, *extra]
            targets.append(
                Target(
                    f"{model}/{key}", model, label, command, "/predict", ours_body, "/v2/health/ready", env
                )
            )
            if key == "uvicorn":
                targets.append(
                    Target(
                        f"{model}/uvicorn-v2",
                        model,
                        "ours uvicorn, OIP v2 /infer",
                        command,
                        v2_path,
                        v2_body,
                        "/v2/health/ready",
                        env,
                        protocol="v2",
                    )
                )
        mlflow_serve = [python, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local"]
        targets.append(
            Target(
                f"{model}/mlflow",
                model,
                "mlflow models serve",
                [*mlflow_serve, "-h", "127.0.0.1", "-p", PORT, "-w", "1"],
                "/invocations",
                row_body("mlflow", bench_row),
                "/ping",
                protocol="mlflow",
            )
        )
        if "mlserver" in peers:
            # parallel_workers 1 (as shipped: inference in a worker process) and 0 (in the
            # HTTP process, no inter-process hop: faster on a single core).
            for suffix, batched, workers in (
                ("", False, 1),
                ("-batched", True, 1),
                ("-batched-inproc", True, 0),
            ):
                settings = {
                    "debug": False,  # access log off
                    "host": "127.0.0.1",
                    "http_port": PORT,
                    "grpc_port": "{port2}",
                    "metrics_port": "{port3}",
                    "parallel_workers": workers,
                }
                model_settings = mlserver_settings(joblibs[model], name, batched)
                config = json.dumps({"settings.json": settings, "model-settings.json": model_settings})
                label = "MLServer (sklearn runtime)"
                if batched:
                    label += f", adaptive batching {MLSERVER_BATCH_ROWS} rows / {MLSERVER_BATCH_TIME_S * 1000:g} ms"
                if workers == 0:
                    label += ", parallel_workers 0"
                targets.append(
                    Target(
                        f"{model}/mlserver{suffix}",
                        model,
                        label,
                        [str(peers["mlserver"].parent / "mlserver"), "start", WORKDIR],
                        v2_path,
                        v2_body,
                        "/v2/health/ready",
                        protocol="v2",
                        config=config,
                    )
                )
        if "kserve" in peers:
            targets.append(
                Target(
                    f"{model}/kserve",
                    model,
                    "KServe model server (kserve.Model, v1 protocol)",
                    [str(peers["kserve"]), f"{WORKDIR}/kserve_server.py", name, str(joblibs[model]), PORT],
                    f"/v1/models/{name}:predict",
                    row_body("kserve", bench_row),
                    f"/v1/models/{name}",
                    protocol="kserve",
                    config=json.dumps({"kserve_server.py": KSERVE_SERVER}),
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


def machine_facts(peers_dir: Path) -> list[tuple[str, str]]:
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
    facts += peer_versions(peers_dir)
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    facts.append(("wrk", (wrk.stdout or wrk.stderr).splitlines()[0] if (wrk.stdout or wrk.stderr) else "?"))
    return facts


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.2f}"


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _runs(results: Sequence[Result], key: str, connections: int) -> list[Result]:
    return [r for r in results if r.target.key == key and r.connections == connections and r.rps]


def summary(results: Sequence[Result], key: str, connections: int) -> Result | None:
    """Median req/s, p50 and p99 over the rounds of one target at one concurrency."""
    runs = _runs(results, key, connections)
    if not runs:
        return None
    return Result(
        runs[0].target,
        connections,
        _median([r.rps for r in runs]),
        _median([r.p50_s for r in runs]),
        _median([r.p99_s for r in runs]),
        sum(r.errors for r in runs),
        max(r.load1 for r in runs),
    )


def paired_ratio(
    results: Sequence[Result], a: str, b: str, connections: int, value: Callable[[Result, Result], float]
) -> tuple[float | None, list[float]]:
    """Median over rounds of ``value(a, b)`` taken within each round (and the per-round values)."""
    per_round = []
    for ra in _runs(results, a, connections):
        rb = next((r for r in _runs(results, b, connections) if r.round == ra.round), None)
        if rb is not None:
            per_round.append(value(ra, rb))
    return _median(per_round), per_round


def _rps_ratio(a: Result, b: Result) -> float:
    return (a.rps or 0.0) / (b.rps or 1.0)


def ratios(results: Sequence[Result]) -> list[str]:
    lines = []

    def fmt(value: float | None, target: float | None, rounds: list[float], higher: bool = True) -> str:
        if value is None:
            return "n/a"
        spread = f" [{', '.join(f'{v:.2f}' for v in rounds)}]" if len(rounds) > 1 else ""
        if target is None:
            return f"{value:.2f}{spread}"
        ok = value >= target if higher else value <= target
        return f"{value:.2f}{spread} ({'meets' if ok else 'misses'} {'>=' if higher else '<='} {target:g})"

    def p99s(a: str, b: str, c: int) -> str:
        sa, sb = summary(results, a, c), summary(results, b, c)
        if not sa or not sb or sa.p99_s is None or sb.p99_s is None:
            return ""
        return (
            f"p99 {_ms(sa.p99_s)} vs {_ms(sb.p99_s)} ms ({'lower' if sa.p99_s < sb.p99_s else 'NOT lower'})"
        )

    peers = ("mlflow", "mlserver", "mlserver-batched", "mlserver-batched-inproc", "kserve")
    for model in ("lr", "rf"):
        for peer in peers:
            for c in CONNECTIONS:
                ratio, rounds = paired_ratio(results, f"{model}/uvicorn", f"{model}/{peer}", c, _rps_ratio)
                if ratio is None:
                    continue
                target: float | None = None
                if model == "lr" and c == 16:
                    target = TARGET_VS_PEER_LR
                elif model == "rf" and peer.startswith("mlserver-batched") and c in (16, 64):
                    target = TARGET_VS_BATCHED_PEER_RF
                lines.append(
                    f"| {model} | ours (uvicorn) / {peer}, c={c} | {fmt(ratio, target, rounds)} "
                    f"| {p99s(f'{model}/uvicorn', f'{model}/{peer}', c)} |"
                )
    for other in ("mlserver-batched", "mlserver-batched-inproc", "uvicorn-sklearn-greedy"):
        for c in CONNECTIONS:
            ratio, rounds = paired_ratio(results, "rf/uvicorn-sklearn", f"rf/{other}", c, _rps_ratio)
            if ratio is not None:
                lines.append(
                    f"| rf | ours adaptive, scikit-learn's predict_proba / {other}, c={c} "
                    f"| {fmt(ratio, None, rounds)} | same cost per call: batcher against batcher; "
                    f"{p99s('rf/uvicorn-sklearn', f'rf/{other}', c)} |"
                )
    for model in ("lr", "rf"):
        for c in CONNECTIONS:
            ratio, rounds = paired_ratio(results, f"{model}/uvicorn-v2", f"{model}/uvicorn", c, _rps_ratio)
            if ratio is not None:
                lines.append(
                    f"| {model} | ours v2 /infer / ours /predict, c={c} "
                    f"| {fmt(ratio, TARGET_V2_VS_PREDICT, rounds)} "
                    f"| {p99s(f'{model}/uvicorn-v2', f'{model}/uvicorn', c)} |"
                )
    for c in CONNECTIONS:
        ratio, rounds = paired_ratio(results, "lr/uvicorn", "lr/floor", c, _rps_ratio)
        if ratio is not None:
            lines.append(
                f"| lr | ours (uvicorn) / floor, c={c} | {fmt(ratio, TARGET_VS_FLOOR_LR, rounds)} | |"
            )
    for c in CONNECTIONS:
        ratio, rounds = paired_ratio(results, "rf/uvicorn", "rf/uvicorn-unbatched", c, _rps_ratio)
        if ratio is not None:
            lines.append(
                f"| rf | batched / unbatched, c={c} | {fmt(ratio, None, rounds)} "
                f"| {p99s('rf/uvicorn', 'rf/uvicorn-unbatched', c)} |"
            )
    for model in ("lr", "rf"):
        for runtime in ("uvicorn", "bentoml"):
            for c in CONNECTIONS:
                cost, rounds = paired_ratio(
                    results,
                    f"{model}/{runtime}",
                    f"{model}/{runtime}-nomon",
                    c,
                    lambda a, b: 1 - _rps_ratio(a, b),
                )
                if cost is not None:
                    lines.append(
                        f"| {model} | monitoring cost ({runtime}), c={c} "
                        f"| {fmt(cost, TARGET_MONITORING_COST, rounds, higher=False)} | 1 - rps(on) / rps(off) |"
                    )
    return lines


BEGIN, END = "<!-- serving-bench: begin -->", "<!-- serving-bench: end -->"


def render(
    results: Sequence[Result],
    facts: Sequence[tuple[str, str]],
    args: argparse.Namespace,
    pinned: bool,
    problems: Sequence[str] = (),
) -> str:
    rounds = max((r.round for r in results), default=0)
    out = [
        BEGIN,
        "# Serving benchmarks",
        "",
        "Generated by `make bench` (`python -m benchmarks.serving_bench`); see that module's docstring for the method.",
        f"wrk, {args.duration:g} s per measurement (after a 1 s warm-up in the first round), {rounds} round(s): all servers of a model"
        " run at once and the measurements alternate between them, server after server, round after round;"
        " "
        + (
            "servers pinned to core 0 and wrk to core 1."
            if pinned
            else "no CPU pinning (fewer than 2 cores)."
        )
        + " The machine has 2 cores and is shared with other people's work, so single numbers are noisy:"
        " compare the ratios, which are the median of per-round ratios (each round's values in brackets),"
        " and treat differences under ~10% as noise.",
        "Request: one row of 20 floats. Before timing, every server answered 20 rows and its labels were"
        " checked against scikit-learn's `predict`. Our `/predict` answers label and probabilities; MLServer"
        " and our v2 answer the v2 tensors; KServe and `mlflow models serve` the label.",
        "req/s counts successful (2xx) answers only; `errors` are non-2xx answers (our server sheds load"
        " past `--max-inflight` with a quick 503) and socket errors, summed over rounds; latency"
        " percentiles are medians over rounds and include those quick answers. load1 is the highest"
        " 1-minute load average seen at the start of a measurement.",
        "",
        "## Machine",
        "",
        "| fact | value |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in facts],
        "",
    ]
    if problems:
        out += ["## Not measured", "", *[f"- {p}" for p in problems], ""]
    out += [
        "## Results",
        "",
        "| model | server | conns | req/s | p50 ms | p99 ms | errors | load1 | req/s per round |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    seen: list[str] = []
    for r in results:
        if r.target.key not in seen:
            seen.append(r.target.key)
    for key in seen:
        for c in CONNECTIONS:
            s = summary(results, key, c)
            runs = [r for r in results if r.target.key == key and r.connections == c]
            if not runs:
                continue
            per_round = ", ".join("n/a" if r.rps is None else f"{r.rps:,.0f}" for r in runs)
            notes = "; ".join(sorted({r.note for r in runs if r.note}))
            t = runs[0].target
            if s is None:
                out.append(f"| {t.model} | {t.label} | {c} | n/a | | | | | {notes} |")
                continue
            out.append(
                f"| {t.model} | {t.label} | {c} | {s.rps:,.0f} | {_ms(s.p50_s)} | {_ms(s.p99_s)} "
                f"| {s.errors} | {s.load1:.2f} | {per_round} |"
            )
    out += [
        "",
        "## Against the targets",
        "",
        "| model | ratio | value | detail |",
        "| --- | --- | --- | --- |",
        *ratios(results),
        END,
        "",
    ]
    return "\n".join(out)


def write_section(path: Path, section: str) -> None:
    """Replace the serving section of ``path`` (between its markers), keeping everything else.

    A file from before the markers starts with the serving section and goes on with other
    sections (``## Rollouts``): the old serving part is what precedes the first of those.
    """
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        before, _, rest = text.partition(BEGIN)
        _, _, after = rest.partition(END)
        text = before + section.rstrip("\n") + after
    elif text.startswith("# Serving benchmarks"):
        others = [
            m.start() for m in re.finditer(r"^## (?!Machine$|Results$|Against the targets$)", text, re.M)
        ]
        text = section + ("\n" + text[others[0] :] if others else "")
    else:
        text = section + ("\n" + text if text else "")
    path.write_text(text)


# --------------------------------------------------------------------------- main


@dataclasses.dataclass
class Running:
    target: Target
    process: subprocess.Popen[bytes]
    url: str
    script: Path


def start(target: Target, workdir: Path, env: dict[str, str], core: int | None) -> tuple[Running, Path]:
    ports = [free_port() for _ in range(3)]
    own = workdir / target.key.replace("/", "-")
    own.mkdir(parents=True, exist_ok=True)

    def fill(text: str) -> str:
        return (
            text.replace(PORT, str(ports[0]))
            .replace("{port2}", str(ports[1]))
            .replace("{port3}", str(ports[2]))
            .replace(WORKDIR, str(own))
        )

    if target.config:
        for name, content in json.loads(target.config).items():
            text = content if isinstance(content, str) else json.dumps(content)
            # Ports are integers in MLServer's settings.
            text = re.sub(r'"(\{port\d?\})"', r"\1", text)
            (own / name).write_text(fill(text))
    command = [fill(part) for part in target.command]
    log = own / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            pin(core, command),
            env={**env, **target.env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=own,
        )
    return Running(target, process, f"http://127.0.0.1:{ports[0]}", own / "wrk.lua"), log


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
        # `mlflow models serve` runs `uvicorn` from PATH: ours, from this environment.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        # Servers run in their own directories; the floor is `python -m benchmarks.serving_bench`.
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
    }
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    problems: list[str] = []
    peers_dir = Path(args.peers_dir).expanduser()
    peers: dict[str, Path] = {}
    for peer in PEER_ENVS if not args.no_peers else ():
        try:
            peers[peer] = peer_python(peers_dir, peer)
        except (subprocess.SubprocessError, OSError) as exc:
            problems.append(f"{peer}: its environment could not be installed ({exc})")
    print(f"bench: registering models in {workdir}", file=sys.stderr)
    uris, estimators, x = register_models(workdir, tracking_uri)
    model_dirs = {
        key: download_model(uri, tracking_uri, workdir / f"floor-{key}") for key, uri in uris.items()
    }
    joblibs = {key: export_joblib(model_dirs[key], workdir / f"joblib-{key}") for key in uris}
    check_rows = x[:: len(x) // CHECK_ROWS][:CHECK_ROWS]
    results: list[Result] = []
    selected = set(args.only.split(",")) if args.only else None
    targets = [
        t
        for t in plan(uris, model_dirs, joblibs, peers, args.quick)
        if selected is None or t.key in selected or t.model in selected
    ]
    for model in uris:
        group = [t for t in targets if t.model == model]
        expected = estimators[model].predict(check_rows).tolist()
        processes: dict[tuple[Any, ...], tuple[Running, Path]] = {}
        try:
            ready: list[Running] = []
            for target in group:
                # Targets that differ only in path (/predict, v2) share one server process.
                shared = (*target.command, *sorted(target.env.items()), target.config)
                if shared not in processes:
                    print(f"bench: starting {target.key}", file=sys.stderr)
                    processes[shared] = start(target, workdir, env, server_core)
                running, log = processes[shared]
                run = Running(target, running.process, running.url, running.script)
                run.script = log.parent / f"wrk-{target.key.replace('/', '-')}.lua"
                run.script.write_text(WRK_SCRIPT.format(body=json.dumps(target.body)))
                # One at a time: a server calibrates its model while it loads, and must not
                # measure while the next ones start on the same core.
                try:
                    wait_ready(run.url + target.health, run.process, timeout=240)
                except (RuntimeError, TimeoutError) as exc:
                    tail = log.read_text(errors="replace")[-300:].replace("\n", " ").replace("|", "/")
                    problems.append(f"{target.key} ({target.label}): {exc}: {tail}")
                    continue
                if (wrong := check_predictions(target, run.url, check_rows, expected)) is not None:
                    problems.append(f"{target.key} ({target.label}): predictions checked: {wrong}")
                    continue
                ready.append(run)
            print(f"bench: {model}: {len(ready)} targets ready and checked", file=sys.stderr)
            for round_ in range(1, args.rounds + 1):
                for c in CONNECTIONS:
                    for run in ready:
                        # The servers stay up between rounds: one warm-up (the first round) is enough.
                        result = load(
                            run.target,
                            run.url + run.target.path,
                            c,
                            args.duration,
                            run.script,
                            client_core,
                            warm_up=round_ == 1,
                        )
                        result.round = round_
                        results.append(result)
                        print(
                            f"bench: round {round_} {run.target.key} c={c} {result.rps or 0:,.0f} req/s"
                            f" p50 {_ms(result.p50_s)} ms p99 {_ms(result.p99_s)} ms errors {result.errors}",
                            file=sys.stderr,
                        )
        finally:
            for running, _ in processes.values():
                stop(running.process)
    write_section(Path(args.output), render(results, machine_facts(peers_dir), args, pinned, problems))
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
    parser.add_argument(
        "--output", default="BENCHMARKS.md", help="markdown file whose serving section to write"
    )
    parser.add_argument("--duration", type=float, default=2.0, help="seconds measured per run (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all servers (default 3)")
    parser.add_argument("--quick", action="store_true", help="skip the BentoML runtime (a faster smoke run)")
    parser.add_argument("--no-peers", action="store_true", help="skip MLServer and KServe (no venvs)")
    parser.add_argument(
        "--peers-dir",
        default="~/.cache/mlops-bench",
        help="where the peers' virtual environments live (created on first use)",
    )
    parser.add_argument(
        "--only", help="comma-separated target keys or models, e.g. lr/uvicorn,lr/floor or rf"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, MLflow store)")
    return bench(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
