"""``mlops-operator sandbox``: a local cluster on this machine (emulated API server + runtime).

    mlops-operator sandbox up [--dir DIR] [--no-mlflow] [--no-operator]
    mlops-operator sandbox status | down [--dir DIR]
    mlops-operator sandbox url mlisvc/NAME [-n NS]
    mlops-operator sandbox logs POD [-n NS] [-c CONTAINER] [--previous]

Exit codes: 0 success; 1 failure (``up`` on a running sandbox, a component that did not start,
``status`` with a component down, ``url``/``logs`` of something unknown). ``down`` on a stopped
sandbox says so and exits 0, so scripts can always call it.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.parse
from pathlib import Path

import kopf

from mlops_operator.credentials import CredentialsError
from mlops_operator.kube_client import Kube
from mlops_operator.sandbox import manager
from mlops_operator.sandbox.kubelet import log_path
from mlops_operator.sandbox.mlflow_server import StartupError

DEFAULT_DIR = ".sandbox"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__
    sub = parser.add_subparsers(dest="sandbox_command", required=True, metavar="ACTION")

    def with_dir(name: str, help_text: str) -> argparse.ArgumentParser:
        action = sub.add_parser(name, help=help_text, description=help_text)
        action.add_argument(
            "--dir", type=Path, default=Path(os.environ.get("MLOPS_SANDBOX_DIR", DEFAULT_DIR)),
            help=f"the sandbox's directory: state, logs, kubeconfig (default: $MLOPS_SANDBOX_DIR or {DEFAULT_DIR})",
        )  # fmt: skip
        return action

    up = with_dir("up", "start the sandbox and return once every component is ready")
    up.add_argument(
        "--crds",
        type=Path,
        default=None,
        help="directory of CRDs to install (default: generated from the installed models)",
    )
    up.add_argument("--no-mlflow", action="store_true", help="do not start the embedded MLflow server")
    up.add_argument("--no-operator", action="store_true", help="do not start the operator")
    up.add_argument("--port", type=int, default=0, help="API server port (default: a free one)")
    up.add_argument("--mlflow-port", type=int, default=0, help="MLflow port (default: a free one)")
    up.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for each component")
    with_dir("down", "stop every process the sandbox started, pods included")
    with_dir("status", "show the components and whether each is alive")
    url = with_dir("url", "print the URL of an InferenceService (mlisvc/NAME) or Service (svc/NAME)")
    url.add_argument("target", help="mlisvc/NAME or svc/NAME")
    url.add_argument("-n", "--namespace", default="default")
    logs = with_dir("logs", "print a pod's logs")
    logs.add_argument("pod", help="pod name, or a component: apiserver, runtime, mlflow, operator")
    logs.add_argument("-n", "--namespace", default="default")
    logs.add_argument("-c", "--container", default=None)
    logs.add_argument(
        "-p", "--previous", action="store_true", help="the previous run of a restarted container"
    )


def run(args: argparse.Namespace) -> int:
    handlers = {"up": _up, "down": _down, "status": _status, "url": _url, "logs": _logs}
    try:
        return handlers[args.sandbox_command](args)
    except (
        manager.SandboxError,
        StartupError,
        CredentialsError,
        kopf.TemporaryError,
        kopf.PermanentError,
    ) as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 1


def _up(args: argparse.Namespace) -> int:
    options = manager.Options(
        directory=args.dir, crds=args.crds, mlflow=not args.no_mlflow, operator=not args.no_operator,
        api_port=args.port, mlflow_port=args.mlflow_port, timeout=args.timeout,
    )  # fmt: skip
    try:
        manager.up(options)
    except StartupError as exc:
        hint = (
            "\n(to start the sandbox without the operator: --no-operator)"
            if str(exc).startswith("the operator")
            else ""
        )
        print(f"sandbox: {exc}{hint}", file=sys.stderr)
        return 1
    return 0


def _down(args: argparse.Namespace) -> int:
    if not manager.down(args.dir):
        print(f"sandbox: nothing is running in {args.dir.resolve()}", file=sys.stderr)
    return 0


def _status(args: argparse.Namespace) -> int:
    entries = manager.status(args.dir)
    if not entries:
        print(f"sandbox: not running in {args.dir.resolve()}")
        return 1
    for component, alive in entries:
        print(
            f"{component.name:<10} {'running' if alive else 'DEAD':<8} pid {component.pid:<8} {component.url}"
        )
    state = manager.read_state(args.dir.resolve())
    print(f"kubeconfig {state.get('kubeconfig', '')}")
    return 0 if all(alive for _, alive in entries) else 1


def _client(directory: Path) -> Kube:
    """A client of the running sandbox's API server, as its user (the sandbox's kubeconfig)."""
    state = manager.read_state(directory.resolve())
    if not state.get("server") or not manager.running_components(directory):
        raise manager.SandboxError(f"the sandbox in {directory.resolve()} is not running")
    return Kube.from_environment(str(state.get("kubeconfig") or directory.resolve() / "kubeconfig"))


def _url(args: argparse.Namespace) -> int:
    kind, _, name = str(args.target).partition("/")
    if not name or kind not in (
        "mlisvc",
        "inferenceservice",
        "inferenceservices",
        "svc",
        "service",
        "services",
    ):
        raise manager.SandboxError(f"expected mlisvc/NAME or svc/NAME, got {args.target!r}")
    client = _client(args.dir)
    if kind.startswith(("mlisvc", "inference")):
        isvc = client.get("InferenceService", args.namespace, name)
        if isvc is None:
            raise manager.SandboxError(f"inferenceservice {args.namespace}/{name} not found")
        url = str(isvc.get("status", {}).get("url") or "")
        cluster_dns = cluster_service_of(url)
        if url and cluster_dns is None:
            print(url)
            return 0
        if cluster_dns is not None:
            # There is no cluster DNS here: the name's Service is reached on its ClusterIP.
            name, args.namespace, path = cluster_dns
            print(_service_url(client, args.namespace, name) + path)
            return 0
    print(_service_url(client, args.namespace, name))
    return 0


def cluster_service_of(url: str) -> tuple[str, str, str] | None:
    """``http://svc.ns.svc[.cluster.local][:port]/path`` -> (svc, ns, path); None for other URLs."""
    parsed = urllib.parse.urlsplit(url)
    parts = (parsed.hostname or "").split(".")
    if len(parts) >= 3 and parts[2] == "svc" and (len(parts) == 3 or parts[3:] == ["cluster", "local"]):
        return parts[0], parts[1], parsed.path.rstrip("/")
    return None


