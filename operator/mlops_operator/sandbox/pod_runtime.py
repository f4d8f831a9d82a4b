"""The sandbox runtime: kubelet, kube-proxy and the Job/Deployment/Endpoints controllers in one process.

It is a client of the API server like any other (list+watch over HTTP), so it runs the same
against the emulated API server, in a thread (tests) or as a process (``sandbox up``)::

    python -m mlops_operator.sandbox.pod_runtime --server http://127.0.0.1:PORT --dir DIR

Every controller is level-based: each pass recomputes the wanted state from the caches with the
pure planners (:mod:`jobs`, :mod:`deployments`, :mod:`services`) and applies the difference.

Where the sandbox differs from a cluster, on purpose (see also :mod:`kubelet`):

- one Node (``sandbox``); no scheduler, no ReplicaSets (a Deployment owns its pods directly, the
  revision is the ``pod-template-hash`` label), no HPA metrics, no NetworkPolicy;
- no network namespaces: a pod is a process that should bind its own ``$(POD_IP)``; one that
  binds ``0.0.0.0`` takes the port for every pod (a second replica then crash-loops, saying so);
- no cluster DNS: Services are reached on their ClusterIP (127.0.1.N), which pods also get in
  ``<SVC>_SERVICE_HOST``/``_PORT`` variables (``enableServiceLinks``); probes come from 127.0.0.1;
- timings are short (crash-loop and Job back-offs start at about a second, grace periods are
  capped at a few seconds) and configurable through :class:`RuntimeConfig`;
- a crash-looping container's waiting message also carries its last log line, to save a step.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import logging
import os
import platform
import secrets
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from mlops_operator.sandbox import network
from mlops_operator.sandbox.deployments import HASH_LABEL, plan_deployment
from mlops_operator.sandbox.jobs import job_pod_labels, plan_job
from mlops_operator.sandbox.kubelet import Kubelet, KubeletConfig
from mlops_operator.sandbox.object_helpers import (
    Obj,
    controller_ref,
    format_time,
    is_controlled_by,
    key_of,
    name_of,
    namespace_of,
    owner_reference,
    random_suffix,
    uid_of,
)
from mlops_operator.sandbox.proxy import ServiceProxy
from mlops_operator.sandbox.runtime_client import (
    CONFIGMAPS,
    DEPLOYMENTS,
    ENDPOINT_SLICES,
    ENDPOINTS,
    EVENTS,
    HTTP_ROUTES,
    JOBS,
    NODES,
    PODS,
    SECRETS,
    SERVICES,
    ApiError,
    Informer,
    KubeClient,
    Resource,
    client_session,
)
from mlops_operator.sandbox.services import (
    AddressPool,
    Route,
    attached_route,
    build_endpoint_slices,
    build_endpoints,
    route_groups,
    service_routes,
)

logger = logging.getLogger(__name__)

NODE_NAME = "sandbox"
CLUSTER_IP_RANGE = ("127.0.1.1", "127.0.1.254")


@dataclasses.dataclass
class RuntimeConfig(KubeletConfig):
    service_range: tuple[str, str] = CLUSTER_IP_RANGE  # set from the claimed network
    job_backoff_base: float = 1.0  # Job controller: 10s on a cluster
    job_backoff_cap: float = 30.0  # Job controller: 6 minutes on a cluster
    resync_seconds: float = 2.0  # a level-based pass at least this often (deadlines, TTLs, progress)


def _now() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)


def _status_patch(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> Obj:
    """A merge patch turning status ``old`` into ``new``: keys that disappear are set to null."""
    patch: Obj = dict(new)
    for key in old or {}:
        patch.setdefault(key, None)
    return patch


def pod_from_template(owner: Obj, template: Mapping[str, Any], name: str, labels: Mapping[str, str]) -> Obj:
    metadata = template.get("metadata") or {}
    spec = dict(template.get("spec") or {})
    spec.setdefault("restartPolicy", "Always")
    spec["nodeName"] = NODE_NAME  # there is one node, so the scheduler's choice is known
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace_of(owner),
            "labels": {**(metadata.get("labels") or {}), **labels},
            "annotations": dict(metadata.get("annotations") or {}),
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": spec,
    }


def node_status(now: datetime.datetime) -> Obj:
    memory_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        memory_kib = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
    capacity = {"cpu": str(os.cpu_count() or 1), "memory": f"{memory_kib}Ki", "pods": "253"}
    ready = {
        "type": "Ready",
        "status": "True",
        "reason": "KubeletReady",
        "message": "the sandbox runtime is running",
        "lastHeartbeatTime": format_time(now),
        "lastTransitionTime": format_time(now),
    }
    info = {
        "architecture": platform.machine(),
        "operatingSystem": "linux",
        "osImage": platform.platform(),
        "kernelVersion": platform.release(),
        "containerRuntimeVersion": "sandbox://processes",
        "kubeletVersion": "sandbox",
        "kubeProxyVersion": "sandbox",
    }
    return {
        "capacity": capacity,
        "allocatable": capacity,
        "addresses": [
            {"type": "InternalIP", "address": "127.0.0.1"},
            {"type": "Hostname", "address": NODE_NAME},
        ],
        "conditions": [ready],
        "nodeInfo": info,
    }


class Runtime:
    def __init__(
        self, server: str, config: RuntimeConfig, token: str | None = None, ca: bytes | None = None
    ) -> None:
        self.server = server
        self.token = token
        self.ca = ca
        self.config = config
        self.proxy = ServiceProxy()
        self.cluster_ips = AddressPool(*config.service_range)
        self.ready = asyncio.Event()
        self._wake = asyncio.Event()
        self._requeue: list[float] = []
        self._endpoints_written: dict[tuple[str, str], Obj] = {}
        self._slices_written: dict[tuple[str, str], Obj] = {}
        self._orphans_seen: dict[tuple[str, str], float] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self.informers: dict[str, Informer] = {}
        self.client: KubeClient | None = None
        self.kubelet: Kubelet | None = None

    def wake(self) -> None:
        self._wake.set()

    def cache(self, resource: Resource) -> dict[tuple[str, str], Obj]:
        return self.informers[resource.plural].cache

    async def run(self) -> None:
        async with client_session(self.ca) as session:
            self.client = client = KubeClient(self.server, session, self.token)
            for resource in (PODS, JOBS, DEPLOYMENTS, SERVICES, CONFIGMAPS, SECRETS, HTTP_ROUTES):
                self.informers[resource.plural] = Informer(client, resource, self.wake)
            tasks = [asyncio.create_task(informer.run()) for informer in self.informers.values()]
            self.kubelet = Kubelet(
                client,
                self.config,
                pods=lambda: self.cache(PODS),
                configmaps=lambda: self.cache(CONFIGMAPS),
                secrets=lambda: self.cache(SECRETS),
                services=lambda: self.cache(SERVICES),
                record_event=self.record_event,
            )
            try:
                await asyncio.gather(*(informer.synced.wait() for informer in self.informers.values()))
                self._adopt_cluster_ips()
                try:
                    await self._register_node()
                except (ApiError, aiohttp.ClientError) as exc:
                    logger.warning("could not register the sandbox Node: %s", exc)
                await self._loop()
            finally:
                for task in tasks:
                    task.cancel()
                await self.kubelet.shutdown()
                await self.proxy.close()
                if self.kubelet.probe_session is not None:
                    await self.kubelet.probe_session.close()
                for task in list(self._background):
                    task.cancel()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        first = True
        while True:
            now = loop.time()
            self._requeue = [moment for moment in self._requeue if moment > now]
            timeout = min([self.config.resync_seconds, *(moment - now for moment in self._requeue)])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(timeout, 0.01))
            self._wake.clear()
            await self.reconcile()
            if first:
                self.ready.set()
                first = False
            await asyncio.sleep(0.02)  # coalesce bursts of watch events into one pass

    def _requeue_after(self, seconds: float | None) -> None:
        if seconds is not None:
            self._requeue.append(asyncio.get_running_loop().time() + max(seconds, 0.05))

    async def reconcile(self) -> None:
        for step in (self._sync_services, self._sync_jobs, self._sync_deployments, self._sync_pods,
                     self._sync_endpoints, self._collect_orphans):  # fmt: skip
            try:
                await step()
            except (ApiError, aiohttp.ClientError, TimeoutError) as exc:
                logger.warning("%s: %s", step.__name__.lstrip("_"), exc)
                self._requeue_after(0.5)
            except Exception:
                logger.exception("%s failed", step.__name__.lstrip("_"))
                self._requeue_after(1.0)

    # -- events ---------------------------------------------------------------------------------

    def record_event(self, obj: Obj, reason: str, message: str, type_: str = "Normal") -> None:
        """Post a v1 Event about ``obj`` in the background (best effort, as on a cluster)."""
        if self.client is None:
            return
        now = format_time(_now())
        event: Obj = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{name_of(obj)}.{secrets.token_hex(8)}", "namespace": namespace_of(obj)},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion", "v1"),
                "kind": obj.get("kind", "Pod"),
                "name": name_of(obj),
                "namespace": namespace_of(obj),
                **({"uid": uid_of(obj)} if uid_of(obj) else {}),
            },
            "reason": reason,
            "message": message,
            "type": type_,
            "count": 1,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "source": {"component": "sandbox-runtime", "host": NODE_NAME},
            "reportingComponent": "sandbox-runtime",
            "reportingInstance": NODE_NAME,
        }
        client = self.client

        async def post() -> None:
            with contextlib.suppress(ApiError, aiohttp.ClientError, TimeoutError):
                await client.create(EVENTS.collection(namespace_of(obj)), event)

        task = asyncio.create_task(post())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- controllers ----------------------------------------------------------------------------

    def _adopt_cluster_ips(self) -> None:
        for service in self.cache(SERVICES).values():
            address = service.get("spec", {}).get("clusterIP")
            if address and self.cluster_ips.contains(address):
                self.cluster_ips.claim("/".join(key_of(service)), address)

    async def _sync_services(self) -> None:
        assert self.client is not None
        services = self.cache(SERVICES)
        for owner in list(self.cluster_ips.owners().values()):
            if tuple(owner.split("/", 1)) not in services:
                self.cluster_ips.release(owner)
        for key, service in list(services.items()):
            spec = service.get("spec", {})
            kind = spec.get("type", "ClusterIP")
            current = spec.get("clusterIP")
            if kind == "ExternalName" or current == "None":
                continue
            # An address outside the loopback range could not be listened on here: replace it.
            address = self.cluster_ips.claim("/".join(key), current if current else None)
            patch: Obj = {}
            if address != current:
                patch["spec"] = {"clusterIP": address, "clusterIPs": [address]}
            if kind == "LoadBalancer":
                ingress = [{"ip": address}]
                if service.get("status", {}).get("loadBalancer", {}).get("ingress") != ingress:
                    updated = await self.client.merge_patch(
                        SERVICES.item(*key, "status"), {"status": {"loadBalancer": {"ingress": ingress}}}
                    )
                    services[key] = updated
            if patch:
                services[key] = await self.client.merge_patch(SERVICES.item(*key), patch)

    def _owned_pods(self, owner: Obj) -> list[Obj]:
        return [pod for pod in self.cache(PODS).values() if is_controlled_by(pod, owner)]

    async def _create_pod(self, pod: Obj) -> None:
        assert self.client is not None
        created = await self.client.create(PODS.collection(namespace_of(pod)), pod)
        # Remember it now: the next pass must not create it again before the watch reports it.
        self.cache(PODS)[key_of(created or pod)] = created or pod

    async def _delete_pod(self, namespace: str, name: str) -> None:
        assert self.client is not None
        await self.client.delete(PODS.item(namespace, name))
        self.cache(PODS).pop((namespace, name), None)

    async def _sync_jobs(self) -> None:
        assert self.client is not None
        jobs = self.cache(JOBS)
        for key, job in list(jobs.items()):
            job = {"apiVersion": "batch/v1", "kind": "Job", **job}
            plan = plan_job(
                job, self._owned_pods(job), _now(),
                backoff_base=self.config.job_backoff_base, backoff_cap=self.config.job_backoff_cap,
            )  # fmt: skip
            template = job.get("spec", {}).get("template", {})
            for _ in range(plan.create):
                pod = pod_from_template(
                    job, template, f"{name_of(job)}-{random_suffix()}", job_pod_labels(job)
                )
                await self._create_pod(pod)
                self.record_event(job, "SuccessfulCreate", f"Created pod: {name_of(pod)}")
            for name in plan.delete_pods:
                await self._delete_pod(key[0], name)
                self.record_event(job, "SuccessfulDelete", f"Deleted pod: {name}")
            if plan.status != (job.get("status") or {}):
                updated = await self.client.merge_patch(
                    JOBS.item(*key, "status"), {"status": _status_patch(job.get("status"), plan.status)}
                )
                jobs[key] = updated if updated.get("metadata") else {**job, "status": plan.status}
                self._job_events(job, plan.status)
            if plan.delete_job:
                await self.client.delete(JOBS.item(*key), propagation="Background")
                jobs.pop(key, None)
            self._requeue_after(plan.requeue_after)

    def _job_events(self, job: Obj, status: Obj) -> None:
        old = {c.get("type"): c.get("status") for c in job.get("status", {}).get("conditions") or []}
        for condition in status.get("conditions") or []:
            if condition.get("type") in ("Complete", "Failed") and old.get(condition["type"]) != "True":
                type_ = "Normal" if condition["type"] == "Complete" else "Warning"
                self.record_event(
                    job, condition.get("reason", condition["type"]), condition.get("message", ""), type_
                )

    async def _sync_deployments(self) -> None:
        assert self.client is not None
        deployments = self.cache(DEPLOYMENTS)
        for key, deployment in list(deployments.items()):
            deployment = {"apiVersion": "apps/v1", "kind": "Deployment", **deployment}
            plan = plan_deployment(deployment, self._owned_pods(deployment), _now())
            template = deployment.get("spec", {}).get("template", {})
            for _ in range(plan.create):
                name = f"{name_of(deployment)}-{plan.template_hash}-{random_suffix()}"
                await self._create_pod(
                    pod_from_template(deployment, template, name, {HASH_LABEL: plan.template_hash})
                )
            if plan.create:
                self.record_event(
                    deployment,
                    "ScalingReplicaSet",
                    f"Created {plan.create} pod(s) of revision {plan.template_hash}",
                )
            for name in plan.delete_pods:
                await self._delete_pod(key[0], name)
            if plan.status != (deployment.get("status") or {}):
                updated = await self.client.merge_patch(
                    DEPLOYMENTS.item(*key, "status"),
                    {"status": _status_patch(deployment.get("status"), plan.status)},
                )
                deployments[key] = (
                    updated if updated.get("metadata") else {**deployment, "status": plan.status}
                )
            self._requeue_after(plan.requeue_after)

    async def _sync_pods(self) -> None:
        assert self.kubelet is not None
        self.kubelet.sync()

    async def _sync_endpoints(self) -> None:
        assert self.client is not None
        pods = list(self.cache(PODS).values())
        routes: list[Route] = []
        # A snapshot: the loop awaits its writes, and the watch changes the cache meanwhile.
        services = dict(self.cache(SERVICES))
        http_routes = list(self.cache(HTTP_ROUTES).values())
        for key, service in services.items():
            attached = attached_route(service, http_routes)
            groups = route_groups(attached, services, pods) if attached is not None else ()
            routes.extend(
                dataclasses.replace(route, groups=groups) if groups else route
                for route in service_routes(service, pods)
            )
            if not service.get("spec", {}).get("selector"):
                continue  # endpoints of a selector-less Service are managed by its user
            endpoints = build_endpoints(service, pods)
            if self._endpoints_written.get(key) == endpoints:
                continue
            try:
                await self.client.merge_patch(ENDPOINTS.item(*key), {"subsets": endpoints["subsets"]})
            except ApiError as exc:
                if exc.status != 404:
                    raise
                await self.client.create(ENDPOINTS.collection(key[0]), endpoints)
            self._endpoints_written[key] = endpoints
        for key in list(self._endpoints_written):
            if key not in services:
                del self._endpoints_written[key]
                await self.client.delete(ENDPOINTS.item(*key))
        await self._sync_endpoint_slices(services, pods)
        await self.proxy.update(routes)

    async def _sync_endpoint_slices(self, services: Mapping[tuple[str, str], Obj], pods: list[Obj]) -> None:
        assert self.client is not None
        wanted: dict[tuple[str, str], Obj] = {}
        for service in services.values():
            if service.get("spec", {}).get("selector"):
                for endpoint_slice in build_endpoint_slices(service, pods):
                    wanted[key_of(endpoint_slice)] = endpoint_slice
        for key, endpoint_slice in wanted.items():
            if self._slices_written.get(key) == endpoint_slice:
                continue
            body = {"endpoints": endpoint_slice["endpoints"], "ports": endpoint_slice["ports"]}
            try:
                await self.client.merge_patch(ENDPOINT_SLICES.item(*key), body)
            except ApiError as exc:
                if exc.status != 404:
                    raise
                await self.client.create(ENDPOINT_SLICES.collection(key[0]), endpoint_slice)
            self._slices_written[key] = endpoint_slice
        for key in list(self._slices_written):
            if key not in wanted:
                del self._slices_written[key]
                await self.client.delete(ENDPOINT_SLICES.item(*key))

    async def _register_node(self) -> None:
        """The one Node of the sandbox, so ``kubectl get nodes`` and pods' ``nodeName`` make sense."""
        assert self.client is not None
        node: Obj = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": NODE_NAME,
                "labels": {"kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux"},
            },
        }
        try:
            await self.client.create(NODES.collection(), node)
        except ApiError as exc:
            if exc.status != 409:
                raise
        await self.client.merge_patch(NODES.item("", NODE_NAME, "status"), {"status": node_status(_now())})

    async def _collect_orphans(self) -> None:
        """Delete pods whose controlling Job/Deployment is gone, should the API server not GC them."""
        owners = {"Job": self.cache(JOBS), "Deployment": self.cache(DEPLOYMENTS)}
        now = asyncio.get_running_loop().time()
        seen: dict[tuple[str, str], float] = {}
        for key, pod in list(self.cache(PODS).items()):
            ref = controller_ref(pod)
            if ref is None or ref.get("kind") not in owners:
                continue
            owner = owners[str(ref["kind"])].get((key[0], str(ref.get("name"))))
            if owner is not None and (not ref.get("uid") or not uid_of(owner) or ref["uid"] == uid_of(owner)):
                continue
            # Seen orphaned twice, a second apart: not a pod whose owner the cache has yet to show.
            first = self._orphans_seen.get(key, now)
            seen[key] = first
            if now - first >= 1.0:
                await self._delete_pod(*key)
            else:
                self._requeue_after(1.0)
        self._orphans_seen = seen


