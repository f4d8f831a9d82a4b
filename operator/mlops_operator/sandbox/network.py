"""Each sandbox on a machine gets its own slice of the loopback network.

Pods get addresses from ``127.K.0.2-254`` and Services from ``127.K.1.1-254``; the sandbox's
number K is claimed with an exclusive lock on a file under the system's temporary directory,
held for as long as the runtime runs (the OS drops it if the process dies, so a crashed
sandbox never keeps its network). Two sandboxes therefore never hand out the same address,
which would make their pods collide on ports, exactly as two clusters do not share pod IPs.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

MAX_NETWORKS = 250
LOCK_DIR = Path(tempfile.gettempdir()) / "mlops-operator-sandbox"


@dataclass
class Network:
    index: int
    lock: IO[str] | None = None

    @property
    def pod_range(self) -> tuple[str, str]:
        return f"127.{self.index}.0.2", f"127.{self.index}.0.254"

    @property
    def service_range(self) -> tuple[str, str]:
        return f"127.{self.index}.1.1", f"127.{self.index}.1.254"

    def describe(self) -> str:
        pods, services = self.pod_range, self.service_range
        return f"pods on {pods[0]}-{pods[1].rsplit('.', 1)[1]}, services on {services[0]}-{services[1].rsplit('.', 1)[1]}"

    def release(self) -> None:
        if self.lock is not None:
            self.lock.close()  # closing drops the flock
            self.lock = None


class NoFreeNetwork(Exception):
    pass


def claim(owner: str) -> Network:
    """The lowest free network number, locked for this process (``owner`` is recorded for humans)."""
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    for index in range(MAX_NETWORKS):
        handle = (LOCK_DIR / f"net-{index}.lock").open("a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()} {owner}\n")
        handle.flush()
        return Network(index, handle)
    raise NoFreeNetwork(f"all {MAX_NETWORKS} sandbox networks are in use (see {LOCK_DIR})")
