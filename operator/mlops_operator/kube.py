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

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf
import kubernetes
from kubernetes.client.exceptions import ApiException

from mlops_operator import API_VERSION


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


def _api_error(exc: ApiException, what: str) -> Exception:
    """Map an API error to kopf's Temporary/Permanent errors, keeping the server's message."""
    try:
        message = json.loads(exc.body or "{}").get("message") or exc.reason
    except (ValueError, AttributeError):
        message = exc.reason
    status = exc.status or 0
    if status == 404:
        return NotFound(f"{what}: {message}")
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
    """A synchronous, dict-based client over the official ``kubernetes`` ApiClient."""

    def __init__(self, api_client: kubernetes.client.ApiClient) -> None:
        self.api_client = api_client

    @classmethod
    def from_environment(cls) -> Kube:
        """In a pod: the service account; elsewhere: ``$KUBECONFIG`` / ``~/.kube/config``."""
        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            # The client computes its default path from $KUBECONFIG at import; read it now.
            kubeconfig = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None
            return cls(kubernetes.config.new_client_from_config(config_file=kubeconfig))
        return cls(kubernetes.client.ApiClient())

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
            response = self.api_client.call_api(
                path,
                method,
                query_params=list((query or {}).items()),
                header_params={"Content-Type": content_type, "Accept": "application/json"},
                body=body,
                _preload_content=False,
                _return_http_data_only=True,
                _request_timeout=30,
            )
        except ApiException as exc:
            raise _api_error(exc, what) from exc
        except OSError as exc:  # connection refused/reset: the API server is not reachable
            raise kopf.TemporaryError(f"{what}: API server unreachable: {exc}", delay=RETRY_DELAY) from exc
        data = response.data if hasattr(response, "data") else response
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


def desired_patch(live: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """The merge patch that brings ``live`` to ``desired`` for the fields the operator owns (pure)."""
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
