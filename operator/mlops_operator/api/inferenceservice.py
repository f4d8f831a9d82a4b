"""InferenceService: a model served over HTTP, monitored, rolled out as a canary."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from mlops_operator.api.shared_fields import (
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
from mlops_operator.api.trainingjob import EnvFromSecret

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
    gateway: ObjectName | None = Field(
        default=None,
        description="The Gateway the HTTPRoute attaches to; none: the stable Service (a mesh applies it).",
    )


AnalysisMetricName = Literal["error-rate", "latency-p99", "accuracy", "drift-share", "disagreement"]
#: A significance level strictly between 0 and 1, as a string ("0.05").
Alpha = Annotated[str, Field(max_length=32, pattern=r"^0\.[0-9]*[1-9][0-9]*$")]


class AnalysisMetric(ApiModel):
    """One analysis check: absolute bounds, or bounds relative to stable on the same traffic window.

    Metrics: ``error-rate`` (5xx answers to prediction requests, 0..1), ``latency-p99``
    (seconds), ``accuracy`` (labelled predictions answered right, 0..1), ``drift-share``
    (share of features drifted against the training profile, 0..1) and ``disagreement``
    (total-variation distance between the candidate's and stable's predicted-class
    distributions, 0..1). error-rate, latency-p99, drift-share and disagreement gate each
    step; accuracy gates once ``minSamples`` labels have arrived.
    """

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "has(self.min) || has(self.max) || has(self.maxIncreaseVsStable) || has(self.maxDropVsStable)",
                "an analysis metric needs a bound: min, max, maxIncreaseVsStable or maxDropVsStable",
            ),
            (
                "!has(self.maxIncreaseVsStable) || self.name == 'error-rate' || self.name == 'latency-p99'",
                "maxIncreaseVsStable applies to error-rate and latency-p99",
                ".maxIncreaseVsStable",
            ),
            (
                "!has(self.maxDropVsStable) || self.name == 'accuracy'",
                "maxDropVsStable applies to accuracy",
                ".maxDropVsStable",
            ),
            (
                "!has(self.min) || !has(self.max) || double(self.min) <= double(self.max)",
                "min must be <= max",
            ),
        )
    )

    name: AnalysisMetricName
    min: Decimal_ | None = Field(default=None, description="Fail when the candidate's value is below this.")
    max: Decimal_ | None = Field(default=None, description="Fail when the candidate's value is above this.")
    max_increase_vs_stable: Decimal_ | None = Field(
        default=None,
        description="error-rate, latency-p99: fail when the candidate exceeds stable by more than this "
        "(error-rate: significantly, by an always-valid sequential test at analysis.alpha).",
    )
    max_drop_vs_stable: Decimal_ | None = Field(
        default=None,
        description="accuracy: fail when the candidate is below stable by more than this, significantly "
        "(always-valid sequential test at analysis.alpha).",
    )


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
    min_samples: Annotated[int, Field(ge=0, le=10_000_000)] = Field(
        default=200, description="Labelled predictions on the candidate before accuracy is judged."
    )
    min_requests: Annotated[int, Field(ge=0, le=10_000_000)] = Field(
        default=100,
        description="Prediction requests in an analysis window before error-rate, latency-p99 and "
        "disagreement are judged.",
    )
    alpha: Alpha = Field(
        default="0.05",
        description="Significance level of the comparisons with stable: the chance of rolling back a "
        "candidate as good as stable, however often it is checked.",
    )
    progress_deadline_seconds: Annotated[int, Field(ge=1, le=604_800)] = Field(
        default=600,
        description="How long a step may go without data (or a candidate without becoming ready) "
        "before onNoData decides (a candidate that never becomes ready is aborted).",
    )
    metrics: Annotated[list[AnalysisMetric], Field(max_length=8)] | None = Field(
        default=None,
        description="The checks; default: error-rate maxIncreaseVsStable 0.01 and accuracy maxDropVsStable 0.02.",
    )
    on_no_data: Literal["Hold", "Fail"] = Field(
        default="Hold",
        description="When a step has had no data for progressDeadlineSeconds: keep holding, or fail the rollout.",
    )


class AutoRollback(ApiModel):
    """Roll back a promoted version whose live accuracy (or error rate) stays bad."""

    enabled: bool = True
    consecutive_checks: Annotated[int, Field(ge=1, le=100)] = Field(
        default=3,
        description="Consecutive checks (one per analysis.interval, each over at least analysis.minSamples "
        "new labels) with accuracy below monitoring.accuracy.min or error rate above the error-rate "
        "metric's max before rolling back.",
    )
    cooldown: Duration = Field(default="1h", description="At most one automatic rollback per cooldown.")


class Shadow(ApiModel):
    """The Shadow strategy: stable answers every request, the candidate gets a mirrored copy."""

    margin: Fraction = Field(
        default="0.02",
        description="Non-inferiority margin: the candidate is promoted once its accuracy on the same "
        "labelled requests is shown above stable's minus this (McNemar pairs, always-valid at "
        "analysis.alpha), and rejected once shown below it.",
    )
    max_inflight: Annotated[int, Field(ge=1, le=1024)] = Field(
        default=32,
        description="Mirrored requests in flight per stable replica; beyond it a copy is dropped (and "
        "counted) rather than queued, so a slow candidate never slows the stable version down.",
    )
    timeout_ms: Annotated[int, Field(ge=10, le=60_000)] = Field(
        default=1000, description="A mirrored request not answered within this is dropped (and counted)."
    )


class Rollout(ApiModel):
    strategy: Literal["Canary", "Shadow", "Replace"] = Field(
        default="Replace",
        description="Replace: the new version replaces stable once ready. Canary: traffic moves in "
        "analysis.stepWeights, each step analysed. Shadow: the candidate gets a mirrored copy of every "
        "request and is promoted or rejected on a paired comparison with stable.",
    )
    analysis: Analysis = Field(default_factory=Analysis)
    shadow: Shadow = Field(default_factory=Shadow)
    auto_rollback: AutoRollback = Field(default_factory=AutoRollback)


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


class Capture(ApiModel):
    """Durable capture of production data: every server writes its predictions and the labels it
    receives as Parquet under ``uri`` (partitioned by model and date), for TrainingJobs to train on."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "!has(self.sampleRate) || double(self.sampleRate) > 0.0",
                "sampleRate must be above 0 (remove capture to turn it off)",
                ".sampleRate",
            ),
        )
    )

    uri: Annotated[str, Field(min_length=1, max_length=2048, pattern=r"^(file|s3|gs)://.+$")] = Field(
        description="Where the Parquet dataset goes: file:///data/capture (a volume), s3://bucket/prefix."
    )
    sample_rate: Fraction = Field(
        default="1", description="Share of requests captured (chosen by request id, so labels follow)."
    )
    flush_rows: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        default=1000,
        description="A server writes a file once this many rows wait: a crashed pod loses at most this "
        "many rows (or flushSeconds of traffic).",
    )
    flush_seconds: Annotated[int, Field(ge=1, le=3600)] = Field(
        default=10, description="A server writes waiting rows at least this often."
    )
    max_bytes_per_day: Annotated[int, Field(ge=1024, le=1 << 50)] = Field(
        default=1 << 30,
        description="Bytes each server process writes per UTC day; beyond it rows are dropped (counted).",
    )
    env: Annotated[list[EnvFromSecret], Field(max_length=32)] | None = Field(
        default=None, description="Credentials for s3:// or gs:// (e.g. AWS_ACCESS_KEY_ID) from Secrets."
    )


