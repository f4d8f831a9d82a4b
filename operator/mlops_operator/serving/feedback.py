"""Routable request ids: ground truth reaches the replica that made the prediction.

Each replica keeps its own predictions (the join for accuracy is in memory, bounded), but a
Service spreads ``POST /feedback`` over all replicas. So a replica that knows the address
its peers reach it at (``--advertise-address``, from the pod IP) puts that address in the
ids it mints; a replica receiving feedback for another replica's ids forwards them there,
once (a forwarded request is never forwarded again). Ids the client chose (``x-request-id``)
carry no address and are handled where they land.

Id format: ``p<8 hex: IPv4><4 hex: port><8 hex: random>-<counter>``.
"""

from __future__ import annotations

import ipaddress
import json
import re
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

FORWARDED_HEADER = "x-mlops-forwarded"
_ROUTABLE = re.compile(r"^p([0-9a-f]{8})([0-9a-f]{4})[0-9a-f]{8}-")


def encode_address(address: str) -> str:
    """``10.1.2.3:8080`` -> ``0a0102031f90`` (raises ValueError for anything else)."""
    host, _, port = address.rpartition(":")
    return f"{int(ipaddress.IPv4Address(host)):08x}{int(port):04x}"


def id_prefix(address: str | None, token: str) -> str:
    """The prefix of every id a replica mints (``token``: 8 random hex digits)."""
    if not address:
        return f"{token}-"
    return f"p{encode_address(address)}{token}-"


def owner(request_id: str) -> str | None:
    """The ``host:port`` of the replica that minted ``request_id``, if it is routable."""
    match = _ROUTABLE.match(request_id)
    if match is None:
        return None
    host = ipaddress.IPv4Address(int(match.group(1), 16))
    return f"{host}:{int(match.group(2), 16)}"


#: Peers one ``/feedback`` request may be forwarded to (a Service's replicas of one version).
MAX_PEERS = 16


def may_forward(me: str, address: str, peers: Mapping[str, Any]) -> bool:
    """Whether feedback for ``address`` (decoded from a request id) may be forwarded there.

    Request ids come from clients, so a forged one must not make the server post to any
    host and port it names: only an address on this replica's own port qualifies, and a
    request reaches at most :data:`MAX_PEERS` of them (``peers``: those it reaches so far).
    """
    if address.rpartition(":")[2] != me.rpartition(":")[2]:
        return False
    return address in peers or len(peers) < MAX_PEERS


def forward(address: str, items: Sequence[tuple[str, Any]], timeout: float = 2.0) -> tuple[int, list[str]]:
    """POST the items to the owner's ``/feedback``: (accepted, unknown ids).

    An owner that is gone (its pod was replaced) took its predictions with it: its ids count
    as unknown, exactly as expired ones do.
    """
    body = json.dumps([{"request_id": rid, "label": label} for rid, label in items]).encode()
    request = urllib.request.Request(
        f"http://{address}/feedback",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", FORWARDED_HEADER: "1"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read())
        return int(answer.get("accepted", 0)), list(answer.get("unknown_request_ids", []))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return 0, [rid for rid, _ in items]
        raise
    except (OSError, ValueError):
        return 0, [rid for rid, _ in items]
