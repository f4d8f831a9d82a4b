"""Unit tests of the operator's pure helpers: conditions, child naming, patches, errors."""

from __future__ import annotations

import datetime as dt
from typing import Any

import kopf
import pytest
from kubernetes.client.exceptions import ApiException

from mlops_operator.api.inferenceservice import InferenceServiceSpec
from mlops_operator.api.shared_fields import parse_duration
from mlops_operator.controllers.base import _condition_events
from mlops_operator.controllers.conditions import get_condition, set_condition
from mlops_operator.controllers.invalid_spec import InvalidSpecError, parse_spec
from mlops_operator.kube_client import NotFound, _api_error, desired_patch
from mlops_operator.resources.object_meta import child_name, label_value, labels, owner_reference

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(minutes=5)


def test_condition_transition_time_moves_only_when_status_flips() -> None:
    conditions = set_condition(None, "Ready", "False", "Loading", "pulling model", generation=1, now=T0)
    same_status = set_condition(
        conditions, "Ready", "False", "CrashLoop", "server exited", generation=2, now=T1
    )
    ready = get_condition(same_status, "Ready")
    assert ready is not None
    assert ready["lastTransitionTime"] == "2026-01-01T12:00:00Z"
    assert (ready["reason"], ready["message"], ready["observedGeneration"]) == (
        "CrashLoop",
        "server exited",
        2,
    )
    flipped = get_condition(set_condition(same_status, "Ready", "True", "Serving", now=T1), "Ready")
    assert flipped is not None and flipped["lastTransitionTime"] == "2026-01-01T12:05:00Z"


def test_set_condition_keeps_other_conditions_and_does_not_mutate_input() -> None:
    conditions = set_condition(None, "Ready", "True", "Serving", now=T0)
    conditions = set_condition(conditions, "Degraded", "False", "Healthy", now=T0)
    before = [dict(c) for c in conditions]
    updated = set_condition(conditions, "Degraded", "True", "DriftDetected", now=T1)
    assert conditions == before
    assert [c["type"] for c in updated] == ["Ready", "Degraded"]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ([], [("Ready", "True", "Serving")], [("Normal", "Serving")]),
        ([("Ready", "True", "Serving")], [("Ready", "True", "Serving")], []),
        ([("Ready", "True", "Serving")], [("Ready", "False", "CrashLoop")], [("Warning", "CrashLoop")]),
        ([], [("Degraded", "True", "DriftDetected")], [("Warning", "DriftDetected")]),
        ([], [("Ready", "Unknown", "Pending")], []),
    ],
    ids=["first-ready", "unchanged", "ready-lost", "degraded", "unknown-is-quiet"],
)
def test_condition_flips_become_events(
    old: list[tuple[str, str, str]], new: list[tuple[str, str, str]], expected: list[tuple[str, str]]
) -> None:
    def conditions(items: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
        return [{"type": t, "status": s, "reason": r, "message": ""} for t, s, r in items]

    events = _condition_events(conditions(old), conditions(new))
    assert [(type_, reason) for type_, reason, _ in events] == expected


def test_invalid_spec_message_names_every_field() -> None:
    with pytest.raises(InvalidSpecError) as info:
        parse_spec(InferenceServiceSpec, {"model": {"name": "m", "version": "1"}, "replicas": -2, "bogus": 1})
    message = str(info.value)
    assert "spec.replicas: Input should be greater than or equal to 0" in message
    assert "spec.bogus: unknown field" in message


def test_missing_required_field_is_named() -> None:
    with pytest.raises(InvalidSpecError, match=r"spec\.model: required field is missing"):
        parse_spec(InferenceServiceSpec, {})


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("1h30m", 5400), ("250ms", 0.25), ("2m", 120)], ids=str
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_child_names_are_deterministic_dns_labels() -> None:
    assert child_name("Iris", "v7") == "iris-v7"
    long = child_name("a" * 60, "predictor", "v12")
    assert len(long) == 63 and long == child_name("a" * 60, "predictor", "v12")
    assert long != child_name("a" * 60, "predictor", "v13")
    assert label_value("models:/iris@champion") == "models-iris-champion"


