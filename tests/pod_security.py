"""A checker for the Kubernetes ``restricted`` Pod Security Standard (policy version ``latest``, 1.30+).

It follows https://kubernetes.io/docs/concepts/security/pod-security-standards/ control by control
(the restricted profile includes every baseline control), as the PodSecurity admission plugin
(``k8s.io/pod-security-admission``) applies it to a pod or to the pod template of a workload:

baseline
  HostProcess, host namespaces, privileged containers, capabilities (a baseline subset), hostPath
  volumes, host ports, AppArmor, SELinux, /proc mount type, seccomp (not Unconfined), sysctls.
restricted
  volume types, privilege escalation, running as non-root, running as a non-root user (uid != 0),
  seccomp (RuntimeDefault or Localhost, at pod level or on every container), capabilities (drop
  ALL, add only NET_BIND_SERVICE).

A pod with ``spec.os.name: windows`` is exempt from the restricted seccomp, privilege escalation
and capabilities controls, as the standard says (v1.25+). The ``image`` volume type (alpha/beta
in 1.31-1.33) is not in the allowed list here: this checker is stricter than admission there.

:func:`violations` returns one line per broken control, worded as admission words its warnings
(``allowPrivilegeEscalation != false (container "c" must set ...)``), so a failing test names the
field to fix. :func:`pod_templates` finds every pod template in a workload object (Pod, Deployment,
StatefulSet, DaemonSet, ReplicaSet, Job, CronJob, KubeRay's RayJob and RayCluster).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

#: Capabilities baseline lets a container add (the container runtime's default set).
BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)
#: The only capability restricted lets a container add (after dropping ALL).
RESTRICTED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
#: Volume types restricted allows (everything else, hostPath included, is refused).
RESTRICTED_VOLUME_TYPES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
#: The "safe" sysctls (baseline, policy version latest).
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})
APPARMOR_TYPES = frozenset({"RuntimeDefault", "Localhost"})
SECCOMP_TYPES = frozenset({"RuntimeDefault", "Localhost"})
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"


def _containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        yield from spec.get(key) or []


def _quoted(names: list[str]) -> str:
    return ", ".join(f'"{name}"' for name in names)


def _selinux_ok(options: dict[str, Any] | None) -> bool:
    if not options:
        return True
    return options.get("type", "") in SELINUX_TYPES and not options.get("user") and not options.get("role")


def violations(spec: dict[str, Any], metadata: dict[str, Any] | None = None) -> list[str]:
    """Every control of the restricted profile that this pod spec (and its metadata) breaks."""
    found: list[str] = []
    pod_sc: dict[str, Any] = spec.get("securityContext") or {}
    containers = list(_containers(spec))
    windows = (spec.get("os") or {}).get("name") == "windows"

    def offenders(predicate: Any) -> list[str]:
        return [str(c.get("name")) for c in containers if predicate(c.get("securityContext") or {}, c)]

    # --- baseline ---------------------------------------------------------------------------
    host_process = bool((pod_sc.get("windowsOptions") or {}).get("hostProcess")) or offenders(
        lambda sc, _: bool((sc.get("windowsOptions") or {}).get("hostProcess"))
    )
    if host_process:
        found.append("hostProcess (pod or containers set securityContext.windowsOptions.hostProcess=true)")
    hosts = [field for field in ("hostNetwork", "hostPID", "hostIPC") if spec.get(field)]
    if hosts:
        found.append(f"host namespaces ({'=true, '.join(hosts)}=true)")
    if names := offenders(lambda sc, _: bool(sc.get("privileged"))):
        found.append(f"privileged (containers {_quoted(names)} must not set securityContext.privileged=true)")
    if names := offenders(
        lambda sc, _: not set((sc.get("capabilities") or {}).get("add") or []) <= BASELINE_CAPABILITIES
    ):
        found.append(
            f"non-default capabilities (containers {_quoted(names)} add capabilities beyond baseline)"
        )
    if names := [str(v.get("name")) for v in spec.get("volumes") or [] if "hostPath" in v]:
        found.append(f"hostPath volumes (volumes {_quoted(names)})")
    if names := [
        str(c.get("name")) for c in containers if any(p.get("hostPort") for p in c.get("ports") or [])
    ]:
        found.append(f"hostPort (containers {_quoted(names)} use hostPort)")
    apparmor_bad = (pod_sc.get("appArmorProfile") or {}).get("type", "RuntimeDefault") not in APPARMOR_TYPES
    apparmor_bad = apparmor_bad or bool(
        offenders(
            lambda sc, _: (
                (sc.get("appArmorProfile") or {}).get("type", "RuntimeDefault") not in APPARMOR_TYPES
            )
        )
    )
    for key, value in ((metadata or {}).get("annotations") or {}).items():
        if key.startswith(APPARMOR_ANNOTATION) and not (
            value == "runtime/default" or str(value).startswith("localhost/")
        ):
            apparmor_bad = True
    if apparmor_bad:
        found.append("forbidden AppArmor profile (only RuntimeDefault or Localhost)")
    if not _selinux_ok(pod_sc.get("seLinuxOptions")) or offenders(
        lambda sc, _: not _selinux_ok(sc.get("seLinuxOptions"))
    ):
        found.append("seLinuxOptions (forbidden type, or user/role set)")
    if names := offenders(lambda sc, _: sc.get("procMount", "Default") != "Default"):
        found.append(f"procMount (containers {_quoted(names)} must use procMount=Default)")
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    if pod_seccomp == "Unconfined" or offenders(
        lambda sc, _: (sc.get("seccompProfile") or {}).get("type") == "Unconfined"
    ):
        found.append("seccompProfile (Unconfined is forbidden)")
    if unsafe := [
        str(s.get("name")) for s in pod_sc.get("sysctls") or [] if s.get("name") not in SAFE_SYSCTLS
    ]:
        found.append(f"forbidden sysctls ({', '.join(unsafe)})")

    # --- restricted -------------------------------------------------------------------------
    if names := [
        str(v.get("name"))
        for v in spec.get("volumes") or []
        if not set(v) - {"name"} <= RESTRICTED_VOLUME_TYPES
    ]:
        found.append(f"restricted volume types (volumes {_quoted(names)})")
    pod_non_root = pod_sc.get("runAsNonRoot")
    if names := offenders(
        lambda sc, _: (
            sc.get("runAsNonRoot") is False or (sc.get("runAsNonRoot") is None and pod_non_root is not True)
        )
    ):
        found.append(
            f"runAsNonRoot != true (pod or containers {_quoted(names)} must set securityContext.runAsNonRoot=true)"
        )
    elif pod_non_root is False:
        found.append("runAsNonRoot != true (pod must not set securityContext.runAsNonRoot=false)")
    if pod_sc.get("runAsUser") == 0 or offenders(lambda sc, _: sc.get("runAsUser") == 0):
        found.append("runAsUser=0 (pod and containers must not set runAsUser=0)")
    if windows:
        return found
    if names := offenders(lambda sc, _: sc.get("allowPrivilegeEscalation") is not False):
        found.append(
            f"allowPrivilegeEscalation != false (containers {_quoted(names)} must set "
            "securityContext.allowPrivilegeEscalation=false)"
        )
    pod_seccomp_ok = pod_seccomp in SECCOMP_TYPES
    if names := offenders(
        lambda sc, _: (
            (sc.get("seccompProfile") or {}).get("type") not in SECCOMP_TYPES
            and not ((sc.get("seccompProfile") or {}).get("type") is None and pod_seccomp_ok)
        )
    ):
        found.append(
            f"seccompProfile (pod or containers {_quoted(names)} must set securityContext.seccompProfile.type "
            'to "RuntimeDefault" or "Localhost")'
        )
    if names := offenders(lambda sc, _: "ALL" not in ((sc.get("capabilities") or {}).get("drop") or [])):
        found.append(
            f'unrestricted capabilities (containers {_quoted(names)} must set securityContext.capabilities.drop=["ALL"])'
        )
    if names := offenders(
        lambda sc, _: not set((sc.get("capabilities") or {}).get("add") or []) <= RESTRICTED_CAPABILITIES
    ):
        found.append(f"unrestricted capabilities (containers {_quoted(names)} may add only NET_BIND_SERVICE)")
    return found


def pod_templates(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """``(where, metadata, spec)`` of every pod (template) in a workload object."""
    kind = obj.get("kind")
    name = f"{kind}/{(obj.get('metadata') or {}).get('name')}"
    spec = obj.get("spec") or {}
    if kind == "Pod":
        yield name, obj.get("metadata") or {}, spec
    elif kind in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "ReplicationController"}:
        template = spec.get("template") or {}
        yield name, template.get("metadata") or {}, template.get("spec") or {}
    elif kind == "CronJob":
        template = ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}
        yield name, template.get("metadata") or {}, template.get("spec") or {}
    elif kind in {"RayJob", "RayCluster"}:
        cluster = spec.get("rayClusterSpec") if kind == "RayJob" else spec
        cluster = cluster or {}
        head = (cluster.get("headGroupSpec") or {}).get("template") or {}
        yield f"{name} head", head.get("metadata") or {}, head.get("spec") or {}
        for group in cluster.get("workerGroupSpecs") or []:
            template = group.get("template") or {}
            yield (
                f"{name} workers {group.get('groupName')}",
                template.get("metadata") or {},
                template.get("spec") or {},
            )
        if kind == "RayJob" and (submitter := spec.get("submitterPodTemplate")):
            yield f"{name} submitter", submitter.get("metadata") or {}, submitter.get("spec") or {}


def restricted_violations(obj: dict[str, Any]) -> dict[str, list[str]]:
    """Broken controls per pod template of ``obj`` (empty: every template passes)."""
    return {
        where: problems
        for where, metadata, spec in pod_templates(obj)
        if (problems := violations(spec, metadata))
    }
