"""Discovery (``/api``, ``/apis``, aggregated v2) and the ``/openapi/v2``, ``/openapi/v3`` documents.

kubectl builds its REST mapping from discovery (kinds, scopes, short names, categories) and reads
OpenAPI for two decisions: whether the server validates fields itself (a ``fieldValidation``
query parameter on the PATCH operation of that group/version/kind), and which patch type
``kubectl apply`` sends (strategic merge only when the PATCH operation consumes it). Builtins are
therefore published without schemas: kubectl then falls back to its compiled-in types, which is
exactly the strategic merge patch a real cluster would receive. CRDs are published with their
schemas so ``kubectl explain`` works and ``kubectl apply`` uses a JSON merge patch, as for real.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from typing import Any

from .catalog import ResourceType
from .schema import to_openapi_v2

JsonDict = dict[str, Any]

KUBERNETES_VERSION = {
    "major": "1",
    "minor": "37",
    "gitVersion": "v1.37.0",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.25.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}
AGGREGATED_V2 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
_VERSION = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")


def version_priority(version: str) -> tuple[int, int, int, str]:
    """Kubernetes' version order: GA before beta before alpha, higher numbers first."""
    match = _VERSION.match(version)
    if not match:
        return (3, 0, 0, version)
    stage = {None: 0, "beta": 1, "alpha": 2}[match.group(2)]
    return (stage, -int(match.group(1)), -int(match.group(3) or 0), version)


def group_versions(types: list[ResourceType]) -> dict[str, list[str]]:
    result: dict[str, set[str]] = defaultdict(set)
    for rtype in types:
        if rtype.group:
            result[rtype.group].add(rtype.version)
    return {g: sorted(vs, key=version_priority) for g, vs in sorted(result.items())}


def _gv(group: str, version: str) -> JsonDict:
    return {"groupVersion": f"{group}/{version}", "version": version}


def api_versions(address: str) -> JsonDict:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}],
    }


def api_group(group: str, versions: list[str]) -> JsonDict:
    return {
        "name": group,
        "versions": [_gv(group, v) for v in versions],
        "preferredVersion": _gv(group, versions[0]),
    }


def api_group_list(types: list[ResourceType]) -> JsonDict:
    groups = [api_group(g, vs) for g, vs in group_versions(types).items()]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def _with_aliases(entry: JsonDict, rtype: ResourceType) -> JsonDict:
    """Add the short names and categories by which kubectl also finds a resource."""
    if rtype.short_names:
        entry["shortNames"] = rtype.short_names
    if rtype.categories:
        entry["categories"] = rtype.categories
    return entry


