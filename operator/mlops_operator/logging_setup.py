"""Logging of every command (operator, trainer, server): plain text, or one JSON object per line.

``MLOPS_LOG_FORMAT=json`` (the chart's ``config.logFormat``; the operator hands it to the pods
it creates) makes each record one line of JSON a log pipeline reads without parsing rules:

    {"time": "2025-03-01T10:00:00.123Z", "level": "INFO", "logger": "kopf.objects",
     "message": "...", "namespace": "ml", "name": "iris", "kind": "InferenceService"}

``namespace``, ``name`` and ``kind`` come from kopf's per-object loggers: kopf hands each
handler a ``LoggerAdapter`` (``kopf._core.actions.loggers.ObjectLogger``) whose ``extra`` puts
a ``k8s_ref`` dict (apiVersion, kind, name, uid, namespace) on every record. A record logged
with ``extra={"model_version": "3"}`` gets ``modelVersion``; a process that serves or trains
for one resource passes those fields once, as ``static`` (the trainer its TrainingJob, the
server its model and version). Exceptions go in ``exception`` as text, inside the same line.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any, Final, Literal, TextIO

LogFormat = Literal["plain", "json"]
#: The variable every command reads (the operator's Settings.log_format, ServeSettings.log_format).
LOG_FORMAT_ENV: Final = "MLOPS_LOG_FORMAT"

PLAIN_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Record attributes (``extra=``) that become JSON fields, and their names there.
RECORD_FIELDS: Final = {"model": "model", "model_version": "modelVersion"}
#: The fields of kopf's ``k8s_ref`` that are kept.
K8S_REF_FIELDS: Final = ("namespace", "name", "kind")


class JsonLogFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and the resource it is about."""

    def __init__(self, static: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.static = {key: value for key, value in (static or {}).items() if value}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **self.static,
        }
        entry["time"] = entry["time"].replace("+00:00", "Z")
        ref = getattr(record, "k8s_ref", None)
        if isinstance(ref, Mapping):
            entry.update({key: ref[key] for key in K8S_REF_FIELDS if ref.get(key)})
        for attribute, key in RECORD_FIELDS.items():
            value = getattr(record, attribute, None)
            if value is not None:
                entry[key] = str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class _OurHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`configure_logging` installs (so that it replaces only its own)."""


def configure_logging(
    log_format: str,
    *,
    level: int = logging.INFO,
    static: Mapping[str, str] | None = None,
    stream: TextIO | None = None,
) -> None:
    """Send every record of the process to ``stream`` (stderr) in ``log_format``; call once, first.

    Installs one handler on the root logger, so libraries that log before or after (kopf,
    uvicorn when told not to configure its own, MLflow) come out in the same format. A second
    call replaces the handler the first installed; handlers someone else added (a test
    runner's log capture, say) are left alone.
    """
    handler = _OurHandler(stream if stream is not None else sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonLogFormatter(static))
    elif log_format == "plain":
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    else:
        raise ValueError(f"log format {log_format!r}: expected plain or json")
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _OurHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Python's warnings are printed to stderr directly unless routed through logging.
    logging.captureWarnings(True)


def log_format_from_env(environ: Mapping[str, str] | None = None) -> LogFormat:
    """``MLOPS_LOG_FORMAT`` read leniently, for reporting a failure before the settings parse."""
    value = (environ if environ is not None else os.environ).get(LOG_FORMAT_ENV, "").strip().lower()
    return "json" if value == "json" else "plain"
