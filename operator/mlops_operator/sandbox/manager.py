"""``sandbox up/down/status``: the sandbox's processes, started in order and stopped for good.

``up`` starts, each in its own session (so a component's children go with it): the emulated API
server, the runtime, MLflow and the operator; waits for each to be ready; records pids (with
their start times, see :mod:`processes`), ports and URLs in ``DIR/state.json``; and returns,
leaving them running. ``down`` stops exactly what ``state.json`` lists, in reverse order, then
any pod process the runtime recorded and did not get to stop. Everything a component prints
goes to ``DIR/logs/<component>.log``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import httpx

from mlops_operator.sandbox.images import bin_dir
from mlops_operator.sandbox.mlflow_server import MlflowServer, StartupError, check_port_free, free_port
from mlops_operator.sandbox.processes import is_alive, read_pidfile, start_time, stop_group

COMPONENTS = ("apiserver", "runtime", "mlflow", "operator")
STOP_ORDER = ("operator", "runtime", "mlflow", "apiserver")  # the runtime stops pods while the API is up
GRACE_SECONDS = {"operator": 10.0, "runtime": 20.0, "mlflow": 10.0, "apiserver": 5.0}


@dataclasses.dataclass
class Options:
    directory: Path
    crds: Path | None = None
    mlflow: bool = True
    operator: bool = True
    api_port: int = 0
    mlflow_port: int = 0
    timeout: float = 120.0


@dataclasses.dataclass
class Component:
    name: str
    pid: int
    started: int | None
    log: str
    url: str = ""

    def alive(self) -> bool:
        return is_alive(self.pid, self.started)


class SandboxError(Exception):
    """An error for the user: printed as is, no traceback."""


def default_crds(directory: Path) -> Path:
    """The CRDs generated from the installed package's models, written to ``DIR/crds``.

    The same bytes as the repository's ``crds/`` (a test keeps those equal), but available
    wherever the package is installed, checkout or not.
    """
    from mlops_operator.api.crdgen import generate

    target = directory / "crds"
    target.mkdir(parents=True, exist_ok=True)
    for name, text in generate().items():
        (target / name).write_text(text)
    return target


def state_path(directory: Path) -> Path:
    return directory / "state.json"


def read_state(directory: Path) -> dict[str, Any]:
    try:
        state: dict[str, Any] = json.loads(state_path(directory).read_text())
        return state
    except (OSError, ValueError):
        return {}


def components(state: dict[str, Any]) -> list[Component]:
    return [Component(**entry) for entry in state.get("components", [])]


def _write_state(directory: Path, state: dict[str, Any]) -> None:
    tmp = state_path(directory).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, state_path(directory))


class Progress:
    """One line per component on stderr: ``✓ name  detail  (1.2s)``."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def step(self, name: str, action: Callable[[], str]) -> str:
        started = time.monotonic()
        # On a terminal the pending line is rewritten in place; in a log file only outcomes appear.
        live = self.out.isatty()
        if live:
            self.out.write(f"  … {name:<10}")
            self.out.flush()
        prefix = "\r" if live else ""
        try:
            detail = action()
        except Exception:
            self.out.write(f"{prefix}  ✗ {name:<10} failed after {time.monotonic() - started:.1f}s\n")
            self.out.flush()
            raise
        self.out.write(f"{prefix}  ✓ {name:<10} {detail}  ({time.monotonic() - started:.1f}s)\n")
        self.out.flush()
        return detail


def _python(*module_args: str) -> list[str]:
    return [sys.executable, "-m", *module_args]


def apiserver_command(host: str, port: int, crds: Path | None, url_file: Path) -> list[str]:
    command = _python(
        "mlops_operator.sandbox.apiserver", "--host", host, "--port", str(port), "--url-file", str(url_file)
    )
    return [*command, "--crds", str(crds)] if crds else command


def runtime_command(server: str, directory: Path, ready_file: Path) -> list[str]:
    return _python(
        "mlops_operator.sandbox.runtime",
        "--server",
        server,
        "--dir",
        str(directory),
        "--ready-file",
        str(ready_file),
    )


def operator_command() -> list[str]:
    """``mlops-operator run -A``, or ``$MLOPS_SANDBOX_OPERATOR_COMMAND`` (e.g. to add ``--verbose``)."""
    override = os.environ.get("MLOPS_SANDBOX_OPERATOR_COMMAND")
    if override:
        return shlex.split(override)
    return [os.path.join(bin_dir(), "mlops-operator"), "run", "--all-namespaces"]


def _spawn(command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, **(env or {})},
        )  # fmt: skip


def _log_tail(log: Path, size: int = 1500) -> str:
    try:
        return log.read_text(errors="replace")[-size:].strip()
    except OSError:
        return ""


