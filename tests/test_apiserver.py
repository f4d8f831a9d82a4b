"""The emulated API server behaves like a real one where kopf, kubectl and clients depend on it."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import pathlib
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import kopf
import kubernetes
import pytest
import urllib3
import yaml

from mlops_operator.sandbox.apiserver import ApiServerThread, EmulatedApiServer, write_kubeconfig
from tests.fixtures_apiserver import DATA, TEST_CRDS, RunningApiServer

WIDGETS = "/apis/test.mlops.dev/v1alpha1"


class Api:
    """A thin raw-HTTP client: tests look at status codes and bodies exactly as sent."""

    def __init__(self, url: str, token: str | None, ca: bytes) -> None:
        self.url = url
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = urllib3.PoolManager(ssl_context=ssl.create_default_context(cadata=ca.decode()))

    def __call__(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        all_headers = {"Content-Type": content_type, **self.auth, **(headers or {})}
        response = self.http.request(method, self.url + path, body=data, headers=all_headers, timeout=10)
        text = response.data.decode()
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, text

    def watch(self, path: str, timeout: float = 5) -> Iterator[dict[str, Any]]:
        response = self.http.request(
            "GET", self.url + path, preload_content=False, timeout=timeout, headers=self.auth
        )
        buffer = b""
        for chunk in response.stream(1024):
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    yield json.loads(line)
        response.release_conn()


@pytest.fixture(scope="module")
def api(apiserver: RunningApiServer) -> Api:
    return Api(apiserver.url, apiserver.token, apiserver.thread.certificates.ca)


@pytest.fixture
def ns(api: Api) -> str:
    """A fresh namespace per test: tests share the module's server but not their objects."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    status, _ = api("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    assert status == 201
    return name


def widget(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "test.mlops.dev/v1alpha1",
        "kind": "Widget",
        "metadata": {"name": name, "labels": {"app": "w"}},
        "spec": {"replicas": 1, **spec},
    }


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.02)  # polling interval, not synchronisation: the deadline decides
    raise AssertionError("condition not met before the deadline")


# -- 1. server-set metadata -------------------------------------------------------------------