def api_resource_list(group: str, version: str, types: list[ResourceType]) -> JsonDict:
    resources: list[JsonDict] = []
    for rtype in sorted(types, key=lambda t: t.plural):
        entry: JsonDict = {
            "name": rtype.plural,
            "singularName": rtype.singular,
            "namespaced": rtype.namespaced,
            "kind": rtype.kind,
            "verbs": rtype.verbs,
        }
        resources.append(_with_aliases(entry, rtype))
        if rtype.status:
            resources.append(
                {
                    "name": f"{rtype.plural}/status",
                    "singularName": "",
                    "namespaced": rtype.namespaced,
                    "kind": rtype.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
        if rtype.scale is not None:
            resources.append(
                {
                    "name": f"{rtype.plural}/scale",
                    "singularName": "",
                    "namespaced": rtype.namespaced,
                    "group": "autoscaling",
                    "version": "v1",
                    "kind": "Scale",
                    "verbs": ["get", "patch", "update"],
                }
            )
    group_version = f"{group}/{version}" if group else version
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }


def _aggregated_resource(rtype: ResourceType) -> JsonDict:
    entry: JsonDict = {
        "resource": rtype.plural,
        "responseKind": {"group": rtype.group, "version": rtype.version, "kind": rtype.kind},
        "scope": "Namespaced" if rtype.namespaced else "Cluster",
        "singularResource": rtype.singular,
        "verbs": rtype.verbs,
    }
    _with_aliases(entry, rtype)
    subresources: list[JsonDict] = []
    if rtype.status:
        subresources.append(
            {
                "subresource": "status",
                "responseKind": {"group": rtype.group, "version": rtype.version, "kind": rtype.kind},
                "verbs": ["get", "patch", "update"],
            }
        )
    if rtype.scale is not None:
        subresources.append(
            {
                "subresource": "scale",
                "responseKind": {"group": "autoscaling", "version": "v1", "kind": "Scale"},
                "verbs": ["get", "patch", "update"],
            }
        )
    if subresources:
        entry["subresources"] = subresources
    return entry


def aggregated_discovery(types: list[ResourceType], core: bool) -> JsonDict:
    """``apidiscovery.k8s.io/v2`` APIGroupDiscoveryList: all of /api (core) or /apis in one answer."""
    by_group: dict[str, dict[str, list[ResourceType]]] = defaultdict(lambda: defaultdict(list))
    for rtype in types:
        if (rtype.group == "") == core:
            by_group[rtype.group][rtype.version].append(rtype)
    items: list[JsonDict] = []
    for group in sorted(by_group):
        versions = sorted(by_group[group], key=version_priority)
        items.append(
            {
                "metadata": {"name": group, "creationTimestamp": None},
                "versions": [
                    {
                        "version": version,
                        "resources": [
                            _aggregated_resource(t)
                            for t in sorted(by_group[group][version], key=lambda t: t.plural)
                        ],
                        "freshness": "Current",
                    }
                    for version in versions
                ],
            }
        )
    return {
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    }


# -- OpenAPI ---------------------------------------------------------------------------------

OBJECT_META_REF_V3 = "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
OBJECT_META_REF_V2 = "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
OBJECT_META = {
    "description": "Standard object's metadata.",
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "generateName": {"type": "string"},
        "namespace": {"type": "string"},
        "uid": {"type": "string"},
        "resourceVersion": {"type": "string"},
        "generation": {"type": "integer", "format": "int64"},
        "creationTimestamp": {"type": "string", "format": "date-time"},
        "deletionTimestamp": {"type": "string", "format": "date-time"},
        "deletionGracePeriodSeconds": {"type": "integer", "format": "int64"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "ownerReferences": {
            "type": "array",
            "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
    },
}
_PATCH_TYPES_CUSTOM = [
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/apply-patch+yaml",
]


def definition_name(rtype: ResourceType) -> str:
    """``mlops.dev`` + ``v1alpha1`` + ``TrainingJob`` -> ``dev.mlops.v1alpha1.TrainingJob``."""
    group = ".".join(reversed(rtype.group.split("."))) if rtype.group else "io.k8s.api.core"
    return f"{group}.{rtype.version}.{rtype.kind}"


def _gvk(rtype: ResourceType) -> list[JsonDict]:
    return [{"group": rtype.group, "version": rtype.version, "kind": rtype.kind}]


def _paths(rtype: ResourceType) -> tuple[str, str]:
    prefix = f"/apis/{rtype.group}/{rtype.version}" if rtype.group else f"/api/{rtype.version}"
    scope = "/namespaces/{namespace}" if rtype.namespaced else ""
    return f"{prefix}{scope}/{rtype.plural}", f"{prefix}{scope}/{rtype.plural}/{{name}}"


def _query_params_v3() -> list[JsonDict]:
    return [
        {"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
        for n in ("dryRun", "fieldManager", "fieldValidation")
    ]


def _schema_for(rtype: ResourceType) -> JsonDict:
    schema: JsonDict = json.loads(json.dumps(rtype.raw_schema or {"type": "object"}))
    props = schema.setdefault("properties", {})
    props["apiVersion"] = {"type": "string", "description": "APIVersion of this representation."}
    props["kind"] = {"type": "string", "description": "Kind of this representation."}
    schema.setdefault("x-kubernetes-preserve-unknown-fields", None)
    if schema["x-kubernetes-preserve-unknown-fields"] is None:
        del schema["x-kubernetes-preserve-unknown-fields"]
    return schema


def openapi_v3_document(group: str, version: str, types: list[ResourceType]) -> JsonDict:
    """The OpenAPI 3.0 document of one group/version, as served at ``/openapi/v3/apis/<g>/<v>``."""
    paths: JsonDict = {}
    schemas: JsonDict = {"io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta": OBJECT_META}
    for rtype in types:
        name = definition_name(rtype)
        ref = {"$ref": f"#/components/schemas/{name}"}
        ok = {"200": {"description": "OK", "content": {"application/json": {"schema": ref}}}}
        collection, item = _paths(rtype)
        extension = {"x-kubernetes-group-version-kind": _gvk(rtype)[0]}
        body = {"content": {"*/*": {"schema": ref}}, "required": True}
        patch_types = _PATCH_TYPES_CUSTOM
        paths[collection] = {
            "get": {
                "operationId": f"list{rtype.kind}",
                "responses": ok,
                **extension,
                "x-kubernetes-action": "list",
            },
            "post": {
                "operationId": f"create{rtype.kind}",
                "requestBody": body,
                "parameters": _query_params_v3(),
                "responses": ok,
                **extension,
                "x-kubernetes-action": "post",
            },
        }
        paths[item] = {
            "get": {
                "operationId": f"read{rtype.kind}",
                "responses": ok,
                **extension,
                "x-kubernetes-action": "get",
            },
            "put": {
                "operationId": f"replace{rtype.kind}",
                "requestBody": body,
                "parameters": _query_params_v3(),
                "responses": ok,
                **extension,
                "x-kubernetes-action": "put",
            },
            "patch": {
                "operationId": f"patch{rtype.kind}",
                "requestBody": {
                    "content": {t: {"schema": {"type": "object"}} for t in patch_types},
                    "required": True,
                },
                "parameters": _query_params_v3(),
                "responses": ok,
                **extension,
                "x-kubernetes-action": "patch",
            },
            "delete": {
                "operationId": f"delete{rtype.kind}",
                "responses": ok,
                **extension,
                "x-kubernetes-action": "delete",
            },
        }
        if rtype.custom:
            schema = _schema_for(rtype)
            schema["properties"]["metadata"] = {"$ref": OBJECT_META_REF_V3}
            schema["x-kubernetes-group-version-kind"] = _gvk(rtype)
            schemas[name] = schema
        else:
            schemas[name] = {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": True,
                "description": f"{rtype.kind} (schema not published by the emulated API server)",
            }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": KUBERNETES_VERSION["gitVersion"]},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def openapi_v3_index(types: list[ResourceType]) -> JsonDict:
    """``/openapi/v3``: one entry per group/version; the hash lets kubectl cache each document."""
    grouped: dict[str, list[ResourceType]] = defaultdict(list)
    for rtype in types:
        key = f"apis/{rtype.group}/{rtype.version}" if rtype.group else f"api/{rtype.version}"
        grouped[key].append(rtype)
    paths: JsonDict = {}
    for key, members in sorted(grouped.items()):
        group, version = (members[0].group, members[0].version)
        digest = (
            hashlib.sha512(json.dumps(openapi_v3_document(group, version, members), sort_keys=True).encode())
            .hexdigest()[:64]
            .upper()
        )
        paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={digest}"}
    return {"paths": paths}


def openapi_v2_document(types: list[ResourceType]) -> JsonDict:
    """A swagger 2.0 document: paths advertise server-side field validation; CRDs carry schemas."""
    paths: JsonDict = {}
    definitions: JsonDict = {
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta": to_openapi_v2(OBJECT_META),
    }
    params = [
        {"name": n, "in": "query", "type": "string", "uniqueItems": True}
        for n in ("dryRun", "fieldManager", "fieldValidation")
    ]
    for rtype in types:
        name = definition_name(rtype)
        collection, item = _paths(rtype)
        ok = {"200": {"description": "OK", "schema": {"$ref": f"#/definitions/{name}"}}}
        gvk = {"x-kubernetes-group-version-kind": _gvk(rtype)[0]}
        body = {"name": "body", "in": "body", "required": True, "schema": {"$ref": f"#/definitions/{name}"}}
        paths[collection] = {
            "post": {
                "consumes": ["*/*"],
                "produces": ["application/json"],
                "operationId": f"create{rtype.group.replace('.', '')}{rtype.version}{rtype.kind}",
                "parameters": [body, *params],
                "responses": ok,
                **gvk,
            }
        }
        paths[item] = {
            "patch": {
                "consumes": _PATCH_TYPES_CUSTOM,
                "produces": ["application/json"],
                "operationId": f"patch{rtype.group.replace('.', '')}{rtype.version}{rtype.kind}",
                "parameters": [
                    {"name": "body", "in": "body", "required": True, "schema": {"type": "object"}},
                    *params,
                ],
                "responses": ok,
                **gvk,
            }
        }
        if rtype.custom:
            schema = to_openapi_v2(_schema_for(rtype))
            schema["properties"]["metadata"] = {"$ref": OBJECT_META_REF_V2}
            schema["x-kubernetes-group-version-kind"] = _gvk(rtype)
            definitions[name] = schema
        else:
            definitions[name] = {"type": "object", "description": f"{rtype.kind}"}
    return {
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": KUBERNETES_VERSION["gitVersion"]},
        "paths": paths,
        "definitions": definitions,
    }
