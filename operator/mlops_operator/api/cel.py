"""Evaluate a CRD schema's CEL rules (``x-kubernetes-validations``) outside the API server.

The rules are written once, on the pydantic models, and end up in the CRDs. A cluster older
than Kubernetes 1.25 (or one with the feature off) does not evaluate them, so the operator
evaluates the same rules itself before acting on a spec; the emulated API server and the
tests use this module too. One source of truth, three enforcers.

Transition rules (those that mention ``oldSelf``) are evaluated only when an old object is
given and the value existed before, as the API server does.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import celpy
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError
from pydantic import BaseModel

_MISSING = object()


@dataclass(frozen=True)
class RuleViolation:
    field: str  # e.g. "spec.rollout.analysis.stepWeights"
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@lru_cache(maxsize=512)
def _program(rule: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def _evaluate(rule: str, value: Any, old: Any) -> bool | None:
    """True/False, or None when the rule cannot be evaluated (an error is not a verdict)."""
    activation = {"self": json_to_cel(value)}
    if old is not _MISSING:
        activation["oldSelf"] = json_to_cel(old)
    try:
        result = _program(rule).evaluate(activation)
    except Exception:  # celpy raises its own hierarchy; an unevaluable rule rejects nothing
        return None
    if isinstance(result, CELEvalError):
        return None
    return bool(result)


def _field_path(path: str, field_path: str | None) -> str:
    if not field_path:
        return path
    return path + field_path


def validate(schema: dict[str, Any], value: Any, old: Any = _MISSING, path: str = "") -> list[RuleViolation]:
    """Every CEL rule of ``schema`` (recursively) that ``value`` breaks."""
    violations: list[RuleViolation] = []
    for validation in schema.get("x-kubernetes-validations", []):
        rule = validation["rule"]
        if "oldSelf" in rule and old is _MISSING:
            continue
        if _evaluate(rule, value, old) is False:
            violations.append(
                RuleViolation(_field_path(path, validation.get("fieldPath")), rule, validation["message"])
            )
    if isinstance(value, dict):
        for name, sub_schema in schema.get("properties", {}).items():
            if name in value:
                old_sub = old.get(name, _MISSING) if isinstance(old, dict) else _MISSING
                violations += validate(sub_schema, value[name], old_sub, f"{path}.{name}" if path else name)
        additional = schema.get("additionalProperties")
        if isinstance(additional, dict):
            for key, item in value.items():
                old_sub = old.get(key, _MISSING) if isinstance(old, dict) else _MISSING
                violations += validate(additional, item, old_sub, f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            # Kubernetes correlates list items for oldSelf only in map-lists; we do not.
            violations += validate(schema["items"], item, _MISSING, f"{path}[{index}]")
    return violations


def validate_model(
    model: type[BaseModel], value: Any, old: Any = _MISSING, path: str = "spec"
) -> list[RuleViolation]:
    """The CEL rules of a pydantic model's generated schema, applied to a wire-form value."""
    return validate(_schema(model), value, old, path)


@lru_cache(maxsize=16)
def _schema(model: type[BaseModel]) -> dict[str, Any]:
    from mlops_operator.api.crdgen import openapi_schema  # crdgen imports the models; avoid a cycle

    return openapi_schema(model)
