"""The one thin client the controllers use to talk to the Kubernetes API.

It speaks plain dicts (the same shape ``kubectl get -o json`` shows), knows the handful of
kinds the operator reads and writes, and turns API errors into the two errors kopf
understands: :class:`kopf.TemporaryError` (retry later: the API server is busy, down, or we
lost an optimistic-concurrency race) and :class:`kopf.PermanentError` (retrying cannot help:
the object we built is invalid, or we are not allowed to create it).

It is synchronous on purpose: kopf runs synchronous handlers in its thread pool, so the
event loop never blocks on the API.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable, Mapping
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

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", _path(kind, namespace, name), what=f"get {kind} {namespace}/{name}")
        except NotFound:
            return None

    def list(
        self, kind: str, namespace: str | None, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        query = {"labelSelector": label_selector} if label_selector else None
        items: list[dict[str, Any]] = self._call(
            "GET", _path(kind, namespace), query=query, what=f"list {kind} in {namespace}"
        ).get("items", [])
        return items

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        kind, meta = obj["kind"], obj["metadata"]
        return self._call(
            "POST", _path(kind, meta.get("namespace")), body=obj, what=f"create {kind} {meta.get('name')}"
        )

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
        return self._call(
            "PATCH",
            _path(kind, namespace, name, subresource),
            body=patch,
            content_type=content_type,
            what=f"patch {kind} {namespace}/{name}",
        )

    def patch_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        return self.patch(kind, namespace, name, {"status": status}, subresource="status")

    def delete(self, kind: str, namespace: str | None, name: str, *, propagation: str = "Background") -> bool:
        """Delete; False when it was already gone."""
        try:
            self._call(
                "DELETE",
                _path(kind, namespace, name),
                body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation},
                what=f"delete {kind} {namespace}/{name}",
            )
        except NotFound:
            return False
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
                live = self.get(kind, meta.get("namespace"), meta["name"])
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
