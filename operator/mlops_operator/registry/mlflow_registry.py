"""The MLflow model registry, as the operator's controllers see it: typed methods, domain errors.

This is the storage layer of the ModelVersion controller: it turns MLflow's exceptions into
:class:`RegistryUnavailable` (transient: raise ``kopf.TemporaryError``) and the ``*NotFound``
errors (permanent: set a condition, do not retry), and MLflow's entities into
:class:`VersionInfo` (plain data, metrics as decimal strings).

MLflow quirks handled here:

- MLflow's HTTP client retries for minutes by default (7 retries, backoff factor 2, 120 s
  timeout). An operator handler must not block that long when MLflow is down, so
  :func:`bound_http_retries` sets, unless the environment already does: 1 retry, backoff factor
  1, jitter 0.5 s, 10 s per request (:data:`OPERATOR_HTTP_DEFAULTS`). Connection refused then
  fails in under a second (the first retry has no backoff, only the jitter); a server that
  accepts and hangs costs at most 2 x 10 s. The variables are read by MLflow on every request,
  and they are process-wide: set them in the chart's env to change them.
- Transport failures surface as a bare ``MlflowException("API request to ... failed with
  exception ...")`` with error code ``INTERNAL_ERROR`` (a server-side 500 has the same code);
  both are transient. ``RESOURCE_DOES_NOT_EXIST``/``NOT_FOUND`` are permanent, and MLflow does
  not say *what* was missing, so the registered model is looked up to tell a missing model
  from a missing version.
- A SQLite-backed store (sandbox, tests) fails with SQLAlchemy's ``OperationalError`` when the
  database is locked or unreachable: transient too.
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeVar

if TYPE_CHECKING:
    from mlflow import MlflowClient

#: The bounded retry policy for the operator process (see the module docstring).
OPERATOR_HTTP_DEFAULTS: Final[Mapping[str, str]] = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}

_TRANSIENT_CODES: Final = frozenset(
    {
        "INTERNAL_ERROR",
        "TEMPORARILY_UNAVAILABLE",
        "REQUEST_LIMIT_EXCEEDED",
        "DEADLINE_EXCEEDED",
        "ABORTED",
        "CANCELLED",
        "SERVICE_UNDER_MAINTENANCE",
        "IO_ERROR",
    }
)
_NOT_FOUND_CODES: Final = frozenset({"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "ENDPOINT_NOT_FOUND"})

#: The tag a training run puts its result JSON in, on the version it registered (written by the
#: trainer of an ``engine: Ray`` run, read by the operator: :meth:`Registry.run_result`).
RUN_RESULT_TAG: Final = "mlops.dev/result"

T = TypeVar("T")


class RegistryError(Exception):
    """Any failure of a registry call."""


class RegistryUnavailable(RegistryError):
    """MLflow could not be reached or failed on its side (connection refused, timeout, 5xx): retry later."""


class RegistryRequestRejected(RegistryError):
    """MLflow refused the request itself (invalid alias, tag, permission): retrying will not help."""


class RegisteredModelNotFound(RegistryError):
    """No registered model of that name."""


class ModelVersionNotFound(RegistryError):
    """The registered model exists but not that version (or no version holds that alias)."""


class RunArtifactNotFound(RegistryError):
    """The run or the artifact path does not exist."""


def bound_http_retries(defaults: Mapping[str, str] = OPERATOR_HTTP_DEFAULTS) -> None:
    """Bound MLflow's HTTP retries/timeouts for this process, unless the environment already sets them."""
    for name, value in defaults.items():
        os.environ.setdefault(name, value)


def error_code(exc: BaseException) -> str | None:
    code = getattr(exc, "error_code", None)
    return code if isinstance(code, str) else None


def is_transient(exc: BaseException) -> bool:
    """Whether an exception from MLflow's client is worth retrying later."""
    import requests

    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for item in chain:
        if isinstance(item, requests.ConnectionError | requests.Timeout | ConnectionError | TimeoutError):
            return True
        if type(item).__name__ in ("OperationalError", "DisconnectionError", "TimeoutError"):
            return True  # SQLAlchemy: database locked, unreachable
    code = error_code(exc)
    if code in _TRANSIENT_CODES:
        return True
    status = getattr(exc, "get_http_status_code", None)
    if callable(status):
        try:
            http = int(status())
        except Exception:  # pragma: no cover - defensive: unknown error codes
            http = 0
        return http >= 500 or http == 429
    return False


def is_not_found(exc: BaseException) -> bool:
    return error_code(exc) in _NOT_FOUND_CODES


@dataclass(frozen=True)
class VersionInfo:
    """One registered model version, as plain data."""

    name: str
    version: str
    run_id: str | None
    source: str
    status: str
    tags: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)
    description: str = ""
    metrics: dict[str, str] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def _decimal(value: float, places: int = 4) -> str:
    return f"{value:.{places}f}"


