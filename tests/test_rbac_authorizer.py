"""The RBAC authorizer (sandbox/apiserver/rbac.py) decides as Kubernetes' does.

Rule matching follows ``rbac/v1`` helpers (``VerbMatches``, ``APIGroupMatches``,
``ResourceMatches``, ``ResourceNameMatches``, ``NonResourceURLMatches``), binding scope and
subjects follow ``DefaultRuleResolver.VisitRulesFor`` / ``appliesToUser``; the expected reasons
are the strings kube-apiserver writes.
"""

from __future__ import annotations

from typing import Any

import pytest

from mlops_operator.sandbox.apiserver.authentication import RequestAttributes, UserInfo
from mlops_operator.sandbox.apiserver.rbac import Authorizer, Permission, PolicyRule

SA = UserInfo.service_account("ops", "operator")
ALICE = UserInfo("alice", ("developers", "system:authenticated"))


def request(
    verb: str,
    resource: str,
    *,
    group: str = "",
    subresource: str = "",
    namespace: str = "",
    name: str = "",
    user: UserInfo = SA,
) -> RequestAttributes:
    return RequestAttributes(
        user.username,
        user.groups,
        verb,
        api_group=group,
        resource=resource,
        subresource=subresource,
        namespace=namespace,
        name=name,
        path="/irrelevant-for-resource-requests",
    )


def url(verb: str, path: str, user: UserInfo = SA) -> RequestAttributes:
    return RequestAttributes(user.username, user.groups, verb, path=path, resource_request=False)


def rule(
    verbs: list[str],
    groups: list[str] | None = None,
    resources: list[str] | None = None,
    names: list[str] | None = None,
    urls: list[str] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"verbs": verbs}
    for key, value in (
        ("apiGroups", groups),
        ("resources", resources),
        ("resourceNames", names),
        ("nonResourceURLs", urls),
    ):
        if value is not None:
            out[key] = value
    return out


def role(kind: str, name: str, rules: list[dict[str, Any]], namespace: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta, "rules": rules}


def binding(
    kind: str,
    name: str,
    ref_kind: str,
    ref_name: str,
    subjects: list[dict[str, str]],
    namespace: str | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": ref_kind, "name": ref_name},
        "subjects": subjects,
    }


SA_SUBJECT = {"kind": "ServiceAccount", "name": "operator", "namespace": "ops"}


