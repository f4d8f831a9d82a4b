"""Services in the sandbox, pure parts: which pods back a Service, its Endpoints, its proxy routes,
and the loopback address pools for pod IPs and cluster IPs.

Each pod gets its own loopback address (127.0.0.N) and each Service a ClusterIP from another
loopback range (127.0.1.N): the whole of 127.0.0.0/8 reaches this machine on Linux, so a process
can bind its port on its pod IP and a proxy can listen on the ClusterIP, as in a cluster.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mlops_operator.sandbox.jobs import pod_is_ready
from mlops_operator.sandbox.object_helpers import (
    Obj,
    is_deleting,
    labels_of,
    map_selector_matches,
    name_of,
    namespace_of,
    stable_hash,
    uid_of,
)
from mlops_operator.sandbox.podspec import resolve_port

Backend = tuple[str, int]  # (pod IP, port)


class AddressPool:
    """Addresses from ``first`` to ``last`` (inclusive), handed out lowest first and reused once released."""

    def __init__(self, first: str, last: str) -> None:
        self._first = int(ipaddress.IPv4Address(first))
        self._last = int(ipaddress.IPv4Address(last))
        self._owners: dict[str, str] = {}  # address -> owner key

    def claim(self, owner: str, address: str | None = None) -> str:
        """An address for ``owner``: its current one, the requested one if free and in range, else the lowest free."""
        for held, held_owner in self._owners.items():
            if held_owner == owner:
                return held
        if address and self.contains(address) and address not in self._owners:
            self._owners[address] = owner
            return address
        for number in range(self._first, self._last + 1):
            candidate = str(ipaddress.IPv4Address(number))
            if candidate not in self._owners:
                self._owners[candidate] = owner
                return candidate
        raise RuntimeError(
            f"no free address left in {ipaddress.IPv4Address(self._first)}-{ipaddress.IPv4Address(self._last)}"
        )

    def release(self, owner: str) -> None:
        for held, held_owner in list(self._owners.items()):
            if held_owner == owner:
                del self._owners[held]

    def contains(self, address: str) -> bool:
        try:
            return self._first <= int(ipaddress.IPv4Address(address)) <= self._last
        except ValueError:
            return False

    def owners(self) -> dict[str, str]:
        return dict(self._owners)


def selected_pods(service: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Pods a Service routes to: same namespace, labels match, an IP, not ended and not terminating."""
    selector = service.get("spec", {}).get("selector")
    return [
        pod
        for pod in pods
        if namespace_of(pod) == namespace_of(service)
        and map_selector_matches(selector, labels_of(pod))
        and pod.get("status", {}).get("podIP")
        and pod.get("status", {}).get("phase") not in ("Succeeded", "Failed")
        and not is_deleting(pod)
    ]


def _target_port(pod: Mapping[str, Any], port: Mapping[str, Any]) -> int | None:
    target = port.get("targetPort", port.get("port"))
    return resolve_port(pod, target)


@dataclasses.dataclass(frozen=True)
class Route:
    """One listening socket of the proxy: ClusterIP:port -> ready backends.

    ``groups`` (from an HTTPRoute attached to the Service) replace ``backends``: a connection
    first picks a group by its relative weight, then a backend in it.
    """

    cluster_ip: str
    port: int
    backends: tuple[Backend, ...]
    groups: tuple[tuple[int, tuple[Backend, ...]], ...] = ()


def _is_core_service_ref(ref: Mapping[str, Any]) -> bool:
    return str(ref.get("group") or "") == "" and str(ref.get("kind") or "Service") == "Service"


def attached_route(
    service: Mapping[str, Any], routes: Sequence[Mapping[str, Any]]
) -> Mapping[str, Any] | None:
    """The HTTPRoute (gateway.networking.k8s.io) whose parentRef is this Service, if any (GAMMA)."""
    meta = service.get("metadata", {})
    for route in sorted(routes, key=name_of):
        if route.get("metadata", {}).get("namespace") != meta.get("namespace"):
            continue
        for parent in route.get("spec", {}).get("parentRefs") or []:
            if _is_core_service_ref(parent) and parent.get("name") == meta.get("name"):
                return route
    return None


