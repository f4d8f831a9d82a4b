"""ModelVersion: the pure decision (status + MLflow writes) from plain observations, no MLflow."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from mlops_operator.api.modelversion import ModelVersionSpec
from mlops_operator.controllers.conditions import get_condition
from mlops_operator.controllers.modelversion_decisions import (
    OBJECT_TAG,
    VALIDATED_TAG,
    Decision,
    Event,
    Observation,
    SetAlias,
    SetDescription,
    SetVersionTags,
    decide_modelversion,
    decide_registry_unavailable,
    get_gate_tags,
    get_pinned_version,
    get_production_baseline,
)
from mlops_operator.registry.mlflow_registry import VersionInfo
from mlops_operator.resources.modelcard import evaluate_gates, render_model_card

NOW = dt.datetime(2026, 1, 5, 2, 0, tzinfo=dt.UTC)
LATER = NOW + dt.timedelta(minutes=5)
ACCURACY_MIN = {"metric": "accuracy", "min": "0.9"}
VS_PRODUCTION = {"metric": "accuracy", "minDeltaVsProduction": "0"}


def spec(**fields: Any) -> ModelVersionSpec:
    return ModelVersionSpec.model_validate({"model": {"name": "iris", "version": "3"}, **fields})


def version(number: str = "3", accuracy: str = "0.9500", **fields: Any) -> VersionInfo:
    values: dict[str, Any] = {
        "name": "iris",
        "version": number,
        "run_id": f"run-{number}",
        "source": f"runs:/run-{number}/model",
        "status": "READY",
        "metrics": {"accuracy": accuracy},
        **fields,
    }
    return VersionInfo(**values)


def decide(
    the_spec: ModelVersionSpec,
    observed: Observation,
    status: dict[str, Any] | None = None,
    now: dt.datetime = NOW,
) -> Decision:
    return decide_modelversion(
        the_spec, status or {}, observed, namespace="team-a", name="iris-v3", generation=2, now=now
    )


def in_sync(
    the_spec: ModelVersionSpec, info: VersionInfo, production: VersionInfo | None = None
) -> VersionInfo:
    """``info`` as MLflow holds it once the decided writes for it were applied."""
    decision = decide(the_spec, Observation(version=info, production=production))
    for effect in decision.effects:
        if isinstance(effect, SetVersionTags):
            info = dataclasses.replace(info, tags={**info.tags, **effect.tags})
        elif isinstance(effect, SetDescription):
            info = dataclasses.replace(info, description=effect.text)
        else:
            info = dataclasses.replace(info, aliases=sorted([*info.aliases, effect.alias]))
    return info


# --- which version to read ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "status", "expected"),
    [
        ({"name": "iris", "version": "3"}, {}, "3"),
        ({"name": "iris", "version": "3"}, {"resolvedVersion": "3"}, "3"),
        ({"name": "iris", "alias": "champion"}, {}, None),
        ({"name": "iris", "alias": "champion"}, {"resolvedVersion": "2"}, "2"),
    ],
    ids=["version", "version-resolved", "alias-first-time", "alias-resolved-once"],
)
def test_pinned_version(model: dict[str, str], status: dict[str, Any], expected: str | None) -> None:
    assert get_pinned_version(ModelVersionSpec.model_validate({"model": model}), status) == expected


# --- the verdict ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gates", "metrics", "accuracy", "production", "phase", "reason"),
    [
        ([], None, "0.5000", None, "Validated", "GatesPassed"),
        ([ACCURACY_MIN], None, "0.9500", None, "Validated", "GatesPassed"),
        ([ACCURACY_MIN], None, "0.8500", None, "Rejected", "GatesFailed"),
        ([ACCURACY_MIN], {"accuracy": "0.91"}, "0.8500", None, "Validated", "GatesPassed"),
        ([{"metric": "f1", "min": "0.5"}], None, "0.9900", None, "Rejected", "GatesFailed"),
        ([VS_PRODUCTION], None, "0.9500", None, "Validated", "GatesPassed"),
        ([VS_PRODUCTION], None, "0.9500", version("1", "0.9600"), "Rejected", "GatesFailed"),
        ([VS_PRODUCTION], None, "0.9700", version("1", "0.9600"), "Validated", "GatesPassed"),
        (
            [{"metric": "accuracy", "minDeltaVsProduction": "-0.02"}],
            None,
            "0.9500",
            version("1", "0.9600"),
            "Validated",
            "GatesPassed",
        ),
        ([VS_PRODUCTION], None, "0.9500", version("3", "0.9900"), "Validated", "GatesPassed"),
    ],
    ids=[
        "no-gates",
        "above-min",
        "below-min",
        "spec-metrics-override-run",
        "metric-missing",
        "no-production",
        "worse-than-production",
        "better-than-production",
        "within-margin-of-production",
        "is-production-not-compared-with-itself",
    ],
)
def test_verdict(
    gates: list[dict[str, str]],
    metrics: dict[str, str] | None,
    accuracy: str,
    production: VersionInfo | None,
    phase: str,
    reason: str,
) -> None:
    the_spec = spec(gates=gates, metrics=metrics)
    decision = decide(the_spec, Observation(version=version(accuracy=accuracy), production=production))
    status = decision.status
    validated = get_condition(status["conditions"], "Validated")
    ready = get_condition(status["conditions"], "Ready")
    assert status["phase"] == phase
    assert validated is not None and validated["reason"] == reason
    assert validated["status"] == ("True" if phase == "Validated" else "False")
    assert ready is not None and (ready["status"], ready["reason"]) == ("True", "Resolved")
    assert ready["message"] == "models:/iris/3 (READY)"
    assert [r["passed"] for r in status["gateResults"]] == [phase == "Validated"] * len(gates)
    tags = next(e for e in decision.effects if isinstance(e, SetVersionTags)).tags
    assert tags[VALIDATED_TAG] == ("true" if phase == "Validated" else "false")


def test_failed_gates_are_named_in_the_condition() -> None:
    the_spec = spec(gates=[ACCURACY_MIN, VS_PRODUCTION])
    decision = decide(
        the_spec, Observation(version=version(accuracy="0.8500"), production=version("1", "0.9"))
    )
    validated = get_condition(decision.status["conditions"], "Validated")
    assert validated is not None and validated["message"] == (
        "accuracy: accuracy 0.8500 is below the minimum 0.9; "
        "accuracy: accuracy 0.8500 is -0.0500 vs production 0.9, needs +0"
    )


def test_status_records_the_resolved_version() -> None:
    decision = decide(spec(gates=[ACCURACY_MIN]), Observation(version=version()), {"unrelated": "kept"})
    status = decision.status
    assert {k: v for k, v in status.items() if k != "conditions"} == {
        "unrelated": "kept",
        "resolvedVersion": "3",
        "uri": "models:/iris/3",
        "runId": "run-3",
        "aliases": [],
        "gateResults": [{"metric": "accuracy", "passed": True, "value": "0.9500", "threshold": ">= 0.9"}],
        "phase": "Validated",
    }
    assert all(c["lastTransitionTime"] == "2026-01-05T02:00:00Z" for c in status["conditions"])
    assert all(c["observedGeneration"] == 2 for c in status["conditions"])


def test_a_version_without_run_drops_run_id() -> None:
    decision = decide(spec(), Observation(version=version(run_id=None)), {"runId": "stale"})
    assert "runId" not in decision.status


# --- the MLflow writes --------------------------------------------------------------------------


def test_first_pass_writes_tags_card_and_aliases_in_order() -> None:
    the_spec = spec(
        gates=[ACCURACY_MIN], aliases=["champion", "candidate-a"], modelCard={"description": "Iris."}
    )
    info = version()
    decision = decide(the_spec, Observation(version=info))
    results = evaluate_gates(the_spec.gates or [], info.metrics, None)
    assert decision.effects == [
        SetVersionTags(
            "iris",
            "3",
            {VALIDATED_TAG: "true", OBJECT_TAG: "team-a.iris-v3", "mlops.dev/gate.accuracy.0": "pass"},
        ),
        SetDescription("iris", "3", render_model_card(the_spec, "3", info.metrics, results)),
        SetAlias(
            "iris",
            "champion",
            "3",
            Event("Normal", "AliasSet", "alias champion now points at iris version 3"),
        ),
        SetAlias(
            "iris",
            "candidate-a",
            "3",
            Event("Normal", "AliasSet", "alias candidate-a now points at iris version 3"),
        ),
    ]
    assert decision.status["aliases"] == ["candidate-a", "champion"]


@pytest.mark.parametrize(
    ("aliases", "held", "expected_set", "expected_status"),
    [
        (["champion"], [], ["champion"], ["champion"]),
        (["champion"], ["champion"], [], ["champion"]),
        (["champion"], ["legacy"], ["champion"], ["champion", "legacy"]),
        (["champion", "champion"], [], ["champion"], ["champion"]),
        ([], ["legacy"], [], ["legacy"]),
    ],
    ids=["new", "already-held", "others-kept", "duplicate-set-once", "none-wanted"],
)
def test_aliases_once_validated(
    aliases: list[str], held: list[str], expected_set: list[str], expected_status: list[str]
) -> None:
    decision = decide(spec(aliases=aliases), Observation(version=version(aliases=held)))
    assert [e.alias for e in decision.effects if isinstance(e, SetAlias)] == expected_set
    assert decision.status["aliases"] == expected_status


def test_rejected_version_gets_no_alias_but_its_verdict() -> None:
    the_spec = spec(gates=[ACCURACY_MIN], aliases=["champion"])
    decision = decide(the_spec, Observation(version=version(accuracy="0.5000")))
    assert not [e for e in decision.effects if isinstance(e, SetAlias)]
    [tags] = [e for e in decision.effects if isinstance(e, SetVersionTags)]
    assert tags.tags[VALIDATED_TAG] == "false" and tags.tags["mlops.dev/gate.accuracy.0"] == "fail"
    assert decision.status["aliases"] == []


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"gates": [ACCURACY_MIN], "aliases": ["champion"], "modelCard": {"description": "Iris."}},
        {"gates": [ACCURACY_MIN, VS_PRODUCTION], "metrics": {"accuracy": "0.99"}},
    ],
    ids=["bare", "gates-card-alias", "vs-production"],
)
def test_second_pass_writes_nothing_and_keeps_status(fields: dict[str, Any]) -> None:
    the_spec = spec(**fields)
    production = version("1", "0.9000")
    first = decide(the_spec, Observation(version=version(), production=production))
    synced = in_sync(the_spec, version(), production)
    second = decide(the_spec, Observation(version=synced, production=production), first.status, now=LATER)
    assert second.effects == []
    assert second.status == first.status  # lastTransitionTime included: nothing flipped


def test_only_a_changed_tag_is_rewritten_with_all_tags() -> None:
    the_spec = spec(gates=[ACCURACY_MIN])
    synced = in_sync(the_spec, version())
    tampered = dataclasses.replace(synced, tags={**synced.tags, VALIDATED_TAG: "false"})
    [effect] = decide(the_spec, Observation(version=tampered)).effects
    assert isinstance(effect, SetVersionTags) and effect.tags[VALIDATED_TAG] == "true"
    assert set(effect.tags) == {VALIDATED_TAG, OBJECT_TAG, "mlops.dev/gate.accuracy.0"}


def test_gate_tags_are_indexed() -> None:
    results = [{"metric": "accuracy", "passed": True}, {"metric": "accuracy", "passed": False}]
    assert get_gate_tags(results) == {
        "mlops.dev/gate.accuracy.0": "pass",
        "mlops.dev/gate.accuracy.1": "fail",
    }


# --- nothing to resolve, nothing to reach -------------------------------------------------------


@pytest.mark.parametrize(
    "previous",
    [{}, {"phase": "Validated", "resolvedVersion": "3", "aliases": ["champion"]}],
    ids=["first-time", "was-validated"],
)
def test_not_found_fails_without_writes(previous: dict[str, Any]) -> None:
    decision = decide(spec(), Observation(version=None, not_found="model 'iris' has no version 3"), previous)
    assert decision.effects == []
    status = decision.status
    ready = get_condition(status["conditions"], "Ready")
    validated = get_condition(status["conditions"], "Validated")
    assert status["phase"] == "Failed"
    assert ready is not None and (ready["status"], ready["reason"]) == ("False", "ModelVersionNotFound")
    assert ready["message"] == "model 'iris' has no version 3"
    assert validated is not None and (validated["status"], validated["reason"]) == ("Unknown", "NotResolved")
    assert {k: v for k, v in status.items() if k not in ("phase", "conditions")} == {
        k: v for k, v in previous.items() if k != "phase"
    }


@pytest.mark.parametrize(
    "previous",
    [
        {},
        {
            "phase": "Validated",
            "resolvedVersion": "3",
            "gateResults": [{"metric": "accuracy", "passed": True}],
        },
    ],
    ids=["never-resolved", "keeps-last-known"],
)
def test_registry_unavailable_keeps_last_known_status(previous: dict[str, Any]) -> None:
    status = decide_registry_unavailable(
        previous, "MLflow at http://mlflow unavailable", generation=2, now=NOW
    )
    ready = get_condition(status["conditions"], "Ready")
    assert ready is not None and (ready["status"], ready["reason"]) == ("Unknown", "RegistryUnavailable")
    assert ready["message"] == "MLflow at http://mlflow unavailable"
    assert {k: v for k, v in status.items() if k != "conditions"} == previous
    assert "conditions" not in previous  # the input is not modified


def test_unavailable_after_validated_keeps_the_verdict() -> None:
    validated = decide(spec(gates=[ACCURACY_MIN]), Observation(version=version())).status
    status = decide_registry_unavailable(validated, "down", generation=2, now=LATER)
    condition = get_condition(status["conditions"], "Validated")
    assert condition is not None and condition["status"] == "True"
    assert status["phase"] == "Validated"


@pytest.mark.parametrize(
    ("production", "expected"),
    [
        (None, None),
        (version("1", "0.9600"), {"accuracy": "0.9600"}),
        (version("3", "0.9500"), None),
    ],
    ids=["no-production", "other-version", "this-version"],
)
def test_production_baseline(production: VersionInfo | None, expected: dict[str, str] | None) -> None:
    assert get_production_baseline(version(), production) == expected
