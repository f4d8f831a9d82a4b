"""TrainingJob: one definition of how to train a model, and the runs made from it."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from mlops_operator.api.shared_fields import (
    ApiModel,
    Conditions,
    Fraction,
    Gates,
    LongString,
    ModelName,
    ObjectName,
    ResourceRequirements,
    ShortString,
    cel,
)

KIND = "TrainingJob"
PLURAL = "trainingjobs"

MetricName = Literal[
    "accuracy",
    "precision",
    "recall",
    "f1",
    "roc_auc",  # classifiers
    "rmse",
    "mae",
    "r2",  # regressors
]


class ColumnSchema(ApiModel):
    """One declared column of the dataset."""

    name: Annotated[str, Field(min_length=1, max_length=256)]
    dtype: Literal["int", "float", "string", "bool", "category"] = "float"
    nullable: bool = False
    min: Annotated[str, Field(max_length=32, pattern=r"^-?[0-9]+(\.[0-9]+)?$")] | None = None
    max: Annotated[str, Field(max_length=32, pattern=r"^-?[0-9]+(\.[0-9]+)?$")] | None = None
    allowed: Annotated[list[ShortString], Field(max_length=256)] | None = Field(
        default=None, description="Allowed values of a string/category column."
    )


class DataValidation(ApiModel):
    """Checks the data must pass before anything is trained."""

    min_rows: Annotated[int, Field(ge=1, le=1_000_000_000)] = 10
    max_null_fraction: Fraction = "0"
    min_class_fraction: Fraction | None = Field(
        default=None, description="Classifiers: every class must make up at least this share of rows."
    )
    schema_: Annotated[list[ColumnSchema], Field(max_length=1024)] | None = Field(
        default=None,
        alias="schema",
        description="Declared columns and dtypes; a missing column or a wrong dtype fails the run.",
    )


class SecretKeyRef(ApiModel):
    name: ObjectName
    key: Annotated[str, Field(min_length=1, max_length=253)]


class EnvFromSecret(ApiModel):
    """An environment variable for the data loader, read from a Secret (credentials never in spec)."""

    name: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
    secret_key_ref: SecretKeyRef


#: An age: "7d", "36h", "90m".
Age = Annotated[str, Field(max_length=16, pattern=r"^[0-9]{1,5}(d|h|m)$")]


class ProductionData(ApiModel):
    """Labelled production rows an InferenceService captured (its ``spec.capture``), added to the dataset.

    Only predictions that received a label are used: their features, with the label as the target.
    """

    uri: Annotated[str, Field(min_length=1, max_length=2048, pattern=r"^(file|s3|gs)://.+$")] = Field(
        description="The capture URI (the InferenceService's spec.capture.uri)."
    )
    model: ModelName | None = Field(
        default=None, description="The served model whose rows to read (default: spec.model.name)."
    )
    since: Age = Field(default="7d", description="Only rows predicted within this age (d, h or m).")
    max_rows: Annotated[int, Field(ge=1, le=10_000_000)] = Field(
        default=100_000, description="The most recent labelled rows kept, at most."
    )
    min_rows: Annotated[int, Field(ge=1, le=10_000_000)] = Field(
        default=1, description="Fewer labelled rows than this fails the run (DataValidationFailed)."
    )


class Dataset(ApiModel):
    uri: Annotated[
        str, Field(min_length=1, max_length=2048, pattern=r"^(sklearn|file|https?|s3|gs)://.+$")
    ] = Field(
        description="sklearn://iris|wine|breast_cancer|diabetes, file:///x.csv, https://.../x.parquet, s3://bucket/key"
    )
    format: Literal["auto", "csv", "parquet"] = "auto"
    target: Annotated[str, Field(min_length=1, max_length=256)] = Field(description="The label column.")
    features: Annotated[list[ShortString], Field(max_length=1024)] | None = Field(
        default=None, description="Columns to train on, in order. Default: every column but the target."
    )
    validation: DataValidation = Field(default_factory=DataValidation)
    env: Annotated[list[EnvFromSecret], Field(max_length=32)] | None = Field(
        default=None, description="Credentials for s3:// or https:// (e.g. AWS_ACCESS_KEY_ID) from Secrets."
    )
    production: ProductionData | None = Field(
        default=None,
        description="Add the labelled production rows an InferenceService captured (lineage counts rows "
        "per source).",
    )


class Search(ApiModel):
    """Hyperparameter search; every trial is a nested MLflow run."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            ("self.type != 'random' || has(self.maxTrials)", "random search needs maxTrials", ".maxTrials"),
        )
    )

    type: Literal["grid", "random"] = "grid"
    params: dict[str, Any] = Field(
        description="Parameter -> list of candidate values (grid), or a list / {low, high, log} range (random)."
    )
    max_trials: Annotated[int, Field(ge=1, le=1000)] | None = None
    metric: MetricName | None = Field(default=None, description="The metric that picks the best trial.")
    cv: Annotated[int, Field(ge=2, le=20)] = 3
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None


class Estimator(ApiModel):
    class_: Annotated[str, Field(min_length=1, max_length=256, pattern=r"^sklearn\.[A-Za-z0-9_.]+$")] = Field(
        alias="class", description="A scikit-learn estimator on the trainer's allow-list."
    )
    params: dict[str, Any] | None = Field(default=None, description="Fixed constructor parameters.")
    preprocessing: Literal["auto", "none"] = Field(
        default="auto",
        description="auto: impute + scale numeric columns, impute + one-hot encode categorical ones.",
    )
    search: Search | None = None


class Evaluation(ApiModel):
    test_size: Annotated[str, Field(max_length=16, pattern=r"^0\.[0-9]*[1-9][0-9]*$")] = "0.2"
    metrics: Annotated[list[MetricName], Field(max_length=8)] | None = None
    gates: Gates | None = Field(
        default=None, description="Copied to the ModelVersion each successful run creates."
    )
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 42


