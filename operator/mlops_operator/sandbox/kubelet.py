"""The sandbox's kubelet: runs each pod's containers as local processes and reports their status.

One :class:`PodWorker` per pod owns the pod's loopback IP, its processes, probes and status
writes. What a container is allowed to be follows :mod:`images`; what its status says follows
:mod:`podstatus`. Approximations of a real node, all deliberate:

- no filesystem isolation: ``workingDir`` is used if it exists on this machine, else a directory
  of that name under the pod's directory; an ``emptyDir`` volume is a per-pod directory, and only
  a mount at ``/tmp`` is visible to the process (as ``TMPDIR``), since a process cannot mount;
- ``limits.memory`` becomes ``RLIMIT_DATA`` (heap and private writable mappings), not a cgroup:
  ``RLIMIT_AS`` would count the address space numpy/OpenBLAS threads reserve but never touch and
  fail imports at limits that fit in a cluster. A process that dies of ``MemoryError`` while it
  has a limit reports ``OOMKilled``;
- the termination message file is a per-pod file, announced in ``MLOPS_TERMINATION_MESSAGE_PATH``
  and substituted for the spec's path in command and args.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import errno
import logging
import os
import resource
import shutil
import signal
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from mlops_operator.sandbox import images, podstatus
from mlops_operator.sandbox.object_helpers import Obj, format_time, key_of, name_of, namespace_of
from mlops_operator.sandbox.podspec import (
    ContainerConfigError,
    container_env,
    expand,
    memory_limit_bytes,
    resolve_port,
    service_link_env,
)
from mlops_operator.sandbox.processes import write_pidfile
from mlops_operator.sandbox.runtime_client import PODS, ApiError, KubeClient
from mlops_operator.sandbox.services import AddressPool

logger = logging.getLogger(__name__)

DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
MAX_TERMINATION_MESSAGE = 4096  # bytes, as the kubelet truncates
FALLBACK_LOG_LINES, FALLBACK_LOG_BYTES = 80, 2048  # what FallbackToLogsOnError keeps, as the kubelet


@dataclasses.dataclass
class KubeletConfig:
    """Timings of the sandbox kubelet: the real ones are minutes; a sandbox wants seconds."""

    state_dir: Path
    restart_backoff_base: float = 1.0  # kubelet: 10s
    restart_backoff_cap: float = 30.0  # kubelet: 300s
    backoff_reset_after: float = (
        60.0  # a container that ran this long starts its backoff afresh (kubelet: 10min)
    )
    image_pull_backoff: float = 2.0  # ErrImagePull turns into ImagePullBackOff after this
    max_grace_seconds: float = 5.0  # caps terminationGracePeriodSeconds (default 30 on a cluster)
    pod_range: tuple[str, str] = ("127.0.0.2", "127.0.0.254")  # set from the claimed network

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def pods_dir(self) -> Path:
        return self.state_dir / "pods"

    @property
    def pids_dir(self) -> Path:
        return self.state_dir / "run" / "pods"


def log_path(logs_dir: Path, namespace: str, pod: str, container: str, previous: bool = False) -> Path:
    return logs_dir / f"{namespace}_{pod}_{container}{'.previous' if previous else ''}.log"


def _now() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)


def _tail(path: Path, lines: int, limit: int) -> str:
    try:
        data = path.read_bytes()[-64 * 1024 :]
    except OSError:
        return ""
    text = "\n".join(data.decode(errors="replace").splitlines()[-lines:])
    return text.encode()[-limit:].decode(errors="ignore")


class Kubelet:
    """Starts a worker for every pod it sees, stops the worker of every pod that goes away."""

    def __init__(
        self,
        client: KubeClient,
        config: KubeletConfig,
        *,
        pods: Callable[[], Mapping[tuple[str, str], Obj]],
        configmaps: Callable[[], Mapping[tuple[str, str], Obj]],
        secrets: Callable[[], Mapping[tuple[str, str], Obj]],
        services: Callable[[], Mapping[tuple[str, str], Obj]],
        record_event: Callable[[Obj, str, str, str], None],
    ) -> None:
        self.client = client
        self.config = config
        self.pods = pods
        self.configmaps = configmaps
        self.secrets = secrets
        self.services = services
        self.record_event = record_event
        self.pool = AddressPool(*config.pod_range)
        self.workers: dict[tuple[str, str], PodWorker] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self.probe_session: aiohttp.ClientSession | None = None
        for directory in (config.logs_dir, config.pods_dir, config.pids_dir):
            directory.mkdir(parents=True, exist_ok=True)

    def sync(self) -> None:
        pods = self.pods()
        for key, pod in pods.items():
            worker = self.workers.get(key)
            if worker is not None and worker.uid != _uid_or_name(pod):
                self._stop(key)  # deleted and recreated under the same name
                worker = None
            if pod.get("metadata", {}).get("deletionTimestamp"):
                if worker is not None:
                    self._stop(key, finalize=True)
                elif not pod.get("metadata", {}).get("finalizers"):
                    self._spawn(self._finalize(pod))
                continue
            if worker is None:
                if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                    continue  # ended before this kubelet started: nothing to run again
                worker = PodWorker(self, pod)
                self.workers[key] = worker
                worker.start()
            else:
                worker.pod = pod
        for key in list(self.workers):
            if key not in pods:
                self._stop(key)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    def _stop(self, key: tuple[str, str], finalize: bool = False) -> None:
        worker = self.workers.pop(key)
        self._spawn(self._stop_worker(worker, finalize))

    async def _stop_worker(self, worker: PodWorker, finalize: bool) -> None:
        await worker.stop()
        if finalize:
            await self._finalize(worker.pod)

    async def _finalize(self, pod: Obj) -> None:
        # Graceful deletion: the kubelet confirms the kill by deleting with grace period 0.
        with contextlib.suppress(ApiError, aiohttp.ClientError):
            await self.client.request(
                "DELETE", PODS.item(namespace_of(pod), name_of(pod)), params={"gracePeriodSeconds": "0"}
            )

    async def shutdown(self) -> None:
        for key in list(self.workers):
            self._stop(key)
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)


def _uid_or_name(pod: Mapping[str, Any]) -> str:
    return str(
        pod.get("metadata", {}).get("uid") or pod.get("metadata", {}).get("creationTimestamp") or name_of(pod)
    )


class PodWorker:
    def __init__(self, kubelet: Kubelet, pod: Obj) -> None:
        self.kubelet = kubelet
        self.pod = pod
        self.uid = _uid_or_name(pod)
        self.namespace, self.name = key_of(pod)
        self.started_at = _now()
        spec = pod.get("spec", {})
        self.init_states = [
            podstatus.ContainerState(c["name"], c.get("image", ""), podstatus.waiting("PodInitializing"))
            for c in spec.get("initContainers") or []
        ]
        self.states = [
            podstatus.ContainerState(c["name"], c.get("image", "")) for c in spec.get("containers") or []
        ]
        self.initialized = not self.init_states
        self.init_failed = False
        self.ip: str | None = None
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        self.dir = kubelet.config.pods_dir / f"{self.namespace}_{self.name}"
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._last_written: Obj | None = None
        self._stopping = False

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_status_loop(), name=f"status {self.name}")
        self._task = asyncio.create_task(self._run(), name=f"pod {self.name}")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        grace = self.pod.get("spec", {}).get("terminationGracePeriodSeconds")
        grace_seconds = min(float(30 if grace is None else grace), self.kubelet.config.max_grace_seconds)
        await asyncio.gather(*(self._kill(name, grace_seconds) for name in list(self.processes)))
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        self._release()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _release(self) -> None:
        self.kubelet.pool.release(f"{self.namespace}/{self.name}")

    async def _kill(self, container: str, grace: float) -> None:
        process = self.processes.get(container)
        if process is None or process.returncode is not None:
            return
        _signal_group(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout=grace)
        except TimeoutError:
            _signal_group(process.pid, signal.SIGKILL)
            await process.wait()
        # Children that outlived their leader still belong to the group.
        _signal_group(process.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self._pidfile(container).unlink()

    async def _run(self) -> None:
        self.ip = self.kubelet.pool.claim(f"{self.namespace}/{self.name}")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.changed()
        spec = self.pod.get("spec", {})
        if not await self._pull_images():
            return
        restart_policy = str(spec.get("restartPolicy", "Always"))
        for index, container in enumerate(spec.get("initContainers") or []):
            runner = ContainerRunner(self, container, self.init_states[index], init=True)
            if not await runner.run("Always" if restart_policy == "Always" else restart_policy):
                self.init_failed = True
                self.changed()
                self._release()
                return
        self.initialized = True
        self.changed()
        runners = [
            ContainerRunner(self, container, self.states[index])
            for index, container in enumerate(spec.get("containers") or [])
        ]
        await asyncio.gather(*(runner.run(restart_policy) for runner in runners))
        # Every container ended for good: the pod is Succeeded or Failed and gives its IP back.
        self._release()
        self.changed()

    async def _pull_images(self) -> bool:
        """Check every image; on a miss show ErrImagePull, then ImagePullBackOff, and keep the pod Pending."""
        spec = self.pod.get("spec", {})
        all_states = [*self.init_states, *self.states]
        all_containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
        missing: list[tuple[podstatus.ContainerState, str]] = []
        for state, container in zip(all_states, all_containers, strict=True):
            try:
                images.resolve_image(str(container.get("image", "")))
            except images.ImageNotAvailable as exc:
                missing.append((state, str(exc)))
        if not missing:
            return True
        for state, message in missing:
            state.state = podstatus.waiting("ErrImagePull", message)
            self.kubelet.record_event(self.pod, "Failed", f"Failed to pull image: {message}", "Warning")
        self.changed()
        await asyncio.sleep(self.kubelet.config.image_pull_backoff)
        for state, message in missing:
            image = state.image
            state.state = podstatus.waiting(
                "ImagePullBackOff", f'Back-off pulling image "{image}": {message}'
            )
        self.kubelet.record_event(
            self.pod, "BackOff", f'Back-off pulling image "{missing[0][0].image}"', "Normal"
        )
        self.changed()
        await asyncio.Event().wait()  # stays Pending until deleted, as on a cluster
        return False

    # -- status ---------------------------------------------------------------------------------

    def changed(self) -> None:
        self._changed.set()

    def pod_view(self) -> Obj:
        """The pod with what this kubelet already decided but the cache may not show yet (its IP)."""
        status = dict(self.pod.get("status") or {})
        if self.ip:
            status.update({"podIP": self.ip, "podIPs": [{"ip": self.ip}]})
        status.update({"hostIP": podstatus.HOST_IP})
        return {**self.pod, "status": status}

    def build_status(self) -> Obj:
        phase_ended = podstatus.pod_phase(
            str(self.pod.get("spec", {}).get("restartPolicy", "Always")), self.states, self.init_failed
        ) in ("Succeeded", "Failed")
        return podstatus.build_pod_status(
            self.pod,
            pod_ip=self.ip if not phase_ended or self.pod.get("status", {}).get("podIP") else None,
            start_time=self.started_at,
            init_containers=self.init_states,
            containers=self.states,
            initialized=self.initialized,
            init_failed=self.init_failed,
            now=_now(),
        )

    async def _write_status_loop(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            status = self.build_status()
            if status == self._last_written:
                continue
            patch: Obj = dict(status)
            for key in self._last_written or {}:
                patch.setdefault(key, None)  # a merge patch removes only what it sets to null
            try:
                updated = await self.kubelet.client.merge_patch(
                    PODS.item(self.namespace, self.name, "status"), {"status": patch}
                )
                self._last_written = status
                if updated.get("metadata"):
                    self.pod = {**self.pod, "status": updated.get("status", status)}
            except ApiError as exc:
                if exc.status == 404:
                    return  # deleted: the kubelet stops this worker on the next sync
                logger.warning("pod %s/%s: status write failed: %s", self.namespace, self.name, exc)
                await asyncio.sleep(0.5)
                self.changed()
            except (aiohttp.ClientError, TimeoutError) as exc:
                logger.debug("pod %s/%s: status write failed: %r", self.namespace, self.name, exc)
                await asyncio.sleep(0.5)
                self.changed()

    def _pidfile(self, container: str) -> Path:
        return self.kubelet.config.pids_dir / f"{self.namespace}_{self.name}_{container}.pid"


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class ContainerRunner:
    """Runs one container: start, probe, wait, restart with back-off as its pod's restartPolicy says."""

    def __init__(
        self,
        worker: PodWorker,
        container: Mapping[str, Any],
        state: podstatus.ContainerState,
        init: bool = False,
    ) -> None:
        self.worker = worker
        self.container = container
        self.state = state
        self.init = init
        self.name = str(container["name"])
        self.config = worker.kubelet.config
        self._kill_reason: str | None = None

    async def run(self, restart_policy: str) -> bool:
        """Run until the container ends for good; True if it ended with exit code 0."""
        backoff = self.config.restart_backoff_base
        while True:
            started = _now()
            exit_code, reason, message = await self._run_once()
            state = podstatus.terminated(
                exit_code, reason, started if reason != "StartError" else None, _now(), message
            )
            if (
                restart_policy == "Never"
                or (restart_policy == "OnFailure" and exit_code == 0)
                or (self.init and exit_code == 0)
            ):
                self.state.state = state
                self.state.ready = False
                self.worker.changed()
                return exit_code == 0
            ran = (_now() - started).total_seconds()
            if ran >= self.config.backoff_reset_after:
                backoff = self.config.restart_backoff_base
            self.state.last_state = state
            self.state.restart_count += 1
            self.state.ready = False
            cause = f"exit code {exit_code}"
            # Unlike a kubelet, say why it crashed right here: the termination message, else the last log line.
            explanation = (
                message.strip()
                or _tail(
                    log_path(self.config.logs_dir, self.worker.namespace, self.worker.name, self.name), 1, 512
                ).strip()
            )
            if explanation:
                cause += f": {explanation.splitlines()[-1]}"
            # A process that cannot even start shows RunContainerError first, as a kubelet does.
            waiting_reason = (
                "RunContainerError"
                if reason == "StartError" and self.state.restart_count == 1
                else "CrashLoopBackOff"
            )
            self.state.state = podstatus.waiting(
                waiting_reason,
                f"back-off {backoff:g}s restarting failed container={self.name} pod={self.worker.name}"
                f" (last exit: {reason}, {cause})",
            )
            self.worker.kubelet.record_event(
                self.worker.pod, "BackOff", f"Back-off restarting failed container {self.name}", "Warning"
            )
            self.worker.changed()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.config.restart_backoff_cap)

    def _argv_and_env(self) -> tuple[list[str], dict[str, str], Path, Path]:
        worker = self.worker
        pod = worker.pod_view()
        image = images.resolve_image(str(self.container.get("image", "")))
        base: dict[str, str] = dict(image.env)
        base["HOSTNAME"] = worker.name
        base["HOME"] = str(worker.dir / "home")
        if image.own and worker.ip:
            # No network namespaces here: every pod shares the host's. Our server binds
            # 0.0.0.0 in a cluster (so port-forward works); here it must bind its own pod IP,
            # or two replicas collide on one port. MLOPS_SERVE_HOST is its bind address.
            base["MLOPS_SERVE_HOST"] = worker.ip
        if pod.get("spec", {}).get("enableServiceLinks", True):
            services = [s for (ns, _), s in worker.kubelet.services().items() if ns == worker.namespace]
            base.update(service_link_env(services))
        env = container_env(
            pod,
            self.container,
            configmaps=worker.kubelet.configmaps(),
            secrets=worker.kubelet.secrets(),
            base=base,
        )
        message_path = worker.dir / f"termination-log-{self.name}"
        message_path.unlink(missing_ok=True)
        env["MLOPS_TERMINATION_MESSAGE_PATH"] = str(message_path)
        spec_path = str(self.container.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH)
        argv = [
            expand(arg, env).replace(spec_path, str(message_path))
            for arg in images.container_argv(image, self.container.get("command"), self.container.get("args"))
        ]
        volumes = {v.get("name"): v for v in pod.get("spec", {}).get("volumes") or []}
        for mount in self.container.get("volumeMounts") or []:
            volume = volumes.get(mount.get("name")) or {}
            if "emptyDir" in volume:
                directory = worker.dir / "volumes" / str(mount["name"])
                directory.mkdir(parents=True, exist_ok=True)
                if str(mount.get("mountPath", "")).rstrip("/") == "/tmp":
                    env["TMPDIR"] = str(directory)
        workdir_spec = self.container.get("workingDir")
        if workdir_spec and Path(workdir_spec).is_dir():
            workdir = Path(workdir_spec)
        elif workdir_spec:
            workdir = worker.dir / "rootfs" / str(workdir_spec).lstrip("/")
        else:
            workdir = worker.dir / "rootfs"
        workdir.mkdir(parents=True, exist_ok=True)
        Path(base["HOME"]).mkdir(parents=True, exist_ok=True)
        return argv, env, workdir, message_path

    async def _run_once(self) -> tuple[int, str, str]:
        """One run of the process: (exit code, reason, message) of its termination."""
        worker = self.worker
        logs = self.config.logs_dir
        current_log = log_path(logs, worker.namespace, worker.name, self.name)
        if current_log.exists() and self.state.restart_count:
            current_log.replace(log_path(logs, worker.namespace, worker.name, self.name, previous=True))
        try:
            argv, env, workdir, message_path = self._argv_and_env()
        except ContainerConfigError as exc:
            self.state.state = podstatus.waiting("CreateContainerConfigError", str(exc))
            worker.changed()
            while True:  # the kubelet retries until the ConfigMap/Secret appears
                await asyncio.sleep(1.0)
                try:
                    argv, env, workdir, message_path = self._argv_and_env()
                    break
                except ContainerConfigError as retry_exc:
                    self.state.state = podstatus.waiting("CreateContainerConfigError", str(retry_exc))
                    worker.changed()
        # From here on the container exists, even if its process cannot start (phase is no longer Pending).
        self.state.started_once = True
        if not argv:
            return 128, "StartError", "no command specified"
        with current_log.open("ab") as log:
            try:
                process = await asyncio.create_subprocess_exec(
                    *argv, env=env, cwd=workdir, stdin=asyncio.subprocess.DEVNULL, stdout=log,
                    stderr=asyncio.subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
            except OSError as exc:
                text = f'exec: "{argv[0]}": {_describe_os_error(exc)}'
                log.write(f"{text}\n".encode())
                return 128, "StartError", text
        worker.processes[self.name] = process
        write_pidfile(worker._pidfile(self.name), process.pid)
        limit = memory_limit_bytes(self.container)
        if limit:
            with contextlib.suppress(OSError, ValueError):
                resource.prlimit(process.pid, resource.RLIMIT_DATA, (limit, limit))
        self.state.state = {"running": {"startedAt": format_time(_now())}}
        self.state.ready = not self.container.get("readinessProbe") and not self.container.get("startupProbe")
        worker.changed()
        self._kill_reason = None
        probes = asyncio.create_task(self._probe(process)) if not self.init else None
        try:
            code = await process.wait()
        finally:
            if probes is not None:
                probes.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await probes
        # Children of the container die with it, as in its cgroup.
        _signal_group(process.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            worker._pidfile(self.name).unlink()
        return self._termination(code, current_log, message_path, limit)

    def _termination(
        self, code: int, log: Path, message_path: Path, limit: int | None
    ) -> tuple[int, str, str]:
        exit_code = 128 - code if code < 0 else code  # killed by signal N: 128+N, like a shell
        try:
            message = message_path.read_bytes()[:MAX_TERMINATION_MESSAGE].decode(errors="replace")
        except OSError:
            message = ""
        tail = _tail(log, FALLBACK_LOG_LINES, FALLBACK_LOG_BYTES)
        if limit and exit_code != 0 and "MemoryError" in tail:
            return 137, "OOMKilled", message or tail
        if self._kill_reason:
            return exit_code, "Error", message or self._kill_reason
        if (
            not message
            and exit_code != 0
            and self.container.get("terminationMessagePolicy") == "FallbackToLogsOnError"
        ):
            message = tail
        return exit_code, "Completed" if exit_code == 0 else "Error", message

    # -- probes ---------------------------------------------------------------------------------

    async def _probe(self, process: asyncio.subprocess.Process) -> None:
        startup = self.container.get("startupProbe")
        if startup and not await self._until(startup, process, want=True, kind="Startup"):
            return
        self.state.ready = not self.container.get("readinessProbe")
        self.worker.changed()
        loops: list[Coroutine[Any, Any, Any]] = []
        if self.container.get("readinessProbe"):
            loops.append(self._readiness(self.container["readinessProbe"]))
        if self.container.get("livenessProbe"):
            loops.append(self._until(self.container["livenessProbe"], process, want=False, kind="Liveness"))
        if loops:
            await asyncio.gather(*loops)

    async def _readiness(self, probe: Mapping[str, Any]) -> None:
        period, success_needed, failure_needed = _probe_timing(probe)
        await asyncio.sleep(float(probe.get("initialDelaySeconds") or 0))
        successes = failures = 0
        while True:
            ok, message = await self._check(probe)
            successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
            if ok and successes >= success_needed and not self.state.ready:
                self.state.ready = True
                self.worker.changed()
            elif not ok and failures >= failure_needed and self.state.ready:
                self.state.ready = False
                self.worker.changed()
            if not ok and failures == failure_needed:
                self.worker.kubelet.record_event(
                    self.worker.pod, "Unhealthy", f"Readiness probe failed: {message}", "Warning"
                )
            await asyncio.sleep(period)

    async def _until(
        self, probe: Mapping[str, Any], process: asyncio.subprocess.Process, *, want: bool, kind: str
    ) -> bool:
        """Startup (``want=True``): wait for success. Liveness: wait for failureThreshold failures.
        Either way, a failure that reaches the threshold kills the container (it is then restarted)."""
        period, _, failure_needed = _probe_timing(probe)
        await asyncio.sleep(float(probe.get("initialDelaySeconds") or 0))
        failures = 0
        while True:
            ok, message = await self._check(probe)
            if ok and want:
                return True
            failures = 0 if ok else failures + 1
            if failures >= failure_needed:
                self._kill_reason = f"{kind} probe failed: {message}"
                self.worker.kubelet.record_event(self.worker.pod, "Unhealthy", self._kill_reason, "Warning")
                self.worker.kubelet.record_event(
                    self.worker.pod,
                    "Killing",
                    f"Container {self.name} failed {kind.lower()} probe, will be restarted",
                    "Normal",
                )
                grace = float(probe.get("terminationGracePeriodSeconds") or self.config.max_grace_seconds)
                await self.worker._kill(self.name, min(grace, self.config.max_grace_seconds))
                return False
            await asyncio.sleep(period)

    async def _check(self, probe: Mapping[str, Any]) -> tuple[bool, str]:
        timeout = float(probe.get("timeoutSeconds") or 1)
        pod = self.worker.pod_view()
        try:
            if "httpGet" in probe:
                return await self._check_http(probe["httpGet"], pod, timeout)
            if "tcpSocket" in probe:
                host = probe["tcpSocket"].get("host") or self.worker.ip or "127.0.0.1"
                port = resolve_port(pod, probe["tcpSocket"].get("port"))
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
                writer.close()
                return True, ""
            if "exec" in probe:
                return await self._check_exec(probe["exec"].get("command") or [], timeout)
        except TimeoutError:
            return False, f"timeout after {timeout:g}s"
        except (OSError, aiohttp.ClientError) as exc:
            return False, str(exc) or type(exc).__name__
        return True, ""  # grpc probes are not checked in the sandbox

    async def _check_http(self, get: Mapping[str, Any], pod: Obj, seconds: float) -> tuple[bool, str]:
        host = get.get("host") or self.worker.ip or "127.0.0.1"
        port = resolve_port(pod, get.get("port"), self.name)
        scheme = str(get.get("scheme", "HTTP")).lower()
        path = str(get.get("path") or "/")
        url = f"{scheme}://{host}:{port}{path if path.startswith('/') else '/' + path}"
        headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
        session = self.worker.kubelet.probe_session
        if session is None:
            session = self.worker.kubelet.probe_session = aiohttp.ClientSession()
        async with session.get(
            url,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=seconds),
            ssl=False,
            allow_redirects=False,
        ) as response:
            if 200 <= response.status < 400:
                return True, ""
            return False, f"HTTP probe failed with statuscode: {response.status}"

    async def _check_exec(self, command: list[str], seconds: float) -> tuple[bool, str]:
        argv, env, workdir, _ = self._argv_and_env()
        argv = [expand(arg, env) for arg in command]
        process = await asyncio.create_subprocess_exec(
            *argv, env=env, cwd=workdir, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        try:
            output, _ = await asyncio.wait_for(process.communicate(), seconds)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
        return process.returncode == 0, output.decode(errors="replace")[-512:]


def _probe_timing(probe: Mapping[str, Any]) -> tuple[float, int, int]:
    return (
        float(probe.get("periodSeconds") or 10),
        int(probe.get("successThreshold") or 1),
        int(probe.get("failureThreshold") or 3),
    )


def _describe_os_error(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return (
            "executable file not found in $PATH"
            if os.sep not in (exc.filename or "")
            else "no such file or directory"
        )
    if exc.errno == errno.EACCES:
        return "permission denied"
    return exc.strerror or str(exc)
