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
- A pod can still die between registering and writing its result (OOM-kill, node loss,
  eviction), and the Job then runs it again. Versions are tagged with the run's identity
  (:data:`RUN_NAME_TAG`, :data:`NAMESPACE_TAG`, :data:`TRAININGJOB_TAG`), so
  :func:`find_registration` finds what an earlier attempt registered (one
  ``search_model_versions`` with a tag filter) instead of registering twice.
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

from mlops_operator.monitoring.reference_profile import PROFILE_ARTIFACT, ReferenceProfile
from mlops_operator.registry.digest import directory_sha256
from mlops_operator.registry.mlflow_registry import bound_http_retries, error_code, is_transient, redact
from mlops_operator.trainer.trainer_errors import Reason, TrainerError

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
#: On runs and versions: one run of a TrainingJob is one Job; its pods are attempts of the same run.
RUN_NAME_TAG: Final = f"{TAG_PREFIX}run-name"
NAMESPACE_TAG: Final = f"{TAG_PREFIX}namespace"
TRAININGJOB_TAG: Final = f"{TAG_PREFIX}trainingjob"
#: On versions: what the trainer's result is rebuilt from when a retried pod finds its run's version.
SHA256_TAG: Final = f"{TAG_PREFIX}sha256"
METRIC_TAG_PREFIX: Final = f"{TAG_PREFIX}metric."
DATASET_URI_TAG: Final = f"{TAG_PREFIX}dataset-uri"
DATASET_SHA256_TAG: Final = f"{TAG_PREFIX}dataset-sha256"
#: JSON list of the data's sources when production data was added (rows, hash, time range of each).
DATASET_SOURCES_TAG: Final = f"{TAG_PREFIX}dataset-sources"
#: On runs: the index of the search trial whose parameters the registered model was fitted with.
BEST_TRIAL_TAG: Final = f"{TAG_PREFIX}best-trial"
MODEL_VERSION_TAG: Final = f"{TAG_PREFIX}model-version"
#: On versions: the run that logged the model (``run_id`` too, but a version may be created without one).
RUN_ID_TAG: Final = f"{TAG_PREFIX}mlflow-run-id"
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


def configure(tracking_uri: str | None) -> None:
    """Point MLflow at the tracking server (and registry) with bounded retries; no request yet."""
    bound_http_retries(TRAINER_HTTP_DEFAULTS)
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)


def connect(tracking_uri: str | None, experiment_name: str) -> str:
    """Point MLflow at the tracking server and pick the experiment; its id. Fails fast when down."""
    configure(tracking_uri)
    import mlflow

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
        client.set_tag(run_id, MODEL_VERSION_TAG, version)
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


@dataclass(frozen=True)
class Registration:
    """A READY version that an earlier attempt of this run registered, and that attempt's MLflow run."""

    name: str
    version: str
    source: str
    tags: Mapping[str, str]
    run_id: str
    experiment_id: str
    run_status: str
    run_tags: Mapping[str, str]
    run_params: Mapping[str, str]


def registration_filter(name: str, identity: Mapping[str, str | None]) -> str | None:
    """``search_model_versions``' filter for ``name``'s versions tagged with ``identity`` (unset tags left out).

    MLflow's filter strings have no escapes: a value is quoted with whichever quote it does not
    contain, and None is returned when it contains both (only a hand-set ``MLOPS_RUN_NAME`` could).
    """
    clauses = [f"name = '{name}'"]
    for key, value in identity.items():
        if not value:
            continue
        if "'" not in value:
            clauses.append(f"tags.`{key}` = '{value}'")
        elif '"' not in value:
            clauses.append(f'tags.`{key}` = "{value}"')
        else:
            return None
    return " AND ".join(clauses)


