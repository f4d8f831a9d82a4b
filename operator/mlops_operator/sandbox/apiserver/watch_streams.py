"""The watch server: open watch streams, fed by the store's events, resumable from its history.

A stream is newline-delimited JSON events. Without ``resourceVersion`` (or with ``0``) the current
objects come first as ADDED; with one, only the newer events are replayed from the history, and
one older than the kept history gets an ERROR event with 410 Expired, so that clients (kopf)
relist. ``sendInitialEvents`` ends the initial objects with a BOOKMARK. The stream ends after
``timeoutSeconds``, which clients treat as a normal end to reconnect from, or at shutdown.

Faults (:mod:`.faults`): a stream can be cut (the connection closed mid-body, as when a load
balancer or the server drops it), and a resumed watch answered 410 Expired, so that tests see
clients reconnect and relist.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import aiohttp.web

from . import errors, printing
from .catalog import ResourceType
from .faults import FaultInjector, RequestInfo
from .object_store import Event, JsonDict, ObjectStore, StoreKey, present
from .request_urls import is_true
from .selectors import parse_field_selector, parse_label_selector

_SHUTDOWN = object()
_CUT = object()


class _Cut(Exception):
    """A fault cuts this stream: close the connection without ending the body."""


@dataclasses.dataclass(eq=False)
class Watcher:
    """One open watch stream: its filters and the queue its events are delivered through."""

    store_key: StoreKey
    namespace: str | None
    name: str | None
    labels: Any
    fields: Any
    queue: asyncio.Queue[Any] = dataclasses.field(default_factory=asyncio.Queue)
    #: Cut the stream once this many events were written (a ``drop_watch`` fault); None: never.
    drop_after: int | None = None
    written: int = 0

    def check_cut(self) -> None:
        """Before writing an event: cut the stream if a fault says it has written enough."""
        if self.drop_after is not None and self.written >= self.drop_after:
            raise _Cut

    def matches(self, obj: JsonDict | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        if self.name is not None and meta.get("name") != self.name:
            return False
        return bool(self.labels(obj) and self.fields(obj))

    def translate(self, event: Event) -> tuple[str, JsonDict] | None:
        """Map a store event onto this watch's filter, as the real watch cache does.

        An object that starts matching a selector arrives as ADDED, one that stops matching
        as DELETED, so a filtered watch mirrors the filtered list.
        """
        if event.store_key != self.store_key:
            return None
        new, old = self.matches(event.obj), self.matches(event.old)
        if event.type == "ADDED":
            return ("ADDED", event.obj) if new else None
        if event.type == "DELETED":
            return ("DELETED", event.obj) if new else None
        if new and old:
            return ("MODIFIED", event.obj)
        if new:
            return ("ADDED", event.obj)
        if old:
            return ("DELETED", event.obj)
        return None


class WatchServer:
    """Serves watch streams from an :class:`ObjectStore`, whose events it subscribes to."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._watchers: set[Watcher] = set()
        self.faults: FaultInjector | None = None
        store.subscribe(self._deliver)

    def close(self) -> None:
        """End all watch streams (at shutdown), so that clients see a clean end of stream."""
        for watcher in list(self._watchers):
            watcher.queue.put_nowait(_SHUTDOWN)

    def cut(self, resource: str | None = None, group: str | None = None) -> int:
        """Cut the open streams of ``resource`` (all: None) now (a fault); how many."""
        cut = 0
        for watcher in list(self._watchers):
            watched_group, plural = watcher.store_key
            if (resource is None or resource == plural) and (group is None or group == watched_group):
                watcher.queue.put_nowait(_CUT)
                cut += 1
        return cut

    def _deliver(self, event: Event) -> None:
        for watcher in list(self._watchers):
            translated = watcher.translate(event)
            if translated is not None:
                watcher.queue.put_nowait(translated)

    async def serve(
        self,
        raw: aiohttp.web.BaseRequest,
        rtype: ResourceType,
        namespace: str | None,
        name: str | None,
        query: dict[str, str],
        table: bool,
    ) -> aiohttp.web.StreamResponse:
        """A watch on ``rtype`` (optionally one namespace, one name), as the module describes."""
        field_query = query.get("fieldSelector")
        if name is not None:
            field_query = ",".join(filter(None, [field_query, f"metadata.name={name}"]))
        watcher = Watcher(
            store_key=rtype.store_key,
            namespace=namespace,
            name=None,
            labels=parse_label_selector(query.get("labelSelector")),
            fields=parse_field_selector(field_query),
        )
        send_initial = is_true(query.get("sendInitialEvents"))
        initial = self._faulty_initial_events(raw, watcher, namespace, name, query)
        if initial is None:
            initial = self._initial_events(watcher, query.get("resourceVersion", ""), send_initial)
        self._watchers.add(watcher)
        timeout: float | None = None
        if query.get("timeoutSeconds", "").isdigit():
            timeout = float(query["timeoutSeconds"])
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        include = query.get("includeObject", "Metadata")
        try:
            await response.prepare(raw)
            for kind, obj in initial:
                watcher.check_cut()
                await response.write(_watch_line(rtype, kind, obj, table, include))
                if kind == "ERROR":
                    return response
                watcher.written += 1
            if send_initial:
                bookmark = {
                    "kind": rtype.kind,
                    "apiVersion": rtype.api_version,
                    "metadata": {
                        "resourceVersion": str(self.store.resource_version),
                        "annotations": {"k8s.io/initial-events-end": "true"},
                    },
                }
                await response.write(json.dumps({"type": "BOOKMARK", "object": bookmark}).encode() + b"\n")
            loop = asyncio.get_running_loop()
            deadline = None if timeout is None else loop.time() + timeout
            await self._stream(response, watcher, deadline, rtype, table, include)
            await response.write_eof()
        except _Cut:
            # Dropped mid-stream: no terminating chunk, so the client sees a truncated body.
            if raw.transport is not None:
                raw.transport.abort()
        except (ConnectionError, RuntimeError):
            pass  # the client went away; nothing to tell it
        finally:
            self._watchers.discard(watcher)
        return response

    def _faulty_initial_events(
        self,
        raw: aiohttp.web.BaseRequest,
        watcher: Watcher,
        namespace: str | None,
        name: str | None,
        query: dict[str, str],
    ) -> list[tuple[str, JsonDict]] | None:
        """Arm a ``drop_watch`` fault on ``watcher``; a 410 ERROR for an ``expire_watch`` fault."""
        if self.faults is None:
            return None
        group, plural = watcher.store_key
        info = RequestInfo(
            verb="watch",
            group=group,
            resource=plural,
            namespace=namespace or "",
            name=name or "",
            subresource="",
            user_agent=raw.headers.get("User-Agent", ""),
            resource_version=query.get("resourceVersion", ""),
        )
        drop = self.faults.pick(info, ("drop_watch",))
        if drop is not None:
            watcher.drop_after = drop.after_events
        if self.faults.pick(info, ("expire_watch",)) is None:
            return None
        since, current = query.get("resourceVersion", ""), self.store.resource_version
        return [("ERROR", errors.gone(f"too old resource version: {since} ({current})").status())]

    def _initial_events(
        self, watcher: Watcher, rv_param: str, send_initial: bool
    ) -> list[tuple[str, JsonDict]]:
        """The current objects (no resourceVersion, ``0``, or sendInitialEvents), else the replay."""
        initial: list[tuple[str, JsonDict]] = []
        if rv_param in ("", "0") or send_initial:
            for _, obj in self.store.sorted_entries(watcher.store_key):
                if watcher.matches(obj):
                    initial.append(("ADDED", obj))
            return initial
        try:
            since = int(rv_param)
        except ValueError as exc:
            raise errors.bad_request(f"invalid resource version: {rv_param}") from exc
        floor = self.store.history_floor
        if since < floor:
            initial.append(
                ("ERROR", errors.gone(f"too old resource version: {since} ({floor + 1})").status())
            )
            return initial
        for event in self.store.events():
            if event.rv > since:
                translated = watcher.translate(event)
                if translated is not None:
                    initial.append(translated)
        return initial

    @staticmethod
    async def _stream(
        response: aiohttp.web.StreamResponse,
        watcher: Watcher,
        deadline: float | None,
        rtype: ResourceType,
        table: bool,
        include: str,
    ) -> None:
        """Write the watcher's events until the deadline (the loop's time) or shutdown."""
        loop = asyncio.get_running_loop()
        while True:
            watcher.check_cut()
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                break
            try:
                item = await asyncio.wait_for(watcher.queue.get(), remaining)
            except TimeoutError:
                break
            if item is _SHUTDOWN:
                break
            if item is _CUT:
                raise _Cut
            kind, obj = item
            await response.write(_watch_line(rtype, kind, obj, table, include))
            watcher.written += 1


def _watch_line(rtype: ResourceType, kind: str, obj: JsonDict, table: bool, include: str) -> bytes:
    """One event as a line; with ``as=Table``, the object as a one-row Table."""
    if kind == "ERROR":
        payload: JsonDict = obj
    elif table:
        payload = printing.table(rtype, [present(rtype, obj)], obj["metadata"]["resourceVersion"], include)
    else:
        payload = present(rtype, obj)
    return json.dumps({"type": kind, "object": payload}, separators=(",", ":")).encode() + b"\n"
