"""``python -m mlops_operator.sandbox.apiserver``: the emulated API server as a process.

The sandbox starts it as a child process: ``--port 0`` picks a free port, and the URL is written
to ``--url-file`` (atomically) once the server listens, so the parent can wait for the file.
SIGTERM and SIGINT stop it cleanly (watch streams end, the state file is saved).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import pathlib
import signal

from .server import EmulatedApiServer, _atomic_write, write_kubeconfig


async def serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with EmulatedApiServer.running(args.host, args.port, args.crds, args.state_file) as server:
        if args.kubeconfig:
            write_kubeconfig(args.kubeconfig, server.url)
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
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
