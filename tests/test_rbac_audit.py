"""The chart's RBAC, audited against what the operator really asks of the API server.

For each way the chart installs the operator (cluster-wide, and ``watchNamespaces``), the
operator runs in-process (kopf, as in tests/test_operator.py) against the emulated API server
as the chart's ServiceAccount: its kubeconfig carries a token the server knows as
``system:serviceaccount:<release namespace>:<account>``. The test plays the rest of the cluster
as an administrator (creating resources, Job and Deployment status, ``kubectl scale``) through
scenarios that make the operator do what it does in a real cluster. The server audits every
request; then:

- every request of the operator must be allowed by the chart's Roles and ClusterRoles (plus
  the discovery rules every cluster grants to all authenticated users), decided the way
  Kubernetes' RBAC authorizer decides (sandbox/apiserver/rbac.py): a request the chart does
  not grant would be a 403 on a real cluster;
- every permission the chart grants must be used by some request, or be in ``UNUSED_ALLOWED``
  with the reason it is needed although these scenarios do not exercise it (least privilege).
  The report of unused grants is printed and recorded as the ``rbac_unused_grants`` property.
"""

from __future__ import annotations

import json
import os
import secrets
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kopf.testing import KopfRunner

from mlops_operator.config import Settings
from mlops_operator.controllers.handlers import register
from mlops_operator.sandbox.apiserver import ApiServerThread, write_kubeconfig
from mlops_operator.sandbox.apiserver.authentication import Authenticator, RequestAttributes, UserInfo
from mlops_operator.sandbox.apiserver.rbac import Authorizer, UnusedGrant
from mlops_operator.sandbox.manager import default_crds
from tests.fixtures_operator import events_for, example, finish_job, make_ready, validated_model_version
from tests.fixtures_sandbox import Api, wait_for, wait_for_condition
from tests.test_chart import NAMESPACE, RELEASE, render

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
#: The namespaces the scenarios run in: the chart's watchNamespaces in that mode (both of
#: them, so each Role is exercised), any two namespaces cluster-wide.
NAMESPACES = ("team-a", "team-b")
MODES = ("defaults", "watch-namespaces")

#: What every cluster grants every authenticated user (kube-apiserver's bootstrap policy,
#: plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go): discovery, version and health.
#: Not the chart's to grant, so not part of the least-privilege report.
BOOTSTRAP: list[dict[str, Any]] = [
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name}, "rules": rules}
    for name, rules in (
        ("system:discovery", [{"verbs": ["get"], "nonResourceURLs": [
            "/livez", "/readyz", "/healthz", "/version", "/version/", "/openapi", "/openapi/*",
            "/api", "/api/*", "/apis", "/apis/*"]}]),
        ("system:public-info-viewer", [{"verbs": ["get"], "nonResourceURLs": [
            "/livez", "/readyz", "/healthz", "/version", "/version/"]}]),
        ("system:basic-user", [
            {"verbs": ["create"], "apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"]},
            {"verbs": ["create"], "apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"]}]),
    )
] + [
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
     "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:authenticated"}]}
    for name in ("system:discovery", "system:public-info-viewer", "system:basic-user")
]  # fmt: skip

#: Granted permissions these scenarios do not use, each with why the chart still grants it.
#: Keys are a permission as the report prints it ("<verb> <group or core>/<resource>").
_RAYJOBS = (
    "engine: Ray runs are KubeRay RayJobs; the audit's API server, like the sandbox, has no KubeRay CRD, so no "
    "scenario makes one (tests/test_trainingjob_ray.py runs the operator's Ray path against a stand-in CRD)"
)
_LEASE = (
    "leader election runs in `mlops-operator run` before kopf starts, not in the in-process kopf these scenarios "
    "drive; tests/test_leader_election.py checks the Lease requests of real operator processes against the chart"
)
UNUSED_ALLOWED: dict[str, str] = {
    "create coordination.k8s.io/leases": _LEASE,
    "get coordination.k8s.io/leases ['mlops-operator']": _LEASE,
    "update coordination.k8s.io/leases ['mlops-operator']": _LEASE,
    **{f"{verb} ray.io/rayjobs": _RAYJOBS for verb in ("get", "list", "create", "patch", "delete")},
    "patch batch/jobs": "kube_client.Kube.apply patches a run's Job when a run is started again under a name whose Job "
    "exists and differs (the status write after its create was lost); no scenario loses a write",
    # The operator reads every kind below from kopf's watch-fed indexes (kube_client.ObjectCache);
    # it GETs one from the server only when a create answers 409 AlreadyExists (an object the
    # cache does not hold: not the operator's, or made by another writer a moment ago).
    **dict.fromkeys(
        (
            "get apps/deployments",
            "get autoscaling/horizontalpodautoscalers",
            "get batch/jobs",
            "get core/services",
            "get mlops.dev/inferenceservices",
            "get mlops.dev/modelversions",
            "get mlops.dev/trainingjobs",
            "get policy/poddisruptionbudgets",
        ),
        "kube_client.Kube.apply GETs the object a create found already there (409 AlreadyExists); "
        "every other read is served by the watch-fed cache, and no scenario collides on a name",
    ),
}


