"""ModelVersion: gates, the model card, and the controller against a real (local) MLflow registry."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from mlops_operator.api.modelversion import ModelVersionSpec
from mlops_operator.api.shared_fields import ValidationGate
from mlops_operator.config import Settings
from mlops_operator.controllers import modelversion_reconciler
from mlops_operator.controllers.base import Context
from mlops_operator.controllers.collaborators import Collaborators
from mlops_operator.controllers.conditions import get_condition
from mlops_operator.registry.mlflow_registry import Registry
from mlops_operator.resources.modelcard import evaluate_gates, render_model_card


def gate(**fields: str) -> ValidationGate:
    return ValidationGate.model_validate(fields)


@pytest.mark.parametrize(
    ("gates", "metrics", "production", "passed"),
    [
        ([gate(metric="accuracy", min="0.9")], {"accuracy": "0.9"}, None, [True]),
        ([gate(metric="accuracy", min="0.9")], {"accuracy": "0.8999"}, None, [False]),
        ([gate(metric="rmse", max="10")], {"rmse": "12.5"}, None, [False]),
        (
            [gate(metric="accuracy", minDeltaVsProduction="0")],
            {"accuracy": "0.95"},
            {"accuracy": "0.96"},
            [False],
        ),
        (
            [gate(metric="accuracy", minDeltaVsProduction="-0.02")],
            {"accuracy": "0.95"},
            {"accuracy": "0.96"},
            [True],
        ),
        ([gate(metric="accuracy", minDeltaVsProduction="0")], {"accuracy": "0.5"}, None, [True]),
        ([gate(metric="f1", min="0.5")], {"accuracy": "0.99"}, None, [False]),
    ],
    ids=["at-min", "below-min", "above-max", "worse-than-prod", "within-margin", "no-prod", "metric-missing"],
)
def test_gates(
    gates: list[ValidationGate],
    metrics: dict[str, str],
    production: dict[str, str] | None,
    passed: list[bool],
) -> None:
    results = evaluate_gates(gates, metrics, production)
    assert [r["passed"] for r in results] == passed
    for result in results:
        if not result["passed"]:
            assert result["message"]


def test_gate_failure_message_is_actionable() -> None:
    [result] = evaluate_gates([gate(metric="accuracy", min="0.9")], {"accuracy": "0.85"}, None)
    assert result["message"] == "accuracy 0.85 is below the minimum 0.9"
    assert result["threshold"] == ">= 0.9"


def test_model_card_lists_metrics_gates_and_lineage() -> None:
    spec = ModelVersionSpec.model_validate(
        {
            "model": {"name": "iris", "version": "3"},
            "modelCard": {"description": "Iris.", "limitations": "Flowers only."},
            "lineage": {
                "trainingJob": "iris-train",
                "dataset": {"uri": "sklearn://iris", "sha256": "ab" * 32},
            },
        }
    )
    results = evaluate_gates([gate(metric="accuracy", min="0.9")], {"accuracy": "0.95"}, None)
    card = render_model_card(spec, "3", {"accuracy": "0.95"}, results)
    assert card.startswith("# iris v3\n\nIris.")
    assert "## Limitations\n\nFlowers only." in card
    assert "| accuracy | >= 0.9 | 0.95 | pass |" in card
    assert "- Dataset: sklearn://iris (sha256 abababababab)" in card


# --- the controller against a real MLflow registry (SQLite, in-process) ------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    tmp = tmp_path_factory.mktemp("mlflow")
    yield Registry(f"sqlite:///{tmp}/mlflow.db")


@pytest.fixture
def model(registry: Registry, request: pytest.FixtureRequest) -> str:
    """A registered model (named after the test) with version 1 (accuracy 0.95) and 2 (0.80).

    Versions are registered straight from runs, without logging a model: the controller
    reads the registry, never the artifacts, and this keeps the test fast.
    """
    from mlflow import MlflowClient

    client = MlflowClient(registry.tracking_uri, registry.tracking_uri)
    name = "m-" + "".join(ch if ch.isalnum() else "-" for ch in request.node.name)[:60]
    experiment = client.create_experiment(name)
    client.create_registered_model(name)
    for accuracy in (0.95, 0.80):
        run = client.create_run(experiment)
        client.log_metric(run.info.run_id, "accuracy", accuracy)
        client.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    return name


def _reconcile(
    spec: dict[str, Any], status: dict[str, Any] | None = None, *, registry: Registry
) -> tuple[dict[str, Any], list[Any]]:
    ctx: Context[ModelVersionSpec] = Context(
        body={
            "apiVersion": "mlops.dev/v1alpha1",
            "kind": "ModelVersion",
            "metadata": {"name": "mv", "namespace": "ns", "generation": 1},
        },
        spec=ModelVersionSpec.model_validate(spec),
        status=status or {},
        # The ModelVersion controller talks to MLflow only, never to the cluster.
        collaborators=Collaborators(Settings(), kube=None, registry=registry),  # type: ignore[arg-type]
        logger=logging.getLogger("test"),
    )
    return modelversion_reconciler.reconcile(ctx), ctx.events


def test_validated_version_is_tagged_described_and_aliased(registry: Registry, model: str) -> None:
    status, events = _reconcile(
        {
            "model": {"name": model, "version": "1"},
            "gates": [{"metric": "accuracy", "min": "0.9"}],
            "modelCard": {"description": "The first one."},
            "aliases": ["champion"],
        },
        registry=registry,
    )
    assert (
        status["phase"] == "Validated"
        and status["resolvedVersion"] == "1"
        and status["uri"] == f"models:/{model}/1"
    )
    assert get_condition(status["conditions"], "Validated")["reason"] == "GatesPassed"  # type: ignore[index]
    assert status["gateResults"][0] == {
        "metric": "accuracy",
        "passed": True,
        "value": "0.9500",
        "threshold": ">= 0.9",
    }
    info = registry.get_version(model, "1")
    assert info.tags["mlops.dev/validated"] == "true"
    assert info.description.startswith(f"# {model} v1\n\nThe first one.")
    assert info.aliases == ["champion"] and status["aliases"] == ["champion"]
    assert [e[1] for e in events] == ["AliasSet"]
    # Idempotent: a second pass changes nothing and says nothing.
    again, events = _reconcile(
        {
            "model": {"name": model, "version": "1"},
            "gates": [{"metric": "accuracy", "min": "0.9"}],
            "modelCard": {"description": "The first one."},
            "aliases": ["champion"],
        },
        status,
        registry=registry,
    )
    assert again == status and events == []


def test_worse_than_production_is_rejected_and_not_aliased(registry: Registry, model: str) -> None:
    registry.set_alias(model, "production", "1")
    status, _ = _reconcile(
        {
            "model": {"name": model, "version": "2"},
            "gates": [{"metric": "accuracy", "minDeltaVsProduction": "0"}],
            "aliases": ["champion"],
        },
        registry=registry,
    )
    assert status["phase"] == "Rejected"
    validated = get_condition(status["conditions"], "Validated")
    assert (
        validated is not None
        and validated["status"] == "False"
        and "vs production 0.9500" in validated["message"]
    )
    assert registry.get_version(model, "2").tags["mlops.dev/validated"] == "false"
    assert "champion" not in registry.get_version(model, "2").aliases


def test_alias_resolves_once_and_stays(registry: Registry, model: str) -> None:
    registry.set_alias(model, "champion", "2")
    status, _ = _reconcile({"model": {"name": model, "alias": "champion"}}, registry=registry)
    assert status["resolvedVersion"] == "2"
    registry.set_alias(model, "champion", "1")
    status, _ = _reconcile({"model": {"name": model, "alias": "champion"}}, status, registry=registry)
    assert status["resolvedVersion"] == "2"


@pytest.mark.parametrize(
    ("ref", "needle"),
    [({"version": "99"}, "99"), ({"name": "nope", "version": "1"}, "nope")],
    ids=["version", "model"],
)
def test_missing_version_is_a_clear_condition(
    registry: Registry, model: str, ref: dict[str, str], needle: str
) -> None:
    status, _ = _reconcile({"model": {"name": model, **ref}}, registry=registry)
    ready = get_condition(status["conditions"], "Ready")
    assert ready is not None and (ready["status"], ready["reason"]) == ("False", "ModelVersionNotFound")
    assert needle in ready["message"]
    assert status["phase"] == "Failed"


def test_registry_down_is_transient_and_keeps_status(unused_tcp_port: int) -> None:
    registry = Registry(f"http://127.0.0.1:{unused_tcp_port}")
    previous = {"phase": "Validated", "resolvedVersion": "1"}
    status, _ = _reconcile({"model": {"name": "iris", "version": "1"}}, previous, registry=registry)
    ready = get_condition(status["conditions"], "Ready")
    assert ready is not None and (ready["status"], ready["reason"]) == ("Unknown", "RegistryUnavailable")
    assert status["phase"] == "Validated" and status["resolvedVersion"] == "1"
