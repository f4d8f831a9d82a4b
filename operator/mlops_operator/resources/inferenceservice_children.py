"""Builders for what an InferenceService owns (pure).

One Deployment and one Service per served model version (``<isvc>-v<version>``), so that a
stable and a canary version run side by side and each can be observed on its own; one
stable Service (``<isvc>``) that selects the ready pods of every served version, so that with
the ``Replicas`` router traffic splits by replica counts; a PodDisruptionBudget when more
than one replica serves; an HPA per version when ``autoscaling`` is set.
"""

from __future__ import annotations

from typing import Any

from mlops_operator.api.inferenceservice import InferenceServiceSpec
from mlops_operator.resources.object_meta import child_name, labels, owner_reference
from mlops_operator.resources.pods import (
    log_format_env,
    mlflow_credentials_env_from,
    restricted_container_security,
    restricted_pod_security,
)

CONTAINER = "server"
PORT = 8080
SERVICE_PORT = 80
COMPONENT = "predictor"


def predictor_name(isvc: str, version: str) -> str:
    return child_name(isvc, f"v{version}")


def _pod_selector(owner: dict[str, Any], version: str | None = None) -> dict[str, str]:
    selector = {
        "mlops.dev/inferenceservice": owner["metadata"]["name"],
        "app.kubernetes.io/component": COMPONENT,
    }
    if version is not None:
        selector["mlops.dev/model-version"] = version
    return selector


def selector_string(owner: dict[str, Any]) -> str:
    """The label selector of all the service's pods (the scale subresource reports it)."""
    return ",".join(f"{key}={value}" for key, value in sorted(_pod_selector(owner).items()))


def choose_runtime(requested: str) -> str:
    """``auto`` picks uvicorn: measured on this project's benchmark it has the lower tail
    latency for every model class we serve (see BENCHMARKS.md); BentoML when asked for."""
    return "uvicorn" if requested == "auto" else requested


def _server_args(
    spec: InferenceServiceSpec, model_uri: str, version: str, sha256: str | None, runtime: str
) -> list[str]:
    drift = spec.monitoring.drift
    args = [
        f"--model-uri={model_uri}",
        f"--port={PORT}",
        f"--runtime={runtime}",
        f"--model-name={spec.model.name}",
        f"--model-version={version}",
    ]
    if sha256:
        args.append(f"--expected-sha256={sha256}")
    if spec.monitoring.enabled:
        args += [
            f"--drift-method={drift.method}",
            f"--drift-threshold={drift.threshold}",
            f"--drift-window={drift.window}",
            f"--drift-min-samples={drift.min_samples}",
            f"--drift-share={drift.drift_share}",
            f"--accuracy-window={spec.monitoring.accuracy.window}",
        ]
    else:
        args.append("--no-monitoring")
    server = spec.server
    if server is not None:
        for flag, value in (
            ("--max-batch-size", server.max_batch_size),
            ("--max-batch-wait-ms", server.max_batch_wait_ms),
            ("--max-inflight", server.max_inflight),
            ("--max-body-bytes", server.max_body_bytes),
        ):
            if value is not None:
                args.append(f"{flag}={value}")
    return args


def _shadow_env(spec: InferenceServiceSpec, shadow: tuple[str, str] | None) -> list[dict[str, Any]]:
    if shadow is None:
        return []
    settings = spec.rollout.shadow
    return [
        {"name": "MLOPS_SERVE_SHADOW_URL", "value": shadow[0]},
        {"name": "MLOPS_SERVE_SHADOW_VERSION", "value": shadow[1]},
        {"name": "MLOPS_SERVE_SHADOW_MAX_INFLIGHT", "value": str(settings.max_inflight)},
        {"name": "MLOPS_SERVE_SHADOW_TIMEOUT_MS", "value": str(settings.timeout_ms)},
    ]


