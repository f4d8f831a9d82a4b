"""The objects, as etcd would hold them: by (group, plural) and (namespace, name), with their uids,
the resourceVersion counter and the event history that watches replay.

Writes happen on the server's event loop only; the lock is for readers in other threads (users of
``ApiServerThread`` reading objects directly). Every change goes through :meth:`ObjectStore.put`
or :meth:`ObjectStore.remove`, which append an :class:`Event` to the history and hand it to the
listeners (the watch server) in the order of their resourceVersions.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import datetime
import threading
from collections.abc import Callable
from typing import Any

from . import errors
from .catalog import ResourceType

JsonDict = dict[str, Any]
StoreKey = tuple[str, str]  # (group, plural)
ObjectKey = tuple[str, str]  # (namespace or "", name)


def now_rfc3339() -> str:
    """Kubernetes timestamps: RFC 3339, UTC, second precision, with a ``Z``."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def present(rtype: ResourceType, obj: JsonDict) -> JsonDict:
    """A stored object as served at ``rtype``'s version (conversion strategy "None")."""
    return {**obj, "apiVersion": rtype.api_version, "kind": rtype.kind}


@dataclasses.dataclass
class Event:
    """One change of one object: what a watch stream carries, kept in the history for resuming."""

    rv: int
    type: str
    store_key: StoreKey
    obj: JsonDict
    old: JsonDict | None


