"""Security promises, each checked the way an attacker or an auditor would look.

(a) Secrets: MLflow credentials travel by Secret reference from the operator's settings to the
    trainer Job and the model server Deployment; the value is in no object the API server holds
    (spec, status, annotations including kopf's, any version of any object), in no Event, in no
    log line, in nothing the chart renders. A tracking URI with ``user:password@`` is refused
    without echoing the password.
(b) The model server never unpickles artifacts that are not the ones the trainer recorded
    (sha256 mismatch: exit 1, both digests named), and refuses a registered version whose source
    is outside the configured registry before downloading anything.
(c) Every pod template the operator and the chart can produce passes the ``restricted`` Pod
    Security Standard (tests/pod_security.py, itself tested on known-bad pods).
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import logging
import os
import pathlib
import pickle
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from mlops_operator import operator_command
from mlops_operator.api.inferenceservice import InferenceServiceSpec
from mlops_operator.api.trainingjob import TrainingJobSpec
from mlops_operator.config import Settings
from mlops_operator.controllers.collaborators import Collaborators
from mlops_operator.registry.artifacts import (
    SourceOutsideRegistryError,
    redact_uri,
    resolve_model,
    source_outside_registry,
)
from mlops_operator.registry.digest import directory_sha256
from mlops_operator.registry.mlflow_registry import OPERATOR_HTTP_DEFAULTS
from mlops_operator.resources import inferenceservice_children as isvc_children
from mlops_operator.resources import trainingjob_children as tj_children
from mlops_operator.serving import serve_command
from tests import pod_security
from tests.fixtures_operator import (
    example,
    finish_job,
    make_ready,
    running_operator,
    validated_model_version,
)
from tests.fixtures_sandbox import wait_for, wait_for_condition
from tests.test_chart import CHART, NAMESPACE, RELEASE, SCENARIOS, _run_helm
from tests.test_serving_models import mlflow_store_fixture  # noqa: F401  (fixture)

ROOT = pathlib.Path(__file__).resolve().parent.parent
SECRET = "mlflow-credentials"
#: Recognisable values: if any of them shows up anywhere, a credential leaked.
PASSWORD = "pw-7Hq2xZ9-do-not-leak"
TOKEN = "tok-4Kd8sW1-do-not-leak"


def _leak_forms(value: str) -> list[str]:
    """The value and its base64 (how a Secret's data carries it)."""
    return [value, base64.b64encode(value.encode()).decode()]


def _find(haystack: Any, needles: list[str], where: str = "") -> list[str]:
    """Paths inside a JSON-like value where any needle occurs (keys and values)."""
    found: list[str] = []
    if isinstance(haystack, dict):
        for key, value in haystack.items():
            found += _find(key, needles, f"{where}[key {key!r}]")
            found += _find(value, needles, f"{where}.{key}")
    elif isinstance(haystack, list):
        for index, item in enumerate(haystack):
            found += _find(item, needles, f"{where}[{index}]")
    elif isinstance(haystack, str) and any(needle in haystack for needle in needles):
        found.append(where or "<root>")
    return found


# ==============================================================================================
# (c) the restricted Pod Security Standard: the checker itself
# ==============================================================================================

GOOD_POD: dict[str, Any] = {
    "securityContext": {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    },
    "containers": [
        {
            "name": "app",
            "image": "app",
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
            },
            "ports": [{"containerPort": 8080}],
        }
    ],
    "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "c"}}],
}


def _bad(path: str, value: Any) -> dict[str, Any]:
    """GOOD_POD with one field set (``containers.0.securityContext.privileged`` style paths)."""
    pod = copy.deepcopy(GOOD_POD)
    node: Any = pod
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    if value is _DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return pod


_DELETE = object()
_C = "containers.0.securityContext"