def test_create_sets_server_metadata(api: Api, ns: str) -> None:
    status, obj = api("POST", f"{WIDGETS}/namespaces/{ns}/widgets", widget("a"))
    assert status == 201
    meta = obj["metadata"]
    assert uuid.UUID(meta["uid"]).version == 4
    assert meta["generation"] == 1
    assert meta["namespace"] == ns
    assert meta["creationTimestamp"].endswith("Z") and "T" in meta["creationTimestamp"]
    assert int(meta["resourceVersion"]) > 0

    status, second = api("POST", f"{WIDGETS}/namespaces/{ns}/widgets", widget("b"))
    assert int(second["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])


def test_generate_name(api: Api, ns: str) -> None:
    body = widget("")
    body["metadata"] = {"generateName": "gen-"}
    names = {api("POST", f"{WIDGETS}/namespaces/{ns}/widgets", body)[1]["metadata"]["name"] for _ in range(3)}
    assert len(names) == 3
    assert all(n.startswith("gen-") and len(n) == len("gen-") + 5 for n in names)


def test_generation_tracks_spec_only(api: Api, ns: str) -> None:
    path = f"{WIDGETS}/namespaces/{ns}/widgets/g"
    api("POST", f"{WIDGETS}/namespaces/{ns}/widgets", widget("g"))
    merge = "application/merge-patch+json"
    _, obj = api("PATCH", path, {"metadata": {"labels": {"x": "y"}}}, merge)
    assert obj["metadata"]["generation"] == 1
    _, obj = api("PATCH", path + "/status", {"status": {"replicas": 1}}, merge)
    assert obj["metadata"]["generation"] == 1
    _, obj = api("PATCH", path, {"spec": {"replicas": 2}}, merge)
    assert obj["metadata"]["generation"] == 2


def test_noop_write_keeps_resource_version(api: Api, ns: str) -> None:
    _, obj = api("POST", f"{WIDGETS}/namespaces/{ns}/widgets", widget("n"))
    _, again = api(
        "PATCH",
        f"{WIDGETS}/namespaces/{ns}/widgets/n",
        {"spec": {"replicas": 1}},
        "application/merge-patch+json",
    )
    assert again["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]


# -- 2. errors and optimistic concurrency ------------------------------------------------------


def test_stale_update_is_a_conflict(api: Api, ns: str) -> None:
    _, obj = api("POST", f"{WIDGETS}/namespaces/{ns}/widgets", widget("c"))
    path = f"{WIDGETS}/namespaces/{ns}/widgets/c"
    fresh = json.loads(json.dumps(obj))
    fresh["spec"]["replicas"] = 2
    assert api("PUT", path, fresh)[0] == 200
    obj["spec"]["replicas"] = 3  # still carries the old resourceVersion
    status, body = api("PUT", path, obj)
    assert status == 409
    assert body["kind"] == "Status" and body["apiVersion"] == "v1"
    assert (body["status"], body["reason"], body["code"]) == ("Failure", "Conflict", 409)
    assert "the object has been modified" in body["message"]

    stale_patch = {
        "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
        "spec": {"replicas": 4},
    }
    assert api("PATCH", path, stale_patch, "application/merge-patch+json")[0] == 409


def test_leases_are_validated_as_kube_apiserver_validates_them(api: Api, ns: str) -> None:
    """Leader election writes Leases: the emulator refuses what the real server refuses."""
    path = f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"

    def lease(name: str, **spec: object) -> dict[str, object]:
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name},
            "spec": spec,
        }

    good = lease("ok", holderIdentity="a", leaseDurationSeconds=15, renewTime="2026-12-02T10:00:00.000001Z")
    status, created = api("POST", path, good)
    assert status == 201, created
    status, body = api("POST", path, lease("zero", leaseDurationSeconds=0, leaseTransitions=-1))
    assert (status, body["reason"]) == (422, "Invalid")
    assert body["message"] == (
        'Lease.coordination.k8s.io "zero" is invalid: [spec.leaseDurationSeconds: Invalid value: 0: must be '
        "greater than 0, spec.leaseTransitions: Invalid value: -1: must be greater than or equal to 0]"
    )
    status, body = api("POST", path, lease("when", renewTime="yesterday"))
    assert (status, body["reason"]) == (400, "BadRequest") and 'parsing time "yesterday"' in body["message"]
    created["spec"]["leaseDurationSeconds"] = -3  # an update is checked the same way
    status, body = api("PUT", f"{path}/ok", created)
    assert (status, body["reason"]) == (422, "Invalid")


def test_already_exists_and_not_found(api: Api, ns: str) -> None:
    api("POST", f"{WIDGETS}/namespaces/{ns}/widgets", widget("dup"))
    status, body = api("POST", f"{WIDGETS}/namespaces/{ns}/widgets", widget("dup"))
    assert (status, body["reason"], body["code"]) == (409, "AlreadyExists", 409)

    status, body = api("GET", f"{WIDGETS}/namespaces/{ns}/widgets/missing")
    assert (status, body["reason"], body["status"]) == (404, "NotFound", "Failure")
    assert body["details"]["name"] == "missing" and body["details"]["kind"] == "widgets"
    assert body["message"] == 'widgets.test.mlops.dev "missing" not found'


def test_kubernetes_client_sees_typed_errors(apiserver: RunningApiServer, ns: str) -> None:
    core = kubernetes.client.CoreV1Api(apiserver.api_client())
    with pytest.raises(kubernetes.client.ApiException) as info:
        core.read_namespaced_config_map("nope", ns)
    assert info.value.status == 404
    assert json.loads(info.value.body)["reason"] == "NotFound"


# -- 3. patch formats -------------------------------------------------------------------------


def test_merge_patch_null_deletes(api: Api, ns: str) -> None:
    api("POST", f"{WIDGETS}/namespaces/{ns}/widgets", widget("m", owner="ab", config={"a": 1, "b": {"c": 2}}))
    patch = {"spec": {"owner": None, "config": {"b": {"c": None, "d": 3}}}}
    _, obj = api("PATCH", f"{WIDGETS}/namespaces/{ns}/widgets/m", patch, "application/merge-patch+json")
    assert "owner" not in obj["spec"]
    assert obj["spec"]["config"] == {"a": 1, "b": {"d": 3}}


def test_json_patch(api: Api, ns: str) -> None:
    api("POST", f"{WIDGETS}/namespaces/{ns}/widgets", widget("j", tags=["a", "b"]))
    ops = [
        {"op": "test", "path": "/spec/replicas", "value": 1},
        {"op": "replace", "path": "/spec/replicas", "value": 5},
        {"op": "add", "path": "/spec/tags/-", "value": "c"},
        {"op": "remove", "path": "/spec/tags/0"},
    ]
    status, obj = api("PATCH", f"{WIDGETS}/namespaces/{ns}/widgets/j", ops, "application/json-patch+json")
    assert status == 200
    assert obj["spec"]["replicas"] == 5 and obj["spec"]["tags"] == ["b", "c"]
    failing = [{"op": "test", "path": "/spec/replicas", "value": 1}]
    assert (
        api("PATCH", f"{WIDGETS}/namespaces/{ns}/widgets/j", failing, "application/json-patch+json")[0] == 422
    )


def test_strategic_merge_patch_merges_named_lists(api: Api, ns: str) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {"name": "main", "image": "a:1", "env": [{"name": "A", "value": "1"}]},
                        {"name": "side", "image": "b:1"},
                    ]
                },
            },
        },
    }
    assert api("POST", f"/apis/apps/v1/namespaces/{ns}/deployments", deployment)[0] == 201
    patch = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "main", "image": "a:2", "env": [{"name": "B", "value": "2"}]},
                        {"name": "side", "$patch": "delete"},
                    ]
                }
            }
        }
    }
    status, obj = api(
        "PATCH",
        f"/apis/apps/v1/namespaces/{ns}/deployments/web",
        patch,
        "application/strategic-merge-patch+json",
    )
    assert status == 200
    containers = obj["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["main"]
    assert containers[0]["image"] == "a:2"
    assert containers[0]["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    assert obj["metadata"]["generation"] == 2


def test_strategic_merge_patch_is_refused_for_custom_resources(api: Api, ns: str) -> None:
    api("POST", f"{WIDGETS}/namespaces/{ns}/widgets", widget("s"))
    patch = {"spec": {"replicas": 2}}
    status, body = api(
        "PATCH", f"{WIDGETS}/namespaces/{ns}/widgets/s", patch, "application/strategic-merge-patch+json"
    )
    assert (status, body["reason"]) == (415, "UnsupportedMediaType")


# -- 4. lists, selectors, watches -------------------------------------------------------------


def test_lists_have_kind_and_resource_version(api: Api, ns: str) -> None:
    api("POST", f"/api/v1/namespaces/{ns}/configmaps", {"metadata": {"name": "cm"}, "data": {"k": "v"}})
    _, listing = api("GET", f"/api/v1/namespaces/{ns}/configmaps")
    assert (listing["kind"], listing["apiVersion"]) == ("ConfigMapList", "v1")
    assert int(listing["metadata"]["resourceVersion"]) >= int(
        listing["items"][0]["metadata"]["resourceVersion"]
    )
    assert listing["items"][0]["kind"] == "ConfigMap"


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("tier=web", {"a", "b"}),
        ("tier==web,env!=prod", {"a"}),
        ("env in (prod,dev)", {"b", "c"}),
        ("env notin (prod)", {"a", "c"}),
        ("!env", {"a"}),
        ("env", {"b", "c"}),
        ("tier=web,env", {"b"}),
    ],
    ids=["equals", "not-equals-missing-counts", "in", "notin", "absent", "exists", "and"],
)
def test_label_selectors(api: Api, ns: str, selector: str, expected: set[str]) -> None:
    for name, labels in {
        "a": {"tier": "web"},
        "b": {"tier": "web", "env": "prod"},
        "c": {"env": "dev"},
    }.items():
        api("POST", f"/api/v1/namespaces/{ns}/configmaps", {"metadata": {"name": name, "labels": labels}})
    status, listing = api("GET", f"/api/v1/namespaces/{ns}/configmaps?" + _query(labelSelector=selector))
    assert status == 200
    assert {i["metadata"]["name"] for i in listing["items"]} == expected


