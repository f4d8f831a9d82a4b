"""Pure reading of a pod spec: the container's environment, ``$(VAR)`` expansion, ports, quantities.

These follow the Kubernetes rules closely because users debug them: env from ``envFrom`` first,
then ``env`` in order (a value may reference earlier variables), missing non-optional ConfigMaps or
Secrets block the container with ``CreateContainerConfigError``, and ``$(VAR)`` in command/args is
expanded from the container's environment (``$$`` escapes, unknown references stay as written).
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Mapping
from typing import Any

from mlops_operator.sandbox.object_helpers import Obj, labels_of, name_of, namespace_of, uid_of

Lookup = Mapping[tuple[str, str], Obj]  # (namespace, name) -> ConfigMap or Secret


class ContainerConfigError(Exception):
    """The container cannot be configured (missing ConfigMap/Secret/key): ``CreateContainerConfigError``."""


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion of a command/arg/env value."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return _VAR_REF.sub(replace, value)


def _field_ref(pod: Mapping[str, Any], path: str) -> str:
    metadata = pod.get("metadata", {})
    simple = {
        "metadata.name": name_of(pod),
        "metadata.namespace": namespace_of(pod),
        "metadata.uid": uid_of(pod),
        "spec.nodeName": str(pod.get("spec", {}).get("nodeName", "")),
        "spec.serviceAccountName": str(pod.get("spec", {}).get("serviceAccountName", "default")),
        "status.hostIP": str(pod.get("status", {}).get("hostIP", "")),
        "status.podIP": str(pod.get("status", {}).get("podIP", "")),
        "status.podIPs": ",".join(ip.get("ip", "") for ip in pod.get("status", {}).get("podIPs") or []),
    }
    if path in simple:
        return simple[path]
    match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if match:
        source = labels_of(pod) if match.group(1) == "labels" else dict(metadata.get("annotations") or {})
        return str(source.get(match.group(2), ""))
    raise ContainerConfigError(f'unsupported fieldRef fieldPath "{path}"')


def _resource_ref(container: Mapping[str, Any], ref: Mapping[str, Any]) -> str:
    section, _, resource = str(ref.get("resource", "")).partition(".")
    raw = (container.get("resources", {}).get(section) or {}).get(resource)
    if raw is None:
        return "0"
    divisor = parse_quantity(str(ref.get("divisor", "1")))
    # Kubernetes rounds up so that a 500m CPU limit reads as 1 with the default divisor.
    return str(math.ceil(parse_quantity(str(raw)) / divisor))


def _source(kind: str, lookup: Lookup, namespace: str, name: str, optional: bool) -> dict[str, str] | None:
    obj = lookup.get((namespace, name))
    if obj is None:
        if optional:
            return None
        raise ContainerConfigError(f'{kind.lower()} "{name}" not found')
    if kind == "Secret":
        decoded = {
            key: base64.b64decode(value).decode(errors="replace")
            for key, value in (obj.get("data") or {}).items()
        }
        # stringData is write-only on a real server; the emulator may keep it verbatim.
        decoded.update({key: str(value) for key, value in (obj.get("stringData") or {}).items()})
        return decoded
    return {key: str(value) for key, value in (obj.get("data") or {}).items()}


def _key_ref(kind: str, lookup: Lookup, namespace: str, ref: Mapping[str, Any]) -> str | None:
    optional = bool(ref.get("optional", False))
    data = _source(kind, lookup, namespace, str(ref.get("name", "")), optional)
    key = str(ref.get("key", ""))
    if data is None or key not in data:
        if optional:
            return None
        raise ContainerConfigError(f"couldn't find key {key} in {kind} {namespace}/{ref.get('name', '')}")
    return data[key]


def container_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    *,
    configmaps: Lookup,
    secrets: Lookup,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a container: ``base`` (image env, service links), then envFrom, then env."""
    namespace = namespace_of(pod)
    env: dict[str, str] = dict(base or {})
    for source in container.get("envFrom") or []:
        prefix = str(source.get("prefix", ""))
        if "configMapRef" in source:
            ref = source["configMapRef"]
            data = _source("ConfigMap", configmaps, namespace, ref.get("name", ""), bool(ref.get("optional")))
        elif "secretRef" in source:
            ref = source["secretRef"]
            data = _source("Secret", secrets, namespace, ref.get("name", ""), bool(ref.get("optional")))
        else:
            data = None
        env.update({f"{prefix}{key}": value for key, value in (data or {}).items()})
    for var in container.get("env") or []:
        name = str(var.get("name", ""))
        if "value" in var or "valueFrom" not in var:
            env[name] = expand(str(var.get("value", "")), env)
            continue
        value_from = var["valueFrom"]
        value: str | None
        if "fieldRef" in value_from:
            value = _field_ref(pod, str(value_from["fieldRef"].get("fieldPath", "")))
        elif "resourceFieldRef" in value_from:
            value = _resource_ref(container, value_from["resourceFieldRef"])
        elif "configMapKeyRef" in value_from:
            value = _key_ref("ConfigMap", configmaps, namespace, value_from["configMapKeyRef"])
        elif "secretKeyRef" in value_from:
            value = _key_ref("Secret", secrets, namespace, value_from["secretKeyRef"])
        else:
            raise ContainerConfigError(f"env {name}: unsupported valueFrom {sorted(value_from)}")
        if value is not None:
            env[name] = value
    return env


def service_link_env(services: list[Obj]) -> dict[str, str]:
    """``{SVC}_SERVICE_HOST`` / ``_SERVICE_PORT`` variables of the namespace's Services (``enableServiceLinks``).

    The sandbox has no cluster DNS, so these are how a pod finds another Service.
    """
    env: dict[str, str] = {}
    for service in services:
        cluster_ip = service.get("spec", {}).get("clusterIP")
        ports = service.get("spec", {}).get("ports") or []
        if not cluster_ip or cluster_ip == "None" or not ports:
            continue
        prefix = name_of(service).upper().replace("-", "_")
        env[f"{prefix}_SERVICE_HOST"] = str(cluster_ip)
        env[f"{prefix}_SERVICE_PORT"] = str(ports[0].get("port", ""))
        for port in ports:
            if port.get("name"):
                env[f"{prefix}_SERVICE_PORT_{str(port['name']).upper().replace('-', '_')}"] = str(
                    port.get("port")
                )
    return env


def resolve_port(
    pod: Mapping[str, Any], port: int | str | None, container_name: str | None = None
) -> int | None:
    """A numeric port, or a named containerPort of the pod (the first container that declares it)."""
    if port is None:
        return None
    if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
        return int(port)
    for container in pod.get("spec", {}).get("containers") or []:
        if container_name and container.get("name") != container_name:
            continue
        for declared in container.get("ports") or []:
            if declared.get("name") == port:
                return int(declared["containerPort"])
    return None


_SUFFIXES = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
}  # fmt: skip


def parse_quantity(value: str | int | float) -> float:
    """A Kubernetes resource quantity (``512Mi``, ``1.5G``, ``500m``, ``1e3``) as a number."""
    if isinstance(value, int | float):
        return float(value)
    match = re.fullmatch(r"\s*([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", value)
    if not match or match.group(2) not in _SUFFIXES:
        raise ValueError(f"invalid quantity {value!r}")
    return float(match.group(1)) * _SUFFIXES[match.group(2)]


def memory_limit_bytes(container: Mapping[str, Any]) -> int | None:
    raw = (container.get("resources", {}).get("limits") or {}).get("memory")
    if raw is None:
        return None
    try:
        return int(parse_quantity(raw))
    except ValueError:
        return None