# --- driving the operator ----------------------------------------------------------------------


class NamespacedApi(Api):
    """The tests' client as the administrator, confined to one namespace.

    The scenario helpers shared with tests/test_operator.py address ``default``; here that
    means this client's namespace, so the same helpers drive any namespace.
    """

    def __init__(self, url: str, token: str, ca: bytes, namespace: str) -> None:
        super().__init__(url, token, ca)
        self.namespace = namespace

    def path(self, kind: str, namespace: str | None = "default", name: str | None = None) -> str:
        return super().path(kind, self.namespace if namespace == "default" else namespace, name)

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        return super().create({**obj, "metadata": {**obj["metadata"], "namespace": self.namespace}})

    def read(self, kind: tuple[str, str], name: str) -> dict[str, Any] | None:
        """An object of a kind the shared client does not know (HPA, PDB), or None."""
        response = self.http.get(self._other(kind, name))
        if response.status_code == 404:
            return None
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def edit(self, kind: tuple[str, str], name: str, patch: dict[str, Any]) -> None:
        """What ``kubectl edit`` does to such an object: a merge patch."""
        self.http.patch(
            self._other(kind, name), content=json.dumps(patch),
            headers={"Content-Type": "application/merge-patch+json"},
        ).raise_for_status()  # fmt: skip

    def _other(self, kind: tuple[str, str], name: str) -> str:
        api_version, plural = kind
        return f"/apis/{api_version}/namespaces/{self.namespace}/{plural}/{name}"


HPA = ("autoscaling/v2", "horizontalpodautoscalers")
PDB = ("policy/v1", "poddisruptionbudgets")
HTTP_ROUTE = ("gateway.networking.k8s.io/v1", "httproutes")
TRAINER_RESULT = {
    "status": "Succeeded",
    "modelName": "iris-classifier",
    "modelVersion": "1",
    "mlflowRunId": "run1",
    "sha256": "c" * 64,
    "metrics": {"accuracy": "0.9667"},
    "dataset": {"uri": "sklearn://iris", "rows": 150},
}


def _spec(obj: dict[str, Any] | None) -> dict[str, Any]:
    return (obj or {}).get("spec") or {}


def keeping_ready(
    api: NamespacedApi, deployment: str, replicas: int, check: Callable[[], T]
) -> Callable[[], T]:
    """``check``, after playing the Deployment controller: the Deployment's current generation is
    ready, again whenever the operator has changed it since (make_ready alone reports once)."""

    def step() -> T:
        live = api.get("Deployment", deployment)
        if live and (live.get("status") or {}).get("observedGeneration") != live["metadata"].get(
            "generation"
        ):
            make_ready(api, deployment, replicas)
        return check()

    return step


def _has_condition(obj: dict[str, Any] | None, type_: str, status: str) -> bool:
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == type_ and c.get("status") == status for c in conditions)


def train(api: NamespacedApi) -> None:
    """A TrainingJob run that succeeds: Job, ModelVersion, status, Events; the finished Job pruned."""
    api.create(example("iris-trainingjob.yaml", schedule=None, successfulRunsHistoryLimit=0))
    job = wait_for(lambda: api.get("Job", "iris-train-1"), message="the run's Job")
    wait_for_condition(api, "TrainingJob", "iris-train", "Running", "True")
    finish_job(api, job, "Complete", "Completed", json.dumps(TRAINER_RESULT), 0)
    wait_for_condition(api, "TrainingJob", "iris-train", "Ready", "True")
    wait_for(lambda: api.get("ModelVersion", "iris-classifier-v1"), message="the ModelVersion")
    wait_for(
        lambda: events_for(api, "iris-train", "ModelVersionCreated"), message="a ModelVersionCreated Event"
    )
    wait_for(
        lambda: api.get("Job", "iris-train-1") is None, message="the finished Job pruned (history limit 0)"
    )


