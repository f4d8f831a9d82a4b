"""``sandbox up/down/status``: the sandbox's processes, started in order and stopped for good.

``up`` starts, each in its own session (so a component's children go with it): the emulated API
server, the runtime, MLflow and the operator; waits for each to be ready; records pids (with
their start times, see :mod:`processes`), ports and URLs in ``DIR/state.json``; and returns,
leaving them running. ``down`` stops exactly what ``state.json`` lists, in reverse order, then
any pod process the runtime recorded and did not get to stop. Everything a component prints
goes to ``DIR/logs/<component>.log``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import signal
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
    """The CRDs the sandbox serves, written to ``DIR/crds``: ours, generated from the installed
    package's models (the same bytes as the repository's ``crds/``, a test keeps those equal,
    but available wherever the package is installed), and the Gateway API's HTTPRoute, which
    the ``GatewayAPI`` traffic router writes and the sandbox's proxy honours.
    """
    from mlops_operator.api.crdgen import generate

    target = directory / "crds"
    target.mkdir(parents=True, exist_ok=True)
    for name, text in generate().items():
        (target / name).write_text(text)
    for extra in (Path(__file__).parent / "crds").glob("*.yaml"):
        (target / extra.name).write_text(extra.read_text())
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


def apiserver_command(
    host: str, port: int, crds: Path | None, url_file: Path, token_auth_file: Path, tls_dir: Path
) -> list[str]:
    command = _python(
        "mlops_operator.sandbox.apiserver", "--host", host, "--port", str(port), "--url-file", str(url_file),
        "--token-auth-file", str(token_auth_file), "--tls-dir", str(tls_dir),
    )  # fmt: skip
    return [*command, "--crds", str(crds)] if crds else command


def runtime_command(
    server: str, directory: Path, ready_file: Path, token_file: Path, ca_file: Path
) -> list[str]:
    return _python(
        "mlops_operator.sandbox.pod_runtime", "--server", server, "--dir", str(directory),
        "--ready-file", str(ready_file), "--token-file", str(token_file), "--ca-file", str(ca_file),
    )  # fmt: skip


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
    """Start the sandbox in ``options.directory``; return its state. Raises SandboxError/StartupError.

    Each component starts only once the one before is ready, and is recorded in ``state.json``
    as soon as it is spawned: a failed ``up`` stops everything it started (via :func:`down`).
    """
    directory = options.directory.resolve()
    check_not_running(directory)
    clean_directory(directory)
    check_ports_free(options)
    crds = options.crds or default_crds(directory)
    launch = Launch(directory, options, new_state(directory))
    progress = Progress(err)
    err.write(f"Starting the sandbox in {directory}\n")
    try:
        make_credentials(launch)
        server = progress.step("apiserver", lambda: start_apiserver(launch, crds))
        progress.step("runtime", lambda: start_runtime(launch, server))
        if options.mlflow:
            progress.step("mlflow", lambda: start_mlflow(launch))
        if options.operator:
            progress.step("operator", lambda: start_operator(launch))
    except BaseException:
        # Leave nothing half-started behind: a failed `up` stops what it started.
        down(directory, err=open(os.devnull, "w"))  # noqa: SIM115 - closed with the process
        raise
    err.write(f"Ready. export KUBECONFIG={directory / 'kubeconfig'}\n")
    return launch.state


# --- the steps of `up`, in order ----------------------------------------------------------------


@dataclasses.dataclass
class Launch:
    """A sandbox being started: where, how, and the state recorded so far (saved as it grows)."""

    directory: Path
    options: Options
    state: dict[str, Any]

    @property
    def logs(self) -> Path:
        return self.directory / "logs"

    @property
    def kubeconfig(self) -> Path:
        """The user's kubeconfig: an administrator, as kind's is."""
        return self.directory / "kubeconfig"

    @property
    def operator_kubeconfig(self) -> Path:
        """The operator's: the identity the chart gives it in a cluster (its ServiceAccount)."""
        return self.directory / "operator.kubeconfig"

    @property
    def auth(self) -> Path:
        """Tokens and TLS material (mode 0600 where secret)."""
        return self.directory / "auth"

    def record(self, name: str, process: subprocess.Popen[bytes], log: Path, url: str = "") -> None:
        """List a just-spawned process in ``state.json``, before waiting for it, so `down` finds it."""
        entry = Component(name, process.pid, start_time(process.pid), str(log), url)
        self.state["components"].append(dataclasses.asdict(entry))
        self.save()

    def save(self) -> None:
        _write_state(self.directory, self.state)


