"""The Helm chart, the images' Dockerfile and the kind config, checked offline with real tools.

The chart is rendered with the real ``helm`` (v4, see tests/tools.py), every object is
validated against the official Kubernetes schemas, alert rules go through ``promtool``.
Nothing is installed: there is no cluster here. What is checked is what a user relies on:
the chart installs on Kubernetes >=1.29, configures the operator exactly as its settings
say, grants what the operator does, runs the pod under the restricted Pod Security
Standard, and refuses values it would otherwise ignore.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from mlops_operator import __version__
from mlops_operator.config import Settings
from tests import tools

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "mlops-operator"
RELEASE = "mlops"
NAMESPACE = "mlops-system"
#: The oldest Kubernetes the schemas check against (the chart says >=1.29; kubernetes-validate
#: ships 1.30+ schemas) and the newest it knows.
KUBE_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
UID = 10001

SCENARIOS: dict[str, list[str]] = {
    "defaults": [],
    "watch-namespaces": ["--set", "watchNamespaces={team-a,team-b}"],
    "everything": [
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.prometheusRule.enabled=true",
        "--set",
        "mlflow.enabled=true",
        "--set",
        "argocd.healthChecks.enabled=true,grafana.dashboard.enabled=true",
    ],
    # Bring-your-own ServiceAccount and RBAC, no metrics or probe ports.
    "minimal": [
        "--set",
        "rbac.create=false,serviceAccount.create=false,serviceAccount.name=ops",
        "--set",
        "config.metricsPort=0,config.livenessPort=0",
    ],
}


# --- helpers -----------------------------------------------------------------------------


@functools.cache
def _helm() -> str:
    return str(tools.helm())


def _run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_helm(), *args], capture_output=True, text=True, timeout=120, check=False)


@functools.cache
def render(scenario: str) -> tuple[dict[str, Any], ...]:
    """The objects ``helm template`` renders for one scenario (cached: helm takes ~0.2 s)."""
    result = _run_helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *SCENARIOS[scenario])
    assert result.returncode == 0, f"helm template ({scenario}) failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def _one(objects: tuple[dict[str, Any], ...], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, (
        f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
    )
    return found[0]


def _operator_deployment(scenario: str) -> dict[str, Any]:
    return _one(render(scenario), "Deployment", f"{RELEASE}-mlops-operator")


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _env(deployment: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in _container(deployment)["env"] if "value" in item}


def _env_name(field: str) -> str:
    return f"MLOPS_{field.upper()}"


def _snake(camel: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).lower()


def _values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


def _settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in Settings.model_fields:
        monkeypatch.delenv(_env_name(name), raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


# --- (1) rendering, (2) Kubernetes schemas, (3) lint ---------------------------------------


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        # Role + RoleBinding in the release namespace: the leader-election Lease.
        (
            "defaults",
            {
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "Role",
                "RoleBinding",
                "Deployment",
                "Service",
            },
        ),
        (
            "watch-namespaces",
            {
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "Role",
                "RoleBinding",
                "Deployment",
                "Service",
            },
        ),
        ("minimal", {"Deployment"}),
        (
            "everything",
            {
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "Role",
                "RoleBinding",
                "Deployment",
                "Service",
                "ServiceMonitor",
                "PrometheusRule",
                "PersistentVolumeClaim",
                "ConfigMap",
            },
        ),
    ],
)
def test_chart_renders_the_expected_objects(scenario: str, expected: set[str]) -> None:
    objects = render(scenario)
    assert {o["kind"] for o in objects} == expected
    names = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]
    assert len(names) == len(set(names)), "two objects with the same kind, namespace and name"
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/part-of"] == "mlops-operator"
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
            assert obj["metadata"]["namespace"] == NAMESPACE


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rendered_objects_are_valid_kubernetes(scenario: str, version: str) -> None:
    for obj in render(scenario):
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # prometheus-operator's CRDs are not in the Kubernetes schemas: see below
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']} is invalid on {version}: {exc.message}")


def test_service_monitor_scrapes_the_operator_metrics_service() -> None:
    objects = render("everything")
    monitor = _one(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = _one(objects, "Service", f"{RELEASE}-mlops-operator-metrics")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items(), "the ServiceMonitor selects no Service"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    # The Service routes to the operator's metrics port.
    pod = _operator_deployment("everything")["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in _container(_operator_deployment("everything"))["ports"]}


def test_argocd_health_configmap_holds_each_script_verbatim() -> None:
    configmap = _one(render("everything"), "ConfigMap", f"{RELEASE}-mlops-operator-argocd-health")
    scripts = {
        f"resource.customizations.health.mlops.dev_{path.parent.name}": path.read_text()
        for path in (CHART / "argocd" / "mlops.dev").glob("*/health.lua")
    }
    assert len(scripts) == 3
    assert configmap["data"] == scripts


def test_grafana_dashboard_configmap_is_labelled_for_the_sidecar() -> None:
    configmap = _one(render("everything"), "ConfigMap", f"{RELEASE}-mlops-operator-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads(configmap["data"]["mlops-operator.json"])
    assert shipped == json.loads((CHART / "dashboards" / "mlops-operator.json").read_text())


def test_packaged_chart_leaves_out_the_health_check_fixtures(tmp_path: Path) -> None:
    result = _run_helm("package", str(CHART), "--destination", str(tmp_path))
    assert result.returncode == 0, result.stderr
    import tarfile

    (archive,) = tmp_path.glob("*.tgz")
    with tarfile.open(archive) as tgz:
        names = tgz.getnames()
    assert any(name.endswith("InferenceService/health.lua") for name in names)
    assert not [name for name in names if "testdata" in name or name.endswith("health_test.yaml")]


def test_prometheus_rule_has_the_shape_prometheus_operator_reads() -> None:
    rule = _one(render("everything"), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule["spec"]) == {"groups"}
    alerts = set()
    for group in rule["spec"]["groups"]:
        assert set(group) == {"name", "rules"}
        for item in group["rules"]:
            assert set(item) <= {"alert", "expr", "for", "labels", "annotations"}
            assert isinstance(item["expr"], str) and item["expr"].strip()
            assert set(item["annotations"]) == {"summary", "description"}
            alerts.add(item["alert"])
    assert alerts == {"MLOpsModelAccuracyDrop", "MLOpsModelDataDrift", "MLOpsReconcileErrors"}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_helm_lint_strict(scenario: str) -> None:
    result = _run_helm("lint", "--strict", str(CHART), *SCENARIOS[scenario])
    assert result.returncode == 0, result.stdout + result.stderr


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == __version__, "the chart deploys the operator version of this tree"
    assert chart["kubeVersion"] == ">=1.29.0-0"
    # helm refuses to install on a cluster older than that.
    result = _run_helm("template", RELEASE, str(CHART), "--kube-version", "1.28.9")
    assert result.returncode != 0 and "kubeVersion" in result.stderr


# --- (4) CRDs ------------------------------------------------------------------------------


def test_chart_crds_are_byte_identical_to_crds_dir() -> None:
    source = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    shipped = {p.name: p.read_bytes() for p in (CHART / "crds").iterdir()}
    assert source, "crds/ is empty"
    assert sorted(shipped) == sorted(source), "charts/mlops-operator/crds/ and crds/ hold different files"
    stale = [name for name in source if shipped[name] != source[name]]
    assert not stale, f"chart CRDs differ from crds/: {stale}; run `make crds`"


def test_crds_are_not_templated() -> None:
    # Helm installs crds/ verbatim before the templates; a CRD among templates would be
    # deleted with the release, and every custom resource with it.
    for scenario in SCENARIOS:
        assert not [o for o in render(scenario) if o["kind"] == "CustomResourceDefinition"]


# --- (5) settings <-> values.config <-> Deployment env --------------------------------------


def test_values_config_maps_one_to_one_onto_settings() -> None:
    config_keys = {_snake(key) for key in _values()["config"]}
    # `namespaces` is the chart's top-level `watchNamespaces`: it also shapes RBAC and args.
    assert config_keys | {"namespaces"} == set(Settings.model_fields), (
        f"settings without a chart value: {set(Settings.model_fields) - config_keys - {'namespaces'}}; "
        f"chart values without a setting: {config_keys - set(Settings.model_fields)}"
    )
    assert "namespaces" not in config_keys
    for key in _values()["config"]:
        assert key == re.sub(r"_([a-z])", lambda m: m.group(1).upper(), _snake(key)), f"{key}: not camelCase"


def test_values_schema_constraints_match_settings() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["config"]
    settings_schema = Settings.model_json_schema()["properties"]
    assert set(schema["required"]) == set(schema["properties"]) == set(_values()["config"])
    assert schema["additionalProperties"] is False
    for key, prop in schema["properties"].items():
        expected = settings_schema[_snake(key)]
        assert prop["type"] == expected["type"], key
        for bound in ("minimum", "maximum", "exclusiveMinimum"):
            assert prop.get(bound) == expected.get(bound), f"config.{key}: {bound} differs from Settings"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_deployment_env_sets_every_setting(scenario: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = _env(_operator_deployment(scenario))
    mlops = {name for name in env if name.startswith("MLOPS_")}
    assert mlops == {_env_name(field) for field in Settings.model_fields}
    _settings_from(env, monkeypatch)  # every value parses and passes the Settings' constraints


def test_default_values_configure_the_operator_with_its_own_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    from_chart = _settings_from(_env(_operator_deployment("defaults")), monkeypatch)
    for name in Settings.model_fields:
        monkeypatch.delenv(_env_name(name), raising=False)
    assert from_chart == Settings()
    assert _container(_operator_deployment("defaults"))["args"] == ["run", "--all-namespaces"]


def test_watch_namespaces_reach_the_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    deployment = _operator_deployment("watch-namespaces")
    assert _container(deployment)["args"] == ["run", "--namespace=team-a", "--namespace=team-b"]
    assert _settings_from(_env(deployment), monkeypatch).namespaces == ["team-a", "team-b"]


def test_every_config_value_reaches_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    custom = {
        "mlflowTrackingUri": "https://mlflow.example.com",
        "mlflowCredentialsSecret": "mlflow-credentials",
        "trainerImage": "registry.example.com/trainer:1.2.3",
        "serverImage": "registry.example.com/server:1.2.3",
        "imagePullPolicy": "Always",
        "metricsPort": 9090,
        "livenessPort": 9091,
        "workerLimit": 7,
        "watchServerTimeout": 120,
        "watchClientTimeout": 150,
        "eventLevel": "WARNING",
        "reconcileInterval": 12.5,
        "logFormat": "json",
        "leaderElection": False,
        "leaderElectionLeaseName": "ops-lease",
        "leaderElectionLeaseDuration": 30,
        "leaderElectionRenewDeadline": 20.5,
        "leaderElectionRetryPeriod": 4.5,
    }
    assert set(custom) == set(_values()["config"]), "add the new setting to this test"
    args = [
        arg for key, value in custom.items() for arg in ("--set-json", f"config.{key}={json.dumps(value)}")
    ]
    result = _run_helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert result.returncode == 0, result.stderr
    objects = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    deployment = _one(tuple(objects), "Deployment")
    settings = _settings_from(_env(deployment), monkeypatch)
    for key, value in custom.items():
        assert getattr(settings, _snake(key)) == value, key
    ports = {p["name"]: p["containerPort"] for p in _container(deployment)["ports"]}
    assert ports == {"metrics": 9090, "healthz": 9091}


def test_embedded_mlflow_is_what_the_operator_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    objects = render("everything")
    service = _one(objects, "Service", f"{RELEASE}-mlops-operator-mlflow")
    (port,) = service["spec"]["ports"]
    uri = _settings_from(_env(_operator_deployment("everything")), monkeypatch).mlflow_tracking_uri
    assert uri == f"http://{service['metadata']['name']}.{NAMESPACE}.svc:{port['port']}"
    mlflow = _one(objects, "Deployment", f"{RELEASE}-mlops-operator-mlflow")
    assert mlflow["spec"]["replicas"] == 1 and mlflow["spec"]["strategy"]["type"] == "Recreate"
    assert service["spec"]["selector"].items() <= mlflow["spec"]["template"]["metadata"]["labels"].items()
    command = _container(mlflow)["command"]
    hosts = next(arg for arg in command if arg.startswith("--allowed-hosts=")).split("=", 1)[1].split(",")
    # MLflow refuses unknown Host headers: the URI the operator hands out must be accepted.
    assert f"{service['metadata']['name']}.{NAMESPACE}.svc:*" in hosts
    claim = _one(objects, "PersistentVolumeClaim")
    volumes = mlflow["spec"]["template"]["spec"]["volumes"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]}} in volumes


# --- (6) restricted Pod Security Standard --------------------------------------------------


def _pod_specs(scenario: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in render(scenario):
        if obj["kind"] == "Deployment":
            yield obj["metadata"]["name"], obj["spec"]["template"]["spec"]


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_pods_pass_the_restricted_pod_security_standard(scenario: str) -> None:
    allowed_volumes = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim"}
    allowed_volumes |= {"projected", "secret"}
    for name, pod in _pod_specs(scenario):
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(host), f"{name}: {host}"
        for volume in pod.get("volumes", []):
            assert set(volume) - {"name"} <= allowed_volumes, f"{name}: volume {volume}"
        pod_ctx = pod.get("securityContext", {})
        assert pod_ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        for container in pod["containers"] + pod.get("initContainers", []):
            ctx = container["securityContext"]
            where = f"{name}/{container['name']}"
            assert ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is True, where
            assert ctx.get("runAsUser", pod_ctx.get("runAsUser")) == UID, where
            assert ctx.get("privileged") is not True, where
            assert ctx["allowPrivilegeEscalation"] is False, where
            assert ctx["capabilities"]["drop"] == ["ALL"] and not ctx["capabilities"].get("add"), where
            assert ctx["readOnlyRootFilesystem"] is True, where
            # The one writable path the images expect (HOME, MPLCONFIGDIR, caches).
            tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
            volume = next(v for v in pod["volumes"] if v["name"] == tmp["name"])
            assert "emptyDir" in volume, where
            for port in container.get("ports", []):
                assert "hostPort" not in port, where


def test_operator_runs_one_replica_by_default() -> None:
    """More replicas and the upgrade strategy: tests/test_chart_ha.py."""
    spec = _operator_deployment("defaults")["spec"]
    assert spec["replicas"] == 1
    probe = _container(_operator_deployment("defaults"))["livenessProbe"]["httpGet"]
    assert probe == {"path": "/healthz", "port": "healthz"}


# --- (7) RBAC ------------------------------------------------------------------------------


def _grants(rules: list[dict[str, Any]], group: str, resource: str) -> set[str]:
    verbs: set[str] = set()
    for rule in rules:
        if group in rule.get("apiGroups", []) and resource in rule.get("resources", []):
            verbs |= set(rule["verbs"])
    return verbs


def _bound_rules(objects: tuple[dict[str, Any], ...], namespace: str | None) -> list[dict[str, Any]]:
    """The rules the operator's ServiceAccount holds in ``namespace`` (None: cluster scope)."""
    account = _operator_deployment_of(objects)["spec"]["template"]["spec"]["serviceAccountName"]
    subject = {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in objects}
    rules: list[dict[str, Any]] = []
    for binding in objects:
        if binding["kind"] == "ClusterRoleBinding" or (
            binding["kind"] == "RoleBinding" and binding["metadata"]["namespace"] == namespace
        ):
            if subject not in binding["subjects"]:
                continue
            ref = binding["roleRef"]
            role_ns = binding["metadata"].get("namespace") if ref["kind"] == "Role" else None
            rules += roles[(ref["kind"], role_ns, ref["name"])]["rules"]
    return rules