def _capture_env(spec: InferenceServiceSpec) -> list[dict[str, Any]]:
    """``MLOPS_SERVE_CAPTURE_*`` (and the storage credentials) when ``spec.capture`` is set."""
    capture = spec.capture
    if capture is None:
        return []
    env: list[dict[str, Any]] = [
        {"name": "MLOPS_SERVE_CAPTURE_URI", "value": capture.uri},
        {"name": "MLOPS_SERVE_CAPTURE_SAMPLE_RATE", "value": capture.sample_rate},
        {"name": "MLOPS_SERVE_CAPTURE_FLUSH_ROWS", "value": str(capture.flush_rows)},
        {"name": "MLOPS_SERVE_CAPTURE_FLUSH_SECONDS", "value": str(capture.flush_seconds)},
        {"name": "MLOPS_SERVE_CAPTURE_MAX_BYTES_PER_DAY", "value": str(capture.max_bytes_per_day)},
    ]
    for item in capture.env or []:
        ref = {"name": item.secret_key_ref.name, "key": item.secret_key_ref.key}
        env.append({"name": item.name, "valueFrom": {"secretKeyRef": ref}})
    return env


def version_service_url(service: dict[str, Any] | None) -> str | None:
    """``http://<ClusterIP>:<port>`` of a version's Service, once it has a ClusterIP.

    The address rather than the DNS name: it reaches the Service from any pod, with or
    without cluster DNS (the sandbox has none), and stays fixed for the Service's life.
    """
    spec = (service or {}).get("spec") or {}
    address = spec.get("clusterIP")
    ports = spec.get("ports") or []
    if not address or address == "None" or not ports:
        return None
    host = f"[{address}]" if ":" in str(address) else str(address)
    return f"http://{host}:{ports[0].get('port', PORT)}"


def build_predictor_deployment(
    owner: dict[str, Any],
    spec: InferenceServiceSpec,
    *,
    version: str,
    model_uri: str,
    sha256: str | None,
    image: str,
    mlflow_tracking_uri: str,
    replicas: int | None,
    runtime: str,
    role: str = "stable",
    image_pull_policy: str = "IfNotPresent",
    log_format: str = "plain",
    shadow: tuple[str, str] | None = None,
    mlflow_credentials_secret: str = "",
) -> dict[str, Any]:
    """The Deployment serving one model version. ``replicas`` None: left to the HPA.

    ``mlflow_credentials_secret``: the Secret whose keys reach the server as environment
    variables (``envFrom``) to download the model, never copied into the Deployment.

    ``shadow`` (base URL, version): a Shadow rollout's candidate, to which this version's
    servers copy every prediction request (set on stable while the shadow runs).

    ``log_format`` is the operator's: the server logs the same way (plain is every command's
    default, so only json is written into the pod).
    """
    name = predictor_name(owner["metadata"]["name"], version)
    pod_labels = {
        **labels(owner, COMPONENT, model=spec.model.name, model_version=version),
        **_pod_selector(owner, version),
    }
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "imagePullPolicy": image_pull_policy,
        "command": ["mlops-operator", "serve"],
        "args": _server_args(spec, model_uri, version, sha256, runtime),
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            # Request ids carry this, so /feedback reaches the replica that made the prediction.
            {"name": "MLOPS_SERVE_ADVERTISE_ADDRESS", "value": f"$(POD_IP):{PORT}"},
            {"name": "MLFLOW_TRACKING_URI", "value": mlflow_tracking_uri},
            {"name": "HOME", "value": "/tmp"},
            {"name": "MLOPS_SERVE_DOWNLOAD_DIR", "value": "/tmp/model"},
            *log_format_env(log_format),
            *_shadow_env(spec, shadow),
            *_capture_env(spec),
        ],
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        # Ready means the model is downloaded, verified and loaded (the server answers 503 before).
        "readinessProbe": {
            "httpGet": {"path": "/v2/health/ready", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 3,
            "timeoutSeconds": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 6,
            "timeoutSeconds": 2,
        },
        "startupProbe": {
            "httpGet": {"path": "/v2/health/live", "port": "http"},
            "periodSeconds": 2,
            "failureThreshold": 60,
        },
        "securityContext": restricted_container_security(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    if env_from := mlflow_credentials_env_from(mlflow_credentials_secret):
        container["envFrom"] = env_from
    if spec.resources is not None:
        container["resources"] = spec.resources.to_api()
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "securityContext": restricted_pod_security(),
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
        "terminationGracePeriodSeconds": 30,
    }
    if spec.service_account_name:
        pod_spec["serviceAccountName"] = spec.service_account_name
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": _pod_selector(owner, version)},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
    }
    if replicas is not None:
        deployment_spec["replicas"] = replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": owner["metadata"].get("namespace", "default"),
            "labels": dict(pod_labels),
            "annotations": {"mlops.dev/role": role, "mlops.dev/model-uri": model_uri},
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": deployment_spec,
    }


