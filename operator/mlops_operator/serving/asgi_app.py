"""The model server's ASGI core: one raw ASGI application, hosted by uvicorn or BentoML.

Raw ASGI rather than Starlette: the request path here is a dict lookup for the route, one
pass over the headers, the body read, a parse, a validation, the model call and one send.
Starlette's Request/Response objects and router add a few microseconds per request that
measurably lowered throughput for a linear model (see the serving report), and nothing in
Starlette is needed: there are seven routes.

Endpoints: ``POST /predict``, ``GET /health``, ``POST /feedback``, ``GET /metrics`` and the
Open Inference Protocol v2 (``/v2``, ``/v2/health/{live,ready}``, ``/v2/models/{name}[/versions/
{v}][/ready|/infer]``). Bad input is answered with a 4xx naming the problem and never reaches
the model; overload (more than ``max_inflight`` inference requests in flight) is answered 503
with ``Retry-After`` at once.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import math
import os
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from mlops_operator import __version__
from mlops_operator.serving import feedback, v2
from mlops_operator.serving.batching import Batcher, Runner
from mlops_operator.serving.capture import CaptureConfig, CaptureWriter
from mlops_operator.serving.request_validation import (
    InputSchema,
    RequestError,
    dumps,
    loads,
    parse_feedback,
    parse_predict,
)
from mlops_operator.serving.served_model import ServedModel
from mlops_operator.serving.shadow_mirror import ShadowMirror
from mlops_operator.serving.telemetry import HttpMetrics, MonitorLike, ObservationFeed

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

Handler = Callable[..., Awaitable[int]]
Route = tuple[str, dict[str, Handler]]

_JSON = b"application/json"
_TEXT = b"text/plain; charset=utf-8"


@dataclass
class ServerConfig:
    """Limits and knobs of the ASGI core (the CLI fills it from flags / ``MLOPS_SERVE_*``)."""

    max_body_bytes: int = 1 << 20
    # A request body not complete this long after the handler started reading it gets 408.
    body_timeout_s: float = 30.0
    # Enforced by the uvicorn host's protocol (see http_protocol.py), not by this app.
    header_timeout_s: float = 10.0
    max_header_bytes: int = 64 * 1024
    max_rows: int = 1000
    max_inflight: int = 64
    # None: decide from the load-time calibration; 0 or 1: off; > 1: on with this size.
    max_batch_size: int | None = None
    max_batch_wait_ms: float = 0.0
    auto_batch_size: int = 64
    observe_flush_rows: int = 256
    observe_flush_s: float = 0.05
    # gc.freeze() after loading: see ServingApp.attach.
    freeze_gc: bool = True
    # host:port at which the other replicas reach this one (routable request ids).
    advertise_address: str | None = None
    # Shadow rollout: copy every prediction request to this candidate (see shadow_mirror.py).
    shadow_url: str | None = None
    shadow_version: str | None = None
    shadow_max_inflight: int = 32
    shadow_timeout_ms: float = 1000.0
    # Durable capture of predictions and labels (see capture.py); None: off.
    capture: CaptureConfig | None = None


class ClientDisconnectedError(Exception):
    """The client went away before its body arrived."""


#: Sent with answers given before the body was read to its end (413, 408): the rest of the
#: body is not worth reading, so the host closes the connection instead of draining it.
_CLOSE = [(b"connection", b"close")]


@dataclass(frozen=True)
class _Request:
    content_length: int | None
    content_type: bytes | None
    request_id: str | None
    header_length: int | None


def _read_headers(scope: Scope) -> _Request:
    content_length = content_type = request_id = header_length = None
    for key, value in scope["headers"]:
        # ASGI servers lower-case header names.
        if key == b"content-length":
            content_length = int(value) if value.isdigit() else -1
        elif key == b"content-type":
            content_type = value
        elif key == b"x-request-id":
            request_id = value.decode("latin-1")[:256] or None
        elif key == b"inference-header-content-length":
            header_length = int(value) if value.isdigit() else -1
    return _Request(content_length, content_type, request_id, header_length)


def _json_ok(content_type: bytes | None, binary_allowed: bool = False) -> bool:
    if content_type is None:
        # Clients such as tritonclient send no content type for JSON bodies.
        return True
    media = content_type.split(b";", 1)[0].strip().lower()
    if media == _JSON or media.endswith(b"+json"):
        return True
    return binary_allowed and media == b"application/octet-stream"


class ServingApp:
    """The ASGI application. Create it, then :meth:`attach` a model (or pass a loader)."""

    def __init__(
        self,
        config: ServerConfig | None = None,
        *,
        model_name: str,
        model_version: str,
        registry: CollectorRegistry | None = None,
        loader: Callable[[], tuple[ServedModel, MonitorLike | None]] | None = None,
        on_load_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.config = config or ServerConfig()
        self.model_name = model_name
        self.model_version = model_version
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.metrics = HttpMetrics(self.registry, model_name, model_version)
        self.loader = loader
        self.on_load_failure = on_load_failure
        self.state = "loading"
        self.load_error: str | None = None
        self.model: ServedModel | None = None
        self.schema: InputSchema | None = None
        self.runner: Runner | None = None
        self.feed: ObservationFeed | None = None
        self.monitor: MonitorLike | None = None
        self.shadow: ShadowMirror | None = None
        self.capture: CaptureWriter | None = None
        self.inflight = 0
        self._id_prefix = feedback.id_prefix(self.config.advertise_address, secrets.token_hex(4))
        self._ids = itertools.count(1)
        self._load_thread: threading.Thread | None = None
        # Body reads in progress (task -> deadline) and those the sweeper cancelled.
        self._reading: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._sweep_loop: asyncio.AbstractEventLoop | None = None
        self._model_routes: dict[str, tuple[Route | None, tuple[str, ...]]] = {}
        self._routes: dict[str, Route] = {
            "/predict": ("/predict", {"POST": self._predict}),
            "/health": ("/health", {"GET": self._health}),
            "/feedback": ("/feedback", {"POST": self._feedback}),
            "/metrics": ("/metrics", {"GET": self._metrics}),
            "/monitoring": ("/monitoring", {"GET": self._monitoring}),
            "/v2": ("/v2", {"GET": self._server_metadata}),
            "/v2/health/live": ("/v2/health/live", {"GET": self._live}),
            "/v2/health/ready": ("/v2/health/ready", {"GET": self._ready}),
        }

    # --- lifecycle ------------------------------------------------------------------------------

    def attach(self, model: ServedModel, monitor: MonitorLike | None = None) -> None:
        """Serve ``model`` from now on. Safe to call from a loader thread."""
        config = self.config
        calibration = model.calibration or model.calibrate()
        if config.max_batch_size is None:
            batch = config.auto_batch_size if calibration.should_batch() else 0
        else:
            batch = config.max_batch_size
        inline = calibration.one_row_s < _inline_limit()
        runner: Runner
        if batch > 1:
            runner = Batcher(
                model.predict,
                max_batch_size=batch,
                max_wait_s=config.max_batch_wait_ms / 1000 or None,
                one_row_s=calibration.one_row_s,
                batch_rows=calibration.batch_rows,
                batch_s=calibration.batch_s,
            )
        else:
            runner = Runner(model.predict, inline=inline)
        logger.info(
            "model %s version %s: %.0f us per call (1 row), %.0f us for %d rows: %s",
            model.name,
            model.version,
            calibration.one_row_s * 1e6,
            calibration.batch_s * 1e6,
            calibration.batch_rows,
            f"batching up to {batch} rows, adaptive window of at most {runner.max_wait_s * 1000:.2f} ms"
            if isinstance(runner, Batcher)
            else ("inline calls" if inline else "calls in a worker thread"),
        )
        self.schema = InputSchema(model.n_features, model.feature_names, config.max_rows)
        self.monitor = monitor
        self.feed = (
            ObservationFeed(monitor, flush_rows=config.observe_flush_rows, flush_s=config.observe_flush_s)
            if monitor is not None
            else None
        )
        if config.shadow_url and config.shadow_version:
            self.shadow = ShadowMirror(
                config.shadow_url,
                config.shadow_version,
                classification=model.is_classifier,
                max_inflight=config.shadow_max_inflight,
                timeout_s=config.shadow_timeout_ms / 1000,
            )
            logger.info(
                "shadow: copying prediction requests to version %s at %s",
                config.shadow_version,
                config.shadow_url,
            )
        if config.capture is not None:
            self.capture = CaptureWriter(
                config.capture,
                model_name=self.model_name,
                model_version=self.model_version,
                feature_names=model.feature_names or [f"f{i}" for i in range(model.n_features)],
                classification=model.is_classifier,
                registry=self.registry,
            )
            logger.info("capture: predictions and labels to %s", config.capture.uri)
        self.runner = runner
        self.model = model
        if config.freeze_gc:
            # Everything loaded so far (MLflow, sklearn, the model) lives as long as the process.
            # Freezing it takes it out of the collector's view, so a full collection no longer
            # walks millions of import-time objects: without it, gen-2 collections under load
            # stall requests for tens to hundreds of milliseconds (the p99 tail).
            gc.collect()
            gc.freeze()
        self.state = "ready"  # last: readers check it before touching the fields above

    def fail(self, error: BaseException) -> None:
        """Record that loading failed (the host decides whether to exit)."""
        self.state = "failed"
        self.load_error = str(error)
        logger.error("model failed to load: %s", error)
        if self.on_load_failure is not None:
            self.on_load_failure(error)

    def start_loading(self) -> None:
        """Run the loader in a background thread, so health endpoints answer meanwhile."""
        if self.loader is None or self._load_thread is not None:
            return
        loader = self.loader

        def load() -> None:
            try:
                model, monitor = loader()
                self.attach(model, monitor)
            except BaseException as exc:
                self.fail(exc)

        self._load_thread = threading.Thread(target=load, name="mlops-model-loader", daemon=True)
        self._load_thread.start()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.start_loading()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.feed is not None:
                    self.feed.flush()
                if self.runner is not None:
                    await self.runner.close()
                if self.shadow is not None:
                    await self.shadow.close()
                if self.capture is not None:
                    await asyncio.to_thread(self.capture.close)
                await send({"type": "lifespan.shutdown.complete"})
                return

    # --- dispatch -------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind != "http":
            return
        started = time.perf_counter()
        path: str = scope["path"]
        route = self._routes.get(path)
        params: tuple[str, ...] = ()
        if route is None:
            # /v2/models/... paths are parsed once, then found here (bounded: paths come from clients).
            cached = self._model_routes.get(path)
            if cached is not None:
                route, params = cached
            else:
                route = self._routes.get(path.rstrip("/") or "/")
                if route is None and path.startswith("/v2/models/"):
                    route, params = cached = self._model_route(path)
                    if len(self._model_routes) < 256:
                        self._model_routes[path] = cached
        if route is None:
            status = await self._error(send, 404, f"no route {path}")
            self.metrics.observe("other", status, time.perf_counter() - started)
            return
        endpoint, methods = route
        handler = methods.get(scope["method"])
        if handler is None:
            allow = ", ".join(methods).encode()
            status = await self._error(
                send, 405, f"{scope['method']} not allowed on {path}", [(b"allow", allow)]
            )
        else:
            try:
                status = await handler(scope, receive, send, *params)
            except RequestError as exc:
                status = await self._error(send, exc.status, exc.message, exc.headers)
            except ClientDisconnectedError:
                status = 499
        self.metrics.observe(endpoint, status, time.perf_counter() - started)

    def _model_route(self, path: str) -> tuple[Route | None, tuple[str, ...]]:
        parts = path[len("/v2/models/") :].rstrip("/").split("/")
        name, rest = parts[0], parts[1:]
        version = None
        if len(rest) >= 2 and rest[0] == "versions":
            version, rest = rest[1], rest[2:]
        base = "/v2/models/{name}" + ("/versions/{version}" if version is not None else "")
        if not rest:
            return (base, {"GET": self._model_metadata}), (name, version or "")
        if rest == ["ready"]:
            return (base + "/ready", {"GET": self._model_ready}), (name, version or "")
        if rest == ["infer"]:
            return (base + "/infer", {"POST": self._infer}), (name, version or "")
        return None, ()

    # --- responses ------------------------------------------------------------------------------

    @staticmethod
    async def _send(
        send: Send,
        status: int,
        body: bytes,
        content_type: bytes = _JSON,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> int:
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        if extra:
            headers.extend(extra)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return status

    async def _error(
        self, send: Send, status: int, message: str, extra: list[tuple[bytes, bytes]] | None = None
    ) -> int:
        return await self._send(send, status, dumps({"error": message}), extra=extra)

    async def _read_body(self, receive: Receive, request: _Request) -> bytes:
        """The whole body: 413 as soon as it is known to exceed the limit, 408 if it is too slow."""
        limit = self.config.max_body_bytes
        declared = request.content_length
        if declared is not None and declared > limit:
            raise RequestError(413, f"body of {declared} bytes exceeds the limit of {limit} bytes", _CLOSE)
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - ASGI apps always run in a task
            return await self._receive_body(receive, limit)
        # A deadline per read, enforced by one shared timer (see _sweep): a timer or
        # asyncio.timeout per request would cost microseconds on every request.
        self._reading[task] = time.monotonic() + self.config.body_timeout_s
        if self._sweep_handle is None or self._sweep_loop is not task.get_loop():
            self._arm_sweep(task.get_loop())
        try:
            return await self._receive_body(receive, limit)
        except asyncio.CancelledError:
            if task not in self._expired:
                raise
            self._expired.discard(task)
            task.uncancel()
            timeout = self.config.body_timeout_s
            raise RequestError(
                408, f"request body not received within {timeout:g} s; send it at once", _CLOSE
            ) from None
        finally:
            self._reading.pop(task, None)

    def _arm_sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        interval = min(1.0, max(self.config.body_timeout_s / 4, 0.01))
        self._sweep_loop = loop
        self._sweep_handle = loop.call_later(interval, self._sweep)

    def _sweep(self) -> None:
        """Cancel body reads past their deadline; re-arm while any read is in progress."""
        self._sweep_handle = None
        loop = self._sweep_loop
        now = time.monotonic()
        for task, deadline in list(self._reading.items()):
            if task.get_loop() is not loop or task.done():
                del self._reading[task]  # left behind by a closed event loop (tests)
            elif deadline <= now:
                del self._reading[task]
                self._expired.add(task)
                task.cancel()
        if self._reading and loop is not None and not loop.is_closed():
            self._arm_sweep(loop)

    @staticmethod
    async def _receive_body(receive: Receive, limit: int) -> bytes:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnectedError
        body: bytes = message.get("body", b"")
        if len(body) > limit:
            raise RequestError(413, f"body exceeds the limit of {limit} bytes", _CLOSE)
        if not message.get("more_body", False):
            return body
        chunks = [body]
        size = len(body)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnectedError
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                # Chunked upload without a Content-Length: stop reading at the limit.
                raise RequestError(413, f"body exceeds the limit of {limit} bytes", _CLOSE)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _admit(self) -> ServedModel:
        """The model, or a 503: still loading, or too many requests in flight."""
        model = self.model
        if self.state != "ready" or model is None:
            raise RequestError(
                503, f"model is {self.state}" + (f": {self.load_error}" if self.load_error else "")
            )
        if self.inflight >= self.config.max_inflight:
            # Refuse at once rather than queue without bound: the client (or the Service's
            # other endpoints) can retry, and the latency of admitted requests stays bounded.
            raise RequestError(
                503,
                f"overloaded: {self.config.max_inflight} requests in flight; retry shortly",
                [(b"retry-after", b"1")],
            )
        return model

    def _request_ids(self, given: str | None, rows: int, single: bool) -> list[str]:
        base = given or f"{self._id_prefix}{next(self._ids):x}"
        if single:
            return [base]
        return [f"{base}-{i}" for i in range(rows)]

    # --- handlers -------------------------------------------------------------------------------

    async def _predict(self, scope: Scope, receive: Receive, send: Send) -> int:
        self._admit()
        request = _read_headers(scope)
        if not _json_ok(request.content_type):
            raise RequestError(415, f"content-type {request.content_type!r} is not application/json")
        # Not in flight while the body arrives: a slow upload holds no model capacity (200 slow
        # clients must not turn every other request into a 503). Admitted again once it is here.
        body = await self._read_body(receive, request)
        self._admit()
        self.inflight += 1
        try:
            schema = self.schema
            assert schema is not None and self.runner is not None
            matrix, single = parse_predict(loads(body), schema)
            try:
                result = await self.runner.run(matrix)
            except Exception as exc:
                logger.exception("model call failed")
                return await self._error(send, 500, f"model call failed: {type(exc).__name__}: {exc}")
            ids = self._request_ids(request.request_id, matrix.shape[0], single)
            answer: dict[str, Any]
            if single:
                answer = {
                    "prediction": result.labels[0],
                    "model_version": self.model_version,
                    "request_id": ids[0],
                }
                if result.probabilities is not None:
                    answer["probability"] = result.probabilities[0]
            else:
                answer = {"prediction": result.labels, "model_version": self.model_version, "request_id": ids}
                if result.probabilities is not None:
                    answer["probability"] = result.probabilities
            status = await self._send(send, 200, dumps(answer))
        finally:
            self.inflight -= 1
        # After the response went out: the client does not wait for monitoring or the mirror.
        if self.feed is not None:
            self.feed.add(matrix, result.labels, ids)
        if self.shadow is not None:
            self.shadow.submit(matrix, result.labels, ids)
        if self.capture is not None:
            self.capture.add(matrix, result.labels, ids)
        return status

    async def _infer(self, scope: Scope, receive: Receive, send: Send, name: str, version: str) -> int:
        self._check_model(name, version)
        model = self._admit()
        request = _read_headers(scope)
        if not _json_ok(request.content_type, binary_allowed=request.header_length is not None):
            raise RequestError(415, f"content-type {request.content_type!r} is not application/json")
        body = await self._read_body(receive, request)  # not in flight meanwhile (see _predict)
        model = self._admit()
        self.inflight += 1
        try:
            header, binary = v2.split_binary(body, request.header_length)
            schema = self.schema
            assert schema is not None and self.runner is not None
            infer = v2.parse_infer(header, binary, schema, model.is_classifier)
            try:
                result = await self.runner.run(infer.matrix)
            except Exception as exc:
                logger.exception("model call failed")
                return await self._error(send, 500, f"model call failed: {type(exc).__name__}: {exc}")
            rows = infer.matrix.shape[0]
            ids = self._request_ids(infer.request_id or request.request_id, rows, rows == 1)
            response, tail = v2.build_response(
                infer,
                result.labels,
                result.probabilities,
                model_name=self.model_name,
                model_version=self.model_version,
                label_datatype=model.label_datatype,
                request_id=ids[0] if rows == 1 else ids[0].rsplit("-", 1)[0],
            )
            response["parameters"] = {"request_ids": ids}
            payload = dumps(response)
            if tail:
                extra = [(b"inference-header-content-length", str(len(payload)).encode())]
                status = await self._send(send, 200, payload + tail, b"application/octet-stream", extra)
            else:
                status = await self._send(send, 200, payload)
        finally:
            self.inflight -= 1
        if self.feed is not None:
            self.feed.add(infer.matrix, result.labels, ids)
        if self.shadow is not None:
            self.shadow.submit(infer.matrix, result.labels, ids)
        if self.capture is not None:
            self.capture.add(infer.matrix, result.labels, ids)
        return status

    async def _feedback(self, scope: Scope, receive: Receive, send: Send) -> int:
        request = _read_headers(scope)
        if not _json_ok(request.content_type):
            raise RequestError(415, f"content-type {request.content_type!r} is not application/json")
        body = await self._read_body(receive, request)
        items = parse_feedback(loads(body), self.config.max_rows)
        if self.state != "ready":
            raise RequestError(503, f"model is {self.state}; no predictions to label yet")
        if self.monitor is None or self.feed is None:
            raise RequestError(
                404, "unknown request_id: monitoring is off on this server, so no ids are kept"
            )
        if getattr(self.monitor, "task", None) == "regression":
            _check_regression_labels(items)  # all or nothing: before any label is recorded
        self.feed.flush()  # ids still buffered must be known to the monitor first
        local, remote = self._route_feedback(scope, items)
        unknown = []
        for request_id, label in local:
            try:
                known = self.monitor.feedback(request_id, label)
            except ValueError as exc:  # a label the monitor cannot use: the client's error
                raise RequestError(400, f"label for request_id {request_id!r}: {exc}") from None
            if not known:
                unknown.append(request_id)
                continue
            if self.shadow is not None:
                self.shadow.label(request_id, label)
            if self.capture is not None:
                self.capture.label(request_id, label)
        accepted = len(local) - len(unknown)
        answers = await asyncio.gather(
            *(asyncio.to_thread(feedback.forward, address, routed) for address, routed in remote.items())
        )
        for remote_accepted, remote_unknown in answers:
            accepted += remote_accepted
            unknown += remote_unknown
        if accepted == 0:
            what = f"request_id {unknown[0]!r}" if len(unknown) == 1 else f"all {len(unknown)} request_ids"
            return await self._error(send, 404, f"unknown or expired {what}; nothing recorded")
        answer = {"accepted": accepted, "unknown": len(unknown), "unknown_request_ids": unknown[:100]}
        return await self._send(send, 200, dumps(answer))

    def _route_feedback(
        self, scope: Scope, items: list[tuple[str, Any]]
    ) -> tuple[list[tuple[str, Any]], dict[str, list[tuple[str, Any]]]]:
        """Split feedback into this replica's ids and, per peer address, the other replicas'.

        The address comes from the request id, which a client can forge: so only a peer on this
        replica's own port is a peer (replicas of one version share the pod template's port),
        and one request reaches at most :data:`~mlops_operator.serving.feedback.MAX_PEERS`
        peers. Ids beyond that are looked up here, where they are unknown.
        """
        me = self.config.advertise_address
        forwarded = any(key == feedback.FORWARDED_HEADER.encode() for key, _ in scope.get("headers", []))
        if me is None or forwarded:
            return items, {}
        local: list[tuple[str, Any]] = []
        remote: dict[str, list[tuple[str, Any]]] = {}
        for item in items:
            address = feedback.owner(item[0])
            if address is None or address == me or not feedback.may_forward(me, address, remote):
                local.append(item)
            else:
                remote.setdefault(address, []).append(item)
        return local, remote

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> int:
        if self.feed is not None:
            self.feed.flush()
        return await self._send(send, 200, generate_latest(self.registry), CONTENT_TYPE_LATEST.encode())

    async def _monitoring(self, scope: Scope, receive: Receive, send: Send) -> int:
        """The monitor's snapshot as JSON: what the operator copies into the InferenceService's status."""
        if self.monitor is None or self.feed is None:
            message = "monitoring is disabled" if self.state == "ready" else "the model is not loaded yet"
            return await self._send(send, 404 if self.state == "ready" else 503, dumps({"error": message}))
        self.feed.flush()
        snapshot = self.monitor.snapshot()
        if self.shadow is not None and isinstance(snapshot.get("counters"), dict):
            snapshot["counters"]["shadow"] = self.shadow.counters()
        if self.capture is not None:
            snapshot["capture"] = self.capture.status()
        return await self._send(send, 200, dumps(snapshot))

    def _health_body(self) -> dict[str, Any]:
        return {
            "status": {"ready": "healthy"}.get(self.state, self.state),
            "model_loaded": self.state == "ready",
            "model_name": self.model_name,
            "model_version": self.model_version,
            **({"error": self.load_error} if self.load_error else {}),
        }

    async def _health(self, scope: Scope, receive: Receive, send: Send) -> int:
        return await self._send(send, 200 if self.state == "ready" else 503, dumps(self._health_body()))

    async def _live(self, scope: Scope, receive: Receive, send: Send) -> int:
        # Live while loading (a slow download must not get the pod restarted); not once failed.
        live = self.state != "failed"
        return await self._send(send, 200 if live else 503, dumps({"live": live}))

    async def _ready(self, scope: Scope, receive: Receive, send: Send) -> int:
        ready = self.state == "ready"
        return await self._send(send, 200 if ready else 503, dumps({"ready": ready}))

    async def _server_metadata(self, scope: Scope, receive: Receive, send: Send) -> int:
        body = {"name": "mlops-operator", "version": __version__, "extensions": ["binary_tensor_data"]}
        return await self._send(send, 200, dumps(body))

    def _check_model(self, name: str, version: str) -> None:
        if name != self.model_name:
            raise RequestError(404, f"unknown model {name!r}; this server serves {self.model_name!r}")
        if version and version != self.model_version:
            raise RequestError(
                404,
                f"unknown version {version!r} of model {name!r}; this server serves {self.model_version!r}",
            )

    async def _model_ready(self, scope: Scope, receive: Receive, send: Send, name: str, version: str) -> int:
        self._check_model(name, version)
        ready = self.state == "ready"
        return await self._send(send, 200 if ready else 503, dumps({"name": name, "ready": ready}))

    async def _model_metadata(
        self, scope: Scope, receive: Receive, send: Send, name: str, version: str
    ) -> int:
        self._check_model(name, version)
        model = self.model
        if self.state != "ready" or model is None:
            raise RequestError(503, f"model is {self.state}")
        outputs: list[dict[str, Any]] = [
            {"name": v2.OUTPUT_PREDICT, "datatype": model.label_datatype, "shape": [-1]}
        ]
        if model.is_classifier:
            outputs.append(
                {"name": v2.OUTPUT_PROBA, "datatype": "FP64", "shape": [-1, len(model.classes or [])]}
            )
        body = {
            "name": self.model_name,
            "versions": [self.model_version],
            "platform": model.platform,
            "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, model.n_features]}],
            "outputs": outputs,
            "parameters": {
                "feature_names": model.feature_names,
                "classes": model.classes,
            },
        }
        return await self._send(send, 200, dumps(body))


def _check_regression_labels(items: list[tuple[str, Any]]) -> None:
    """A regression model's labels are numbers (a numeric string is accepted): 400 otherwise."""
    for i, (_, label) in enumerate(items):
        try:
            value = float(label)
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value):
            where = f"feedback[{i}]" if len(items) > 1 else "feedback"
            raise RequestError(
                400, f"{where}.label must be a finite number for this regression model, got {label!r:.40}"
            )


def _inline_limit() -> float:
    from mlops_operator.serving.served_model import INLINE_CALL_LIMIT_S

    return float(os.environ.get("MLOPS_SERVE_INLINE_CALL_LIMIT_S", INLINE_CALL_LIMIT_S))