def _operator_deployment_of(objects: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    return _one(objects, "Deployment", f"{RELEASE}-mlops-operator")


@pytest.mark.parametrize(
    ("scenario", "namespaces"), [("defaults", ["anywhere"]), ("watch-namespaces", ["team-a", "team-b"])]
)
def test_rbac_is_bound_to_the_operators_account_and_never_wildcards(
    scenario: str, namespaces: list[str]
) -> None:
    """What the operator needs is checked request by request in tests/test_rbac_audit.py."""
    objects = render(scenario)
    assert (
        _one(objects, "ServiceAccount")["metadata"]["name"]
        == (_operator_deployment_of(objects)["spec"]["template"]["spec"]["serviceAccountName"])
    )
    for namespace in namespaces:
        rules = _bound_rules(objects, namespace)
        assert _grants(rules, "batch", "jobs"), f"nothing bound in {namespace}"
        # Least privilege: the operator never reads Secrets, and no rule is a wildcard.
        assert not _grants(rules, "", "secrets")
        assert not any("*" in r["verbs"] or "*" in r["resources"] for r in rules)


def test_watching_namespaces_grants_nothing_namespaced_cluster_wide() -> None:
    objects = render("watch-namespaces")
    cluster = {r for rule in _bound_rules(objects, None) for r in rule["resources"]}
    assert cluster == {"customresourcedefinitions", "namespaces"}
    assert not _grants(_bound_rules(objects, "team-c"), "batch", "jobs"), "a namespace not watched"


# --- (8) values.schema.json ----------------------------------------------------------------


@pytest.mark.parametrize(
    "setting",
    [
        "replicaCount=abc",
        "replicaCount=6",  # one leader and four standbys are plenty
        "config.logFormat=xml",
        "config.metricsPort=70000",
        "config.workerLimit=0",
        "config.wrokerLimit=3",  # a typo is an error, not silently ignored
        "typo=1",
        "watchNamespaces={Team_A}",
        "image.operator.pullPolicy=Sometimes",
        "extraEnv[0].name=MLOPS_LOG_FORMAT",  # settings belong in config
    ],
)
def test_values_schema_rejects_bad_values(setting: str) -> None:
    result = _run_helm("template", RELEASE, str(CHART), "--set", setting)
    assert result.returncode != 0, f"helm accepted --set {setting}"
    assert "schema" in result.stderr.lower(), result.stderr


def test_values_yaml_passes_its_own_schema_with_every_option_on() -> None:
    # Covered by rendering, but with all optional blocks at once so a schema that is too
    # strict for a documented value fails here.
    result = _run_helm(
        "template",
        RELEASE,
        str(CHART),
        *SCENARIOS["everything"],
        "--set",
        "watchNamespaces={a}",
        "--set",
        "serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::1:role/x",
        "--set",
        "extraEnv[0].name=MLFLOW_TRACKING_TOKEN,extraEnv[0].valueFrom.secretKeyRef.name=mlflow",
        "--set",
        "extraEnv[0].valueFrom.secretKeyRef.key=token",
        "--set",
        "imagePullSecrets={regcred}",
        "--set",
        "mlflow.persistence.storageClass=standard",
    )
    assert result.returncode == 0, result.stderr


def test_chart_readme_documents_every_value() -> None:
    readme = (CHART / "README.md").read_text()

    # Objects passed through to Kubernetes whole are documented as one value.
    opaque = {"resources", "mlflow.resources", "podSecurityContext", "securityContext"}

    def leaves(node: Any, prefix: str) -> Iterator[str]:
        if isinstance(node, dict) and node and prefix not in opaque:
            for key, value in node.items():
                yield from leaves(value, f"{prefix}.{key}" if prefix else key)
        else:
            yield prefix

    missing = [key for key in leaves(_values(), "") if f"`{key}`" not in readme]
    assert not missing, f"charts/mlops-operator/README.md does not document: {missing}"


# --- (9) alert rules -----------------------------------------------------------------------


def _metric_names() -> set[str]:
    """Every series name the operator and the model servers expose (from their one definition)."""
    from mlops_operator.controllers import operator_metrics
    from mlops_operator.monitoring import server_metrics

    names = {v for k, v in vars(server_metrics).items() if k.isupper() and isinstance(v, str)}
    names = {n for n in names if n.startswith("mlops_")}
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    for family in operator_metrics.REGISTRY.collect():
        names |= {family.name + suffix for suffix in suffixes[family.type]}
    return names


def _rule_groups() -> dict[str, Any]:
    groups: dict[str, Any] = _one(render("everything"), "PrometheusRule")["spec"]
    return groups


def test_alerts_use_only_metrics_that_exist() -> None:
    known = _metric_names()
    for group in _rule_groups()["groups"]:
        for rule in group["rules"]:
            used = set(re.findall(r"\bmlops_[a-z_]+\b", rule["expr"]))
            assert used and used <= known, f"{rule['alert']}: unknown metrics {used - known}"


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        binary = tools.promtool()
    except tools.ToolMissingError as exc:
        pytest.fail(str(exc))
    return subprocess.run(
        [str(binary), *args], capture_output=True, text=True, cwd=cwd, timeout=60, check=False
    )


def test_promtool_checks_the_rules(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(_rule_groups()))
    result = _promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_fire_when_they_should_and_only_then(tmp_path: Path) -> None:
    """promtool unit tests: the expressions select what the alerts promise, nothing else."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(_rule_groups()))
    exprs = {r["alert"]: r["expr"] for g in _rule_groups()["groups"] for r in g["rules"]}
    model = 'namespace="ml", model="iris", version="7"'
    # Values exact in binary, so the expected sample values are exact.
    tests = [
        {  # 0.9375 -> 0.875 (6.25 points) at 25h05; at 25h32 neither window straddles the drop
            "interval": "5m",
            "input_series": [
                {"series": f'mlops_model_accuracy{{{model}, pod="a"}}', "values": "0.9375x300 0.875x12"},
                {"series": f'mlops_model_labelled_samples{{{model}, pod="a"}}', "values": "500x312"},
            ],
            "promql_expr_test": [
                {
                    "expr": exprs["MLOpsModelAccuracyDrop"],
                    "eval_time": "25h32m",
                    "exp_samples": [{"labels": "{" + model + "}", "value": 0.0625}],
                },
                {"expr": exprs["MLOpsModelAccuracyDrop"], "eval_time": "24h", "exp_samples": []},
            ],
        },
        {  # 3.125 points down: no alert; 6.25 points on too few outcomes: no alert
            "interval": "5m",
            "input_series": [
                {"series": f'mlops_model_accuracy{{{model}, pod="a"}}', "values": "0.9375x300 0.90625x12"},
                {"series": f'mlops_model_labelled_samples{{{model}, pod="a"}}', "values": "500x312"},
                {
                    "series": 'mlops_model_accuracy{namespace="ml", model="x", version="1"}',
                    "values": "0.9375x300 0.875x12",
                },
                {
                    "series": 'mlops_model_labelled_samples{namespace="ml", model="x", version="1"}',
                    "values": "20x312",
                },
            ],
            "promql_expr_test": [
                {"expr": exprs["MLOpsModelAccuracyDrop"], "eval_time": "25h32m", "exp_samples": []},
            ],
        },
        {
            "interval": "1m",
            "input_series": [
                {"series": f'mlops_model_dataset_drift{{{model}, pod="a"}}', "values": "0x10 1x20"},
                {"series": f'mlops_model_dataset_drift{{{model}, pod="b"}}', "values": "0x30"},
            ],
            "promql_expr_test": [
                {"expr": exprs["MLOpsModelDataDrift"], "eval_time": "5m", "exp_samples": []},
                {
                    "expr": exprs["MLOpsModelDataDrift"],
                    "eval_time": "20m",
                    "exp_samples": [{"labels": "{" + model + "}", "value": 1}],
                },
            ],
        },
        {
            "interval": "1m",
            "input_series": [
                {
                    "series": 'mlops_reconcile_errors_total{namespace="mlops-system", kind="InferenceService"}',
                    "values": "0x10 0+30x20",
                },
            ],
            "promql_expr_test": [
                {"expr": exprs["MLOpsReconcileErrors"], "eval_time": "9m", "exp_samples": []},
                {
                    "expr": exprs["MLOpsReconcileErrors"],
                    "eval_time": "25m",
                    "exp_samples": [
                        {"labels": '{namespace="mlops-system", kind="InferenceService"}', "value": 0.5}
                    ],
                },
            ],
        },
    ]
    (tmp_path / "tests.yaml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests})
    )
    result = _promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# --- (10) Dockerfile, .dockerignore, kind --------------------------------------------------

DOCKERFILE = ROOT / "images" / "Dockerfile"
#: The Dockerfile's targets (`docker build -f images/Dockerfile --target <image>`) and the
#: command each runs by default.
IMAGES = {
    "operator": ["run", "--all-namespaces"],
    "trainer": ["train"],
    "server": ["serve"],
}


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path}: dangling line continuation"
    result = []
    for line in logical:
        instruction, _, arguments = line.strip().partition(" ")
        result.append((instruction.upper(), arguments.strip()))
    return result


def _global_args(steps: list[tuple[str, str]]) -> dict[str, str]:
    """The ARGs declared before the first FROM: the only ones a FROM line can use."""
    args: dict[str, str] = {}
    for instruction, arguments in steps:
        if instruction == "FROM":
            break
        if instruction == "ARG" and "=" in arguments:
            name, _, default = arguments.partition("=")
            args[name] = default
    return args


def _stages(path: Path) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """Stage name -> (what it is FROM, ARGs substituted; its instructions after the FROM)."""
    steps = _instructions(path)
    args = _global_args(steps)
    stages: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    current: list[tuple[str, str]] | None = None
    for instruction, arguments in steps:
        if instruction == "FROM":
            words = arguments.split()
            assert len(words) == 3 and words[1].upper() == "AS", f"{path}: unnamed stage FROM {arguments}"
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            assert words[2] not in stages, f"{path}: stage {words[2]} twice"
            current = []
            stages[words[2]] = (base, current)
        elif current is not None:
            current.append((instruction, arguments))
    return stages


def _chain(stages: dict[str, tuple[str, list[tuple[str, str]]]], name: str) -> list[tuple[str, str]]:
    """The instructions an image built from stage `name` inherits, its base image's first."""
    base, steps = stages[name]
    return (_chain(stages, base) if base in stages else []) + steps


def _root_base(stages: dict[str, tuple[str, list[tuple[str, str]]]], name: str) -> str:
    base = stages[name][0]
    return _root_base(stages, base) if base in stages else base


def _pyproject_extras() -> set[str]:
    import tomllib

    with (ROOT / "pyproject.toml").open("rb") as handle:
        return set(tomllib.load(handle)["project"]["optional-dependencies"])


def test_dockerfile_has_one_target_per_image_on_a_pinned_base() -> None:
    stages = _stages(DOCKERFILE)
    assert set(IMAGES) <= set(stages), f"targets missing: {set(IMAGES) - set(stages)}"
    assert list(stages)[-1] == "operator", "a build without --target gives the operator image"
    for name in stages:
        base = _root_base(stages, name)
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), (
            f"stage {name}: base {base!r} is not pinned to an exact patch tag"
        )
    assert len({_root_base(stages, image) for image in IMAGES}) == 1, "one base for every image"


