"""Typed settings of ``mlops-operator serve``, from flags or ``MLOPS_SERVE_*`` variables.

Flags win over the environment. The environment is also how the CLI hands its settings to
BentoML's worker processes, which import the service module afresh.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from mlops_operator.logging_setup import LOG_FORMAT_ENV, LogFormat
from mlops_operator.serving.asgi_app import ServerConfig
from mlops_operator.serving.capture import CaptureConfig

ENV_PREFIX = "MLOPS_SERVE_"


class ServeSettings(BaseSettings):
    """Everything ``serve`` needs. Environment variable = ``MLOPS_SERVE_`` + field name."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", protected_namespaces=())

    model_uri: str = Field(
        description="models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN_ID/PATH or a path."
    )
    host: str = Field(default="0.0.0.0", description="Address to listen on.")
    port: int = Field(default=8080, ge=0, le=65535, description="Port to listen on.")
    runtime: Literal["uvicorn", "bentoml"] = Field(default="uvicorn", description="The ASGI host.")
    model_name: str | None = Field(
        default=None, description="Name in /v2 and metrics (default: registered name)."
    )
    model_version: str | None = Field(default=None, description="Version in responses and metrics.")
    expected_sha256: str | None = Field(
        default=None, description="Refuse to load unless the artifacts hash to this."
    )
    max_batch_size: int | None = Field(
        default=None,
        ge=0,
        description="Rows per coalesced predict call; unset: decided by measuring the model.",
    )
    max_batch_wait_ms: float = Field(
        default=0.0,
        ge=0,
        description="Bound of the adaptive batching window: the longest a request waits, once the model "
        "is free, for its batch to fill. The window itself is chosen per batch from the measured call "
        "cost and arrivals (an idle server answers at once). 0: the measured fixed cost of one call.",
    )
    max_body_bytes: int = Field(default=1 << 20, ge=1, description="Larger bodies are refused with 413.")
    body_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="A request body not complete this long after its headers is refused with 408 "
        "and the connection closed (slow or stalled clients cannot hold a request open).",
    )
    header_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="uvicorn runtime: request line and headers must arrive within this long of the "
        "connection opening (or of the request's first byte on a kept-alive connection); else 408.",
    )
    max_header_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="uvicorn runtime: request headers larger than this are refused with 431.",
    )
    max_rows: int = Field(default=1000, ge=1, description="Most rows in one request (413 above).")
    max_inflight: int = Field(default=64, ge=1, description="Inference requests in flight before 503.")
    drift_method: Literal["PSI", "KS", "ChiSquare"] = Field(
        default="PSI", description="Per-feature drift statistic."
    )
    drift_threshold: float | None = Field(
        default=None, description="Drift threshold (default: the method's)."
    )
    drift_window: int = Field(default=1000, ge=1, description="Rows in the drift window.")
    drift_min_samples: int | None = Field(default=None, ge=1, description="Rows before drift is reported.")
    drift_share: float = Field(
        default=0.5, ge=0, le=1, description="Share of drifted features that is dataset drift."
    )
    accuracy_window: int = Field(default=500, ge=1, description="Labelled outcomes in the accuracy window.")
    monitoring: bool = Field(default=True, description="Online drift and accuracy monitoring.")
    freeze_gc: bool = Field(
        default=True, description="gc.freeze() after loading, so full collections skip import-time objects."
    )
    workers: int = Field(default=1, ge=1, description="BentoML worker processes (uvicorn: always 1).")
    advertise_address: str | None = Field(
        default=None,
        pattern=r"^[0-9]{1,3}(\.[0-9]{1,3}){3}:[0-9]{1,5}$",
        description="IPv4:port where the other replicas reach this one; request ids then carry it "
        "and /feedback forwards labels to the replica that made the prediction.",
    )
    shadow_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s/]+/?$",
        description="Shadow rollout: copy every prediction request to the candidate server at this "
        "base URL (set by the operator on the stable version's pods).",
    )
    shadow_version: str | None = Field(default=None, description="The candidate version at shadow_url.")
    shadow_max_inflight: int = Field(
        default=32, ge=1, description="Copies waiting for the candidate at once; beyond, dropped (counted)."
    )
    shadow_timeout_ms: float = Field(
        default=1000.0, gt=0, description="A copy not answered within this is dropped (counted)."
    )
    capture_uri: str | None = Field(
        default=None,
        description="Capture predictions and labels as Parquet under this fsspec URI (file://, s3://); "
        "unset: no capture.",
    )
    capture_sample_rate: float = Field(
        default=1.0, gt=0, le=1, description="Share of requests captured (by a hash of the request id)."
    )
    capture_flush_rows: int = Field(
        default=1000, ge=1, description="Write a batch once this many rows wait (a crash loses at most this)."
    )
    capture_flush_seconds: float = Field(
        default=10.0, gt=0, description="Write waiting rows at least this often (seconds)."
    )
    capture_max_bytes_per_day: int = Field(
        default=1 << 30, ge=1, description="Bytes this process writes per UTC day; beyond, rows are dropped."
    )
    download_dir: str | None = Field(
        default=None, description="Where to download artifacts (default: a temp dir)."
    )
    log_format: LogFormat = Field(
        default="plain",
        validation_alias=AliasChoices(LOG_FORMAT_ENV, "log_format"),
        description="plain, or json: one JSON object per line (MLOPS_LOG_FORMAT, as every command).",
    )
    # Set by the CLI for BentoML's workers: artifacts already downloaded and verified.
    resolved_dir: str | None = Field(default=None, description="Internal: verified local model directory.")

    def server_config(self) -> ServerConfig:
        """The ASGI core's limits."""
        return ServerConfig(
            max_body_bytes=self.max_body_bytes,
            body_timeout_s=self.body_timeout_seconds,
            header_timeout_s=self.header_timeout_seconds,
            max_header_bytes=self.max_header_bytes,
            max_rows=self.max_rows,
            max_inflight=self.max_inflight,
            max_batch_size=self.max_batch_size,
            max_batch_wait_ms=self.max_batch_wait_ms,
            freeze_gc=self.freeze_gc,
            advertise_address=self.advertise_address,
            shadow_url=self.shadow_url,
            shadow_version=self.shadow_version,
            shadow_max_inflight=self.shadow_max_inflight,
            shadow_timeout_ms=self.shadow_timeout_ms,
            capture=CaptureConfig(
                uri=self.capture_uri,
                sample_rate=self.capture_sample_rate,
                flush_rows=self.capture_flush_rows,
                flush_seconds=self.capture_flush_seconds,
                max_bytes_per_day=self.capture_max_bytes_per_day,
            )
            if self.capture_uri
            else None,
        )

    def to_env(self) -> dict[str, str]:
        """These settings as ``MLOPS_SERVE_*`` variables (for child processes)."""
        env = {}
        for name, value in self.model_dump().items():
            if value is not None:
                env[ENV_PREFIX + name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
        env[LOG_FORMAT_ENV] = env.pop(ENV_PREFIX + "LOG_FORMAT")  # shared by every command
        return env