# --- one rule ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "attrs", "allowed"),
    [
        # verbs
        pytest.param(rule(["get"], [""], ["pods"]), request("get", "pods", namespace="a", name="p"), True, id="verb-exact"),
        pytest.param(rule(["get"], [""], ["pods"]), request("list", "pods", namespace="a"), False, id="verb-missing"),
        pytest.param(rule(["get", "list"], [""], ["pods"]), request("watch", "pods"), False, id="list-does-not-imply-watch"),
        pytest.param(rule(["*"], [""], ["pods"]), request("deletecollection", "pods", namespace="a"), True, id="verb-wildcard"),
        pytest.param(rule(["Get"], [""], ["pods"]), request("get", "pods", name="p"), False, id="verbs-are-case-sensitive"),
        # API groups
        pytest.param(rule(["get"], ["apps"], ["deployments"]), request("get", "deployments", group="apps", name="d"), True, id="group-exact"),
        pytest.param(rule(["get"], [""], ["deployments"]), request("get", "deployments", group="apps", name="d"), False, id="core-is-not-apps"),
        pytest.param(rule(["get"], ["apps"], ["pods"]), request("get", "pods", name="p"), False, id="apps-is-not-core"),
        pytest.param(rule(["get"], ["*"], ["deployments"]), request("get", "deployments", group="apps", name="d"), True, id="group-wildcard"),
        pytest.param(rule(["get"], None, ["pods"]), request("get", "pods", name="p"), False, id="no-groups-match-nothing"),
        # resources and subresources
        pytest.param(rule(["get"], [""], ["*"]), request("get", "secrets", name="s"), True, id="resource-wildcard"),
        pytest.param(rule(["get"], [""], ["*"]), request("get", "pods", subresource="log", name="p"), True, id="resource-wildcard-covers-subresources"),
        pytest.param(rule(["patch"], ["mlops.dev"], ["trainingjobs"]), request("patch", "trainingjobs", group="mlops.dev", subresource="status", name="t"), False, id="resource-does-not-cover-its-status"),
        pytest.param(rule(["patch"], ["mlops.dev"], ["trainingjobs/status"]), request("patch", "trainingjobs", group="mlops.dev", subresource="status", name="t"), True, id="resource-slash-subresource"),
        pytest.param(rule(["patch"], ["mlops.dev"], ["trainingjobs/status"]), request("patch", "trainingjobs", group="mlops.dev", name="t"), False, id="subresource-does-not-cover-its-resource"),
        pytest.param(rule(["update"], ["apps"], ["*/scale"]), request("update", "deployments", group="apps", subresource="scale", name="d"), True, id="star-slash-subresource"),
        pytest.param(rule(["update"], ["apps"], ["*/scale"]), request("update", "deployments", group="apps", name="d"), False, id="star-slash-subresource-not-the-resource"),
        pytest.param(rule(["get"], [""], ["*/status"]), request("get", "pods", subresource="log", name="p"), False, id="star-slash-other-subresource"),
        pytest.param(rule(["get"], [""], ["pods/*"]), request("get", "pods", subresource="log", name="p"), False, id="resource-slash-star-is-literal"),
        pytest.param(rule(["get"], [""], ["*/log"]), request("get", "pods", subresource="status", name="p"), False, id="star-slash-suffix-must-be-whole"),
        # resourceNames
        pytest.param(rule(["get"], [""], ["configmaps"], ["cfg"]), request("get", "configmaps", namespace="a", name="cfg"), True, id="resource-name-listed"),
        pytest.param(rule(["get"], [""], ["configmaps"], ["cfg"]), request("get", "configmaps", namespace="a", name="other"), False, id="resource-name-not-listed"),
        pytest.param(rule(["list"], [""], ["configmaps"], ["cfg"]), request("list", "configmaps", namespace="a"), False, id="resource-names-never-allow-list"),
        pytest.param(rule(["create"], [""], ["configmaps"], ["cfg"]), request("create", "configmaps", namespace="a"), False, id="resource-names-never-allow-create"),
        pytest.param(rule(["update"], [""], ["*/status"], ["p"]), request("update", "pods", subresource="status", name="p"), True, id="resource-name-with-subresource"),
        # non-resource URLs
        pytest.param(rule(["get"], urls=["/version"]), url("get", "/version"), True, id="url-exact"),
        pytest.param(rule(["get"], urls=["/version"]), url("get", "/version/"), False, id="url-trailing-slash-differs"),
        pytest.param(rule(["get"], urls=["/apis/*"]), url("get", "/apis/apps/v1"), True, id="url-prefix-star"),
        pytest.param(rule(["get"], urls=["/apis/*"]), url("get", "/apis"), False, id="url-prefix-star-needs-the-slash"),
        pytest.param(rule(["get"], urls=["/apis*"]), url("get", "/apis"), True, id="url-star-after-name"),
        pytest.param(rule(["get"], urls=["*"]), url("get", "/metrics"), True, id="url-wildcard"),
        pytest.param(rule(["get"], urls=["/healthz"]), url("post", "/healthz"), False, id="url-verb-is-the-http-method"),
        pytest.param(rule(["get"], urls=["*"]), request("get", "pods", name="p"), False, id="url-rule-grants-no-resources"),
        pytest.param(rule(["get"], ["*"], ["*"]), url("get", "/version"), False, id="resource-rule-grants-no-urls"),
    ],
)  # fmt: skip
def test_rule_allows(policy: dict[str, Any], attrs: RequestAttributes, allowed: bool) -> None:
    assert PolicyRule.from_dict(policy).allows(attrs) is allowed


# --- bindings, subjects, scope -----------------------------------------------------------------

PODS = rule(["get", "list"], [""], ["pods"])
NODES = rule(["get"], [""], ["nodes"])

