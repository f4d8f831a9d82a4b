"""Loading the dataset a TrainingJob names: CSV or Parquet over fsspec, or a bundled sklearn dataset.

Credentials never come from the spec: fsspec's backends read them from the environment
(``AWS_ACCESS_KEY_ID`` etc. for s3fs), which the Job fills from the Secrets listed in
``spec.dataset.env``. The bytes are read once, bounded by a size limit, hashed (the dataset's
content hash recorded as lineage) and parsed from memory, so the hash is exactly of what was
trained on.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.util
import io
import os
from dataclasses import dataclass
from typing import Any, Final

import pandas as pd

from mlops_operator.api.trainingjob import Dataset
from mlops_operator.trainer.trainer_errors import TrainerError

#: Default bound on the bytes read from a dataset URI (override: ``MLOPS_DATASET_MAX_BYTES``).
DEFAULT_MAX_BYTES: Final = 512 * 1024 * 1024
#: Seconds to wait for an http(s) dataset server (connect and between reads).
HTTP_TIMEOUT_SECONDS: Final = 30.0

SKLEARN_DATASETS: Final = ("iris", "wine", "breast_cancer", "diabetes")
_CHUNK: Final = 1 << 20
_EXTENSIONS: Final = {
    ".csv": "csv",
    ".csv.gz": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
#: Backends fsspec needs an extra package for: scheme -> (module, how to get it).
_OPTIONAL_BACKENDS: Final = {
    "s3": ("s3fs", "install the extra `pip install 'mlops-operator[s3]'` (s3fs) in the trainer image"),
    "gs": ("gcsfs", "install gcsfs in the trainer image"),
}


@dataclass(frozen=True)
class LoadedDataset:
    frame: pd.DataFrame
    uri: str
    sha256: str
    rows: int
    nbytes: int
    #: With production data: one lineage entry per source, in the frame's row order (dataset first).
    sources: tuple[dict[str, Any], ...] = ()


def max_bytes_from_env() -> int:
    """The size bound: ``MLOPS_DATASET_MAX_BYTES`` or :data:`DEFAULT_MAX_BYTES`."""
    raw = os.environ.get("MLOPS_DATASET_MAX_BYTES", "")
    try:
        return int(raw) if raw else DEFAULT_MAX_BYTES
    except ValueError:
        return DEFAULT_MAX_BYTES


def detect_format(uri: str, declared: str) -> str:
    """``csv`` or ``parquet``: the declared format, else the file extension (pure)."""
    if declared != "auto":
        return declared
    path = uri.split("?", 1)[0].lower()
    for extension, fmt in sorted(_EXTENSIONS.items(), key=lambda item: -len(item[0])):
        if path.endswith(extension):
            return fmt
    raise TrainerError(
        "InvalidSpec",
        f"cannot tell the format of dataset {uri!r} from its extension "
        f"(known: {', '.join(sorted(_EXTENSIONS))}); set spec.dataset.format to csv or parquet",
    )


def load_dataset(dataset: Dataset, *, max_bytes: int | None = None) -> LoadedDataset:
    """Read, hash and parse ``dataset.uri``. Raises :class:`TrainerError` with a precise reason."""
    limit = max_bytes_from_env() if max_bytes is None else max_bytes
    uri = dataset.uri
    scheme = uri.split("://", 1)[0].lower()
    if scheme == "sklearn":
        return load_sklearn(uri, dataset.target)
    fmt = detect_format(uri, dataset.format)
    data = read_bytes(uri, limit)
    frame = parse(data, fmt, uri)
    return LoadedDataset(
        frame=frame, uri=uri, sha256=hashlib.sha256(data).hexdigest(), rows=len(frame), nbytes=len(data)
    )


def add_production(
    loaded: LoadedDataset, dataset: Dataset, *, model: str, now: dt.datetime, max_bytes: int | None = None
) -> LoadedDataset:
    """``loaded`` with the labelled production rows of ``dataset.production`` appended.

    The hash of the result covers both sources (each source's own hash is in ``sources``).
    """
    from mlops_operator.trainer.data_validation import feature_names
    from mlops_operator.trainer.production_data import load_production

    production = dataset.production
    if production is None:
        return loaded
    target = dataset.target
    features = [f for f in feature_names(loaded.frame, dataset) if f in loaded.frame.columns]
    rows = load_production(
        production,
        model=model,
        target=target,
        features=features,
        target_like=loaded.frame[target] if target in loaded.frame.columns else None,
        now=now,
        max_bytes=max_bytes_from_env() if max_bytes is None else max_bytes,
    )
    frame = pd.concat([loaded.frame, rows.frame], ignore_index=True)
    base = {"name": "dataset", "uri": loaded.uri, "rows": loaded.rows, "sha256": loaded.sha256}
    sha256 = hashlib.sha256(f"{loaded.sha256}\n{rows.source['sha256']}".encode()).hexdigest()
    return LoadedDataset(
        frame=frame,
        uri=loaded.uri,
        sha256=sha256,
        rows=len(frame),
        nbytes=loaded.nbytes,
        sources=(base, rows.source),
    )


def read_bytes(uri: str, max_bytes: int) -> bytes:
    """All bytes at ``uri`` through fsspec, refusing more than ``max_bytes``.

    fsspec turns an HTTP 404 and a missing file alike into ``FileNotFoundError`` (permanent);
    connection errors, timeouts and 5xx answers are transient (the Job may retry them).
    """
    scheme = uri.split("://", 1)[0].lower()
    if scheme in _OPTIONAL_BACKENDS:
        module, how = _OPTIONAL_BACKENDS[scheme]
        if importlib.util.find_spec(module) is None:
            raise TrainerError("DatasetUnreachable", f"cannot read {uri}: {scheme}:// needs {module}; {how}")
    import fsspec

    options: dict[str, Any] = {}
    if scheme in ("http", "https"):
        import aiohttp

        options["client_kwargs"] = {
            "timeout": aiohttp.ClientTimeout(connect=HTTP_TIMEOUT_SECONDS, sock_read=HTTP_TIMEOUT_SECONDS)
        }
        # block_size=0: stream the body (no HEAD/range requests, which simple servers lack).
        options["block_size"] = 0
    try:
        with fsspec.open(uri, "rb", **options) as handle:
            size = _known_size(handle)
            if size is not None and size > max_bytes:
                raise _too_big(uri, size, max_bytes)
            buffer = io.BytesIO()
            while chunk := handle.read(_CHUNK):
                buffer.write(chunk)
                if buffer.tell() > max_bytes:
                    raise _too_big(uri, None, max_bytes)
            return buffer.getvalue()
    except TrainerError:
        raise
    except FileNotFoundError as exc:
        # fsspec's http backend reports *any* failure of its first request (connection refused
        # included) as FileNotFoundError: the cause tells a missing file from a network error.
        network = _network_cause(exc)
        if network is not None:
            raise TrainerError(
                "DatasetUnreachable",
                f"cannot connect to the server of dataset {uri}: {_describe(network)}",
                transient=True,
            ) from exc
        status = _http_status(exc)
        if status is not None and (status >= 500 or status in (408, 429)):
            raise TrainerError(
                "DatasetUnreachable", f"cannot read dataset {uri}: HTTP {status}", transient=True
            ) from exc
        detail = f"HTTP {status}" if status is not None else _describe(exc)
        raise TrainerError("DatasetUnreachable", f"dataset {uri} not found ({detail})") from exc
    except PermissionError as exc:
        raise TrainerError(
            "DatasetUnreachable",
            f"access to dataset {uri} denied ({_describe(exc)}); check the credentials in spec.dataset.env",
        ) from exc
    except IsADirectoryError as exc:
        raise TrainerError("DatasetUnreachable", f"dataset {uri} is a directory, not a file") from exc
    except ImportError as exc:
        raise TrainerError("DatasetUnreachable", f"cannot read {uri}: {_describe(exc)}") from exc
    except Exception as exc:  # network errors of aiohttp/botocore/...: worth another attempt
        status = _http_status(exc)
        transient = status is None or status >= 500 or status in (408, 429)
        detail = f"HTTP {status}" if status is not None else _describe(exc)
        raise TrainerError(
            "DatasetUnreachable", f"cannot read dataset {uri}: {detail}", transient=transient
        ) from exc


def _known_size(handle: Any) -> int | None:
    size = getattr(handle, "size", None)
    return int(size) if isinstance(size, int) else None


def _too_big(uri: str, size: int | None, max_bytes: int) -> TrainerError:
    actual = f"{size} bytes" if size is not None else f"more than {max_bytes} bytes"
    return TrainerError(
        "DatasetMalformed",
        f"dataset {uri} is {actual}, over the trainer's limit of {max_bytes} bytes "
        "(raise MLOPS_DATASET_MAX_BYTES, or sample the data)",
    )


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _network_cause(exc: BaseException) -> BaseException | None:
    """The connection-level error behind ``exc``, if any (refused, reset, timed out, DNS)."""
    import aiohttp

    for cause in _causes(exc)[1:]:
        if isinstance(cause, aiohttp.ClientConnectionError | ConnectionError | TimeoutError):
            return cause
    return None


def _http_status(exc: BaseException) -> int | None:
    for candidate in _causes(exc):
        status = getattr(candidate, "status", None) or getattr(candidate, "code", None)
        if isinstance(status, int) and 100 <= status < 600:
            return status
    return None


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def parse(data: bytes, fmt: str, uri: str) -> pd.DataFrame:
    """Bytes to a DataFrame; anything pandas or pyarrow cannot parse is ``DatasetMalformed``."""
    try:
        if fmt == "parquet":
            frame = pd.read_parquet(io.BytesIO(data))
        else:
            separator = "\t" if uri.lower().split("?", 1)[0].endswith(".tsv") else ","
            compression = "gzip" if data[:2] == b"\x1f\x8b" else None
            frame = pd.read_csv(io.BytesIO(data), sep=separator, compression=compression)
    except Exception as exc:
        raise TrainerError(
            "DatasetMalformed", f"dataset {uri} is not valid {fmt.upper()}: {_describe(exc)}"
        ) from exc
    if frame.shape[1] == 0 or frame.empty:
        raise TrainerError("DatasetMalformed", f"dataset {uri} has no rows or no columns")
    duplicated = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
    if duplicated:
        raise TrainerError("DatasetMalformed", f"dataset {uri} repeats the columns {duplicated}")
    frame.columns = [str(c) for c in frame.columns]
    return frame


def load_sklearn(uri: str, target: str) -> LoadedDataset:
    """A dataset bundled with scikit-learn (loaded offline; ``fetch_*`` datasets are not offered).

    Feature columns keep scikit-learn's names (``sepal length (cm)``); the target column is named
    ``spec.dataset.target``. Classifier targets are the class names as strings (``setosa``), so
    the model predicts readable labels; ``diabetes`` keeps its numeric target. The content hash is
    the sha256 of the frame as canonical CSV.
    """
    from sklearn import datasets

    name = uri.split("://", 1)[1].strip("/").lower()
    if name not in SKLEARN_DATASETS:
        raise TrainerError(
            "DatasetUnreachable",
            f"unknown bundled dataset {uri!r}; available: "
            + ", ".join(f"sklearn://{n}" for n in SKLEARN_DATASETS),
        )
    bunch = getattr(datasets, f"load_{name}")(as_frame=True)
    frame: pd.DataFrame = bunch.frame.copy()
    frame = frame.drop(columns=["target"])
    if name == "diabetes":
        frame[target] = bunch.target.astype("float64")
    else:
        names = [str(n) for n in bunch.target_names]
        frame[target] = pd.Series([names[int(i)] for i in bunch.target], dtype=object, index=frame.index)
    canonical = frame.to_csv(index=False, lineterminator="\n").encode()
    return LoadedDataset(
        frame=frame,
        uri=uri,
        sha256=hashlib.sha256(canonical).hexdigest(),
        rows=len(frame),
        nbytes=len(canonical),
    )
