"""ModelVersion: one immutable trained model, its lineage, its gates and its model card."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from mlops_operator.api.shared_fields import (
    ApiModel,
    Conditions,
    Decimal_,
    Gates,
    LongString,
    ModelRef,
    ObjectName,
    ShortString,
    cel,
)

KIND = "ModelVersion"
PLURAL = "modelversions"

Sha256 = Annotated[str, Field(min_length=64, max_length=64, pattern=r"^[a-f0-9]{64}$")]
Alias = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")]


class ModelVersionRef(ModelRef):
    """The model and exactly one of version/alias (a ModelVersion does not track)."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            ("has(self.version) != has(self.alias)", "set exactly one of version and alias"),
            (
                "!has(self.track)",
                "track is for InferenceServices; a ModelVersion names a version or an alias",
            ),
        )
    )


class Source(ApiModel):
    run_id: Annotated[str, Field(max_length=64, pattern=r"^[A-Za-z0-9_-]+$")] | None = None
    artifact_uri: Annotated[str, Field(max_length=2048)] | None = None
    sha256: Sha256 | None = Field(default=None, description="Digest of the model directory, checked at load.")


class DatasetSource(ApiModel):
    """One source of the training data: the dataset, or captured production rows."""

    name: Literal["dataset", "production"]
    uri: Annotated[str, Field(max_length=2048)]
    rows: Annotated[int, Field(ge=0)]
    sha256: Sha256 | None = None
    model: Annotated[str, Field(max_length=128)] | None = Field(
        default=None, description="production: the served model whose captured rows were read."
    )
    first_request_time: dt.datetime | None = Field(
        default=None, description="production: when the oldest row used was predicted."
    )
    last_request_time: dt.datetime | None = Field(
        default=None, description="production: when the newest row used was predicted."
    )


class DatasetLineage(ApiModel):
    uri: Annotated[str, Field(max_length=2048)]
    sha256: Sha256 | None = Field(default=None, description="Digest of the data trained on (all sources).")
    rows: Annotated[int, Field(ge=0)] | None = None
    sources: Annotated[list[DatasetSource], Field(max_length=4)] | None = Field(
        default=None, description="Rows per source, when production data was added."
    )


class Lineage(ApiModel):
    training_job: ObjectName | None = None
    run_name: ObjectName | None = None
    dataset: DatasetLineage | None = None
    params: Annotated[dict[str, Any], Field(max_length=128)] | None = None
    estimator: ShortString | None = None
    code_version: ShortString | None = None
    image: Annotated[str, Field(max_length=512)] | None = None


class ModelCard(ApiModel):
    description: LongString | None = None
    intended_use: LongString | None = None
    limitations: LongString | None = None
    owners: Annotated[list[ShortString], Field(max_length=16)] | None = None


class ModelVersionSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=cel(
            ("self.model.name == oldSelf.model.name", "model.name is immutable", ".model.name"),
            (
                "!has(oldSelf.model.version) || (has(self.model.version) && self.model.version == oldSelf.model.version)",
                "model.version is immutable",
                ".model.version",
            ),
        )
    )

    model: ModelVersionRef
    source: Source | None = None
    metrics: Annotated[dict[str, Decimal_], Field(max_length=32)] | None = Field(
        default=None, description='Evaluation metrics as decimal strings ({"accuracy": "0.953"}).'
    )
    lineage: Lineage | None = None
    gates: Gates | None = None
    model_card: ModelCard | None = None
    aliases: Annotated[list[Alias], Field(max_length=8)] | None = Field(
        default=None,
        description="Aliases to hold in MLflow once Validated (production/candidate are managed by rollouts).",
    )


class GateResult(ApiModel):
    metric: Annotated[str, Field(max_length=63)]
    passed: bool
    value: Decimal_ | None = None
    threshold: Annotated[str, Field(max_length=64)] | None = None
    message: Annotated[str, Field(max_length=1024)] = ""


class ModelVersionStatus(ApiModel):
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    conditions: Conditions | None = None
    phase: Literal["Pending", "Validated", "Rejected", "Failed"] | None = None
    resolved_version: Annotated[str, Field(max_length=16)] | None = None
    uri: Annotated[str, Field(max_length=2048)] | None = Field(
        default=None, description="models:/NAME/VERSION"
    )
    run_id: Annotated[str, Field(max_length=64)] | None = None
    aliases: Annotated[list[Alias], Field(max_length=16)] | None = None
    gate_results: Annotated[list[GateResult], Field(max_length=16)] | None = None


class ModelVersion(ApiModel):
    model_config = ConfigDict(extra="ignore")

    spec: ModelVersionSpec
    status: ModelVersionStatus | None = None
