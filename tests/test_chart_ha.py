"""The chart with several operator replicas: leader election wired in, and refused without it.

What the replicas do at run time (one acts, a standby takes over) is tested with real processes
in tests/test_leader_election.py; here, what the chart renders for them.
"""

from __future__ import annotations

import functools
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.test_chart import (
    CHART,
    KUBE_VERSIONS,
    NAMESPACE,
    RELEASE,
    _bound_rules,
    _container,
    _grants,
    _one,
    _run_helm,
)

FULLNAME = f"{RELEASE}-mlops-operator"


@functools.cache
def _render(*sets: str) -> tuple[dict[str, Any], ...]:
    args = [arg for item in sets for arg in ("--set", item)]
    result = _run_helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def _deployment(objects: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    return _one(objects, "Deployment", FULLNAME)


def test_two_replicas_elect_a_leader_and_roll_without_a_gap() -> None:
    objects = _render("replicaCount=2")
    deployment = _deployment(objects)
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    container = _container(deployment)
    env = {item["name"]: item for item in container["env"]}
    assert env["MLOPS_LEADER_ELECTION"]["value"] == "true"
    # The identity and the Lease's namespace come from the downward API.
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    # A standby answers its probes (its own /healthz), so it is never restarted for waiting.
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    pdb = _one(objects, "PodDisruptionBudget", FULLNAME)
    assert pdb["spec"]["minAvailable"] == 1
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_one_replica_has_no_disruption_budget() -> None:
    """A PDB with minAvailable 1 over one pod would block every node drain."""
    assert not [o for o in _render("replicaCount=1") if o["kind"] == "PodDisruptionBudget"]


@pytest.mark.parametrize(
    "sets", [(), ("watchNamespaces={team-a}",)], ids=["cluster-wide", "watch-namespaces"]
)
def test_the_operator_may_hold_its_lease_in_the_release_namespace_only(sets: tuple[str, ...]) -> None:
    objects = _render("replicaCount=2", *sets)
    rules = _bound_rules(objects, NAMESPACE)
    assert _grants(rules, "coordination.k8s.io", "leases") == {"create", "get", "update"}
    named = [r for r in rules if "leases" in r.get("resources", []) and r.get("resourceNames")]
    assert {v for r in named for v in r["verbs"]} == {"get", "update"}
    assert all(r["resourceNames"] == ["mlops-operator"] for r in named)
    assert not _grants(_bound_rules(objects, "team-a"), "coordination.k8s.io", "leases")
    assert not _grants(_bound_rules(objects, None), "coordination.k8s.io", "leases")


def test_the_lease_name_reaches_the_operator_and_its_rbac() -> None:
    objects = _render("replicaCount=2", "config.leaderElectionLeaseName=team-ops")
    env = {i["name"]: i.get("value") for i in _container(_deployment(objects))["env"]}
    assert env["MLOPS_LEADER_ELECTION_LEASE_NAME"] == "team-ops"
    rules = _bound_rules(objects, NAMESPACE)
    assert [r["resourceNames"] for r in rules if r.get("resourceNames")] == [["team-ops"]]


def test_without_leader_election_one_replica_recreated_and_no_lease_rbac() -> None:
    objects = _render("config.leaderElection=false")
    assert _deployment(objects)["spec"]["strategy"] == {"type": "Recreate"}
    assert not [o for o in objects if o["kind"] in ("Role", "RoleBinding")]


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("replicaCount=6",), "at '/replicaCount': maximum: got 6, want 5"),
        (
            ("replicaCount=2", "config.leaderElection=false"),
            "replicaCount 2 needs config.leaderElection: true: without leader election every replica "
            "would act on every resource at once",
        ),
        (("config.leaderElectionLeaseDuration=0",), "leaderElectionLeaseDuration"),
        (("config.leaderElectionLeaseName=Not_A_Name",), "leaderElectionLeaseName"),
    ],
    ids=["six-replicas", "two-without-election", "zero-lease", "bad-lease-name"],
)
def test_values_that_would_break_high_availability_are_refused(sets: tuple[str, ...], message: str) -> None:
    args = [arg for item in sets for arg in ("--set", item)]
    result = _run_helm("template", RELEASE, str(CHART), *args)
    assert result.returncode != 0, f"helm accepted {sets}"
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_two_replicas_render_valid_kubernetes(version: str) -> None:
    for obj in _render("replicaCount=2"):
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']} is invalid on {version}: {exc.message}")
