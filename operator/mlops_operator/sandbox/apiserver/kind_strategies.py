"""Per-kind behaviour: what the real server's registry strategies, and the controllers of a few
builtin kinds, do beyond the generic write path.

- Every kind (:class:`KindStrategy`): ``status`` is dropped on create and kept on update where
  a status subresource exists; ``/status`` changes nothing but ``.status``; names are RFC 1123
  subdomains.
- Namespace (:class:`NamespaceStrategy`): the NamespaceLifecycle admission plugin, the Active
  and Terminating phases, undeletable system namespaces, and the namespace controller.
- CustomResourceDefinition (:class:`CrdStrategy`): validation, serving, the status that the
  apiextensions controllers write, and the cleanup finalizer with its controller.

Hooks that cause further writes get them passed in (an :class:`Updater`, a delete callback), so
that this module depends on neither the writer nor the garbage collector.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Protocol

from . import errors
from .catalog import ResourceType, validate_crd
from .object_store import JsonDict, ObjectStore, StoreKey, now_rfc3339
from .type_registry import TypeRegistry, crd_resource

CRD_GROUP, CRD_PLURAL = "apiextensions.k8s.io", "customresourcedefinitions"
CRD_RESOURCE: StoreKey = (CRD_GROUP, CRD_PLURAL)
NAMESPACES: StoreKey = ("", "namespaces")
CRD_CLEANUP_FINALIZER = "customresourcecleanup.apiextensions.k8s.io"
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class Updater(Protocol):
    """What the server's own controllers may write: an object, unconditionally (no precondition)."""

    def rewrite(self, rtype: ResourceType, obj: JsonDict, sub: str | None = None) -> object: ...


#: Delete one object on the server's behalf (its controllers, the garbage collector).
Delete = Callable[[ResourceType, JsonDict], None]


def check_namespace_accepts(
    store: ObjectStore, rtype: ResourceType, namespace: str | None, name: str
) -> None:
    """The NamespaceLifecycle admission plugin: no content in missing or terminating namespaces."""
    if not rtype.namespaced:
        return
    ns = store.get(NAMESPACES, None, namespace or "")
    if ns is None:
        # Chosen to match the real server: no implicit namespace creation.
        raise errors.not_found("namespaces", "", namespace or "")
    if (ns.get("metadata") or {}).get("deletionTimestamp"):
        raise errors.forbidden(
            rtype.plural, rtype.group, name,
            f"unable to create new content in namespace {namespace} because it is being terminated",
        )  # fmt: skip


class KindStrategy:
    """What every kind does; subclasses override the hooks their kind needs."""

    name_pattern: re.Pattern[str] = DNS_SUBDOMAIN
    #: Deletion always goes through a deletionTimestamp, even without finalizers.
    marks_deletion = False
    #: The kind's own controller removes a terminating object once it is empty.
    removed_when_empty = False

    def __init__(self, store: ObjectStore, types: TypeRegistry) -> None:
        self.store = store
        self.types = types

    def reset_status_on_create(self, rtype: ResourceType, obj: JsonDict) -> None:
        """With a status subresource, ``status`` can only be written through ``/status``."""
        if rtype.status:
            obj.pop("status", None)

    def admit_create(self, rtype: ResourceType, obj: JsonDict) -> None:
        """Validation and defaults of a new object, after the generic checks."""

    def keep_server_fields(
        self, rtype: ResourceType, new: JsonDict, old: JsonDict, sub: str | None
    ) -> JsonDict:
        """What an update may not change: the object to store from the body ``new``."""
        if sub == "status":
            # The status strategy resets everything but .status to the stored object.
            result = copy.deepcopy(old)
            if "status" in new:
                result["status"] = new["status"]
            else:
                result.pop("status", None)
            return result
        if rtype.status:
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        return new

    def admit_update(self, rtype: ResourceType, obj: JsonDict, sub: str | None) -> None:
        """Validation of an updated object, after the generic checks."""

    def after_write(self, obj: JsonDict, sub: str | None, updater: Updater) -> bool:
        """What a stored write sets off in the server; True if the object was written again."""
        return False

    def check_delete(self, rtype: ResourceType, name: str) -> None:
        """Refuse deleting objects that may not be deleted."""

    def mark_deleted(self, obj: JsonDict) -> None:
        """What besides ``deletionTimestamp`` marks a terminating object."""

    def empty(self, obj: JsonDict, delete: Delete) -> None:
        """The kind's controller: delete what a terminating object contains."""

    def after_remove(self, obj: JsonDict) -> None:
        """What the removal of an object sets off in the server."""

    def finished_finalizers(self, obj: JsonDict) -> set[str]:
        """The kind's system finalizers whose work is done on a terminating object."""
        return set()

    def is_empty(self, obj: JsonDict) -> bool:
        """For kinds ``removed_when_empty``: whether the terminating object may go."""
        return True