def _query(**params: str) -> str:
    from urllib.parse import urlencode

    return urlencode(params)


def test_field_selectors(api: Api, ns: str) -> None:
    for name in ("x", "y"):
        api("POST", f"/api/v1/namespaces/{ns}/configmaps", {"metadata": {"name": name}})
    _, listing = api(
        "GET", "/api/v1/configmaps?" + _query(fieldSelector=f"metadata.name=x,metadata.namespace={ns}")
    )
    assert [i["metadata"]["name"] for i in listing["items"]] == ["x"]
    _, listing = api("GET", f"/api/v1/namespaces/{ns}/configmaps?" + _query(fieldSelector="metadata.name!=x"))
    assert [i["metadata"]["name"] for i in listing["items"]] == ["y"]


def test_watch_resumes_from_resource_version_and_times_out(api: Api, ns: str) -> None:
    base = f"/api/v1/namespaces/{ns}/configmaps"
    api("POST", base, {"metadata": {"name": "before"}})
    _, listing = api("GET", base)
    since = listing["metadata"]["resourceVersion"]
    _, created = api("POST", base, {"metadata": {"name": "after"}})
    api("PATCH", f"{base}/after", {"data": {"k": "v"}}, "application/merge-patch+json")
    api("DELETE", f"{base}/after")

    started = time.monotonic()
    events = list(api.watch(f"{base}?watch=true&resourceVersion={since}&timeoutSeconds=1"))
    assert time.monotonic() - started < 4  # the server closed the stream after timeoutSeconds
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "after"),
        ("MODIFIED", "after"),
        ("DELETED", "after"),
    ]
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions) and versions[0] == int(created["metadata"]["resourceVersion"])
    assert len(set(versions)) == 3  # the deletion carries its own, newer resourceVersion

    initial = list(api.watch(f"{base}?watch=true&timeoutSeconds=1"))
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in initial] == [("ADDED", "before")]


def test_watch_with_label_selector_sees_objects_leave(api: Api, ns: str) -> None:
    base = f"/api/v1/namespaces/{ns}/configmaps"
    api("POST", base, {"metadata": {"name": "w", "labels": {"pick": "yes"}}})
    since = api("GET", base)[1]["metadata"]["resourceVersion"]
    api("PATCH", f"{base}/w", {"metadata": {"labels": {"pick": "no"}}}, "application/merge-patch+json")
    events = list(
        api.watch(f"{base}?watch=true&timeoutSeconds=1&resourceVersion={since}&labelSelector=pick%3Dyes")
    )
    assert [e["type"] for e in events] == ["DELETED"]


