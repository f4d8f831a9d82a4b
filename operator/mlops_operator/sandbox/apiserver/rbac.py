"""Kubernetes' RBAC authorizer, pure: whether a Role or ClusterRole lets a request through.

It decides the way the API server's RBAC authorizer does (``plugin/pkg/auth/authorizer/rbac``
in kubernetes/kubernetes), over the Role, ClusterRole, RoleBinding and ClusterRoleBinding
objects it is given, so a test can check a Helm chart's RBAC against the requests an operator
really made:

- A rule allows a resource request when its verb, API group, resource (``"*"``, the exact
  ``resource`` or ``resource/subresource``, or ``"*/subresource"``) and resource name (when the
  rule lists ``resourceNames``) all match; a non-resource request (``/version``, ``/apis``) when
  its verb and path match ``nonResourceURLs`` (``"*"``, exact, or a prefix ending in ``*``).
  ``"*"`` in verbs and apiGroups matches anything. A rule on ``pods`` does *not* cover
  ``pods/status``: a subresource is a resource of its own.
- A ClusterRoleBinding applies its ClusterRole everywhere, cluster-scoped requests included.
  A RoleBinding applies its Role, or a ClusterRole, only to requests in the binding's namespace;
  a request with no namespace (a cluster-scoped resource, or a list/watch across all
  namespaces) is never allowed by a RoleBinding.
- A subject is a User (by name), a Group (by membership) or a ServiceAccount, which matches the
  user ``system:serviceaccount:<namespace>:<name>``; a ServiceAccount subject without a namespace
  means the RoleBinding's own namespace (and matches nothing in a ClusterRoleBinding).
- Nothing is denied explicitly: what no rule allows is denied ("no opinion" in Kubernetes, a
  403 once every authorizer has passed).

Not implemented: aggregated ClusterRoles (``aggregationRule``: the controller that fills their
rules is not emulated, so they are refused), the ``system:masters`` superuser group (a separate
authorizer in the API server), escalation checks when writing RBAC objects, and other
authorizers (Node, webhook, ABAC).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

GROUP = "rbac.authorization.k8s.io"
ROLE_KINDS = ("Role", "ClusterRole")
BINDING_KINDS = ("RoleBinding", "ClusterRoleBinding")
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"

#: ``"*"`` in verbs, apiGroups, resources and nonResourceURLs (rbacv1.VerbAll and friends).
ALL = "*"


class Attributes(Protocol):
    """What the authorizer reads of a request (Kubernetes' ``authorizer.Attributes``).

    The emulated API server's ``RequestAttributes`` has these fields; any object with them will do.
    """

    @property
    def user(self) -> str: ...
    @property
    def groups(self) -> tuple[str, ...]: ...
    @property
    def verb(self) -> str: ...
    @property
    def api_group(self) -> str: ...
    @property
    def resource(self) -> str: ...
    @property
    def subresource(self) -> str: ...
    @property
    def namespace(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def resource_request(self) -> bool: ...


# --- rules -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyRule:
    """One entry of a role's ``rules`` (rbac/v1 PolicyRule)."""

    verbs: tuple[str, ...]
    api_groups: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    resource_names: tuple[str, ...] = ()
    non_resource_urls: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, rule: Mapping[str, Any]) -> PolicyRule:
        def strings(key: str) -> tuple[str, ...]:
            return tuple(str(item) for item in rule.get(key) or ())

        return cls(
            verbs=strings("verbs"),
            api_groups=strings("apiGroups"),
            resources=strings("resources"),
            resource_names=strings("resourceNames"),
            non_resource_urls=strings("nonResourceURLs"),
        )

    def allows(self, attrs: Attributes) -> bool:
        """``RuleAllows``: whether this rule alone lets the request through."""
        if attrs.resource_request:
            combined = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
            return (
                verb_matches(self, attrs.verb)
                and api_group_matches(self, attrs.api_group)
                and resource_matches(self, combined, attrs.subresource)
                and resource_name_matches(self, attrs.name)
            )
        return verb_matches(self, attrs.verb) and non_resource_url_matches(self, attrs.path)

    def permissions(self) -> tuple[Permission, ...]:
        """The rule expanded into single (verb, API group, resource) and (verb, URL) grants."""
        expanded = [
            Permission(verb, group, resource, self.resource_names)
            for group in self.api_groups
            for resource in self.resources
            for verb in self.verbs
        ]
        expanded += [
            Permission(verb, non_resource_url=url) for url in self.non_resource_urls for verb in self.verbs
        ]
        return tuple(expanded)


