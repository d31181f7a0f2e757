"""What the benchmarks read about a server's processes from ``/proc`` (Linux): its process tree,
CPU time, resident memory and peak resident memory (``VmHWM``, which ``clear_refs`` restarts),
its established TCP connections; a PostgreSQL database's server processes; and where a phase's
CPU went (:class:`CpuMeter`)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "CpuMeter",
    "cpu_seconds",
    "established_tcp",
    "machine_busy",
    "peak_rss",
    "postgres_pids",
    "reset_peaks",
    "rss",
    "tree",
]


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


def _socket_inodes(pids: list[int]) -> set[str]:
    """The inodes of the sockets these processes hold open (``socket:[INODE]`` fds)."""
    inodes = set()
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue  # gone, or not ours to read
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue  # closed between the listing and the read
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    return inodes


TCP_ESTABLISHED = "01"  # the ``st`` column of /proc/net/tcp (include/net/tcp_states.h)


def established_tcp(pids: list[int]) -> int:
    """How many ESTABLISHED TCP connections (IPv4 and IPv6) these processes hold: the ones they
    accepted and the ones they opened, each once however many processes share its fd (a
    connection whose two ends are both theirs counts twice: two sockets).

    The connection tables are read through the first pid (``/proc/PID/net/tcp``, ``tcp6``), so
    they are those of its network namespace: pass a process tree whose processes share one
    namespace (a server and its workers). 0 if the processes are gone."""
    inodes = _socket_inodes(pids)
    if not pids or not inodes:
        return 0
    count = 0
    for table in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/{pids[0]}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue  # no IPv6, or the process is gone
        for row in rows:
            # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
            fields = row.split()
            if len(fields) > 9 and fields[3] == TCP_ESTABLISHED and fields[9] in inodes:
                count += 1
    return count


def machine_busy() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine so far (``/proc/stat``)."""
    ticks = os.sysconf("SC_CLK_TCK")
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / ticks, sum(fields) / ticks


_BACKGROUND = (b": walwriter", b": checkpointer", b": background writer")


def postgres_pids(database: str) -> list[int]:
    """The server processes of ``database`` (by their titles, ``/proc/PID/cmdline``), and the
    cluster's WAL writer, checkpointer and background writer, which write for every database."""
    marker = f" {database} ".encode()
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().rstrip(b"\0 ")
        except OSError:
            continue
        if title.startswith(b"postgres: ") and (marker in title or title.endswith(_BACKGROUND)):
            out.append(int(entry.name))
    return out


class CpuMeter:
    """Where the CPU went over a phase: the CPU seconds of each group of processes that
    ``groups()`` names (called again at every sample), of this process (the load generator) and
    of the whole machine, the rest of whose busy time is other work (``other_cpu_s``).

    Processes are sampled every :data:`SAMPLE_SECONDS` on a thread, so a process that starts
    and ends within the phase (a pooled database connection beyond the pool's size) counts up
    to its last sample: for such groups the figure is a lower bound."""

    SAMPLE_SECONDS = 0.2

    def __init__(self, groups: Callable[[], dict[str, list[int]]]) -> None:
        self.groups = groups
        self.start = {k: {p: cpu_seconds([p]) for p in v} for k, v in groups().items()}
        self.last: dict[str, dict[int, float]] = {k: dict(v) for k, v in self.start.items()}
        self.client = time.process_time()
        self.machine = machine_busy()
        self.t0 = time.perf_counter()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _take(self) -> None:
        for k, pids in self.groups().items():
            for p in pids:
                cpu = cpu_seconds([p])
                if cpu:  # 0: gone between the listing and the read
                    self.last.setdefault(k, {})[p] = cpu

    def _sample(self) -> None:
        while not self._done.wait(self.SAMPLE_SECONDS):
            self._take()

    def end(self) -> dict[str, float]:
        """``<group>_cpu_s`` and ``<group>_processes`` for each group, ``client_cpu_s``,
        ``machine_busy_cpu_s``, ``machine_busy_cores``, ``other_cpu_s`` and ``seconds``."""
        seconds = time.perf_counter() - self.t0
        self._done.set()
        self._thread.join()
        self._take()
        out = {
            f"{k}_cpu_s": round(sum(cpu - self.start[k].get(p, 0.0) for p, cpu in v.items()), 2)
            for k, v in self.last.items()
        }
        out["client_cpu_s"] = round(time.process_time() - self.client, 2)
        busy, total = machine_busy()
        busy -= self.machine[0]
        measured = sum(out.values())
        out.update({f"{k}_processes": len(v) for k, v in self.last.items()})
        out["seconds"] = round(seconds, 2)
        out["machine_busy_cpu_s"] = round(busy, 2)
        out["machine_busy_cores"] = round(busy / seconds, 2) if seconds else 0.0
        out["machine_cores"] = round((total - self.machine[1]) / seconds, 1) if seconds else 0.0
        out["other_cpu_s"] = round(busy - measured, 2)  # other work, processes not measured
        return out
