"""Running the emulated API server: in a loop, in a thread, or as a process; and its kubeconfig."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import pathlib
import secrets
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import aiohttp.web
import yaml

from .authentication import AuditLog, Authenticator, UserInfo
from .certificates import Certificates
from .emulator import ApiEmulator

logger = logging.getLogger(__name__)
T = TypeVar("T")


#: Who calls a sandbox's API server. The operator has the identity the chart gives it in a real
#: cluster (its ServiceAccount), so that its requests can be checked against the chart's RBAC; the
#: runtime plays kubelet and the controllers, which a real cluster lets do anything they need.
SANDBOX_IDENTITIES: dict[str, UserInfo] = {
    "admin": UserInfo.admin(),
    "operator": UserInfo.service_account("mlops-system", "mlops-operator"),
    "runtime": UserInfo("system:mlops-sandbox-runtime", ("system:masters", "system:authenticated")),
}


def sandbox_tokens() -> dict[str, str]:
    """A fresh token for each of :data:`SANDBOX_IDENTITIES`."""
    return {role: secrets.token_urlsafe(24) for role in SANDBOX_IDENTITIES}


def sandbox_authenticator(tokens: dict[str, str]) -> Authenticator:
    """An authenticator that knows the sandbox's identities by the given tokens."""
    return Authenticator({tokens[role]: user for role, user in SANDBOX_IDENTITIES.items()})


def write_token_auth_file(path: str | pathlib.Path, tokens: dict[str, str]) -> pathlib.Path:
    """kube-apiserver's ``--token-auth-file`` CSV for the sandbox's identities (mode 0600)."""
    lines = []
    for role, user in SANDBOX_IDENTITIES.items():
        groups = ",".join(g for g in user.groups if g != "system:authenticated")
        lines.append(f'{tokens[role]},{user.username},{role},"{groups}"')
    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(target, "\n".join(lines) + "\n")
    target.chmod(0o600)
    return target


def admin_authenticator() -> tuple[Authenticator, str]:
    """An authenticator knowing one fresh administrator token (system:masters), and that token."""
    token = secrets.token_urlsafe(24)
    return Authenticator({token: UserInfo.admin()}), token


class EmulatedApiServer:
    """An :class:`ApiEmulator` listening on a TCP port (plain HTTP, bearer-token authentication).

    It uses aiohttp's low-level ``web.Server`` with the emulator as its handler, the same wiring
    kmock's test server uses, minus kmock's client-side DNS interception (which patches aiohttp
    globally and would be unsafe in a process that also runs kopf).
    """

    def __init__(
        self,
        emulator: ApiEmulator,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        certificates: Certificates | None = None,
    ) -> None:
        self.emulator = emulator
        self.host = host
        self.port = port
        #: TLS, as every real API server: kubectl sends no bearer token to a plain-HTTP server.
        self.certificates = certificates if certificates is not None else Certificates.generate()
        self._runner: aiohttp.web.ServerRunner | None = None
        #: The administrator token the server made for itself (None: the caller brought tokens).
        self.admin_token: str | None = None

    @property
    def url(self) -> str:
        if self._runner is None:
            raise RuntimeError("the server is not running")
        return f"https://{self.host}:{self.port}"

    async def start(self) -> None:
        # handler_cancellation: a client closing a watch must end its stream handler too.
        low_level = aiohttp.web.Server(self.emulator, handler_cancellation=True, access_log=None)
        self._runner = aiohttp.web.ServerRunner(low_level, shutdown_timeout=1.0, handle_signals=False)
        await self._runner.setup()
        site = aiohttp.web.TCPSite(
            self._runner, self.host, self.port, ssl_context=self.certificates.server_context()
        )
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
        authenticator: Authenticator | None = None,
        audit: AuditLog | None = None,
        certificates: Certificates | None = None,
    ) -> AsyncIterator[EmulatedApiServer]:
        """Run a server for the duration of an ``async with`` block; ``port=0`` picks a free one.

        With ``state_file``, objects are loaded from it at start (if it exists) and saved to it
        at exit, so a sandbox can be stopped and resumed. Without ``authenticator``, the server
        knows one fresh administrator token, ``server.admin_token``; nobody else can call.
        """
        admin_token: str | None = None
        if authenticator is None:
            authenticator, admin_token = admin_authenticator()
        emulator = ApiEmulator(crds_dir=None, authenticator=authenticator, audit=audit)
        # Loading happens once, before serving: blocking file reads cannot stall any client yet.
        state = _read_state(state_file)
        if state is not None:
            emulator.load_state(state)
        if crds_dir is not None:
            emulator.load_crds(crds_dir)
        server = cls(emulator, host=host, port=port, certificates=certificates)
        server.admin_token = admin_token
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
        authenticator: Authenticator | None = None,
        certificates: Certificates | None = None,
    ) -> None:
        self.certificates = certificates if certificates is not None else Certificates.generate()
        if authenticator is None:
            authenticator, token = admin_authenticator()
            self.admin_token: str | None = token
        else:
            self.admin_token = None
        self.authenticator = authenticator
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
        async with EmulatedApiServer.running(
            host, port, crds_dir, state_file, authenticator=self.authenticator, certificates=self.certificates
        ) as server:
            self.server = server
            self._ready.set()
            await self._stop.wait()


def write_kubeconfig(
    path: str | pathlib.Path,
    url: str,
    namespace: str = "default",
    *,
    ca: bytes,
    token: str | None = None,
    token_file: str | pathlib.Path | None = None,
    client_certificate: tuple[bytes, bytes] | None = None,
    user: str = "mlops-sandbox",
) -> pathlib.Path:
    """Write a kubeconfig for the emulated server: its CA, and a token, token file or certificate.

    kubectl, the ``kubernetes`` client and kopf read all three. ``tokenFile`` is what a rotating
    credential looks like (the operator re-reads it on a 401).
    """
    credentials: dict[str, Any] = {}
    if token is not None:
        credentials["token"] = token
    if token_file is not None:
        credentials["tokenFile"] = str(token_file)
    if client_certificate is not None:
        credentials["client-certificate-data"] = base64.b64encode(client_certificate[0]).decode()
        credentials["client-key-data"] = base64.b64encode(client_certificate[1]).decode()
    cluster = {"server": url, "certificate-authority-data": base64.b64encode(ca).decode()}
    config: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "mlops-sandbox", "cluster": cluster}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [
            {
                "name": "mlops-sandbox",
                "context": {"cluster": "mlops-sandbox", "user": user, "namespace": namespace},
            }
        ],
        "current-context": "mlops-sandbox",
        "preferences": {},
    }
    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(target, yaml.safe_dump(config, sort_keys=False))
    target.chmod(0o600)
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