def find_registration(name: str, identity: Mapping[str, str | None]) -> Registration | None:
    """The READY version of ``name`` that this run (``identity``: its identity tags) registered, if any.

    One ``search_model_versions`` filtered by the tags, and ``get_run`` on a hit. A version in
    any other status is a registration that failed or was cut short: it is never reused (its
    files may be incomplete) nor deleted here (undoing a failed registration is the job of the
    attempt that made it, which may still be alive on a lost node). Should the run have several
    READY versions (left by a trainer without this check), the newest is reported, as it was.
    MLflow down raises ``MLflowUnavailable``; a registry that refuses the filter (an old server)
    only costs the check: the caller trains as it did before.
    """
    from mlflow import MlflowClient

    where = registration_filter(name, identity)
    run_name = identity.get(RUN_NAME_TAG)
    if where is None:
        log.warning("cannot search MLflow for run name %r (both quote characters): not checked", run_name)
        return None
    client = MlflowClient()
    try:
        found = list(client.search_model_versions(where))
    except Exception as exc:
        if not is_transient(exc):
            log.warning(
                "could not check whether run %s already registered %s (%s): training as usual",
                run_name,
                name,
                redact(str(exc))[:600],
            )
            return None
        raise mlflow_error(
            exc, f"looking for a version of {name} from run {run_name} at {_registry_uri()}"
        ) from exc
    ready = []
    for entity in found:
        tags = dict(entity.tags or {})
        if entity.name != name or any(tags.get(key) != (identity.get(key) or None) for key in identity):
            continue  # another run's: the filter left out an unset tag
        if str(entity.status) == "READY":
            ready.append(entity)
        else:
            log.warning(
                "version %s of %s from run %s is %s (a failed or interrupted registration): not reused",
                entity.version,
                name,
                run_name,
                entity.status,
            )
    if not ready:
        return None
    ready.sort(key=lambda entity: int(entity.version))
    chosen = ready[-1]
    if len(ready) > 1:
        log.warning(
            "run %s registered %d versions of %s (%s): reporting the newest",
            run_name,
            len(ready),
            name,
            ", ".join(str(entity.version) for entity in ready),
        )
    tags = dict(chosen.tags or {})
    run_id = chosen.run_id or tags.get(RUN_ID_TAG)
    if not run_id:
        log.warning(
            "version %s of %s from run %s names no MLflow run: not reused", chosen.version, name, run_name
        )
        return None
    try:
        run = client.get_run(run_id)
    except Exception as exc:
        if is_transient(exc):
            raise mlflow_error(exc, f"reading run {run_id} of version {chosen.version} of {name}") from exc
        log.warning(
            "version %s of %s: its MLflow run %s cannot be read (%s): not reused",
            chosen.version,
            name,
            run_id,
            redact(str(exc))[:600],
        )
        return None
    return Registration(
        name=name,
        version=str(chosen.version),
        source=str(chosen.source),
        tags=tags,
        run_id=run_id,
        experiment_id=str(run.info.experiment_id),
        run_status=str(run.info.status),
        run_tags=dict(run.data.tags),
        run_params=dict(run.data.params),
    )


def finish_interrupted_run(registration: Registration) -> None:
    """Best effort: what the attempt that registered would have done next (tag its run, end it FINISHED).

    Only a run left RUNNING is ended: its pod died. One that ended otherwise is left as recorded.
    """
    from mlflow import MlflowClient

    client = MlflowClient()
    try:
        if registration.run_tags.get(MODEL_VERSION_TAG) != registration.version:
            client.set_tag(registration.run_id, MODEL_VERSION_TAG, registration.version)
        if registration.run_status == "RUNNING":
            client.set_terminated(registration.run_id, "FINISHED")
            log.info("ended the interrupted MLflow run %s as FINISHED", registration.run_id)
    except Exception as exc:
        log.warning("could not finish the MLflow run %s: %s", registration.run_id, redact(str(exc))[:600])


def _registry_uri() -> str:
    import mlflow

    return str(mlflow.get_registry_uri())
