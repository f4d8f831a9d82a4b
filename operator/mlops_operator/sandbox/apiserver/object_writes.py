"""The write path: create, update (PUT) and the three patch formats, with server-set metadata,
optimistic concurrency and generation rules. Each returns a :class:`WriteResult` that carries the
warnings for the client's ``Warning`` header next to the object, never inside it.

Every write runs synchronously on the event loop (no ``await`` between reading and writing the
store), so concurrent clients are serialised exactly as etcd's compare-and-swap would do.
"""

from __future__ import annotations

import copy
import dataclasses
import random
import uuid
from typing import Any

from . import errors, patching
from .catalog import ResourceType
from .errors import FieldError
from .garbage_collector import GarbageCollector
from .kind_strategies import KindStrategies, check_namespace_accepts
from .object_store import JsonDict, ObjectStore, now_rfc3339, present
from .object_validation import check_schema, validate_builtin, validate_metadata
from .type_registry import TypeRegistry

_SYSTEM_META = (
    "uid", "resourceVersion", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
    "generation", "selfLink", "managedFields",
)  # fmt: skip
_KEPT_ON_UPDATE = (
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
)
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the real server's: no vowels, no confusables


@dataclasses.dataclass(frozen=True)
class WriteResult:
    """What a write answers: the object, the HTTP status, and warnings for the ``Warning`` header."""

    obj: JsonDict
    code: int = 200
    warnings: tuple[str, ...] = ()


