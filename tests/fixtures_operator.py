"""The operator (kopf, in-process) against the emulated API server, and helpers that play the cluster.

No runtime runs with it: Jobs, Deployments and pods are given their states by the tests, as the
kubelet and the controllers would, so each controller decision is observed in isolation.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kopf.testing import KopfRunner

from mlops_operator.config import Settings
from mlops_operator.controllers.collaborators import Collaborators
from mlops_operator.controllers.handlers import register
from mlops_operator.kube_client import Kube
from mlops_operator.registry.mlflow_registry import Registry
from mlops_operator.sandbox.apiserver import (
    ApiServerThread,
    sandbox_authenticator,
    sandbox_tokens,
    write_kubeconfig,
)
from tests.fixtures_sandbox import Api, wait_for

ROOT = pathlib.Path(__file__).resolve().parent.parent
SANDBOX_CRDS = ROOT / "operator" / "mlops_operator" / "sandbox" / "crds"


def _without_cel(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_cel(v) for k, v in node.items() if k != "x-kubernetes-validations"}
    if isinstance(node, list):
        return [_without_cel(item) for item in node]
    return node


class Cluster(Api):
    """The test's client (an administrator) plus the server and the operator's token file."""

    def __init__(
        self,
        url: str,
        token: str,
        server: ApiServerThread,
        token_file: pathlib.Path,
        collaborators: Collaborators,
        kubeconfig: pathlib.Path | None = None,
    ) -> None:
        super().__init__(url, token, server.certificates.ca)
        self.server = server
        self.operator_token_file = token_file
        self.collaborators = collaborators
        self.kubeconfig = kubeconfig

    @contextlib.contextmanager
    def operator(self) -> Iterator[Collaborators]:
        """Another operator process against this server, for as long as the block runs (a
        restart: fresh clients, caches and locks; kopf's state only in the objects' annotations)."""
        settings = self.collaborators.settings
        assert self.kubeconfig is not None
        collaborators = Collaborators(
            settings, Kube.from_environment(str(self.kubeconfig)), Registry(settings.mlflow_tracking_uri)
        )
        registry = register(settings, collaborators=collaborators)
        with KopfRunner(["run", "--standalone", "--all-namespaces"], registry=registry, timeout=60) as runner:
            yield collaborators
        assert runner.exception is None, runner.output


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """An API server with our CRDs minus their CEL rules (a cluster that does not run CEL),
    and the operator running against it."""
    with running_operator(tmp_path_factory.mktemp("operator")) as running:
        yield running


@contextlib.contextmanager
def running_operator(
    tmp: pathlib.Path, reconcile_interval: float = 1, *, start_operator: bool = True
) -> Iterator[Cluster]:
    """The emulated API server and the operator (kopf, in this process) for as long as the block runs.

    ``start_operator=False``: the server only; ``Cluster.operator()`` runs operators on it.
    """
    crds = tmp / "crds"
    crds.mkdir()
    for path in (ROOT / "crds").glob("*.yaml"):
        (crds / path.name).write_text(yaml.safe_dump(_without_cel(yaml.safe_load(path.read_text()))))
    for path in SANDBOX_CRDS.glob("*.yaml"):  # the Gateway API's HTTPRoute, as the sandbox serves it
        (crds / path.name).write_text(path.read_text())
    tokens = sandbox_tokens()
    server = ApiServerThread(crds_dir=crds, authenticator=sandbox_authenticator(tokens)).start()
    # The operator reads its token from a file, as a pod reads its projected ServiceAccount token:
    # test_a_rotated_token_keeps_the_operator_converging rewrites it.
    token_file = tmp / "operator-token"
    token_file.write_text(tokens["operator"])
    kubeconfig = write_kubeconfig(
        tmp / "kubeconfig", server.url, token_file=token_file, ca=server.certificates.ca
    )
    settings = Settings(
        metrics_port=0,
        liveness_port=0,
        reconcile_interval=reconcile_interval,
        mlflow_tracking_uri="http://127.0.0.1:9",  # nothing listens: MLflow is down
    )
    collaborators = Collaborators(
        settings, Kube.from_environment(str(kubeconfig)), Registry(settings.mlflow_tracking_uri)
    )
    # kopf's login reads the environment, as the operator does in a pod or a shell.
    saved = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(kubeconfig)
    try:
        cluster = Cluster(server.url, tokens["admin"], server, token_file, collaborators, kubeconfig)
        if not start_operator:
            yield cluster
            return
        registry = register(settings, collaborators=collaborators)
        with KopfRunner(["run", "--standalone", "--all-namespaces"], registry=registry, timeout=60) as runner:
            yield cluster
        assert runner.exception is None, runner.output
    finally:
        server.stop()
        if saved is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = saved


def example(name: str, **spec_changes: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load((ROOT / "examples" / name).read_text())
    manifest["spec"].update(copy.deepcopy(spec_changes))
    manifest["spec"] = {k: v for k, v in manifest["spec"].items() if v is not None}
    return manifest


def events_for(api: Api, name: str, reason: str) -> list[dict[str, Any]]:
    return [
        e
        for e in api.list("Event")
        if e.get("involvedObject", {}).get("name") == name and e.get("reason") == reason
    ]


def finish_job(
    api: Api, job: dict[str, Any], condition: str, reason: str, message: str, exit_code: int
) -> None:
    """Play kubelet and the Job controller: a terminated trainer pod, then the Job's condition."""
    name = job["metadata"]["name"]
    api.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"{name}-abcde", "namespace": "default", "labels": {"job-name": name}},
            "spec": {"containers": [{"name": "trainer", "image": "trainer"}]},
        }
    )
    terminated = {
        "exitCode": exit_code,
        "reason": "Completed" if exit_code == 0 else "Error",
        "message": message,
    }
    api.http.patch(
        api.path("Pod", "default", f"{name}-abcde") + "/status",
        content=json.dumps(
            {"status": {"containerStatuses": [{"name": "trainer", "state": {"terminated": terminated}}]}}
        ),
        headers={"Content-Type": "application/merge-patch+json"},
    ).raise_for_status()
    status = {
        "startTime": "2026-01-01T00:00:00Z",
        "conditions": [
            {
                "type": condition,
                "status": "True",
                "reason": reason,
                "lastTransitionTime": "2026-01-01T00:01:00Z",
            }
        ],
        ("succeeded" if condition == "Complete" else "failed"): 1,
    }
    api.http.patch(
        api.path("Job", "default", name) + "/status",
        content=json.dumps({"status": status}),
        headers={"Content-Type": "application/merge-patch+json"},
    ).raise_for_status()


