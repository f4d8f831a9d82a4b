"""A small asyncio client of the Kubernetes API (aiohttp) and a list+watch informer.

The runtime talks to the API server only over HTTP, like a kubelet: it lists, watches from the
list's resourceVersion, relists on ``410 Gone`` or any error, and writes with JSON merge patches
(which carry no resourceVersion, so concurrent writers do not conflict on them). Whatever writes
with a precondition goes through :func:`retry_on_conflict`, which re-reads and retries on 409.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import aiohttp

from mlops_operator.sandbox.object_helpers import Obj, key_of

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def _prefix(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    def collection(self, namespace: str | None = None) -> str:
        if namespace and self.namespaced:
            return f"{self._prefix()}/namespaces/{namespace}/{self.plural}"
        return f"{self._prefix()}/{self.plural}"

    def item(self, namespace: str, name: str, subresource: str = "") -> str:
        path = f"{self.collection(namespace)}/{name}"
        return f"{path}/{subresource}" if subresource else path


PODS = Resource("", "v1", "pods", "Pod")
SERVICES = Resource("", "v1", "services", "Service")
ENDPOINTS = Resource("", "v1", "endpoints", "Endpoints")
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
SECRETS = Resource("", "v1", "secrets", "Secret")
EVENTS = Resource("", "v1", "events", "Event")
NODES = Resource("", "v1", "nodes", "Node", namespaced=False)
ENDPOINT_SLICES = Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice")
JOBS = Resource("batch", "v1", "jobs", "Job")
DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment")
#: Gateway API routes: the sandbox's proxy honours the weights of one attached to a Service.
HTTP_ROUTES = Resource("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute")


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class KubeClient:
    """The runtime's client: it authenticates with a bearer token like any kubelet or controller."""

    def __init__(self, server: str, session: aiohttp.ClientSession, token: str | None = None) -> None:
        self.server = server.rstrip("/")
        self.session = session  # made with the cluster CA trusted (see client_session)
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}

    async def request(
        self, method: str, path: str, *, body: Obj | None = None, params: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Obj:  # fmt: skip
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type, "Accept": "application/json", **self._auth}
        timeout = aiohttp.ClientTimeout(total=30)
        async with self.session.request(
            method, self.server + path, data=data, params=params, headers=headers, timeout=timeout
        ) as response:
            text = await response.text()
            if response.status >= 400:
                raise _error(response.status, text)
            result: Obj = json.loads(text) if text else {}
            return result

    async def list(self, path: str) -> tuple[list[Obj], str]:
        result = await self.request("GET", path)
        version = str(result.get("metadata", {}).get("resourceVersion") or "")
        return list(result.get("items") or []), version

    async def get(self, path: str) -> Obj | None:
        try:
            return await self.request("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def create(self, path: str, body: Obj) -> Obj:
        return await self.request("POST", path, body=body)

    async def merge_patch(self, path: str, body: Obj) -> Obj:
        return await self.request("PATCH", path, body=body, content_type="application/merge-patch+json")

    async def delete(self, path: str, *, propagation: str | None = None) -> bool:
        """Delete; False if it was already gone."""
        body = (
            {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
            if propagation
            else None
        )
        try:
            await self.request("DELETE", path, body=body)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def watch(self, path: str, resource_version: str, timeout_seconds: int) -> AsyncIterator[Obj]:
        params = {"watch": "true", "allowWatchBookmarks": "true", "timeoutSeconds": str(timeout_seconds)}
        if resource_version and resource_version.isdigit():
            params["resourceVersion"] = resource_version
        # The server closes the stream after timeoutSeconds; the client gives up a bit later,
        # because the plain emulator ignores the parameter and would otherwise hang forever.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout_seconds + 15)
        async with self.session.get(
            self.server + path, params=params, timeout=timeout, headers=self._auth
        ) as response:
            if response.status >= 400:
                raise _error(response.status, await response.text())
            async for line in response.content:
                if line.strip():
                    yield json.loads(line)


def _error(status: int, text: str) -> ApiError:
    try:
        payload = json.loads(text)
        return ApiError(status, str(payload.get("reason", "")), str(payload.get("message", text)))
    except (ValueError, AttributeError):
        return ApiError(status, "", text[:500])


async def retry_on_conflict(operation: Callable[[], Awaitable[T]], attempts: int = 5) -> T:
    """Run a read-modify-write ``operation`` again when the server answers 409 Conflict."""
    for attempt in range(attempts):
        try:
            return await operation()
        except ApiError as exc:
            if exc.status != 409 or attempt == attempts - 1:
                raise
            await asyncio.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


class Informer:
    """A cache of one resource kind, cluster-wide, kept current by list+watch.

    ``on_change`` is called after every change so the controllers can run level-based; the cache
    is replaced wholesale at each relist, so deletions missed while disconnected disappear too.
    """

    def __init__(
        self,
        client: KubeClient,
        resource: Resource,
        on_change: Callable[[], None],
        *,
        watch_timeout: int = 60,
    ) -> None:
        self.client = client
        self.resource = resource
        self.on_change = on_change
        self.watch_timeout = watch_timeout
        self.cache: dict[tuple[str, str], Obj] = {}
        self.synced = asyncio.Event()

    def items(self) -> list[Obj]:
        return list(self.cache.values())

    async def run(self) -> None:
        delay = 0.2
        while True:
            try:
                items, version = await self.client.list(self.resource.collection())
                self.cache = {key_of(item): item for item in items}
                self.synced.set()
                self.on_change()
                delay = 0.2
                await self._watch(version)
            except asyncio.CancelledError:
                raise
            except ApiError as exc:
                if exc.status == 404:
                    # The plain emulator knows a resource only once an object of it exists: poll.
                    self.cache = {}
                    self.synced.set()
                    self.on_change()
                    await asyncio.sleep(1.0)
                    continue
                logger.warning("watching %s: %s; relisting", self.resource.plural, exc)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                logger.debug("watching %s: %r; relisting", self.resource.plural, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _watch(self, version: str) -> None:
        async for event in self.client.watch(self.resource.collection(), version, self.watch_timeout):
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                with contextlib.suppress(Exception):
                    logger.debug("watch error on %s: %s", self.resource.plural, obj.get("message"))
                return  # 410 Gone or another error: relist
            if kind == "BOOKMARK":
                continue
            if kind == "DELETED":
                self.cache.pop(key_of(obj), None)
            elif kind in ("ADDED", "MODIFIED"):
                if _older(obj, self.cache.get(key_of(obj))):
                    continue  # the cache already holds a newer version, from one of our own writes
                self.cache[key_of(obj)] = obj
            self.on_change()


def _older(obj: Obj, cached: Obj | None) -> bool:
    """Whether ``obj`` is an older version than ``cached`` (resourceVersions compared as numbers,
    which the emulated server uses; opaque versions from another server are never "older")."""
    if cached is None:
        return False
    new = str(obj.get("metadata", {}).get("resourceVersion") or "")
    old = str(cached.get("metadata", {}).get("resourceVersion") or "")
    if not (new.isdigit() and old.isdigit()):
        return False
    same = obj.get("metadata", {}).get("uid") == cached.get("metadata", {}).get("uid")
    return same and int(new) < int(old)


def client_session(ca: bytes | None) -> aiohttp.ClientSession:
    """An HTTP session that trusts the API server's CA (the server speaks HTTPS only)."""
    context = ssl.create_default_context(cadata=ca.decode()) if ca else ssl.create_default_context()
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))