def verb_matches(rule: PolicyRule, verb: str) -> bool:
    return any(item in (ALL, verb) for item in rule.verbs)


def api_group_matches(rule: PolicyRule, group: str) -> bool:
    return any(item in (ALL, group) for item in rule.api_groups)


def resource_matches(rule: PolicyRule, combined: str, subresource: str) -> bool:
    """``"*"``, the exact ``resource[/subresource]``, or ``"*/<subresource>"`` for a subresource."""
    for item in rule.resources:
        if item in (ALL, combined):
            return True
        if subresource and item == f"*/{subresource}":
            return True
    return False


def resource_name_matches(rule: PolicyRule, name: str) -> bool:
    """No ``resourceNames``: any name. Listed names never match a request without a name
    (list, watch, create), which is why such rules cannot grant those verbs."""
    return not rule.resource_names or name in rule.resource_names


def non_resource_url_matches(rule: PolicyRule, path: str) -> bool:
    for item in rule.non_resource_urls:
        if item in (ALL, path):
            return True
        if item.endswith("*") and path.startswith(item.rstrip("*")):
            return True
    return False


@dataclass(frozen=True)
class Permission:
    """One expanded grant: a verb on an API group's resource (maybe by name), or on a URL."""

    verb: str
    api_group: str = ""
    resource: str = ""
    resource_names: tuple[str, ...] = ()
    non_resource_url: str = ""

    def rule(self) -> PolicyRule:
        if self.non_resource_url:
            return PolicyRule(verbs=(self.verb,), non_resource_urls=(self.non_resource_url,))
        return PolicyRule(
            verbs=(self.verb,),
            api_groups=(self.api_group,),
            resources=(self.resource,),
            resource_names=self.resource_names,
        )

    def __str__(self) -> str:
        if self.non_resource_url:
            return f"{self.verb} {self.non_resource_url}"
        group = self.api_group if self.api_group else "core"
        names = f" {list(self.resource_names)}" if self.resource_names else ""
        return f"{self.verb} {group}/{self.resource}{names}"


# --- roles, bindings, subjects -----------------------------------------------------------------


@dataclass(frozen=True)
class Role:
    """A Role (namespaced) or ClusterRole (``namespace`` empty) and its rules."""

    kind: str
    name: str
    namespace: str
    rules: tuple[PolicyRule, ...]

    def __str__(self) -> str:
        return f"{self.kind} {_q(self.name)}" + (f" in {_q(self.namespace)}" if self.namespace else "")


@dataclass(frozen=True)
class Subject:
    kind: str
    name: str
    namespace: str = ""

    def applies_to(self, user: str, groups: Iterable[str], binding_namespace: str) -> bool:
        """``appliesToUser``: a ServiceAccount without a namespace is one of the binding's namespace."""
        if self.kind == "User":
            return user == self.name
        if self.kind == "Group":
            return self.name in groups
        if self.kind == "ServiceAccount":
            namespace = self.namespace or binding_namespace
            return bool(namespace) and user == f"{SERVICE_ACCOUNT_PREFIX}{namespace}:{self.name}"
        return False

    def describe(self, binding_namespace: str) -> str:
        if self.kind == "ServiceAccount":
            return f"ServiceAccount {_q(self.name + '/' + (self.namespace or binding_namespace))}"
        return f"{self.kind} {_q(self.name)}"


@dataclass(frozen=True)
class Binding:
    """A RoleBinding (``namespace`` set) or ClusterRoleBinding and what it points at."""

    kind: str
    name: str
    namespace: str
    role_kind: str
    role_name: str
    subjects: tuple[Subject, ...]

    def subject_for(self, user: str, groups: Iterable[str]) -> Subject | None:
        """The first subject that is this user (``appliesTo``), if any."""
        groups = tuple(groups)
        return next((s for s in self.subjects if s.applies_to(user, groups, self.namespace)), None)

    def describe(self, subject: Subject) -> str:
        """As the API server words it in an allowed decision's reason."""
        name = f"{self.name}/{self.namespace}" if self.kind == "RoleBinding" else self.name
        return (
            f"{self.kind} {_q(name)} of {self.role_kind} {_q(self.role_name)} "
            f"to {subject.describe(self.namespace)}"
        )

    def __str__(self) -> str:
        return f"{self.kind} {_q(self.name)}" + (f" in {_q(self.namespace)}" if self.namespace else "")