def _service(
    owner: dict[str, Any], name: str, selector: dict[str, str], component: str, **extra: str
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": owner["metadata"].get("namespace", "default"),
            "labels": labels(owner, component, **extra),
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def build_version_service(owner: dict[str, Any], version: str) -> dict[str, Any]:
    """The Service of one version's pods (analysis and debugging talk to one version)."""
    name = predictor_name(owner["metadata"]["name"], version)
    return _service(owner, name, _pod_selector(owner, version), COMPONENT, model_version=version)


def build_stable_service(owner: dict[str, Any], only_version: str | None = None) -> dict[str, Any]:
    """The Service users call: every ready pod of every served version, or of ``only_version``.

    With the ``Replicas`` router a canary takes traffic by having ready pods behind this
    Service; until its first step (and after an abort) the selector names the stable version
    alone, so a candidate pod that becomes ready gets no request before the analysis allows it.
    """
    return _service(owner, owner["metadata"]["name"], _pod_selector(owner, only_version), "endpoint")


def build_http_route(
    owner: dict[str, Any],
    gateway: str | None,
    stable_version: str,
    canary_version: str | None,
    canary_weight: int,
) -> dict[str, Any]:
    """The Gateway API HTTPRoute that splits traffic between the versions' Services by weight.

    Attached to ``gateway`` when one is named (north-south traffic through that Gateway);
    otherwise to the stable Service itself (the GAMMA pattern: a service mesh applies the
    route to traffic that calls the stable Service). Weights are relative, as the Gateway API
    defines them: 90 and 10 send a tenth of the requests to the canary.
    """
    name = owner["metadata"]["name"]
    namespace = owner["metadata"].get("namespace", "default")
    parent: dict[str, Any] = (
        {"name": gateway} if gateway else {"group": "", "kind": "Service", "name": name, "port": SERVICE_PORT}
    )
    backends = [
        {"name": predictor_name(name, stable_version), "port": SERVICE_PORT, "weight": 100 - canary_weight}
    ]
    if canary_version is not None:
        backends.append(
            {"name": predictor_name(name, canary_version), "port": SERVICE_PORT, "weight": canary_weight}
        )
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels(owner, "endpoint"),
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": {"parentRefs": [parent], "rules": [{"backendRefs": backends}]},
    }


def build_pdb(owner: dict[str, Any], replicas: int) -> dict[str, Any] | None:
    """Keep at least one pod through voluntary disruptions, when there is more than one."""
    if replicas <= 1:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {
            "name": owner["metadata"]["name"],
            "namespace": owner["metadata"].get("namespace", "default"),
            "labels": labels(owner, COMPONENT),
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _pod_selector(owner)}},
    }


def build_hpa(owner: dict[str, Any], spec: InferenceServiceSpec, version: str) -> dict[str, Any] | None:
    if spec.autoscaling is None:
        return None
    name = predictor_name(owner["metadata"]["name"], version)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {
            "name": name,
            "namespace": owner["metadata"].get("namespace", "default"),
            "labels": labels(owner, COMPONENT, model_version=version),
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": spec.autoscaling.min_replicas,
            "maxReplicas": spec.autoscaling.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": spec.autoscaling.target_cpu_utilization,
                        },
                    },
                }
            ],
        },
    }


def service_url(owner: dict[str, Any]) -> str:
    meta = owner["metadata"]
    return f"http://{meta['name']}.{meta.get('namespace', 'default')}.svc.cluster.local"
