"""Durable capture of production data: what the server predicted, and the labels it received.

Layout (Hive-partitioned Parquet under ``uri``, through fsspec: ``file://`` in the sandbox,
``s3://`` on clusters)::

    <uri>/predictions/model=<model>/date=<YYYY-MM-DD>/<version>-<process>-<seq>.parquet
        request_id, model_version, request_time, prediction, <one float64 column per feature>
    <uri>/labels/model=<model>/date=<YYYY-MM-DD>/<version>-<process>-<seq>.parquet
        request_id, model_version, label, label_time

Every flush writes new files with a name unique to the process and never rewrites one, so any
number of replicas write side by side without coordination. A label is a row of its own (an
event keyed by request id), written by whichever replica accepted it, and the reader
(:mod:`mlops_operator.trainer.production_data`) joins labels to predictions; a prediction
written by one replica and labelled on another joins the same way.

The request path only appends a reference to the rows it already has (the parsed matrix and
the model's answer) to a buffer; a background thread turns buffers into Parquet and writes
them every ``flush_seconds`` or as soon as ``flush_rows`` rows wait, whichever comes first.
Shutdown (SIGTERM, the host's lifespan) writes what is left.

What a crash (SIGKILL, OOM) loses: the rows not yet written, at most ``flush_rows`` rows or
``flush_seconds`` of traffic while storage keeps up with traffic. When it does not, at most
``2 * flush_rows`` rows wait in memory (the batch being written and the next one); rows
beyond that are dropped and counted (reason ``backlog``), never queued without bound. A file
appears whole or not at all (local files are written to a hidden temporary name and renamed;
an object store PUT is atomic), so a crash never leaves a file the reader cannot read.

Bad storage never reaches the client: a write that fails drops its rows, counts them
(``mlops_model_capture_dropped_rows_total{reason="writeError"}``), and ``/monitoring`` says so
in its ``capture`` block, which the operator copies into ``status.monitoring.capture``.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import os
import secrets
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from mlops_operator.monitoring.accuracy import label_key

logger = logging.getLogger(__name__)

PREDICTIONS: Final = "predictions"
LABELS: Final = "labels"
#: Columns of every predictions file besides the features (a feature may not take these names).
PREDICTION_COLUMNS: Final = ("request_id", "model_version", "request_time", "prediction")
LABEL_COLUMNS: Final = ("request_id", "model_version", "label", "label_time")
DROP_REASONS: Final = ("sampled", "writeError", "maxBytes", "backlog")

_SAMPLE_SPACE: Final = 1 << 32


@dataclass(frozen=True)
class CaptureConfig:
    """Where and how much to capture (``spec.capture`` of the InferenceService)."""

    uri: str
    sample_rate: float = 1.0
    flush_rows: int = 1000
    flush_seconds: float = 10.0
    #: Bytes this process writes per UTC day (predictions and labels); beyond, rows are dropped.
    max_bytes_per_day: int = 1 << 30


def sampled(request_id: str, rate: float) -> bool:
    """Whether ``request_id`` is in the sample: a hash of the id, so every replica agrees.

    The label of a request is captured exactly when its prediction was, wherever it lands.
    """
    if rate >= 1.0:
        return True
    return zlib.crc32(request_id.encode()) < rate * _SAMPLE_SPACE


def partition_dir(uri: str, table: str, model: str, day: dt.date) -> str:
    """The directory of one table's files for ``model`` on ``day`` (Hive-style ``key=value``)."""
    return f"{uri.rstrip('/')}/{table}/model={model}/date={day.isoformat()}"


@dataclass
class _Batch:
    """Buffered rows of one table: the request path appends, the writer thread takes the whole."""

    parts: list[tuple[Any, ...]]
    rows: int = 0


