"""The emulated Kubernetes API server: kmock's ``KubernetesEmulator`` with a real server's semantics.

kmock serves objects as plain JSON it merges on every write. This subclass keeps kmock's request
recording and DSL (tests may still add reactions such as ``emulator['get /api/v1/pods'] << 500``,
which take precedence), and replaces the object handling with what kopf, kubectl and the
``kubernetes`` client depend on: server-set metadata, optimistic concurrency, the three patch
formats, status/scale subresources, finalizers, garbage collection, CRD registration with schema
validation, selectors, resumable watches, discovery, OpenAPI and server-side printing.

Every mutation runs synchronously on the event loop (no ``await`` between reading and writing
the store), so concurrent clients are serialised exactly as etcd's compare-and-swap would do.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import copy
import dataclasses
import datetime
import json
import logging
import pathlib
import random
import re
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp.web
import kmock
import yaml
from kmock._internal import enums, rendering

from . import discovery, errors, patching, printing
from .catalog import ResourceType, load_builtins, types_from_crd, validate_crd
from .errors import ApiError, FieldError
from .selectors import parse_field_selector, parse_label_selector, selector_string

JsonDict = dict[str, Any]
StoreKey = tuple[str, str]  # (group, plural)
ObjectKey = tuple[str, str]  # (namespace or "", name)

logger = logging.getLogger(__name__)

CRD_GROUP, CRD_PLURAL = "apiextensions.k8s.io", "customresourcedefinitions"
CRD_CLEANUP_FINALIZER = "customresourcecleanup.apiextensions.k8s.io"
FOREGROUND_FINALIZER = "foregroundDeletion"
ORPHAN_FINALIZER = "orphan"
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
_SYSTEM_META = (
    "uid", "resourceVersion", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
    "generation", "selfLink", "managedFields",
)  # fmt: skip
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the real server's: no vowels, no confusables
_SHUTDOWN = object()


def now_rfc3339() -> str:
    """Kubernetes timestamps: RFC 3339, UTC, second precision, with a ``Z``."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _spec_part(obj: JsonDict) -> JsonDict:
    """What ``metadata.generation`` tracks: every top-level field except metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> aiohttp.web.Response:
    return aiohttp.web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


@dataclasses.dataclass
class ParsedPath:
    group: str
    version: str
    plural: str
    namespace: str | None
    name: str | None
    subresource: str | None


def parse_resource_path(path: str) -> ParsedPath | None:
    """Split an API path into its parts, including ``/api/v1/namespaces[/<name>[/status]]``.

    kmock 0.8's parser fails on ``/api/v1/namespaces`` (it takes it for a namespace prefix) and
    answers 500; kopf lists namespaces whenever it watches namespace patterns.
    """
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 3 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    if (
        rest[0] == "namespaces"
        and len(rest) >= 3
        and not (group == "" and len(rest) == 3 and rest[2] in ("status", "finalize"))
    ):
        namespace, rest = rest[1], rest[2:]
    if len(rest) > 3:
        return None
    return ParsedPath(
        group=group,
        version=version,
        plural=rest[0],
        namespace=namespace,
        name=rest[1] if len(rest) > 1 else None,
        subresource=rest[2] if len(rest) > 2 else None,
    )


@dataclasses.dataclass
class Event:
    rv: int
    type: str
    store_key: StoreKey
    obj: JsonDict
    old: JsonDict | None


@dataclasses.dataclass(eq=False)
class Watcher:
    """One open watch stream: its filters and the queue its events are delivered through."""

    store_key: StoreKey
    namespace: str | None
    name: str | None
    labels: Any
    fields: Any
    queue: asyncio.Queue[Any] = dataclasses.field(default_factory=asyncio.Queue)

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


class ApiEmulator(kmock.KubernetesEmulator):
    """A Kubernetes API server emulated in memory, behaving like the real one where clients look.

    See the module docstring for the list; ``docs`` of each handler name the quirk it emulates.
    """

    def __init__(self, *, crds_dir: str | pathlib.Path | None = None, history: int = 10_000) -> None:
        super().__init__()
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        self._store: dict[StoreKey, dict[ObjectKey, JsonDict]] = collections.defaultdict(dict)
        self._uids: dict[str, tuple[StoreKey, ObjectKey]] = {}
        self._rv = 0
        self._history: collections.deque[Event] = collections.deque(maxlen=history)
        self._history_floor = 0  # events at or below this resourceVersion may be gone
        self._watchers: set[Watcher] = set()
        self._mutex = threading.RLock()  # for readers in other threads (ApiServerThread users)
        self._max_requests = 2_000
        self.address = "127.0.0.1:0"
        # Answer kubectl's aggregated-discovery Accept header in kind; off forces the legacy path.
        self.aggregated_discovery = True
        for rtype in load_builtins():
            self._types[(rtype.group, rtype.version, rtype.plural)] = rtype
        for namespace in SYSTEM_NAMESPACES:
            self.create_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        if crds_dir is not None:
            self.load_crds(crds_dir)

    def __attrs_post_init__(self) -> None:
        # kmock registers its own fallback reactions here; this server routes requests itself.
        pass

    # -- public, synchronous API (for the loop's thread, or under the ApiServerThread's loop) --

    @property
    def resource_version(self) -> int:
        return self._rv

    def resource_types(self) -> list[ResourceType]:
        return list(self._types.values())

    def find_type(self, group: str, version: str | None, plural_or_kind: str) -> ResourceType:
        for rtype in self._types.values():
            same_version = version is None or rtype.version == version
            if (
                rtype.group == group
                and same_version
                and plural_or_kind in (rtype.plural, rtype.kind, rtype.singular)
            ):
                return rtype
        raise ApiError(
            404, "NotFound", f"the server could not find the requested resource ({group}/{plural_or_kind})"
        )

    def load_crds(self, directory: str | pathlib.Path) -> int:
        """Register every CustomResourceDefinition found in ``*.yaml``/``*.yml``/``*.json`` files."""
        count = 0
        for path in sorted(pathlib.Path(directory).glob("*")):
            if path.suffix not in (".yaml", ".yml", ".json"):
                continue
            for doc in yaml.safe_load_all(path.read_text()):
                if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                    name = (doc.get("metadata") or {}).get("name", "")
                    if ("", name) in self._store[(CRD_GROUP, CRD_PLURAL)]:
                        self.update_object({**doc, "metadata": {**doc["metadata"]}})
                    else:
                        self.create_object(doc)
                    count += 1
        return count

    def create_object(self, body: JsonDict) -> JsonDict:
        """Create an object as if POSTed (validation, defaults, events): for seeding and loaders."""
        rtype = self._type_for_body(body)
        namespace = (body.get("metadata") or {}).get("namespace") or ("default" if rtype.namespaced else None)
        return self._create(rtype, namespace, body, {})[0]

    def update_object(self, body: JsonDict) -> JsonDict:
        """Replace an object as if PUT without a resourceVersion precondition."""
        rtype = self._type_for_body(body)
        meta = body.get("metadata") or {}
        namespace = meta.get("namespace") or ("default" if rtype.namespaced else None)
        old = self._get(rtype, namespace, meta["name"])
        new = copy.deepcopy(body)
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        return self._update(rtype, namespace, meta["name"], new, None, {})

    def get_object(self, api_version: str, kind: str, namespace: str | None, name: str) -> JsonDict | None:
        """A copy of a stored object, or None; safe to call from any thread."""
        group, _, version = api_version.rpartition("/")
        rtype = self.find_type(group, version, kind)
        with self._mutex:
            obj = self._store[rtype.store_key].get((namespace or "", name))
            return copy.deepcopy(self._present(rtype, obj)) if obj is not None else None

    def list_objects(self, api_version: str, kind: str, namespace: str | None = None) -> list[JsonDict]:
        """Copies of all stored objects of a kind (optionally in one namespace); any thread."""
        group, _, version = api_version.rpartition("/")
        rtype = self.find_type(group, version, kind)
        with self._mutex:
            return [
                copy.deepcopy(self._present(rtype, obj))
                for (ns, _), obj in sorted(self._store[rtype.store_key].items())
                if namespace is None or ns == namespace
            ]

    def dump_state(self) -> JsonDict:
        """Everything needed to restart with the same objects and resourceVersions."""
        with self._mutex:
            objects = [
                {"group": group, "plural": plural, "object": obj}
                for (group, plural), objs in self._store.items()
                for obj in objs.values()
            ]
        # CRDs first, so that their custom resources can be registered on load.
        objects.sort(key=lambda o: (o["group"], o["plural"]) != (CRD_GROUP, CRD_PLURAL))
        return {"resourceVersion": self._rv, "objects": objects}

    def load_state(self, state: JsonDict) -> None:
        """Restore a ``dump_state()`` verbatim (uids, resourceVersions, timestamps kept)."""
        with self._mutex:
            for entry in state.get("objects", []):
                key = (entry["group"], entry["plural"])
                obj = entry["object"]
                meta = obj["metadata"]
                okey = (meta.get("namespace") or "", meta["name"])
                self._store[key][okey] = obj
                self._uids[meta["uid"]] = (key, okey)
                if key == (CRD_GROUP, CRD_PLURAL):
                    self._register_crd(obj)
            self._rv = max(self._rv, int(state.get("resourceVersion", 0)))
            self._history.clear()
            self._history_floor = self._rv

    def close_watches(self) -> None:
        """End all watch streams (at shutdown), so that clients see a clean end of stream."""
        for watcher in list(self._watchers):
            watcher.queue.put_nowait(_SHUTDOWN)

    # -- request entry point ---------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """Parse and record the request (for kmock assertions), then serve it."""
        body = await raw_request.read()
        parsed = parse_resource_path(raw_request.path)
        data: Any = None
        if body:
            try:
                data = json.loads(body)
            except ValueError:
                data = None
        query = dict(raw_request.query)
        request = rendering.Request(
            id=len(self._requests),
            raw_request=raw_request,
            url=raw_request.url,
            method=raw_request.method,
            params=query,
            headers=dict(raw_request.headers),
            cookies=dict(raw_request.cookies),
            body=body,
            text=body.decode("utf-8", "replace"),
            data=data,
            action=_guess_action(parsed, raw_request.method, query),
            resource=None if parsed is None else kmock.resource(parsed.group, parsed.version, parsed.plural),
            namespace=None if parsed is None else parsed.namespace,
            name=None if parsed is None else parsed.name,
            subresource=None if parsed is None else parsed.subresource,
        )
        self._requests.append(request)
        if len(self._requests) > self._max_requests:
            # A long-running sandbox must not keep every request body forever.
            del self._requests[: len(self._requests) - self._max_requests // 2]
        try:
            return await self._handle(request)
        except ApiError as exc:
            return _json(exc.status(), exc.code)
        except Exception as exc:
            logger.exception(
                "the emulated API server failed on %s %s", raw_request.method, raw_request.path_qs
            )
            return _json(ApiError(500, "InternalError", f"{type(exc).__name__}: {exc}").status(), 500)

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        if self._payloads:  # reactions added through kmock's DSL win (fault injection in tests)
            try:
                response: aiohttp.web.StreamResponse = await kmock.RawHandler._handle(self, request)
                return response
            except NotImplementedError:
                pass
        return await self._route(request)

    async def _route(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        raw = request._raw_request
        assert raw is not None
        path = raw.path.rstrip("/") or "/"
        method = raw.method.upper()
        accept = raw.headers.get("Accept", "")
        if method == "GET":
            static = self._serve_static(path, accept)
            if static is not None:
                return static
        parsed = parse_resource_path(path)
        if parsed is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        rtype = self._types.get((parsed.group, parsed.version, parsed.plural))
        if rtype is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if parsed.namespace is not None and not rtype.namespaced:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if parsed.subresource not in (None, "status", "scale", "finalize"):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if parsed.subresource == "status" and not rtype.status:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if parsed.subresource == "scale" and rtype.scale is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        query = dict(raw.query)
        namespace = parsed.namespace
        name = parsed.name
        sub = parsed.subresource
        table = "as=Table" in accept
        if method == "GET" and _is_true(query.get("watch")):
            return await self._serve_watch_stream(raw, rtype, namespace, name, query, table)
        if method == "GET" and name is None:
            return _json(self._list(rtype, namespace, query, table))
        if (
            rtype.namespaced
            and namespace is None
            and method != "GET"
            and not (method == "DELETE" and name is None)
        ):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if method == "GET":
            assert name is not None
            obj = self._get(rtype, namespace, name)
            if sub == "scale":
                return _json(self._scale_of(rtype, obj))
            if table:
                return _json(
                    printing.table(rtype, [obj], str(self._rv), query.get("includeObject", "Metadata"))
                )
            return _json(obj)
        body = self._body(request, raw.headers.get("Content-Type", ""))
        if method == "POST" and name is None:
            obj, code = self._create(rtype, namespace, body, query)
            return _json(obj, code, self._warnings(obj))
        if method == "DELETE" and name is None:
            return _json(self._delete_collection(rtype, namespace, body, query))
        if name is None:
            raise errors.method_not_allowed()
        if method == "PUT":
            if sub == "scale":
                return _json(self._put_scale(rtype, namespace, name, body, query))
            result = self._update(rtype, namespace, name, body, sub, query)
            return _json(result, 200, self._warnings(result))
        if method == "PATCH":
            content_type = raw.headers.get("Content-Type", "").split(";")[0].strip()
            if sub == "scale":
                return _json(self._patch_scale(rtype, namespace, name, body, content_type, query))
            obj, code = self._patch(rtype, namespace, name, body, content_type, sub, query)
            return _json(obj, code, self._warnings(obj))
        if method == "DELETE":
            obj, code = self._delete(rtype, namespace, name, body if isinstance(body, dict) else {}, query)
            return _json(obj, code)
        raise errors.method_not_allowed()

    @staticmethod
    def _warnings(obj: JsonDict) -> dict[str, str] | None:
        warnings = obj.pop("__warnings__", None) if isinstance(obj, dict) else None
        if not warnings:
            return None
        return {"Warning": ", ".join(f'299 - "{w}"'.replace("\n", " ") for w in warnings)}

    @staticmethod
    def _body(request: rendering.Request, content_type: str) -> Any:
        if not request.body:
            return None
        try:
            if "yaml" in content_type:
                return yaml.safe_load(request.body)
            return json.loads(request.body)
        except (ValueError, yaml.YAMLError) as exc:
            raise errors.bad_request(f"the request body could not be decoded: {exc}") from exc

    # -- discovery, version, OpenAPI ---------------------------------------------------------------

    def _serve_static(self, path: str, accept: str) -> aiohttp.web.Response | None:
        types = list(self._types.values())
        aggregated = self.aggregated_discovery and "as=APIGroupDiscoveryList" in accept and "v=v2" in accept
        if path == "/version":
            return _json(discovery.KUBERNETES_VERSION)
        if path in ("/healthz", "/livez", "/readyz"):
            return aiohttp.web.Response(text="ok")
        if path == "/":
            return _json({"paths": ["/api", "/api/v1", "/apis", "/openapi/v2", "/openapi/v3", "/version"]})
        if path in ("/api", "/apis"):
            if aggregated:
                # kubectl prefers the aggregated form: one request instead of one per group.
                body = discovery.aggregated_discovery(types, core=path == "/api")
                return aiohttp.web.Response(
                    body=json.dumps(body).encode(),
                    headers={"Content-Type": discovery.AGGREGATED_V2},
                )
            if path == "/api":
                return _json(discovery.api_versions(self.address))
            return _json(discovery.api_group_list(types))
        if path == "/openapi/v2":
            return _json(discovery.openapi_v2_document(types))
        if path == "/openapi/v3":
            return _json(discovery.openapi_v3_index(types))
        if path.startswith("/openapi/v3/"):
            parts = path[len("/openapi/v3/") :].split("/")
            group, version = (
                ("", parts[1])
                if parts[0] == "api" and len(parts) == 2
                else (parts[1], parts[2])
                if (parts[0] == "apis" and len(parts) == 3)
                else (None, None)
            )
            members = [t for t in types if t.group == group and t.version == version]
            if group is None or version is None or not members:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return _json(discovery.openapi_v3_document(group, version, members))
        parts = [p for p in path.split("/") if p]
        if parts and parts[0] == "apis" and len(parts) == 2:
            versions = discovery.group_versions(types).get(parts[1])
            if not versions:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return _json({"kind": "APIGroup", "apiVersion": "v1", **discovery.api_group(parts[1], versions)})
        if (parts[:1] == ["api"] and len(parts) == 2) or (parts[:1] == ["apis"] and len(parts) == 3):
            group, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])
            members = [t for t in types if t.group == group and t.version == version]
            if not members:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return _json(discovery.api_resource_list(group, version, members))
        return None

    # -- reading -------------------------------------------------------------------------------

    def _present(self, rtype: ResourceType, obj: JsonDict) -> JsonDict:
        # The same stored object is served at every version of its resource (conversion "None").
        return {**obj, "apiVersion": rtype.api_version, "kind": rtype.kind}

    def _get(self, rtype: ResourceType, namespace: str | None, name: str) -> JsonDict:
        obj = self._store[rtype.store_key].get((namespace or "", name))
        if obj is None:
            raise errors.not_found(rtype.plural, rtype.group, name)
        return self._present(rtype, obj)

    def _select(self, rtype: ResourceType, namespace: str | None, query: dict[str, str]) -> list[JsonDict]:
        labels = parse_label_selector(query.get("labelSelector"))
        fields = parse_field_selector(query.get("fieldSelector"))
        with self._mutex:
            items = sorted(self._store[rtype.store_key].items())
        return [
            self._present(rtype, obj)
            for (ns, _), obj in items
            if (namespace is None or ns == namespace) and labels(obj) and fields(obj)
        ]

    def _list(
        self, rtype: ResourceType, namespace: str | None, query: dict[str, str], table: bool
    ) -> JsonDict:
        """A list with ``kind: <Kind>List`` and the current resourceVersion to watch from.

        ``limit``/``continue`` paginate over the (namespace, name) order, as kubectl expects.
        """
        items = self._select(rtype, namespace, query)
        meta: JsonDict = {"resourceVersion": str(self._rv)}
        start = 0
        if query.get("continue"):
            try:
                token = json.loads(base64.urlsafe_b64decode(query["continue"]))
                start = int(token["start"])
            except (ValueError, KeyError, TypeError) as exc:
                raise errors.bad_request("invalid continue token") from exc
        limit = int(query["limit"]) if query.get("limit", "").isdigit() and int(query["limit"]) > 0 else 0
        if start or limit:
            end = start + limit if limit else len(items)
            if end < len(items):
                meta["continue"] = base64.urlsafe_b64encode(json.dumps({"start": end}).encode()).decode()
                meta["remainingItemCount"] = len(items) - end
            items = items[start:end]
        if table:
            result = printing.table(rtype, items, str(self._rv), query.get("includeObject", "Metadata"))
            result["metadata"] = meta
            return result
        return {"kind": rtype.list_kind, "apiVersion": rtype.api_version, "metadata": meta, "items": items}

    # -- the write path ------------------------------------------------------------------------

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _emit(self, kind: str, store_key: StoreKey, obj: JsonDict, old: JsonDict | None) -> None:
        event = Event(int(obj["metadata"]["resourceVersion"]), kind, store_key, obj, old)
        if len(self._history) == self._history.maxlen:
            self._history_floor = self._history[0].rv
        self._history.append(event)
        for watcher in list(self._watchers):
            translated = watcher.translate(event)
            if translated is not None:
                watcher.queue.put_nowait(translated)

    def _put(self, rtype: ResourceType, obj: JsonDict, event: str, old: JsonDict | None) -> None:
        meta = obj["metadata"]
        okey = (meta.get("namespace") or "", meta["name"])
        stored = {
            **obj,
            "apiVersion": f"{rtype.group}/{rtype.storage_version}" if rtype.group else rtype.version,
        }
        with self._mutex:
            self._store[rtype.store_key][okey] = stored
            self._uids[meta["uid"]] = (rtype.store_key, okey)
        self._emit(event, rtype.store_key, stored, old)

    def _type_for_body(self, body: JsonDict) -> ResourceType:
        api_version = str(body.get("apiVersion", ""))
        group, _, version = api_version.rpartition("/")
        return self.find_type(group, version, str(body.get("kind", "")))

    def _check_namespace(self, rtype: ResourceType, namespace: str | None, name: str) -> None:
        if not rtype.namespaced:
            return
        ns = self._store[("", "namespaces")].get(("", namespace or ""))
        if ns is None:
            # Chosen to match the real server: no implicit namespace creation.
            raise errors.not_found("namespaces", "", namespace or "")
        if (ns.get("metadata") or {}).get("deletionTimestamp"):
            raise errors.forbidden(
                rtype.plural, rtype.group, name,
                f"unable to create new content in namespace {namespace} because it is being terminated",
            )  # fmt: skip

    def _schema_checks(
        self, rtype: ResourceType, obj: JsonDict, old: JsonDict | None, query: dict[str, str]
    ) -> list[str]:
        """Prune, default and validate a custom resource; return warnings (fieldValidation=Warn)."""
        if rtype.schema is None:
            return []
        pruned = rtype.schema.prune(obj)
        directive = query.get("fieldValidation", "Warn" if pruned else "Ignore")
        name = (obj.get("metadata") or {}).get("name") or (obj.get("metadata") or {}).get("generateName", "")
        if pruned and directive == "Strict":
            text = ", ".join(f'unknown field "{p}"' for p in pruned)
            raise errors.bad_request(f"strict decoding error: {text}")
        rtype.schema.apply_defaults(obj)
        problems = rtype.schema.validate(obj, old)
        if problems:
            raise errors.invalid(rtype.kind, rtype.group, name, problems)
        return [f'unknown field "{p}"' for p in pruned] if directive == "Warn" else []

    def _validate_meta(self, rtype: ResourceType, obj: JsonDict) -> None:
        meta = obj["metadata"]
        name = meta.get("name", "")
        problems: list[FieldError] = []
        pattern = _DNS_LABEL if (rtype.group, rtype.plural) == ("", "namespaces") else _DNS_SUBDOMAIN
        if not pattern.match(name) or len(name) > 253:
            problems.append(
                FieldError.invalid(
                    "metadata.name", name,
                    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.',"
                    " and must start and end with an alphanumeric character",
                )
            )  # fmt: skip
        for key, value in (meta.get("labels") or {}).items():
            if not isinstance(value, str) or len(value) > 63:
                problems.append(
                    FieldError.invalid(f"metadata.labels.{key}", value, "must be no more than 63 characters")
                )
        for field in ("labels", "annotations"):
            if meta.get(field) is not None and not isinstance(meta[field], dict):
                problems.append(
                    FieldError.invalid(f"metadata.{field}", meta[field], "must be a map of strings")
                )
        if problems:
            raise errors.invalid(rtype.kind, rtype.group, name, problems)

    def _create(
        self, rtype: ResourceType, namespace: str | None, body: Any, query: dict[str, str]
    ) -> tuple[JsonDict, int]:
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
        if rtype.status and (rtype.group, rtype.plural) != (CRD_GROUP, CRD_PLURAL):
            obj.pop("status", None)
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
                if ((namespace or ""), candidate) not in self._store[rtype.store_key]:
                    meta["name"] = candidate
                    break
        name = meta["name"]
        self._validate_meta(rtype, obj)
        self._check_namespace(rtype, namespace, name)
        warnings = self._schema_checks(rtype, obj, None, query)
        if (rtype.group, rtype.plural) == (CRD_GROUP, CRD_PLURAL):
            problems = validate_crd(obj)
            if problems:
                raise errors.invalid(rtype.kind, rtype.group, name, problems)
            meta["finalizers"] = sorted({*(meta.get("finalizers") or []), CRD_CLEANUP_FINALIZER})
            obj.pop("status", None)
        if (rtype.group, rtype.plural) == ("", "namespaces"):
            obj["spec"] = {"finalizers": ["kubernetes"]}
            obj["status"] = {"phase": "Active"}
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
        if ((namespace or ""), name) in self._store[rtype.store_key]:
            raise errors.already_exists(rtype.plural, rtype.group, name)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        meta["generation"] = 1
        if query.get("dryRun"):
            meta["resourceVersion"] = str(self._rv)
            return obj, 201
        meta["resourceVersion"] = self._next_rv()
        self._put(rtype, obj, "ADDED", None)
        if (rtype.group, rtype.plural) == (CRD_GROUP, CRD_PLURAL):
            self._register_crd(obj)
            self._set_crd_status(obj)
        result = self._present(rtype, obj)
        if warnings:
            result = {**result, "__warnings__": warnings}
        return result, 201

    def _update(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        body: Any,
        sub: str | None,
        query: dict[str, str],
        *,
        require_rv: bool = True,
    ) -> JsonDict:
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
        old = self._get(rtype, namespace, name)
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
        if sub == "status":
            # The status strategy resets everything but .status to the stored object.
            result = copy.deepcopy(old)
            if "status" in new:
                result["status"] = new["status"]
            else:
                result.pop("status", None)
        else:
            result = new
            if rtype.status and (rtype.group, rtype.plural) != ("", "namespaces"):
                if "status" in old:
                    result["status"] = copy.deepcopy(old["status"])
                else:
                    result.pop("status", None)
            if (rtype.group, rtype.plural) == ("", "namespaces"):
                result["spec"] = copy.deepcopy(old.get("spec"))
                result["status"] = copy.deepcopy(old.get("status"))
        rmeta = result["metadata"]
        for key in (
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ):
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
        self._validate_meta(rtype, result)
        warnings = self._schema_checks(rtype, result, old, query)
        if (rtype.group, rtype.plural) == (CRD_GROUP, CRD_PLURAL) and sub != "status":
            problems = validate_crd(result)
            if problems:
                raise errors.invalid(rtype.kind, rtype.group, name, problems)
        if _spec_part(result) != _spec_part(old):
            rmeta["generation"] = int(old_meta.get("generation", 0)) + 1
        rmeta["resourceVersion"] = old_meta["resourceVersion"]
        if not rmeta.get("finalizers"):
            rmeta.pop("finalizers", None)
        comparable_old = copy.deepcopy(old)
        if not comparable_old["metadata"].get("finalizers"):
            comparable_old["metadata"].pop("finalizers", None)
        if result == comparable_old:
            return old  # a no-op write: no new resourceVersion, no event, as in the real server
        if query.get("dryRun"):
            return result
        rmeta["resourceVersion"] = self._next_rv()
        self._put(rtype, result, "MODIFIED", old)
        if (rtype.group, rtype.plural) == (CRD_GROUP, CRD_PLURAL) and sub != "status":
            self._register_crd(result)
            self._set_crd_status(result)
            result = self._get(rtype, namespace, name)
        if rmeta.get("deletionTimestamp") and not rmeta.get("finalizers"):
            self._remove(rtype, result)
        presented = self._present(rtype, result)
        if warnings:
            presented["__warnings__"] = warnings
        return presented

    def _patch(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        body: Any,
        content_type: str,
        sub: str | None,
        query: dict[str, str],
    ) -> tuple[JsonDict, int]:
        """PATCH in the three formats; a ``metadata.resourceVersion`` in the patch is a precondition.

        Strategic merge patches are refused for custom resources with 415, as the real server
        does (kubectl sends them a JSON merge patch). ``apply-patch+yaml`` (server-side apply) is
        approximated as create-or-merge without field ownership.
        """
        if content_type == "application/apply-patch+yaml":
            key = ((namespace or ""), name)
            if key not in self._store[rtype.store_key]:
                if isinstance(body, dict):
                    body = {**body, "metadata": {**(body.get("metadata") or {}), "name": name}}
                return self._create(rtype, namespace, body, query)
            content_type = "application/merge-patch+json"
        old = self._get(rtype, namespace, name)
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
        return self._update(rtype, namespace, name, patched, sub, query, require_rv=False), 200

    # -- scale subresource ----------------------------------------------------------------------

    def _scale_of(self, rtype: ResourceType, obj: JsonDict) -> JsonDict:
        """The ``autoscaling/v1 Scale`` view: spec/status replicas from the declared paths."""
        assert rtype.scale is not None
        meta = obj["metadata"]
        spec_replicas = printing.jsonpath(obj, rtype.scale.spec_replicas_path)
        status_replicas = printing.jsonpath(obj, rtype.scale.status_replicas_path)
        status: JsonDict = {"replicas": status_replicas[0] if status_replicas else 0}
        if rtype.scale.label_selector_path:
            selector = printing.jsonpath(obj, rtype.scale.label_selector_path)
            if selector and isinstance(selector[0], dict):  # builtins keep a LabelSelector
                status["selector"] = selector_string(
                    selector[0].get("matchLabels"), selector[0].get("matchExpressions")
                )
            elif selector:
                status["selector"] = selector[0]
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                k: meta[k]
                for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                if k in meta
            },
            "spec": {"replicas": spec_replicas[0] if spec_replicas else 0},
            "status": status,
        }

    def _put_scale(
        self, rtype: ResourceType, namespace: str | None, name: str, body: Any, query: dict[str, str]
    ) -> JsonDict:
        if not isinstance(body, dict):
            raise errors.bad_request("the body must be a Scale")
        old = self._get(rtype, namespace, name)
        rv = (body.get("metadata") or {}).get("resourceVersion")
        if rv not in (None, "") and str(rv) != old["metadata"]["resourceVersion"]:
            raise errors.conflict(rtype.plural, rtype.group, name)
        replicas = (body.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise errors.invalid(
                "Scale",
                "autoscaling",
                name,
                [FieldError.invalid("spec.replicas", replicas, "must be greater than or equal to 0")],
            )
        assert rtype.scale is not None
        new = copy.deepcopy(old)
        _set_path(new, rtype.scale.spec_replicas_path, replicas)
        updated = self._update(rtype, namespace, name, new, None, query, require_rv=False)
        return self._scale_of(rtype, updated)

    def _patch_scale(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        body: Any,
        content_type: str,
        query: dict[str, str],
    ) -> JsonDict:
        current = self._scale_of(rtype, self._get(rtype, namespace, name))
        if content_type == "application/json-patch+json":
            patched = patching.json_patch(current, body)
        else:
            patched = patching.merge_patch(current, body)
        return self._put_scale(rtype, namespace, name, patched, query)

    # -- deletion and garbage collection -----------------------------------------------------

    def _delete(
        self, rtype: ResourceType, namespace: str | None, name: str, options: JsonDict, query: dict[str, str]
    ) -> tuple[JsonDict, int]:
        """DELETE with finalizers, preconditions and propagation policies.

        With finalizers the object only gets ``deletionTimestamp`` (and, as in the real server,
        ``deletionGracePeriodSeconds: 0`` and a generation bump) and the answer is 202; it
        goes when the last finalizer is removed. ``Foreground`` adds the ``foregroundDeletion``
        finalizer until the dependents are gone; ``Orphan`` strips the owner references from
        the dependents; ``Background`` (the default) deletes the dependents after the owner.
        """
        obj = self._get(rtype, namespace, name)
        meta = obj["metadata"]
        preconditions = options.get("preconditions") or {}
        if preconditions.get("uid") not in (None, meta["uid"]):
            raise errors.conflict(
                rtype.plural, rtype.group, name,
                f"Precondition failed: UID in precondition: {preconditions['uid']}, UID in object meta: {meta['uid']}",
            )  # fmt: skip
        if preconditions.get("resourceVersion") not in (None, meta["resourceVersion"]):
            raise errors.conflict(rtype.plural, rtype.group, name)
        if (rtype.group, rtype.plural) == ("", "namespaces") and name in SYSTEM_NAMESPACES[:3]:
            raise errors.forbidden(rtype.plural, rtype.group, name, "this namespace may not be deleted")
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
            self._orphan_dependents(meta["uid"])
        finalizers = list(meta.get("finalizers") or [])
        if policy == "Foreground" and self._dependents(meta["uid"]):
            finalizers.append(FOREGROUND_FINALIZER)
        special = (rtype.group, rtype.plural) in (("", "namespaces"), (CRD_GROUP, CRD_PLURAL))
        if finalizers or special:
            marked = copy.deepcopy(obj)
            mmeta = marked["metadata"]
            mmeta["deletionTimestamp"] = now_rfc3339()
            mmeta["deletionGracePeriodSeconds"] = 0
            mmeta["generation"] = int(mmeta.get("generation", 0)) + 1
            if finalizers:
                mmeta["finalizers"] = finalizers
            if (rtype.group, rtype.plural) == ("", "namespaces"):
                marked["status"] = {"phase": "Terminating"}
            mmeta["resourceVersion"] = self._next_rv()
            self._put(rtype, marked, "MODIFIED", obj)
            if policy == "Foreground":
                for dependent in self._dependents(meta["uid"]):
                    self._delete_internal(dependent, "Background")
            if (rtype.group, rtype.plural) == ("", "namespaces"):
                self._empty_namespace(name)
            elif (rtype.group, rtype.plural) == (CRD_GROUP, CRD_PLURAL):
                self._empty_crd(marked)
            self._reconcile_cleanups()
            current = self._store[rtype.store_key].get(((namespace or ""), name))
            return self._present(rtype, current if current is not None else marked), 202
        removed = self._remove(rtype, obj)
        return removed, 200

    def _delete_collection(
        self, rtype: ResourceType, namespace: str | None, body: Any, query: dict[str, str]
    ) -> JsonDict:
        """DELETE on a list URL: every object matching the selectors, then a list of what went."""
        items = self._select(rtype, namespace, query)
        options = body if isinstance(body, dict) else {}
        deleted = []
        for item in items:
            meta = item["metadata"]
            obj, _ = self._delete(rtype, meta.get("namespace"), meta["name"], options, query)
            deleted.append(obj)
        return {
            "kind": rtype.list_kind,
            "apiVersion": rtype.api_version,
            "metadata": {"resourceVersion": str(self._rv)},
            "items": deleted,
        }

    def _type_of_store_key(self, store_key: StoreKey) -> ResourceType | None:
        for rtype in self._types.values():
            if rtype.store_key == store_key and rtype.version == rtype.storage_version:
                return rtype
        return None

    def _remove(self, rtype: ResourceType, obj: JsonDict) -> JsonDict:
        """Really delete: a DELETED event carrying a new resourceVersion, then collect garbage."""
        meta = obj["metadata"]
        okey = (meta.get("namespace") or "", meta["name"])
        with self._mutex:
            stored = self._store[rtype.store_key].pop(okey, None)
            if stored is None:
                return self._present(rtype, obj)
            self._uids.pop(meta["uid"], None)
        gone = copy.deepcopy(stored)
        gone["metadata"]["resourceVersion"] = self._next_rv()
        self._emit("DELETED", rtype.store_key, gone, stored)
        if (rtype.group, rtype.plural) == (CRD_GROUP, CRD_PLURAL):
            self._unregister_crd(stored)
        self._collect_garbage(meta["uid"])
        self._reconcile_cleanups()
        return self._present(rtype, gone)

    def _dependents(self, uid: str) -> list[tuple[ResourceType, JsonDict]]:
        found: list[tuple[ResourceType, JsonDict]] = []
        with self._mutex:
            snapshot = [(k, list(objs.values())) for k, objs in self._store.items()]
        for store_key, objs in snapshot:
            for obj in objs:
                refs = (obj.get("metadata") or {}).get("ownerReferences") or []
                if any(r.get("uid") == uid for r in refs):
                    rtype = self._type_of_store_key(store_key)
                    if rtype is not None:
                        found.append((rtype, obj))
        return found

    def _delete_internal(self, dependent: tuple[ResourceType, JsonDict], policy: str) -> None:
        rtype, obj = dependent
        meta = obj["metadata"]
        try:
            self._delete(rtype, meta.get("namespace"), meta["name"], {"propagationPolicy": policy}, {})
        except ApiError as exc:
            logger.debug("garbage collection of %s/%s skipped: %s", rtype.plural, meta["name"], exc.message)

    def _strip_owner(self, rtype: ResourceType, obj: JsonDict, uid: str) -> None:
        meta = obj["metadata"]
        changed = copy.deepcopy(obj)
        refs = [r for r in meta.get("ownerReferences") or [] if r.get("uid") != uid]
        if refs:
            changed["metadata"]["ownerReferences"] = refs
        else:
            changed["metadata"].pop("ownerReferences", None)
        try:
            self._update(rtype, meta.get("namespace"), meta["name"], changed, None, {}, require_rv=False)
        except ApiError as exc:  # gone meanwhile: nothing to strip
            logger.debug("owner reference of %s/%s not stripped: %s", rtype.plural, meta["name"], exc.message)

    def _orphan_dependents(self, uid: str) -> None:
        for rtype, obj in self._dependents(uid):
            self._strip_owner(rtype, obj, uid)

    def _collect_garbage(self, uid: str) -> None:
        """The garbage collector: dependents of a removed owner go too, unless another owner lives.

        The real collector is asynchronous; here it runs right after the owner's removal, which
        only makes it faster (clients must poll either way).
        """
        for rtype, obj in self._dependents(uid):
            refs = obj["metadata"].get("ownerReferences") or []
            alive = [r for r in refs if r.get("uid") != uid and r.get("uid") in self._uids]
            if alive:
                self._strip_owner(rtype, obj, uid)
            else:
                self._delete_internal((rtype, obj), "Background")

    def _empty_namespace(self, namespace: str) -> None:
        """The namespace controller: delete everything in a terminating namespace."""
        for store_key, objs in list(self._store.items()):
            rtype = self._type_of_store_key(store_key)
            if rtype is None or not rtype.namespaced:
                continue
            for (ns, _), obj in list(objs.items()):
                if ns == namespace:
                    self._delete_internal((rtype, obj), "Background")

    def _empty_crd(self, crd: JsonDict) -> None:
        """The CRD cleanup controller: delete every custom resource of a CRD being deleted."""
        spec = crd.get("spec") or {}
        store_key = (spec.get("group", ""), (spec.get("names") or {}).get("plural", ""))
        rtype = self._type_of_store_key(store_key)
        if rtype is None:
            return
        for obj in list(self._store[store_key].values()):
            self._delete_internal((rtype, obj), "Background")

    def _reconcile_cleanups(self) -> None:
        """Drop the system finalizers of terminating namespaces, CRDs and foreground owners
        whose contents are gone (what the namespace, CRD and GC controllers do)."""
        changed = True
        while changed:
            changed = False
            for store_key, objs in list(self._store.items()):
                for okey, obj in list(objs.items()):
                    meta = obj["metadata"]
                    if not meta.get("deletionTimestamp") or self._store[store_key].get(okey) is not obj:
                        continue  # not terminating, or already changed by a nested cleanup
                    rtype = self._type_of_store_key(store_key)
                    if rtype is None:
                        continue
                    if store_key == ("", "namespaces"):
                        name = meta["name"]
                        busy = any(
                            ns == name
                            for k, o in self._store.items()
                            for (ns, _) in o
                            if k != ("", "namespaces")
                        )
                        if not busy:
                            self._remove(rtype, obj)
                            changed = True
                        continue
                    finalizers = list(meta.get("finalizers") or [])
                    drop: set[str] = set()
                    if store_key == (CRD_GROUP, CRD_PLURAL) and CRD_CLEANUP_FINALIZER in finalizers:
                        spec = obj.get("spec") or {}
                        cr_key = (spec.get("group", ""), (spec.get("names") or {}).get("plural", ""))
                        if not self._store.get(cr_key):
                            drop.add(CRD_CLEANUP_FINALIZER)
                    if FOREGROUND_FINALIZER in finalizers and not self._dependents(meta["uid"]):
                        drop.add(FOREGROUND_FINALIZER)
                    if drop:
                        updated = copy.deepcopy(obj)
                        updated["metadata"]["finalizers"] = [f for f in finalizers if f not in drop]
                        self._update(
                            rtype, meta.get("namespace"), meta["name"], updated, None, {}, require_rv=False
                        )
                        changed = True

    # -- CRDs ------------------------------------------------------------------------------------

    def _register_crd(self, crd: JsonDict) -> None:
        """Serve a CRD's versions: discovery, OpenAPI, validation and storage follow from here."""
        spec = crd.get("spec") or {}
        group = spec.get("group", "")
        plural = (spec.get("names") or {}).get("plural", "")
        for key in [k for k, t in self._types.items() if t.custom and (t.group, t.plural) == (group, plural)]:
            del self._types[key]
        for rtype in types_from_crd(crd):
            self._types[(rtype.group, rtype.version, rtype.plural)] = rtype

    def _unregister_crd(self, crd: JsonDict) -> None:
        spec = crd.get("spec") or {}
        group = spec.get("group", "")
        plural = (spec.get("names") or {}).get("plural", "")
        for key in [k for k, t in self._types.items() if t.custom and (t.group, t.plural) == (group, plural)]:
            del self._types[key]
        self._store.pop((group, plural), None)

    def _set_crd_status(self, crd: JsonDict) -> None:
        """What the apiextensions controllers write: NamesAccepted, Established, acceptedNames."""
        rtype = self.find_type(CRD_GROUP, "v1", CRD_PLURAL)
        meta = crd["metadata"]
        current = self._store[rtype.store_key][("", meta["name"])]
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
        if current.get("status") == status:
            return
        updated = {**current, "status": status}
        self._update(rtype, None, meta["name"], updated, "status", {}, require_rv=False)

    # -- watch -----------------------------------------------------------------------------------

    async def _serve_watch_stream(
        self,
        raw: aiohttp.web.BaseRequest,
        rtype: ResourceType,
        namespace: str | None,
        name: str | None,
        query: dict[str, str],
        table: bool,
    ) -> aiohttp.web.StreamResponse:
        """A watch: newline-delimited events, resumable from a resourceVersion.

        Without ``resourceVersion`` (or with ``0``) the current objects come first as ADDED.
        With one, only the newer events are replayed from the history; one older than the kept
        history gets an ERROR event with 410 Expired, and clients (kopf) relist. The stream ends
        after ``timeoutSeconds``, which clients treat as a normal end to reconnect from.
        """
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
        rv_param = query.get("resourceVersion", "")
        initial: list[tuple[str, JsonDict]] = []
        send_initial = _is_true(query.get("sendInitialEvents"))
        if rv_param in ("", "0") or send_initial:
            for _, obj in sorted(self._store[rtype.store_key].items()):
                if watcher.matches(obj):
                    initial.append(("ADDED", obj))
        else:
            try:
                since = int(rv_param)
            except ValueError as exc:
                raise errors.bad_request(f"invalid resource version: {rv_param}") from exc
            if since < self._history_floor:
                expired = errors.gone(
                    f"too old resource version: {since} ({self._history_floor + 1})"
                ).status()
                initial.append(("ERROR", expired))
            else:
                for event in self._history:
                    if event.rv > since:
                        translated = watcher.translate(event)
                        if translated is not None:
                            initial.append(translated)
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
                await response.write(self._watch_line(rtype, kind, obj, table, include))
                if kind == "ERROR":
                    return response
            if send_initial:
                bookmark = {
                    "kind": rtype.kind,
                    "apiVersion": rtype.api_version,
                    "metadata": {
                        "resourceVersion": str(self._rv),
                        "annotations": {"k8s.io/initial-events-end": "true"},
                    },
                }
                await response.write(json.dumps({"type": "BOOKMARK", "object": bookmark}).encode() + b"\n")
            loop = asyncio.get_running_loop()
            deadline = None if timeout is None else loop.time() + timeout
            while True:
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(watcher.queue.get(), remaining)
                except TimeoutError:
                    break
                if item is _SHUTDOWN:
                    break
                kind, obj = item
                await response.write(self._watch_line(rtype, kind, obj, table, include))
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client went away; nothing to tell it
        finally:
            self._watchers.discard(watcher)
        return response

    def _watch_line(self, rtype: ResourceType, kind: str, obj: JsonDict, table: bool, include: str) -> bytes:
        if kind == "ERROR":
            payload: JsonDict = obj
        elif table:
            payload = printing.table(
                rtype, [self._present(rtype, obj)], obj["metadata"]["resourceVersion"], include
            )
        else:
            payload = self._present(rtype, obj)
        return json.dumps({"type": kind, "object": payload}, separators=(",", ":")).encode() + b"\n"

    def iter_events(self) -> Iterator[tuple[int, str, JsonDict]]:
        """The kept event history (resourceVersion, type, object): for tests and debugging."""
        for event in list(self._history):
            yield event.rv, event.type, event.obj


def _is_true(value: str | None) -> bool:
    """Go's ``strconv.ParseBool``: the Python client sends ``watch=True``, kubectl ``watch=true``."""
    return value in ("1", "t", "T", "true", "TRUE", "True")


def _guess_action(parsed: ParsedPath | None, method: str, query: dict[str, str]) -> enums.action | None:
    """kmock's action for DSL filters (``list``, ``watch``, ``fetch``, ...)."""
    if parsed is None:
        return None
    if method == "GET" and _is_true(query.get("watch")):
        return enums.action.WATCH
    if parsed.name is None:
        return {"GET": enums.action.LIST, "POST": enums.action.CREATE}.get(method)
    return {"GET": enums.action.FETCH, "PATCH": enums.action.UPDATE, "DELETE": enums.action.DELETE}.get(
        method
    )


def _set_path(obj: JsonDict, path: str, value: Any) -> None:
    """Set a ``.a.b.c`` path (the only form specReplicasPath may take), creating maps on the way."""
    parts = [p for p in path.strip().lstrip(".").split(".") if p]
    target = obj
    for part in parts[:-1]:
        nxt = target.get(part)
        if not isinstance(nxt, dict):
            nxt = target[part] = {}
        target = nxt
    target[parts[-1]] = value