CASES: list[Any] = [
    pytest.param(
        [role("ClusterRole", "r", [PODS]), binding("ClusterRoleBinding", "b", "ClusterRole", "r", [SA_SUBJECT])],
        request("list", "pods", namespace="anywhere"), True, id="clusterrolebinding-any-namespace",
    ),
    pytest.param(
        [role("ClusterRole", "r", [PODS]), binding("ClusterRoleBinding", "b", "ClusterRole", "r", [SA_SUBJECT])],
        request("list", "pods"), True, id="clusterrolebinding-all-namespaces",
    ),
    pytest.param(
        [role("ClusterRole", "r", [NODES]), binding("ClusterRoleBinding", "b", "ClusterRole", "r", [SA_SUBJECT])],
        request("get", "nodes", name="n1"), True, id="clusterrolebinding-cluster-scoped",
    ),
    pytest.param(
        [role("Role", "r", [PODS], "team-a"), binding("RoleBinding", "b", "Role", "r", [SA_SUBJECT], "team-a")],
        request("get", "pods", namespace="team-a", name="p"), True, id="rolebinding-own-namespace",
    ),
    pytest.param(
        [role("Role", "r", [PODS], "team-a"), binding("RoleBinding", "b", "Role", "r", [SA_SUBJECT], "team-a")],
        request("get", "pods", namespace="team-b", name="p"), False, id="rolebinding-other-namespace",
    ),
    pytest.param(
        [role("Role", "r", [PODS], "team-a"), binding("RoleBinding", "b", "Role", "r", [SA_SUBJECT], "team-a")],
        request("list", "pods"), False, id="rolebinding-never-all-namespaces",
    ),
    pytest.param(
        [role("ClusterRole", "r", [PODS, NODES]), binding("RoleBinding", "b", "ClusterRole", "r", [SA_SUBJECT], "team-a")],
        request("list", "pods", namespace="team-a"), True, id="rolebinding-to-clusterrole-in-namespace",
    ),
    pytest.param(
        [role("ClusterRole", "r", [PODS, NODES]), binding("RoleBinding", "b", "ClusterRole", "r", [SA_SUBJECT], "team-a")],
        request("list", "pods", namespace="team-b"), False, id="rolebinding-to-clusterrole-other-namespace",
    ),
    pytest.param(
        [role("ClusterRole", "r", [PODS, NODES]), binding("RoleBinding", "b", "ClusterRole", "r", [SA_SUBJECT], "team-a")],
        request("get", "nodes", name="n1"), False, id="rolebinding-to-clusterrole-not-cluster-scoped",
    ),
    pytest.param(
        [role("Role", "r", [PODS], "team-b"), binding("RoleBinding", "b", "Role", "r", [SA_SUBJECT], "team-a")],
        request("get", "pods", namespace="team-a", name="p"), False, id="rolebinding-role-is-in-its-own-namespace",
    ),
    pytest.param(
        [role("Role", "r", [PODS], "ops"), binding("RoleBinding", "b", "Role", "r", [{"kind": "ServiceAccount", "name": "operator"}], "ops")],
        request("get", "pods", namespace="ops", name="p"), True, id="sa-subject-defaults-to-binding-namespace",
    ),
    pytest.param(
        [role("Role", "r", [PODS], "team-a"), binding("RoleBinding", "b", "Role", "r", [{"kind": "ServiceAccount", "name": "operator"}], "team-a")],
        request("get", "pods", namespace="team-a", name="p"), False, id="sa-subject-default-namespace-is-not-the-sas",
    ),
    pytest.param(
        [role("ClusterRole", "r", [PODS]), binding("ClusterRoleBinding", "b", "ClusterRole", "r", [{"kind": "ServiceAccount", "name": "operator"}])],
        request("get", "pods", namespace="ops", name="p"), False, id="sa-subject-without-namespace-in-clusterrolebinding",
    ),
    pytest.param(
        [role("ClusterRole", "r", [PODS]), binding("ClusterRoleBinding", "b", "ClusterRole", "r", [{"kind": "ServiceAccount", "name": "operator", "namespace": "other"}])],
        request("get", "pods", namespace="ops", name="p"), False, id="sa-subject-other-namespace",
    ),
    pytest.param(
        [role("ClusterRole", "r", [PODS]), binding("ClusterRoleBinding", "b", "ClusterRole", "r", [{"kind": "User", "name": "system:serviceaccount:ops:operator"}])],
        request("get", "pods", namespace="x", name="p"), True, id="user-subject-naming-the-sa",
    ),
    pytest.param(
        [role("ClusterRole", "r", [PODS]), binding("ClusterRoleBinding", "b", "ClusterRole", "r", [{"kind": "Group", "name": "system:serviceaccounts:ops"}])],
        request("get", "pods", namespace="x", name="p"), True, id="group-subject-sa-namespace-group",
    ),
    pytest.param(
        [role("ClusterRole", "r", [PODS]), binding("ClusterRoleBinding", "b", "ClusterRole", "r", [{"kind": "Group", "name": "developers"}])],
        request("get", "pods", namespace="x", name="p", user=ALICE), True, id="group-subject",
    ),
    pytest.param(
        [role("ClusterRole", "r", [PODS]), binding("ClusterRoleBinding", "b", "ClusterRole", "r", [{"kind": "User", "name": "bob"}])],
        request("get", "pods", namespace="x", name="p", user=ALICE), False, id="user-subject-someone-else",
    ),
    pytest.param(
        [role("ClusterRole", "r", [PODS])], request("get", "pods", namespace="x", name="p"), False, id="role-without-binding",
    ),
    pytest.param([], request("get", "pods", namespace="x", name="p"), False, id="deny-by-default"),
    pytest.param([], request("get", "pods", namespace="x", name="p", user=UserInfo("root", ("system:masters",))), False, id="system-masters-is-not-rbac"),
    pytest.param(
        [binding("ClusterRoleBinding", "b", "ClusterRole", "missing", [SA_SUBJECT])],
        request("get", "pods", namespace="x", name="p"), False, id="binding-to-missing-role",
    ),
    pytest.param(
        [
            role("ClusterRole", "r", [PODS]),
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "operator", "namespace": "ops"}},
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ignored"}, "rules": [rule(["*"], ["*"], ["*"])]},
            binding("ClusterRoleBinding", "b", "ClusterRole", "r", [SA_SUBJECT]),
        ],
        request("get", "pods", namespace="x", name="p"), True, id="other-objects-ignored",
    ),
    pytest.param(
        [
            {**role("ClusterRole", "r", [rule(["*"], ["*"], ["*"])]), "apiVersion": "example.com/v1"},
            binding("ClusterRoleBinding", "b", "ClusterRole", "r", [SA_SUBJECT]),
        ],
        request("get", "pods", namespace="x", name="p"), False, id="only-rbac-api-group-objects",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("objects", "attrs", "allowed"), CASES)
