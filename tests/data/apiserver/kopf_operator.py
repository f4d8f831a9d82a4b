"""A minimal kopf operator used to prove kopf runs against the emulated API server."""

import os
from typing import Any

import kopf


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = "test.mlops.dev/kopf"
    settings.watching.server_timeout = 10


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    # The kubernetes client reads $KUBECONFIG once, at import; kopf's own reader reads it now.
    return kopf.login_with_kubeconfig(**kwargs)


@kopf.on.create("test.mlops.dev", "v1alpha1", "widgets")
def on_widget_create(name: str, namespace: str, body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    import kubernetes

    child = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-child"},
        "data": {"k": "v"},
    }
    kopf.adopt(child, owner=body)
    client = kubernetes.config.new_client_from_config(config_file=os.environ["KUBECONFIG"])
    kubernetes.client.CoreV1Api(client).create_namespaced_config_map(namespace, child)
    patch.status["conditions"] = [{"type": "Ready", "status": "True", "reason": "Created", "message": "ok"}]