def on_network(config: RuntimeConfig, claimed: network.Network) -> RuntimeConfig:
    """``config`` with the pod and Service address ranges of the claimed network."""
    return dataclasses.replace(config, pod_range=claimed.pod_range, service_range=claimed.service_range)


class RuntimeThread:
    """The runtime on its own event loop in a daemon thread (for tests): ``start()`` returns once synced."""

    def __init__(
        self, server: str, config: RuntimeConfig, token: str | None = None, ca: bytes | None = None
    ) -> None:
        self.runtime: Runtime | None = None
        self._server = server
        self._token = token
        self._ca = ca
        self.network = network.claim(str(config.state_dir))
        self._config = on_network(config, self.network)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="sandbox-runtime", daemon=True)
        self._started = threading.Event()
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._amain())
        except BaseException as exc:
            self._error = exc
            self._started.set()

    async def _amain(self) -> None:
        self.runtime = Runtime(self._server, self._config, self._token, self._ca)
        self._task = asyncio.create_task(self.runtime.run())
        waiter = asyncio.create_task(self.runtime.ready.wait())
        await asyncio.wait([self._task, waiter], return_when=asyncio.FIRST_COMPLETED)
        self._started.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def start(self, timeout: float = 30) -> RuntimeThread:
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError("the sandbox runtime did not sync with the API server in time")
        if self._error is not None:
            raise RuntimeError(f"the sandbox runtime failed: {self._error!r}") from self._error
        return self

    def stop(self, timeout: float = 30) -> None:
        self.network.release()
        if self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(timeout)

    def call(self, coro: Any, timeout: float = 10) -> Any:
        """Run a coroutine on the runtime's loop (tests use it to peek at the proxy)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mlops_operator.sandbox.pod_runtime", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--server", required=True, help="URL of the API server")
    parser.add_argument("--dir", required=True, type=Path, help="sandbox state directory (logs, pods, pids)")
    parser.add_argument("--ready-file", type=Path, help="file written once the runtime has synced")
    parser.add_argument(
        "--token-file",
        type=Path,
        default=None,
        help="file holding the bearer token to call the API server with",
    )
    parser.add_argument("--ca-file", type=Path, default=None, help="the API server's CA certificate (PEM)")
    parser.add_argument(
        "--restart-backoff", type=float, default=1.0, help="first crash-loop back-off, seconds"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )  # fmt: skip
    try:
        claimed = network.claim(str(args.dir))
    except network.NoFreeNetwork as exc:
        print(f"sandbox runtime: {exc}", file=sys.stderr)
        return 1
    config = on_network(RuntimeConfig(state_dir=args.dir, restart_backoff_base=args.restart_backoff), claimed)

    async def amain() -> None:
        token = args.token_file.read_text().strip() if args.token_file else None
        ca = args.ca_file.read_bytes() if args.ca_file else None
        runtime = Runtime(args.server, config, token, ca)
        task = asyncio.create_task(runtime.run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        ready = asyncio.create_task(runtime.ready.wait())
        await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
        if runtime.ready.is_set() and args.ready_file:
            staged = args.ready_file.with_suffix(".tmp")  # atomic: the manager reads it once it exists
            staged.write_text(claimed.describe() + "\n")
            staged.replace(args.ready_file)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(amain())
    return 0


if __name__ == "__main__":
    sys.exit(main())
