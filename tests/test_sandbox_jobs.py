"""Jobs in the sandbox: a command that succeeds or fails ends with the Job status a cluster shows."""

from __future__ import annotations

import re
import sys
from typing import Any

import pytest

from tests.fixtures_sandbox import Sandbox, wait_for, wait_for_condition

pytestmark = pytest.mark.slow


def job(name: str, command: list[str], **spec: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": "python:3.11", "command": command}
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "backoffLimit": spec.pop("backoffLimit", 0),
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"restartPolicy": "Never", "containers": [container]},
            },
            **spec,
        },
    }


def pods_of(sandbox: Sandbox, job_name: str) -> list[dict[str, Any]]:
    return [p for p in sandbox.api.list("Pod") if p["metadata"].get("labels", {}).get("job-name") == job_name]


def test_succeeding_job_completes(sandbox: Sandbox) -> None:
    sandbox.api.create(job("ok", ["python", "-c", "import os; print('hello from', os.environ['HOSTNAME'])"]))
    done = wait_for_condition(sandbox.api, "Job", "ok", "Complete", timeout=30)
    assert done["status"]["succeeded"] == 1
    assert done["status"]["completionTime"] and done["status"]["startTime"]
    assert {c["type"] for c in done["status"]["conditions"]} >= {"SuccessCriteriaMet", "Complete"}
    (pod,) = pods_of(sandbox, "ok")
    assert pod["status"]["phase"] == "Succeeded"
    labels = pod["metadata"]["labels"]
    assert (
        labels["batch.kubernetes.io/job-name"] == "ok" and labels["controller-uid"] == done["metadata"]["uid"]
    )
    assert pod["metadata"]["ownerReferences"][0]["uid"] == done["metadata"]["uid"]
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0 and terminated["reason"] == "Completed"
    assert f"hello from {pod['metadata']['name']}" in sandbox.log(pod["metadata"]["name"], "main")


def test_failing_job_fails_after_backoff_limit(sandbox: Sandbox) -> None:
    script = "import sys; open(sys.argv[1], 'w').write('bad data: 3 nulls'); sys.exit(4)"
    sandbox.api.create(job("bad", ["python", "-c", script, "/dev/termination-log"], backoffLimit=1))
    failed = wait_for_condition(sandbox.api, "Job", "bad", "Failed", timeout=40)
    condition = next(c for c in failed["status"]["conditions"] if c["type"] == "Failed")
    assert condition["reason"] == "BackoffLimitExceeded"
    assert failed["status"]["failed"] == 2
    pods = pods_of(sandbox, "bad")
    assert len(pods) == 2 and all(p["status"]["phase"] == "Failed" for p in pods)
    terminated = pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 4 and terminated["reason"] == "Error"
    assert terminated["message"] == "bad data: 3 nulls"


def test_deadline_exceeded_kills_the_pod(sandbox: Sandbox) -> None:
    sandbox.api.create(job("slow", ["python", "-c", "import time; time.sleep(600)"], activeDeadlineSeconds=2))
    failed = wait_for_condition(sandbox.api, "Job", "slow", "Failed", timeout=30)
    assert (
        next(c for c in failed["status"]["conditions"] if c["type"] == "Failed")["reason"]
        == "DeadlineExceeded"
    )
    wait_for(
        lambda: not pods_of(sandbox, "slow"), timeout=15, message="the deadline-exceeded pod to be deleted"
    )


def test_fallback_to_logs_on_error_and_ttl(sandbox: Sandbox) -> None:
    command = [
        "python",
        "-c",
        "import sys; print('line one'); print('the real cause', file=sys.stderr); sys.exit(2)",
    ]
    manifest = job("logs", command, container={"terminationMessagePolicy": "FallbackToLogsOnError"})
    manifest["spec"]["ttlSecondsAfterFinished"] = 1
    sandbox.api.create(manifest)
    failed = wait_for_condition(sandbox.api, "Job", "logs", "Failed", timeout=30)
    uid = failed["metadata"]["uid"]
    pod = wait_for(lambda: pods_of(sandbox, "logs"), message="the job's pod")[0]
    message = pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"]
    assert "the real cause" in message
    wait_for(lambda: sandbox.api.get("Job", "logs") is None, timeout=15, message="the TTL to delete the Job")
    wait_for(
        lambda: not pods_of(sandbox, "logs"), timeout=15, message=f"the pods of job uid {uid} to be collected"
    )


