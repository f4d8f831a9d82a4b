"""Labelled production rows, read from what the model servers captured (``serving/capture.py``).

The capture store holds two tables per model (Hive-partitioned by ``model`` and ``date``):
predictions (request id, time, features, prediction) and labels (request id, label, time),
written by every replica independently. Here they are joined on the request id (the first label
of a request wins, as the servers' monitors count it), limited to ``since`` and ``maxRows`` (the
most recent), and turned into rows of the training frame: the captured features, the label as
the target. Predictions never labelled are not used.

Failures are the run's, with the source named: no labelled rows yet, or captured columns that no
longer match the model's features, fail with ``DataValidationFailed``; storage that cannot be
read with ``DatasetUnreachable``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import re
from dataclasses import dataclass
from typing import Any, Final

import pandas as pd

from mlops_operator.api.trainingjob import ProductionData
from mlops_operator.serving.capture import LABELS, PREDICTION_COLUMNS, PREDICTIONS
from mlops_operator.trainer.trainer_errors import TrainerError

_DATE_DIR: Final = re.compile(r"/date=(\d{4}-\d{2}-\d{2})/[^/]+\.parquet$")
_AGE_UNIT: Final = {"d": 86400, "h": 3600, "m": 60}


@dataclass(frozen=True)
class ProductionRows:
    """The production source, ready to merge: features + target, and its lineage entry."""

    frame: pd.DataFrame
    source: dict[str, Any]


def age_seconds(age: str) -> int:
    """``"7d"`` -> 604800 (the API's pattern guarantees the form)."""
    return int(age[:-1]) * _AGE_UNIT[age[-1]]


def join_labels(predictions: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Labelled predictions: each prediction with the first label its request id received (pure).

    A request id predicted twice (a client that reuses ``x-request-id``) keeps its latest
    prediction; labels without a captured prediction (sampled out, lost in a crash, older than
    ``since``) are dropped.
    """
    if predictions.empty or labels.empty:
        return predictions.iloc[0:0].assign(label=pd.Series(dtype=object), label_time=pd.Series(dtype=object))
    first_labels = (
        labels.sort_values("label_time", kind="stable")
        .drop_duplicates("request_id", keep="first")
        .loc[:, ["request_id", "label", "label_time"]]
    )
    latest = predictions.sort_values("request_time", kind="stable").drop_duplicates("request_id", keep="last")
    joined = latest.merge(first_labels, on="request_id", how="inner", validate="one_to_one")
    return joined.sort_values(["request_time", "request_id"], kind="stable").reset_index(drop=True)


def cast_labels(labels: pd.Series, like: pd.Series | None) -> tuple[pd.Series, list[str]]:
    """Captured labels (strings) in the dataset's target dtype, and the values that do not fit."""
    if like is None or not pd.api.types.is_numeric_dtype(like) or pd.api.types.is_bool_dtype(like):
        return labels.astype(object), []
    numbers = pd.to_numeric(labels, errors="coerce")
    bad = sorted({str(v) for v in labels[numbers.isna() & labels.notna()]})
    if not bad and pd.api.types.is_integer_dtype(like) and bool((numbers == numbers.round()).all()):
        numbers = numbers.astype(like.dtype)
    return numbers, bad


def load_production(
    source: ProductionData,
    *,
    model: str,
    target: str,
    features: list[str],
    target_like: pd.Series | None,
    now: dt.datetime,
    max_bytes: int,
) -> ProductionRows:
    """Read, check, join and bound the captured rows of ``model`` under ``source.uri``."""
    model = source.model or model
    name = f"production source {source.uri} (model {model})"
    since = now - dt.timedelta(seconds=age_seconds(source.since))
    predictions, labels = _read_tables(source.uri, model, since.date(), max_bytes, name, features)
    if not predictions.empty:
        predictions = predictions[predictions["request_time"] >= pd.Timestamp(since)]
    joined = join_labels(predictions, labels)
    if len(joined) > source.max_rows:
        joined = joined.iloc[-source.max_rows :].reset_index(drop=True)
    if len(joined) < source.min_rows:
        raise TrainerError(
            "DataValidationFailed",
            f"{name}: {len(joined)} labelled rows since {since.isoformat(timespec='seconds')}, fewer than "
            f"production.minRows={source.min_rows} ({len(predictions)} predictions and {len(labels)} labels "
            "captured in that time)",
        )
    values, bad = cast_labels(joined["label"], target_like)
    if bad:
        raise TrainerError(
            "DataValidationFailed",
            f"{name}: labels {bad[:5]} do not fit the dataset's target column {target!r} "
            f"(dtype {target_like.dtype if target_like is not None else 'object'})",
        )
    frame = joined.loc[:, features].copy()
    frame[target] = values.to_numpy()
    canonical = frame.to_csv(index=False, lineterminator="\n").encode()
    times = joined["request_time"]
    return ProductionRows(
        frame=frame,
        source={
            "name": "production",
            "uri": source.uri,
            "model": model,
            "rows": len(frame),
            "sha256": hashlib.sha256(canonical).hexdigest(),
            "firstRequestTime": _iso(times.min()),
            "lastRequestTime": _iso(times.max()),
        },
    )


def _iso(value: Any) -> str:
    return str(pd.Timestamp(value).tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%SZ"))


def _read_tables(
    uri: str, model: str, first_day: dt.date, max_bytes: int, name: str, features: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    import fsspec
    import pyarrow.parquet as pq

    try:
        fs, root = fsspec.core.url_to_fs(uri)
    except Exception as exc:
        raise TrainerError("DatasetUnreachable", f"cannot read {name}: {type(exc).__name__}: {exc}") from exc
    root = root.rstrip("/")
    frames: dict[str, list[pd.DataFrame]] = {PREDICTIONS: [], LABELS: []}
    total = 0
    mismatched: dict[str, list[str]] = {}
    for table in (PREDICTIONS, LABELS):
        try:
            paths = sorted(fs.glob(f"{root}/{table}/model={model}/date=*/*.parquet"))
        except Exception as exc:
            raise TrainerError(
                "DatasetUnreachable", f"cannot list {name}: {type(exc).__name__}: {exc}", transient=True
            ) from exc
        for path in paths:
            match = _DATE_DIR.search(path)
            if match is None or dt.date.fromisoformat(match.group(1)) < first_day:
                continue
            try:
                data = fs.cat_file(path)
            except Exception as exc:
                raise TrainerError(
                    "DatasetUnreachable", f"cannot read {path} of {name}: {type(exc).__name__}: {exc}"
                ) from exc
            total += len(data)
            if total > max_bytes:
                raise TrainerError(
                    "DatasetMalformed",
                    f"{name} holds more than {max_bytes} bytes since {first_day}: shorten production.since "
                    "or raise MLOPS_DATASET_MAX_BYTES",
                )
            frame = pq.read_table(io.BytesIO(data)).to_pandas()
            if table == PREDICTIONS:
                missing = [f for f in features if f not in frame.columns]
                if missing:
                    captured = [c for c in frame.columns if c not in PREDICTION_COLUMNS]
                    mismatched.setdefault(str(missing), captured)
                    continue
            frames[table].append(frame)
    if mismatched:
        missing_text, captured = next(iter(mismatched.items()))
        raise TrainerError(
            "DataValidationFailed",
            f"{name}: captured rows do not match the model's features: missing columns {missing_text} "
            f"(captured feature columns: {captured[:20]}); the features changed since these rows were "
            "captured: shorten production.since or set spec.dataset.features",
        )
    predictions = pd.concat(frames[PREDICTIONS], ignore_index=True) if frames[PREDICTIONS] else _empty(True)
    labels = pd.concat(frames[LABELS], ignore_index=True) if frames[LABELS] else _empty(False)
    return predictions, labels


def _empty(predictions: bool) -> pd.DataFrame:
    if predictions:
        return pd.DataFrame(
            {
                "request_id": pd.Series(dtype=object),
                "request_time": pd.Series(dtype="datetime64[ms, UTC]"),
            }
        )
    return pd.DataFrame(
        {
            "request_id": pd.Series(dtype=object),
            "label": pd.Series(dtype=object),
            "label_time": pd.Series(dtype="datetime64[ms, UTC]"),
        }
    )