def test_authorize(objects: list[dict[str, Any]], attrs: RequestAttributes, allowed: bool) -> None:
    decision = Authorizer.from_objects(objects).authorize(attrs)
    assert decision.allowed is allowed, decision.reason
    assert (decision.rule is not None) is allowed


def test_role_without_namespace_lands_in_the_install_namespace() -> None:
    objects = [role("Role", "r", [PODS]), binding("RoleBinding", "b", "Role", "r", [SA_SUBJECT])]
    authorizer = Authorizer.from_objects(objects, namespace="team-a")
    assert authorizer.authorize(request("get", "pods", namespace="team-a", name="p")).allowed
    assert not authorizer.authorize(request("get", "pods", namespace="default", name="p")).allowed


def test_allowed_decision_names_the_binding_and_the_rule_like_the_api_server() -> None:
    objects = [
        role("ClusterRole", "reader", [NODES, PODS]),
        binding("ClusterRoleBinding", "read", "ClusterRole", "reader", [SA_SUBJECT]),
        role("Role", "local", [rule(["create"], [""], ["events"])], "team-a"),
        binding("RoleBinding", "local", "Role", "local", [{"kind": "ServiceAccount", "name": "operator", "namespace": "ops"}], "team-a"),
    ]  # fmt: skip
    authorizer = Authorizer.from_objects(objects)

    decision = authorizer.authorize(request("list", "pods", namespace="x"))
    assert decision.reason == (
        'RBAC: allowed by ClusterRoleBinding "read" of ClusterRole "reader" to ServiceAccount "operator/ops"'
    )
    assert (
        decision.rule is not None
        and decision.rule.index == 1
        and decision.rule.rule == PolicyRule.from_dict(PODS)
    )
    assert str(decision.rule) == 'ClusterRole "reader" rules[1] (via ClusterRoleBinding "read")'

    decision = authorizer.authorize(request("create", "events", namespace="team-a"))
    assert decision.reason == (
        'RBAC: allowed by RoleBinding "local/team-a" of Role "local" to ServiceAccount "operator/ops"'
    )
    assert decision.rule is not None and decision.rule.role.namespace == "team-a"


