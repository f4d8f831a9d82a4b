"""``mlops-operator run``: the operator process (kopf with our handlers, settings and clients).

The settings are read once, here, from the environment with the command line's flags on top;
the handlers are registered for those settings, and the clients built from them are handed to
every handler through kopf's ``memo``.
"""

from __future__ import annotations

import argparse
import logging

import kopf

from mlops_operator.config import Settings
from mlops_operator.controllers.collaborators import Collaborators
from mlops_operator.controllers.handlers import register
from mlops_operator.credentials import CredentialsError
from mlops_operator.logging_setup import configure_logging


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


def settings_from(args: argparse.Namespace, environment: Settings | None = None) -> Settings:
    """The environment's settings with the flags on top (flags win: ``-A`` over MLOPS_NAMESPACES)."""
    settings = environment if environment is not None else Settings()
    changes: dict[str, object] = {}
    if args.metrics_port is not None:
        changes["metrics_port"] = args.metrics_port
    if args.liveness_port is not None:
        changes["liveness_port"] = args.liveness_port
    if args.all_namespaces:
        changes["namespaces"] = []
    elif args.namespace:
        changes["namespaces"] = list(args.namespace)
    return settings.model_copy(update=changes)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    configure_logging(settings.log_format, level=logging.DEBUG if args.verbose else logging.INFO)
    try:
        collaborators = Collaborators.from_settings(settings)
    except CredentialsError as exc:
        logging.getLogger("mlops_operator").error("mlops-operator run: %s", exc)
        return 1
    liveness = f"http://0.0.0.0:{settings.liveness_port}/healthz" if settings.liveness_port else None
    kopf.run(
        registry=register(settings),
        memo=kopf.Memo(collaborators=collaborators),
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=liveness,
    )
    return 0