def test_kubernetes_client_watch(apiserver: RunningApiServer, ns: str) -> None:
    core = kubernetes.client.CoreV1Api(apiserver.api_client())
    core.create_namespaced_config_map(ns, {"metadata": {"name": "seen"}})
    stream = kubernetes.watch.Watch().stream(core.list_namespaced_config_map, ns, timeout_seconds=1)
    assert [(e["type"], e["object"].metadata.name) for e in stream] == [("ADDED", "seen")]


# -- 5. status and scale subresources ---------------------------------------------------------


def test_status_subresource_splits_writes(api: Api, ns: str) -> None:
    body = widget("st")
    body["status"] = {"replicas": 9}
    _, obj = api("POST", f"{WIDGETS}/namespaces/{ns}/widgets", body)
    assert "status" not in obj  # dropped on create, as the real server does
    path = f"{WIDGETS}/namespaces/{ns}/widgets/st"
    merge = "application/merge-patch+json"
    _, obj = api("PATCH", path + "/status", {"spec": {"replicas": 7}, "status": {"replicas": 1}}, merge)
    assert obj["spec"]["replicas"] == 1 and obj["status"]["replicas"] == 1
    _, obj = api("PATCH", path, {"spec": {"replicas": 2}, "status": {"replicas": 5}}, merge)
    assert obj["spec"]["replicas"] == 2 and obj["status"]["replicas"] == 1


def test_status_subresource_for_builtins(api: Api, ns: str) -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "j"},
        "spec": {
            "template": {"spec": {"containers": [{"name": "c", "image": "i"}], "restartPolicy": "Never"}}
        },
    }
    api("POST", f"/apis/batch/v1/namespaces/{ns}/jobs", job)
    merge = "application/merge-patch+json"
    api("PATCH", f"/apis/batch/v1/namespaces/{ns}/jobs/j/status", {"status": {"succeeded": 1}}, merge)
    _, obj = api("PATCH", f"/apis/batch/v1/namespaces/{ns}/jobs/j", {"status": {"succeeded": 0}}, merge)
    assert obj["status"] == {"succeeded": 1}


def test_scale_subresource(api: Api, ns: str) -> None:
    api("POST", f"{WIDGETS}/namespaces/{ns}/widgets", widget("sc", replicas=2))
    path = f"{WIDGETS}/namespaces/{ns}/widgets/sc"
    merge = "application/merge-patch+json"
    api("PATCH", path + "/status", {"status": {"replicas": 2, "selector": "app=w"}}, merge)
    _, scale = api("GET", path + "/scale")
    assert (scale["kind"], scale["apiVersion"]) == ("Scale", "autoscaling/v1")
    assert scale["spec"] == {"replicas": 2} and scale["status"] == {"replicas": 2, "selector": "app=w"}
    _, scale = api("PATCH", path + "/scale", {"spec": {"replicas": 4}}, merge)
    assert scale["spec"]["replicas"] == 4
    assert api("GET", path)[1]["spec"]["replicas"] == 4


def test_deployment_scale(apiserver: RunningApiServer, ns: str) -> None:
    apps = kubernetes.client.AppsV1Api(apiserver.api_client())
    apps.create_namespaced_deployment(
        ns,
        {
            "metadata": {"name": "d"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "d"}},
                "template": {
                    "metadata": {"labels": {"app": "d"}},
                    "spec": {"containers": [{"name": "c", "image": "i"}]},
                },
            },
        },
    )
    apps.patch_namespaced_deployment_scale("d", ns, {"spec": {"replicas": 3}})
    scale = apps.read_namespaced_deployment_scale("d", ns)
    assert scale.spec.replicas == 3 and scale.status.selector == "app=d"


# -- 6. deletion, finalizers, garbage collection ----------------------------------------------


def test_finalizers_hold_deletion(api: Api, ns: str) -> None:
    body = widget("f")
    body["metadata"]["finalizers"] = ["test/hold"]
    api("POST", f"{WIDGETS}/namespaces/{ns}/widgets", body)
    path = f"{WIDGETS}/namespaces/{ns}/widgets/f"
    status, obj = api("DELETE", path)
    assert status == 202
    assert obj["metadata"]["deletionTimestamp"] and obj["metadata"]["deletionGracePeriodSeconds"] == 0
    assert api("GET", path)[0] == 200
    merge = "application/merge-patch+json"
    adding = {"metadata": {"finalizers": ["test/hold", "test/more"]}}
    assert api("PATCH", path, adding, merge)[0] == 422  # no new finalizers on a deleted object
    assert api("PATCH", path, {"metadata": {"finalizers": None}}, merge)[0] == 200
    assert api("GET", path)[0] == 404


def _owned(name: str, owner: dict[str, Any], kind: str = "ConfigMap") -> dict[str, Any]:
    ref = {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
    }
    return {"metadata": {"name": name, "ownerReferences": [ref]}}


