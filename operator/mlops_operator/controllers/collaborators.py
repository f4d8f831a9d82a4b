"""What every reconciliation works with, built once when the operator starts and handed in.

The settings (parsed once), the Kubernetes client, the MLflow registry client and the per-object
locks live in one :class:`Collaborators`, which the startup handler puts into kopf's ``memo``
(``memo.collaborators``); every handler passes it to :func:`base.reconcile`, which gives the
reconciler a :class:`~mlops_operator.controllers.base.Context` holding them. Nothing is kept in a
module global, so tests hand in fakes the same way the operator hands in the real ones.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlops_operator.config import Settings
from mlops_operator.kube_client import Kube
from mlops_operator.monitoring.scraper import Scraper, operator_scraper

if TYPE_CHECKING:
    from mlops_operator.registry.mlflow_registry import Registry


class ObjectLocks:
    """One lock per object (by uid): event handlers and timers of one object never overlap."""

    def __init__(self) -> None:
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def lock_for(self, uid: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(uid, threading.Lock())

    def forget(self, uid: str) -> None:
        """Drop the lock of an object that is gone."""
        with self._guard:
            self._locks.pop(uid, None)

    def __len__(self) -> int:
        with self._guard:
            return len(self._locks)


class ParsedSpecs:
    """The last parsed and CEL-checked spec of each object, by uid and generation.

    A spec changes only with ``metadata.generation``, so a timer tick over an unchanged object
    reuses its parse: evaluating the CRD's CEL rules in Python was most of a converged
    operator's CPU. An invalid spec is not kept: it is parsed again on every pass, as before.
    """

    def __init__(self) -> None:
        self._specs: dict[str, tuple[tuple[str, int], Any]] = {}
        self._guard = threading.Lock()

    def get(self, uid: str, kind: str, generation: int) -> Any | None:
        with self._guard:
            entry = self._specs.get(uid)
        return entry[1] if entry is not None and entry[0] == (kind, generation) else None

    def put(self, uid: str, kind: str, generation: int, spec: Any) -> None:
        with self._guard:
            self._specs[uid] = ((kind, generation), spec)

    def forget(self, uid: str) -> None:
        with self._guard:
            self._specs.pop(uid, None)


@dataclass
class Collaborators:
    """The operator's settings and clients, one set per operator process."""

    settings: Settings
    kube: Kube
    registry: Registry
    locks: ObjectLocks = field(default_factory=ObjectLocks)
    specs: ParsedSpecs = field(default_factory=ParsedSpecs)
    #: Reads the model servers' ``/monitoring`` for every InferenceService: one per process, so
    #: its bound on requests in flight and its memory of failing pods hold across services.
    scraper: Scraper = field(default_factory=operator_scraper)

    @classmethod
    def from_settings(cls, settings: Settings) -> Collaborators:
        """The real clients: the API server from the environment's identity, MLflow from the settings."""
        from mlops_operator.registry.mlflow_registry import Registry

        return cls(
            settings=settings,
            kube=Kube.from_environment(),
            registry=Registry(settings.mlflow_tracking_uri),
        )
