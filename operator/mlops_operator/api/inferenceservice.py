"""InferenceService: a model served over HTTP, monitored, rolled out as a canary."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from mlops_operator.api.common import (
    ApiModel,
    Conditions,
    Decimal_,
    Duration,
    Fraction,
    ModelRef,
    ObjectName,
    ResourceRequirements,
    cel,
)

KIND = "InferenceService"
PLURAL = "inferenceservices"


class InferenceModelRef(ModelRef):
    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "(has(self.version) ? 1 : 0) + (has(self.alias) ? 1 : 0) + (has(self.track) ? 1 : 0) == 1",
                "set exactly one of version, alias and track",
            ),
        )
    )


class Autoscaling(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=cel(
            ("self.minReplicas <= self.maxReplicas", "minReplicas must be <= maxReplicas"),
        )
    )

    min_replicas: Annotated[int, Field(ge=1, le=100)] = 1
    max_replicas: Annotated[int, Field(ge=1, le=100)]
    target_cpu_utilization: Annotated[int, Field(ge=1, le=100)] = 80


class Traffic(ApiModel):
    router: Literal["Replicas", "GatewayAPI"] = Field(
        default="Replicas",
        description="Replicas: the stable Service spreads over pods, weights by replica counts. "
        "GatewayAPI: an HTTPRoute with exact weights.",
    )
    gateway: ObjectName | None = Field(default=None, description="The Gateway an HTTPRoute attaches to.")


AnalysisMetricName = Literal["error-rate", "latency-p99", "accuracy", "drift-share"]


class AnalysisMetric(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=cel(
            ("has(self.min) || has(self.max)", "an analysis metric needs min or max"),
        )
    )

    name: AnalysisMetricName
    min: Decimal_ | None = None
    max: Decimal_ | None = None


class Analysis(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "[1, 2, 3, 4, 5, 6, 7, 8, 9].all(i, i >= size(self.stepWeights) "
                "|| self.stepWeights[i - 1] < self.stepWeights[i])",
                "stepWeights must be strictly ascending",
                ".stepWeights",
            ),
        )
    )

    interval: Duration = "30s"
    threshold: Annotated[int, Field(ge=1, le=100)] = Field(
        default=3, description="Failed checks before the canary is rolled back."
    )
    step_weights: Annotated[list[Annotated[int, Field(ge=1, le=100)]], Field(min_length=1, max_length=10)] = (
        Field(
            default_factory=lambda: [10, 25, 50], description="Canary traffic percentages, ascending, <= 100."
        )
    )
    min_samples: Annotated[int, Field(ge=0, le=10_000_000)] = 200
    metrics: Annotated[list[AnalysisMetric], Field(max_length=8)] | None = None
    on_no_data: Literal["Hold", "Fail"] = "Hold"


class Rollout(ApiModel):
    strategy: Literal["Canary", "Replace"] = "Replace"
    analysis: Analysis = Field(default_factory=Analysis)


class DriftMonitoring(ApiModel):
    method: Literal["PSI", "KS", "ChiSquare"] = "PSI"
    threshold: Decimal_ = "0.2"
    window: Annotated[int, Field(ge=10, le=1_000_000)] = 1000
    min_samples: Annotated[int, Field(ge=1, le=1_000_000)] = 100
    drift_share: Fraction = "0.5"


class AccuracyMonitoring(ApiModel):
    window: Annotated[int, Field(ge=1, le=1_000_000)] = 500
    min: Fraction = "0.85"
    max_drop: Fraction = Field(
        default="0.05", description="Alert when accuracy falls this far below training's."
    )


class Monitoring(ApiModel):
    enabled: bool = True
    drift: DriftMonitoring = Field(default_factory=DriftMonitoring)
    accuracy: AccuracyMonitoring = Field(default_factory=AccuracyMonitoring)


RetrainTrigger = Literal["Drift", "AccuracyDrop"]
_ALL_TRIGGERS: list[RetrainTrigger] = ["Drift", "AccuracyDrop"]


class Retraining(ApiModel):
    training_job: ObjectName
    triggers: Annotated[list[RetrainTrigger], Field(min_length=1, max_length=2)] = Field(
        default_factory=lambda: list(_ALL_TRIGGERS)
    )
    cooldown: Duration = "1h"
    drift_periods: Annotated[int, Field(ge=1, le=100)] = Field(
        default=5, description="Retrain when drift shows in driftMinPeriods of the last driftPeriods checks."
    )
    drift_min_periods: Annotated[int, Field(ge=1, le=100)] = 3


class Server(ApiModel):
    max_batch_size: Annotated[int, Field(ge=1, le=4096)] | None = None
    max_batch_wait_ms: Annotated[int, Field(ge=0, le=1000)] | None = None
    max_inflight: Annotated[int, Field(ge=1, le=100_000)] | None = None
    max_body_bytes: Annotated[int, Field(ge=1024, le=256 * 1024 * 1024)] | None = None


class InferenceServiceSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=cel(
            ("!has(self.replicas) || !has(self.autoscaling)", "set replicas or autoscaling, not both"),
        )
    )

    model: InferenceModelRef
    runtime: Literal["auto", "uvicorn", "bentoml"] = Field(
        default="auto", description="The server host; auto picks the fastest for the model class."
    )
    replicas: Annotated[int, Field(ge=0, le=100)] | None = None
    autoscaling: Autoscaling | None = None
    resources: ResourceRequirements | None = None
    traffic: Traffic = Field(default_factory=Traffic)
    rollout: Rollout = Field(default_factory=Rollout)
    monitoring: Monitoring = Field(default_factory=Monitoring)
    retraining: Retraining | None = None
    server: Server | None = None
    image: Annotated[str, Field(max_length=512)] | None = None
    service_account_name: ObjectName | None = None

    @property
    def desired_replicas(self) -> int:
        if self.autoscaling is not None:
            return self.autoscaling.min_replicas
        return 1 if self.replicas is None else self.replicas


class ServedVersion(ApiModel):
    model_version: Annotated[str, Field(max_length=16)] | None = None
    model_version_name: ObjectName | None = None
    deployment: ObjectName | None = None
    replicas: Annotated[int, Field(ge=0)] = 0
    ready_replicas: Annotated[int, Field(ge=0)] = 0
    weight: Annotated[int, Field(ge=0, le=100)] = 0


class AnalysisResult(ApiModel):
    metric: Annotated[str, Field(max_length=32)]
    value: Decimal_ | None = None
    passed: bool | None = None
    message: Annotated[str, Field(max_length=1024)] = ""


class RolloutStatus(ApiModel):
    phase: Literal["Idle", "Progressing", "Promoting", "Succeeded", "RolledBack", "Failed"] = "Idle"
    step: Annotated[int, Field(ge=0, le=10)] = 0
    failed_checks: Annotated[int, Field(ge=0)] = 0
    last_transition_time: dt.datetime | None = None
    last_analysis: Annotated[list[AnalysisResult], Field(max_length=8)] | None = None


class MonitoringStatus(ApiModel):
    state: Literal["Ok", "Drift", "InsufficientData", "Unknown"] = "Unknown"
    drift_share: Decimal_ | None = None
    drifted_features: Annotated[list[Annotated[str, Field(max_length=256)]], Field(max_length=64)] | None = (
        None
    )
    accuracy: Decimal_ | None = None
    samples: Annotated[int, Field(ge=0)] = 0
    labelled_samples: Annotated[int, Field(ge=0)] = 0
    last_checked: dt.datetime | None = None
    recent_drift: Annotated[list[bool], Field(max_length=100)] | None = Field(
        default=None, description="Drift verdicts of the last retraining.driftPeriods checks, oldest first."
    )


class HistoryEntry(ApiModel):
    model_version: Annotated[str, Field(max_length=16)]
    promoted_at: dt.datetime | None = None
    rolled_back_at: dt.datetime | None = None
    reason: Annotated[str, Field(max_length=1024)] | None = None


class RetrainingStatus(ApiModel):
    last_requested: dt.datetime | None = Field(default=None, description="When a run was last requested.")
    reason: Annotated[str, Field(max_length=1024)] | None = None
    message: Annotated[str, Field(max_length=1024)] | None = Field(
        default=None, description="Why a wanted retrain waits, or why it could not be requested."
    )


class InferenceServiceStatus(ApiModel):
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    conditions: Conditions | None = None
    url: Annotated[str, Field(max_length=2048)] | None = None
    runtime: Annotated[str, Field(max_length=16)] | None = None
    selector: Annotated[str, Field(max_length=1024)] | None = Field(
        default=None, description="Label selector of the pods (the scale subresource's labelSelectorPath)."
    )
    replicas: Annotated[int, Field(ge=0)] = 0
    stable: ServedVersion | None = None
    canary: ServedVersion | None = None
    rollout: RolloutStatus | None = None
    monitoring: MonitoringStatus | None = None
    history: Annotated[list[HistoryEntry], Field(max_length=20)] | None = None
    retraining: RetrainingStatus | None = None
    production_version: Annotated[str, Field(max_length=16)] | None = Field(
        default=None, description="The version this service last set MLflow's production alias to."
    )


class InferenceService(ApiModel):
    model_config = ConfigDict(extra="ignore")

    spec: InferenceServiceSpec
    status: InferenceServiceStatus | None = None
