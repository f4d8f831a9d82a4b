"""The real kubectl works against the emulated API server, as users will use it in the sandbox."""

from __future__ import annotations

import json
import pathlib
import subprocess
import time
from collections.abc import Callable
from typing import Any

import yaml

from tests.fixtures_apiserver import RunningApiServer, kubectl_binary

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
ROOT = pathlib.Path(__file__).parent.parent
PROJECT_CRDS = ROOT / "crds"
EXAMPLES = ROOT / "examples"


def manifest(name: str, **spec: Any) -> str:
    body = {
        "apiVersion": "test.mlops.dev/v1alpha1",
        "kind": "Widget",
        "metadata": {"name": name, "labels": {"app": "widget"}},
        "spec": {"replicas": 2, "mode": "fast", **spec},
    }
    return yaml.safe_dump(body)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"kubectl failed ({result.returncode}): {result.stderr}"
    return result.stdout


def get_json(kubectl: Kubectl, *args: str) -> Any:
    return json.loads(ok(kubectl("get", *args, "-o", "json")))


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.05)  # polling interval; the deadline decides
    raise AssertionError("condition not met before the deadline")


def test_kubectl_binary_is_present() -> None:
    assert pathlib.Path(kubectl_binary()).exists()


def test_apply_then_reapply_uses_a_three_way_merge(kubectl: Kubectl) -> None:
    assert "created" in ok(
        kubectl("apply", "-f", "-", input=manifest("apply", tags=["a", "b"], owner="team-a"))
    )
    created = get_json(kubectl, "widget", "apply")
    assert created["metadata"]["generation"] == 1
    assert "kubectl.kubernetes.io/last-applied-configuration" in created["metadata"]["annotations"]

    # A field set out of band (not in the manifest) survives; a field removed from the manifest goes.
    ok(kubectl("label", "widget", "apply", "extra=kept"))
    assert "configured" in ok(kubectl("apply", "-f", "-", input=manifest("apply", replicas=3, tags=["a"])))
    updated = get_json(kubectl, "widget", "apply")
    assert updated["spec"]["replicas"] == 3 and updated["spec"]["tags"] == ["a"]
    assert "owner" not in updated["spec"]
    assert updated["metadata"]["labels"]["extra"] == "kept"
    assert updated["metadata"]["generation"] == 2

    assert "unchanged" in ok(kubectl("apply", "-f", "-", input=manifest("apply", replicas=3, tags=["a"])))


def test_apply_builtin_uses_strategic_merge(kubectl: Kubectl) -> None:
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
                    "containers": [{"name": "main", "image": "nginx:1", "env": [{"name": "A", "value": "1"}]}]
                },
            },
        },
    }
    ok(kubectl("apply", "-f", "-", input=yaml.safe_dump(deployment)))
    deployment["spec"]["template"]["spec"]["containers"][0]["image"] = "nginx:2"
    ok(kubectl("apply", "-f", "-", input=yaml.safe_dump(deployment)))
    live = get_json(kubectl, "deployment", "web")
    assert live["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:2"
    assert live["metadata"]["generation"] == 2
    assert "web" in ok(kubectl("get", "deployments"))


def test_get_shows_printer_columns(kubectl: Kubectl) -> None:
    ok(kubectl("apply", "-f", "-", input=manifest("cols", size="large")))
    table = ok(kubectl("get", "widgets")).splitlines()
    assert table[0].split() == ["NAME", "REPLICAS", "SIZE", "READY", "AGE"]
    row = next(line.split() for line in table if line.startswith("cols "))
    assert row[:3] == ["cols", "2", "large"]

    wide = ok(kubectl("get", "wdg", "-o", "wide")).splitlines()  # the short name works too
    assert wide[0].split() == ["NAME", "REPLICAS", "SIZE", "READY", "MODE", "AGE"]
    assert "fast" in next(line for line in wide if line.startswith("cols "))

    as_yaml = yaml.safe_load(ok(kubectl("get", "widget", "cols", "-o", "yaml")))
    assert as_yaml["kind"] == "Widget" and as_yaml["metadata"]["uid"]
    assert "cols" in ok(kubectl("get", "mlops-test"))  # the category


def test_patch_status_subresource(kubectl: Kubectl) -> None:
    ok(kubectl("apply", "-f", "-", input=manifest("stat")))
    patch = json.dumps({"status": {"replicas": 2, "conditions": [{"type": "Ready", "status": "True"}]}})
    ok(kubectl("patch", "widget", "stat", "--subresource=status", "--type=merge", "-p", patch))
    live = get_json(kubectl, "widget", "stat")
    assert live["status"]["replicas"] == 2 and live["metadata"]["generation"] == 1
    row = next(
        line.split() for line in ok(kubectl("get", "widgets")).splitlines() if line.startswith("stat ")
    )
    assert row[3] == "True"


def test_scale(kubectl: Kubectl) -> None:
    ok(kubectl("apply", "-f", "-", input=manifest("scaled")))
    ok(kubectl("scale", "widget", "scaled", "--replicas=4"))
    assert get_json(kubectl, "widget", "scaled")["spec"]["replicas"] == 4


def test_wait_for_condition(apiserver: RunningApiServer, kubectl: Kubectl, tmp_path: pathlib.Path) -> None:
    ok(kubectl("apply", "-f", "-", input=manifest("waited")))
    binary = kubectl_binary()
    waiting = subprocess.Popen(
        [binary, f"--kubeconfig={apiserver.kubeconfig}", f"--cache-dir={tmp_path}", "wait",
         "--for=condition=Ready", "widget/waited", "--timeout=30s"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # Set the condition only once kubectl is watching, so the wait really waits.
        wait_for(
            lambda: any(
                r.params.get("watch") == "true" and "widgets" in str(r.url)
                for r in list(apiserver.emulator._requests)
            ),
            timeout=20,
        )
        patch = json.dumps(
            {"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Done"}]}}
        )
        ok(kubectl("patch", "widget", "waited", "--subresource=status", "--type=merge", "-p", patch))
        stdout, stderr = waiting.communicate(timeout=30)
        assert waiting.returncode == 0, stderr
        assert "condition met" in stdout
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.communicate()