def test_garbage_collection_is_recursive_and_honours_finalizers(api: Api, ns: str) -> None:
    _, owner = api("POST", f"{WIDGETS}/namespaces/{ns}/widgets", widget("owner"))
    base = f"/api/v1/namespaces/{ns}/configmaps"
    _, child = api("POST", base, _owned("child", owner))
    held = _owned("held", owner)
    held["metadata"]["finalizers"] = ["test/hold"]
    api("POST", base, held)
    api("POST", base, _owned("grandchild", child))

    assert api("DELETE", f"{WIDGETS}/namespaces/{ns}/widgets/owner")[0] == 200
    wait_for(lambda: api("GET", f"{base}/grandchild")[0] == 404)
    assert api("GET", f"{base}/child")[0] == 404
    status, obj = api("GET", f"{base}/held")
    assert status == 200 and obj["metadata"]["deletionTimestamp"]


def test_orphan_and_foreground_propagation(api: Api, ns: str) -> None:
    base = f"/api/v1/namespaces/{ns}/configmaps"
    _, owner = api("POST", f"{WIDGETS}/namespaces/{ns}/widgets", widget("o1"))
    api("POST", base, _owned("orphan", owner))
    api("DELETE", f"{WIDGETS}/namespaces/{ns}/widgets/o1", {"propagationPolicy": "Orphan"})
    status, obj = api("GET", f"{base}/orphan")
    assert status == 200 and "ownerReferences" not in obj["metadata"]

    _, owner = api("POST", f"{WIDGETS}/namespaces/{ns}/widgets", widget("o2"))
    blocker = _owned("blocker", owner)
    blocker["metadata"]["finalizers"] = ["test/hold"]
    api("POST", base, blocker)
    status, obj = api("DELETE", f"{WIDGETS}/namespaces/{ns}/widgets/o2?propagationPolicy=Foreground")
    assert status == 202 and "foregroundDeletion" in obj["metadata"]["finalizers"]
    api("PATCH", f"{base}/blocker", {"metadata": {"finalizers": None}}, "application/merge-patch+json")
    wait_for(lambda: api("GET", f"{WIDGETS}/namespaces/{ns}/widgets/o2")[0] == 404)


def test_delete_collection(api: Api, ns: str) -> None:
    base = f"/api/v1/namespaces/{ns}/configmaps"
    for name, labels in {"a": {"del": "1"}, "b": {"del": "1"}, "c": {}}.items():
        api("POST", base, {"metadata": {"name": name, "labels": labels}})
    assert api("DELETE", f"{base}?labelSelector=del%3D1")[0] == 200
    assert [i["metadata"]["name"] for i in api("GET", base)[1]["items"]] == ["c"]


# -- 7. CRDs: registration, validation, pruning, CEL -------------------------------------------


