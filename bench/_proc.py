"""What the benchmarks read about a server's processes from ``/proc`` (Linux): its process tree,
CPU time, resident memory and peak resident memory (``VmHWM``, which ``clear_refs`` restarts)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["cpu_seconds", "peak_rss", "reset_peaks", "rss", "tree"]


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a server's worker processes)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    return out


def _status(pid: int, key: str) -> int:
    """A ``/proc/PID/status`` field in bytes (0 if the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss(pid: int) -> int:
    """Resident memory of one process, in bytes."""
    return _status(pid, "VmRSS:")


def peak_rss(pid: int) -> int:
    """Peak resident memory (VmHWM) of one process, in bytes."""
    return _status(pid, "VmHWM:")


def reset_peaks(pids: list[int]) -> None:
    """Restart VmHWM counting from the current RSS (``5 > /proc/PID/clear_refs``)."""
    for pid in pids:
        # if not allowed, VmHWM counts from the process's start: an upper bound
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/clear_refs").write_text("5")


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) used so far by these processes."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / ticks
