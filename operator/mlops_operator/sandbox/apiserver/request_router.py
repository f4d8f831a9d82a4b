"""Routing of resource requests: from method, path and headers to the reads, the writer, the
garbage collector, ``/scale`` and watch streams, and their answers back to HTTP.

Writes answer with their :class:`~.object_writes.WriteResult`: the object as the body, and its
warnings in a ``Warning`` header, as the real server sends them (``299 - "<text>"``).
"""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

import aiohttp.web
import yaml

from . import errors, printing
from .catalog import ResourceType
from .errors import ApiError
from .object_store import JsonDict, ObjectStore, present
from .object_writes import ObjectWriter, WriteResult
from .request_urls import ParsedPath, is_true, parse_resource_path
from .scale_subresource import patch_scale, put_scale, scale_of
from .selectors import parse_field_selector, parse_label_selector
from .type_registry import TypeRegistry
from .watch_streams import WatchServer

_SUBRESOURCES = (None, "status", "scale", "finalize")


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> aiohttp.web.Response:
    return aiohttp.web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def warning_header(warnings: tuple[str, ...]) -> dict[str, str] | None:
    """The ``Warning`` header for a write's warnings (kubectl prints them), or None."""
    if not warnings:
        return None
    return {"Warning": ", ".join(f'299 - "{w}"'.replace("\n", " ") for w in warnings)}


def write_response(result: WriteResult) -> aiohttp.web.Response:
    return json_response(result.obj, result.code, warning_header(result.warnings))


def decode_body(body: bytes, content_type: str) -> Any:
    """A request body as JSON, or YAML where the content type says so (server-side apply)."""
    if not body:
        return None
    try:
        if "yaml" in content_type:
            return yaml.safe_load(body)
        return json.loads(body)
    except (ValueError, yaml.YAMLError) as exc:
        raise errors.bad_request(f"the request body could not be decoded: {exc}") from exc


def resource_not_found() -> ApiError:
    """What the server answers for any path it does not serve."""
    return ApiError(404, "NotFound", "the server could not find the requested resource")


@dataclasses.dataclass(eq=False)
class ResourceRouter:
    """Serves requests for resources (``/api/v1/...``, ``/apis/<group>/<version>/...``)."""

    store: ObjectStore
    types: TypeRegistry
    writer: ObjectWriter
    watches: WatchServer

    def resolve(self, path: str) -> tuple[ResourceType, ParsedPath]:
        """The resource type a path names, and the path's parts; 404 if it is not served."""
        parsed = parse_resource_path(path)
        if parsed is None:
            raise resource_not_found()
        rtype = self.types.get(parsed.group, parsed.version, parsed.plural)
        if (
            rtype is None
            or (parsed.namespace is not None and not rtype.namespaced)
            or parsed.subresource not in _SUBRESOURCES
            or (parsed.subresource == "status" and not rtype.status)
            or (parsed.subresource == "scale" and rtype.scale is None)
        ):
            raise resource_not_found()
        return rtype, parsed

    async def route(self, raw: aiohttp.web.BaseRequest, path: str, body: bytes) -> aiohttp.web.StreamResponse:
        """Serve one resource request; raises ApiError for the caller to render."""
        rtype, parsed = self.resolve(path)
        method = raw.method.upper()
        query = dict(raw.query)
        namespace, name, sub = parsed.namespace, parsed.name, parsed.subresource
        table = "as=Table" in raw.headers.get("Accept", "")
        if method == "GET" and is_true(query.get("watch")):
            return await self.watches.serve(raw, rtype, namespace, name, query, table)
        if method == "GET" and name is None:
            return json_response(self.list_page(rtype, namespace, query, table))
        if (
            rtype.namespaced
            and namespace is None
            and method != "GET"
            and not (method == "DELETE" and name is None)
        ):
            raise resource_not_found()
        if method == "GET":
            assert name is not None
            obj = self.store.read(rtype, namespace, name)
            if sub == "scale":
                return json_response(scale_of(rtype, obj))
            if table:
                include = query.get("includeObject", "Metadata")
                return json_response(printing.table(rtype, [obj], str(self.store.resource_version), include))
            return json_response(obj)
        data = decode_body(body, raw.headers.get("Content-Type", ""))
        if method == "POST" and name is None:
            return write_response(self.writer.create(rtype, namespace, data, query))
        if method == "DELETE" and name is None:
            return json_response(self.delete_collection(rtype, namespace, data, query))
        if name is None:
            raise errors.method_not_allowed()
        if method == "PUT":
            if sub == "scale":
                return json_response(put_scale(self.writer, rtype, namespace, name, data, query))
            return write_response(self.writer.update(rtype, namespace, name, data, sub, query))
        if method == "PATCH":
            content_type = raw.headers.get("Content-Type", "").split(";")[0].strip()
            if sub == "scale":
                return json_response(
                    patch_scale(self.writer, rtype, namespace, name, data, content_type, query)
                )
            return write_response(self.writer.patch(rtype, namespace, name, data, content_type, sub, query))
        if method == "DELETE":
            options = data if isinstance(data, dict) else {}
            obj, code = self.writer.collector.delete(rtype, namespace, name, options, query)
            return json_response(obj, code)
        raise errors.method_not_allowed()

    def select(self, rtype: ResourceType, namespace: str | None, query: dict[str, str]) -> list[JsonDict]:
        """The objects a list shows: one namespace or all, filtered by label and field selectors."""
        labels = parse_label_selector(query.get("labelSelector"))
        fields = parse_field_selector(query.get("fieldSelector"))
        return [
            present(rtype, obj)
            for (ns, _), obj in self.store.sorted_entries(rtype.store_key)
            if (namespace is None or ns == namespace) and labels(obj) and fields(obj)
        ]

    def list_page(
        self, rtype: ResourceType, namespace: str | None, query: dict[str, str], table: bool
    ) -> JsonDict:
        """A list with ``kind: <Kind>List`` and the current resourceVersion to watch from.

        ``limit``/``continue`` paginate over the (namespace, name) order, as kubectl expects.
        """
        items = self.select(rtype, namespace, query)
        rv = str(self.store.resource_version)
        meta: JsonDict = {"resourceVersion": rv}
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
            result = printing.table(rtype, items, rv, query.get("includeObject", "Metadata"))
            result["metadata"] = meta
            return result
        return {"kind": rtype.list_kind, "apiVersion": rtype.api_version, "metadata": meta, "items": items}

    def delete_collection(
        self, rtype: ResourceType, namespace: str | None, body: Any, query: dict[str, str]
    ) -> JsonDict:
        """DELETE on a list URL: every object matching the selectors, then a list of what went."""
        options = body if isinstance(body, dict) else {}
        deleted = []
        for item in self.select(rtype, namespace, query):
            meta = item["metadata"]
            obj, _ = self.writer.collector.delete(rtype, meta.get("namespace"), meta["name"], options, query)
            deleted.append(obj)
        return {
            "kind": rtype.list_kind,
            "apiVersion": rtype.api_version,
            "metadata": {"resourceVersion": str(self.store.resource_version)},
            "items": deleted,
        }
