"""Shared pytest configuration. Fixtures live in plugin modules, one per area."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

pytest_plugins = [
    "tests.fixtures_apiserver",
    "tests.fixtures_sandbox",
    "tests.fixtures_operator",
]

_MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")


@pytest.fixture(autouse=True, scope="module")
def _mlflow_uris_do_not_leak() -> Iterator[None]:
    """``mlflow.set_tracking_uri``/``set_registry_uri``/``set_experiment`` are process-global (module variables and
    environment variables): put them back after each test module, so one module's store is never
    what another module's ``models:/`` URIs resolve against."""
    saved = {key: os.environ.get(key) for key in _MLFLOW_ENV}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if "mlflow" in sys.modules:
        from mlflow.tracking._model_registry import utils as registry
        from mlflow.tracking._tracking_service import utils as tracking

        tracking._tracking_uri = None
        registry._registry_uri = None
        # mlflow.set_experiment keeps the active experiment's id in a global too: an id from
        # another module's store does not exist in the next one's.
        from mlflow.tracking import fluent

        fluent._active_experiment_id = None