def test_children_carry_owner_reference_and_recommended_labels() -> None:
    owner = {
        "apiVersion": "mlops.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "iris", "uid": "u1"},
    }
    assert owner_reference(owner) == {
        "apiVersion": "mlops.dev/v1alpha1",
        "kind": "InferenceService",
        "name": "iris",
        "uid": "u1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    result = labels(owner, "predictor", model="iris-classifier", model_version="7")
    assert result["app.kubernetes.io/managed-by"] == "mlops-operator"
    assert result["app.kubernetes.io/name"] == "iris-classifier"
    assert result["mlops.dev/inferenceservice"] == "iris"
    assert result["mlops.dev/model-version"] == "7"


def test_desired_patch_touches_only_what_the_operator_owns() -> None:
    live = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "s", "labels": {"a": "1"}, "resourceVersion": "9", "uid": "x"},
        "spec": {
            "clusterIP": "10.0.0.1",
            "ports": [{"port": 80, "protocol": "TCP"}],
            "selector": {"app": "a"},
        },
        "status": {"loadBalancer": {}},
    }
    same = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "s", "labels": {"a": "1"}},
        "spec": {"ports": [{"port": 80}], "selector": {"app": "a"}},
    }
    assert desired_patch(live, same) == {}
    changed = {**same, "spec": {"ports": [{"port": 80}], "selector": {"app": "b"}}}
    assert desired_patch(live, changed) == {"spec": changed["spec"]}


@pytest.mark.parametrize(
    ("status", "expected"),
    [(404, NotFound), (409, kopf.TemporaryError), (500, kopf.TemporaryError), (422, kopf.PermanentError)],
    ids=["not-found", "conflict", "server-error", "invalid"],
)
def test_api_errors_map_to_kopf_errors(status: int, expected: type[Exception]) -> None:
    exc = ApiException(status=status, reason="x")
    exc.body = '{"message": "spec.replicas: Invalid value"}'
    error = _api_error(exc, "create Deployment d")
    assert isinstance(error, expected)
    assert "create Deployment d" in str(error)
    if status != 404:
        assert "spec.replicas: Invalid value" in str(error)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("a,b", ["a", "b"]), (' ["x", "y"]', ["x", "y"]), ("", []), ("solo", ["solo"])],
    ids=["comma-separated", "json", "empty", "one"],
)
def test_namespaces_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: list[str]
) -> None:
    from mlops_operator.config import Settings

    monkeypatch.setenv("MLOPS_NAMESPACES", value)
    assert Settings().namespaces == expected


def test_desired_patch_removes_a_service_selector_key_the_operator_no_longer_sets() -> None:
    live = {
        "kind": "Service",
        "metadata": {"name": "iris"},
        "spec": {"selector": {"app": "iris", "mlops.dev/model-version": "1"}, "clusterIP": "10.0.0.1"},
    }
    desired = {"kind": "Service", "metadata": {"name": "iris"}, "spec": {"selector": {"app": "iris"}}}
    assert desired_patch(live, desired) == {
        "spec": {"selector": {"app": "iris", "mlops.dev/model-version": None}}
    }
    assert desired["spec"] == {"selector": {"app": "iris"}}  # the desired object is left alone


def test_an_event_redone_from_the_same_status_has_the_same_name() -> None:
    """A run killed between posting its Events and writing its status is redone: no second copy."""
    from mlops_operator.controllers.object_events import build_event, occurrence_of

    body = {"apiVersion": "mlops.dev/v1alpha1", "kind": "InferenceService",
            "metadata": {"name": "iris", "namespace": "ml", "uid": "u-1"}}  # fmt: skip
    event = ("Normal", "CanaryStep", "version 2 receives 25% of traffic (step 2 of 3)")
    before = {"rollout": {"phase": "Progressing", "step": 0}}
    first = build_event(body, event, occurrence_of(before), dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    again = build_event(
        body, event, occurrence_of(dict(before)), dt.datetime(2026, 1, 1, 0, 5, tzinfo=dt.UTC)
    )
    assert first["metadata"]["name"] == again["metadata"]["name"]
    assert first["involvedObject"] == {"apiVersion": "mlops.dev/v1alpha1", "kind": "InferenceService",
                                       "name": "iris", "namespace": "ml", "uid": "u-1"}  # fmt: skip
    later = occurrence_of({"rollout": {"phase": "Progressing", "step": 1}})
    assert (
        build_event(body, event, later, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))["metadata"]["name"]
        != first["metadata"]["name"]
    )


def test_cel_rules_run_again_unless_this_generation_was_accepted() -> None:
    """A restarted operator skips the CEL rules only for a spec whose status was written for the
    same generation without InvalidSpec; a new generation, or one refused before, is checked."""
    from mlops_operator.controllers.base import _accepted_before

    accepted = {
        "observedGeneration": 3,
        "conditions": [{"type": "Ready", "status": "True", "reason": "Serving"}],
    }
    refused = {
        "observedGeneration": 3,
        "conditions": [{"type": "Ready", "status": "False", "reason": "InvalidSpec"}],
    }
    assert _accepted_before(accepted, 3)
    assert not _accepted_before(accepted, 4)  # edited since: a new spec
    assert not _accepted_before(refused, 3)
    assert not _accepted_before({}, 1)  # never reconciled
    assert not _accepted_before(accepted, None)