def serve(api: NamespacedApi) -> None:
    """Two replicas of the latest validated version; children edited by hand are put back; scaled
    through /scale; a new version rolled out, the old one retired."""
    manifest = example("iris-inferenceservice.yaml", model={"name": "demo-model", "track": "LatestValidated"})
    manifest["metadata"]["name"] = "demo"
    manifest["spec"].pop("retraining")
    manifest["spec"]["rollout"] = {"strategy": "Replace"}  # a canary's analysis steps take minutes
    api.create(manifest)
    wait_for_condition(api, "InferenceService", "demo", "Ready", "False")
    validated_model_version(api, "1")
    wait_for(lambda: api.get("Deployment", "demo-v1"), message="version 1's Deployment")
    wait_for(lambda: api.get("Service", "demo-v1"), message="version 1's Service")
    wait_for(lambda: api.get("Service", "demo"), message="the stable Service")
    wait_for(lambda: api.read(PDB, "demo"), message="the PodDisruptionBudget")
    wait_for(
        keeping_ready(
            api, "demo-v1", 2, lambda: _has_condition(api.get("InferenceService", "demo"), "Ready", "True")
        ),
        message="demo Ready=True",
    )

    # Someone edits the children by hand: the next reconciliation puts them back.
    selector = _spec(api.get("Service", "demo"))["selector"]
    api.patch("Service", "demo", {"spec": {"selector": dict.fromkeys(selector, "edited")}})
    api.edit(PDB, "demo", {"spec": {"maxUnavailable": 0}})
    wait_for(
        lambda: "edited" not in _spec(api.get("Service", "demo")).get("selector", {"": "edited"}).values(),
        message="the selector restored",
    )
    wait_for(lambda: _spec(api.read(PDB, "demo")).get("maxUnavailable") == 1, message="the PDB restored")

    # kubectl scale (or an HPA) through the scale subresource; the operator follows.
    api.http.patch(
        api.path("InferenceService", "default", "demo") + "/scale",
        content=json.dumps({"spec": {"replicas": 3}}),
        headers={"Content-Type": "application/merge-patch+json"},
    ).raise_for_status()
    wait_for(
        lambda: _spec(api.get("Deployment", "demo-v1")).get("replicas") == 3, message="version 1 scaled to 3"
    )

    validated_model_version(api, "2")
    wait_for(lambda: api.get("Deployment", "demo-v2"), message="version 2's Deployment")
    wait_for(
        keeping_ready(api, "demo-v2", 3, lambda: api.get("Deployment", "demo-v1") is None),
        message="version 1 retired",
    )
    wait_for(lambda: api.get("Service", "demo-v1") is None, message="version 1's Service retired")


def autoscale(api: NamespacedApi) -> None:
    """An HPA that follows spec.autoscaling; HPA and PDB deleted when it goes to one fixed replica."""
    manifest = example(
        "iris-inferenceservice.yaml",
        model={"name": "auto-model", "version": "1"},
        replicas=None,  # replicas or autoscaling, not both
        autoscaling={"minReplicas": 2, "maxReplicas": 4},
    )
    manifest["metadata"]["name"] = "auto"
    manifest["spec"].pop("retraining")
    api.create(manifest)
    wait_for(lambda: api.read(HPA, "auto-v1"), message="the HorizontalPodAutoscaler")
    wait_for(lambda: api.read(PDB, "auto"), message="the PodDisruptionBudget")
    api.patch("InferenceService", "auto", {"spec": {"autoscaling": {"maxReplicas": 5}}})
    wait_for(lambda: _spec(api.read(HPA, "auto-v1")).get("maxReplicas") == 5, message="the HPA updated")
    api.patch("InferenceService", "auto", {"spec": {"autoscaling": None, "replicas": 1}})
    wait_for(lambda: api.read(HPA, "auto-v1") is None, message="the HPA deleted")
    wait_for(lambda: api.read(PDB, "auto") is None, message="the PDB deleted")


def route(api: NamespacedApi) -> None:
    """traffic.router GatewayAPI: an HTTPRoute made, moved to another Gateway, then given up."""
    manifest = example(
        "iris-inferenceservice.yaml", model={"name": "routed-model", "version": "1"}, replicas=1
    )
    manifest["metadata"]["name"] = "routed"
    manifest["spec"].pop("retraining")
    manifest["spec"]["traffic"] = {"router": "GatewayAPI", "gateway": "public"}
    api.create(manifest)
    wait_for(lambda: api.read(HTTP_ROUTE, "routed"), message="the HTTPRoute")
    api.patch("InferenceService", "routed", {"spec": {"traffic": {"gateway": "internal"}}})
    wait_for(
        lambda: (
            (_spec(api.read(HTTP_ROUTE, "routed")).get("parentRefs") or [{}])[0].get("name") == "internal"
        ),
        message="the HTTPRoute moved to the internal Gateway",
    )
    api.patch("InferenceService", "routed", {"spec": {"traffic": {"router": "Replicas", "gateway": None}}})
    wait_for(lambda: api.read(HTTP_ROUTE, "routed") is None, message="the HTTPRoute removed")