@pytest.mark.parametrize(
    ("objects", "attrs", "reason"),
    [
        pytest.param(
            [], request("list", "pods", namespace="team-a"),
            'User "system:serviceaccount:ops:operator" cannot list resource "pods" in API group "" in the namespace "team-a"',
            id="namespaced",
        ),
        pytest.param(
            [], request("watch", "customresourcedefinitions", group="apiextensions.k8s.io"),
            'User "system:serviceaccount:ops:operator" cannot watch resource "customresourcedefinitions" in API group "apiextensions.k8s.io" at the cluster scope',
            id="cluster-scope",
        ),
        pytest.param(
            [], request("patch", "inferenceservices", group="mlops.dev", subresource="scale", namespace="a", name="i"),
            'User "system:serviceaccount:ops:operator" cannot patch resource "inferenceservices/scale" in API group "mlops.dev" in the namespace "a"',
            id="subresource",
        ),
        pytest.param(
            [], url("get", "/metrics"), 'User "system:serviceaccount:ops:operator" cannot get path "/metrics"', id="url",
        ),
        pytest.param(
            [binding("RoleBinding", "b", "Role", "gone", [SA_SUBJECT], "a")], request("list", "pods", namespace="a"),
            'User "system:serviceaccount:ops:operator" cannot list resource "pods" in API group "" in the namespace "a"'
            ': RBAC: role.rbac.authorization.k8s.io "gone" not found',
            id="missing-role",
        ),
    ],
)  # fmt: skip
def test_denied_decision_says_what_the_api_server_says(
    objects: list[dict[str, Any]], attrs: RequestAttributes, reason: str
) -> None:
    decision = Authorizer.from_objects(objects).authorize(attrs)
    assert not decision.allowed and decision.rule is None
    assert decision.reason == reason


def test_authorizer_plugs_into_the_emulators_authorize_hook() -> None:
    """``(allowed, reason)``; a denial carries RBAC's own reason (the server writes the 403)."""
    objects = [
        role("ClusterRole", "r", [PODS]),
        binding("ClusterRoleBinding", "b", "ClusterRole", "r", [SA_SUBJECT]),
        binding("ClusterRoleBinding", "dangling", "ClusterRole", "gone", [SA_SUBJECT]),
    ]
    authorizer = Authorizer.from_objects(objects)
    assert authorizer(request("list", "pods")) == (
        True,
        'RBAC: allowed by ClusterRoleBinding "b" of ClusterRole "r" to ServiceAccount "operator/ops"',
    )
    assert authorizer(request("list", "nodes")) == (
        False,
        'RBAC: clusterrole.rbac.authorization.k8s.io "gone" not found',
    )
    assert Authorizer.from_objects([])(request("list", "nodes")) == (False, "")


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({**role("ClusterRole", "agg", []), "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"a": "b"}}]}}, id="aggregated-clusterrole"),
        pytest.param(binding("ClusterRoleBinding", "b", "Role", "r", [SA_SUBJECT]), id="clusterrolebinding-to-role"),
        pytest.param(binding("RoleBinding", "b", "Secret", "r", [SA_SUBJECT], "a"), id="rolebinding-to-unknown-kind"),
    ],
)  # fmt: skip
def test_objects_rbac_cannot_express_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Authorizer.from_objects([bad])


# --- least privilege ---------------------------------------------------------------------------


