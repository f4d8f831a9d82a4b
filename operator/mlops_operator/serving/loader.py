"""From verified artifacts to a running :class:`ServingApp`: model, monitor, app."""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry

from mlops_operator.registry.artifacts import ModelResolutionError, ResolvedModel, load_model
from mlops_operator.serving.asgi_app import ServingApp
from mlops_operator.serving.serve_settings import ServeSettings
from mlops_operator.serving.served_model import ServedModel, build_served_model
from mlops_operator.serving.telemetry import MonitorLike

logger = logging.getLogger(__name__)


def model_identity(settings: ServeSettings, resolved: ResolvedModel) -> tuple[str, str]:
    """The name and version the server reports: flags first, then the registry, then the run."""
    name = settings.model_name or resolved.registered_name or "model"
    version = settings.model_version or resolved.registered_version or (resolved.run_id or "0")[:12]
    return name, version


def load_served_model(resolved: ResolvedModel, name: str, version: str) -> ServedModel:
    """Deserialise and wrap the model; refuses models with non-numeric inputs."""
    features = resolved.features
    if features is not None:
        non_numeric = [f"{f.name} ({f.type})" for f in features if not f.numeric]
        if non_numeric:
            raise ModelResolutionError(
                f"model {resolved.uri} takes non-numeric features {', '.join(non_numeric[:5])}: "
                "this server serves numeric models only"
            )
    loaded = load_model(resolved)
    return build_served_model(
        estimator=loaded.estimator,
        pyfunc=loaded.pyfunc,
        signature_features=[f.name for f in features] if features else None,
        signature_width=resolved.tensor_width,
        profile=resolved.profile,
        name=name,
        version=version,
    )


def make_monitor(
    settings: ServeSettings, model: ServedModel, registry: CollectorRegistry
) -> MonitorLike | None:
    """The online monitor (drift + accuracy), or None when monitoring is off."""
    if not settings.monitoring:
        return None
    from mlops_operator.monitoring import online

    options: dict[str, Any] = {
        "method": settings.drift_method,
        "window": settings.drift_window,
        "drift_share": settings.drift_share,
        "accuracy_window": settings.accuracy_window,
    }
    if settings.drift_threshold is not None:
        options["threshold"] = settings.drift_threshold
    if settings.drift_min_samples is not None:
        options["min_samples"] = settings.drift_min_samples
    elif settings.drift_window < 200:
        # The monitor's default minimum (200) must fit in a smaller window.
        options["min_samples"] = settings.drift_window
    config = online.MonitorConfig(**options)
    monitor: MonitorLike = online.OnlineMonitor(model.profile, config, model.name, model.version, registry)
    return monitor


def create_app(
    settings: ServeSettings, resolved: ResolvedModel, registry: CollectorRegistry | None = None
) -> ServingApp:
    """An app that loads ``resolved`` in the background once the host starts it."""
    name, version = model_identity(settings, resolved)
    registry = registry if registry is not None else CollectorRegistry(auto_describe=True)

    def loader() -> tuple[ServedModel, MonitorLike | None]:
        model = load_served_model(resolved, name, version)
        return model, make_monitor(settings, model, registry)

    return ServingApp(
        settings.server_config(), model_name=name, model_version=version, registry=registry, loader=loader
    )
