"""Resolve a model URI to verified local artifacts, for the model server.

This is the only module the server uses to reach MLflow. It works in two steps, so that the
server can fail fast before it unpickles anything:

1. :func:`resolve_model` turns ``models:/NAME/VERSION``, ``models:/NAME@alias``,
   ``runs:/RUN_ID/model`` or a local path / ``file://`` URI into a local directory, finds the
   run that produced it, downloads that run's ``reference_profile.json`` (when there is one),
   computes the directory's sha256 and compares it with the expected digest, and reads the
   model's signature. Nothing is deserialised in this step except YAML and JSON.
2. :func:`load_model` deserialises the model: the bare scikit-learn estimator when the model
   has the ``sklearn`` flavour (so the server can call it on a numpy array with no pandas in
   between), otherwise MLflow's generic ``pyfunc`` model.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from mlops_operator.monitoring.reference_profile import PROFILE_ARTIFACT, ReferenceProfile
from mlops_operator.registry.digest import directory_sha256

logger = logging.getLogger(__name__)

# MLflow writes this file into every directory it downloads from a ``models:/`` URI. It is the
# registry's bookkeeping, not model content, and the trainer's digest (taken from the logged
# artifacts) does not cover it: drop it so both sides hash the same bytes.
_DOWNLOAD_ONLY_FILES = ("registered_model_meta",)

_MODELS_VERSION = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>[^/]+)/?$")
_MODELS_ALIAS = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)/?$")
_RUNS = re.compile(r"^runs:/(?P<run_id>[^/]+)/(?P<path>.+?)/?$")


class ModelResolutionError(Exception):
    """The model cannot be served; ``str(error)`` says why in words an operator can act on."""


class MlflowUnreachableError(ModelResolutionError):
    """The tracking/registry server did not answer."""


class ModelNotFoundError(ModelResolutionError):
    """The registered model, version, alias, run or path does not exist."""


class DigestMismatchError(ModelResolutionError):
    """The downloaded artifacts are not the ones the trainer recorded."""


class SourceOutsideRegistryError(ModelResolutionError):
    """A registered version points at artifacts the configured registry does not hold."""


#: Sources that MLflow resolves through the tracking/registry server itself.
_REGISTRY_SCHEMES = frozenset({"models", "runs", "mlflow-artifacts"})
_USERINFO = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/@?#]*@")


def redact_uri(uri: str) -> str:
    """``uri`` without its userinfo (``https://user:pass@host/x`` -> ``https://***@host/x``)."""
    return _USERINFO.sub(lambda m: m.group(0).split("://", 1)[0] + "://***@", uri)


def _scheme(uri: str) -> str:
    return urlparse(uri).scheme.lower() if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri) else ""


def is_registry_uri(uri: str) -> bool:
    """A ``models:/``, ``runs:/`` or ``mlflow-artifacts:/`` URI: resolved by the tracking server itself."""
    return _scheme(uri) in _REGISTRY_SCHEMES


def source_outside_registry(
    source: str, *, tracking_uri: str | None, run_artifact_uri: str | None
) -> str | None:
    """Why a registered version's ``source`` lies outside the configured registry; None when inside.

    Inside means: a ``models:/``, ``runs:/`` or ``mlflow-artifacts:/`` URI (the tracking server
    resolves those), an ``http(s)`` URI on the tracking server's own host, or a URI under the
    artifact directory of the run that produced the version (``run_artifact_uri``, where the
    trainer logs models when artifacts are not proxied: ``s3://bucket/<exp>/<run>/artifacts``).
    Anything else (a version registered from ``http://elsewhere/model`` or ``file:///etc``, a
    source with credentials in it or one climbing out with ``..``) would make the server fetch
    and unpickle artifacts no training run of this registry produced. Pure: the caller looks up
    the run's artifact URI.
    """
    if not source:
        return None  # nothing to fetch from elsewhere: MLflow resolves the version's URI itself
    if _USERINFO.match(source):
        return "it carries credentials (user:password@)"
    if ".." in urlparse(source).path.split("/"):
        return "its path climbs out of its directory (..)"
    scheme = _scheme(source)
    if scheme in _REGISTRY_SCHEMES:
        return None
    on_tracking_host = (
        bool(tracking_uri) and urlparse(source).netloc.lower() == urlparse(tracking_uri).netloc.lower()
    )
    if scheme in {"http", "https"} and on_tracking_host:
        return None
    if run_artifact_uri:
        root = run_artifact_uri.rstrip("/")
        if source.rstrip("/") == root or source.startswith(root + "/"):
            return None
        return f"it is not under its run's artifacts ({redact_uri(root)})"
    return "it is not an MLflow URI (models:/, runs:/, mlflow-artifacts:/) and no run's artifacts contain it"


