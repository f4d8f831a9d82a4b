"""Evaluate a CRD schema's CEL rules (``x-kubernetes-validations``) outside the API server.

The rules are written once, on the pydantic models, and end up in the CRDs. A cluster older
than Kubernetes 1.25 (or one with the feature off) does not evaluate them, so the operator
evaluates the same rules itself before acting on a spec, and the emulated API server uses
this module to enforce them on writes. One implementation, both enforcers.

As the API server does: transition rules (those that mention ``oldSelf``) run only on an
update where the old value exists; list items are correlated with their old selves only in
``x-kubernetes-list-type: map`` lists (by their map keys); a rule cel-python cannot compile or
evaluate (Kubernetes' own CEL library functions, say) is logged and not enforced rather than
blocking every write.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import celpy
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError
from pydantic import BaseModel

logger = logging.getLogger(__name__)

MISSING: Any = object()  # "no old value" (None is a value)
_MISSING = MISSING
_OLD_SELF = re.compile(r"\boldSelf\b")


@dataclass(frozen=True)
class RuleViolation:
    field: str  # e.g. "spec.rollout.analysis.stepWeights"
    rule: str
    message: str
    reason: str = "FieldValueInvalid"  # the rule's ``reason`` (FieldValueForbidden, ...)
    value: Any = None  # the value the rule was evaluated on

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@lru_cache(maxsize=1024)
def _program(rule: str) -> Any:
    try:
        env = celpy.Environment()
        return env.program(env.compile(rule))
    except Exception as exc:  # a rule cel-python cannot parse must not block writes
        logger.warning("CEL rule %r cannot be compiled by cel-python (%s); it is not enforced", rule, exc)
        return None


def _evaluate(rule: str, value: Any, old: Any) -> bool | None:
    """True/False, or None when the rule cannot be evaluated (an error is not a verdict)."""
    program = _program(rule)
    if program is None:
        return None
    activation = {"self": json_to_cel(value)}
    if old is not _MISSING:
        activation["oldSelf"] = json_to_cel(old)
    try:
        result = program.evaluate(activation)
    except Exception as exc:  # celpy raises its own hierarchy
        logger.warning("CEL rule %r could not be evaluated by cel-python (%s); not enforced", rule, exc)
        return None
    if isinstance(result, CELEvalError) or not isinstance(result, bool | int):
        logger.warning("CEL rule %r evaluated to %r; not enforced", rule, result)
        return None
    return bool(result)


def _join(path: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{path}[{name}]"
    return f"{path}.{name}" if path else name


def _old_item(schema: dict[str, Any], item: Any, old: Any) -> Any:
    keys = schema.get("x-kubernetes-list-map-keys") or []
    if schema.get("x-kubernetes-list-type") != "map" or not keys or not isinstance(old, list):
        return _MISSING
    if not isinstance(item, dict):
        return _MISSING
    for candidate in old:
        if isinstance(candidate, dict) and all(candidate.get(k) == item.get(k) for k in keys):
            return candidate
    return _MISSING


def validate(schema: dict[str, Any], value: Any, old: Any = _MISSING, path: str = "") -> list[RuleViolation]:
    """Every CEL rule of ``schema`` (recursively) that ``value`` breaks. ``old``: the previous value."""
    if value is None:
        return []
    violations: list[RuleViolation] = []
    for validation in schema.get("x-kubernetes-validations") or []:
        rule = str(validation.get("rule", ""))
        if _OLD_SELF.search(rule) and (old is _MISSING or old is None):
            continue
        if _evaluate(rule, value, old) is False:
            extra = str(validation.get("fieldPath") or "").lstrip(".")
            field = (f"{path}.{extra}" if path else extra) if extra else (path or "<root>")
            violations.append(
                RuleViolation(
                    field=field,
                    rule=rule,
                    message=str(validation.get("message") or f"failed rule: {rule}"),
                    reason=str(validation.get("reason") or "FieldValueInvalid"),
                    value=value,
                )
            )
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        for key, item in value.items():
            sub = properties.get(key, additional if isinstance(additional, dict) else None)
            if sub is not None:
                old_sub = old.get(key, _MISSING) if isinstance(old, dict) else _MISSING
                violations += validate(sub, item, old_sub, _join(path, key))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            violations += validate(schema["items"], item, _old_item(schema, item, old), _join(path, index))
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