class Server(ApiModel):
    max_batch_size: Annotated[int, Field(ge=1, le=4096)] | None = None
    max_batch_wait_ms: Annotated[int, Field(ge=0, le=1000)] | None = None
    max_inflight: Annotated[int, Field(ge=1, le=100_000)] | None = None
    max_body_bytes: Annotated[int, Field(ge=1024, le=256 * 1024 * 1024)] | None = None


class InferenceServiceSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=cel(
            ("!has(self.replicas) || !has(self.autoscaling)", "set replicas or autoscaling, not both"),
            (
                "!has(self.rollout) || !has(self.rollout.strategy) || self.rollout.strategy != 'Shadow' "
                "|| !has(self.monitoring) || !has(self.monitoring.enabled) || self.monitoring.enabled",
                "rollout.strategy Shadow compares the versions on labelled requests: it needs "
                "monitoring.enabled",
                ".rollout.strategy",
            ),
            (
                "!has(self.capture) || !has(self.monitoring) || !has(self.monitoring.enabled) "
                "|| self.monitoring.enabled",
                "capture needs monitoring.enabled (labels are matched to predictions by the monitor)",
                ".capture",
            ),
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
    capture: Capture | None = Field(
        default=None, description="Write predictions and labels durably, for retraining on production data."
    )
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
    bound: Annotated[str, Field(max_length=64)] | None = Field(
        default=None, description='The bound checked, such as "max 0.01" or "maxDropVsStable 0.02".'
    )
    samples: Annotated[int, Field(ge=0)] = 0
    verdict: Literal["Pass", "Fail", "NoData"] | None = None
    message: Annotated[str, Field(max_length=1024)] = ""


VersionString = Annotated[str, Field(max_length=16)]


class LatencyBucket(ApiModel):
    le: Annotated[str, Field(max_length=32)] = Field(description='Upper bound in seconds, or "+Inf".')
    count: Annotated[int, Field(ge=0)]


class ShadowCounters(ApiModel):
    """Cumulative counters of one stable server process's mirror (requests, then rows)."""

    version: VersionString = Field(description="The candidate version mirrored to.")
    mirrored: Annotated[int, Field(ge=0)] = Field(default=0, description="Requests copied to the candidate.")
    dropped: Annotated[int, Field(ge=0)] = Field(
        default=0, description="Requests not copied (too many in flight) or not answered in time."
    )
    failed: Annotated[int, Field(ge=0)] = Field(
        default=0, description="Copies the candidate answered with an error."
    )
    compared: Annotated[int, Field(ge=0)] = Field(default=0, description="Rows both versions predicted.")
    agreed: Annotated[int, Field(ge=0)] = Field(default=0, description="Rows both predicted the same.")
    pairs: Annotated[int, Field(ge=0)] = Field(default=0, description="Compared rows that received a label.")
    stable_only: Annotated[int, Field(ge=0)] = Field(
        default=0, description="Labelled pairs stable got right and the candidate wrong."
    )
    candidate_only: Annotated[int, Field(ge=0)] = Field(
        default=0, description="Labelled pairs the candidate got right and stable wrong."
    )


class Counters(ApiModel):
    """Cumulative counters of one model server process (its ``/monitoring`` counters block)."""

    requests: Annotated[int, Field(ge=0)] = 0
    errors: Annotated[int, Field(ge=0)] = 0
    latency: Annotated[list[LatencyBucket], Field(max_length=32)] | None = None
    predictions: Annotated[dict[str, Annotated[int, Field(ge=0)]], Field(max_length=80)] | None = None
    labelled: Annotated[int, Field(ge=0)] = 0
    correct: Annotated[int, Field(ge=0)] = 0
    shadow: ShadowCounters | None = Field(
        default=None, description="A stable process's mirror to a Shadow candidate."
    )


class InstanceCounters(ApiModel):
    instance: Annotated[str, Field(max_length=64)]
    counters: Counters


InstancesCounters = Annotated[list[InstanceCounters], Field(max_length=128)]


class RolloutBaseline(ApiModel):
    """Counters of each version's server processes when a window began (windows are differences)."""

    stable: InstancesCounters | None = None
    candidate: InstancesCounters | None = None


class RollbackWatch(ApiModel):
    """The check of the promoted version's live accuracy and error rate (automatic rollback)."""

    baseline: InstancesCounters | None = None
    checked_at: dt.datetime | None = None
    low_checks: Annotated[int, Field(ge=0)] = 0


class ShadowResult(ApiModel):
    """The paired comparison of a Shadow rollout, over the mirror's counters since it began."""

    mirrored: Annotated[int, Field(ge=0)] = 0
    dropped: Annotated[int, Field(ge=0)] = 0
    failed: Annotated[int, Field(ge=0)] = 0
    compared: Annotated[int, Field(ge=0)] = 0
    agreement: Decimal_ | None = Field(default=None, description="Share of compared rows predicted alike.")
    pairs: Annotated[int, Field(ge=0)] = Field(default=0, description="Labelled rows both versions answered.")
    stable_only_correct: Annotated[int, Field(ge=0)] = 0
    candidate_only_correct: Annotated[int, Field(ge=0)] = 0
    difference: Decimal_ | None = Field(
        default=None, description="Candidate accuracy minus stable's on the labelled pairs."
    )
    lower_bound: Decimal_ | None = None
    upper_bound: Decimal_ | None = None
    p_value: Decimal_ | None = Field(default=None, description="Exact McNemar p-value (no difference).")


class RolloutStatus(ApiModel):
    phase: Literal["Idle", "Progressing", "Paused", "Promoting", "Succeeded", "RolledBack", "Failed"] = "Idle"
    reason: Annotated[str, Field(max_length=64)] | None = None
    message: Annotated[str, Field(max_length=1024)] | None = None
    target: VersionString | None = Field(default=None, description="The target version the rollout answers.")
    strategy: Literal["Canary", "Shadow", "Replace"] | None = Field(
        default=None, description="The strategy this rollout runs (spec changes apply to the next one)."
    )
    candidate: VersionString | None = None
    rollback_from: VersionString | None = Field(
        default=None, description="Set while a rollback brings back candidate in place of this version."
    )
    step: Annotated[int, Field(ge=0, le=10)] = 0
    canary_weight: Annotated[int, Field(ge=0, le=100)] = 0
    failed_checks: Annotated[int, Field(ge=0)] = 0
    started_at: dt.datetime | None = None
    step_started_at: dt.datetime | None = None
    last_check_at: dt.datetime | None = None
    last_transition_time: dt.datetime | None = None
    last_analysis: Annotated[list[AnalysisResult], Field(max_length=24)] | None = None
    baseline: RolloutBaseline | None = Field(default=None, description="Counters when the rollout began.")
    check_baseline: RolloutBaseline | None = Field(
        default=None, description="Counters when the current analysis window began."
    )
    rejected_versions: Annotated[list[VersionString], Field(max_length=20)] | None = Field(
        default=None, description="Versions aborted or rolled back: not tried again until the target changes."
    )
    last_auto_rollback_at: dt.datetime | None = None
    watch: RollbackWatch | None = None
    shadow: ShadowResult | None = None


class CaptureStatus(ApiModel):
    """The capture of the stable version's servers (their ``/monitoring`` capture blocks, summed)."""

    state: Literal["Ok", "Failing", "Full", "Unknown"] = Field(
        default="Unknown",
        description="Failing: a server cannot write to the URI (it keeps serving; rows are dropped). "
        "Full: a server reached maxBytesPerDay today.",
    )
    predictions: Annotated[int, Field(ge=0)] = Field(default=0, description="Prediction rows written.")
    labels: Annotated[int, Field(ge=0)] = Field(default=0, description="Label rows written.")
    dropped: Annotated[int, Field(ge=0)] = Field(
        default=0, description="Rows not written: write errors, the size bound, a backlog (not sampling)."
    )
    message: Annotated[str, Field(max_length=1024)] | None = None


class MonitoringStatus(ApiModel):
    state: Literal["Ok", "Drift", "InsufficientData", "Unknown"] = "Unknown"
    drift_share: Decimal_ | None = None
    drifted_features: Annotated[list[Annotated[str, Field(max_length=256)]], Field(max_length=64)] | None = (
        None
    )
    accuracy: Decimal_ | None = None
    samples: Annotated[int, Field(ge=0)] = 0
    labelled_samples: Annotated[int, Field(ge=0)] = 0
    recent_drift: Annotated[list[bool], Field(max_length=100)] | None = Field(
        default=None, description="Drift verdicts of the last retraining.driftPeriods checks, oldest first."
    )
    capture: CaptureStatus | None = None


class HistoryEntry(ApiModel):
    model_version: Annotated[str, Field(max_length=16)]
    promoted_at: dt.datetime | None = None
    rolled_back_at: dt.datetime | None = None
    replaced: Annotated[str, Field(max_length=16)] | None = Field(
        default=None, description="The version this one replaced (where a rollback goes back to)."
    )
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
    router: Literal["Replicas", "GatewayAPI"] | None = Field(
        default=None,
        description="The traffic router in effect: GatewayAPI falls back to Replicas where the cluster "
        "serves no HTTPRoute.",
    )
    http_route: ObjectName | None = Field(
        default=None, description="The HTTPRoute the operator manages (traffic.router: GatewayAPI)."
    )
    candidate_alias: Annotated[str, Field(max_length=16)] | None = Field(
        default=None, description="The version this service last pointed MLflow's candidate alias at."
    )
    production_version: Annotated[str, Field(max_length=16)] | None = Field(
        default=None, description="The version this service last set MLflow's production alias to."
    )


class InferenceService(ApiModel):
    model_config = ConfigDict(extra="ignore")

    spec: InferenceServiceSpec
    status: InferenceServiceStatus | None = None