def _wait(
    name: str, process: subprocess.Popen[bytes], log: Path, ready: Callable[[], str | None], timeout: float
) -> str:
    """Wait until ``ready()`` returns a value; fail with the log's tail if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        if process.poll() is not None:
            raise StartupError(
                f"{name} exited with code {process.returncode}; the end of {log}:\n{_log_tail(log)}"
            )
        time.sleep(0.1)
    raise StartupError(f"{name} was not ready within {timeout:g}s; the end of {log}:\n{_log_tail(log)}")


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def running_components(directory: Path) -> list[Component]:
    return [component for component in components(read_state(directory)) if component.alive()]


def up(options: Options, err: TextIO = sys.stderr) -> dict[str, Any]:
    """Start the sandbox in ``options.directory``; return its state. Raises SandboxError/StartupError."""
    directory = options.directory.resolve()
    if running_components(directory):
        raise SandboxError(
            f"the sandbox in {directory} is already running (`mlops-operator sandbox down --dir {directory}`)"
        )
    directory.mkdir(parents=True, exist_ok=True)
    _stop_leftover_pods(directory)
    for stale in ("run/apiserver.url", "run/runtime.ready"):
        (directory / stale).unlink(missing_ok=True)
    if options.api_port:
        check_port_free("127.0.0.1", options.api_port)
    if options.mlflow and options.mlflow_port:
        check_port_free("127.0.0.1", options.mlflow_port)
    crds = options.crds or default_crds(directory)
    logs = directory / "logs"
    state: dict[str, Any] = {
        "directory": str(directory),
        "components": [],
        "kubeconfig": str(directory / "kubeconfig"),
    }
    progress = Progress(err)

    def record(name: str, process: subprocess.Popen[bytes], log: Path, url: str = "") -> None:
        entry = Component(name, process.pid, start_time(process.pid), str(log), url)
        state["components"].append(dataclasses.asdict(entry))
        _write_state(directory, state)

    err.write(f"Starting the sandbox in {directory}\n")
    try:
        url_file = directory / "run" / "apiserver.url"
        url_file.parent.mkdir(parents=True, exist_ok=True)

        def start_apiserver() -> str:
            log = logs / "apiserver.log"
            process = _spawn(apiserver_command("127.0.0.1", options.api_port, crds, url_file), log)
            record("apiserver", process, log)
            url = _wait("the API server", process, log, lambda: _read(url_file), options.timeout)
            state["components"][-1]["url"] = url
            state["server"] = url
            from mlops_operator.sandbox.apiserver import write_kubeconfig

            write_kubeconfig(directory / "kubeconfig", url)
            _write_state(directory, state)
            return url

        server = progress.step("apiserver", start_apiserver)

        def start_runtime() -> str:
            log = logs / "runtime.log"
            ready_file = directory / "run" / "runtime.ready"
            process = _spawn(runtime_command(server, directory, ready_file), log)
            record("runtime", process, log)
            _wait(
                "the runtime", process, log, lambda: "ready" if ready_file.exists() else None, options.timeout
            )
            return ready_file.read_text().strip()  # the runtime's network: "pods on 127.K.0.2-254, ..."

        progress.step("runtime", start_runtime)

        if options.mlflow:

            def start_mlflow() -> str:
                log = logs / "mlflow.log"
                mlflow = MlflowServer(directory / "mlflow", port=options.mlflow_port)
                process = mlflow.start(log)
                record("mlflow", process, log, mlflow.url)
                _wait(
                    "mlflow",
                    process,
                    log,
                    lambda: mlflow.url if _http_ok(f"{mlflow.url}/health") else None,
                    options.timeout,
                )
                state["mlflow_uri"] = mlflow.url
                _write_state(directory, state)
                return mlflow.url

            progress.step("mlflow", start_mlflow)

        if options.operator:

            def start_operator() -> str:
                log = logs / "operator.log"
                liveness, metrics = free_port(), free_port()
                env = {
                    "KUBECONFIG": str(directory / "kubeconfig"),
                    "MLOPS_METRICS_PORT": str(metrics),
                    "MLOPS_LIVENESS_PORT": str(liveness),
                    "MLOPS_MLFLOW_TRACKING_URI": state.get("mlflow_uri", ""),
                    # Interactive use wants status that follows within seconds, not the
                    # cluster default of 30 s; an explicit setting still wins.
                    "MLOPS_RECONCILE_INTERVAL": os.environ.get("MLOPS_RECONCILE_INTERVAL", "5"),
                }
                if not options.mlflow:
                    env.pop("MLOPS_MLFLOW_TRACKING_URI")
                process = _spawn(operator_command(), log, env)
                record("operator", process, log, f"http://127.0.0.1:{metrics}/metrics")
                health = f"http://127.0.0.1:{liveness}/healthz"
                _wait(
                    "the operator",
                    process,
                    log,
                    lambda: health if _http_ok(health) else None,
                    options.timeout,
                )
                return f"metrics http://127.0.0.1:{metrics}/metrics"

            progress.step("operator", start_operator)
    except BaseException:
        # Leave nothing half-started behind: a failed `up` stops what it started.
        down(directory, err=open(os.devnull, "w"))  # noqa: SIM115 - closed with the process
        raise
    err.write(f"Ready. export KUBECONFIG={directory / 'kubeconfig'}\n")
    return state


def _read(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return text or None


def _stop_leftover_pods(directory: Path) -> int:
    """Stop pod processes a runtime recorded but did not stop (it was killed, or crashed)."""
    stopped = 0
    for pidfile in sorted((directory / "run" / "pods").glob("*.pid")):
        record = read_pidfile(pidfile)
        if record is not None and stop_group(record[0], record[1], grace=2.0):
            stopped += 1
        pidfile.unlink(missing_ok=True)
    return stopped


def down(directory: Path, err: TextIO = sys.stderr) -> bool:
    """Stop every process of the sandbox in ``directory``; False if nothing was running."""
    directory = directory.resolve()
    listed = {component.name: component for component in components(read_state(directory))}
    anything = False
    for name in STOP_ORDER:
        component = listed.get(name)
        if component is None:
            continue
        alive = component.alive()
        if stop_group(component.pid, component.started, GRACE_SECONDS[name]) or alive:
            anything = True
            err.write(f"  ✓ stopped {name} (pid {component.pid})\n")
    leftovers = _stop_leftover_pods(directory)
    if leftovers:
        anything = True
        err.write(f"  ✓ stopped {leftovers} leftover pod process(es)\n")
    if state_path(directory).exists():
        state = read_state(directory)
        state["components"] = []
        state["stopped"] = True
        _write_state(directory, state)
    return anything


def status(directory: Path) -> list[tuple[Component, bool]]:
    return [(component, component.alive()) for component in components(read_state(directory.resolve()))]