def test_missing_command_fails_the_pod_with_the_os_error(sandbox: Sandbox) -> None:
    sandbox.api.create(job("nocmd", ["no-such-binary-xyz", "--flag"]))
    wait_for_condition(sandbox.api, "Job", "nocmd", "Failed", timeout=30)
    (pod,) = pods_of(sandbox, "nocmd")
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["reason"] == "StartError" and terminated["exitCode"] == 128
    assert 'exec: "no-such-binary-xyz": executable file not found in $PATH' in terminated["message"]


def test_env_from_configmap_field_refs_and_var_expansion(sandbox: Sandbox) -> None:
    sandbox.api.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "settings"},
            "data": {"GREETING": "hi"},
        }
    )
    script = "import os, sys; print(sys.argv[1], os.environ['GREETING'], os.environ['NS'])"
    manifest = job("env", ["python", "-c", script, "$(GREETING)-$(POD_IP)-$$(LITERAL)"])
    manifest["spec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    manifest["spec"]["template"]["spec"]["containers"][0]["envFrom"] = [
        {"configMapRef": {"name": "settings"}}
    ]
    sandbox.api.create(manifest)
    wait_for_condition(sandbox.api, "Job", "env", "Complete", timeout=30)
    (pod,) = pods_of(sandbox, "env")
    ip = pod["status"]["podIP"]
    assert re.match(r"^127\.\d+\.0\.\d+$", ip) and ip != "127.0.0.1"
    assert f"hi-{ip}-$(LITERAL) hi default" in sandbox.log(pod["metadata"]["name"], "main")


def test_unknown_image_shows_image_pull_errors(sandbox: Sandbox) -> None:
    sandbox.api.create(job("noimage", ["true"], container={"image": "registry.example.com/nope:1"}))

    def waiting_reason() -> str | None:
        pods = pods_of(sandbox, "noimage")
        statuses = pods[0].get("status", {}).get("containerStatuses") if pods else None
        reason = statuses[0]["state"].get("waiting", {}).get("reason") if statuses else None
        return reason if reason == "ImagePullBackOff" else None

    wait_for(waiting_reason, timeout=20, message="ImagePullBackOff")
    (pod,) = pods_of(sandbox, "noimage")
    assert pod["status"]["phase"] == "Pending"
    message = pod["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
    assert "registry.example.com/nope:1" in message and "known images" in message
    assert sys.executable  # the sandbox keeps running: the next Job still works
    sandbox.api.create(job("after-noimage", ["python", "-c", "pass"]))
    wait_for_condition(sandbox.api, "Job", "after-noimage", "Complete", timeout=30)


def test_memory_limit_reports_oom_killed(sandbox: Sandbox) -> None:
    # limits.memory is an RLIMIT_DATA in the sandbox: the allocation fails with MemoryError.
    manifest = job("oom", ["python", "-c", "x = bytearray(2 * 1024**3)"])
    manifest["spec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": {"memory": "256Mi"}}
    sandbox.api.create(manifest)
    wait_for_condition(sandbox.api, "Job", "oom", "Failed", timeout=30)
    (pod,) = pods_of(sandbox, "oom")
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["reason"], terminated["exitCode"]) == ("OOMKilled", 137)
    assert pod["status"]["qosClass"] == "Burstable"


def test_init_container_and_empty_dir_at_tmp(sandbox: Sandbox) -> None:
    # An emptyDir mounted at /tmp is the pod's TMPDIR: what the init container writes, the main one reads.
    write = "import os; open(os.path.join(os.environ['TMPDIR'], 'token'), 'w').write('from-init')"
    read = "import os; print('read', open(os.path.join(os.environ['TMPDIR'], 'token')).read())"
    manifest = job("init", ["python", "-c", read])
    pod_spec = manifest["spec"]["template"]["spec"]
    pod_spec["volumes"] = [{"name": "scratch", "emptyDir": {}}]
    mount = [{"name": "scratch", "mountPath": "/tmp"}]
    pod_spec["containers"][0]["volumeMounts"] = mount
    pod_spec["initContainers"] = [{"name": "prepare", "image": "python:3.11", "command": ["python", "-c", write],
                                  "volumeMounts": mount}]  # fmt: skip
    sandbox.api.create(manifest)
    wait_for_condition(sandbox.api, "Job", "init", "Complete", timeout=30)
    (pod,) = pods_of(sandbox, "init")
    assert pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"
    assert "read from-init" in sandbox.log(pod["metadata"]["name"], "main")