class Registry:
    """A thin typed wrapper over ``MlflowClient`` for one tracking/registry URI."""

    def __init__(
        self, tracking_uri: str, *, registry_uri: str | None = None, bound_retries: bool = True
    ) -> None:
        if bound_retries:
            bound_http_retries()
        self.tracking_uri = tracking_uri
        self._registry_uri = registry_uri or tracking_uri
        self._mlflow_client: MlflowClient | None = None
        self._client_lock = threading.Lock()

    @property
    def _client(self) -> MlflowClient:
        """MLflow's client, made on first use: importing mlflow costs ~100 MB of memory and a
        second of CPU, which an operator whose resources need no registry call never pays."""
        with self._client_lock:
            if self._mlflow_client is None:
                from mlflow import MlflowClient

                self._mlflow_client = MlflowClient(
                    tracking_uri=self.tracking_uri, registry_uri=self._registry_uri
                )
            return self._mlflow_client

    # -- error mapping -------------------------------------------------------------------------

    def _call(
        self, what: str, fn: Callable[[], T], *, name: str | None = None, version: str | None = None
    ) -> T:
        try:
            return fn()
        except RegistryError:
            raise
        except Exception as exc:
            raise self._map(exc, what, name=name, version=version) from exc

    def _map(self, exc: Exception, what: str, *, name: str | None, version: str | None) -> RegistryError:
        text = redact(f"{what}: {exc}")
        if is_transient(exc):
            return RegistryUnavailable(f"MLflow at {redact(self.tracking_uri)} unavailable during {text}")
        if is_not_found(exc) and name is not None:
            if not self._model_exists(name):
                return RegisteredModelNotFound(f"registered model {name!r} does not exist")
            if version is not None:
                return ModelVersionNotFound(f"model {name!r} has no version {version}")
            return ModelVersionNotFound(text)
        if is_not_found(exc):
            return RunArtifactNotFound(text)
        return RegistryRequestRejected(text)

    def _model_exists(self, name: str) -> bool:
        try:
            self._client.get_registered_model(name)
        except Exception as exc:
            if is_transient(exc):
                raise RegistryUnavailable(
                    redact(f"MLflow at {self.tracking_uri} unavailable: {exc}")
                ) from exc
            if is_not_found(exc):
                return False
            raise RegistryRequestRejected(redact(str(exc))) from exc
        return True

    # -- reads ---------------------------------------------------------------------------------

    def get_version(self, name: str, version: str | int) -> VersionInfo:
        """One version with its tags, aliases, description and its run's metrics."""
        number = str(version)
        entity = self._call(
            f"get version {number} of {name!r}",
            lambda: self._client.get_model_version(name, number),
            name=name,
            version=number,
        )
        return self._info(entity)

    def resolve_alias(self, name: str, alias: str) -> VersionInfo:
        """The version an alias (``champion``, ``production``) points to."""
        try:
            entity = self._client.get_model_version_by_alias(name, alias)
        except Exception as exc:
            if is_transient(exc):
                raise RegistryUnavailable(
                    redact(f"MLflow at {self.tracking_uri} unavailable resolving {name}@{alias}: {exc}")
                ) from exc
            if not self._model_exists(name):
                raise RegisteredModelNotFound(f"registered model {name!r} does not exist") from exc
            if is_not_found(exc) or error_code(exc) == "INVALID_PARAMETER_VALUE":
                raise ModelVersionNotFound(f"model {name!r} has no alias {alias!r}") from exc
            raise RegistryRequestRejected(redact(f"resolve {name}@{alias}: {exc}")) from exc
        return self._info(entity)

    def latest_version(self, name: str) -> VersionInfo | None:
        """The highest version number of a registered model (None when it has no versions)."""
        if not self._call(f"get registered model {name!r}", lambda: self._model_exists(name)):
            raise RegisteredModelNotFound(f"registered model {name!r} does not exist")
        found = self._call(
            f"search versions of {name!r}",
            lambda: self._client.search_model_versions(
                filter_string=f"name = '{_quote(name)}'", order_by=["version_number DESC"], max_results=1
            ),
            name=name,
        )
        return self._info(found[0]) if found else None

    def run_result(self, name: str, identity: Mapping[str, str]) -> dict[str, Any] | None:
        """The result a training run tagged its READY version with (:data:`RUN_RESULT_TAG`), or None.

        The version is found by the run's identity tags (run name, namespace, TrainingJob), as a
        retried trainer finds it. The operator reads a RayJob run's result here: a Ray job's
        driver has no termination message. None when no version of that run carries one (yet).
        """
        clauses = [f"name = '{_quote(name)}'"]
        clauses += [f"tags.`{key}` = '{_quote(value)}'" for key, value in identity.items()]
        found = self._call(
            f"search versions of {name!r} from run {identity}",
            lambda: self._client.search_model_versions(filter_string=" AND ".join(clauses)),
        )
        tagged = [
            entity
            for entity in found
            if str(entity.status) == "READY" and (entity.tags or {}).get(RUN_RESULT_TAG)
        ]
        if not tagged:
            return None
        newest = max(tagged, key=lambda entity: int(entity.version))
        try:
            result = json.loads(newest.tags[RUN_RESULT_TAG])
        except ValueError:
            return None
        return result if isinstance(result, dict) else None

    def production_metrics(self, name: str, alias: str = "production") -> dict[str, str] | None:
        """The run metrics of the version holding ``alias``; None if no version (or no model) holds it."""
        try:
            return self.resolve_alias(name, alias).metrics
        except (RegisteredModelNotFound, ModelVersionNotFound):
            return None

    def run_metrics(self, run_id: str | None) -> dict[str, str]:
        """A run's final metrics as decimal strings ({} for no run or a deleted one)."""
        if not run_id:
            return {}
        try:
            run = self._client.get_run(run_id)
        except Exception as exc:
            if is_transient(exc):
                raise RegistryUnavailable(
                    redact(f"MLflow at {self.tracking_uri} unavailable: {exc}")
                ) from exc
            return {}
        return {key: _decimal(float(value)) for key, value in sorted(run.data.metrics.items())}

    def run_artifact_uri(self, run_id: str | None) -> str | None:
        """Where a run's artifacts live (None for no run, or one the tracking server does not have)."""
        if not run_id:
            return None
        try:
            run = self._client.get_run(run_id)
        except Exception as exc:
            if is_transient(exc):
                raise RegistryUnavailable(
                    redact(f"MLflow at {self.tracking_uri} unavailable: {exc}")
                ) from exc
            return None
        return str(run.info.artifact_uri)

    def download_run_artifact(self, run_id: str, path: str, dst_path: str | None = None) -> str:
        """Download one artifact (file or directory) of a run; the local path."""
        import mlflow.artifacts

        def download() -> str:
            local: str = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=path, dst_path=dst_path, tracking_uri=self.tracking_uri
            )
            return local

        try:
            return download()
        except Exception as exc:
            if is_transient(exc) and not isinstance(exc, FileNotFoundError | OSError):
                raise RegistryUnavailable(
                    redact(
                        f"MLflow at {self.tracking_uri} unavailable downloading {path} of run {run_id}: {exc}"
                    )
                ) from exc
            if is_not_found(exc) or isinstance(exc, FileNotFoundError | OSError):
                raise RunArtifactNotFound(redact(f"run {run_id} has no artifact {path!r}: {exc}")) from exc
            raise RegistryRequestRejected(redact(f"download {path} of run {run_id}: {exc}")) from exc

    # -- writes (idempotent: repeating one changes nothing) ------------------------------------

    def set_alias(self, name: str, alias: str, version: str | int) -> None:
        number = str(version)
        self._call(
            f"set alias {alias!r} of {name!r} to {number}",
            lambda: self._client.set_registered_model_alias(name, alias, number),
            name=name,
            version=number,
        )

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove an alias; a missing alias is not an error (already deleted)."""
        try:
            self._client.delete_registered_model_alias(name, alias)
        except Exception as exc:
            if is_transient(exc):
                raise RegistryUnavailable(
                    redact(f"MLflow at {self.tracking_uri} unavailable: {exc}")
                ) from exc
            if not self._model_exists(name):
                raise RegisteredModelNotFound(f"registered model {name!r} does not exist") from exc
            if is_not_found(exc) or error_code(exc) == "INVALID_PARAMETER_VALUE":
                return
            raise RegistryRequestRejected(redact(f"delete alias {alias!r} of {name!r}: {exc}")) from exc

    def set_version_tags(self, name: str, version: str | int, tags: Mapping[str, str]) -> None:
        number = str(version)
        for key, value in tags.items():
            self._call(
                f"tag version {number} of {name!r}",
                functools.partial(self._client.set_model_version_tag, name, number, key, value),
                name=name,
                version=number,
            )

    def set_description(self, name: str, version: str | int, text: str) -> None:
        number = str(version)
        self._call(
            f"describe version {number} of {name!r}",
            lambda: self._client.update_model_version(name, number, description=text),
            name=name,
            version=number,
        )

    # -- conversion ----------------------------------------------------------------------------

    def _info(self, entity: Any) -> VersionInfo:
        return VersionInfo(
            name=str(entity.name),
            version=str(entity.version),
            run_id=entity.run_id or None,
            source=str(entity.source or ""),
            status=str(entity.status or ""),
            tags={str(k): str(v) for k, v in (entity.tags or {}).items()},
            aliases=sorted(str(a) for a in (entity.aliases or [])),
            description=str(entity.description or ""),
            metrics=self.run_metrics(entity.run_id),
        )


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


_CREDENTIALS = re.compile(r"://[^/@\s]+@")


def redact(text: str) -> str:
    """``text`` without URL credentials (``https://user:token@host`` -> ``https://host``).

    MLflow quotes the full request URL in its connection errors, credentials included.
    """
    return _CREDENTIALS.sub("://", text)