@pytest.mark.parametrize(("image", "command"), sorted(IMAGES.items()), ids=sorted(IMAGES))
def test_dockerfile_target(image: str, command: list[str]) -> None:
    from mlops_operator.cli import SUBCOMMANDS

    stages = _stages(DOCKERFILE)
    runtime = _chain(stages, image)
    copies = [a.split() for i, a in runtime if i == "COPY" and a.startswith("--from=")]
    assert [words[1:] for words in copies] == [["/opt/venv", "/opt/venv"]], (
        f"{image}: the runtime copies exactly one built virtualenv"
    )
    venv_stage = copies[0][0].removeprefix("--from=")
    assert venv_stage in stages, f"{image}: COPY --from={venv_stage} names no stage"
    assert not any(i == "RUN" and "pip" in a for i, a in runtime), f"{image}: no pip in the runtime"
    user = [a for i, a in runtime if i == "USER"]
    assert user and user[-1] == f"{UID}:{UID}", f"{image}: must run as {UID}:{UID} (the chart's runAsUser)"
    entrypoint = [json.loads(a) for i, a in runtime if i == "ENTRYPOINT"]
    assert entrypoint and entrypoint[-1] == ["mlops-operator"]
    cmd = [json.loads(a) for i, a in runtime if i == "CMD"]
    assert cmd == [command], f"{image}: CMD"
    assert command[0] in SUBCOMMANDS
    env = " ".join(a for i, a in runtime if i == "ENV")
    for variable in ("HOME=/tmp", "MPLCONFIGDIR=/tmp", "PYTHONDONTWRITEBYTECODE=1", "PATH=/opt/venv/bin:"):
        assert variable in env, f"{image}: ENV {variable} (read-only root filesystem)"
    labels = " ".join(a for i, a in runtime if i == "LABEL")
    for label in ("title", "description", "version", "revision", "source", "licenses"):
        assert f"org.opencontainers.image.{label}=" in labels, f"{image}: no {label} label"
    titles = re.findall(r'org\.opencontainers\.image\.title="([^"]+)"', labels)
    assert titles == [f"mlops-operator-{image}"], f"{image}: title labels {titles}"
    installs = " ".join(a for i, a in _chain(stages, venv_stage) if i == "RUN" and "pip install" in a)
    extras = re.findall(r"mlops_operator-\*\.whl\)\[([a-z0-9,]+)\]", installs)
    assert len(extras) == 1, f"{image}: {venv_stage} must install the package once, with its extras"
    wanted = set(extras[0].split(","))
    assert image in wanted, f"{image}: must install the `{image}` extra"
    assert wanted <= _pyproject_extras(), (
        f"{image}: extras not in pyproject.toml: {wanted - _pyproject_extras()}"
    )


