"""``python -m mlops_operator.sandbox.apiserver``: the emulated API server as a process.

The sandbox starts it as a child process: ``--port 0`` picks a free port, and the URL is written
to ``--url-file`` (atomically) once the server listens, so the parent can wait for the file.
SIGTERM and SIGINT stop it cleanly (watch streams end, the state file is saved).

Like kube-apiserver it authenticates every request: ``--token-auth-file`` (kube-apiserver's CSV,
``token,user,uid,"group1,group2"``) names who may call; without it the server makes one
administrator token and writes it into ``--kubeconfig``. ``--anonymous-auth`` lets requests
without credentials in as ``system:anonymous`` (which may read only /version and health paths);
``--audit-log-path`` appends one ``audit.k8s.io/v1`` Event per request. It serves HTTPS only,
with a certificate from its own CA (kept in ``--tls-dir``); kubeconfigs carry that CA.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import pathlib
import signal

from .authentication import AuditLog, Authenticator
from .certificates import Certificates
from .server import EmulatedApiServer, _atomic_write, admin_authenticator, write_kubeconfig


async def serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    token: str | None = None
    if args.token_auth_file:
        authenticator = Authenticator.from_token_file(args.token_auth_file, anonymous=args.anonymous_auth)
    else:
        authenticator, token = admin_authenticator()
        authenticator.anonymous = args.anonymous_auth
    audit = AuditLog(args.audit_log_path) if args.audit_log_path else None
    certificates = Certificates.load_or_generate(args.tls_dir) if args.tls_dir else Certificates.generate()
    async with EmulatedApiServer.running(
        args.host,
        args.port,
        args.crds,
        args.state_file,
        authenticator=authenticator,
        audit=audit,
        certificates=certificates,
    ) as server:
        if args.kubeconfig and token is not None:
            write_kubeconfig(args.kubeconfig, server.url, token=token, ca=certificates.ca)
        if args.url_file:
            _atomic_write(pathlib.Path(args.url_file), server.url + "\n")
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mlops_operator.sandbox.apiserver", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--crds", type=pathlib.Path, default=None, help="a directory of CRD YAML files to load"
    )
    parser.add_argument(
        "--url-file", type=pathlib.Path, default=None, help="written with the URL once listening"
    )
    parser.add_argument("--kubeconfig", type=pathlib.Path, default=None, help="also write a kubeconfig here")
    parser.add_argument("--state-file", type=pathlib.Path, default=None, help="load at start, save at stop")
    parser.add_argument(
        "--token-auth-file", type=pathlib.Path, default=None, help='CSV: token,user,uid,"group1,group2"'
    )
    parser.add_argument(
        "--anonymous-auth",
        action="store_true",
        help="let requests without credentials in as system:anonymous",
    )
    parser.add_argument(
        "--tls-dir",
        type=pathlib.Path,
        default=None,
        help="keep the CA and serving certificate here (made on first use); default: fresh ones per start",
    )
    parser.add_argument("--audit-log-path", type=pathlib.Path, default=None, help="append audit events here")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if args.kubeconfig and args.token_auth_file:
        parser.error(
            "--kubeconfig writes the server's own admin token: it cannot be used with --token-auth-file"
        )
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
