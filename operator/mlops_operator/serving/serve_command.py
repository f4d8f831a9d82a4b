"""``mlops-operator serve``: serve one registered model over HTTP.

Order of work, so that every failure an operator can fix is reported before anything slow or
unsafe happens, with a non-zero exit: settings -> bind the port (taken: exit) -> resolve the
model in MLflow (unreachable, unknown: exit) -> download and verify sha256 (mismatch: exit,
nothing deserialised) -> serve, loading the model in the background (readiness 503 until
loaded; a load failure stops the server with exit 1).
"""

from __future__ import annotations

import argparse
import logging

from pydantic import ValidationError

from mlops_operator.logging_setup import configure_logging, log_format_from_env
from mlops_operator.registry.artifacts import ModelResolutionError, resolve_model
from mlops_operator.registry.mlflow_registry import bound_http_retries
from mlops_operator.serving.hosts import PortInUseError, bind_socket, run_bentoml, run_uvicorn
from mlops_operator.serving.loader import create_app
from mlops_operator.serving.serve_settings import ServeSettings

logger = logging.getLogger("mlops_operator.serving")

EXIT_USAGE = 2
EXIT_FAILED = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``serve``; each has an ``MLOPS_SERVE_<FLAG>`` environment equivalent."""
    # Defaults are None so that unset flags fall through to MLOPS_SERVE_* and then to the
    # defaults in ServeSettings (one place).
    add = parser.add_argument
    add("--model-uri", help="models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN_ID/PATH or a local path")
    add("--host", help="address to listen on (default 0.0.0.0)")
    add("--port", type=int, help="port to listen on (default 8080)")
    add("--runtime", choices=["uvicorn", "bentoml"], help="ASGI host (default uvicorn)")
    add("--model-name", help="name reported in /v2 and metrics (default: the registered name)")
    add("--model-version", help="version reported in responses and metrics (default: the registered version)")
    add("--expected-sha256", help="refuse to load unless the model directory hashes to this")
    add("--max-batch-size", type=int, help="rows per coalesced predict call (0/1: off; default: measured)")
    add(
        "--max-batch-wait-ms",
        type=float,
        help="longest an idle model waits for a batch to fill (default 0: start at once)",
    )
    add("--max-body-bytes", type=int, help="larger request bodies get 413 (default 1 MiB)")
    add(
        "--body-timeout-seconds",
        type=float,
        help="a request body not complete within this gets 408 and the connection closed (default 30)",
    )
    add(
        "--header-timeout-seconds",
        type=float,
        help="uvicorn: request headers not complete within this get 408 and the connection closed "
        "(default 10)",
    )
    add("--max-header-bytes", type=int, help="uvicorn: larger request headers get 431 (default 65536)")
    add("--max-rows", type=int, help="most rows per request (default 1000)")
    add("--max-inflight", type=int, help="inference requests in flight before 503 (default 64)")
    add(
        "--drift-method", choices=["PSI", "KS", "ChiSquare"], help="per-feature drift statistic (default PSI)"
    )
    add("--drift-threshold", type=float, help="drift threshold (default: the method's)")
    add("--drift-window", type=int, help="rows in the drift window (default 1000)")
    add("--drift-min-samples", type=int, help="rows before drift is reported")
    add("--drift-share", type=float, help="share of drifted features that means dataset drift (default 0.5)")
    add("--accuracy-window", type=int, help="labelled outcomes in the accuracy window (default 500)")
    add("--no-monitoring", dest="monitoring", action="store_const", const=False, help="no drift/accuracy")
    add("--workers", type=int, help="BentoML worker processes (default 1)")
    add("--download-dir", help="where to download the artifacts (default: a temporary directory)")
    add(
        "--advertise-address",
        help="IPv4:PORT the other replicas reach this one at: /feedback is forwarded to the replica "
        "that made the prediction (the operator sets it from the pod IP)",
    )


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    """Flags over ``MLOPS_SERVE_*`` over defaults."""
    given = {
        name: value
        for name, value in vars(args).items()
        if value is not None and not name.startswith("_") and name in ServeSettings.model_fields
    }
    return ServeSettings(**given)


def _fail(message: str, code: int = EXIT_FAILED) -> int:
    logger.error("%s", message)
    return code


def run(args: argparse.Namespace) -> int:
    """Run the server; returns the process exit code."""
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        configure_logging(log_format_from_env())
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return _fail(f"invalid settings: {problems} (set --model-uri or MLOPS_SERVE_MODEL_URI)", EXIT_USAGE)
    identity = {"model": settings.model_name or "", "modelVersion": settings.model_version or ""}
    configure_logging(settings.log_format, static=identity)
    # MLflow's HTTP client retries for minutes by default; a pod should say what is wrong now
    # (its restart policy retries), so keep the defaults short unless the user set them.
    bound_http_retries()
    try:
        sock = bind_socket(settings.host, settings.port)
    except PortInUseError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"cannot listen on {settings.host}:{settings.port}: {exc}")
    try:
        resolved = resolve_model(
            settings.model_uri, dst_dir=settings.download_dir, expected_sha256=settings.expected_sha256
        )
    except ModelResolutionError as exc:
        sock.close()
        return _fail(str(exc))
    # From now on every line names the model and version being served (as /metrics labels them).
    identity = {
        "model": settings.model_name or resolved.registered_name or "",
        "modelVersion": settings.model_version or resolved.registered_version or "",
    }
    configure_logging(settings.log_format, static=identity)
    logger.info(
        "resolved %s (run %s) to %s, sha256 %s%s",
        settings.model_uri,
        resolved.run_id,
        resolved.local_dir,
        resolved.sha256,
        " (verified)" if settings.expected_sha256 else "",
    )
    if settings.runtime == "bentoml":
        return run_bentoml(settings, resolved, sock)
    return run_uvicorn(create_app(settings, resolved), sock)
