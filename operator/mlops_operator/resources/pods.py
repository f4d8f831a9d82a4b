"""Pod settings shared by every pod the operator creates (pure)."""

from __future__ import annotations

from typing import Any

#: The uid/gid the images run as (non-root; set in images/Dockerfile too).
RUN_AS_USER = 10001


def restricted_pod_security() -> dict[str, Any]:
    """A pod securityContext that passes the ``restricted`` Pod Security Standard."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def restricted_container_security() -> dict[str, Any]:
    """A container securityContext for the ``restricted`` profile, with a read-only root."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


#: The environment variable every command reads its log format from (logging_setup.py).
LOG_FORMAT_ENV = "MLOPS_LOG_FORMAT"


def log_format_env(log_format: str) -> list[dict[str, Any]]:
    """The container env that makes a pod log as the operator does (nothing for plain, the default)."""
    return [] if log_format == "plain" else [{"name": LOG_FORMAT_ENV, "value": log_format}]


def mlflow_credentials_env_from(secret: str) -> list[dict[str, Any]]:
    """The container ``envFrom`` that hands MLflow's client its credentials, by reference.

    The Secret's keys (``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` or
    ``MLFLOW_TRACKING_TOKEN``, and artifact-store keys beside them) become environment variables
    when the kubelet starts the container; their values never appear in a spec the operator
    writes. Not optional: a missing Secret holds the pod in ``CreateContainerConfigError``, which
    says which Secret, rather than a run failing later with 401.
    """
    return [{"secretRef": {"name": secret}}] if secret else []