def spec_part(obj: JsonDict) -> JsonDict:
    """What ``metadata.generation`` tracks: every top-level field except metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


class ObjectWriter:
    """Creates, updates and patches objects; deletes through its :attr:`collector`."""

    def __init__(self, store: ObjectStore, types: TypeRegistry) -> None:
        self.store = store
        self.strategies = KindStrategies(store, types)
        self.collector = GarbageCollector(store, types, self.strategies, self)

    def create(
        self, rtype: ResourceType, namespace: str | None, body: Any, query: dict[str, str]
    ) -> WriteResult:
        """POST: server-set uid, resourceVersion, generation 1, creationTimestamp; generateName.

        ``status`` is dropped when the resource has a status subresource, as the real server's
        create strategies do; it can only be written through ``/status`` afterwards.
        """
        if not isinstance(body, dict):
            raise errors.bad_request("the body of a create request must be an object")
        obj = copy.deepcopy(body)
        if obj.get("kind") not in (None, rtype.kind):
            raise errors.bad_request(f"the kind in the body ({obj.get('kind')}) does not match {rtype.kind}")
        meta = obj.get("metadata")
        if meta is None:
            meta = obj["metadata"] = {}
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata must be an object")
        if rtype.namespaced:
            if meta.get("namespace") not in (None, "", namespace):
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        for key in _SYSTEM_META:
            meta.pop(key, None)
        obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
        strategy = self.strategies.of(rtype)
        strategy.reset_status_on_create(rtype, obj)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise errors.invalid(
                    rtype.kind,
                    rtype.group,
                    "",
                    [FieldError.required("metadata.name", "name or generateName is required")],
                )
            for _ in range(10):
                candidate = meta["generateName"] + "".join(random.choices(_GENERATE_ALPHABET, k=5))
                if self.store.get(rtype.store_key, namespace, candidate) is None:
                    meta["name"] = candidate
                    break
        name = meta["name"]
        validate_metadata(rtype, obj, strategy.name_pattern)
        validate_builtin(rtype, obj)
        check_namespace_accepts(self.store, rtype, namespace, name)
        warnings = check_schema(rtype, obj, None, query)
        strategy.admit_create(rtype, obj)
        if self.store.get(rtype.store_key, namespace, name) is not None:
            raise errors.already_exists(rtype.plural, rtype.group, name)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        meta["generation"] = 1
        if query.get("dryRun"):
            meta["resourceVersion"] = str(self.store.resource_version)
            return WriteResult(obj, 201)
        meta["resourceVersion"] = self.store.next_resource_version()
        self.store.put(rtype, obj, "ADDED", None)
        strategy.after_write(obj, None, self)
        return WriteResult(present(rtype, obj), 201, tuple(warnings))

    def update(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        body: Any,
        sub: str | None,
        query: dict[str, str],
        *,
        require_rv: bool = True,
    ) -> WriteResult:
        """PUT (and the end of every PATCH): replace the object, honouring the server's rules.

        - a stale ``metadata.resourceVersion`` is a 409 Conflict (optimistic concurrency);
        - custom resources require a resourceVersion on PUT (``AllowUnconditionalUpdate`` false);
        - on ``/status`` only ``.status`` changes; on the main resource ``.status`` is kept when
          a status subresource exists;
        - ``metadata.generation`` grows only when the spec (non-metadata, non-status) changes;
        - a write that changes nothing is not stored and produces no event;
        - once the last finalizer of a deleted object goes, the object goes.
        """
        if not isinstance(body, dict):
            raise errors.bad_request("the body of an update request must be an object")
        old = self.store.read(rtype, namespace, name)
        new = copy.deepcopy(body)
        meta = new.get("metadata")
        if not isinstance(meta, dict):
            meta = new["metadata"] = {}
        if meta.get("name") not in (None, name):
            raise errors.bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})"
            )
        if rtype.namespaced and meta.get("namespace") not in (None, "", namespace):
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        if new.get("kind") not in (None, rtype.kind):
            raise errors.bad_request(f"the kind in the body ({new.get('kind')}) does not match {rtype.kind}")
        old_meta = old["metadata"]
        given_rv = meta.get("resourceVersion")
        if given_rv not in (None, "") and str(given_rv) != old_meta["resourceVersion"]:
            raise errors.conflict(rtype.plural, rtype.group, name)
        if given_rv in (None, "") and require_rv and rtype.custom:
            raise errors.invalid(
                rtype.kind, rtype.group, name,
                [FieldError.invalid("metadata.resourceVersion", "0x0", "must be specified for an update")],
            )  # fmt: skip
        strategy = self.strategies.of(rtype)
        result = strategy.keep_server_fields(rtype, new, old, sub)
        rmeta = result["metadata"]
        for key in _KEPT_ON_UPDATE:
            if key in old_meta:
                rmeta[key] = old_meta[key]
            else:
                rmeta.pop(key, None)
        rmeta["name"] = name
        if rtype.namespaced:
            rmeta["namespace"] = namespace
        rmeta.pop("selfLink", None)
        rmeta.pop("managedFields", None)
        result["apiVersion"], result["kind"] = rtype.api_version, rtype.kind
        if old_meta.get("deletionTimestamp"):
            added = set(rmeta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                raise errors.invalid(
                    rtype.kind, rtype.group, name,
                    [FieldError.forbidden("metadata.finalizers", "no new finalizers can be added if the object is being deleted")],
                )  # fmt: skip
        validate_metadata(rtype, result, strategy.name_pattern)
        validate_builtin(rtype, result)
        warnings = check_schema(rtype, result, old, query)
        strategy.admit_update(rtype, result, sub)
        if spec_part(result) != spec_part(old):
            rmeta["generation"] = int(old_meta.get("generation", 0)) + 1
        rmeta["resourceVersion"] = old_meta["resourceVersion"]
        if not rmeta.get("finalizers"):
            rmeta.pop("finalizers", None)
        comparable_old = copy.deepcopy(old)
        if not comparable_old["metadata"].get("finalizers"):
            comparable_old["metadata"].pop("finalizers", None)
        if result == comparable_old:
            return WriteResult(old)  # a no-op write: no new resourceVersion, no event, as in the real server
        if query.get("dryRun"):
            return WriteResult(result)
        rmeta["resourceVersion"] = self.store.next_resource_version()
        self.store.put(rtype, result, "MODIFIED", old)
        if strategy.after_write(result, sub, self):
            result = self.store.read(rtype, namespace, name)
        if rmeta.get("deletionTimestamp") and not rmeta.get("finalizers"):
            self.collector.remove(rtype, result)
        return WriteResult(present(rtype, result), 200, tuple(warnings))

    def rewrite(self, rtype: ResourceType, obj: JsonDict, sub: str | None = None) -> WriteResult:
        """A write on the server's own behalf (its controllers, the garbage collector): an update
        of the object named in ``obj``'s metadata, without a resourceVersion precondition."""
        meta = obj["metadata"]
        return self.update(rtype, meta.get("namespace"), meta["name"], obj, sub, {}, require_rv=False)

    def patch(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        body: Any,
        content_type: str,
        sub: str | None,
        query: dict[str, str],
    ) -> WriteResult:
        """PATCH in the three formats; a ``metadata.resourceVersion`` in the patch is a precondition.

        Strategic merge patches are refused for custom resources with 415, as the real server
        does (kubectl sends them a JSON merge patch). ``apply-patch+yaml`` (server-side apply) is
        approximated as create-or-merge without field ownership.
        """
        if content_type == "application/apply-patch+yaml":
            if self.store.get(rtype.store_key, namespace, name) is None:
                if isinstance(body, dict):
                    body = {**body, "metadata": {**(body.get("metadata") or {}), "name": name}}
                return self.create(rtype, namespace, body, query)
            content_type = "application/merge-patch+json"
        old = self.store.read(rtype, namespace, name)
        if content_type == "application/merge-patch+json":
            if not isinstance(body, dict):
                raise errors.bad_request("a merge patch must be a JSON object")
            patched = patching.merge_patch(old, body)
        elif content_type == "application/json-patch+json":
            patched = patching.json_patch(old, body)
        elif content_type == "application/strategic-merge-patch+json":
            if rtype.custom:
                raise errors.unsupported_media_type(
                    "application/strategic-merge-patch+json (strategic merge patch is not supported for custom resources)"
                )
            if not isinstance(body, dict):
                raise errors.bad_request("a strategic merge patch must be a JSON object")
            patched = patching.strategic_merge_patch(old, body)
        else:
            raise errors.unsupported_media_type(content_type or "(none)")
        if not isinstance(patched, dict):
            raise errors.bad_request("the patch did not produce an object")
        if not isinstance(patched.get("metadata"), dict):
            patched["metadata"] = {}
        # A patch without resourceVersion is unconditional: take the current one.
        patched["metadata"].setdefault("resourceVersion", old["metadata"]["resourceVersion"])
        return self.update(rtype, namespace, name, patched, sub, query, require_rv=False)
