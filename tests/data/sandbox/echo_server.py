"""A tiny HTTP server for sandbox tests: answers every GET with its pod's name and version.

``python echo_server.py --host $(POD_IP) --port 8000``; ``/healthz`` answers 200 unless the file
named by ``$NOT_READY_FILE`` exists (so a test can flip readiness), ``/crash`` exits with code 3.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/crash":
            os._exit(3)
        if self.path == "/healthz":
            marker = os.environ.get("NOT_READY_FILE")
            code = 503 if marker and os.path.exists(marker) else 200
            self._send(code, {"ok": code == 200})
            return
        self._send(200, {"pod": os.environ.get("POD_NAME", ""), "version": os.environ.get("VERSION", "")})

    def _send(self, code: int, payload: dict[str, object]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"{self.address_string()} {format % args}\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"serving on {args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
