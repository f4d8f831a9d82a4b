"""The sandbox's embedded MLflow: a real ``mlflow server`` with a SQLite store and local artifacts.

It serves artifacts itself (``--serve-artifacts``), so pods and the operator need nothing but its
URL. One worker is enough for a sandbox and spares the shared CPUs. MLflow 3's security middleware
checks the Host header: clients reach it as ``127.0.0.1:PORT``, which ``--allowed-hosts`` admits.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import time
from pathlib import Path

import httpx

from mlops_operator.sandbox.images import bin_dir


class StartupError(Exception):
    """A component did not become ready; the message says why (and where its log is)."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_port_free(host: str, port: int) -> None:
    """Raise StartupError naming the port if something already listens there."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As servers bind (uvicorn sets SO_REUSEADDR): connections of a stopped server that
        # linger in TIME_WAIT do not keep it from starting again on its port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise StartupError(f"port {port} on {host} is not available: {exc.strerror}") from None


@dataclasses.dataclass
class MlflowServer:
    directory: Path  # holds mlflow.db and artifacts/
    host: str = "127.0.0.1"
    port: int = 0
    workers: int = 1
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        return [
            os.path.join(bin_dir(), "mlflow"), "server",
            "--host", self.host,
            "--port", str(self.port),
            "--workers", str(self.workers),
            "--backend-store-uri", f"sqlite:///{(self.directory / 'mlflow.db').resolve()}",
            "--artifacts-destination", str((self.directory / "artifacts").resolve()),
            "--serve-artifacts",
            "--allowed-hosts", f"{self.host},{self.host}:*,localhost,localhost:*",
        ]  # fmt: skip

    def start(self, log: Path) -> subprocess.Popen[bytes]:
        if self.port == 0:
            self.port = free_port(self.host)
        else:
            check_port_free(self.host, self.port)
        (self.directory / "artifacts").mkdir(parents=True, exist_ok=True)
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PATH": f"{bin_dir()}{os.pathsep}{os.environ.get('PATH', '')}"}
        env.pop("MLFLOW_TRACKING_URI", None)
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                self.command(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env=env, cwd=self.directory,
            )  # fmt: skip
        return self.process

    def wait_ready(self, timeout: float = 90, log: Path | None = None) -> None:
        """Poll ``/health`` until it answers 200; fail early if the process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                tail = log.read_text(errors="replace")[-1500:] if log and log.exists() else ""
                raise StartupError(f"mlflow server exited with code {self.process.returncode}:\n{tail}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise StartupError(f"mlflow server did not answer {self.url}/health within {timeout:g}s (log: {log})")

    def stop(self, grace: float = 10) -> None:
        from mlops_operator.sandbox.processes import stop_group

        if self.process is not None:
            stop_group(self.process.pid, None, grace)
            self.process.wait()
