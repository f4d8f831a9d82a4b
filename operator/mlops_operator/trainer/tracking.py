"""Everything the trainer asks of MLflow: the experiment, runs, artifacts, the registered version.

MLflow quirks handled here:

- Retries are bounded for a batch pod (:data:`TRAINER_HTTP_DEFAULTS`: 2 retries, backoff factor
  1, jitter 0.5 s, 60 s per request; MLflow's defaults would retry for minutes). MLflow down is
  then known in about 2-3 s (connection refused: a retry without backoff, one after ~2 s) and the
  Job's own ``backoffLimit`` does the longer waiting.
- ``mlflow.sklearn.save_model`` defaults to the ``skops`` format in MLflow 3.17 (not installed)
  and infers pip requirements by re-importing the model in a subprocess (seconds). The trainer
  passes ``cloudpickle`` and an explicit requirements list. Pickles run code when loaded: the
  server verifies :func:`~mlops_operator.registry.digest.directory_sha256` (recorded here)
  before it unpickles anything.
- The model is saved to a local directory, digested, and uploaded with ``log_artifacts`` (rather
  than ``log_model``, which creates an MLflow 3 "logged model" with its own storage): what is
  digested is byte for byte what the registry serves. The version's ``source`` is the run's
  artifact URI + ``/model``, which is what ``mlflow.register_model("runs:/<run>/model")``
  resolves to when the run holds an ``MLmodel`` file.
- Registration is the last step, and undone if anything after ``create_model_version`` fails
  (the version is deleted; a registered model created by this attempt and left empty too).
"""

from __future__ import annotations

import importlib.metadata
import logging
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pandas as pd

from mlops_operator.monitoring.profile import PROFILE_ARTIFACT, ReferenceProfile
from mlops_operator.registry.client import bound_http_retries, error_code, is_transient, redact
from mlops_operator.registry.digest import directory_sha256
from mlops_operator.trainer.errors import Reason, TrainerError

log = logging.getLogger(__name__)

TRAINER_HTTP_DEFAULTS: Final[Mapping[str, str]] = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}
MODEL_ARTIFACT_PATH: Final = "model"
CONFUSION_MATRIX_ARTIFACT: Final = "confusion_matrix.png"
PREDICTED_VS_ACTUAL_ARTIFACT: Final = "predicted_vs_actual.png"
#: Tag on runs and versions: the Job that made them (finds a version again after a pod restart).
TAG_PREFIX: Final = "mlops.dev/"
_READY_WAIT_SECONDS: Final = 120.0


def mlflow_error(
    exc: BaseException, doing: str, *, permanent_reason: Reason = "TrainingFailed"
) -> TrainerError:
    """An MLflow exception as a TrainerError: transient -> MLflowUnavailable (exit 1)."""
    if isinstance(exc, TrainerError):
        return exc
    text = redact(str(exc))
    if len(text) > 600:
        text = text[:597] + "..."
    if is_transient(exc):
        return TrainerError("MLflowUnavailable", f"MLflow unavailable while {doing}: {text}")
    return TrainerError(permanent_reason, f"MLflow refused {doing}: {text}")


def connect(tracking_uri: str | None, experiment_name: str) -> str:
    """Point MLflow at the tracking server and pick the experiment; its id. Fails fast when down."""
    bound_http_retries(TRAINER_HTTP_DEFAULTS)
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    try:
        experiment = mlflow.set_experiment(experiment_name)
    except Exception as exc:
        raise mlflow_error(
            exc, f"opening experiment {experiment_name!r} at {mlflow.get_tracking_uri()}"
        ) from exc
    return str(experiment.experiment_id)


def log_trial(
    index: int,
    params: Mapping[str, Any],
    metric: str,
    score: float | None,
    score_std: float | None,
    error: str | None,
) -> None:
    """One search trial as a nested run of the active run: its params and cross-validated score."""
    import mlflow

    status = "FINISHED" if error is None else "FAILED"
    with mlflow.start_run(run_name=f"trial-{index:03d}", nested=True) as run:
        mlflow.log_params({k: _param(v) for k, v in params.items()})
        mlflow.set_tag(f"{TAG_PREFIX}trial", str(index))
        if score is not None:
            mlflow.log_metric(f"cv_{metric}", score)
        if score_std is not None:
            mlflow.log_metric(f"cv_{metric}_std", score_std)
        if error is not None:
            mlflow.set_tag(f"{TAG_PREFIX}error", error[:4000])
        mlflow.end_run(status)
    del run