@dataclass(frozen=True)
class FeatureSpec:
    """One input column of the model's signature."""

    name: str
    # MLflow's type name: double, float, long, integer, boolean, string, ...
    type: str

    @property
    def numeric(self) -> bool:
        return self.type in {"double", "float", "long", "integer"}


@dataclass
class ResolvedModel:
    """Local, verified artifacts of one model version, not yet deserialised."""

    uri: str
    local_dir: Path
    sha256: str
    run_id: str | None = None
    registered_name: str | None = None
    registered_version: str | None = None
    flavors: tuple[str, ...] = ()
    features: list[FeatureSpec] | None = None
    # A tensor-based signature gives a width but no names.
    tensor_width: int | None = None
    profile: ReferenceProfile | None = None
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def has_sklearn_flavor(self) -> bool:
        return "sklearn" in self.flavors


@dataclass
class LoadedModel:
    """A deserialised model: ``estimator`` for the sklearn flavour, else ``pyfunc``."""

    estimator: Any | None
    pyfunc: Any | None

    @property
    def is_classifier(self) -> bool:
        """True when the estimator can give per-class probabilities."""
        est = self.estimator
        return est is not None and hasattr(est, "predict_proba") and hasattr(est, "classes_")


def _mlflow_errors() -> tuple[type[BaseException], ...]:
    from mlflow.exceptions import MlflowException

    return (MlflowException,)


def _classify(exc: BaseException, what: str) -> ModelResolutionError:
    """Turn an MLflow or requests failure into one of our typed errors."""
    text = str(exc)
    lowered = text.lower()
    unreachable_markers = (
        "max retries exceeded",
        "connection refused",
        "failed to establish",
        "name or service not known",
        "timed out",
        "api request to",
        "connectionerror",
    )
    if any(marker in lowered for marker in unreachable_markers):
        return MlflowUnreachableError(f"MLflow is unreachable while resolving {what}: {text.splitlines()[0]}")
    code = getattr(exc, "error_code", "")
    if code in {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"} or "not found" in lowered:
        return ModelNotFoundError(f"{what} does not exist: {text.splitlines()[0] if text else code}")
    return ModelResolutionError(
        f"cannot resolve {what}: {text.splitlines()[0] if text else type(exc).__name__}"
    )


def _download(artifact_uri: str, dst: Path, what: str) -> Path:
    import mlflow

    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=str(dst)))
    except Exception as exc:  # MLflow raises MlflowException, OSError and requests errors alike
        raise _classify(exc, what) from exc


def _download_profile(run_id: str, dst: Path) -> ReferenceProfile | None:
    """The run's reference profile, or None when the run has none (or it cannot be read)."""
    import mlflow

    try:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=PROFILE_ARTIFACT, dst_path=str(dst)
        )
    except Exception:
        # A model without a profile is servable: drift monitoring is then off.
        return None
    return _read_profile(Path(path))


def _read_profile(path: Path) -> ReferenceProfile | None:
    """The reference profile at ``path``; None (drift monitoring off) when it cannot be read, said in the log."""
    try:
        return ReferenceProfile.model_validate_json(path.read_bytes())
    except (OSError, ValueError) as exc:
        logger.warning("reference profile %s is unusable, drift monitoring is off: %s", path, exc)
        return None


