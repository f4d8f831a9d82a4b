"""Checks every create and update passes: object metadata, and the structural schema of custom
resources (pruning, defaults, validation) whose dropped fields become warnings."""

from __future__ import annotations

import datetime as dt
import re

from . import errors
from .catalog import ResourceType
from .errors import FieldError
from .object_store import JsonDict


def validate_metadata(rtype: ResourceType, obj: JsonDict, name_pattern: re.Pattern[str]) -> None:
    """The name (``name_pattern``: the kind's), label values, and that labels/annotations are maps."""
    meta = obj["metadata"]
    name = meta.get("name", "")
    problems: list[FieldError] = []
    if not name_pattern.match(name) or len(name) > 253:
        problems.append(
            FieldError.invalid(
                "metadata.name", name,
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.',"
                " and must start and end with an alphanumeric character",
            )
        )  # fmt: skip
    for key, value in (meta.get("labels") or {}).items():
        if not isinstance(value, str) or len(value) > 63:
            problems.append(
                FieldError.invalid(f"metadata.labels.{key}", value, "must be no more than 63 characters")
            )
    for field in ("labels", "annotations"):
        if meta.get(field) is not None and not isinstance(meta[field], dict):
            problems.append(FieldError.invalid(f"metadata.{field}", meta[field], "must be a map of strings"))
    if problems:
        raise errors.invalid(rtype.kind, rtype.group, name, problems)


def check_schema(
    rtype: ResourceType, obj: JsonDict, old: JsonDict | None, query: dict[str, str]
) -> list[str]:
    """Prune, default and validate a custom resource; return warnings (``fieldValidation=Warn``).

    Unknown fields are dropped; ``fieldValidation=Strict`` refuses them instead, ``Ignore``
    drops them silently, and ``Warn`` (the default when there are any) names them in warnings.
    """
    if rtype.schema is None:
        return []
    pruned = rtype.schema.prune(obj)
    directive = query.get("fieldValidation", "Warn" if pruned else "Ignore")
    name = (obj.get("metadata") or {}).get("name") or (obj.get("metadata") or {}).get("generateName", "")
    if pruned and directive == "Strict":
        text = ", ".join(f'unknown field "{p}"' for p in pruned)
        raise errors.bad_request(f"strict decoding error: {text}")
    rtype.schema.apply_defaults(obj)
    problems = rtype.schema.validate(obj, old)
    if problems:
        raise errors.invalid(rtype.kind, rtype.group, name, problems)
    return [f'unknown field "{p}"' for p in pruned] if directive == "Warn" else []


#: metav1.MicroTime on the wire: RFC 3339 with microseconds ("2006-01-02T15:04:05.000000Z07:00").
_MICRO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(Z|[+-]\d{2}:\d{2})$")


def validate_builtin(rtype: ResourceType, obj: JsonDict) -> None:
    """The builtin kinds' own validation the sandbox relies on: Leases (leader election).

    As kube-apiserver: a MicroTime that does not parse is a decode error (400), a lease duration
    under 1 s or negative transitions are 422 (``ValidateLeaseSpec``).
    """
    if (rtype.group, rtype.plural) != ("coordination.k8s.io", "leases"):
        return
    spec = obj.get("spec") or {}
    for field in ("acquireTime", "renewTime"):
        value = spec.get(field)
        if value is None:
            continue
        try:
            valid = isinstance(value, str) and bool(_MICRO_TIME.match(value))
            valid = valid and dt.datetime.fromisoformat(value.replace("Z", "+00:00")) is not None
        except ValueError:
            valid = False
        if not valid:
            raise errors.bad_request(
                f'Lease in version "v1" cannot be handled as a Lease: parsing time "{value}" as '
                f'"2006-01-02T15:04:05.000000Z07:00": cannot parse "{value}" as a MicroTime (spec.{field})'
            )
    problems: list[FieldError] = []
    duration = spec.get("leaseDurationSeconds")
    if duration is not None and (
        not isinstance(duration, int) or isinstance(duration, bool) or duration <= 0
    ):
        problems.append(FieldError.invalid("spec.leaseDurationSeconds", duration, "must be greater than 0"))
    transitions = spec.get("leaseTransitions")
    if transitions is not None and (
        not isinstance(transitions, int) or isinstance(transitions, bool) or transitions < 0
    ):
        problems.append(
            FieldError.invalid("spec.leaseTransitions", transitions, "must be greater than or equal to 0")
        )
    if problems:
        raise errors.invalid(rtype.kind, rtype.group, obj["metadata"].get("name", ""), problems)