def test_the_checker_passes_a_restricted_pod() -> None:
    assert pod_security.violations(GOOD_POD) == []
    # Container-level settings may stand in for the pod's (admission accepts either).
    pod = _bad("securityContext", {})
    pod["containers"][0]["securityContext"].update(
        runAsNonRoot=True, seccompProfile={"type": "Localhost", "localhostProfile": "p.json"}
    )
    assert pod_security.violations(pod) == []


@pytest.mark.parametrize(
    ("path", "value", "control"),
    [
        pytest.param(
            "securityContext.windowsOptions", {"hostProcess": True}, "hostProcess", id="host-process"
        ),
        pytest.param("hostNetwork", True, "host namespaces", id="host-network"),
        pytest.param("hostPID", True, "host namespaces", id="host-pid"),
        pytest.param("hostIPC", True, "host namespaces", id="host-ipc"),
        pytest.param(f"{_C}.privileged", True, "privileged", id="privileged"),
        pytest.param(
            f"{_C}.capabilities", {"drop": ["ALL"], "add": ["SYS_ADMIN"]}, "capabilities", id="sys-admin"
        ),
        pytest.param(
            f"{_C}.capabilities", {"drop": ["ALL"], "add": ["CHOWN"]}, "capabilities", id="add-chown"
        ),
        pytest.param(f"{_C}.capabilities", {"drop": ["NET_RAW"]}, "capabilities", id="no-drop-all"),
        pytest.param("volumes", [{"name": "h", "hostPath": {"path": "/"}}], "hostPath", id="host-path"),
        pytest.param(
            "volumes", [{"name": "n", "nfs": {"server": "s", "path": "/"}}], "volume types", id="nfs"
        ),
        pytest.param(
            "volumes", [{"name": "g", "gitRepo": {"repository": "r"}}], "volume types", id="git-repo"
        ),
        pytest.param(
            "containers.0.ports", [{"containerPort": 80, "hostPort": 80}], "hostPort", id="host-port"
        ),
        pytest.param(f"{_C}.appArmorProfile", {"type": "Unconfined"}, "AppArmor", id="apparmor-field"),
        pytest.param(
            "metadata",
            {"annotations": {"container.apparmor.security.beta.kubernetes.io/app": "unconfined"}},
            "AppArmor",
            id="apparmor-annotation",
        ),
        pytest.param(f"{_C}.seLinuxOptions", {"type": "spc_t"}, "seLinuxOptions", id="selinux-type"),
        pytest.param("securityContext.seLinuxOptions", {"user": "root"}, "seLinuxOptions", id="selinux-user"),
        pytest.param(f"{_C}.procMount", "Unmasked", "procMount", id="proc-mount"),
        pytest.param(
            "securityContext.seccompProfile", {"type": "Unconfined"}, "seccomp", id="seccomp-unconfined"
        ),
        pytest.param("securityContext.seccompProfile", _DELETE, "seccomp", id="seccomp-missing"),
        pytest.param(
            "securityContext.sysctls",
            [{"name": "kernel.msgmax", "value": "1"}],
            "sysctls",
            id="unsafe-sysctl",
        ),
        pytest.param(f"{_C}.allowPrivilegeEscalation", _DELETE, "allowPrivilegeEscalation", id="ape-unset"),
        pytest.param(f"{_C}.allowPrivilegeEscalation", True, "allowPrivilegeEscalation", id="ape-true"),
        pytest.param("securityContext.runAsNonRoot", _DELETE, "runAsNonRoot", id="non-root-unset"),
        pytest.param(f"{_C}.runAsNonRoot", False, "runAsNonRoot", id="container-non-root-false"),
        pytest.param("securityContext.runAsUser", 0, "runAsUser", id="pod-uid-0"),
        pytest.param(f"{_C}.runAsUser", 0, "runAsUser", id="container-uid-0"),
    ],
)
def test_the_checker_refuses_each_restricted_control(path: str, value: Any, control: str) -> None:
    pod = _bad(path, value)
    metadata = pod.pop("metadata", None)
    problems = pod_security.violations(pod, metadata)
    assert problems and any(control in problem for problem in problems), problems