def test_delete_waits_for_finalizers(
    apiserver: RunningApiServer, kubectl: Kubectl, tmp_path: pathlib.Path
) -> None:
    body = yaml.safe_load(manifest("final"))
    body["metadata"]["finalizers"] = ["test.mlops.dev/hold"]
    ok(kubectl("apply", "-f", "-", input=yaml.safe_dump(body)))
    deleting = subprocess.Popen(
        [kubectl_binary(), f"--kubeconfig={apiserver.kubeconfig}", f"--cache-dir={tmp_path}", "delete",
         "widget", "final", "--timeout=30s"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(
            lambda: get_json(kubectl, "widget", "final")["metadata"].get("deletionTimestamp"), timeout=20
        )
        assert deleting.poll() is None  # kubectl is still waiting for the finalizer
        ok(kubectl("patch", "widget", "final", "--type=merge", "-p", '{"metadata":{"finalizers":null}}'))
        stdout, stderr = deleting.communicate(timeout=30)
        assert deleting.returncode == 0, stderr
        assert "deleted" in stdout
    finally:
        if deleting.poll() is None:
            deleting.kill()
            deleting.communicate()
    result = kubectl("get", "widget", "final")
    assert result.returncode != 0 and "NotFound" in result.stderr


def test_api_resources(kubectl: Kubectl) -> None:
    lines = ok(kubectl("api-resources", "-o", "wide")).splitlines()
    widgets = next(line.split() for line in lines if line.startswith("widgets "))
    assert widgets[1] == "wdg" and widgets[2] == "test.mlops.dev/v1alpha1" and widgets[3] == "true"
    assert widgets[4] == "Widget" and "mlops-test" in widgets
    assert any(line.split()[:2] == ["deployments", "deploy"] for line in lines)


def test_legacy_discovery_fallback(
    apiserver: RunningApiServer, kubectl: Kubectl, tmp_path: pathlib.Path
) -> None:
    """kubectl asks for aggregated discovery; a plain APIGroupList answer must make it fall back."""
    apiserver.thread.call(lambda: setattr(apiserver.emulator, "aggregated_discovery", False))
    try:
        result = subprocess.run(
            [kubectl_binary(), f"--kubeconfig={apiserver.kubeconfig}", f"--cache-dir={tmp_path}", "api-resources"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert any(line.startswith("widgets ") for line in result.stdout.splitlines())
        asked = [r.url.path for r in list(apiserver.emulator._requests)[-200:]]
        assert any(u.endswith("/apis/test.mlops.dev/v1alpha1") for u in asked)  # per-group requests
    finally:
        apiserver.thread.call(lambda: setattr(apiserver.emulator, "aggregated_discovery", True))


def test_invalid_manifest_is_rejected_with_the_field_named(kubectl: Kubectl) -> None:
    result = kubectl("apply", "-f", "-", input=manifest("invalid", replicas=-1, size="huge"))
    assert result.returncode != 0
    assert "spec.replicas" in result.stderr and "greater than or equal to 0" in result.stderr
    assert "spec.size" in result.stderr and 'Unsupported value: "huge"' in result.stderr

    unknown = kubectl("apply", "-f", "-", input=manifest("unknown", bogus=1))
    assert unknown.returncode != 0 and 'unknown field "spec.bogus"' in unknown.stderr


def test_project_crds_and_examples(kubectl: Kubectl) -> None:
    """The project's own CRDs register, and the examples apply and print with their columns."""
    # crds/ is committed (tests/test_crds.py keeps it current): missing CRDs fail, not skip.
    crds = sorted(PROJECT_CRDS.glob("*.yaml"))
    assert crds, f"no CRDs in {PROJECT_CRDS}: run `make crds`"
    ok(kubectl("apply", "-f", str(PROJECT_CRDS)))
    for crd in crds:
        name = yaml.safe_load(crd.read_text())["metadata"]["name"]
        ok(kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=20s"))
    examples = sorted(EXAMPLES.glob("*.yaml"))
    assert examples, f"no examples in {EXAMPLES}"
    for example in examples:
        ok(kubectl("apply", "-f", str(example)))
    listing = ok(kubectl("get", "mlops", "-o", "wide"))
    for example in examples:
        for doc in yaml.safe_load_all(example.read_text()):
            if doc:
                assert doc["metadata"]["name"] in listing