def patch_status(api: Api, kind: str, name: str, status: dict[str, Any]) -> None:
    api.http.patch(
        api.path(kind, "default", name) + "/status",
        content=json.dumps({"status": status}),
        headers={"Content-Type": "application/merge-patch+json"},
    ).raise_for_status()


def validated_model_version(api: Api, version: str) -> None:
    """A ModelVersion as the ModelVersion controller leaves it once its gates pass."""
    name = f"demo-model-v{version}"
    api.create(
        {
            "apiVersion": "mlops.dev/v1alpha1",
            "kind": "ModelVersion",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"model": {"name": "demo-model", "version": version}, "source": {"sha256": version * 64}},
        }
    )
    condition = {
        "type": "Validated",
        "status": "True",
        "reason": "GatesPassed",
        "message": "",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    # The ModelVersion controller also reconciles these (MLflow is down here, so it leaves
    # Ready=Unknown); only Validated and resolvedVersion matter to the InferenceService.
    wait_for(
        lambda: (api.get("ModelVersion", name) or {}).get("status"),
        message="the MV controller's first pass",
    )
    obj = api.get("ModelVersion", name) or {}
    conditions = [c for c in obj.get("status", {}).get("conditions", []) if c["type"] != "Validated"] + [
        condition
    ]
    patch_status(api, "ModelVersion", name, {"conditions": conditions, "resolvedVersion": version})


def make_ready(api: Api, deployment: str, replicas: int) -> None:
    """Play the Deployment controller: every replica of the current generation is ready."""
    obj = api.get("Deployment", deployment) or {}
    patch_status(
        api,
        "Deployment",
        deployment,
        {
            "observedGeneration": obj["metadata"]["generation"],
            "replicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
            "updatedReplicas": replicas,
        },
    )