def _read_mlmodel(
    local_dir: Path,
) -> tuple[tuple[str, ...], list[FeatureSpec] | None, int | None, str | None]:
    """Flavours, column signature, tensor width and run id, read from the MLmodel file."""
    from mlflow.models import Model

    mlmodel = local_dir / "MLmodel"
    if not mlmodel.is_file():
        raise ModelNotFoundError(f"{local_dir} is not an MLflow model directory (no MLmodel file)")
    meta = Model.load(str(mlmodel))
    flavors = tuple(meta.flavors)
    features: list[FeatureSpec] | None = None
    width: int | None = None
    signature = meta.signature
    if signature is not None and signature.inputs is not None:
        inputs = signature.inputs
        if inputs.is_tensor_spec():
            shape = inputs.inputs[0].shape if len(inputs.inputs) == 1 else None
            if shape is not None and len(shape) == 2 and shape[1] > 0:
                width = int(shape[1])
        elif inputs.has_input_names():
            features = [FeatureSpec(name=str(spec.name), type=str(spec.type.name)) for spec in inputs.inputs]
    return flavors, features, width, meta.run_id


def _local_path(uri: str) -> Path | None:
    if uri.startswith("file://"):
        return Path(unquote(urlparse(uri).path))
    if "://" not in uri and ":/" not in uri:
        return Path(uri)
    return None


def _refuse_foreign_source(client: Any, uri: str, source: str, run_id: str | None) -> None:
    """Raise :class:`SourceOutsideRegistryError` when the version's source is not the registry's."""
    import mlflow

    tracking_uri = mlflow.get_tracking_uri()
    run_artifact_uri: str | None = None
    if not is_registry_uri(source) and run_id:
        try:
            run_artifact_uri = str(client.get_run(run_id).info.artifact_uri)
        except Exception as exc:
            raise _classify(exc, f"run {run_id} of model {uri}") from exc
    why = source_outside_registry(source, tracking_uri=tracking_uri, run_artifact_uri=run_artifact_uri)
    if why is not None:
        raise SourceOutsideRegistryError(
            f"refusing {uri}: its registered source {redact_uri(source)!r} is outside the configured "
            f"registry ({redact_uri(tracking_uri)}): {why}. Register the version from its training run "
            "(runs:/RUN_ID/model or the run's artifact URI); nothing was downloaded"
        )


def resolve_model(
    uri: str,
    *,
    dst_dir: str | Path | None = None,
    expected_sha256: str | None = None,
) -> ResolvedModel:
    """Download (or locate) the model at ``uri``, verify its digest and read its metadata.

    Raises a :class:`ModelResolutionError` subclass with an actionable message: MLflow
    unreachable, model/version/alias/run not found, a registered source outside the registry
    (:func:`source_outside_registry`, checked before downloading), or digest mismatch. The digest is checked
    here, before anything is deserialised, so a tampered pickle is never loaded.
    """
    dst = Path(dst_dir) if dst_dir is not None else Path(tempfile.mkdtemp(prefix="mlops-model-"))
    dst.mkdir(parents=True, exist_ok=True)
    run_id: str | None = None
    name: str | None = None
    version: str | None = None
    tags: dict[str, str] = {}
    local = _local_path(uri)
    if local is not None:
        if not local.exists():
            raise ModelNotFoundError(f"model path {local} does not exist")
        local_dir = local
    else:
        source = uri
        if (match := _MODELS_VERSION.match(uri)) or (match := _MODELS_ALIAS.match(uri)):
            import mlflow

            client = mlflow.MlflowClient()
            name = match.group("name")
            try:
                if "alias" in match.groupdict() and match.group("alias"):
                    model_version = client.get_model_version_by_alias(name, match.group("alias"))
                else:
                    model_version = client.get_model_version(name, match.group("version"))
            except Exception as exc:
                raise _classify(exc, f"model {uri}") from exc
            version = str(model_version.version)
            run_id = model_version.run_id or None
            tags = dict(model_version.tags or {})
            # The version's source is the logged artifacts themselves (models:/m-... or runs:/...).
            source = model_version.source or uri
            _refuse_foreign_source(client, uri, source, run_id)
        elif match := _RUNS.match(uri):
            run_id = match.group("run_id")
        elif not uri.startswith(("models:/", "runs:/")):
            raise ModelNotFoundError(
                f"unsupported model URI {uri!r}: use models:/NAME/VERSION, models:/NAME@ALIAS, "
                "runs:/RUN_ID/PATH or a local path"
            )
        local_dir = _download(source, dst / "model", f"model {uri}")
        for extra in _DOWNLOAD_ONLY_FILES:
            (local_dir / extra).unlink(missing_ok=True)

    flavors, features, width, mlmodel_run_id = _read_mlmodel(local_dir)
    run_id = run_id or mlmodel_run_id
    digest = directory_sha256(local_dir)
    if expected_sha256 is not None and digest != expected_sha256.strip().lower():
        raise DigestMismatchError(
            f"sha256 mismatch for {uri}: expected {expected_sha256.strip().lower()}, got {digest}; "
            "refusing to load artifacts that are not the ones the trainer recorded"
        )

    profile: ReferenceProfile | None = None
    for candidate in (local_dir / PROFILE_ARTIFACT, local_dir.parent / PROFILE_ARTIFACT):
        if local is not None and candidate.is_file():
            profile = _read_profile(candidate)
            break
    if profile is None and run_id is not None and (local is None or os.environ.get("MLFLOW_TRACKING_URI")):
        profile = _download_profile(run_id, dst / "profile")
    return ResolvedModel(
        uri=uri,
        local_dir=local_dir,
        sha256=digest,
        run_id=run_id,
        registered_name=name,
        registered_version=version,
        flavors=flavors,
        features=features,
        tensor_width=width,
        profile=profile,
        tags=tags,
    )