def _param(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 500 else text[:497] + "..."


def log_params(params: Mapping[str, Any]) -> None:
    import mlflow

    mlflow.log_params({k: _param(v) for k, v in params.items()})


def log_metrics(metrics: Mapping[str, float]) -> None:
    import mlflow

    mlflow.log_metrics(dict(metrics))


def log_figure(figure: Any, name: str) -> None:
    import matplotlib.pyplot as plt
    import mlflow

    try:
        mlflow.log_figure(figure, name)
    finally:
        plt.close(figure)


def log_profile(profile: ReferenceProfile) -> None:
    """The reference profile at the root of the run's artifacts, as :data:`PROFILE_ARTIFACT`."""
    import mlflow

    mlflow.log_text(profile.model_dump_json(indent=1), PROFILE_ARTIFACT)


@dataclass(frozen=True)
class LoggedModel:
    artifact_uri: str  # the run's model directory: the registered version's source
    sha256: str


def save_and_log_model(model: Any, input_example: pd.DataFrame, output_example: Any) -> LoggedModel:
    """Save the pipeline as an MLflow model, digest the directory, upload it under ``model/``."""
    import mlflow
    import mlflow.sklearn
    import numpy
    import scipy
    import sklearn
    from mlflow.models import infer_signature

    signature = infer_signature(input_example, output_example)
    requirements = [
        f"scikit-learn=={sklearn.__version__}",
        f"numpy=={numpy.__version__}",
        f"pandas=={pd.__version__}",
        f"scipy=={scipy.__version__}",
        f"cloudpickle=={importlib.metadata.version('cloudpickle')}",
    ]
    with tempfile.TemporaryDirectory(prefix="mlops-model-") as tmp:
        local = Path(tmp) / MODEL_ARTIFACT_PATH
        mlflow.sklearn.save_model(
            model,
            str(local),
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,
            signature=signature,
            input_example=input_example,
            pip_requirements=requirements,
        )
        digest = directory_sha256(local)
        mlflow.log_artifacts(str(local), MODEL_ARTIFACT_PATH)
    run = mlflow.active_run()
    assert run is not None
    return LoggedModel(
        artifact_uri=f"{run.info.artifact_uri.rstrip('/')}/{MODEL_ARTIFACT_PATH}", sha256=digest
    )


def register(
    *,
    name: str,
    source: str,
    run_id: str,
    tags: Mapping[str, str],
    description: str,
    model_description: str | None,
) -> str:
    """Create the registered model if needed and a new version; the version number.

    Undone on failure: a version created here is deleted again (and the registered model, if
    this call created it and it is left empty), so a failed run leaves nothing registered.
    """
    from mlflow import MlflowClient

    client = MlflowClient()
    created_model = False
    version: str | None = None
    try:
        try:
            client.create_registered_model(
                name, tags={f"{TAG_PREFIX}managed-by": "mlops-operator"}, description=model_description
            )
            created_model = True
        except Exception as exc:
            if error_code(exc) not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        entity = client.create_model_version(
            name, source, run_id=run_id, tags=dict(tags), description=description, await_creation_for=0
        )
        version = str(entity.version)
        _wait_ready(client, name, version)
        client.set_tag(run_id, f"{TAG_PREFIX}model-version", version)
        return version
    except Exception as exc:
        _undo_registration(client, name, version, created_model)
        raise mlflow_error(exc, f"registering {name}", permanent_reason="RegistrationFailed") from exc


def _wait_ready(client: Any, name: str, version: str) -> None:
    """Remote registries copy files before a version is READY; FAILED_REGISTRATION is final."""
    deadline = time.monotonic() + _READY_WAIT_SECONDS
    while True:
        status = str(client.get_model_version(name, version).status)
        if status == "READY":
            return
        if status != "PENDING_REGISTRATION":
            raise TrainerError("RegistrationFailed", f"version {version} of {name} ended in status {status}")
        if time.monotonic() > deadline:
            raise TrainerError(
                "RegistrationFailed",
                f"version {version} of {name} not READY after {_READY_WAIT_SECONDS:.0f}s",
            )
        time.sleep(1.0)


def _undo_registration(client: Any, name: str, version: str | None, created_model: bool) -> None:
    if version is not None:
        try:
            client.delete_model_version(name, version)
            log.warning("deleted version %s of %s after a failed registration", version, name)
        except Exception:  # MLflow may be the reason we are here
            log.exception("could not delete version %s of %s after a failed registration", version, name)
    if created_model:
        try:
            if not client.search_model_versions(f"name = '{name}'", max_results=1):
                client.delete_registered_model(name)
        except Exception:
            log.exception("could not delete the empty registered model %s", name)


def fail_run(reason: str, message: str) -> None:
    """Mark the active run (and any nested one left open) FAILED, best effort."""
    import mlflow

    try:
        while (run := mlflow.active_run()) is not None:
            mlflow.set_tags(
                {f"{TAG_PREFIX}failure-reason": reason, f"{TAG_PREFIX}failure-message": message[:4000]}
            )
            mlflow.end_run("FAILED")
            del run
    except Exception:
        log.exception("could not mark the MLflow run FAILED")
