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

Transient answers are retried in place, a few times, before kopf retries the whole handler
(see :meth:`Kube._call`): 429 after the server's ``Retry-After`` (bounded), 5xx and lost
connections after a short backoff, and a merge patch that met 409 Conflict at once. A create
whose answer was lost (5xx after the object was stored) and whose retry meets 409
AlreadyExists adopts the object when it is ours, so a child is never made twice.
"""

from __future__ import annotations

import copy
import json
import logging
import ssl
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
#: Seconds between the in-place attempts of one call after a 5xx or a lost connection (so at
#: most four attempts); then the call fails with a TemporaryError and kopf retries the handler.
RETRY_BACKOFFS = (0.2, 0.5, 1.0)
#: The longest ``Retry-After`` of a 429 (or 5xx) waited for in place: a longer one is handed
#: to kopf as the handler's retry delay, so a worker thread is never parked for long.
MAX_RETRY_AFTER = 10.0
#: Answers worth the same request again: the server did not (429) or may not (5xx) have done it.
_TRANSIENT = (429, 500, 502, 503, 504)

logger = logging.getLogger(__name__)


class NotFound(Exception):
    """The object does not exist (a domain error: callers decide whether that is fine)."""


class ApiTemporaryError(kopf.TemporaryError):
    """A call failed for now (429, 5xx, 409, the server unreachable); kopf retries the handler.

    ``after_lost_answer``: an attempt of this call (a create) was answered 5xx or lost its
    connection, so the server may have stored the object all the same.
    """

    def __init__(
        self,
        message: str,
        delay: float = RETRY_DELAY,
        *,
        after_lost_answer: bool = False,
        call: str = "",
        status: int = 0,
        reason: str = "",
    ) -> None:
        super().__init__(message, delay=delay)
        self.after_lost_answer = after_lost_answer
        #: What failed, for people: the call ("create Job default/x"), HTTP status and reason.
        self.call, self.status, self.reason = call, status, reason


class ApiPermanentError(kopf.PermanentError):
    """A call the API server refused for good (400, 403, 422, ...): retrying the same request
    cannot help. ``call``, ``status`` and ``reason`` as for :class:`ApiTemporaryError`."""

    def __init__(self, message: str, *, call: str = "", status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.call, self.status, self.reason = call, status, reason


class AlreadyExists(ApiTemporaryError):
    """A create found an object of that name (409 AlreadyExists; retried like any conflict)."""


def _status_of(exc: ApiException) -> dict[str, Any]:
    """The ``Status`` body of an error answer ({} when it has none)."""
    try:
        parsed = json.loads(exc.body or "{}")
    except (ValueError, TypeError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _retry_after(exc: ApiException) -> float | None:
    """The wait a 429/5xx asks for: ``Retry-After`` seconds, else ``details.retryAfterSeconds``."""
    header = (exc.headers or {}).get("Retry-After")
    try:
        if header is not None:
            return max(0.0, float(header))
        seconds = (_status_of(exc).get("details") or {}).get("retryAfterSeconds")
        return max(0.0, float(seconds)) if seconds is not None else None
    except (TypeError, ValueError):  # an HTTP date, or garbage: the default backoff then
        return None


def _api_error(exc: ApiException, what: str, *, after_lost_answer: bool = False) -> Exception:
    """Map an API error to kopf's Temporary/Permanent errors, keeping the server's message."""
    parsed = _status_of(exc)
    message, reason = parsed.get("message") or exc.reason, parsed.get("reason")
    status = exc.status or 0
    if status == 404:
        return NotFound(f"{what}: {message}")
    # As kubectl tells it ("Error from server (Conflict): ..."), after the call and the status.
    text = f"{what}: HTTP {status}: {message}" + (f" ({reason})" if reason else "")
    cls = AlreadyExists if status == 409 and reason == "AlreadyExists" else ApiTemporaryError
    if status in (409, 429) or status >= 500 or status == 0:
        wait = _retry_after(exc) if status in _TRANSIENT else None
        return cls(
            text,
            delay=max(RETRY_DELAY, wait or 0),
            after_lost_answer=after_lost_answer,
            call=what,
            status=status,
            reason=reason or "",
        )
    return ApiPermanentError(text, call=what, status=status, reason=reason or "")


def _refused_tls(exc: Exception) -> bool:
    """A TLS handshake that failed (an unknown CA, a wrong certificate): retrying cannot help."""
    reason = getattr(exc, "reason", exc)
    return isinstance(reason, ssl.SSLError | urllib3.exceptions.SSLError)


def _controller_of(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ownerReference with ``controller: true`` of an object, if any."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return next((ref for ref in refs if isinstance(ref, dict) and ref.get("controller")), None)


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


#: urllib3's own retries, minus its obedience to ``Retry-After``: urllib3 would sleep in place for
#: as long as a 429/503 asks (unbounded) on GET, PUT and DELETE; :meth:`Kube._call` does that,
#: bounded by :data:`MAX_RETRY_AFTER`. Connection errors are still retried by urllib3.
_URLLIB3_RETRIES = urllib3.Retry(3, respect_retry_after_header=False)


def _api_client(credentials: Credentials) -> kubernetes.client.ApiClient:
    configuration = credentials.configuration
    configuration.retries = _URLLIB3_RETRIES
    return kubernetes.client.ApiClient(configuration)


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
        self.api_client = _api_client(self._credentials)
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
                self.api_client = _api_client(self._credentials)

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

    def _send_authenticated(
        self, method: str, path: str, body: Any, query: Mapping[str, str] | None, content_type: str
    ) -> Any:
        try:
            _, response = self._send(method, path, body, query, content_type)
        except ApiException as exc:
            if exc.status != 401:
                raise
            # The credential may have been rotated or expired: load it again, retry once.
            self._reload(self._credentials)
            _, response = self._send(method, path, body, query, content_type)
        return response

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
        """One API call, retried in place while the answer is transient (see the module docstring).

        - 429 TooManyRequests (API Priority and Fairness): the request was not served; any verb
          is sent again after the server's ``Retry-After`` (at most :data:`MAX_RETRY_AFTER`).
        - 500/502/503/504 and lost connections: after :data:`RETRY_BACKOFFS` (or a shorter
          ``Retry-After``). A POST may have been stored before the answer was lost: if its retry
          meets 409 AlreadyExists, the error says so (``after_lost_answer``) and
          :meth:`apply` adopts the object when it is ours.
        - 409 Conflict on a merge patch: sent again at once. It carries no resourceVersion
          precondition, so applying it to the latest version is what the server itself does.

        When the attempts run out, the error is a :class:`kopf.TemporaryError` naming the call,
        the HTTP status and reason and the server's message: kopf retries the handler after
        its delay and logs (and posts as an Event of the object) that message.
        """
        lost_answer = False
        attempts = len(RETRY_BACKOFFS) + 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = self._send_authenticated(method, path, body, query, content_type)
            except ApiException as exc:
                status = exc.status or 0
                reason = _status_of(exc).get("reason")
                retry_after = _retry_after(exc)
                if status in _TRANSIENT and not last and (retry_after or 0) <= MAX_RETRY_AFTER:
                    wait = retry_after if retry_after is not None else RETRY_BACKOFFS[attempt]
                    # A 429 was rejected before it was served; a 5xx may have been served.
                    lost_answer = lost_answer or (method == "POST" and status != 429)
                    logger.warning("%s: HTTP %s %s; retrying in %.1fs", what, status, reason or "", wait)
                    time.sleep(wait)
                    continue
                if status == 409 and reason == "Conflict" and content_type == MERGE_PATCH and not last:
                    logger.warning("%s: HTTP 409 Conflict; sending the merge patch again", what)
                    continue
                raise _api_error(exc, what, after_lost_answer=lost_answer) from exc
            except (OSError, urllib3.exceptions.HTTPError) as exc:  # the API server is not reachable
                if not last and not _refused_tls(exc):
                    lost_answer = lost_answer or method == "POST"
                    logger.warning("%s: API server unreachable (%s); retrying", what, exc)
                    time.sleep(RETRY_BACKOFFS[attempt])
                    continue
                raise ApiTemporaryError(
                    f"{what}: API server unreachable: {exc}",
                    after_lost_answer=method == "POST",
                    call=what,
                    reason="Unreachable",
                ) from exc
            data = response.data
            result: dict[str, Any] = json.loads(data) if data else {}
            return result
        raise AssertionError("unreachable: the last attempt returns or raises")

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

        An object of that name that another owner controls (``ownerReferences`` with
        ``controller: true`` and another uid) is not taken over: a TemporaryError names its
        controller. A create whose answer was lost and whose retry found the object counts
        as a change (the object is ours, and it was just made).
        """
        kind, meta = desired["kind"], desired["metadata"]
        live = self.get(kind, meta.get("namespace"), meta["name"])
        created = False
        if live is None:
            try:
                return self.create(desired), True
            except kopf.TemporaryError as exc:
                # 409: it exists (made by someone else, not cached yet, or stored by an attempt
                # of this very create whose answer was lost).
                live = self.read(kind, meta.get("namespace"), meta["name"])
                if live is None:
                    raise
                self._remember(kind, meta.get("namespace"), meta["name"], live)
                created = isinstance(exc, ApiTemporaryError) and exc.after_lost_answer
        self._check_controller(live, desired)
        patch = desired_patch(live, desired)
        if not patch:
            return live, created
        return self.patch(kind, meta.get("namespace"), meta["name"], patch), True

    @staticmethod
    def _check_controller(live: Mapping[str, Any], desired: Mapping[str, Any]) -> None:
        """Refuse to adopt an object another owner controls (as controller-runtime refuses)."""
        mine, theirs = _controller_of(desired), _controller_of(live)
        if mine is None or theirs is None or theirs.get("uid") == mine.get("uid"):
            return
        meta = desired["metadata"]
        raise kopf.TemporaryError(
            f"{desired['kind']} {meta.get('namespace')}/{meta['name']} exists and is controlled by "
            f"{theirs.get('kind')} {theirs.get('name')} (uid {theirs.get('uid')}), not by "
            f"{mine.get('kind')} {mine.get('name')} (uid {mine.get('uid')}): waiting for it to be "
            "deleted (delete it, or rename this resource)",
            delay=RETRY_DELAY,
        )


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