class TrainingJobModel(ApiModel):
    name: ModelName = Field(description="The registered model in MLflow that runs add versions to.")
    description: LongString | None = None


class ModelCardTemplate(ApiModel):
    intended_use: LongString | None = None
    limitations: LongString | None = None
    owners: Annotated[list[ShortString], Field(max_length=16)] | None = None


Engine = Literal["Job", "Ray"]


class RayClusterConfig(ApiModel):
    """The Ray cluster a run with ``engine: Ray`` gets: one head (the trainer) and its workers."""

    workers: Annotated[int, Field(ge=0, le=100)] = Field(
        default=2, description="Worker pods; search trials spread over them and the head."
    )
    worker_resources: ResourceRequirements | None = Field(
        default=None, description="Each worker pod's resources (the head takes spec.resources)."
    )
    ray_version: Annotated[str, Field(max_length=32, pattern=r"^[0-9]+\.[0-9]+(\.[0-9]+)?$")] = Field(
        default="2.60.0", description="The Ray version in the trainer image (KubeRay's rayVersion)."
    )


class TrainingJobSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "!has(self.startingDeadlineSeconds) || has(self.schedule)",
                "startingDeadlineSeconds needs a schedule",
            ),
            ("!has(self.timeZone) || has(self.schedule)", "timeZone needs a schedule"),
            (
                "!has(self.ray) || (has(self.engine) && self.engine == 'Ray')",
                "spec.ray needs engine: Ray",
                ".ray",
            ),
        )
    )

    model: TrainingJobModel
    dataset: Dataset
    estimator: Estimator
    evaluation: Evaluation = Field(default_factory=Evaluation)
    model_card: ModelCardTemplate | None = None
    schedule: Annotated[str, Field(min_length=1, max_length=128)] | None = Field(
        default=None, description='Cron schedule for continuous training ("0 3 * * 1", "@daily").'
    )
    time_zone: Annotated[str, Field(max_length=64)] | None = None
    starting_deadline_seconds: Annotated[int, Field(ge=0, le=86400 * 7)] | None = None
    suspend: bool = False
    concurrency_policy: Literal["Allow", "Forbid", "Replace"] = "Forbid"
    backoff_limit: Annotated[int, Field(ge=0, le=20)] = 2
    active_deadline_seconds: Annotated[int, Field(ge=1, le=86400 * 7)] = 3600
    ttl_seconds_after_finished: Annotated[int, Field(ge=0, le=86400 * 30)] = 3600
    successful_runs_history_limit: Annotated[int, Field(ge=0, le=100)] = 3
    failed_runs_history_limit: Annotated[int, Field(ge=0, le=100)] = 3
    resources: ResourceRequirements | None = None
    image: Annotated[str, Field(max_length=512)] | None = Field(
        default=None, description="Override the trainer image (default: the operator's MLOPS_TRAINER_IMAGE)."
    )
    service_account_name: ObjectName | None = None
    engine: Engine = Field(
        default="Job",
        description="Job: each run is a batch/v1 Job. Ray: each run is a KubeRay RayJob (ray.io/v1) "
        "whose search trials spread over a Ray cluster; needs KubeRay installed.",
    )
    ray: RayClusterConfig | None = Field(default=None, description="The Ray cluster of engine: Ray.")


RunPhase = Literal["Pending", "Running", "Succeeded", "Failed"]


class TrainingRun(ApiModel):
    name: ObjectName = Field(description="The Job's (or RayJob's) name.")
    number: Annotated[int, Field(ge=1)]
    engine: Engine | None = Field(default=None, description="What ran it: a Job, or a RayJob (Ray).")
    phase: RunPhase
    trigger: Literal["Create", "Schedule", "Manual", "Retrain", "SpecChange"] = "Create"
    start_time: dt.datetime | None = None
    completion_time: dt.datetime | None = None
    reason: Annotated[str, Field(max_length=128)] | None = None
    message: Annotated[str, Field(max_length=4096)] | None = None
    mlflow_run_id: Annotated[str, Field(max_length=64)] | None = None
    model_version: Annotated[str, Field(max_length=16)] | None = None
    model_version_name: ObjectName | None = Field(
        default=None, description="The ModelVersion this run created."
    )
    metrics: Annotated[dict[str, Annotated[str, Field(max_length=32)]], Field(max_length=32)] | None = None
    attempts: Annotated[int, Field(ge=0)] = Field(
        default=0, description="Pods started for this run (retries + 1)."
    )


class TrainingJobStatus(ApiModel):
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    conditions: Conditions | None = None
    phase: Annotated[str, Field(max_length=32)] | None = None
    runs: Annotated[list[TrainingRun], Field(max_length=210)] | None = None
    last_run: TrainingRun | None = None
    latest_model_version: ObjectName | None = Field(
        default=None, description="The ModelVersion last created."
    )
    last_schedule_time: dt.datetime | None = None
    next_schedule_time: dt.datetime | None = None
    run_count: Annotated[int, Field(ge=0)] = 0
    last_handled_request: Annotated[str, Field(max_length=64)] | None = Field(
        default=None, description="The mlops.dev/run-requested-at value last acted on."
    )
    last_run_spec_hash: Annotated[str, Field(max_length=64)] | None = Field(
        default=None, description="Digest of the training-relevant spec the last run was started with."
    )


class TrainingJob(ApiModel):
    """Parsing helper for a whole object (metadata kept as a plain dict)."""

    model_config = ConfigDict(extra="ignore")

    spec: TrainingJobSpec
    status: TrainingJobStatus | None = None
