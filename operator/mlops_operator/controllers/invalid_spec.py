"""A spec that cannot be reconciled as written: the error, and the parse that names every bad field."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import kopf
from pydantic import BaseModel, ValidationError

from mlops_operator.api import cel as cel_rules

SpecT = TypeVar("SpecT", bound=BaseModel)


class InvalidSpecError(kopf.PermanentError):
    """The resource's spec cannot be reconciled as written; the user must change it."""


def format_validation_error(exc: ValidationError, prefix: str = "spec") -> str:
    """``spec.rollout.analysis.stepWeights[1]: Input should be less than or equal to 100`` ..."""
    parts = []
    for error in exc.errors()[:10]:
        path = prefix
        for item in error["loc"]:
            path += f"[{item}]" if isinstance(item, int) else f".{item}"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        elif error["type"] == "missing":
            message = "required field is missing"
        parts.append(f"{path}: {message}")
    more = len(exc.errors()) - 10
    if more > 0:
        parts.append(f"... and {more} more")
    return "; ".join(parts)


def parse_spec(model: type[SpecT], spec: Mapping[str, Any] | None, *, cel: bool = True) -> SpecT:
    """The spec as the pydantic model, or :class:`InvalidSpecError` naming every bad field.

    Both the per-field schema (pydantic) and the cross-field CEL rules are checked: on a
    cluster that does not evaluate CEL, this is the only place they are enforced.
    ``cel=False``: the rules were checked for this spec already (evaluating them in Python
    was about a quarter of a cold start over 2,000 objects).
    """
    try:
        parsed = model.model_validate(dict(spec or {}))
    except ValidationError as exc:
        raise InvalidSpecError(format_validation_error(exc)) from exc
    violations = cel_rules.validate_model(model, dict(spec or {})) if cel else []
    if violations:
        raise InvalidSpecError("; ".join(str(violation) for violation in violations))
    return parsed
