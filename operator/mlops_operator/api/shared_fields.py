"""Types shared by the three resources: conditions, references, bounded strings.

Conventions (Kubernetes API conventions, and what the CRD generator relies on):
- field names are camelCase on the wire (pydantic aliases), snake_case in Python;
- every string and list is bounded (``maxLength``/``maxItems``), so the API server can
  estimate the cost of CEL rules and no field can grow without limit;
- thresholds are decimal *strings* (``"0.9"``), never floats in spec;
- cross-field rules are CEL ``x-kubernetes-validations`` attached with :func:`cel`.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

from pydantic import AliasGenerator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

# --- bounded scalar types ---------------------------------------------------------------------

#: A DNS-1123 subdomain (object names).
ObjectName = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")]
#: A DNS-1035 label (names used inside other names: Services, containers).
LabelName = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$")]
#: A model name as MLflow registers it (letters, digits, ``._-``).
ModelName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
ShortString = Annotated[str, Field(max_length=256)]
LongString = Annotated[str, Field(max_length=4096)]
#: A decimal number as a string ("0.9", "-0.01", "250").
Decimal_ = Annotated[str, Field(max_length=32, pattern=r"^-?[0-9]+(\.[0-9]+)?$")]
#: A fraction in [0, 1] as a string ("0", "0.2", "1").
Fraction = Annotated[str, Field(max_length=32, pattern=r"^(0(\.[0-9]+)?|1(\.0+)?)$")]
#: A Go-style duration: "30s", "5m", "1h30m", "250ms".
Duration = Annotated[str, Field(max_length=32, pattern=r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$")]
#: A resource quantity ("500m", "1Gi", "2").
Quantity = Annotated[str, Field(max_length=64, pattern=r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")]

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_DURATION_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str) -> float:
    """Seconds in a Go-style duration string ("1h30m" -> 5400.0)."""
    return sum(float(number) * _DURATION_UNIT[unit] for number, unit in _DURATION_PART.findall(value))


def cel(*rules: tuple[str, str] | tuple[str, str, str]) -> dict[str, Any]:
    """``json_schema_extra`` carrying CEL rules: ``(rule, message)`` or ``(rule, message, fieldPath)``."""
    validations = []
    for rule in rules:
        item = {"rule": rule[0], "message": rule[1]}
        if len(rule) == 3:
            item["fieldPath"] = rule[2]
        validations.append(item)
    return {"x-kubernetes-validations": validations}


class ApiModel(BaseModel):
    """Base of every spec/status model: camelCase on the wire, unknown fields rejected.

    ``extra="forbid"`` matters where the CRD schema did not prune (an older cluster, a
    hand-written object in a test): an unknown field is a typo a user wants to hear about.
    """

    model_config = ConfigDict(
        alias_generator=AliasGenerator(validation_alias=to_camel, serialization_alias=to_camel),
        populate_by_name=True,
        extra="forbid",
        frozen=False,
    )

    def to_api(self) -> dict[str, Any]:
        """The wire form: camelCase, unset optional fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# --- conditions ---------------------------------------------------------------------------------

ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """A status condition, as the Kubernetes API conventions (and metav1.Condition) define it."""

    type: Annotated[str, Field(min_length=1, max_length=316, pattern=r"^[A-Za-z][A-Za-z0-9]*$")]
    status: ConditionStatus
    reason: Annotated[
        str, Field(min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    ]
    message: Annotated[str, Field(max_length=32768)] = ""
    last_transition_time: dt.datetime
    observed_generation: Annotated[int, Field(ge=0)] | None = None


Conditions = Annotated[list[Condition], Field(max_length=16)]


class ModelRef(ApiModel):
    """A registered model in MLflow and which of its versions to use."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "(has(self.version) ? 1 : 0) + (has(self.alias) ? 1 : 0) + (has(self.track) ? 1 : 0) <= 1",
                "set at most one of version, alias and track",
            ),
        )
    )

    name: ModelName = Field(description="The registered model's name in MLflow.")
    version: Annotated[str, Field(max_length=16, pattern=r"^[1-9][0-9]*$")] | None = Field(
        default=None, description="A pinned version number (GitOps)."
    )
    alias: Annotated[str, Field(max_length=64, pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")] | None = Field(
        default=None, description="An MLflow alias (for example champion), resolved into status."
    )
    track: Literal["LatestValidated"] | None = Field(
        default=None, description="Continuous deployment: follow the newest Validated ModelVersion."
    )


class ResourceList(ApiModel):
    cpu: Quantity | None = None
    memory: Quantity | None = None


class ResourceRequirements(ApiModel):
    """Container resources, as in a Pod spec (quantities as strings)."""

    requests: ResourceList | None = None
    limits: ResourceList | None = None


class ValidationGate(ApiModel):
    """A metric threshold a model must meet: an absolute bound, or a margin against production."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "has(self.min) || has(self.max) || has(self.minDeltaVsProduction)",
                "a gate needs at least one of min, max, minDeltaVsProduction",
            ),
            (
                "!has(self.min) || !has(self.max) || double(self.min) <= double(self.max)",
                "min must be <= max",
            ),
        )
    )

    metric: Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z][a-z0-9_]*$")]
    min: Decimal_ | None = None
    max: Decimal_ | None = None
    min_delta_vs_production: Decimal_ | None = Field(
        default=None,
        description="The candidate's metric minus production's must be >= this (\"0\": at least as good).",
    )


Gates = Annotated[list[ValidationGate], Field(max_length=16)]