def load_model(resolved: ResolvedModel) -> LoadedModel:
    """Deserialise the model: the sklearn estimator when possible, MLflow pyfunc otherwise."""
    try:
        if resolved.has_sklearn_flavor:
            import mlflow.sklearn

            return LoadedModel(estimator=mlflow.sklearn.load_model(str(resolved.local_dir)), pyfunc=None)
        import mlflow.pyfunc

        return LoadedModel(estimator=None, pyfunc=mlflow.pyfunc.load_model(str(resolved.local_dir)))
    except Exception as exc:
        raise ModelResolutionError(f"cannot load model {resolved.uri}: {exc}") from exc


def cleanup(resolved: ResolvedModel) -> None:
    """Remove a download directory made by :func:`resolve_model` (never a user's local path)."""
    if resolved.local_dir.name == "model" and resolved.local_dir.parent.name.startswith("mlops-model-"):
        shutil.rmtree(resolved.local_dir.parent, ignore_errors=True)


def to_manifest(resolved: ResolvedModel) -> str:
    """A JSON description of resolved artifacts, for a process that serves them later."""
    import json

    return json.dumps(
        {
            "uri": resolved.uri,
            "local_dir": str(resolved.local_dir),
            "sha256": resolved.sha256,
            "run_id": resolved.run_id,
            "registered_name": resolved.registered_name,
            "registered_version": resolved.registered_version,
            "flavors": list(resolved.flavors),
            "features": [[f.name, f.type] for f in resolved.features]
            if resolved.features is not None
            else None,
            "tensor_width": resolved.tensor_width,
            "profile": resolved.profile.model_dump(mode="json") if resolved.profile is not None else None,
            "tags": resolved.tags,
        }
    )


def from_manifest(text: str) -> ResolvedModel:
    """The inverse of :func:`to_manifest`; re-hashes the directory before anything loads it."""
    import json

    data = json.loads(text)
    local_dir = Path(data["local_dir"])
    digest = directory_sha256(local_dir)
    if digest != data["sha256"]:
        raise DigestMismatchError(
            f"sha256 of {local_dir} changed since it was verified: {data['sha256']} became {digest}"
        )
    features = data["features"]
    return ResolvedModel(
        uri=data["uri"],
        local_dir=local_dir,
        sha256=digest,
        run_id=data["run_id"],
        registered_name=data["registered_name"],
        registered_version=data["registered_version"],
        flavors=tuple(data["flavors"]),
        features=[FeatureSpec(name, kind) for name, kind in features] if features is not None else None,
        tensor_width=data["tensor_width"],
        profile=ReferenceProfile.model_validate(data["profile"]) if data["profile"] is not None else None,
        tags=data["tags"],
    )
