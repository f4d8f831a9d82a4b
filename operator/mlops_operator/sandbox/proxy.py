"""The sandbox's kube-proxy: a TCP proxy per Service port, on the Service's ClusterIP.

Each accepted connection goes to a ready backend picked at random (as kube-proxy's default
iptables mode does), so a Service selecting one pod of version A and three of version B sends
about a quarter of its connections to A: replica weighted canaries behave as in a cluster. A
backend that refuses the connection is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import random
from collections.abc import Iterable

from mlops_operator.sandbox.services import Backend, Route

logger = logging.getLogger(__name__)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


class _Listener:
    def __init__(self, route: Route) -> None:
        self.address = (route.cluster_ip, route.port)
        self.backends: tuple[Backend, ...] = route.backends
        self.groups: tuple[tuple[int, tuple[Backend, ...]], ...] = route.groups
        self.error: str | None = None
        self._random = random.Random()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(
                self._handle, host=self.address[0], port=self.address[1]
            )
        except OSError as exc:
            hint = (
                " (ports below 1024 need root or net.ipv4.ip_unprivileged_port_start)"
                if exc.errno == errno.EACCES
                else ""
            )
            self.error = f"cannot listen on {self.address[0]}:{self.address[1]}: {exc.strerror}{hint}"
            logger.warning("service proxy: %s", self.error)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        # A random endpoint per connection, as kube-proxy's default (iptables) mode picks one: a
        # round robin would send every other connection of a client that alternates two kinds of
        # request (a prediction, then its feedback) to the same pod.
        backends = self._pick_group() if self.groups else self.backends
        start = self._random.randrange(len(backends)) if backends else 0
        for offset in range(len(backends)):
            host, port = backends[(start + offset) % len(backends)]
            try:
                return await asyncio.wait_for(asyncio.open_connection(host, port), timeout=5)
            except (OSError, TimeoutError):
                continue
        return None

    def _pick_group(self) -> tuple[Backend, ...]:
        """An HTTPRoute's backend, chosen by relative weight (per connection)."""
        weights = [weight for weight, _ in self.groups]
        return self._random.choices([backends for _, backends in self.groups], weights=weights)[0]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            upstream = await self._connect()
            if upstream is None:
                return  # no ready endpoint: the client sees the connection closed
            up_reader, up_writer = upstream
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                with contextlib.suppress(Exception):
                    up_writer.close()
        finally:
            with contextlib.suppress(Exception):
                writer.close()
            if task is not None:
                self._connections.discard(task)


class ServiceProxy:
    def __init__(self) -> None:
        self._listeners: dict[tuple[str, int], _Listener] = {}

    @property
    def errors(self) -> dict[tuple[str, int], str]:
        return {address: listener.error for address, listener in self._listeners.items() if listener.error}

    def backends(self, cluster_ip: str, port: int) -> tuple[Backend, ...]:
        listener = self._listeners.get((cluster_ip, port))
        return listener.backends if listener else ()

    async def update(self, routes: Iterable[Route]) -> None:
        wanted = {(route.cluster_ip, route.port): route for route in routes}
        for address in list(self._listeners):
            if address not in wanted:
                await self._listeners.pop(address).close()
        for address, route in wanted.items():
            listener = self._listeners.get(address)
            if listener is None:
                listener = self._listeners[address] = _Listener(route)
                await listener.start()
            listener.backends = route.backends
            listener.groups = route.groups

    async def close(self) -> None:
        for listener in self._listeners.values():
            await listener.close()
        self._listeners.clear()
