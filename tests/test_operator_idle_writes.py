"""A converged cluster costs the API server nothing: no write, and no read past kopf's watches.

The operator runs in-process (kopf) against the emulated API server, which audits every request
(tests/test_rbac_audit.py reads the same audit). TrainingJobs, ModelVersions and
InferenceServices are brought to a converged state; then the operator's timers tick over them,
and a second operator process starts over them (a restart), and the audit must show:

- no write (POST, PUT, PATCH, DELETE): no status patch of an unchanged object, no DELETE of a
  child that does not exist, no heartbeat in status;
- no GET or list of its own: every read is served from kopf's watch-fed indexes (kopf's own
  list and watch of each kind are all that reach the server).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest

from mlops_operator.controllers.operator_metrics import RECONCILE_TOTAL
from mlops_operator.sandbox.apiserver.server import SANDBOX_IDENTITIES
from tests.fixtures_operator import (
    Cluster,
    example,
    finish_job,
    make_ready,
    running_operator,
    validated_model_version,
)
from tests.fixtures_sandbox import wait_for, wait_for_condition

WRITES = {"create", "update", "patch", "delete", "deletecollection"}
KINDS = ("TrainingJob", "ModelVersion", "InferenceService")
TRAINER_RESULT = {
    "status": "Succeeded",
    "modelName": "iris-classifier",
    "modelVersion": "1",
    "mlflowRunId": "run1",
    "sha256": "c" * 64,
    "metrics": {"accuracy": "0.9667"},
    "dataset": {"uri": "sklearn://iris", "rows": 150},
}
#: name -> spec changes of the InferenceServices: two replicas (a PDB), autoscaling (an HPA and a
#: PDB), one replica (neither: the children whose DELETE used to be sent on every pass), one whose
#: replicas never become ready (loading), and one waiting for a model version that does not exist.
SERVICES: dict[str, dict[str, Any]] = {
    "pair": {"model": {"name": "demo-model", "version": "1"}, "replicas": 2},
    "auto": {
        "model": {"name": "demo-model", "version": "1"},
        "replicas": None,
        "autoscaling": {"minReplicas": 2, "maxReplicas": 4},
    },
    "single": {"model": {"name": "demo-model", "version": "1"}, "replicas": 1},
    "loading": {"model": {"name": "demo-model", "version": "1"}, "replicas": 2},
    "waiting": {"model": {"name": "other-model", "track": "LatestValidated"}, "replicas": 1},
}


def _operator_requests(cluster: Cluster) -> list[dict[str, Any]]:
    user = SANDBOX_IDENTITIES["operator"].username
    return [e for e in cluster.server.emulator.audit.events if e["user"]["username"] == user]


def _describe(event: dict[str, Any]) -> str:
    return f"{event['verb']} {event['requestURI']}"


def _reconciles() -> dict[str, float]:
    totals = dict.fromkeys(KINDS, 0.0)
    for metric in RECONCILE_TOTAL.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels.get("kind") in totals:
                totals[sample.labels["kind"]] += sample.value
    return totals


def _wait_for_passes(cluster: Cluster, passes: int) -> None:
    """Until every kind has been reconciled ``passes`` more times than it has objects (timer
    ticks and, after a restart, the resume handlers): polled, with a deadline."""
    counts = {kind: len(cluster.list(kind)) for kind in KINDS}
    start = _reconciles()
    wait_for(
        lambda: all(_reconciles()[kind] - start[kind] >= passes * counts[kind] for kind in KINDS),
        timeout=60,
        message=f"{passes} reconciliations of every object",
    )


def _converge(cluster: Cluster) -> None:
    cluster.create(example("iris-trainingjob.yaml", schedule=None, successfulRunsHistoryLimit=1))
    job = wait_for(lambda: cluster.get("Job", "iris-train-1"), message="the run's Job")
    finish_job(cluster, job, "Complete", "Completed", json.dumps(TRAINER_RESULT), 0)
    wait_for_condition(cluster, "TrainingJob", "iris-train", "Ready", "True")
    wait_for(lambda: cluster.get("ModelVersion", "iris-classifier-v1"), message="the run's ModelVersion")
    validated_model_version(cluster, "1")
    for name, changes in SERVICES.items():
        manifest = example("iris-inferenceservice.yaml", **changes)
        manifest["metadata"]["name"] = name
        manifest["spec"].pop("retraining")
        # Every check that is due on a timer (here each second, as often as the timer) must
        # find nothing to write when nothing changed: no "checked at" heartbeat in status.
        manifest["spec"]["rollout"] = {"strategy": "Replace", "analysis": {"interval": "1s"}}
        cluster.create(manifest)
    for name, replicas in (("pair", 2), ("auto", 2), ("single", 1)):
        wait_for(lambda name=name: cluster.get("Deployment", f"{name}-v1"), message=f"{name}'s Deployment")
        make_ready(cluster, f"{name}-v1", replicas)
        wait_for_condition(cluster, "InferenceService", name, "Ready", "True")
    wait_for_condition(cluster, "InferenceService", "loading", "Ready", "False")
    wait_for_condition(cluster, "InferenceService", "waiting", "Ready", "False")
    for kind in KINDS:
        for obj in cluster.list(kind):
            wait_for(
                lambda kind=kind, name=obj["metadata"]["name"]: (
                    (cluster.get(kind, name) or {}).get("status", {}).get("observedGeneration")
                    == (cluster.get(kind, name) or {})["metadata"].get("generation")
                ),
                message=f"{kind} {obj['metadata']['name']} observed",
            )
    _wait_for_passes(cluster, 2)  # the last writes of convergence (Events, statuses) are done


@pytest.fixture(scope="module")
def converged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A server holding converged objects, with no operator running (each test starts its own)."""
    tmp: pathlib.Path = tmp_path_factory.mktemp("idle")
    with running_operator(tmp, start_operator=False) as cluster:
        with cluster.operator():
            _converge(cluster)
        yield cluster


def test_timer_ticks_over_converged_objects_make_no_request(converged: Cluster) -> None:
    with converged.operator():
        _wait_for_passes(converged, 1)  # started and resumed
        converged.server.emulator.audit.clear()
        _wait_for_passes(converged, 3)
        requests = _operator_requests(converged)
    own = [_describe(e) for e in requests if e["verb"] not in ("watch",)]
    assert not own, f"{len(own)} requests of the operator over converged objects: {own[:20]}"


def test_a_restarted_operator_over_converged_objects_writes_nothing(converged: Cluster) -> None:
    converged.server.emulator.audit.clear()
    with converged.operator():
        _wait_for_passes(converged, 3)
        requests = _operator_requests(converged)
    assert any(e["verb"] == "watch" for e in requests), "the audit saw no request of the operator"
    writes = [_describe(e) for e in requests if e["verb"] in WRITES]
    assert not writes, f"{len(writes)} writes by a restarted operator over converged objects: {writes[:20]}"
    # Reads: kopf's discovery, and a list and a watch of each kind; the operator asks nothing.
    gets = [_describe(e) for e in requests if e["verb"] == "get" and "objectRef" in e]
    assert not gets, f"GETs the caches should have served: {gets[:20]}"
    lists = [e["requestURI"] for e in requests if e["verb"] == "list"]
    assert not [uri for uri in lists if "labelSelector" in uri or "fieldSelector" in uri], lists
