"""Process-group bookkeeping shared by the runtime and ``sandbox down``.

Every process the sandbox starts leads its own session (so its children die with it), and its
pid is recorded together with its start time from ``/proc``: a recorded pid is signalled only if
the process still has that start time, so a recycled pid of someone else's process is left alone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[19])


def is_alive(pid: int, started: int | None) -> bool:
    current = start_time(pid)
    if current is None:
        return False
    if started is not None and current != started:
        return False
    # A zombie has exited: only its parent's wait() is missing.
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            return False
    return True


def write_pidfile(path: Path, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{pid} {start_time(pid) or 0}\n")


def read_pidfile(path: Path) -> tuple[int, int | None] | None:
    try:
        pid_text, _, started_text = path.read_text().strip().partition(" ")
        return int(pid_text), (int(started_text) or None) if started_text else None
    except (OSError, ValueError):
        return None


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group led by ``pid`` (falls back to the process itself)."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return
    except PermissionError:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still exists (a leader may be gone while its children live)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg(0) succeeds for zombies too: look for a member that is not one.
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            rest = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(rest[2]) == pgid and rest[0] != "Z":
                return True
    return False


def stop_group(pid: int, started: int | None, grace: float) -> bool:
    """SIGTERM the group of a recorded process, SIGKILL what is left after ``grace`` seconds.

    Returns whether anything was signalled. Blocking: for CLI use, not inside an event loop.
    """
    current = start_time(pid)
    if current is not None and started is not None and current != started:
        return False  # the pid now belongs to another process (Linux never reuses a live group's id)
    if not group_alive(pid):
        return False
    signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and group_alive(pid):
        time.sleep(0.05)
    if group_alive(pid):
        signal_group(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and group_alive(pid):
            time.sleep(0.05)
    return True