def test_the_checker_applies_to_init_and_ephemeral_containers_too() -> None:
    for key in ("initContainers", "ephemeralContainers"):
        pod = copy.deepcopy(GOOD_POD)
        pod[key] = [{"name": "sneaky", "image": "x", "securityContext": {"privileged": True}}]
        problems = pod_security.violations(pod)
        assert any('"sneaky"' in p and "privileged" in p for p in problems), problems


def test_windows_pods_are_exempt_from_the_linux_only_controls() -> None:
    pod = _bad(f"{_C}.allowPrivilegeEscalation", _DELETE)
    pod["os"] = {"name": "windows"}
    assert pod_security.violations(pod) == []


# ==============================================================================================
# (c) every pod template the operator can produce
# ==============================================================================================

TJ_OWNER = {
    "apiVersion": "mlops.dev/v1alpha1",
    "kind": "TrainingJob",
    "metadata": {"name": "iris-train", "namespace": "team-a", "uid": "u-tj"},
}
ISVC_OWNER = {
    "apiVersion": "mlops.dev/v1alpha1",
    "kind": "InferenceService",
    "metadata": {"name": "iris", "namespace": "team-a", "uid": "u-isvc"},
}
_TJ_SPEC = yaml.safe_load((ROOT / "examples/iris-trainingjob.yaml").read_text())["spec"]
_ISVC_SPEC = yaml.safe_load((ROOT / "examples/iris-inferenceservice.yaml").read_text())["spec"]
_DATASET_ENV = [{"name": "AWS_ACCESS_KEY_ID", "secretKeyRef": {"name": "s3", "key": "id"}}]
_RESOURCES = {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}


def _tj_spec(**changes: Any) -> TrainingJobSpec:
    spec = copy.deepcopy(_TJ_SPEC)
    spec.update(changes)
    return TrainingJobSpec.model_validate(spec)


def _isvc_spec(**changes: Any) -> InferenceServiceSpec:
    spec = copy.deepcopy(_ISVC_SPEC)
    spec.update(changes)
    return InferenceServiceSpec.model_validate(spec)


def _training(
    engine: str, spec: TrainingJobSpec, secret: str = "", log_format: str = "plain"
) -> dict[str, Any]:
    build = tj_children.build_training_rayjob if engine == "Ray" else tj_children.build_training_job
    return build(
        TJ_OWNER,
        spec,
        number=1,
        trigger="Manual",
        image="ghcr.io/mlops-operator/trainer:1",
        mlflow_tracking_uri="http://mlflow:5000",
        log_format=log_format,
        mlflow_credentials_secret=secret,
    )


def _predictor(
    spec: InferenceServiceSpec,
    *,
    runtime: str = "uvicorn",
    role: str = "stable",
    shadow: tuple[str, str] | None = None,
    secret: str = "",
) -> dict[str, Any]:
    return isvc_children.build_predictor_deployment(
        ISVC_OWNER,
        spec,
        version="3",
        model_uri="models:/iris-classifier/3",
        sha256="d" * 64,
        image="ghcr.io/mlops-operator/server:1",
        mlflow_tracking_uri="http://mlflow:5000",
        replicas=2,
        runtime=runtime,
        role=role,
        log_format="json",
        shadow=shadow,
        mlflow_credentials_secret=secret,
    )


