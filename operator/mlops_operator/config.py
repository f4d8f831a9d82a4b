"""Typed configuration of the operator, from ``MLOPS_*`` environment variables.

Every field maps one to one onto a value of the Helm chart (``charts/mlops-operator/values.yaml``,
key ``config``), so what a platform team sets in the chart is exactly what the operator reads.
"""

from __future__ import annotations

import json
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from mlops_operator import __version__
from mlops_operator.logging_setup import LogFormat

IMAGE_REGISTRY = "ghcr.io/mlops-operator"


def leader_election_problems(lease_duration: float, renew_deadline: float, retry_period: float) -> list[str]:
    """What is wrong with leader-election timing, as client-go checks it (pure; empty: nothing)."""
    problems = []
    if renew_deadline <= retry_period:
        problems.append(
            f"MLOPS_LEADER_ELECTION_RENEW_DEADLINE ({renew_deadline:g} s) must be longer than "
            f"MLOPS_LEADER_ELECTION_RETRY_PERIOD ({retry_period:g} s): the leader needs more than one "
            "attempt to renew"
        )
    if lease_duration <= renew_deadline:
        problems.append(
            f"MLOPS_LEADER_ELECTION_LEASE_DURATION ({lease_duration:g} s) must be longer than "
            f"MLOPS_LEADER_ELECTION_RENEW_DEADLINE ({renew_deadline:g} s): a leader must give up before "
            "a standby may take over"
        )
    return problems


class Settings(BaseSettings):
    """Operator settings. Environment variable = ``MLOPS_`` + the field name in upper case."""

    # hide_input_in_errors: a refused value (a tracking URI with a password in it) must not be
    # echoed into the error, the log or a crash report.
    model_config = SettingsConfigDict(env_prefix="MLOPS_", extra="ignore", hide_input_in_errors=True)

    namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description='Namespaces to watch: "a,b" or a JSON list in the environment. Empty: all namespaces.',
    )
    mlflow_tracking_uri: str = Field(
        default="http://mlflow.mlops-system.svc:5000",
        description="MLflow tracking + registry URI, used by the operator and handed to every pod it creates. "
        "Never with credentials in it (user:password@ is refused): see mlflow_credentials_secret.",
    )
    mlflow_credentials_secret: str = Field(
        default="",
        max_length=253,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)?$",
        description="Name of a Secret holding MLflow client credentials as environment variables "
        "(MLFLOW_TRACKING_USERNAME + MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN; artifact-store keys "
        "such as AWS_ACCESS_KEY_ID may sit beside them). Trainer and model server pods get it by reference "
        "(envFrom secretRef): a Secret of this name must exist in each namespace they run in. Empty: none.",
    )
    trainer_image: str = Field(
        default=f"{IMAGE_REGISTRY}/trainer:{__version__}",
        description="Image of TrainingJob pods (runs `mlops-operator train`).",
    )
    server_image: str = Field(
        default=f"{IMAGE_REGISTRY}/server:{__version__}",
        description="Image of InferenceService pods (runs `mlops-operator serve`).",
    )
    image_pull_policy: str = Field(
        default="IfNotPresent", description="imagePullPolicy of pods the operator creates."
    )
    metrics_port: int = Field(
        default=8080, ge=0, le=65535, description="Port of the operator's /metrics (0: off)."
    )
    liveness_port: int = Field(
        default=8081, ge=0, le=65535, description="Port of kopf's /healthz probe (0: off)."
    )
    worker_limit: int = Field(
        default=20, ge=1, description="Concurrent reconciliations (threads of kopf's executor; at least 4)."
    )
    watch_server_timeout: int = Field(
        default=300, ge=10, description="kopf: server-side watch timeout in seconds (reconnects after it)."
    )
    watch_client_timeout: int = Field(
        default=330, ge=10, description="kopf: client-side watch timeout in seconds."
    )
    event_level: str = Field(
        default="INFO",
        description="Deprecated, no effect: kopf's level for posting its log lines as Events, which stays "
        "off (kopf posting.loggers: every handler's log line would be an API write). The operator posts "
        "its own Events for changes of state and failed API calls. Kept so existing settings still load.",
    )
    reconcile_interval: float = Field(
        default=30.0,
        gt=0,
        description="Seconds between level-based re-reconciliations of each resource (timers).",
    )
    log_format: LogFormat = Field(
        default="plain",
        description="Log format of the operator and of the pods it creates: plain, or json (one JSON "
        "object per line with time, level, logger, message and the resource's namespace/name).",
    )
    leader_election: bool = Field(
        default=True,
        description="Elect one acting replica through a coordination.k8s.io Lease; the others stand by "
        "and take over when it stops or dies. false: act at once, alone (one replica only).",
    )
    leader_election_lease_name: str = Field(
        default="mlops-operator",
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
        description="Name of the Lease, in the operator's own namespace (POD_NAMESPACE); one per installation.",
    )
    leader_election_lease_duration: int = Field(
        default=15,
        ge=1,
        description="Seconds a standby waits after the Lease was last renewed before it takes over.",
    )
    leader_election_renew_deadline: float = Field(
        default=10.0,
        gt=0,
        description="Seconds the leader keeps trying to renew before it gives up and exits "
        "(shorter than the lease duration).",
    )
    leader_election_retry_period: float = Field(
        default=2.0,
        gt=0,
        description="Seconds between a leader's renewals and between a standby's attempts "
        "(shorter than the renew deadline).",
    )

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _refuse_credentials_in_uri(cls, value: str) -> str:
        """Credentials in the URI would travel by value into every pod spec the operator writes."""
        try:
            has_userinfo = "@" in (urlsplit(value).netloc or "")
        except ValueError:
            has_userinfo = False
        if has_userinfo:
            raise ValueError(
                "the MLflow tracking URI must not carry credentials (user:password@host): they would be "
                "copied into every pod spec. Put MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
                "(or MLFLOW_TRACKING_TOKEN) in a Secret and name it in MLOPS_MLFLOW_CREDENTIALS_SECRET "
                "(chart: config.mlflowCredentialsSecret)"
            )
        return value

    @field_validator("leader_election_retry_period")
    @classmethod
    def _leader_election_timing(cls, value: float, info: ValidationInfo) -> float:
        """A leader must give up (renew deadline) before a standby may take over (lease duration)."""
        duration = info.data.get("leader_election_lease_duration")
        deadline = info.data.get("leader_election_renew_deadline")
        if duration is None or deadline is None:
            return value  # that field failed already, with its own message
        problems = leader_election_problems(duration, deadline, value)
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("namespaces", mode="before")
    @classmethod
    def _parse_namespaces(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [item.strip() for item in text.split(",") if item.strip()]
        return value