def test_crd_registration_through_the_api(api: Api) -> None:
    crd = yaml.safe_load((TEST_CRDS / "widgets.yaml").read_text())
    crd["metadata"]["name"] = "gadgets.test.mlops.dev"
    crd["spec"]["names"] = {
        "plural": "gadgets",
        "singular": "gadget",
        "kind": "Gadget",
        "shortNames": ["gdg"],
    }
    crd["spec"]["scope"] = "Cluster"
    status, _ = api("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    assert status == 201
    _, stored = api("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/gadgets.test.mlops.dev")
    conditions = {c["type"]: c["status"] for c in stored["status"]["conditions"]}
    assert conditions == {"Established": "True", "NamesAccepted": "True"}

    _, resources = api("GET", WIDGETS)
    gadgets = {r["name"]: r for r in resources["resources"]}
    assert gadgets["gadgets"]["shortNames"] == ["gdg"] and gadgets["gadgets"]["namespaced"] is False
    assert {"gadgets/status", "gadgets/scale"} <= set(gadgets)
    assert api("POST", f"{WIDGETS}/gadgets", {**widget("g1"), "kind": "Gadget"})[0] == 201

    assert (
        api("DELETE", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/gadgets.test.mlops.dev")[0]
        == 202
    )
    wait_for(lambda: api("GET", f"{WIDGETS}/gadgets")[0] == 404)


def test_invalid_object_gets_422_in_kubernetes_shape(api: Api, ns: str) -> None:
    status, body = api("POST", f"{WIDGETS}/namespaces/{ns}/widgets", widget("bad", replicas=-1))
    assert status == 422
    assert body == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'Widget.test.mlops.dev "bad" is invalid: spec.replicas: Invalid value: -1: '
        "spec.replicas in body should be greater than or equal to 0",
        "reason": "Invalid",
        "code": 422,
        "details": {
            "name": "bad",
            "group": "test.mlops.dev",
            "kind": "Widget",
            "causes": [
                {
                    "reason": "FieldValueInvalid",
                    "message": "Invalid value: -1: spec.replicas in body should be greater than or equal to 0",
                    "field": "spec.replicas",
                }
            ],
        },
    }


@pytest.mark.parametrize(
    ("spec", "field", "fragment"),
    [
        ({"replicas": 11}, "spec.replicas", "less than or equal to 10"),
        ({"replicas": "two"}, "spec.replicas", "must be of type integer"),
        ({"replicas": 1, "size": "huge"}, "spec.size", 'supported values: "small", "medium", "large"'),
        ({"replicas": 1, "owner": "Bad"}, "spec.owner", "should match"),
        ({"replicas": 1, "owner": "a"}, "spec.owner", "at least 2 chars long"),
        ({"replicas": 1, "tags": ["a", "b", "c", "d"]}, "spec.tags", "must have at most 3 items"),
        ({"replicas": 1, "tags": [""]}, "spec.tags[0]", "at least 1 chars long"),
        ({"replicas": 1, "port": True}, "spec.port", "integer-or-string"),
        ({}, "spec.replicas", "Required value"),
        ({"replicas": 1, "minReplicas": 3, "maxReplicas": 2}, "spec", "minReplicas must not exceed maxReplicas"),
    ],
    ids=["maximum", "type", "enum", "pattern", "minLength", "maxItems", "item-minLength", "int-or-string",
         "required", "cel"],
)  # fmt: skip
def test_schema_validation(api: Api, ns: str, spec: dict[str, Any], field: str, fragment: str) -> None:
    body = widget("v")
    body["spec"] = spec
    status, error = api("POST", f"{WIDGETS}/namespaces/{ns}/widgets", body)
    assert status == 422, error
    assert field in [c["field"] for c in error["details"]["causes"]]
    assert fragment in error["message"]


def test_valid_values_pass_with_defaults_and_pruning(api: Api, ns: str) -> None:
    body = widget("ok", port=8080, threshold=None, config={"free": {"form": True}}, bogus=1)
    body["unknownTopLevel"] = 1
    status, obj = api("POST", f"{WIDGETS}/namespaces/{ns}/widgets", body)
    assert status == 201, obj
    assert obj["spec"]["size"] == "small"  # default applied
    assert "bogus" not in obj["spec"] and "unknownTopLevel" not in obj  # pruned
    assert obj["spec"]["config"] == {"free": {"form": True}}  # x-kubernetes-preserve-unknown-fields

    strict = f"{WIDGETS}/namespaces/{ns}/widgets?fieldValidation=Strict"
    status, error = api("POST", strict, widget("strict", bogus=1))
    assert (status, error["reason"]) == (400, "BadRequest") and 'unknown field "spec.bogus"' in error[
        "message"
    ]


def test_pruned_fields_come_back_as_warnings_beside_the_object(api: Api, ns: str) -> None:
    """Warnings travel in the ``Warning`` header (kubectl prints them), never inside the object."""
    path = f"{api.url}{WIDGETS}/namespaces/{ns}/widgets"

    def send(method: str, url: str, body: Any, content_type: str = "application/json") -> Any:
        headers = {"Content-Type": content_type, **api.auth}
        return api.http.request(method, url, body=json.dumps(body).encode(), headers=headers, timeout=10)

    created = send("POST", path, widget("warned", bogus=1))
    assert created.status == 201
    assert created.headers.get("Warning") == '299 - "unknown field "spec.bogus""'
    assert "__warnings__" not in json.loads(created.data)
    patched = send(
        "PATCH", f"{path}/warned", {"spec": {"replicas": 2, "other": 2}}, "application/merge-patch+json"
    )
    assert patched.status == 200
    assert patched.headers.get("Warning") == '299 - "unknown field "spec.other""'
    assert "__warnings__" not in json.loads(patched.data)
    clean = send("POST", path, widget("clean"))
    assert clean.status == 201 and "Warning" not in clean.headers


def test_cel_transition_rule_uses_old_self(api: Api, ns: str) -> None:
    api("POST", f"{WIDGETS}/namespaces/{ns}/widgets", widget("t", mode="fast"))
    merge = "application/merge-patch+json"
    path = f"{WIDGETS}/namespaces/{ns}/widgets/t"
    status, error = api("PATCH", path, {"spec": {"mode": "slow"}}, merge)
    assert status == 422
    assert error["details"]["causes"][0]["field"] == "spec.mode" and "mode is immutable" in error["message"]
    assert api("PATCH", path, {"spec": {"replicas": 3}}, merge)[0] == 200


# -- 8. discovery and OpenAPI -----------------------------------------------------------------


def test_discovery_legacy_and_aggregated(api: Api) -> None:
    assert api("GET", "/api")[1]["versions"] == ["v1"]
    groups = {g["name"] for g in api("GET", "/apis")[1]["groups"]}
    assert {"apps", "batch", "coordination.k8s.io", "events.k8s.io", "test.mlops.dev"} <= groups
    assert api("GET", "/version")[1]["major"] == "1"

    accept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
    _, aggregated = api("GET", "/apis", headers={"Accept": accept})
    assert aggregated["kind"] == "APIGroupDiscoveryList"
    test_group = next(i for i in aggregated["items"] if i["metadata"]["name"] == "test.mlops.dev")
    resource = test_group["versions"][0]["resources"][0]
    assert resource["resource"] == "widgets" and resource["categories"] == ["mlops-test"]
    assert {s["subresource"] for s in resource["subresources"]} == {"status", "scale"}


def test_openapi_documents(api: Api) -> None:
    _, index = api("GET", "/openapi/v3")
    url = index["paths"]["apis/test.mlops.dev/v1alpha1"]["serverRelativeURL"]
    _, doc = api("GET", url)
    schema = doc["components"]["schemas"]["dev.mlops.test.v1alpha1.Widget"]
    assert schema["properties"]["spec"]["properties"]["replicas"]["type"] == "integer"
    _, v2 = api("GET", "/openapi/v2")
    assert v2["swagger"] == "2.0" and "dev.mlops.test.v1alpha1.Widget" in v2["definitions"]


def test_table_printing_with_printer_columns(api: Api, ns: str) -> None:
    api("POST", f"{WIDGETS}/namespaces/{ns}/widgets", widget("tbl", replicas=3, mode="fast"))
    api(
        "PATCH",
        f"{WIDGETS}/namespaces/{ns}/widgets/tbl/status",
        {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
        "application/merge-patch+json",
    )
    accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
    _, table = api("GET", f"{WIDGETS}/namespaces/{ns}/widgets", headers={"Accept": accept})
    assert table["kind"] == "Table"
    columns = [(c["name"], c["priority"]) for c in table["columnDefinitions"]]
    assert columns == [("Name", 0), ("Replicas", 0), ("Size", 0), ("Ready", 0), ("Mode", 1), ("Age", 0)]
    assert table["rows"][0]["cells"][:5] == ["tbl", 3, "small", "True", "fast"]


# -- 9. namespaces, events, leases ------------------------------------------------------------


def test_namespaces(api: Api) -> None:
    names = {n["metadata"]["name"] for n in api("GET", "/api/v1/namespaces")[1]["items"]}
    assert {"default", "kube-system"} <= names
    status, error = api("POST", "/api/v1/namespaces/nowhere/configmaps", {"metadata": {"name": "x"}})
    assert (status, error["reason"], error["message"]) == (404, "NotFound", 'namespaces "nowhere" not found')

    api("POST", "/api/v1/namespaces", {"metadata": {"name": "doomed"}})
    api("POST", "/api/v1/namespaces/doomed/configmaps", {"metadata": {"name": "x"}})
    assert api("DELETE", "/api/v1/namespaces/doomed")[0] == 202
    wait_for(lambda: api("GET", "/api/v1/namespaces/doomed")[0] == 404)
    assert api("GET", "/api/v1/namespaces/doomed/configmaps/x")[0] == 404


def test_events_and_leases_are_storable(api: Api, ns: str) -> None:
    event = {
        "metadata": {"name": "e1"},
        "involvedObject": {"kind": "Widget", "name": "w", "namespace": ns},
        "reason": "Tested",
        "message": "hello",
        "type": "Normal",
    }
    assert api("POST", f"/api/v1/namespaces/{ns}/events", event)[0] == 201
    new_event = {"metadata": {"name": "e2"}, "eventTime": "2026-01-01T00:00:00.000000Z", "reason": "R", "action": "A",
                 "reportingController": "c", "reportingInstance": "i", "type": "Normal"}  # fmt: skip
    assert api("POST", f"/apis/events.k8s.io/v1/namespaces/{ns}/events", new_event)[0] == 201
    lease = {"metadata": {"name": "leader"}, "spec": {"holderIdentity": "me", "leaseDurationSeconds": 15}}
    assert api("POST", f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases", lease)[0] == 201


# -- 10. ways to run it -------------------------------------------------------------------------


async def test_async_runner_and_kubeconfig(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with EmulatedApiServer.running(host="127.0.0.1", port=0, crds_dir=TEST_CRDS) as server:
        config = write_kubeconfig(
            tmp_path / "config",
            server.url,
            namespace="default",
            token=server.admin_token,
            ca=server.certificates.ca,
        )
        monkeypatch.setenv("KUBECONFIG", str(config))
        credentials = kopf.login_with_kubeconfig(
            logger=logging.getLogger(__name__), settings=kopf.OperatorSettings()
        )
        assert credentials is not None and credentials.server == server.url
        client = kubernetes.config.new_client_from_config(config_file=str(config))
        names = await asyncio.to_thread(
            lambda: [n.metadata.name for n in kubernetes.client.CoreV1Api(client).list_namespace().items]
        )
        assert "default" in names


def test_thread_runner_with_state_file(tmp_path: pathlib.Path) -> None:
    state = tmp_path / "state.json"
    with ApiServerThread(crds_dir=TEST_CRDS, state_file=state) as first:
        status, obj = Api(first.url, first.admin_token, first.certificates.ca)(
            "POST", f"{WIDGETS}/namespaces/default/widgets", widget("kept")
        )
        assert status == 201
    with ApiServerThread(state_file=state) as second:
        status, again = Api(second.url, second.admin_token, second.certificates.ca)(
            "GET", f"{WIDGETS}/namespaces/default/widgets/kept"
        )
        assert status == 200 and again["metadata"]["uid"] == obj["metadata"]["uid"]


def test_process_entry_point(tmp_path: pathlib.Path) -> None:
    url_file, kubeconfig = tmp_path / "url", tmp_path / "kubeconfig"
    process = subprocess.Popen(
        [sys.executable, "-m", "mlops_operator.sandbox.apiserver", "--host", "127.0.0.1", "--port", "0",
         "--crds", str(TEST_CRDS), "--url-file", str(url_file), "--kubeconfig", str(kubeconfig)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        url = wait_for(lambda: url_file.exists() and url_file.read_text().strip(), timeout=20)
        config = yaml.safe_load(kubeconfig.read_text())
        token = config["users"][0]["user"]["token"]
        ca = base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"])
        assert Api(url, None, ca)("GET", f"{WIDGETS}/widgets")[0] == 401
        status, listing = Api(url, token, ca)("GET", f"{WIDGETS}/widgets")
        assert (status, listing["kind"]) == (200, "WidgetList")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# -- 11. concurrency and kopf -------------------------------------------------------------------


def test_concurrent_writers_are_serialised(api: Api, ns: str) -> None:
    """Read-modify-write with resourceVersions from many threads: every increment lands once."""
    api("POST", f"/api/v1/namespaces/{ns}/configmaps", {"metadata": {"name": "counter"}, "data": {"n": "0"}})
    path = f"/api/v1/namespaces/{ns}/configmaps/counter"

    def bump() -> None:
        for _ in range(10):
            while True:
                _, obj = api("GET", path)
                obj["data"]["n"] = str(int(obj["data"]["n"]) + 1)
                if api("PUT", path, obj)[0] == 200:
                    break

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert api("GET", path)[1]["data"]["n"] == "40"


def test_kopf_operator_with_namespace_pattern(apiserver: RunningApiServer, api: Api, ns: str) -> None:
    """The measured failure: kopf with a namespace pattern lists namespaces (kmock answered 500)."""
    from kopf.testing import KopfRunner

    env = {"KUBECONFIG": str(apiserver.kubeconfig)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        args = ["run", "--standalone", "--namespace", "t-*", str(DATA / "kopf_operator.py")]
        with KopfRunner(args, timeout=30) as runner:
            api("POST", f"{WIDGETS}/namespaces/{ns}/widgets", widget("k"))
            wait_for(
                lambda: api("GET", f"/api/v1/namespaces/{ns}/configmaps/k-child")[0] == 200,
                timeout=20,
            )
            obj = wait_for(
                lambda: (
                    (o := api("GET", f"{WIDGETS}/namespaces/{ns}/widgets/k")[1])
                    .get("status", {})
                    .get("conditions")
                    and o
                ),
                timeout=10,
            )
            assert obj["status"]["conditions"][0]["type"] == "Ready"
        assert runner.exit_code == 0, runner.output
        assert "Traceback" not in runner.output, runner.output
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# -- 12. kmock: the adapter's pin and its DSL ---------------------------------------------------


def test_kmock_is_the_version_the_adapter_was_written_for() -> None:
    """kmock_adapter uses kmock internals: an upgrade must fail here, loudly, and nowhere else."""
    import importlib.metadata
    import tomllib

    from mlops_operator.sandbox.apiserver.kmock_adapter import KMOCK_VERSION

    installed = importlib.metadata.version("kmock")
    assert installed == KMOCK_VERSION, (
        f"kmock {installed} is installed, but sandbox/apiserver/kmock_adapter.py was written for kmock "
        f"{KMOCK_VERSION} and uses its internals (listed in that module's docstring): check each against "
        f"kmock {installed}, then move KMOCK_VERSION and the kmock pin in pyproject.toml together"
    )
    project = tomllib.loads((pathlib.Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    requirements = [
        *project["dependencies"],
        *(r for extra in project["optional-dependencies"].values() for r in extra),
    ]
    pins = {r.replace(" ", "") for r in requirements if r.startswith("kmock")}
    assert pins == {f"kmock=={KMOCK_VERSION}"}, (
        f"pyproject.toml must pin kmock exactly to the adapter's version {KMOCK_VERSION}, not {sorted(pins)}"
    )


def test_kmock_reactions_take_precedence_over_the_emulation() -> None:
    """Fault injection through kmock's DSL: a matching reaction answers before the emulator does."""
    with ApiServerThread() as thread:
        api = Api(thread.url, thread.admin_token, thread.certificates.ca)
        pods = "/api/v1/namespaces/default/pods"
        assert api("GET", pods)[0] == 200
        thread.call(lambda: thread.emulator[f"get {pods}"] << 503)
        assert api("GET", pods)[0] == 503
        assert api("GET", "/api/v1/namespaces/default/configmaps")[0] == 200  # others unaffected
        recorded = thread.call(lambda: [(r.method, r.url.path) for r in thread.emulator._requests])
        assert recorded.count(("GET", pods)) == 2  # both recorded, the answered and the injected