def _operator_workloads() -> Iterator[Any]:
    yield pytest.param(_training("Job", _tj_spec()), id="job-defaults")
    yield pytest.param(
        _training(
            "Job",
            _tj_spec(
                dataset={**_TJ_SPEC["dataset"], "env": _DATASET_ENV},
                resources=_RESOURCES,
                serviceAccountName="trainer",
            ),
            secret=SECRET,
            log_format="json",
        ),
        id="job-credentials-resources-sa",
    )
    yield pytest.param(_training("Ray", _tj_spec(engine="Ray")), id="rayjob-defaults")
    yield pytest.param(
        _training(
            "Ray",
            _tj_spec(
                engine="Ray", ray={"workers": 3, "workerResources": _RESOURCES}, serviceAccountName="trainer"
            ),
            secret=SECRET,
        ),
        id="rayjob-credentials-workers",
    )
    for runtime in ("uvicorn", "bentoml"):
        yield pytest.param(_predictor(_isvc_spec(), runtime=runtime), id=f"deployment-{runtime}")
    yield pytest.param(_predictor(_isvc_spec(), role="canary"), id="deployment-canary")
    yield pytest.param(
        _predictor(_isvc_spec(), shadow=("http://10.0.0.7:80", "4")),
        id="deployment-stable-mirroring-to-shadow",
    )
    capture = {"uri": "s3://bucket/capture", "env": _DATASET_ENV}
    yield pytest.param(
        _predictor(
            _isvc_spec(capture=capture, resources=_RESOURCES, serviceAccountName="server"),
            runtime="bentoml",
            secret=SECRET,
        ),
        id="deployment-capture-credentials",
    )


@pytest.mark.parametrize("workload", list(_operator_workloads()))
def test_every_pod_template_the_operator_builds_is_restricted(workload: dict[str, Any]) -> None:
    templates = list(pod_security.pod_templates(workload))
    assert templates, f"no pod template found in {workload['kind']}"
    assert pod_security.restricted_violations(workload) == {}


def test_the_rayjob_sets_its_submitter_pod_rather_than_kubeRays_unrestricted_default() -> None:
    rayjob = _training("Ray", _tj_spec(engine="Ray"))
    where = [where for where, _, _ in pod_security.pod_templates(rayjob)]
    assert where == [
        "RayJob/iris-train-1 head",
        "RayJob/iris-train-1 workers trials",
        "RayJob/iris-train-1 submitter",
    ]
    submitter = rayjob["spec"]["submitterPodTemplate"]["spec"]
    # KubeRay writes the `ray job submit` command only into a container that has none.
    assert "command" not in submitter["containers"][0] and submitter["restartPolicy"] == "Never"


# ==============================================================================================
# (c) every pod template the chart renders
# ==============================================================================================

CHART_SCENARIOS = {
    **SCENARIOS,
    "credentials-and-mlflow": [
        "--set",
        f"config.mlflowCredentialsSecret={SECRET},mlflow.enabled=true",
        "--set",
        "envFrom[0].configMapRef.name=extra",
    ],
    "custom-uid": ["--set", "podSecurityContext.runAsUser=20000,securityContext.runAsUser=20000"],
}


def _render(*args: str) -> list[dict[str, Any]]:
    result = _run_helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.mark.parametrize("scenario", sorted(CHART_SCENARIOS))
def test_every_pod_template_the_chart_renders_is_restricted(scenario: str) -> None:
    objects = _render(*CHART_SCENARIOS[scenario])
    workloads = [o for o in objects if list(pod_security.pod_templates(o))]
    assert workloads, "the chart rendered no pod template"
    problems = {k: v for o in workloads for k, v in pod_security.restricted_violations(o).items()}
    assert problems == {}


# ==============================================================================================
# (a) secrets: MLflow credentials by Secret reference, end to end
# ==============================================================================================


def test_the_chart_hands_the_operator_its_credentials_by_reference() -> None:
    objects = _render(*CHART_SCENARIOS["credentials-and-mlflow"])
    (operator,) = [o for o in objects if o["kind"] == "Deployment" and "mlflow" not in o["metadata"]["name"]]
    container = operator["spec"]["template"]["spec"]["containers"][0]
    assert {"secretRef": {"name": SECRET}} in container["envFrom"]
    assert {"configMapRef": {"name": "extra"}} in container["envFrom"]  # the user's envFrom stays
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MLOPS_MLFLOW_CREDENTIALS_SECRET"] == SECRET
    assert not {"MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"} & set(env)