def delete(api: NamespacedApi) -> None:
    """Deleting the operator's resources: it lets go of them (finalizers, per-object state)."""
    for kind, name in (
        ("InferenceService", "auto"), ("InferenceService", "routed"), ("InferenceService", "demo"),
        ("TrainingJob", "iris-train"),
    ):  # fmt: skip
        api.delete(kind, name)
        try:
            wait_for(lambda kind=kind, name=name: api.get(kind, name) is None, message=f"{kind} {name} gone")
        except pytest.fail.Exception:
            meta = (api.get(kind, name) or {}).get("metadata") or {}
            pytest.fail(
                f"{kind} {api.namespace}/{name} still exists 30 s after its DELETE: finalizers "
                f"{meta.get('finalizers')}, deletionTimestamp {meta.get('deletionTimestamp')}"
            )


def drive(api: NamespacedApi) -> None:
    for scenario in (train, serve, autoscale, route, delete):
        scenario(api)


# --- running and auditing ----------------------------------------------------------------------


@dataclass(frozen=True)
class Audit:
    mode: str
    rendered: tuple[dict[str, Any], ...]
    operator: UserInfo
    requests: frozenset[RequestAttributes]


def _operator_identity(rendered: tuple[dict[str, Any], ...]) -> tuple[UserInfo, list[str]]:
    """The ServiceAccount identity the chart's Deployment runs as, and its ``run`` arguments."""
    (deployment,) = [o for o in rendered if o["kind"] == "Deployment" and o["metadata"]["name"] == f"{RELEASE}-mlops-operator"]  # fmt: skip
    pod = deployment["spec"]["template"]["spec"]
    args: list[str] = pod["containers"][0]["args"]
    assert args[0] == "run", args
    return UserInfo.service_account(NAMESPACE, pod["serviceAccountName"]), args[1:]


def run_audit(mode: str, tmp: Path) -> Audit:
    """Run the operator as the chart would, drive every scenario, return what it asked for."""
    rendered = render(mode)
    operator, scope_args = _operator_identity(rendered)
    admin_token, operator_token = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    authenticator = Authenticator({admin_token: UserInfo.admin(), operator_token: operator})
    server = ApiServerThread(crds_dir=default_crds(tmp), authenticator=authenticator).start()
    ca = server.certificates.ca
    kubeconfig = write_kubeconfig(tmp / "kubeconfig", server.url, token=operator_token, ca=ca)
    settings = Settings(
        metrics_port=0,
        liveness_port=0,
        reconcile_interval=1,
        mlflow_tracking_uri="http://127.0.0.1:9",  # nothing listens: MLflow is down
    )
    # Both kopf's login and the operator's own client (built at startup, as in a pod) read the
    # environment's kubeconfig: every request goes out as the ServiceAccount.
    saved = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(kubeconfig)
    try:
        admin = Api(server.url, admin_token, ca)
        for namespace in NAMESPACES:
            admin.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        # The chart's scope arguments (--all-namespaces, or --namespace=X per watched namespace)
        # are kopf's own: the operator watches exactly what it would in the cluster.
        registry = register(settings)
        with (
            KopfRunner(["run", "--standalone", *scope_args], registry=registry, timeout=60) as runner,
            ThreadPoolExecutor(len(NAMESPACES)) as pool,
        ):
            list(pool.map(drive, [NamespacedApi(server.url, admin_token, ca, ns) for ns in NAMESPACES]))
        assert runner.exception is None, runner.output
        requests = frozenset(server.emulator.audit.attributes(user=operator.username))
    finally:
        server.stop()
        if saved is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = saved
    return Audit(mode, rendered, operator, requests)


@pytest.fixture(scope="module")
def audits(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Audit]]:
    """The audit of one mode, run on first use (the operator runs once per mode)."""
    done: dict[str, Audit | BaseException] = {}

    def get(mode: str) -> Audit:
        if mode not in done:
            try:
                done[mode] = run_audit(mode, tmp_path_factory.mktemp(mode))
            except BaseException as exc:
                done[mode] = exc  # reported by the first test that asked; not run again
                raise
        result = done[mode]
        if isinstance(result, BaseException):
            pytest.fail(f"the {mode} audit failed (see the first test of that mode): {result}")
        return result

    yield get