class NamespaceStrategy(KindStrategy):
    """Namespaces: names are DNS labels; ``spec.finalizers: [kubernetes]``, phase Active, then
    Terminating; system namespaces stay; the namespace controller deletes a terminating
    namespace's contents and removes it once nothing is left in it."""

    name_pattern = DNS_LABEL
    marks_deletion = True
    removed_when_empty = True

    def admit_create(self, rtype: ResourceType, obj: JsonDict) -> None:
        obj["spec"] = {"finalizers": ["kubernetes"]}
        obj["status"] = {"phase": "Active"}
        obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"]["name"]

    def keep_server_fields(
        self, rtype: ResourceType, new: JsonDict, old: JsonDict, sub: str | None
    ) -> JsonDict:
        if sub == "status":
            return super().keep_server_fields(rtype, new, old, sub)
        new["spec"] = copy.deepcopy(old.get("spec"))
        new["status"] = copy.deepcopy(old.get("status"))
        return new

    def check_delete(self, rtype: ResourceType, name: str) -> None:
        if name in SYSTEM_NAMESPACES[:3]:
            raise errors.forbidden(rtype.plural, rtype.group, name, "this namespace may not be deleted")

    def mark_deleted(self, obj: JsonDict) -> None:
        obj["status"] = {"phase": "Terminating"}

    def empty(self, obj: JsonDict, delete: Delete) -> None:
        name = obj["metadata"]["name"]
        for store_key in self.store.kinds():
            rtype = self.types.storage_type(store_key)
            if rtype is None or not rtype.namespaced:
                continue
            for (ns, _), member in self.store.entries(store_key):
                if ns == name:
                    delete(rtype, member)

    def is_empty(self, obj: JsonDict) -> bool:
        name = obj["metadata"]["name"]
        return not any(
            ns == name
            for store_key in self.store.kinds()
            if store_key != NAMESPACES
            for (ns, _), _obj in self.store.entries(store_key)
        )


class CrdStrategy(KindStrategy):
    """CustomResourceDefinitions: validated, served as soon as stored, with the status the
    apiextensions controllers write; the cleanup finalizer holds a deleted CRD until the cleanup
    controller has deleted all of its custom resources."""

    marks_deletion = True

    def reset_status_on_create(self, rtype: ResourceType, obj: JsonDict) -> None:
        pass  # validated with it, then dropped in admit_create

    def admit_create(self, rtype: ResourceType, obj: JsonDict) -> None:
        self._validate(rtype, obj)
        meta = obj["metadata"]
        meta["finalizers"] = sorted({*(meta.get("finalizers") or []), CRD_CLEANUP_FINALIZER})
        obj.pop("status", None)

    def admit_update(self, rtype: ResourceType, obj: JsonDict, sub: str | None) -> None:
        if sub != "status":
            self._validate(rtype, obj)

    @staticmethod
    def _validate(rtype: ResourceType, obj: JsonDict) -> None:
        problems = validate_crd(obj)
        if problems:
            raise errors.invalid(rtype.kind, rtype.group, obj["metadata"]["name"], problems)

    def after_write(self, obj: JsonDict, sub: str | None, updater: Updater) -> bool:
        if sub == "status":
            return False
        self.types.serve_crd(obj)
        self._set_status(obj, updater)
        return True

    def _set_status(self, crd: JsonDict, updater: Updater) -> None:
        """What the apiextensions controllers write: NamesAccepted, Established, acceptedNames."""
        rtype = self.types.find(CRD_GROUP, "v1", CRD_PLURAL)
        name = crd["metadata"]["name"]
        current = self.store.get(rtype.store_key, None, name)
        assert current is not None, "a CRD is stored before its status is set"
        spec = current.get("spec") or {}
        stamp = now_rfc3339()
        old_conditions = {c.get("type"): c for c in (current.get("status") or {}).get("conditions") or []}

        def condition(kind: str, reason: str, message: str) -> JsonDict:
            since = old_conditions.get(kind, {}).get("lastTransitionTime", stamp)
            return {
                "type": kind,
                "status": "True",
                "lastTransitionTime": since,
                "reason": reason,
                "message": message,
            }

        stored = {v["name"] for v in spec.get("versions") or [] if v.get("storage")}
        stored |= set((current.get("status") or {}).get("storedVersions") or [])
        status = {
            "conditions": [
                condition("NamesAccepted", "NoConflicts", "no conflicts found"),
                condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
            ],
            "acceptedNames": spec.get("names") or {},
            "storedVersions": sorted(stored),
        }
        if current.get("status") != status:
            updater.rewrite(rtype, {**current, "status": status}, "status")

    def empty(self, obj: JsonDict, delete: Delete) -> None:
        store_key = crd_resource(obj)
        rtype = self.types.storage_type(store_key)
        if rtype is None:
            return
        for _, member in self.store.entries(store_key):
            delete(rtype, member)

    def after_remove(self, obj: JsonDict) -> None:
        self.types.withdraw_crd(obj)
        self.store.drop_kind(crd_resource(obj))

    def finished_finalizers(self, obj: JsonDict) -> set[str]:
        finalizers = obj["metadata"].get("finalizers") or []
        if CRD_CLEANUP_FINALIZER in finalizers and self.store.is_empty(crd_resource(obj)):
            return {CRD_CLEANUP_FINALIZER}
        return set()


class KindStrategies:
    """The strategy of each kind: the generic one unless a kind has its own."""

    def __init__(self, store: ObjectStore, types: TypeRegistry) -> None:
        self._generic = KindStrategy(store, types)
        self._special: dict[StoreKey, KindStrategy] = {
            NAMESPACES: NamespaceStrategy(store, types),
            CRD_RESOURCE: CrdStrategy(store, types),
        }

    def of(self, rtype: ResourceType) -> KindStrategy:
        return self._special.get(rtype.store_key, self._generic)
