"""Deletion and the garbage collector: finalizers, ownerReferences and propagation policies.

An object with finalizers only gets a ``deletionTimestamp`` and goes when the last finalizer is
removed. ``Foreground`` holds the owner with the ``foregroundDeletion`` finalizer until its
dependents are gone; ``Orphan`` strips the owner references from the dependents; ``Background``
(the default) deletes the dependents after the owner. The real collector is asynchronous; here it
runs right after the owner's removal, which only makes it faster (clients must poll either way).
"""

from __future__ import annotations

import copy
import dataclasses
import logging

from . import errors
from .catalog import ResourceType
from .errors import ApiError
from .kind_strategies import KindStrategies, Updater
from .object_store import JsonDict, ObjectStore, now_rfc3339, present
from .type_registry import TypeRegistry

FOREGROUND_FINALIZER = "foregroundDeletion"

logger = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class GarbageCollector:
    """Deletes objects as the real server and its garbage collector do."""

    store: ObjectStore
    types: TypeRegistry
    strategies: KindStrategies
    #: Writes on the collector's behalf (owner references stripped, finalizers dropped).
    updater: Updater

    def delete(
        self, rtype: ResourceType, namespace: str | None, name: str, options: JsonDict, query: dict[str, str]
    ) -> tuple[JsonDict, int]:
        """DELETE with preconditions, finalizers and propagation; the object and 200, or 202.

        A marked object gets, as in the real server, ``deletionGracePeriodSeconds: 0`` and a
        generation bump besides its ``deletionTimestamp``.
        """
        obj = self.store.read(rtype, namespace, name)
        meta = obj["metadata"]
        preconditions = options.get("preconditions") or {}
        if preconditions.get("uid") not in (None, meta["uid"]):
            raise errors.conflict(
                rtype.plural, rtype.group, name,
                f"Precondition failed: UID in precondition: {preconditions['uid']}, UID in object meta: {meta['uid']}",
            )  # fmt: skip
        if preconditions.get("resourceVersion") not in (None, meta["resourceVersion"]):
            raise errors.conflict(rtype.plural, rtype.group, name)
        strategy = self.strategies.of(rtype)
        strategy.check_delete(rtype, name)
        policy = options.get("propagationPolicy") or query.get("propagationPolicy")
        if policy is None and options.get("orphanDependents") is True:
            policy = "Orphan"
        policy = policy or "Background"
        if policy not in ("Background", "Foreground", "Orphan"):
            raise errors.bad_request(f"unsupported propagationPolicy {policy!r}")
        if query.get("dryRun") or options.get("dryRun"):
            return obj, 200
        if meta.get("deletionTimestamp"):
            return obj, 202
        if policy == "Orphan":
            for dependent, dependent_obj in self.dependents(meta["uid"]):
                self._strip_owner(dependent, dependent_obj, meta["uid"])
        finalizers = list(meta.get("finalizers") or [])
        if policy == "Foreground" and self.dependents(meta["uid"]):
            finalizers.append(FOREGROUND_FINALIZER)
        if not finalizers and not strategy.marks_deletion:
            return self.remove(rtype, obj), 200
        marked = copy.deepcopy(obj)
        mmeta = marked["metadata"]
        mmeta["deletionTimestamp"] = now_rfc3339()
        mmeta["deletionGracePeriodSeconds"] = 0
        mmeta["generation"] = int(mmeta.get("generation", 0)) + 1
        if finalizers:
            mmeta["finalizers"] = finalizers
        strategy.mark_deleted(marked)
        mmeta["resourceVersion"] = self.store.next_resource_version()
        self.store.put(rtype, marked, "MODIFIED", obj)
        if policy == "Foreground":
            for dependent, dependent_obj in self.dependents(meta["uid"]):
                self.delete_in_background(dependent, dependent_obj)
        strategy.empty(marked, self.delete_in_background)
        self.reconcile()
        current = self.store.get(rtype.store_key, namespace, name)
        return present(rtype, current if current is not None else marked), 202

    def delete_in_background(self, rtype: ResourceType, obj: JsonDict) -> None:
        """Delete on the server's behalf; an object that cannot be deleted now is left alone."""
        meta = obj["metadata"]
        try:
            self.delete(rtype, meta.get("namespace"), meta["name"], {"propagationPolicy": "Background"}, {})
        except ApiError as exc:
            logger.debug("garbage collection of %s/%s skipped: %s", rtype.plural, meta["name"], exc.message)

    def remove(self, rtype: ResourceType, obj: JsonDict) -> JsonDict:
        """Really delete (a DELETED event with a new resourceVersion), then collect garbage."""
        removed = self.store.remove(rtype.store_key, obj)
        if removed is None:
            return present(rtype, obj)
        stored, gone = removed
        self.strategies.of(rtype).after_remove(stored)
        self._collect(obj["metadata"]["uid"])
        self.reconcile()
        return present(rtype, gone)

    def dependents(self, uid: str) -> list[tuple[ResourceType, JsonDict]]:
        """The objects with an owner reference to ``uid``."""
        found: list[tuple[ResourceType, JsonDict]] = []
        for store_key, objs in self.store.snapshot():
            for obj in objs:
                refs = (obj.get("metadata") or {}).get("ownerReferences") or []
                if any(r.get("uid") == uid for r in refs):
                    rtype = self.types.storage_type(store_key)
                    if rtype is not None:
                        found.append((rtype, obj))
        return found

    def reconcile(self) -> None:
        """Finish what terminating objects wait for: drop the system finalizers whose work is
        done (the kinds' own, ``foregroundDeletion``) and remove the kinds' emptied objects."""
        changed = True
        while changed:
            changed = False
            for store_key in self.store.kinds():
                for (namespace, name), obj in self.store.entries(store_key):
                    meta = obj["metadata"]
                    if (
                        not meta.get("deletionTimestamp")
                        or self.store.get(store_key, namespace, name) is not obj
                    ):
                        continue  # not terminating, or already changed by a nested cleanup
                    rtype = self.types.storage_type(store_key)
                    if rtype is None:
                        continue
                    strategy = self.strategies.of(rtype)
                    if strategy.removed_when_empty:
                        if strategy.is_empty(obj):
                            self.remove(rtype, obj)
                            changed = True
                        continue
                    finalizers = list(meta.get("finalizers") or [])
                    drop = strategy.finished_finalizers(obj)
                    if FOREGROUND_FINALIZER in finalizers and not self.dependents(meta["uid"]):
                        drop.add(FOREGROUND_FINALIZER)
                    if drop:
                        updated = copy.deepcopy(obj)
                        updated["metadata"]["finalizers"] = [f for f in finalizers if f not in drop]
                        self.updater.rewrite(rtype, updated)
                        changed = True

    def _collect(self, uid: str) -> None:
        """Dependents of a removed owner go too, unless another of their owners lives."""
        for rtype, obj in self.dependents(uid):
            refs = obj["metadata"].get("ownerReferences") or []
            alive = [r for r in refs if r.get("uid") != uid and self.store.has_uid(r.get("uid"))]
            if alive:
                self._strip_owner(rtype, obj, uid)
            else:
                self.delete_in_background(rtype, obj)

    def _strip_owner(self, rtype: ResourceType, obj: JsonDict, uid: str) -> None:
        meta = obj["metadata"]
        changed = copy.deepcopy(obj)
        refs = [r for r in meta.get("ownerReferences") or [] if r.get("uid") != uid]
        if refs:
            changed["metadata"]["ownerReferences"] = refs
        else:
            changed["metadata"].pop("ownerReferences", None)
        try:
            self.updater.rewrite(rtype, changed)
        except ApiError as exc:  # gone meanwhile: nothing to strip
            logger.debug("owner reference of %s/%s not stripped: %s", rtype.plural, meta["name"], exc.message)