def _describe(attrs: RequestAttributes) -> str:
    if not attrs.resource_request:
        return f"{attrs.verb} {attrs.path}"
    resource = attrs.resource + (f"/{attrs.subresource}" if attrs.subresource else "")
    where = f"namespace {attrs.namespace}" if attrs.namespace else "cluster scope"
    name = f" {attrs.name}" if attrs.name else ""
    return f"{attrs.verb} {attrs.api_group or 'core'}/{resource}{name} ({where})"


def _report(mode: str, unused: list[UnusedGrant]) -> str:
    lines = [f"RBAC grants of the chart ({mode}) that no request of the operator used:"]
    for grant in unused:
        lines.append(f"  {grant.rule}:")
        for permission in grant.permissions:
            why = UNUSED_ALLOWED.get(str(permission))
            lines.append(f"    {permission}" + (f"  -- allowed: {why}" if why else "  -- NOT JUSTIFIED"))
    return "\n".join(lines) if unused else f"RBAC grants of the chart ({mode}): every one was used."


# --- the checks --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_the_chart_grants_every_request_of_the_operator(audits: Callable[[str], Audit], mode: str) -> None:
    audit = audits(mode)
    assert any(r.verb == "create" and r.resource == "jobs" for r in audit.requests), (
        "the scenarios did not run"
    )
    authorizer = Authorizer.from_objects([*audit.rendered, *BOOTSTRAP], namespace=NAMESPACE)
    decisions = {request: authorizer.authorize(request) for request in audit.requests}
    denied = sorted((_describe(r), d.reason) for r, d in decisions.items() if not d.allowed)
    assert not denied, (
        f"{len(denied)} requests of the operator the chart ({mode}) does not allow:\n"
        + "\n".join(f"  {what}\n    {reason}" for what, reason in denied)
    )


@pytest.mark.parametrize("mode", MODES)
def test_every_grant_of_the_chart_is_used_or_justified(
    audits: Callable[[str], Audit], mode: str, record_property: Callable[[str, object], None]
) -> None:
    audit = audits(mode)
    unused = Authorizer.from_objects(audit.rendered, namespace=NAMESPACE).unused_rules(
        audit.requests, audit.operator.username, audit.operator.groups
    )
    report = _report(mode, unused)
    print(report)
    record_property("rbac_unused_grants", report)
    if unused:
        warnings.warn(report, stacklevel=1)
    unjustified = sorted(
        {f"{grant.rule}: {p}" for grant in unused for p in grant.permissions if str(p) not in UNUSED_ALLOWED}
    )
    assert not unjustified, (
        f"the chart ({mode}) grants {len(unjustified)} permissions the operator did not use; remove them "
        "from the chart, or add them to UNUSED_ALLOWED with the reason they are needed:\n  "
        + "\n  ".join(unjustified)
    )


@pytest.mark.parametrize("mode", MODES)
def test_the_audit_notices_a_grant_the_chart_lacks(audits: Callable[[str], Audit], mode: str) -> None:
    """The audit is not vacuous: the same requests against the chart minus its Job rule are denied."""
    audit = audits(mode)
    without_jobs = [
        {**obj, "rules": [r for r in obj["rules"] if "jobs" not in r.get("resources", [])]}
        if "rules" in obj
        else obj
        for obj in audit.rendered
    ]
    authorizer = Authorizer.from_objects([*without_jobs, *BOOTSTRAP], namespace=NAMESPACE)
    on_jobs = {r for r in audit.requests if r.resource == "jobs"}
    assert on_jobs, "the operator made no request on Jobs"
    assert {r for r in audit.requests if not authorizer.authorize(r).allowed} == on_jobs


def test_every_unused_allowed_entry_is_still_granted_and_unused(audits: Callable[[str], Audit]) -> None:
    unused: set[str] = set()
    for mode in MODES:
        audit = audits(mode)
        grants = Authorizer.from_objects(audit.rendered, namespace=NAMESPACE).unused_rules(
            audit.requests, audit.operator.username, audit.operator.groups
        )
        unused |= {str(permission) for grant in grants for permission in grant.permissions}
    stale = sorted(set(UNUSED_ALLOWED) - unused)
    assert not stale, f"UNUSED_ALLOWED entries used, or no longer granted, in every mode: remove {stale}"