class CaptureWriter:
    """Buffers predictions and labels and writes them as Parquet from a background thread."""

    def __init__(
        self,
        config: CaptureConfig,
        *,
        model_name: str,
        model_version: str,
        feature_names: Sequence[str],
        classification: bool,
        registry: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        import fsspec

        clash = sorted(set(feature_names) & set(PREDICTION_COLUMNS))
        if clash:
            raise ValueError(f"features {clash} clash with the capture's own columns {PREDICTION_COLUMNS}")
        self.config = config
        self.model_name = model_name
        self.model_version = model_version
        self.feature_names = list(feature_names)
        self.classification = classification
        self._clock = clock
        self.last_error: str | None = None
        self._failing = False
        try:
            self._fs, root = fsspec.core.url_to_fs(config.uri)
        except Exception as exc:  # unknown scheme, backend not installed (s3fs), bad options
            # Serving goes on; every write fails and counts its rows (see _put).
            self._fs, root = None, config.uri
            self.last_error = f"cannot use {config.uri}: {type(exc).__name__}: {exc}"[:500]
            self._failing = True
            logger.warning("capture: %s (rows are dropped and counted)", self.last_error)
        self._root = root.rstrip("/")
        protocol = getattr(self._fs, "protocol", ())
        self._local = "file" in (protocol if isinstance(protocol, tuple) else (protocol,))
        self._process = f"{secrets.token_hex(4)}{os.getpid():x}"
        self._seq = 0
        self._lock = threading.Lock()  # the buffers and counters
        self._write_lock = threading.Lock()  # one flush at a time
        self._predictions = _Batch([])
        self._labels = _Batch([])
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.written = {PREDICTIONS: 0, LABELS: 0}
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self.files = 0
        self.bytes_by_day: dict[str, int] = {}
        self._rows_counter: Any = None
        self._dropped_counter: Any = None
        if registry is not None:
            self._bind_metrics(registry)
        self._thread = threading.Thread(target=self._run, name="mlops-capture-writer", daemon=True)
        self._thread.start()

    def _bind_metrics(self, registry: Any) -> None:
        from prometheus_client import Counter

        from mlops_operator.monitoring.server_metrics import CAPTURE_DROPPED_ROWS_TOTAL, CAPTURE_ROWS_TOTAL

        labels = {"model": self.model_name, "version": self.model_version}
        rows = Counter(
            CAPTURE_ROWS_TOTAL.removesuffix("_total"),
            "Rows of production data written to the capture store, by table.",
            ("model", "version", "table"),
            registry=registry,
        )
        dropped = Counter(
            CAPTURE_DROPPED_ROWS_TOTAL.removesuffix("_total"),
            "Rows of production data not captured, by reason (sampled out, write error, size bound, backlog).",
            ("model", "version", "reason"),
            registry=registry,
        )
        self._rows_counter = {t: rows.labels(**labels, table=t) for t in (PREDICTIONS, LABELS)}
        self._dropped_counter = {r: dropped.labels(**labels, reason=r) for r in DROP_REASONS}

    # --- request path ---------------------------------------------------------------------------

    def add(self, matrix: npt.NDArray[np.float64], predictions: Sequence[Any], ids: Sequence[str]) -> None:
        """Queue the rows of one answered request (call it after the response went out)."""
        now = self._clock()
        rate = self.config.sample_rate
        if rate < 1.0:
            keep = [i for i, request_id in enumerate(ids) if sampled(request_id, rate)]
            if len(keep) < len(ids):
                self._drop("sampled", len(ids) - len(keep))
                if not keep:
                    return
                matrix = matrix[keep]
                predictions = [predictions[i] for i in keep]
                ids = [ids[i] for i in keep]
        self._queue(self._predictions, (matrix, predictions, ids, now), len(ids))

    def label(self, request_id: str, label: Any) -> None:
        """Queue a label the monitor accepted for ``request_id``."""
        if not sampled(request_id, self.config.sample_rate):
            return  # its prediction was not captured either (counted there)
        self._queue(self._labels, (request_id, label, self._clock()), 1)

    def _queue(self, batch: _Batch, part: tuple[Any, ...], rows: int) -> None:
        limit = self.config.flush_rows
        with self._lock:
            if batch.rows >= 2 * limit:
                backlog = True
            else:
                backlog = False
                batch.parts.append(part)
                batch.rows += rows
                full = batch.rows >= limit
        if backlog:
            self._drop("backlog", rows)
        elif full:
            self._wake.set()

    def _drop(self, reason: str, rows: int) -> None:
        with self._lock:
            self.dropped[reason] += rows
        if self._dropped_counter is not None:
            self._dropped_counter[reason].inc(rows)

    # --- writer thread --------------------------------------------------------------------------

    def _run(self) -> None:
        deadline = time.monotonic() + self.config.flush_seconds
        while not self._stop.is_set():
            self._wake.wait(max(0.0, deadline - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                return  # close() writes the rest
            with self._lock:
                full = max(self._predictions.rows, self._labels.rows) >= self.config.flush_rows
            if not full and time.monotonic() < deadline:
                continue  # a wake-up left over from rows a flush already took
            try:
                self.flush()
            except Exception:  # never let the writer thread die: the next flush retries
                logger.exception("capture flush failed")
            deadline = time.monotonic() + self.config.flush_seconds

    def flush(self) -> None:
        """Write everything buffered now (from the writer thread, tests, and shutdown)."""
        with self._write_lock:
            with self._lock:
                predictions, self._predictions = self._predictions, _Batch([])
                labels, self._labels = self._labels, _Batch([])
            if predictions.rows:
                self._write_predictions(predictions)
            if labels.rows:
                self._write_labels(labels)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the writer thread and write what is left (the host's shutdown calls this)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        self.flush()

    def _write_predictions(self, batch: _Batch) -> None:
        import pyarrow as pa

        matrices = [part[0] for part in batch.parts]
        matrix = matrices[0] if len(matrices) == 1 else np.concatenate(matrices)
        times = np.repeat(
            np.array([int(part[3] * 1000) for part in batch.parts], dtype="int64"),
            [len(part[2]) for part in batch.parts],
        )
        values = [v for part in batch.parts for v in part[1]]
        predictions = [label_key(v) if self.classification else repr(float(v)) for v in values]
        columns: dict[str, Any] = {
            "request_id": pa.array([i for part in batch.parts for i in part[2]], pa.string()),
            "model_version": pa.array([self.model_version] * batch.rows, pa.string()),
            "request_time": pa.array(times, pa.timestamp("ms", tz="UTC")),
            "prediction": pa.array(predictions, pa.string()),
        }
        for index, name in enumerate(self.feature_names):
            columns[name] = pa.array(matrix[:, index], pa.float64())
        self._write(PREDICTIONS, pa.table(columns), times)

    def _write_labels(self, batch: _Batch) -> None:
        import pyarrow as pa

        times = np.array([int(part[2] * 1000) for part in batch.parts], dtype="int64")
        table = pa.table(
            {
                "request_id": pa.array([part[0] for part in batch.parts], pa.string()),
                "model_version": pa.array([self.model_version] * batch.rows, pa.string()),
                "label": pa.array(
                    [label_key(p[1]) if self.classification else repr(float(p[1])) for p in batch.parts],
                    pa.string(),
                ),
                "label_time": pa.array(times, pa.timestamp("ms", tz="UTC")),
            }
        )
        self._write(LABELS, table, times)

    def _write(self, kind: str, table: Any, times_ms: npt.NDArray[np.int64]) -> None:
        """One file per UTC day the rows fall on (a batch that spans midnight makes two)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        days = (times_ms // 86_400_000).astype("int64")
        distinct = np.unique(days)
        for day_number in distinct:
            day = dt.date(1970, 1, 1) + dt.timedelta(days=int(day_number))
            part = table if len(distinct) == 1 else table.filter(pa.array(days == day_number))
            rows = part.num_rows
            key = day.isoformat()
            if self.bytes_by_day.get(key, 0) >= self.config.max_bytes_per_day:
                self._drop("maxBytes", rows)
                continue
            buffer = io.BytesIO()
            pq.write_table(part, buffer, compression="zstd")
            data = buffer.getvalue()
            self._seq += 1
            directory = partition_dir(self._root, kind, self.model_name, day)
            name = f"{self.model_version}-{self._process}-{self._seq:06d}.parquet"
            try:
                self._put(directory, name, data)
            except Exception as exc:
                self._failed(kind, rows, exc)
                continue
            with self._lock:
                self.written[kind] += rows
                self.files += 1
                self.bytes_by_day[key] = self.bytes_by_day.get(key, 0) + len(data)
                # Keep the day map small: only today matters for the bound.
                for old in [d for d in self.bytes_by_day if d < key]:
                    del self.bytes_by_day[old]
                recovered, self._failing = self._failing, False
            if recovered:
                logger.info("capture to %s works again", self.config.uri)
            if self._rows_counter is not None:
                self._rows_counter[kind].inc(rows)

    def _put(self, directory: str, name: str, data: bytes) -> None:
        fs = self._fs
        if fs is None:
            raise RuntimeError(self.last_error or "no filesystem")
        if self._local:
            # Whole or nothing: a hidden temporary name (readers skip dot-files), then a rename.
            fs.makedirs(directory, exist_ok=True)
            temporary = f"{directory}/.{name}.tmp"
            with fs.open(temporary, "wb") as handle:
                handle.write(data)
            fs.mv(temporary, f"{directory}/{name}")
        else:
            fs.pipe_file(f"{directory}/{name}", data)

    def _failed(self, kind: str, rows: int, exc: Exception) -> None:
        message = f"cannot write {kind} to {self.config.uri}: {type(exc).__name__}: {exc}"[:500]
        with self._lock:
            first, self._failing = not self._failing, True
            self.last_error = message
        if first:
            logger.warning("%s (rows are dropped and counted until it works)", message)
        self._drop("writeError", rows)

    # --- reporting ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The ``capture`` block of ``/monitoring`` (cumulative since the process began)."""
        with self._lock:
            full = self.bytes_by_day.get(dt.datetime.now(dt.UTC).date().isoformat(), 0) >= (
                self.config.max_bytes_per_day
            )
            state = "Failing" if self._failing else ("Full" if full else "Ok")
            block: dict[str, Any] = {
                "uri": self.config.uri,
                "state": state,
                "sampleRate": self.config.sample_rate,
                "predictions": self.written[PREDICTIONS],
                "labels": self.written[LABELS],
                "files": self.files,
                "buffered": self._predictions.rows + self._labels.rows,
                "dropped": dict(self.dropped),
            }
            if self.last_error:
                block["lastError"] = self.last_error
            return block
