"""The endpoints that are not resources: ``/version``, health checks, API discovery (legacy and
aggregated) and OpenAPI, answered from the resource types served at the time of the request."""

from __future__ import annotations

import json

import aiohttp.web

from . import discovery
from .catalog import ResourceType
from .request_router import json_response, resource_not_found


def serve_discovery(
    path: str, accept: str, types: list[ResourceType], address: str, aggregated_discovery: bool
) -> aiohttp.web.Response | None:
    """The answer to a GET of ``path`` if it is one of these endpoints, else None.

    ``aggregated_discovery`` answers kubectl's ``as=APIGroupDiscoveryList`` Accept header in kind
    (one request instead of one per group); off, clients fall back to the legacy documents.
    """
    aggregated = aggregated_discovery and "as=APIGroupDiscoveryList" in accept and "v=v2" in accept
    if path == "/version":
        return json_response(discovery.KUBERNETES_VERSION)
    if path in ("/healthz", "/livez", "/readyz"):
        return aiohttp.web.Response(text="ok")
    if path == "/":
        return json_response(
            {"paths": ["/api", "/api/v1", "/apis", "/openapi/v2", "/openapi/v3", "/version"]}
        )
    if path in ("/api", "/apis"):
        if aggregated:
            body = discovery.aggregated_discovery(types, core=path == "/api")
            return aiohttp.web.Response(
                body=json.dumps(body).encode(),
                headers={"Content-Type": discovery.AGGREGATED_V2},
            )
        if path == "/api":
            return json_response(discovery.api_versions(address))
        return json_response(discovery.api_group_list(types))
    if path == "/openapi/v2":
        return json_response(discovery.openapi_v2_document(types))
    if path == "/openapi/v3":
        return json_response(discovery.openapi_v3_index(types))
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
            raise resource_not_found()
        return json_response(discovery.openapi_v3_document(group, version, members))
    parts = [p for p in path.split("/") if p]
    if parts and parts[0] == "apis" and len(parts) == 2:
        versions = discovery.group_versions(types).get(parts[1])
        if not versions:
            raise resource_not_found()
        return json_response(
            {"kind": "APIGroup", "apiVersion": "v1", **discovery.api_group(parts[1], versions)}
        )
    if (parts[:1] == ["api"] and len(parts) == 2) or (parts[:1] == ["apis"] and len(parts) == 3):
        group, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])
        members = [t for t in types if t.group == group and t.version == version]
        if not members:
            raise resource_not_found()
        return json_response(discovery.api_resource_list(group, version, members))
    return None
