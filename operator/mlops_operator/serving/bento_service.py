"""The BentoML service that hosts the ASGI core (imported by BentoML's worker processes).

``mlops-operator serve --runtime bentoml`` resolves and verifies the model first, then puts
the settings and a manifest of the verified artifacts into ``MLOPS_SERVE_*`` variables and
starts BentoML on this module. Each worker re-hashes the artifacts before loading them.
"""

from __future__ import annotations

import os

import bentoml

from mlops_operator.registry.artifacts import from_manifest
from mlops_operator.serving.hosts import BENTOML_SERVICE_CONFIG, MANIFEST_ENV
from mlops_operator.serving.loader import create_app
from mlops_operator.serving.serve_settings import ServeSettings

_settings = ServeSettings()  # model_uri comes from MLOPS_SERVE_MODEL_URI
_resolved = from_manifest(os.environ[MANIFEST_ENV])
app = create_app(_settings, _resolved)


@bentoml.asgi_app(app, path="/")
@bentoml.service(name="mlops-model-server", workers=_settings.workers, **BENTOML_SERVICE_CONFIG)
class MlopsModelServer:
    """Loads the model when BentoML starts the worker; the mounted app serves every route."""

    def __init__(self) -> None:
        # BentoML does not pass lifespan events to mounted apps: start loading here. The app
        # answers 503 on readiness until the model is loaded and verified.
        app.start_loading()