@dataclass(frozen=True)
class RuleRef:
    """A rule as granted to someone: which binding, which role, which entry of its ``rules``."""

    binding: Binding
    role: Role
    index: int
    subject: Subject

    @property
    def rule(self) -> PolicyRule:
        return self.role.rules[self.index]

    def __str__(self) -> str:
        return f"{self.role} rules[{self.index}] (via {self.binding})"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    rule: RuleRef | None = None


@dataclass(frozen=True)
class UnusedGrant:
    """Permissions of one rule, granted to the subject, that no request used."""

    rule: RuleRef
    permissions: tuple[Permission, ...]

    def __str__(self) -> str:
        return f"{self.rule}: {', '.join(str(p) for p in self.permissions)}"


# --- the authorizer ----------------------------------------------------------------------------


@dataclass
class Authorizer:
    """RBAC over a fixed set of roles and bindings (what ``kubectl apply`` of them would create)."""

    roles: dict[tuple[str, str, str], Role] = field(default_factory=dict)  # (kind, namespace, name)
    bindings: list[Binding] = field(default_factory=list)

    @classmethod
    def from_objects(cls, objects: Iterable[Mapping[str, Any]], *, namespace: str = "default") -> Authorizer:
        """The RBAC objects among ``objects`` (rendered manifests); everything else is ignored.

        ``namespace`` is where a Role or RoleBinding that names none would be created (what
        ``helm install --namespace`` / ``kubectl apply -n`` do).
        """
        authorizer = cls()
        for obj in objects:
            if not str(obj.get("apiVersion", "")).startswith(f"{GROUP}/"):
                continue
            kind = str(obj.get("kind", ""))
            meta = obj.get("metadata") or {}
            name = str(meta["name"])
            ns = str(meta.get("namespace") or namespace) if kind in ("Role", "RoleBinding") else ""
            if kind in ROLE_KINDS:
                if obj.get("aggregationRule"):
                    raise ValueError(f"{kind} {name}: aggregated ClusterRoles are not supported")
                rules = tuple(PolicyRule.from_dict(rule) for rule in obj.get("rules") or ())
                authorizer.roles[(kind, ns, name)] = Role(kind, name, ns, rules)
            elif kind in BINDING_KINDS:
                ref = obj["roleRef"]
                if kind == "ClusterRoleBinding" and ref["kind"] != "ClusterRole":
                    raise ValueError(f"ClusterRoleBinding {name}: roleRef.kind must be ClusterRole")
                if ref["kind"] not in ROLE_KINDS:
                    raise ValueError(
                        f"{kind} {name}: roleRef.kind {ref['kind']!r} is not Role or ClusterRole"
                    )
                subjects = tuple(
                    Subject(str(s["kind"]), str(s["name"]), str(s.get("namespace") or ""))
                    for s in obj.get("subjects") or ()
                )
                authorizer.bindings.append(
                    Binding(kind, name, ns, str(ref["kind"]), str(ref["name"]), subjects)
                )
        return authorizer

    def _role_of(self, binding: Binding) -> Role | None:
        namespace = binding.namespace if binding.role_kind == "Role" else ""
        return self.roles.get((binding.role_kind, namespace, binding.role_name))

    def _applicable(
        self, user: str, groups: Iterable[str], namespace: str
    ) -> Iterator[tuple[Binding, Subject]]:
        """``VisitRulesFor``'s order: ClusterRoleBindings, then the RoleBindings of ``namespace``.

        A request without a namespace (cluster-scoped, or across all namespaces) gets only the
        ClusterRoleBindings.
        """
        groups = tuple(groups)
        cluster = [b for b in self.bindings if b.kind == "ClusterRoleBinding"]
        local = [
            b for b in self.bindings if b.kind == "RoleBinding" and namespace and b.namespace == namespace
        ]
        for binding in cluster + local:
            subject = binding.subject_for(user, groups)
            if subject is not None:
                yield binding, subject

    def rules_for(self, user: str, groups: Iterable[str], namespace: str) -> Iterator[RuleRef]:
        """Every rule that applies to the user in ``namespace`` ("" = cluster-scoped requests)."""
        for binding, subject in self._applicable(user, groups, namespace):
            role = self._role_of(binding)
            if role is not None:
                for index in range(len(role.rules)):
                    yield RuleRef(binding, role, index, subject)

    def authorize(self, attrs: Attributes) -> Decision:
        """Allowed by the first rule that matches (with the API server's reason), else denied.

        A denial's reason is the API server's 403 message (``User "u" cannot list resource
        "pods" in API group "" in the namespace "ns"``), followed by RBAC's own reason when it
        has one: the bindings whose role does not exist.
        """
        ref, missing = self._visit(attrs)
        if ref is not None:
            return Decision(True, f"RBAC: allowed by {ref.binding.describe(ref.subject)}", ref)
        return Decision(False, forbidden_message(attrs) + (f": {missing}" if missing else ""))

    def __call__(self, attrs: Attributes) -> tuple[bool, str]:
        """``(allowed, reason)``, the shape of the emulator's ``authorize`` hook: pass the
        authorizer itself. A denial's reason is RBAC's own (the server writes the 403 message)."""
        ref, missing = self._visit(attrs)
        if ref is not None:
            return True, f"RBAC: allowed by {ref.binding.describe(ref.subject)}"
        return False, missing

    def _visit(self, attrs: Attributes) -> tuple[RuleRef | None, str]:
        """The first rule allowing the request, or RBAC's reason for denying it ("" or the
        bindings that point at a role that does not exist)."""
        missing: list[str] = []
        for binding, subject in self._applicable(attrs.user, attrs.groups, attrs.namespace):
            role = self._role_of(binding)
            if role is None:
                missing.append(f"{binding.role_kind.lower()}.{GROUP} {_q(binding.role_name)} not found")
                continue
            for index, rule in enumerate(role.rules):
                if rule.allows(attrs):
                    return RuleRef(binding, role, index, subject), ""
        return None, ("RBAC: " + ", ".join(missing)) if missing else ""

    def unused_rules(
        self, requests: Iterable[Attributes], user: str, groups: Iterable[str] = ()
    ) -> list[UnusedGrant]:
        """The grants to ``user`` that none of its ``requests`` used (least privilege).

        Each rule of each role bound to the user is expanded into single permissions (one verb
        on one group's resource, or on one URL); a permission is used when one of the user's
        requests in the binding's scope (any namespace for a ClusterRoleBinding, its own for a
        RoleBinding) matches it. Rules whose permissions were all used are left out; the rest
        are listed with only their unused permissions, so one unused verb shows on its own.
        """
        groups = tuple(groups)
        mine = [r for r in requests if r.user == user]
        unused: list[UnusedGrant] = []
        for binding in self.bindings:
            subject = binding.subject_for(user, groups)
            role = self._role_of(binding)
            if subject is None or role is None:
                continue
            in_scope = [
                r for r in mine if binding.kind == "ClusterRoleBinding" or r.namespace == binding.namespace
            ]
            for index, rule in enumerate(role.rules):
                idle = tuple(
                    permission
                    for permission in rule.permissions()
                    if not any(permission.rule().allows(r) for r in in_scope)
                )
                if idle:
                    unused.append(UnusedGrant(RuleRef(binding, role, index, subject), idle))
        return unused


def forbidden_message(attrs: Attributes) -> str:
    """The API server's 403 message for a request no authorizer allowed."""
    user = _q(attrs.user)
    if not attrs.resource_request:
        return f"User {user} cannot {attrs.verb} path {_q(attrs.path)}"
    resource = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
    where = f"in the namespace {_q(attrs.namespace)}" if attrs.namespace else "at the cluster scope"
    return (
        f"User {user} cannot {attrs.verb} resource {_q(resource)} in API group {_q(attrs.api_group)} {where}"
    )


def _q(text: str) -> str:
    """Go's ``%q``: a double-quoted string, as Kubernetes' messages quote names."""
    return json.dumps(text)
