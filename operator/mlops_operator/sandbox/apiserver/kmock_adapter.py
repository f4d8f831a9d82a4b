"""The one module that touches kmock's internals, and why it has to.

The emulator is a kmock ``KubernetesEmulator`` for two things kmock does well and tests use:
its DSL of reactions, with which a test injects faults (``emulator['get /api/v1/pods'] << 500``
answers 500 before the emulator sees the request), and its recording of requests for assertions
(``emulator._requests``). Everything else (routing, objects, watches) is the emulator's own, so
requests must reach kmock's DSL without kmock's own request parsing and Kubernetes emulation.
No public kmock API offers that, so this module uses private ones:

- ``kmock._internal.rendering.Request``: built here from the emulator's parsed path, because
  kmock's parser (``Request._parse``) answers 500 on ``/api/v1/namespaces``;
- ``kmock._internal.enums.action``: the action the DSL filters on (``list``, ``watch``, ...);
- ``_requests`` and ``_payloads`` (attrs fields of ``dsl.Root``): recorded requests, reactions;
- ``RawHandler._handle``: the DSL's matching, called past ``KubernetesEmulator._handle`` so
  that kmock's own object tracking never sees a request;
- ``__attrs_post_init__``: overridden so that kmock registers none of its fallback reactions;
- ``kmock/_internal/resources.json.gz``: the discovery answers of a real cluster that kmock
  ships, from which the emulator takes its builtin resources (:func:`bundled_discovery`).

Private APIs may change in any release: pyproject.toml pins kmock exactly, and
``tests/test_apiserver.py::test_kmock_is_the_version_the_adapter_was_written_for`` fails when
the installed kmock is not :data:`KMOCK_VERSION`. To upgrade, re-check each item above against
the new kmock, then move the pin and :data:`KMOCK_VERSION` together.
"""

from __future__ import annotations

import gzip
import importlib.resources
import json
from typing import Any

import aiohttp.web
import kmock
from kmock._internal import enums, rendering

from .request_urls import ParsedPath, is_true

#: The kmock release this adapter was written for and tested with (pinned in pyproject.toml).
KMOCK_VERSION = "0.8"

#: What the emulator records for kmock's assertions and DSL filters.
RecordedRequest = rendering.Request


class KmockHandler(kmock.KubernetesEmulator):
    """kmock's request recording and DSL reactions, for a server that routes requests itself."""

    #: A long-running sandbox must not keep every request body forever.
    max_recorded_requests = 2_000

    def __attrs_post_init__(self) -> None:
        # kmock registers its own fallback reactions here; the emulator routes requests itself.
        pass

    def record_request(
        self, raw: aiohttp.web.BaseRequest, parsed: ParsedPath | None, query: dict[str, str], body: bytes
    ) -> RecordedRequest:
        """Record a request as kmock would (for assertions and DSL filters), keeping the newest."""
        request = rendering.Request(
            id=len(self._requests),
            raw_request=raw,
            url=raw.url,
            method=raw.method,
            params=query,
            headers=dict(raw.headers),
            cookies=dict(raw.cookies),
            body=body,
            text=body.decode("utf-8", "replace"),
            data=_json_or_none(body),
            action=_action_of(parsed, raw.method, query),
            resource=None if parsed is None else kmock.resource(parsed.group, parsed.version, parsed.plural),
            namespace=None if parsed is None else parsed.namespace,
            name=None if parsed is None else parsed.name,
            subresource=None if parsed is None else parsed.subresource,
        )
        self._requests.append(request)
        if len(self._requests) > self.max_recorded_requests:
            del self._requests[: len(self._requests) - self.max_recorded_requests // 2]
        return request

    async def react(self, request: RecordedRequest) -> aiohttp.web.StreamResponse | None:
        """The answer of a DSL reaction that matches the request, or None: serve it normally."""
        if not self._payloads:
            return None
        try:
            return await self._handle(request)
        except NotImplementedError:  # no reaction matched
            return None

    async def _handle(self, request: RecordedRequest) -> aiohttp.web.StreamResponse:
        # Only the DSL: KubernetesEmulator._handle would also track objects in kmock's own store.
        response: aiohttp.web.StreamResponse = await kmock.RawHandler._handle(self, request)
        return response


def bundled_discovery() -> list[dict[str, Any]]:
    """The APIResourceLists kmock ships: a real (K3s) cluster's discovery answers, per group/version."""
    raw = importlib.resources.files("kmock._internal").joinpath("resources.json.gz").read_bytes()
    lists: list[dict[str, Any]] = json.loads(gzip.decompress(raw))
    return lists


def _json_or_none(body: bytes) -> object:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def _action_of(parsed: ParsedPath | None, method: str, query: dict[str, str]) -> enums.action | None:
    """kmock's action for DSL filters (``list``, ``watch``, ``fetch``, ...)."""
    if parsed is None:
        return None
    if method == "GET" and is_true(query.get("watch")):
        return enums.action.WATCH
    if parsed.name is None:
        return {"GET": enums.action.LIST, "POST": enums.action.CREATE}.get(method)
    return {"GET": enums.action.FETCH, "PATCH": enums.action.UPDATE, "DELETE": enums.action.DELETE}.get(
        method
    )
