"""Hosts of the ASGI core: plain uvicorn, or a BentoML 1.4 service that mounts it.

uvicorn: uvloop + httptools, no access log, one process (scale with replicas: the pod is
the unit of scaling in Kubernetes, and one process per pod keeps monitoring state whole).

BentoML: the same app mounted at ``/`` of a BentoML service (module
:mod:`mlops_operator.serving.bento_service`), configured for tail latency; see
:data:`BENTOML_SERVICE_CONFIG` for what is switched off and why.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from typing import Any

from mlops_operator.registry.artifacts import ResolvedModel, to_manifest
from mlops_operator.serving.asgi_app import ServingApp
from mlops_operator.serving.serve_settings import ENV_PREFIX, ServeSettings

logger = logging.getLogger(__name__)

MANIFEST_ENV = ENV_PREFIX + "MANIFEST"

# Paths of the ASGI core. BentoML runs OpenTelemetry's ASGI middleware on every request even
# with sampling at 0 (it still creates a non-recording span, attaches and detaches a context,
# wraps receive/send); listing the paths as excluded makes the middleware pass the request
# straight through. Patterns are regular expressions searched in the full URL.
TRACING_EXCLUDED_URLS = ["/predict", "/feedback", "/health", "/metrics", "/v2"]

#: BentoML service configuration tuned for latency (measured; see the serving report).
BENTOML_SERVICE_CONFIG: dict[str, Any] = {
    # Our own metrics (per model version, by endpoint and code) are on /metrics; BentoML's
    # middleware would count every request a second time and write to multiprocess files.
    "metrics": {"enabled": False},
    "logging": {"access": {"enabled": False}},
    "tracing": {"sample_rate": 0.0, "excluded_urls": TRACING_EXCLUDED_URLS},
    # The core enforces its own in-flight limit with an immediate 503 + Retry-After;
    # BentoML's concurrency limiter would only add a second queue in front of it.
    "traffic": {"timeout": 60},
}


class PortInUseError(OSError):
    """The port is taken: fail before downloading anything."""


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind the listening socket now, so a taken port fails fast and cannot be raced."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUseError(f"port {port} on {host} is already in use") from exc
        raise
    sock.set_inheritable(True)
    return sock


def run_uvicorn(app: ServingApp, sock: socket.socket) -> int:
    """Serve ``app`` on the bound ``sock`` until SIGTERM/SIGINT; non-zero if loading failed."""
    import uvicorn

    from mlops_operator.serving.http_protocol import guarded_protocol

    config = uvicorn.Config(
        app,
        loop="uvloop",
        # httptools plus a header deadline and a header size limit (slow or oversized headers).
        http=guarded_protocol(app.config.header_timeout_s, app.config.max_header_bytes),
        lifespan="on",
        access_log=False,
        log_level="info",
        log_config=None,  # uvicorn's records go through the process's logging (plain or JSON)
        # Behind a Service, connections are long-lived; keep them open across idle gaps.
        timeout_keep_alive=75,
        backlog=2048,
    )
    server = uvicorn.Server(config)

    def stop(_: BaseException) -> None:
        server.should_exit = True

    app.on_load_failure = stop
    server.run(sockets=[sock])
    return 1 if app.state == "failed" else 0


def run_bentoml(settings: ServeSettings, resolved: ResolvedModel, sock: socket.socket) -> int:
    """Serve through BentoML; its worker processes read the settings from the environment."""
    import bentoml

    os.environ.update(settings.to_env())
    os.environ[MANIFEST_ENV] = to_manifest(resolved)
    # BentoML binds the port itself (its arbiter hands the socket to the workers): release ours
    # at the last moment; the check above already failed fast on a taken port.
    sock.close()
    server = bentoml.serve(
        "mlops_operator.serving.bento_service:MlopsModelServer",
        host=settings.host,
        port=settings.port,
        working_dir=os.getcwd(),
        blocking=True,
    )
    del server
    return 0
