"""``mlops-operator run``: the operator process (kopf with our handlers, settings and clients).

The settings are read once, here, from the environment with the command line's flags on top;
the handlers are registered for those settings, and the clients built from them are handed to
every handler through kopf's ``memo``.

With leader election (the default), the process first waits as a standby for the Lease
(``leader_election.py``), serving ``/healthz`` and ``/metrics`` meanwhile; only the holder runs
kopf. It renews the Lease while kopf runs and exits at once, with status 3, if it loses it; on
SIGTERM it stops kopf, waits for the handlers in flight, and releases the Lease.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import threading

import kopf
from pydantic import ValidationError

from mlops_operator.config import Settings
from mlops_operator.controllers.collaborators import Collaborators
from mlops_operator.controllers.handlers import register
from mlops_operator.controllers.kopf_settings import start_metrics_server
from mlops_operator.credentials import CredentialsError
from mlops_operator.kube_client import Kube
from mlops_operator.leader_election import (
    EXIT_LEADERSHIP_LOST,
    LEADER,
    ElectionConfig,
    KubeLeaseStore,
    LeaderElector,
    candidate_identity,
    lease_namespace,
    predecessor_prefix,
    standby_health,
)
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
    parser.add_argument(
        "--no-leader-election",
        dest="leader_election",
        action="store_false",
        default=None,
        help="act at once, without the Lease (local development; never with two replicas)",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")


def settings_from(args: argparse.Namespace, environment: Settings | None = None) -> Settings:
    """The environment's settings with the flags on top (flags win: ``-A`` over MLOPS_NAMESPACES)."""
    settings = environment if environment is not None else Settings()
    changes: dict[str, object] = {}
    if args.metrics_port is not None:
        changes["metrics_port"] = args.metrics_port
    if args.liveness_port is not None:
        changes["liveness_port"] = args.liveness_port
    if getattr(args, "leader_election", None) is False:
        changes["leader_election"] = False
    if args.all_namespaces:
        changes["namespaces"] = []
    elif args.namespace:
        changes["namespaces"] = list(args.namespace)
    return settings.model_copy(update=changes)


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from(args)
    except ValidationError as exc:
        # Each problem by field and reason; the refused values stay out (Settings hides them).
        configure_logging("plain")
        problems = "; ".join(
            f"MLOPS_{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
        )
        logging.getLogger("mlops_operator").error("mlops-operator run: invalid settings: %s", problems)
        return 2
    configure_logging(settings.log_format, level=logging.DEBUG if args.verbose else logging.INFO)
    try:
        collaborators = Collaborators.from_settings(settings)
    except CredentialsError as exc:
        logging.getLogger("mlops_operator").error("mlops-operator run: %s", exc)
        return 1
    start_metrics_server(settings.metrics_port)  # a standby is scraped too
    if not settings.leader_election:
        LEADER.set(1)
        _run_kopf(settings, collaborators, kopf.OperatorSettings())
        return 0
    return _run_elected(settings, collaborators)


def _run_kopf(
    settings: Settings,
    collaborators: Collaborators,
    kopf_settings: kopf.OperatorSettings,
    stop: threading.Event | None = None,
) -> None:
    """kopf until SIGTERM/SIGINT (what ``kopf.run`` does), or until ``stop`` was set by a signal
    that came before kopf's own handlers were installed (a leader stopped as it took over)."""
    with contextlib.suppress(asyncio.CancelledError):  # as kopf.run
        asyncio.run(_operate(settings, collaborators, kopf_settings, stop))


async def _operate(
    settings: Settings,
    collaborators: Collaborators,
    kopf_settings: kopf.OperatorSettings,
    stop: threading.Event | None,
) -> None:
    liveness = f"http://0.0.0.0:{settings.liveness_port}/healthz" if settings.liveness_port else None
    operator = asyncio.ensure_future(
        kopf.operator(
            registry=register(settings),
            settings=kopf_settings,
            memo=kopf.Memo(collaborators=collaborators),
            # kopf's peering stays off: the Lease decides who acts (with equal priorities, as
            # replicas of one Deployment have, peering would pause every replica; see leader_election.py).
            standalone=True,
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            liveness_endpoint=liveness,
        )
    )
    if stop is not None:
        # Until kopf installs its own signal handlers, a signal cancels it (kopf then stops as
        # on a signal). Not kopf's stop_flag: with one, kopf leaves a waiter task behind when a
        # signal stops it, and waits 5 s for that "hung" task before exiting.
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, operator.cancel)
        if stop.is_set():  # a signal before the handlers above
            operator.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await operator


def _exit_on_lost_lease(reason: str) -> None:
    """Stop acting at once: another replica may act from now on. No cleanup (kopf's would post
    and patch); the container restarts and is a standby."""
    log = logging.getLogger("mlops_operator")
    log.error("leader election lost: %s; exiting now so that two replicas never act at once", reason)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(EXIT_LEADERSHIP_LOST)


def _run_elected(settings: Settings, collaborators: Collaborators) -> int:
    log = logging.getLogger("mlops_operator")
    config = ElectionConfig(
        lease_name=settings.leader_election_lease_name,
        namespace=lease_namespace(),
        identity=candidate_identity(),
        lease_duration=settings.leader_election_lease_duration,
        renew_deadline=settings.leader_election_renew_deadline,
        retry_period=settings.leader_election_retry_period,
        predecessor_prefix=predecessor_prefix(),
    )
    # Its own client: renewals never queue behind the handlers' requests.
    elector = LeaderElector(
        KubeLeaseStore(Kube.from_environment(), config.namespace, config.lease_name), config
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):  # kopf installs its own once it runs
        signal.signal(signum, lambda *_: stop.set())
    with standby_health(settings.liveness_port):
        leading = elector.acquire(stop)
    if not leading:
        log.info("stopped while standing by")
        return 0
    elector.keep_renewing(on_lost=_exit_on_lost_lease)
    kopf_settings = kopf.OperatorSettings()
    try:
        _run_kopf(settings, collaborators, kopf_settings, stop)
    finally:
        # Handlers still running in kopf's threads may write: the Lease is held (and renewed)
        # until they are done, so the next leader never overlaps them.
        kopf_settings.execution.executor.shutdown(wait=True, cancel_futures=True)
        elector.stop_renewing()
        elector.release()
    return 0