def _unused(
    objects: list[dict[str, Any]], requests: list[RequestAttributes], user: UserInfo = SA
) -> dict[str, set[str]]:
    grants = Authorizer.from_objects(objects).unused_rules(requests, user.username, user.groups)
    return {str(grant.rule): {str(p) for p in grant.permissions} for grant in grants}


def test_unused_shows_each_unused_verb_and_omits_rules_fully_used() -> None:
    objects = [
        role("ClusterRole", "r", [rule(["get", "list", "watch"], ["", "apps"], ["pods"]), rule(["get"], [""], ["nodes"])]),
        binding("ClusterRoleBinding", "b", "ClusterRole", "r", [SA_SUBJECT]),
    ]  # fmt: skip
    requests = [
        request("get", "pods", namespace="x", name="p"),
        request("watch", "pods"),
        request("get", "nodes", name="n"),
        request("list", "pods", namespace="x", user=ALICE),  # someone else's request uses nothing
    ]
    assert _unused(objects, requests) == {
        'ClusterRole "r" rules[0] (via ClusterRoleBinding "b")': {
            "list core/pods",
            "get apps/pods",
            "list apps/pods",
            "watch apps/pods",
        }
    }


def test_unused_counts_a_rolebindings_grants_only_in_its_namespace() -> None:
    objects = [
        role("ClusterRole", "r", [PODS]),
        binding("RoleBinding", "b", "ClusterRole", "r", [SA_SUBJECT], "team-a"),
        binding("RoleBinding", "b", "ClusterRole", "r", [SA_SUBJECT], "team-b"),
    ]
    requests = [
        request("get", "pods", namespace="team-a", name="p"),
        request("list", "pods", namespace="team-a"),
    ]
    assert _unused(objects, requests) == {
        'ClusterRole "r" rules[0] (via RoleBinding "b" in "team-b")': {"get core/pods", "list core/pods"}
    }


def test_unused_matches_wildcards_subresources_names_and_urls() -> None:
    objects = [
        role(
            "ClusterRole",
            "r",
            [
                rule(["*"], ["mlops.dev"], ["*/status"]),
                rule(["get", "update"], [""], ["configmaps"], ["lock"]),
                rule(["get"], urls=["/apis/*", "/version"]),
                rule(["patch"], ["mlops.dev"], ["trainingjobs"]),
            ],
        ),
        binding("ClusterRoleBinding", "b", "ClusterRole", "r", [SA_SUBJECT]),
    ]
    requests = [
        request("patch", "trainingjobs", group="mlops.dev", subresource="status", namespace="x", name="t"),
        request("get", "configmaps", namespace="x", name="lock"),
        request("update", "configmaps", namespace="x", name="other"),  # not the named one
        url("get", "/apis/mlops.dev/v1alpha1"),
    ]
    assert _unused(objects, requests) == {
        'ClusterRole "r" rules[1] (via ClusterRoleBinding "b")': {"update core/configmaps ['lock']"},
        'ClusterRole "r" rules[2] (via ClusterRoleBinding "b")': {"get /version"},
        'ClusterRole "r" rules[3] (via ClusterRoleBinding "b")': {"patch mlops.dev/trainingjobs"},
    }


def test_unused_lists_only_grants_of_the_subject() -> None:
    objects = [
        role("ClusterRole", "r", [PODS]),
        binding("ClusterRoleBinding", "b", "ClusterRole", "r", [{"kind": "User", "name": "alice"}]),
    ]
    assert _unused(objects, []) == {}
    assert _unused(objects, [], user=ALICE) == {
        'ClusterRole "r" rules[0] (via ClusterRoleBinding "b")': {"get core/pods", "list core/pods"}
    }


def test_permission_expansion() -> None:
    expanded = PolicyRule.from_dict(rule(["get", "list"], ["", "apps"], ["pods"], urls=["/x"])).permissions()
    assert expanded == (
        Permission("get", "", "pods"),
        Permission("list", "", "pods"),
        Permission("get", "apps", "pods"),
        Permission("list", "apps", "pods"),
        Permission("get", non_resource_url="/x"),
        Permission("list", non_resource_url="/x"),
    )