def _service_url(client: Kube, namespace: str, name: str) -> str:
    service = client.get("Service", namespace, name)
    if service is None:
        raise manager.SandboxError(f"service {namespace}/{name} not found (yet)")
    spec = service.get("spec", {})
    if not spec.get("clusterIP") or spec.get("clusterIP") == "None" or not spec.get("ports"):
        raise manager.SandboxError(f"service {namespace}/{name} has no ClusterIP and port yet")
    return f"http://{spec['clusterIP']}:{spec['ports'][0]['port']}"


def _logs(args: argparse.Namespace) -> int:
    directory = args.dir.resolve()
    logs = directory / "logs"
    if args.pod in manager.COMPONENTS and not list(logs.glob(f"{args.namespace}_{args.pod}_*.log")):
        paths = [logs / f"{args.pod}.log"]
    elif args.container:
        paths = [log_path(logs, args.namespace, args.pod, args.container, args.previous)]
    else:
        suffix = ".previous.log" if args.previous else ".log"
        paths = sorted(
            path for path in logs.glob(f"{args.namespace}_{args.pod}_*{suffix}")
            if args.previous or not path.name.endswith(".previous.log")
        )  # fmt: skip
    existing = [path for path in paths if path.exists()]
    if not existing:
        raise manager.SandboxError(f"no logs for pod {args.namespace}/{args.pod} in {logs}")
    for path in existing:
        if len(existing) > 1:
            print(f"==> {path.name} <==")
        sys.stdout.write(path.read_text(errors="replace"))
    sys.stdout.flush()
    return 0