def check_not_running(directory: Path) -> None:
    """``SandboxError`` if a sandbox in ``directory`` still has a live process."""
    if running_components(directory):
        raise SandboxError(
            f"the sandbox in {directory} is already running (`mlops-operator sandbox down --dir {directory}`)"
        )


def clean_directory(directory: Path) -> None:
    """Create ``directory``; stop pods a previous run left behind; remove its stale readiness files.

    The readiness files must go: a leftover URL or ready file would make the wait succeed at
    once, before the new process is up.
    """
    directory.mkdir(parents=True, exist_ok=True)
    _stop_leftover_pods(directory)
    for stale in ("run/apiserver.url", "run/runtime.ready"):
        (directory / stale).unlink(missing_ok=True)


def check_ports_free(options: Options) -> None:
    """Fail before starting anything when a fixed port is taken (0 means: pick a free one)."""
    if options.api_port:
        check_port_free("127.0.0.1", options.api_port)
    if options.mlflow and options.mlflow_port:
        check_port_free("127.0.0.1", options.mlflow_port)


def new_state(directory: Path) -> dict[str, Any]:
    """The state of a sandbox that has nothing running yet."""
    return {
        "directory": str(directory),
        "components": [],
        "kubeconfig": str(directory / "kubeconfig"),
        "operator_kubeconfig": str(directory / "operator.kubeconfig"),
    }


def make_credentials(launch: Launch) -> None:
    """Fresh tokens for the user, the operator and the runtime; the cluster CA (kept across runs).

    The API server reads the tokens as kube-apiserver reads ``--token-auth-file``; the runtime
    its own from a file; the two kubeconfigs are written once the server's URL is known.
    """
    from mlops_operator.sandbox.apiserver import sandbox_tokens, write_token_auth_file
    from mlops_operator.sandbox.apiserver.certificates import Certificates

    tokens = sandbox_tokens()
    write_token_auth_file(launch.auth / "tokens.csv", tokens)
    for role, token in tokens.items():
        path = launch.auth / f"{role}.token"
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(token)
    Certificates.load_or_generate(launch.auth / "tls")


def start_apiserver(launch: Launch, crds: Path) -> str:
    """Start the emulated API server with the CRDs; write the kubeconfigs; its URL."""
    from mlops_operator.sandbox.apiserver import write_kubeconfig

    url_file = launch.directory / "run" / "apiserver.url"
    url_file.parent.mkdir(parents=True, exist_ok=True)
    log = launch.logs / "apiserver.log"
    command = apiserver_command(
        "127.0.0.1", launch.options.api_port, crds, url_file, launch.auth / "tokens.csv", launch.auth / "tls"
    )
    process = _spawn(command, log)
    launch.record("apiserver", process, log)
    url = _wait("the API server", process, log, lambda: _read(url_file), launch.options.timeout)
    launch.state["components"][-1]["url"] = url
    launch.state["server"] = url
    ca = (launch.auth / "tls" / "ca.crt").read_bytes()
    write_kubeconfig(launch.kubeconfig, url, ca=ca, token=(launch.auth / "admin.token").read_text())
    write_kubeconfig(
        launch.operator_kubeconfig,
        url,
        ca=ca,
        token=(launch.auth / "operator.token").read_text(),
        user="mlops-operator",
    )
    launch.save()
    return url


def start_runtime(launch: Launch, server: str) -> str:
    """Start the runtime (it runs the pods) against ``server``; the network it gives pods."""
    log = launch.logs / "runtime.log"
    ready_file = launch.directory / "run" / "runtime.ready"
    command = runtime_command(
        server, launch.directory, ready_file, launch.auth / "runtime.token", launch.auth / "tls" / "ca.crt"
    )
    process = _spawn(command, log)
    launch.record("runtime", process, log)
    _wait(
        "the runtime", process, log, lambda: "ready" if ready_file.exists() else None, launch.options.timeout
    )
    return ready_file.read_text().strip()  # the runtime's network: "pods on 127.K.0.2-254, ..."


