"""Running the emulated API server: in a loop, in a thread, or as a process; and its kubeconfig."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pathlib
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import aiohttp.web
import yaml

from .emulator import ApiEmulator

logger = logging.getLogger(__name__)
T = TypeVar("T")


class EmulatedApiServer:
    """An :class:`ApiEmulator` listening on a TCP port (plain HTTP, no authentication).

    It uses aiohttp's low-level ``web.Server`` with the emulator as its handler, the same wiring
    kmock's test server uses, minus kmock's client-side DNS interception (which patches aiohttp
    globally and would be unsafe in a process that also runs kopf).
    """

    def __init__(self, emulator: ApiEmulator, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.emulator = emulator
        self.host = host
        self.port = port
        self._runner: aiohttp.web.ServerRunner | None = None

    @property
    def url(self) -> str:
        if self._runner is None:
            raise RuntimeError("the server is not running")
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        # handler_cancellation: a client closing a watch must end its stream handler too.
        low_level = aiohttp.web.Server(self.emulator, handler_cancellation=True, access_log=None)
        self._runner = aiohttp.web.ServerRunner(low_level, shutdown_timeout=1.0, handle_signals=False)
        await self._runner.setup()
        site = aiohttp.web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self.emulator.address = f"{self.host}:{self.port}"
        logger.info("emulated Kubernetes API server listening on %s", self.url)

    async def stop(self) -> None:
        self.emulator.close_watches()
        await asyncio.sleep(0)  # let the watch handlers see the end of their streams
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @classmethod
    @contextlib.asynccontextmanager
    async def running(
        cls,
        host: str = "127.0.0.1",
        port: int = 0,
        crds_dir: str | pathlib.Path | None = None,
        state_file: str | pathlib.Path | None = None,
    ) -> AsyncIterator[EmulatedApiServer]:
        """Run a server for the duration of an ``async with`` block; ``port=0`` picks a free one.

        With ``state_file``, objects are loaded from it at start (if it exists) and saved to it
        at exit, so a sandbox can be stopped and resumed.
        """
        emulator = ApiEmulator(crds_dir=None)
        # Loading happens once, before serving: blocking file reads cannot stall any client yet.
        state = _read_state(state_file)
        if state is not None:
            emulator.load_state(state)
        if crds_dir is not None:
            emulator.load_crds(crds_dir)
        server = cls(emulator, host=host, port=port)
        await server.start()
        try:
            yield server
        finally:
            await server.stop()
            if state_file is not None:
                _atomic_write(pathlib.Path(state_file), json.dumps(emulator.dump_state()))


class ApiServerThread:
    """The server in a background thread with its own event loop, for synchronous code and tests.

    ``call()`` runs a function on the server's loop, which is how other threads should touch
    the emulator (the loop serialises all writes).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        crds_dir: str | pathlib.Path | None = None,
        state_file: str | pathlib.Path | None = None,
    ) -> None:
        self._args = (host, port, crds_dir, state_file)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.server: EmulatedApiServer | None = None

    @property
    def url(self) -> str:
        if self.server is None:
            raise RuntimeError("the server thread is not running")
        return self.server.url

    @property
    def emulator(self) -> ApiEmulator:
        if self.server is None:
            raise RuntimeError("the server thread is not running")
        return self.server.emulator

    def start(self, timeout: float = 10.0) -> ApiServerThread:
        self._thread = threading.Thread(target=self._main, name="emulated-apiserver", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the emulated API server did not start in time")
        if self._error is not None:
            raise RuntimeError("the emulated API server failed to start") from self._error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Run ``fn()`` on the server's event loop and return its result."""
        if self._loop is None:
            raise RuntimeError("the server thread is not running")

        async def runner() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(runner(), self._loop).result(timeout)

    def __enter__(self) -> ApiServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to start(); a thread has nobody else to tell
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        host, port, crds_dir, state_file = self._args
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with EmulatedApiServer.running(host, port, crds_dir, state_file) as server:
            self.server = server
            self._ready.set()
            await self._stop.wait()


def write_kubeconfig(path: str | pathlib.Path, url: str, namespace: str = "default") -> pathlib.Path:
    """Write a kubeconfig for the emulated server: plain HTTP, no credentials.

    kubectl, the ``kubernetes`` client (``config.load_kube_config``) and kopf
    (``kopf.login_with_kubeconfig``) all accept it. A token-less user entry is allowed by all
    three; ``insecure-skip-tls-verify`` is not set because it is meaningless (and rejected by
    some clients) for ``http://`` servers.
    """
    config: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "mlops-sandbox", "cluster": {"server": url}}],
        "users": [{"name": "mlops-sandbox", "user": {}}],
        "contexts": [
            {
                "name": "mlops-sandbox",
                "context": {"cluster": "mlops-sandbox", "user": "mlops-sandbox", "namespace": namespace},
            }
        ],
        "current-context": "mlops-sandbox",
        "preferences": {},
    }
    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(target, yaml.safe_dump(config, sort_keys=False))
    return target


def _read_state(path: str | pathlib.Path | None) -> dict[str, Any] | None:
    if path is None or not pathlib.Path(path).exists():
        return None
    state: dict[str, Any] = json.loads(pathlib.Path(path).read_text())
    return state


def _atomic_write(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