def route_groups(
    route: Mapping[str, Any],
    services: Mapping[tuple[str, str], Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
) -> tuple[tuple[int, tuple[Backend, ...]], ...]:
    """The first rule's backendRefs as (weight, ready endpoints of that Service's port) groups.

    The sandbox honours weights and Service backends of the first rule; matches, filters (a
    RequestMirror among them) and Gateways are not implemented: no Gateway runs here.
    """
    namespace = route.get("metadata", {}).get("namespace", "default")
    rules = route.get("spec", {}).get("rules") or [{}]
    groups = []
    for ref in rules[0].get("backendRefs") or []:
        if not _is_core_service_ref(ref):
            continue
        backend = services.get((namespace, str(ref.get("name"))))
        weight = int(ref.get("weight", 1))
        if backend is None or weight <= 0:
            continue
        for candidate in service_routes(backend, pods):
            port = next(
                (
                    p
                    for p in backend.get("spec", {}).get("ports") or []
                    if int(p["port"]) == int(ref.get("port", p["port"]))
                ),
                None,
            )
            if port is not None and candidate.port == int(port["port"]) and candidate.backends:
                groups.append((weight, candidate.backends))
    return tuple(groups)


def service_routes(service: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> list[Route]:
    cluster_ip = service.get("spec", {}).get("clusterIP")
    if not cluster_ip or cluster_ip == "None":
        return []
    ready = [pod for pod in selected_pods(service, pods) if pod_is_ready(pod)]
    routes = []
    for port in service.get("spec", {}).get("ports") or []:
        if str(port.get("protocol", "TCP")) != "TCP":
            continue  # the proxy speaks TCP only
        backends = []
        for pod in sorted(ready, key=name_of):
            target = _target_port(pod, port)
            if target is not None:
                backends.append((str(pod["status"]["podIP"]), target))
        routes.append(Route(str(cluster_ip), int(port["port"]), tuple(backends)))
    return routes


def _resolved_ports(service: Mapping[str, Any], pod: Mapping[str, Any]) -> list[tuple[str, int, str]]:
    """The Service's ports as this pod serves them: (name, target port, protocol)."""
    ports = []
    for port in service.get("spec", {}).get("ports") or []:
        target = _target_port(pod, port)
        if target is not None:
            ports.append((str(port.get("name", "")), target, str(port.get("protocol", "TCP"))))
    return ports


def build_endpoints(service: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> Obj:
    """The ``v1/Endpoints`` object of a Service: subsets grouped by the pods' resolved ports."""
    subsets: dict[tuple[tuple[str, int, str], ...], Obj] = {}
    for pod in sorted(selected_pods(service, pods), key=name_of):
        ports = _resolved_ports(service, pod)
        key = tuple(ports)
        subset = subsets.setdefault(
            key,
            {
                "ports": [
                    {"port": p, "protocol": proto, **({"name": n} if n else {})} for n, p, proto in ports
                ]
            },
        )
        address: Obj = {
            "ip": pod["status"]["podIP"],
            "nodeName": pod.get("spec", {}).get("nodeName") or "sandbox",
            "targetRef": {"kind": "Pod", "name": name_of(pod), "namespace": namespace_of(pod)},
        }
        if uid_of(pod):
            address["targetRef"]["uid"] = uid_of(pod)
        subset.setdefault("addresses" if pod_is_ready(pod) else "notReadyAddresses", []).append(address)
    endpoints: Obj = {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {
            "name": name_of(service),
            "namespace": namespace_of(service),
            "labels": labels_of(service),
        },
        "subsets": [subset for subset in subsets.values() if subset["ports"]],
    }
    return endpoints


def build_endpoint_slices(service: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> list[Obj]:
    """``discovery.k8s.io/v1`` EndpointSlices of a Service: one per distinct set of resolved ports.

    Named deterministically (``<service>-<hash of the ports>``) so each pass finds its own slices.
    """
    groups: dict[tuple[tuple[str, int, str], ...], list[Obj]] = {}
    for pod in sorted(selected_pods(service, pods), key=name_of):
        ports = _resolved_ports(service, pod)
        ready = pod_is_ready(pod)
        endpoint: Obj = {
            "addresses": [pod["status"]["podIP"]],
            "conditions": {"ready": ready, "serving": ready, "terminating": False},
            "nodeName": pod.get("spec", {}).get("nodeName") or "sandbox",
            "targetRef": {"kind": "Pod", "name": name_of(pod), "namespace": namespace_of(pod)},
        }
        if uid_of(pod):
            endpoint["targetRef"]["uid"] = uid_of(pod)
        groups.setdefault(tuple(ports), []).append(endpoint)
    if not groups:
        groups[()] = []  # a Service without endpoints still has a (empty) slice, as on a cluster
    slices = []
    for ports_key, endpoints in groups.items():
        owner: Obj = {"apiVersion": "v1", "kind": "Service", "name": name_of(service), "controller": True,
                      "blockOwnerDeletion": True}  # fmt: skip
        if uid_of(service):
            owner["uid"] = uid_of(service)
        slices.append({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{name_of(service)}-{stable_hash(list(ports_key), 5)}",
                "namespace": namespace_of(service),
                "labels": {
                    "kubernetes.io/service-name": name_of(service),
                    "endpointslice.kubernetes.io/managed-by": "sandbox-runtime",
                },
                "ownerReferences": [owner],
            },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"port": p, "protocol": proto, **({"name": n} if n else {})} for n, p, proto in ports_key],
        })  # fmt: skip
    return slices