def start_mlflow(launch: Launch) -> str:
    """Start the MLflow server (SQLite and artifacts under ``DIR/mlflow``); its URL."""
    log = launch.logs / "mlflow.log"
    mlflow = MlflowServer(launch.directory / "mlflow", port=launch.options.mlflow_port)
    process = mlflow.start(log)
    launch.record("mlflow", process, log, mlflow.url)
    _wait(
        "mlflow",
        process,
        log,
        lambda: mlflow.url if _http_ok(f"{mlflow.url}/health") else None,
        launch.options.timeout,
    )
    launch.state["mlflow_uri"] = mlflow.url
    launch.save()
    return mlflow.url


def build_operator_env(
    kubeconfig: Path,
    *,
    metrics_port: int,
    liveness_port: int,
    mlflow_uri: str | None,
    reconcile_interval: str,
) -> dict[str, str]:
    """The operator's environment in the sandbox (added to this process's); no MLflow URI without MLflow."""
    env = {
        "KUBECONFIG": str(kubeconfig),
        "MLOPS_METRICS_PORT": str(metrics_port),
        "MLOPS_LIVENESS_PORT": str(liveness_port),
        "MLOPS_RECONCILE_INTERVAL": reconcile_interval,
    }
    if mlflow_uri is not None:
        env["MLOPS_MLFLOW_TRACKING_URI"] = mlflow_uri
    return env


#: Leader-election timing of the sandbox's operator (the chart's defaults are 15, 10 and 2 s).
SANDBOX_LEADER_ELECTION = {
    "MLOPS_LEADER_ELECTION_LEASE_DURATION": "4",
    "MLOPS_LEADER_ELECTION_RENEW_DEADLINE": "3",
    "MLOPS_LEADER_ELECTION_RETRY_PERIOD": "1",
}


def start_operator(launch: Launch) -> str:
    """Start the operator against the sandbox (and its MLflow, if any); where its metrics are."""
    log = launch.logs / "operator.log"
    liveness, metrics = free_port(), free_port()
    env = build_operator_env(
        launch.operator_kubeconfig,
        metrics_port=metrics,
        liveness_port=liveness,
        mlflow_uri=launch.state.get("mlflow_uri", "") if launch.options.mlflow else None,
        # Interactive use wants status that follows within seconds, not the cluster default
        # of 30 s; an explicit setting still wins.
        reconcile_interval=os.environ.get("MLOPS_RECONCILE_INTERVAL", "5"),
    )
    # Leader election stays on, as in a cluster, with short timings (one machine, one clock).
    # The sandbox's operator plays one pod's container: ``restart_operator`` (SIGKILL, then a
    # fresh process) is the kubelet restarting it, so the successor knows the Lease's holder
    # was its own dead predecessor and takes over at once, as it would in that pod.
    for name, value in SANDBOX_LEADER_ELECTION.items():
        env[name] = os.environ.get(name, value)
    env.setdefault("POD_NAME", "mlops-operator-sandbox")
    process = _spawn(operator_command(), log, env)
    launch.record("operator", process, log, f"http://127.0.0.1:{metrics}/metrics")
    health = f"http://127.0.0.1:{liveness}/healthz"
    _wait("the operator", process, log, lambda: health if _http_ok(health) else None, launch.options.timeout)
    return f"metrics http://127.0.0.1:{metrics}/metrics"


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


def restart_operator(directory: Path, *, kill: int = signal.SIGKILL, timeout: float = 60.0) -> Component:
    """Kill the sandbox's operator with ``kill`` (SIGKILL: no cleanup at all) and start it again.

    What a crashed or evicted operator pod goes through; the new process must resume every
    object from what the cluster holds.
    """
    directory = directory.resolve()
    state = read_state(directory)
    listed = {component.name: component for component in components(state)}
    old = listed.get("operator")
    if old is None or not running_components(directory):
        raise SandboxError(f"the sandbox in {directory} runs no operator")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(old.pid, kill)
    deadline = time.monotonic() + timeout
    while old.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    state["components"] = [entry for entry in state["components"] if entry["name"] != "operator"]
    launch = Launch(
        directory, Options(directory=directory, mlflow="mlflow_uri" in state, timeout=timeout), state
    )
    start_operator(launch)
    return components(launch.state)[-1]