def test_the_chart_refuses_a_tracking_uri_with_credentials() -> None:
    result = _run_helm(
        "template",
        RELEASE,
        str(CHART),
        "--set",
        f"config.mlflowTrackingUri=https://alice:{PASSWORD}@mlflow.example.com",
    )
    assert result.returncode != 0
    assert "config.mlflowTrackingUri must not carry credentials" in result.stderr
    assert "config.mlflowCredentialsSecret" in result.stderr and PASSWORD not in result.stderr


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param(f"https://alice:{PASSWORD}@mlflow.example.com", id="user-password"),
        pytest.param(f"http://{TOKEN}@mlflow:5000", id="token-as-user"),
        pytest.param(f"postgresql://mlflow:{PASSWORD}@db/mlflow", id="database-password"),
    ],
)
def test_settings_refuse_credentials_in_the_tracking_uri_without_echoing_them(uri: str) -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(mlflow_tracking_uri=uri)
    text = str(raised.value)
    assert "MLOPS_MLFLOW_CREDENTIALS_SECRET" in text
    assert PASSWORD not in text and TOKEN not in text


def test_operator_with_credentials_in_the_uri_exits_with_a_clean_message(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MLOPS_MLFLOW_TRACKING_URI", f"https://alice:{PASSWORD}@mlflow.example.com")
    parser = argparse.ArgumentParser()
    operator_command.add_arguments(parser)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        code = operator_command.run(parser.parse_args(["-A"]))
    finally:  # `run` installs its log handler on the root logger: put the test runner's back
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        root.setLevel(level)
    assert code == 2
    assert "MLOPS_MLFLOW_TRACKING_URI" in caplog.text and "must not carry credentials" in caplog.text
    assert PASSWORD not in caplog.text


def _secret(name: str) -> dict[str, Any]:
    data = {
        "MLFLOW_TRACKING_USERNAME": "alice",
        "MLFLOW_TRACKING_PASSWORD": PASSWORD,
        "MLFLOW_TRACKING_TOKEN": TOKEN,
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "default"},
        "type": "Opaque",
        "data": {key: base64.b64encode(value.encode()).decode() for key, value in data.items()},
    }


