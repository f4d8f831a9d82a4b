"""The one thin client the controllers use to talk to the Kubernetes API.

It speaks plain dicts (the same shape ``kubectl get -o json`` shows), knows the handful of
kinds the operator reads and writes, and turns API errors into the two errors kopf
understands: :class:`kopf.TemporaryError` (retry later: the API server is busy, down, or we
lost an optimistic-concurrency race) and :class:`kopf.PermanentError` (retrying cannot help:
the object we built is invalid, or we are not allowed to create it).

It is synchronous on purpose: kopf runs synchronous handlers in its thread pool, so the
event loop never blocks on the API.

When the operator runs, reads of the kinds it owns or watches are served from an
:class:`ObjectCache` (kopf indexes fed by watch streams, plus the answers to the operator's
own writes), so a reconciliation of a converged object asks the API server nothing: no GET,
no list, and no DELETE of an object the cache does not hold.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import kopf
import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException
from urllib3 import HTTPHeaderDict

from mlops_operator import API_VERSION, __version__
from mlops_operator.credentials import Credentials, load_credentials

USER_AGENT = f"mlops-operator/{__version__}"


@dataclass(frozen=True)
class KindInfo:
    api_version: str
    plural: str
    namespaced: bool = True


KINDS: dict[str, KindInfo] = {
    "Pod": KindInfo("v1", "pods"),
    "Service": KindInfo("v1", "services"),
    "ConfigMap": KindInfo("v1", "configmaps"),
    "Secret": KindInfo("v1", "secrets"),
    "Event": KindInfo("v1", "events"),
    "Endpoints": KindInfo("v1", "endpoints"),
    "Namespace": KindInfo("v1", "namespaces", namespaced=False),
    "Deployment": KindInfo("apps/v1", "deployments"),
    "ReplicaSet": KindInfo("apps/v1", "replicasets"),
    "Job": KindInfo("batch/v1", "jobs"),
    "HorizontalPodAutoscaler": KindInfo("autoscaling/v2", "horizontalpodautoscalers"),
    "PodDisruptionBudget": KindInfo("policy/v1", "poddisruptionbudgets"),
    "HTTPRoute": KindInfo("gateway.networking.k8s.io/v1", "httproutes"),
    "RayJob": KindInfo("ray.io/v1", "rayjobs"),  # KubeRay's: a TrainingJob's runs with engine: Ray
    "TrainingJob": KindInfo(API_VERSION, "trainingjobs"),
    "ModelVersion": KindInfo(API_VERSION, "modelversions"),
    "InferenceService": KindInfo(API_VERSION, "inferenceservices"),
}

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"

#: Seconds kopf waits before retrying after a transient API failure.
RETRY_DELAY = 5.0


class NotFound(Exception):
    """The object does not exist (a domain error: callers decide whether that is fine)."""


class AlreadyExists(kopf.TemporaryError):
    """A create found an object of that name (409 AlreadyExists; retried like any conflict)."""


def _api_error(exc: ApiException, what: str) -> Exception:
    """Map an API error to kopf's Temporary/Permanent errors, keeping the server's message."""
    try:
        parsed = json.loads(exc.body or "{}")
        message, reason = parsed.get("message") or exc.reason, parsed.get("reason")
    except (ValueError, AttributeError):
        message, reason = exc.reason, None
    status = exc.status or 0
    if status == 404:
        return NotFound(f"{what}: {message}")
    if status == 409 and reason == "AlreadyExists":
        return AlreadyExists(f"{what}: HTTP 409: {message}", delay=RETRY_DELAY)
    if status in (409, 429) or status >= 500 or status == 0:
        return kopf.TemporaryError(f"{what}: HTTP {status}: {message}", delay=RETRY_DELAY)
    return kopf.PermanentError(f"{what}: HTTP {status}: {message}")


def _path(kind: str, namespace: str | None, name: str | None = None, subresource: str | None = None) -> str:
    info = KINDS[kind]
    prefix = "/api/v1" if info.api_version == "v1" else f"/apis/{info.api_version}"
    path = prefix
    if info.namespaced and namespace:
        path += f"/namespaces/{namespace}"
    path += f"/{info.plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


#: Kinds the running operator caches (one kopf index each, see ``controllers/handlers.py``):
#: its own resources (watched by kopf anyway) and the children it creates and reads.
CACHED_KINDS = (
    "TrainingJob",
    "ModelVersion",
    "InferenceService",
    "Deployment",
    "Service",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
    "Job",
    "Pod",
)

#: Fields an index can look objects up by besides labels (Kubernetes' CRD ``selectableFields``).
INDEXED_FIELDS: dict[str, tuple[str, ...]] = {"ModelVersion": ("spec", "model", "name")}

#: Seconds an own write stays preferred over the watch-fed copy at most (by then its watch event
#: has arrived, or the object left the index's filter and the watch is the truth). Generous: a
#: busy operator's watch events can lag by tens of seconds, and a copy older than our own write
#: would make the next pass write the same thing again.
_WRITTEN_TTL = 300.0


def index_keys(kind: str, obj: Mapping[str, Any]) -> dict[Any, dict[str, Any]]:
    """The keys one object is found under in its kind's index (pure; the kopf index function).

    By name, by namespace, by each label (``key=value``) and by the kind's indexed field; the
    value is the object itself (without ``managedFields``, which nothing reads).
    """
    meta = obj.get("metadata") or {}
    namespace, name = meta.get("namespace") or "", meta.get("name")
    value = {key: val for key, val in obj.items() if key != "metadata"}
    value["metadata"] = {key: val for key, val in meta.items() if key != "managedFields"}
    keys: dict[Any, dict[str, Any]] = {("name", namespace, name): value, ("namespace", namespace): value}
    for label, label_value in (meta.get("labels") or {}).items():
        keys[("label", namespace, label, label_value)] = value
    path = INDEXED_FIELDS.get(kind)
    if path is not None:
        node: Any = obj
        for part in path:
            node = node.get(part) if isinstance(node, Mapping) else None
        if isinstance(node, str):
            keys[("field", namespace, ".".join(path), node)] = value
    return keys


def _resource_version(obj: Mapping[str, Any] | None) -> int | None:
    try:
        return int((obj or {}).get("metadata", {}).get("resourceVersion"))
    except (TypeError, ValueError):  # opaque by contract; every etcd-backed server counts
        return None


def _parse_selector(selector: str | None) -> list[tuple[str, str]]:
    """``a=b,c==d`` as pairs; only equality terms (the operator writes no other kind)."""
    pairs = []
    for term in (selector or "").split(","):
        if not term.strip():
            continue
        key, sep, value = term.replace("==", "=").partition("=")
        if not sep or key.endswith("!"):
            raise ValueError(f"label selector term {term!r}: only key=value is supported")
        pairs.append((key.strip(), value.strip()))
    return pairs


def _matches(obj: Mapping[str, Any], labels: list[tuple[str, str]], field: tuple[str, str] | None) -> bool:
    own = (obj.get("metadata") or {}).get("labels") or {}
    if any(own.get(key) != value for key, value in labels):
        return False
    if field is None:
        return True
    node: Any = obj
    for part in field[0].split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return bool(node == field[1])


class ObjectCache:
    """What the operator knows of objects without asking the API server.

    Two sources, and for each object the newer one (by resourceVersion) wins:

    - kopf indexes, one per kind (:data:`CACHED_KINDS`), fed by kopf's watch streams. kopf
      starts no handler before every index holds its initial list, so a cache miss means
      "does not exist" (or "is not ours": children are indexed when they carry the operator's
      ``managed-by`` label);
    - the answers to the operator's own writes, until the watch reports them: a reconciliation
      that runs right after a create sees the object, rather than creating it again.
    """

    def __init__(self) -> None:
        self._indexes: dict[str, Mapping[Any, Iterable[dict[str, Any]]]] = {}
        self._written: dict[tuple[str, str, str], tuple[float, int | None, dict[str, Any] | None]] = {}
        self._written_names: dict[tuple[str, str], set[str]] = {}  # (kind, namespace) -> names
        self._lock = threading.Lock()

    def attach(self, kind: str, index: Mapping[Any, Iterable[dict[str, Any]]]) -> None:
        """Serve ``kind`` from ``index`` (a kopf index keyed as :func:`index_keys` keys)."""
        self._indexes[kind] = index

    def covers(self, kind: str) -> bool:
        return kind in self._indexes

    def _indexed(self, kind: str, key: Any) -> list[dict[str, Any]]:
        store = self._indexes[kind].get(key)
        # A kopf Store iterates a dict that kopf's event loop updates: copying it is one C call
        # (atomic under the GIL), so a concurrent update cannot break the iteration.
        return list(store) if store is not None else []

    def _overlay(
        self, kind: str, namespace: str, name: str, indexed: dict[str, Any] | None
    ) -> tuple[bool, dict[str, Any] | None]:
        """(whether an own write is newer than ``indexed``, that write's object or None if deleted)."""
        key = (kind, namespace, name)
        with self._lock:
            entry = self._written.get(key)
            if entry is None:
                return False, None
            stamp, written_rv, obj = entry
            indexed_rv = _resource_version(indexed)
            if time.monotonic() - stamp > _WRITTEN_TTL:
                newer = False
            elif indexed is None:
                # Created by us and not reported yet: newer; deleted by us: the index agrees.
                newer = obj is not None
            elif written_rv is None or indexed_rv is None:
                newer = obj is None  # cannot compare: a deletion we made stands, a write yields
            elif obj is None:
                newer = indexed_rv <= written_rv  # a copy from before our DELETE (else: re-created)
            else:
                newer = indexed_rv < written_rv
            if not newer:
                self._forget_written(key)  # the watch has caught up (or the entry expired)
            return newer, obj

    def _forget_written(self, key: tuple[str, str, str]) -> None:
        """Drop an own write (the lock held)."""
        self._written.pop(key, None)
        names = self._written_names.get(key[:2])
        if names is not None:
            names.discard(key[2])
            if not names:
                del self._written_names[key[:2]]

    def _remember_written(
        self, key: tuple[str, str, str], rv: int | None, obj: dict[str, Any] | None
    ) -> None:
        """Keep an own write (the lock held); entries past their time are dropped meanwhile."""
        now = time.monotonic()
        self._written[key] = (now, rv, obj)
        self._written_names.setdefault(key[:2], set()).add(key[2])
        if len(self._written) > 1000:
            for old in [k for k, (stamp, _, _) in self._written.items() if now - stamp > _WRITTEN_TTL]:
                self._forget_written(old)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        found = self._indexed(kind, ("name", namespace, name))
        indexed = found[0] if found else None
        newer, written = self._overlay(kind, namespace, name, indexed)
        obj = written if newer else indexed
        return copy.deepcopy(obj) if obj is not None else None

    def list(
        self, kind: str, namespace: str, label_selector: str | None, field_selector: str | None
    ) -> list[dict[str, Any]]:
        labels = _parse_selector(label_selector)
        field = None
        if field_selector:
            path, _, value = field_selector.partition("=")
            field = (path, value)
        if field is not None:
            candidates = self._indexed(kind, ("field", namespace, field[0], field[1]))
        elif labels:
            candidates = self._indexed(kind, ("label", namespace, *labels[0]))
        else:
            candidates = self._indexed(kind, ("namespace", namespace))
        result: dict[str, dict[str, Any]] = {}
        for obj in candidates:
            result[obj["metadata"]["name"]] = obj
        with self._lock:
            written_names = list(self._written_names.get((kind, namespace), ()))
        for name in written_names:
            found = self._indexed(kind, ("name", namespace, name))
            newer, written = self._overlay(kind, namespace, name, found[0] if found else None)
            if not newer:
                continue
            if written is None:
                result.pop(name, None)
            else:
                result[name] = written
        return [copy.deepcopy(obj) for obj in result.values() if _matches(obj, labels, field)]

    def record(self, kind: str, namespace: str, name: str, obj: Mapping[str, Any]) -> None:
        """The object as an own write left it (a create's or patch's answer)."""
        if kind in self._indexes and obj.get("metadata"):
            with self._lock:
                self._remember_written(
                    (kind, namespace, name), _resource_version(obj), copy.deepcopy(dict(obj))
                )

    def record_deleted(self, kind: str, namespace: str, name: str, answer: Mapping[str, Any]) -> None:
        """An own DELETE succeeded (``answer`` is the deleted object, or a Status)."""
        if kind not in self._indexes:
            return
        if (answer.get("metadata") or {}).get("deletionTimestamp") and (answer.get("metadata") or {}).get(
            "finalizers"
        ):
            self.record(kind, namespace, name, answer)  # still there until its finalizers go
            return
        found = self._indexed(kind, ("name", namespace, name))
        rv = _resource_version(answer) if answer.get("kind") != "Status" else None
        rv = rv if rv is not None else _resource_version(found[0] if found else None)
        with self._lock:
            self._remember_written((kind, namespace, name), rv, None)


class Kube:
    """A synchronous, dict-based client that authenticates every call as kubectl would.

    ``credentials`` loads the identity (:func:`mlops_operator.credentials.load_credentials`);
    it is called again when the API server answers 401, so a rotated ServiceAccount token, a
    rewritten ``tokenFile`` or an expired exec-plugin token is picked up and the call retried
    once.
    """

    def __init__(self, credentials: Callable[[], Credentials]) -> None:
        self._load = credentials
        self._lock = threading.Lock()
        self._credentials = credentials()
        self.api_client = kubernetes.client.ApiClient(self._credentials.configuration)
        #: Set by the running operator (``controllers/handlers.py``); None: every read asks.
        self.cache: ObjectCache | None = None

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None) -> Kube:
        """In a pod: the service account; elsewhere: ``kubeconfig`` or ``$KUBECONFIG`` / ``~/.kube/config``."""
        return cls(lambda: load_credentials(kubeconfig))

    @property
    def credentials(self) -> Credentials:
        return self._credentials

    def _reload(self, stale: Credentials) -> None:
        with self._lock:
            if self._credentials is stale:  # another thread may have reloaded already
                self._credentials = self._load()
                self.api_client = kubernetes.client.ApiClient(self._credentials.configuration)

    def _send(
        self, method: str, path: str, body: Any, query: Mapping[str, str] | None, content_type: str
    ) -> tuple[Credentials, Any]:
        credentials, api_client = self._credentials, self.api_client
        headers = HTTPHeaderDict({"Content-Type": content_type, "Accept": "application/json"})
        headers["User-Agent"] = USER_AGENT
        authorization = credentials.authorization()
        if authorization:
            headers["Authorization"] = authorization
        if credentials.impersonation is not None:
            for key, value in credentials.impersonation.headers():
                headers.add(key, value)
        url = credentials.configuration.host + path
        response = api_client.rest_client.request(
            method,
            url,
            query_params=list((query or {}).items()),
            headers=headers,
            body=body,
            _preload_content=False,
            _request_timeout=30,
        )
        return credentials, response

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        what: str,
    ) -> dict[str, Any]:
        try:
            try:
                _, response = self._send(method, path, body, query, content_type)
            except ApiException as exc:
                if exc.status != 401:
                    raise
                # The credential may have been rotated or expired: load it again, retry once.
                self._reload(self._credentials)
                _, response = self._send(method, path, body, query, content_type)
        except ApiException as exc:
            raise _api_error(exc, what) from exc
        except (OSError, urllib3.exceptions.HTTPError) as exc:  # the API server is not reachable
            raise kopf.TemporaryError(f"{what}: API server unreachable: {exc}", delay=RETRY_DELAY) from exc
        data = response.data
        result: dict[str, Any] = json.loads(data) if data else {}
        return result

    def _cached(self, kind: str) -> ObjectCache | None:
        cache = self.cache
        return cache if cache is not None and cache.covers(kind) else None

    def serves(self, kind: str) -> bool:
        """Whether the API server serves ``kind`` (its CRD is installed), from discovery.

        A GET on a resource whose CRD is missing is a 404 too, the same as a missing object; only
        discovery (``/apis/<group>/<version>``, readable by every authenticated user) tells the
        two apart.
        """
        info = KINDS[kind]
        prefix = "/api/v1" if info.api_version == "v1" else f"/apis/{info.api_version}"
        try:
            resources = self._call("GET", prefix, what=f"discover {info.api_version}").get("resources")
        except NotFound:
            return False
        return any(item.get("name") == info.plural for item in resources or [])

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        cache = self._cached(kind)
        if cache is not None:
            return cache.get(kind, namespace or "", name)
        return self.read(kind, namespace, name)

    def read(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """GET from the API server, past the cache (None: not found)."""
        try:
            return self._call("GET", _path(kind, namespace, name), what=f"get {kind} {namespace}/{name}")
        except NotFound:
            return None

    def list(
        self,
        kind: str,
        namespace: str | None,
        label_selector: str | None = None,
        *,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        """Objects of ``kind`` in ``namespace`` matching equality selectors.

        ``field_selector`` (``spec.model.name=x``) is matched by the cache's index, or on the
        client when no cache serves the kind: custom resources declare no ``selectableFields``.
        """
        cache = self._cached(kind)
        if cache is not None:
            return cache.list(kind, namespace or "", label_selector, field_selector)
        query = {"labelSelector": label_selector} if label_selector else None
        items: list[dict[str, Any]] = self._call(
            "GET", _path(kind, namespace), query=query, what=f"list {kind} in {namespace}"
        ).get("items", [])
        if field_selector:
            path, _, value = field_selector.partition("=")
            items = [item for item in items if _matches(item, [], (path, value))]
        return items

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        kind, meta = obj["kind"], obj["metadata"]
        created = self._call(
            "POST", _path(kind, meta.get("namespace")), body=obj, what=f"create {kind} {meta.get('name')}"
        )
        self._remember(kind, meta.get("namespace"), meta["name"], created)
        return created

    def _remember(self, kind: str, namespace: str | None, name: str, answer: Mapping[str, Any]) -> None:
        if self.cache is not None:
            self.cache.record(kind, namespace or "", name, answer)

    def patch(
        self,
        kind: str,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        subresource: str | None = None,
        content_type: str = MERGE_PATCH,
    ) -> dict[str, Any]:
        patched = self._call(
            "PATCH",
            _path(kind, namespace, name, subresource),
            body=patch,
            content_type=content_type,
            what=f"patch {kind} {namespace}/{name}",
        )
        self._remember(kind, namespace, name, patched)
        return patched

    def patch_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        return self.patch(kind, namespace, name, {"status": status}, subresource="status")

    def delete(self, kind: str, namespace: str | None, name: str, *, propagation: str = "Background") -> bool:
        """Delete; False when it was already gone (or, for a cached kind, is not known to exist:
        no request then, so a converged object costs no DELETE of what is absent)."""
        cache = self._cached(kind)
        if cache is not None and cache.get(kind, namespace or "", name) is None:
            return False
        try:
            answer = self._call(
                "DELETE",
                _path(kind, namespace, name),
                body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation},
                what=f"delete {kind} {namespace}/{name}",
            )
        except NotFound:
            answer = {}
            if cache is not None:
                cache.record_deleted(kind, namespace or "", name, answer)
            return False
        if cache is not None:
            cache.record_deleted(kind, namespace or "", name, answer)
        return True

    def apply(self, desired: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create ``desired``, or bring the live object to it: (live object, whether it changed).

        Only the fields the operator owns are compared and patched (labels, annotations,
        ownerReferences, spec, and the top-level data fields of ConfigMaps/Services), so fields
        other controllers set (an HPA's replica count, a Service's clusterIP) are left alone.
        """
        kind, meta = desired["kind"], desired["metadata"]
        live = self.get(kind, meta.get("namespace"), meta["name"])
        if live is None:
            try:
                return self.create(desired), True
            except kopf.TemporaryError:
                # 409: it exists (made by someone else, or not ours and so not cached).
                live = self.read(kind, meta.get("namespace"), meta["name"])
                if live is None:
                    raise
        patch = desired_patch(live, desired)
        if not patch:
            return live, False
        return self.patch(kind, meta.get("namespace"), meta["name"], patch), True


def _differs(live: Any, desired: Any) -> bool:
    """True when ``desired`` sets something ``live`` lacks (extra live fields are defaults)."""
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return True
        return any(_differs(live.get(key), value) for key, value in desired.items())
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return True
        return any(_differs(a, b) for a, b in zip(live, desired, strict=True))
    return bool(live != desired)


#: Maps the operator owns whole: a key it no longer sets is removed (a merge patch needs null).
#: A Service's selector must lose the version key when a canary joins the stable Service.
_WHOLE_MAPS = {"Service": ("spec", "selector")}


def desired_patch(live: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """The merge patch that brings ``live`` to ``desired`` for the fields the operator owns (pure)."""
    patch = copy.deepcopy(_owned_patch(live, desired))
    whole = _WHOLE_MAPS.get(str(desired.get("kind")))
    if whole is not None:
        outer, inner = whole
        live_map = (live.get(outer) or {}).get(inner) or {}
        desired_map = (desired.get(outer) or {}).get(inner) or {}
        removed = {key: None for key in live_map if key not in desired_map}
        if removed:
            patch.setdefault(outer, {}).setdefault(inner, dict(desired_map)).update(removed)
    return patch


def _owned_patch(live: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    patch: dict[str, Any] = {}
    meta_patch = {
        key: desired["metadata"][key]
        for key in ("labels", "annotations", "ownerReferences")
        if key in desired["metadata"]
        and _differs(live.get("metadata", {}).get(key), desired["metadata"][key])
    }
    if meta_patch:
        patch["metadata"] = meta_patch
    for key, value in desired.items():
        if key in ("apiVersion", "kind", "metadata", "status"):
            continue
        if _differs(live.get(key), value):
            patch[key] = value
    return patch
