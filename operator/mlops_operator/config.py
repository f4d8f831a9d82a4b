"""Typed configuration of the operator, from ``MLOPS_*`` environment variables.

Every field maps one to one onto a value of the Helm chart (``charts/mlops-operator/values.yaml``,
key ``config``), so what a platform team sets in the chart is exactly what the operator reads.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from mlops_operator import __version__
from mlops_operator.logging_setup import LogFormat

IMAGE_REGISTRY = "ghcr.io/mlops-operator"


class Settings(BaseSettings):
    """Operator settings. Environment variable = ``MLOPS_`` + the field name in upper case."""

    model_config = SettingsConfigDict(env_prefix="MLOPS_", extra="ignore")

    namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description='Namespaces to watch: "a,b" or a JSON list in the environment. Empty: all namespaces.',
    )
    mlflow_tracking_uri: str = Field(
        default="http://mlflow.mlops-system.svc:5000",
        description="MLflow tracking + registry URI, used by the operator and handed to every pod it creates.",
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
        description="kopf: lowest log level posted as Kubernetes Events (DEBUG, INFO, WARNING).",
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

    @field_validator("namespaces", mode="before")
    @classmethod
    def _parse_namespaces(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [item.strip() for item in text.split(",") if item.strip()]
        return value
