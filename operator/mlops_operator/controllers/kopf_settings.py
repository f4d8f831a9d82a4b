"""Every kopf setting the operator changes, in one place, and its metrics endpoint."""

from __future__ import annotations

import logging

import kopf
from prometheus_client import start_http_server

from mlops_operator import GROUP
from mlops_operator.config import Settings
from mlops_operator.controllers import kopf_toggles
from mlops_operator.controllers.operator_metrics import REGISTRY

FINALIZER = f"{GROUP}/finalizer"

logger = logging.getLogger(__name__)


def configure(kopf_settings: kopf.OperatorSettings, settings: Settings) -> None:
    """Apply the operator's settings to kopf's.

    - Progress and the last-handled spec live in annotations under ``mlops.dev/``, not in
      ``status``: the status schema stays strict and ``status`` holds only what users read.
    - kopf's peering is off (``standalone``): ``mlops-operator run`` starts kopf only once it holds
      the leader-election Lease (``leader_election.py``), so one replica acts however many run.
      Peering could not do that: replicas of one Deployment share one priority, and with equal
      priorities kopf pauses every operator, the leader included.
    - Watches reconnect every few minutes, so a silently dropped connection is noticed.
    - A deleted object's timer is checked for cancellation every second, not every minute.
    - kopf's start-up wake-ups are made linear (:mod:`.kopf_toggles`): a cold start over
      thousands of objects was quadratic.
    """
    kopf_toggles.install()
    kopf_settings.persistence.finalizer = FINALIZER
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    kopf_settings.watching.server_timeout = settings.watch_server_timeout
    kopf_settings.watching.client_timeout = settings.watch_client_timeout
    kopf_settings.watching.connect_timeout = 10
    # kopf's per-object asyncio workers are not limited: with indexes (the operator's cache), a
    # limit below the number of objects of one kind deadlocks kopf at startup (each worker
    # waits for every object to be indexed while holding a slot; kopf issue #1243). What
    # bounds the work is the thread pool that runs the (synchronous) reconciliations.
    kopf_settings.queueing.worker_limit = None
    kopf_settings.execution.max_workers = max(4, settings.worker_limit)
    kopf_settings.posting.level = logging.getLevelName(settings.event_level.upper())
    kopf_settings.networking.error_backoffs = [1, 2, 5, 10, 30]
    kopf_settings.peering.standalone = True
    # A deleted object keeps kopf's finalizer until its timer has stopped; kopf looks every
    # `cancellation_polling` seconds (60 by default), so deletions waited up to a minute.
    kopf_settings.background.cancellation_polling = 1.0


_serving: set[int] = set()


def start_metrics_server(port: int) -> None:
    """Serve the operator's ``/metrics`` on ``port`` (0: off); once per port and process.

    ``mlops-operator run`` starts it before the leader election (a standby is scraped too, with
    ``mlops_operator_leader 0``); kopf's startup handler asks again once leading.
    """
    if port and port not in _serving:
        start_http_server(port, registry=REGISTRY)
        _serving.add(port)
        logger.info("metrics on :%d/metrics", port)
