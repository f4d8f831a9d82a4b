"""The emulated Kubernetes API server: kmock's ``KubernetesEmulator`` with a real server's semantics.

:class:`ApiEmulator` ties the parts together and serves HTTP; each part is its own module:

- :mod:`.kmock_adapter`: kmock's request recording and DSL, so tests may still add reactions
  such as ``emulator['get /api/v1/pods'] << 500``, which take precedence (kmock internals stay
  in that module);
- :mod:`.object_store`: objects, uids, the resourceVersion counter and the event history;
- :mod:`.type_registry`: the served resource types, builtin and CRD-defined;
- :mod:`.object_writes`: create, update and the three patch formats, with server-set metadata,
  optimistic concurrency and warnings returned next to the object;
- :mod:`.kind_strategies`: what Namespaces and CRDs do differently from the generic path;
- :mod:`.garbage_collector`: deletion with finalizers, ownerReferences and propagation;
- :mod:`.watch_streams`: resumable, filtered watches, fed by the store's events;
- :mod:`.request_router` and :mod:`.discovery_routes`: from a request to its answer;
- :mod:`.faults`: faults a test injects (409, 5xx, 429 with Retry-After, slow answers, cut
  and expired watches), answered as kube-apiserver answers them (``emulator.faults``).

Every request is authenticated, impersonation applied, authorized and audited
(:mod:`.authentication`, :mod:`.certificates`) before anything else sees it.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
from collections.abc import Iterator

import aiohttp.web
import yaml

from .authentication import (
    AuditLog,
    Authenticator,
    Authorize,
    default_authorize,
    forbidden,
    impersonate,
    request_attributes,
)
from .catalog import ResourceType, load_builtins
from .certificates import identity_of
from .discovery_routes import serve_discovery
from .errors import ApiError
from .faults import FaultInjector, RequestInfo, conflict_error, server_error, too_many_requests
from .kind_strategies import CRD_RESOURCE, SYSTEM_NAMESPACES
from .kmock_adapter import KmockHandler
from .object_store import JsonDict, ObjectStore
from .object_writes import ObjectWriter
from .request_router import ResourceRouter, json_response
from .request_urls import ParsedPath, parse_resource_path
from .type_registry import TypeRegistry
from .watch_streams import WatchServer

logger = logging.getLogger(__name__)


class ApiEmulator(KmockHandler):
    """A Kubernetes API server emulated in memory, behaving like the real one where clients look.

    See the module docstring for its parts; the docstrings there name the quirks they emulate.
    """

    def __init__(
        self,
        *,
        crds_dir: str | pathlib.Path | None = None,
        history: int = 10_000,
        authenticator: Authenticator | None = None,
        authorize: Authorize = default_authorize,
        audit: AuditLog | None = None,
    ) -> None:
        super().__init__()
        # No authenticator means nobody can call: there is no "open" mode, as on a real cluster.
        self.authenticator = authenticator if authenticator is not None else Authenticator()
        self.authorize = authorize
        self.audit = audit if audit is not None else AuditLog()
        self.address = "127.0.0.1:0"
        # Answer kubectl's aggregated-discovery Accept header in kind; off forces the legacy path.
        self.aggregated_discovery = True
        self._store = ObjectStore(history)
        self._types = TypeRegistry(load_builtins())
        self._writer = ObjectWriter(self._store, self._types)
        self._watches = WatchServer(self._store)
        #: Faults tests inject (see :mod:`.faults`); no rule, no fault.
        self.faults = FaultInjector(cut_watches=self._watches.cut)
        self._watches.faults = self.faults
        self._router = ResourceRouter(self._store, self._types, self._writer, self._watches)
        for namespace in SYSTEM_NAMESPACES:
            self.create_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        if crds_dir is not None:
            self.load_crds(crds_dir)

    # -- public, synchronous API (for the loop's thread, or under the ApiServerThread's loop) --

    @property
    def resource_version(self) -> int:
        return self._store.resource_version

    def resource_types(self) -> list[ResourceType]:
        return self._types.all()

    def find_type(self, group: str, version: str | None, plural_or_kind: str) -> ResourceType:
        return self._types.find(group, version, plural_or_kind)

    def load_crds(self, directory: str | pathlib.Path) -> int:
        """Register every CustomResourceDefinition found in ``*.yaml``/``*.yml``/``*.json`` files."""
        count = 0
        for path in sorted(pathlib.Path(directory).glob("*")):
            if path.suffix not in (".yaml", ".yml", ".json"):
                continue
            for doc in yaml.safe_load_all(path.read_text()):
                if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                    name = (doc.get("metadata") or {}).get("name", "")
                    if self._store.get(CRD_RESOURCE, None, name) is not None:
                        self.update_object({**doc, "metadata": {**doc["metadata"]}})
                    else:
                        self.create_object(doc)
                    count += 1
        return count

    def create_object(self, body: JsonDict) -> JsonDict:
        """Create an object as if POSTed (validation, defaults, events): for seeding and loaders."""
        rtype = self._types.of_body(body)
        namespace = (body.get("metadata") or {}).get("namespace") or ("default" if rtype.namespaced else None)
        return self._writer.create(rtype, namespace, body, {}).obj

    def update_object(self, body: JsonDict) -> JsonDict:
        """Replace an object as if PUT without a resourceVersion precondition."""
        rtype = self._types.of_body(body)
        meta = body.get("metadata") or {}
        namespace = meta.get("namespace") or ("default" if rtype.namespaced else None)
        old = self._store.read(rtype, namespace, meta["name"])
        new = {
            **body,
            "metadata": {**body["metadata"], "resourceVersion": old["metadata"]["resourceVersion"]},
        }
        return self._writer.update(rtype, namespace, meta["name"], new, None, {}).obj

    def get_object(self, api_version: str, kind: str, namespace: str | None, name: str) -> JsonDict | None:
        """A copy of a stored object, or None; safe to call from any thread."""
        group, _, version = api_version.rpartition("/")
        return self._store.copy_of(self.find_type(group, version, kind), namespace, name)

    def list_objects(self, api_version: str, kind: str, namespace: str | None = None) -> list[JsonDict]:
        """Copies of all stored objects of a kind (optionally in one namespace); any thread."""
        group, _, version = api_version.rpartition("/")
        return self._store.copies(self.find_type(group, version, kind), namespace)

    def dump_state(self) -> JsonDict:
        """Everything needed to restart with the same objects and resourceVersions."""
        objects = self._store.dump()
        # CRDs first, so that their custom resources can be registered on load.
        objects.sort(key=lambda o: (o["group"], o["plural"]) != CRD_RESOURCE)
        return {"resourceVersion": self._store.resource_version, "objects": objects}

    def load_state(self, state: JsonDict) -> None:
        """Restore a ``dump_state()`` verbatim (uids, resourceVersions, timestamps kept)."""
        entries = state.get("objects", [])
        self._store.load(entries, int(state.get("resourceVersion", 0)))
        for entry in entries:
            if (entry["group"], entry["plural"]) == CRD_RESOURCE:
                self._types.serve_crd(entry["object"])

    def close_watches(self) -> None:
        """End all watch streams (at shutdown), so that clients see a clean end of stream."""
        self._watches.close()

    def iter_events(self) -> Iterator[tuple[int, str, JsonDict]]:
        """The kept event history (resourceVersion, type, object): for tests and debugging."""
        for event in self._store.events():
            yield event.rv, event.type, event.obj

    # -- request entry point ---------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """Authenticate, authorize and audit the request, record it (for kmock assertions), serve it."""
        parsed = parse_resource_path(raw_request.path)
        query = dict(raw_request.query)
        try:
            transport = raw_request.transport
            peercert = transport.get_extra_info("peercert") if transport is not None else None
            user = self.authenticator.authenticate(
                raw_request.headers.get("Authorization"), identity_of(peercert)
            )
            user = impersonate(user, raw_request.headers, self.authorize)
            attrs = request_attributes(user, raw_request.method, raw_request.path, query, parsed)
            # Every authenticated request is audited, allowed or not, when it is received (a
            # watch stream's handler may be cancelled long before it would return).
            self.audit.record(attrs, raw_request.path_qs)
            allowed, reason = self.authorize(attrs)
            if not allowed:
                raise forbidden(attrs, reason)
        except ApiError as exc:
            return json_response(exc.status(), exc.code)
        return await self._serve(raw_request, parsed, query)

    async def _serve(
        self, raw_request: aiohttp.web.BaseRequest, parsed: ParsedPath | None, query: dict[str, str]
    ) -> aiohttp.web.StreamResponse:
        body = await raw_request.read()
        request = self.record_request(raw_request, parsed, query, body)
        info = RequestInfo.of(raw_request.method, parsed, query, raw_request.headers.get("User-Agent", ""))
        try:
            injected = await self._inject(info)
            if injected is not None:
                return injected
            reaction = await self.react(request)  # reactions added through kmock's DSL win
            if reaction is not None:
                return reaction
            response = await self._route(raw_request, body)
            if response.status < 400 and (lost := self.faults.pick(info, ("stored_then_error",))):
                raise server_error(lost.code, info)  # served (stored), but the answer is lost
            return response
        except ApiError as exc:
            return json_response(exc.status(), exc.code)
        except Exception as exc:
            logger.exception(
                "the emulated API server failed on %s %s", raw_request.method, raw_request.path_qs
            )
            return json_response(ApiError(500, "InternalError", f"{type(exc).__name__}: {exc}").status(), 500)

    async def _inject(self, info: RequestInfo) -> aiohttp.web.StreamResponse | None:
        """A fault's answer instead of serving the request (after a slow rule's delay), or None."""
        slow = self.faults.pick(info, ("slow",))
        if slow is not None:
            await asyncio.sleep(slow.delay)
        rule = self.faults.pick(info, ("refuse", "too_many_requests", "internal_error", "conflict"))
        if rule is None:
            return None
        if rule.fault == "refuse":
            refused = ApiError(rule.code, rule.reason, rule.message)
            return json_response(refused.status(), refused.code)
        if rule.fault == "too_many_requests":
            error, headers = too_many_requests(rule.retry_after)
            return json_response(error.status(), error.code, headers)
        error = server_error(rule.code, info) if rule.fault == "internal_error" else conflict_error(info)
        return json_response(error.status(), error.code)

    async def _route(self, raw: aiohttp.web.BaseRequest, body: bytes) -> aiohttp.web.StreamResponse:
        path = raw.path.rstrip("/") or "/"
        if raw.method.upper() == "GET":
            static = serve_discovery(
                path,
                raw.headers.get("Accept", ""),
                self._types.all(),
                self.address,
                self.aggregated_discovery,
            )
            if static is not None:
                return static
        return await self._router.route(raw, path, body)
