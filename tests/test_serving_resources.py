"""InferenceService builders: golden children, security profile, traffic selectors."""

from __future__ import annotations

from pathlib import Path

import yaml

from mlops_operator.api.inferenceservice import InferenceServiceSpec
from mlops_operator.resources import inferenceservice_children as children
from tests.golden import assert_golden

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = yaml.safe_load((ROOT / "examples/iris-inferenceservice.yaml").read_text())
OWNER = {
    "apiVersion": "mlops.dev/v1alpha1",
    "kind": "InferenceService",
    "metadata": {"name": "iris", "namespace": "default", "uid": "u-1"},
}
SPEC = InferenceServiceSpec.model_validate(EXAMPLE["spec"])


def deployment(version: str = "3", spec: InferenceServiceSpec = SPEC) -> dict:  # type: ignore[type-arg]
    return children.build_predictor_deployment(
        OWNER,
        spec,
        version=version,
        model_uri=f"models:/iris-classifier/{version}",
        sha256="d" * 64,
        image="ghcr.io/mlops-operator/server:0.1.0",
        mlflow_tracking_uri="http://mlflow:5000",
        replicas=spec.desired_replicas,
        runtime=children.choose_runtime(spec.runtime),
    )


def test_children_golden() -> None:
    objects = [
        deployment(),
        children.build_version_service(OWNER, "3"),
        children.build_stable_service(OWNER),
        children.build_pdb(OWNER, 2),
        children.build_hpa(
            OWNER,
            InferenceServiceSpec.model_validate(
                {**EXAMPLE["spec"], "replicas": None, "autoscaling": {"maxReplicas": 5}}
            ),
            "3",
        ),
    ]
    assert_golden("inferenceservice-children.yaml", objects)


def test_pod_meets_the_restricted_profile_and_loads_verified() -> None:
    pod = deployment()["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["seccompProfile"] == {
        "type": "RuntimeDefault"
    }
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "tmp", "emptyDir": {}} in pod["volumes"]
    assert f"--expected-sha256={'d' * 64}" in container["args"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"


def test_two_versions_side_by_side_share_the_stable_selector() -> None:
    stable = children.build_stable_service(OWNER)["spec"]["selector"]
    for version in ("3", "4"):
        labels = deployment(version)["spec"]["template"]["metadata"]["labels"]
        assert stable.items() <= labels.items()
        assert children.build_version_service(OWNER, version)["spec"]["selector"].items() <= labels.items()
    assert deployment("3")["metadata"]["name"] != deployment("4")["metadata"]["name"]
    assert (
        not children.build_version_service(OWNER, "3")["spec"]["selector"].items()
        <= deployment("4")["spec"]["template"]["metadata"]["labels"].items()
    )


def test_monitoring_and_server_settings_reach_the_server() -> None:
    spec = InferenceServiceSpec.model_validate(
        {
            **EXAMPLE["spec"],
            "server": {"maxBatchSize": 32, "maxInflight": 100},
            "monitoring": {"drift": {"method": "KS", "threshold": "0.05"}},
        }
    )
    args = deployment(spec=spec)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert {
        "--drift-method=KS",
        "--drift-threshold=0.05",
        "--max-batch-size=32",
        "--max-inflight=100",
    } <= set(args)
    off = InferenceServiceSpec.model_validate({**EXAMPLE["spec"], "monitoring": {"enabled": False}})
    assert "--no-monitoring" in deployment(spec=off)["spec"]["template"]["spec"]["containers"][0]["args"]


def test_autoscaled_deployment_leaves_replicas_to_the_hpa() -> None:
    spec = InferenceServiceSpec.model_validate(
        {**EXAMPLE["spec"], "replicas": None, "autoscaling": {"minReplicas": 2, "maxReplicas": 5}}
    )
    built = children.build_predictor_deployment(
        OWNER,
        spec,
        version="3",
        model_uri="m",
        sha256=None,
        image="i",
        mlflow_tracking_uri="u",
        replicas=None,
        runtime="uvicorn",
    )
    assert "replicas" not in built["spec"]
    assert children.build_pdb(OWNER, 1) is None
