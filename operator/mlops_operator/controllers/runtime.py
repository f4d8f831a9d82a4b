"""The operator process: kopf with our settings, metrics, liveness (``mlops-operator run``)."""

from __future__ import annotations

import argparse
import logging
import os

import kopf
from prometheus_client import start_http_server

from mlops_operator import GROUP
from mlops_operator.config import get_settings
from mlops_operator.controllers.metrics import REGISTRY

FINALIZER = f"{GROUP}/finalizer"

logger = logging.getLogger(__name__)


def configure(settings: kopf.OperatorSettings) -> None:
    """Every kopf setting the operator changes, in one place.

    - Progress and the last-handled spec live in annotations under ``mlops.dev/``, not in
      ``status``: the status schema stays strict and ``status`` holds only what users read.
    - Peering is off (``standalone``): one replica with a Lease-free setup; run one replica.
    - Watches reconnect every few minutes, so a silently dropped connection is noticed.
    """
    config = get_settings()
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.watching.server_timeout = config.watch_server_timeout
    settings.watching.client_timeout = config.watch_client_timeout
    settings.watching.connect_timeout = 10
    settings.queueing.worker_limit = config.worker_limit
    settings.execution.max_workers = max(4, config.worker_limit)
    settings.posting.level = logging.getLevelName(config.event_level.upper())
    settings.networking.error_backoffs = [1, 2, 5, 10, 30]
    settings.peering.standalone = True


def start_metrics_server() -> None:
    port = get_settings().metrics_port
    if port:
        start_http_server(port, registry=REGISTRY)
        logger.info("metrics on :%d/metrics", port)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace", "-n", action="append", default=None, help="watch this namespace (repeatable)"
    )
    scope.add_argument(
        "--all-namespaces", "-A", action="store_true", help="watch the whole cluster (default)"
    )
    parser.add_argument("--metrics-port", type=int, default=None, help="port of /metrics (0: off)")
    parser.add_argument("--liveness-port", type=int, default=None, help="port of /healthz (0: off)")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")


def run(args: argparse.Namespace) -> int:
    if args.metrics_port is not None:
        os.environ["MLOPS_METRICS_PORT"] = str(args.metrics_port)
    if args.liveness_port is not None:
        os.environ["MLOPS_LIVENESS_PORT"] = str(args.liveness_port)
    get_settings.cache_clear()
    config = get_settings()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Registering the handlers is importing the controllers.
    import mlops_operator.controllers.handlers  # noqa: F401

    # Flags win over the environment: --all-namespaces means the whole cluster even if
    # MLOPS_NAMESPACES is set.
    namespaces = [] if args.all_namespaces else (args.namespace or config.namespaces)
    liveness = f"http://0.0.0.0:{config.liveness_port}/healthz" if config.liveness_port else None
    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces or [],
        liveness_endpoint=liveness,
    )
    return 0