class ObjectStore:
    """Objects in memory, with etcd's resourceVersion counter and a bounded event history."""

    def __init__(self, history: int = 10_000) -> None:
        self._objects: dict[StoreKey, dict[ObjectKey, JsonDict]] = collections.defaultdict(dict)
        self._uids: dict[str, tuple[StoreKey, ObjectKey]] = {}
        self._rv = 0
        self._history: collections.deque[Event] = collections.deque(maxlen=history)
        self._history_floor = 0  # events at or below this resourceVersion may be gone
        self._listeners: list[Callable[[Event], None]] = []
        self._mutex = threading.RLock()

    @property
    def resource_version(self) -> int:
        return self._rv

    @property
    def history_floor(self) -> int:
        """The oldest resourceVersion a watch may resume from is one above this."""
        return self._history_floor

    def next_resource_version(self) -> str:
        self._rv += 1
        return str(self._rv)

    def subscribe(self, listener: Callable[[Event], None]) -> None:
        """Call ``listener`` with every event, synchronously, right after it is recorded."""
        self._listeners.append(listener)

    # -- reading -----------------------------------------------------------------------------

    def get(self, store_key: StoreKey, namespace: str | None, name: str) -> JsonDict | None:
        """The stored object itself (not a copy), or None."""
        with self._mutex:
            return self._objects[store_key].get((namespace or "", name))

    def read(self, rtype: ResourceType, namespace: str | None, name: str) -> JsonDict:
        """An object as served at ``rtype``'s version; 404 NotFound if there is none."""
        obj = self.get(rtype.store_key, namespace, name)
        if obj is None:
            raise errors.not_found(rtype.plural, rtype.group, name)
        return present(rtype, obj)

    def copy_of(self, rtype: ResourceType, namespace: str | None, name: str) -> JsonDict | None:
        """A deep copy of an object as served, or None: for readers in other threads."""
        with self._mutex:
            obj = self._objects[rtype.store_key].get((namespace or "", name))
            return copy.deepcopy(present(rtype, obj)) if obj is not None else None

    def copies(self, rtype: ResourceType, namespace: str | None = None) -> list[JsonDict]:
        """Deep copies of all objects of a resource (optionally of one namespace), in key order."""
        with self._mutex:
            return [
                copy.deepcopy(present(rtype, obj))
                for (ns, _), obj in sorted(self._objects[rtype.store_key].items())
                if namespace is None or ns == namespace
            ]

    def has_uid(self, uid: str) -> bool:
        return uid in self._uids

    def is_empty(self, store_key: StoreKey) -> bool:
        return not self._objects.get(store_key)

    def kinds(self) -> list[StoreKey]:
        """The resources that have (or had) objects, in the order they first got one."""
        with self._mutex:
            return list(self._objects)

    def entries(self, store_key: StoreKey) -> list[tuple[ObjectKey, JsonDict]]:
        """A snapshot of one resource's objects, in the order they were first stored."""
        with self._mutex:
            return list(self._objects[store_key].items())

    def sorted_entries(self, store_key: StoreKey) -> list[tuple[ObjectKey, JsonDict]]:
        """A snapshot of one resource's objects in (namespace, name) order, as lists show them."""
        with self._mutex:
            return sorted(self._objects[store_key].items())

    def snapshot(self) -> list[tuple[StoreKey, list[JsonDict]]]:
        """Every object, by resource: for scans across kinds (owner references)."""
        with self._mutex:
            return [(key, list(objs.values())) for key, objs in self._objects.items()]

    def events(self) -> list[Event]:
        """The kept history, oldest first."""
        return list(self._history)

    # -- writing -----------------------------------------------------------------------------

    def put(self, rtype: ResourceType, obj: JsonDict, event_type: str, old: JsonDict | None) -> None:
        """Store an object (its resourceVersion already set) at the storage version; emit the event."""
        meta = obj["metadata"]
        okey = (meta.get("namespace") or "", meta["name"])
        stored = {
            **obj,
            "apiVersion": f"{rtype.group}/{rtype.storage_version}" if rtype.group else rtype.version,
        }
        with self._mutex:
            self._objects[rtype.store_key][okey] = stored
            self._uids[meta["uid"]] = (rtype.store_key, okey)
        self._emit(event_type, rtype.store_key, stored, old)

    def remove(self, store_key: StoreKey, obj: JsonDict) -> tuple[JsonDict, JsonDict] | None:
        """Really delete: a DELETED event with a new resourceVersion; (stored, gone), or None."""
        meta = obj["metadata"]
        okey = (meta.get("namespace") or "", meta["name"])
        with self._mutex:
            stored = self._objects[store_key].pop(okey, None)
            if stored is None:
                return None
            self._uids.pop(meta["uid"], None)
        gone = copy.deepcopy(stored)
        gone["metadata"]["resourceVersion"] = self.next_resource_version()
        self._emit("DELETED", store_key, gone, stored)
        return stored, gone

    def drop_kind(self, store_key: StoreKey) -> None:
        """Forget a resource's objects without events (its CRD is gone, and so is its API)."""
        with self._mutex:
            self._objects.pop(store_key, None)

    def _emit(self, event_type: str, store_key: StoreKey, obj: JsonDict, old: JsonDict | None) -> None:
        event = Event(int(obj["metadata"]["resourceVersion"]), event_type, store_key, obj, old)
        if len(self._history) == self._history.maxlen:
            self._history_floor = self._history[0].rv
        self._history.append(event)
        for listener in self._listeners:
            listener(event)

    # -- persistence -------------------------------------------------------------------------

    def dump(self) -> list[JsonDict]:
        """Every object with its (group, plural), for :meth:`load`."""
        with self._mutex:
            return [
                {"group": group, "plural": plural, "object": obj}
                for (group, plural), objs in self._objects.items()
                for obj in objs.values()
            ]

    def load(self, entries: list[JsonDict], resource_version: int) -> None:
        """Restore :meth:`dump`'s entries verbatim; the history restarts, empty, from here."""
        with self._mutex:
            for entry in entries:
                key = (entry["group"], entry["plural"])
                meta = entry["object"]["metadata"]
                okey = (meta.get("namespace") or "", meta["name"])
                self._objects[key][okey] = entry["object"]
                self._uids[meta["uid"]] = (key, okey)
            self._rv = max(self._rv, resource_version)
            self._history.clear()
            self._history_floor = self._rv