def _started_as(image: str, settings: Settings) -> tuple[str, list[str]]:
    """(image, command + args) of the container that runs `image`: the chart's Deployment
    for the operator, the pods the operator builds for the trainer and the server."""
    if image == "operator":
        container = _container(_operator_deployment("defaults"))
        assert "command" not in container, "the chart relies on the image's ENTRYPOINT"
        return container["image"], ["mlops-operator", *container["args"]]
    from mlops_operator.api.inferenceservice import InferenceServiceSpec
    from mlops_operator.api.trainingjob import TrainingJobSpec
    from mlops_operator.resources import inferenceservice_children, trainingjob_children

    owner = {"metadata": {"name": "x", "namespace": "default", "uid": "u"}}
    if image == "trainer":
        spec = yaml.safe_load((ROOT / "examples" / "iris-trainingjob.yaml").read_text())["spec"]
        pod = trainingjob_children.build_training_job(
            {**owner, "apiVersion": "mlops.dev/v1alpha1", "kind": "TrainingJob"},
            TrainingJobSpec.model_validate(spec),
            number=1,
            trigger="Create",
            image=settings.trainer_image,
            mlflow_tracking_uri=settings.mlflow_tracking_uri,
        )["spec"]["template"]["spec"]
    else:
        spec = yaml.safe_load((ROOT / "examples" / "iris-inferenceservice.yaml").read_text())["spec"]
        pod = inferenceservice_children.build_predictor_deployment(
            {**owner, "apiVersion": "mlops.dev/v1alpha1", "kind": "InferenceService"},
            InferenceServiceSpec.model_validate(spec),
            version="1",
            model_uri="models:/x/1",
            sha256=None,
            image=settings.server_image,
            mlflow_tracking_uri=settings.mlflow_tracking_uri,
            replicas=1,
            runtime="uvicorn",
        )["spec"]["template"]["spec"]
    container = pod["containers"][0]
    return container["image"], [*container["command"], *container.get("args", [])]


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_chart_images_are_the_dockerfile_targets(image: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each image is named after its target (<registry>/<target>:<tag>) and started the way
    # that target's ENTRYPOINT and CMD expect.
    repository = _values()["image"][image]["repository"]
    assert repository.rsplit("/", 1)[-1] == image, f"image.{image}.repository {repository!r}"
    settings = _settings_from(_env(_operator_deployment("defaults")), monkeypatch)
    reference, argv = _started_as(image, settings)
    assert reference == f"{repository}:{__version__}"
    runtime = _chain(_stages(DOCKERFILE), image)
    entrypoint = [json.loads(a) for i, a in runtime if i == "ENTRYPOINT"][-1]
    assert argv[: len(entrypoint)] == entrypoint, f"{image}: runs {argv}, not the ENTRYPOINT {entrypoint}"
    assert argv[len(entrypoint)] == IMAGES[image][0], f"{image}: runs {argv}, not `{IMAGES[image][0]}`"


def test_dockerignore_keeps_what_the_images_copy() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "start from nothing: secrets, .venv and mlruns stay out of the context"
    kept = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copies = [a for i, a in _instructions(DOCKERFILE) if i == "COPY" and "--from" not in a]
    assert copies, "the Dockerfile copies nothing from the context"
    for arguments in copies:
        sources = shlex.split(arguments)[:-1]
        assert {s.rstrip("/") for s in sources} <= kept, f"COPY {sources} is ignored by .dockerignore"


def test_kind_config() -> None:
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    roles = [node["role"] for node in config["nodes"]]
    assert roles.count("control-plane") == 1 and "worker" in roles
    for node in config["nodes"]:
        for mapping in node.get("extraPortMappings", []):
            assert 30000 <= mapping["containerPort"] <= 32767, "map a NodePort"
            assert mapping.get("listenAddress") == "127.0.0.1", "do not expose the cluster beyond the host"