def test_mlflow_credentials_go_by_reference_and_never_leak(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The operator pod gets the Secret by envFrom (the chart): its MLflow client has the values.
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    settings = Settings(
        metrics_port=0,
        liveness_port=0,
        reconcile_interval=1,
        mlflow_tracking_uri="http://127.0.0.1:9",  # MLflow is down: its errors are logged too
        mlflow_credentials_secret=SECRET,
        event_level="DEBUG",
    )
    needles = _leak_forms(PASSWORD) + _leak_forms(TOKEN)
    with running_operator(tmp_path, start_operator=False) as cluster:
        cluster.collaborators = Collaborators(
            settings, cluster.collaborators.kube, cluster.collaborators.registry
        )
        cluster.create(_secret(SECRET))
        with cluster.operator():
            tj = example("iris-trainingjob.yaml", schedule=None)
            tj["spec"]["dataset"]["env"] = [
                {
                    "name": "AWS_SECRET_ACCESS_KEY",
                    "secretKeyRef": {"name": SECRET, "key": "MLFLOW_TRACKING_TOKEN"},
                }
            ]
            cluster.create(tj)
            job = wait_for(lambda: cluster.get("Job", "iris-train-1"), message="the run's Job")
            result = {
                "status": "Succeeded",
                "modelName": "iris-classifier",
                "modelVersion": "1",
                "mlflowRunId": "run1",
                "sha256": "c" * 64,
                "metrics": {"accuracy": "0.9667"},
                "dataset": {"uri": "sklearn://iris", "rows": 150},
            }
            finish_job(cluster, job, "Complete", "Completed", json.dumps(result), 0)
            wait_for_condition(cluster, "TrainingJob", "iris-train", "Ready", "True")
            wait_for_condition(cluster, "ModelVersion", "iris-classifier-v1", "Ready", "Unknown")

            validated_model_version(cluster, "1")
            isvc = example(
                "iris-inferenceservice.yaml",
                model={"name": "demo-model", "track": "LatestValidated"},
                capture={
                    "uri": "s3://bucket/capture",
                    "env": [
                        {
                            "name": "AWS_SESSION_TOKEN",
                            "secretKeyRef": {"name": SECRET, "key": "MLFLOW_TRACKING_TOKEN"},
                        }
                    ],
                },
            )
            cluster.create(isvc)
            deployment = wait_for(
                lambda: cluster.get("Deployment", "iris-v1"), message="the server Deployment"
            )
            make_ready(cluster, "iris-v1", 2)
            wait_for_condition(cluster, "InferenceService", "iris", "Ready", "True")

            # The children name the Secret; the kubelet fills the values in, not the operator.
            trainer = job["spec"]["template"]["spec"]["containers"][0]
            server = deployment["spec"]["template"]["spec"]["containers"][0]
            for container in (trainer, server):
                assert container["envFrom"] == [{"secretRef": {"name": SECRET}}]
                assert not {"MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"} & {
                    e["name"] for e in container["env"]
                }
                refs = [
                    e["valueFrom"]["secretKeyRef"]
                    for e in container["env"]
                    if "secretKeyRef" in e.get("valueFrom", {})
                ]
                assert {"name": SECRET, "key": "MLFLOW_TRACKING_TOKEN"} in refs

        state = cluster.server.emulator.dump_state()
        history = [obj for _, _, obj in cluster.server.emulator.iter_events()]
        events = cluster.list("Event")

    objects = [entry["object"] for entry in state["objects"]]
    secrets = [o for o in objects if o.get("kind") == "Secret" and o["metadata"]["name"] == SECRET]
    # The scan can fail: it does find the values where they belong, in the Secret itself.
    assert secrets and _find(secrets, needles)
    others = [o for o in objects if not (o.get("kind") == "Secret" and o["metadata"]["name"] == SECRET)]
    assert {o.get("kind") for o in others} >= {
        "TrainingJob",
        "ModelVersion",
        "InferenceService",
        "Job",
        "Deployment",
        "Event",
    }
    # kopf's own state, with the spec it last handled (kopf_settings.py keeps it under mlops.dev/).
    kopf_keys = {key for o in others for key in (o["metadata"].get("annotations") or {})}
    assert "mlops.dev/last-handled-configuration" in kopf_keys, kopf_keys
    assert _find(others, needles) == []
    history_without_secret = [o for o in history if o.get("kind") != "Secret"]
    assert _find(history_without_secret, needles) == []
    assert events and _find(events, needles) == []
    logged = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert "iris-train" in logged  # the operator's log was captured
    assert not [needle for needle in needles if needle in logged]


# ==============================================================================================
# (b) the model server refuses artifacts it cannot trust
# ==============================================================================================


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _serve(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    """``mlops-operator serve ARGS`` in this process, up to its exit code (it fails before serving).

    In-process rather than a subprocess: the same code path (settings, bind, resolve, verify), without
    paying MLflow's import again. Its process-wide side effects (root log handler, MLflow's retry
    variables) are put back afterwards.
    """
    for name, value in OPERATOR_HTTP_DEFAULTS.items():
        monkeypatch.setenv(name, os.environ.get(name, value))
    parser = argparse.ArgumentParser()
    serve_command.add_arguments(parser)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        return serve_command.run(parser.parse_args(["--host", "127.0.0.1", *args]))
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        root.setLevel(level)


class _Payload:
    """A pickle that, if ever loaded, writes a file: proof that tampered bytes were deserialised."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (str(self.marker), "w")


#: An MLmodel file of the sklearn flavour: all the server reads before it checks the digest.
_MLMODEL = """\
flavors:
  python_function:
    loader_module: mlflow.sklearn
    model_path: model.pkl
  sklearn:
    pickled_model: model.pkl
    serialization_format: cloudpickle
"""


def _model_dir(path: pathlib.Path, payload: bytes) -> pathlib.Path:
    path.mkdir(parents=True)
    (path / "MLmodel").write_text(_MLMODEL)
    (path / "model.pkl").write_bytes(payload)
    return path


def test_server_refuses_tampered_artifacts_and_never_unpickles_them(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model_dir = _model_dir(tmp_path / "model", pickle.dumps({"weights": [0.1, 0.2]}))
    recorded = directory_sha256(model_dir)  # what the trainer logged
    marker = tmp_path / "pwned"
    (model_dir / "model.pkl").write_bytes(pickle.dumps(_Payload(marker)))  # swapped in storage
    tampered = directory_sha256(model_dir)
    port = _free_port()
    code = _serve(
        monkeypatch, "--model-uri", str(model_dir), "--port", str(port), "--expected-sha256", recorded
    )
    assert code == 1
    assert "sha256 mismatch" in caplog.text
    assert recorded in caplog.text and tampered in caplog.text  # both digests, to compare with the registry
    assert not marker.exists(), "the tampered pickle was deserialised"
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Payload(control)))
    assert control.exists()
    # Nothing listens: the readiness probe never passes, the pod never becomes Ready.
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


@pytest.mark.parametrize(
    ("source", "run_artifacts", "why"),
    [
        pytest.param("models:/m-abc123", None, None, id="logged-model"),
        pytest.param("runs:/abc/model", None, None, id="runs-uri"),
        pytest.param("mlflow-artifacts:/1/abc/artifacts/model", None, None, id="proxied-artifacts"),
        pytest.param(
            "s3://bucket/1/abc/artifacts/model", "s3://bucket/1/abc/artifacts", None, id="under-its-run"
        ),
        pytest.param("http://mlflow:5000/get-artifact?path=m", None, None, id="tracking-host"),
        pytest.param("http://evil.example/model", None, "not an MLflow URI", id="foreign-http"),
        pytest.param("file:///etc", None, "not an MLflow URI", id="file-etc-no-run"),
        pytest.param("file:///etc", "file:///mlruns/1/abc/artifacts", "not under its run", id="file-etc"),
        pytest.param(
            "s3://bucket/1/abc/artifacts/../../other/artifacts/model",
            "s3://bucket/1/abc/artifacts",
            "climbs out",
            id="dot-dot",
        ),
        pytest.param(f"https://bob:{PASSWORD}@mlflow:5000/m", None, "credentials", id="credentials"),
    ],
)
def test_which_sources_are_inside_the_registry(
    source: str, run_artifacts: str | None, why: str | None
) -> None:
    found = source_outside_registry(source, tracking_uri="http://mlflow:5000", run_artifact_uri=run_artifacts)
    assert (found is None) if why is None else (found is not None and why in found), found
    assert PASSWORD not in (found or "")


def test_redact_uri_hides_userinfo() -> None:
    assert redact_uri(f"https://bob:{PASSWORD}@host/x") == "https://***@host/x"
    assert redact_uri("models:/m/1") == "models:/m/1"


@pytest.fixture(scope="module")
def foreign_versions(mlflow_store: str) -> dict[str, str]:
    """Versions registered straight from sources no training run of this registry produced."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_store, registry_uri=mlflow_store)
    client.create_registered_model("foreign-source")
    sources = {
        "http": "http://evil.example/model",
        "file": "file:///etc",
        "credentials": f"https://bob:{PASSWORD}@evil.example/model",
    }
    return {
        key: str(client.create_model_version("foreign-source", source).version)
        for key, source in sources.items()
    }


def test_server_refuses_a_version_whose_source_is_outside_the_registry(
    mlflow_store: str,
    foreign_versions: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    uri = f"models:/foreign-source/{foreign_versions['http']}"
    assert _serve(monkeypatch, "--model-uri", uri, "--port", str(_free_port())) == 1
    assert f"refusing {uri}" in caplog.text and "outside the configured registry" in caplog.text
    assert "http://evil.example/model" in caplog.text


@pytest.mark.parametrize("case", ["file", "credentials"])
def test_resolving_a_foreign_source_downloads_nothing(
    mlflow_store: str,
    foreign_versions: dict[str, str],
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    with pytest.raises(SourceOutsideRegistryError) as raised:
        resolve_model(f"models:/foreign-source/{foreign_versions[case]}", dst_dir=tmp_path)
    assert PASSWORD not in str(raised.value)
    assert list(tmp_path.iterdir()) == []


def test_a_version_the_trainer_registered_from_its_run_still_resolves(
    mlflow_store: str,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The refusal must not catch the trainer's own registrations (source = the run's artifact URI)."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    client = mlflow.MlflowClient(tracking_uri=mlflow_store, registry_uri=mlflow_store)
    local = _model_dir(tmp_path / "saved", pickle.dumps({"weights": [0.3]}))
    run = client.create_run(client.get_experiment_by_name("Default").experiment_id)
    client.log_artifacts(run.info.run_id, str(local), "model")
    client.create_registered_model("from-run")
    source = f"{run.info.artifact_uri.rstrip('/')}/model"
    assert not source.startswith(("models:", "runs:", "mlflow-artifacts:"))  # the run-artifacts rule
    version = client.create_model_version("from-run", source, run_id=run.info.run_id).version
    resolved = resolve_model(
        f"models:/from-run/{version}", dst_dir=tmp_path / "dl", expected_sha256=directory_sha256(local)
    )
    assert resolved.run_id == run.info.run_id
    # The ModelVersion controller agrees: nothing foreign about it.
    from mlops_operator.api.modelversion import ModelVersionSpec
    from mlops_operator.controllers.modelversion_reconciler import read_registry
    from mlops_operator.registry.mlflow_registry import Registry

    spec = ModelVersionSpec.model_validate({"model": {"name": "from-run", "version": str(version)}})
    assert read_registry(Registry(mlflow_store), spec, {}).foreign_source == ""


@pytest.mark.parametrize("case", ["http", "file", "credentials"])
def test_a_modelversion_from_a_foreign_source_is_rejected_with_a_condition(
    mlflow_store: str, foreign_versions: dict[str, str], case: str
) -> None:
    """The ModelVersion controller applies the server's rule: never Validated, so never rolled out."""
    import datetime as dt

    from mlops_operator.api.modelversion import ModelVersionSpec
    from mlops_operator.controllers.modelversion_decisions import decide_modelversion
    from mlops_operator.controllers.modelversion_reconciler import read_registry
    from mlops_operator.registry.mlflow_registry import Registry

    spec = ModelVersionSpec.model_validate(
        {"model": {"name": "foreign-source", "version": foreign_versions[case]}, "aliases": ["production"]}
    )
    observed = read_registry(Registry(mlflow_store), spec, {})
    assert observed.foreign_source
    decision = decide_modelversion(
        spec, {}, observed, namespace="default", name="mv", generation=1, now=dt.datetime.now(dt.UTC)
    )
    conditions = {c["type"]: c for c in decision.status["conditions"]}
    assert decision.status["phase"] == "Rejected" and decision.effects == []  # no alias moves
    for kind in ("Validated", "Ready"):
        assert (conditions[kind]["status"], conditions[kind]["reason"]) == ("False", "SourceOutsideRegistry")
    assert "outside the configured registry" in conditions["Ready"]["message"]
    assert PASSWORD not in json.dumps(decision.status)
