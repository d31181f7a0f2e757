"""Benchmark: a network of N nodes on this machine, each share going to every partner.

DESIGN.md section 10: a network of 20 nodes with 50 ms round trips, share to all 19 partners,
p99 to the last receipt under 3 s; per-node work at most linear in N. By default this runs on
LOOPBACK (no added latency), so its latencies say what the nodes cost. With ``--netns`` (Linux,
root, iproute2) each node runs in its own network namespace (``service.netsim``) and every
path between two nodes has ``--rtt-ms`` round trips (default 50: a quarter of it one way on
each node's link), in the kernel where it has netem and otherwise in a delaying relay per
node; this process reaches the nodes across their links too, as a publisher would.

For each N (5, 10 and 20; ``--quick``: 3), the network is built as ``entente network up``
builds it (``service.network``: one roster, one multilateral agreement every officer signed;
SQLite homes, keys unencrypted, one server process per node, outbox poll 0.2 s, checkpoints
every 2 s) and started. After a short idle window (the background work alone), ``--shares``
shares of 4 KiB go out one at a time, each from the next node in turn to ALL its N-1 partners.
Figures per N:

* share to all receipts: from the start of ``POST /v1/artifacts`` to the last partner's signed
  receipt stored at the origin (its ``delivered_at``), p50 and p99 over the shares;
* each node's CPU seconds over the sharing phase (``/proc``; mean and max), the network's CPU
  per delivered copy, and each node's peak RSS over the phase (VmHWM, reset at its start);
* the sharing phase taken as steady sharing (one share to all at a time, back to back): each
  node's CPU seconds per hour of it (phase CPU x 3600 / phase wall seconds; mean, max, and the
  mean over N-1, the partners each node sends to and receives from), beside the rate it ran at
  (shares to all per hour, which falls as N grows) and the cores the nodes kept busy; the idle
  CPU per hour beside it. Not depending on the rate, the CPU per delivered copy above is each
  node's CPU per round (every node sharing to all once) over N-1: flat if each node's work
  grows linearly in N;
* each node's CPU per minute (and per hour) while idle, before the shares;
* open connections: each node's ESTABLISHED TCP connections, accepted and opened (its process
  tree's sockets matched against ``/proc/PID/net/tcp`` and ``tcp6`` read through its own pid,
  so in its own namespace with ``--netns``), counted ten times while sharing (after every
  few shares, or every share if fewer than ten, and after the last) and once at the end of the
  idle window: mean and max over the nodes of each node's most seen while sharing, and the
  idle counts. The load generator's keep-alive connections, at most one per node, are among
  them (their most seen is reported too);
* witness requests per checkpoint: ``add-checkpoint`` requests the nodes answered (their
  ``/metrics``) over checkpoints the nodes signed, during the phase and a settling pause after
  it; with ``ENTENTE_WITNESS_COUNT`` = 5 each log asks min(5, N-1) partners, whatever N is;
* with ``--netns``, convergence after a partition: half the nodes cut off (their links down)
  for ``--partition-seconds`` (default 300) while each node of the other half shares to all
  its partners twice, then healed; the seconds from healing until every one of those shares
  has every partner's receipt (target: under 30 s after a 5-minute partition).

Every share waits for its receipts before the next starts: latency without queueing. The
load generator is this process (httpx for the share, a read-only SQLite query of the origin for
its receipts) on the same two cores; the machine's load average is printed with the figures.

Usage::

    python bench/network.py                 # N = 5, 10, 20; 40 shares each
    python bench/network.py --quick         # N = 3, 6 shares: only checks that everything runs
    python bench/network.py --sizes 5 10 --shares 100 --json result.json
    python bench/network.py --netns --rtt-ms 50   # the same, 50 ms round trips between nodes

Figures go to stdout; the JSON result is the last stdout line (or goes to ``--json PATH``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._proc import cpu_seconds, established_tcp, peak_rss, reset_peaks, tree  # noqa: E402
from service.localnet import COMMAND  # noqa: E402
from service.netsim import Link, Star, missing_for_namespaces  # noqa: E402
from service.network import Network, network_env, network_ids, prepare_network  # noqa: E402

SIZE = 4096  # bytes per artifact
TARGET_P99_SECONDS = 3.0  # at N = 20, with 50 ms round trips (DESIGN.md section 10)
WITNESS_COUNT = 5  # ENTENTE_WITNESS_COUNT, the default
SHARE_TIMEOUT = 300.0  # seconds for one share's receipts: a hang, never a measurement
ADD_CHECKPOINT = 'route="/federation/v1/add-checkpoint"'
CONNECTION_SAMPLES = 10  # counts of every node's connections while sharing (more if few shares)


def _db(network: Network, node_id: str) -> Path:
    return network.nodes[node_id].home / "entente.db"


def _query(db: Path, sql: str, *args: Any) -> Any:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        return conn.execute(sql, args).fetchone()


def _checkpoints(network: Network) -> int:
    return sum(
        int(_query(_db(network, n), "SELECT count(*) FROM audit_checkpoints")[0])
        for n in network.nodes
    )


def _witness_requests(network: Network, http: httpx.Client) -> int:
    """``add-checkpoint`` requests answered so far, every node, every status."""
    total = 0.0
    for node in network.nodes.values():
        r = http.get(f"{node.url}/metrics", headers=node.auth("auditor"))
        r.raise_for_status()
        for line in r.text.splitlines():
            if line.startswith("entente_http_requests_total{") and ADD_CHECKPOINT in line:
                total += float(line.rsplit(" ", 1)[1])
    return int(total)


def _pids(network: Network) -> dict[str, list[int]]:
    return {n: tree(node.pid) for n, node in network.nodes.items()}


def _cpu(pids: dict[str, list[int]]) -> dict[str, float]:
    return {n: cpu_seconds(p) for n, p in pids.items()}


def _connections(network: Network) -> dict[str, int]:
    """Each node's ESTABLISHED TCP connections now, accepted and opened (its process tree's
    sockets, in its own network namespace's tables)."""
    return {n: established_tcp(tree(node.pid)) for n, node in network.nodes.items()}


def post_share(network: Network, http: httpx.Client, origin: str, i: int) -> tuple[str, float]:
    """One 4 KiB share from ``origin`` to every partner: its id, and when it was posted."""
    node = network.nodes[origin]
    partners = [n for n in network.nodes if n != origin]
    meta = {"title": f"bench {i}", "tlp": "TLP:GREEN", "topics": ["evaluation"],
            "purposes": ["evaluation"], "partners": partners}  # fmt: skip
    content = (f"{i}-{origin}-".encode() * SIZE)[:SIZE]
    started = time.time()
    r = http.post(
        f"{node.url}/v1/artifacts",
        files={"metadata": (None, json.dumps(meta), "application/json"), "file": ("f", content)},
        headers=node.auth("publisher"),
    )
    if r.status_code != 201:
        raise RuntimeError(f"share refused: {r.status_code} {r.text[:300]}")
    return str(r.json()["id"]), started


RECEIPTS_SQL = (
    "SELECT count(*), max(delivered_at) FROM outbox WHERE artifact_id = ? AND "
    "kind = 'deliver' AND state = 'delivered' AND receipt IS NOT NULL"
)


def receipted(
    network: Network, origin: str, artifact: str, started: float, *, poll: float = 0.01
) -> float:
    """Seconds from ``started`` to the last partner's receipt of ``artifact`` at ``origin``
    (read from the receipts, so ``poll`` does not change the figure)."""
    partners = len(network.nodes) - 1
    deadline = time.monotonic() + SHARE_TIMEOUT
    while time.monotonic() < deadline:
        done, last = _query(_db(network, origin), RECEIPTS_SQL, artifact)
        if done == partners:
            at = datetime.fromisoformat(str(last).replace(" ", "T").replace("Z", "+00:00"))
            if at.tzinfo is None:
                at = at.replace(tzinfo=UTC)  # the database stores UTC
            return max(at.timestamp() - started, 0.0)
        time.sleep(poll)
    raise RuntimeError(f"{artifact} from {origin}: not every receipt within {SHARE_TIMEOUT} s")


def share_to_all(network: Network, http: httpx.Client, origin: str, i: int) -> float:
    """One 4 KiB share from ``origin`` to every partner; seconds to the last receipt."""
    artifact, started = post_share(network, http, origin, i)
    return receipted(network, origin, artifact, started)


def partition_heal(
    network: Network, star: Star, http: httpx.Client, seconds: float, first: int
) -> dict[str, Any]:
    """Cut the first half of the nodes off for ``seconds`` while every node of the other half
    shares to all its partners (at the start and halfway through), heal, and time how long
    the network takes to converge: every one of those shares receipted by every partner.

    The shares come from the reachable half only: this process reaches a node across its link
    too, so a cut node's API is out of its reach as well."""
    ids = list(network.nodes)
    cut, reachable = ids[: len(ids) // 2], ids[len(ids) // 2 :]
    for node_id in cut:
        star.cut(node_id)
    cut_at = time.monotonic()
    shared: list[tuple[str, str]] = []
    for round_ in range(2):
        for k, origin in enumerate(reachable):
            shared.append((origin, post_share(network, http, origin, first + 2 * k + round_)[0]))
        time.sleep(max(0.0, cut_at + seconds * (round_ + 1) / 2 - time.monotonic()))
    for node_id in cut:
        star.heal(node_id)
    healed = time.monotonic()
    waiting = set(shared)
    deadline = healed + SHARE_TIMEOUT
    while waiting and time.monotonic() < deadline:
        for origin, artifact in list(waiting):
            done, _last = _query(_db(network, origin), RECEIPTS_SQL, artifact)
            if done == len(ids) - 1:
                waiting.discard((origin, artifact))
        time.sleep(0.1)
    if waiting:
        raise RuntimeError(f"{len(waiting)} shares not receipted {SHARE_TIMEOUT} s after healing")
    return {
        "partition_seconds": round(healed - cut_at, 1),
        "partitioned_nodes": len(cut),
        "partition_shares": len(shared),
        "converged_s": round(time.monotonic() - healed, 2),
    }


def per_hour(
    cpu: dict[str, float], idle_cpu: dict[str, float], shares: int, phase: float
) -> dict[str, float]:
    """The sharing phase as steady sharing: each node's CPU seconds per hour of it (phase CPU
    x 3600 / phase wall seconds), the share rate it ran at, the idle nodes' CPU per hour, and
    the mean per hour over N-1 (the partners each node sends to and receives from).

    The rate is what the machine managed, so it falls as N grows. The reading that does not
    depend on it is the CPU per delivered copy (whole network): it is also each node's CPU per
    round (every node sharing to all once) over N-1, so it stays flat if each node's work grows
    linearly in N at a fixed rate of shares per node."""
    mean = statistics.mean(cpu.values()) * 3600 / phase
    return {
        "shares_to_all_per_hour": round(shares * 3600 / phase),
        "cpu_s_per_node_per_hour_mean": round(mean, 1),
        "cpu_s_per_node_per_hour_max": round(max(cpu.values()) * 3600 / phase, 1),
        "cpu_s_per_node_per_hour_per_partner": round(mean / (len(cpu) - 1), 1),
        "idle_cpu_s_per_node_per_hour": round(statistics.mean(idle_cpu.values()) * 60, 1),
        "nodes_cores_busy": round(sum(cpu.values()) / phase, 2),
    }


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


@dataclass(frozen=True)
class Running:
    """A network of N nodes started (:func:`running_network`), with its idle CPU measured."""

    network: Network
    star: Star | None  # the namespaces and links, with round trips; None on loopback
    http: httpx.Client
    pids: dict[str, list[int]]  # each node's process tree
    prepare_seconds: float
    start_seconds: float
    idle_cpu_per_second: dict[str, float]  # each node's CPU seconds per second while idle


@contextlib.contextmanager
def running_network(
    n: int,
    *,
    rtt_ms: float | None,
    idle: float,
    keep: bool,
    prefix: str,
    max_connections: int = 100,
) -> Iterator[Running]:
    """``n`` nodes prepared and started as ``entente network up`` does: on loopback, or
    (``rtt_ms``) in network namespaces with that round trip between any two nodes. Waits for
    the first checkpoints and their witnesses, then measures each node's CPU over ``idle``
    seconds of doing nothing; stops the nodes (and removes their homes unless ``keep``) after."""
    root = Path(tempfile.mkdtemp(prefix=f"entente-bench-{prefix}{n}-"))
    ids = network_ids(n)
    star = None if rtt_ms is None else Star({i: Link(rtt_ms / 4) for i in ids}, root)
    t0 = time.perf_counter()
    if star is not None:
        star.up()
    network = prepare_network(
        root, ids, env=network_env(PYTHONPATH=str(ROOT)), command=COMMAND,
        hosts=None if star is None else star.hosts,
    )  # fmt: skip
    prepared = time.perf_counter() - t0
    http = httpx.Client(timeout=120, limits=httpx.Limits(max_connections=max_connections))
    try:
        t0 = time.perf_counter()
        if star is not None:
            for node in network.nodes.values():
                star.place(node)
        network.federation.start()
        started = time.perf_counter() - t0
        time.sleep(3.0)  # the first checkpoints and their witnesses
        pids = _pids(network)
        before = _cpu(pids)
        time.sleep(idle)
        idle_cpu = {k: (v - before[k]) / idle for k, v in _cpu(pids).items()}
        yield Running(network, star, http, pids, prepared, started, idle_cpu)
    finally:
        http.close()
        network.federation.stop()
        if star is not None:
            star.down()
        if keep:
            print(f"N={n}: homes and logs kept in {root}", flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)


def run_size(
    n: int,
    shares: int,
    idle: float,
    keep: bool,
    rtt_ms: float | None = None,
    partition_seconds: float = 0.0,
) -> dict[str, Any]:
    """One network of ``n`` nodes: on loopback, or (``rtt_ms``) in namespaces with that round
    trip between any two nodes, then (``partition_seconds``) a partition of half of them."""
    with running_network(n, rtt_ms=rtt_ms, idle=idle, keep=keep, prefix="net") as running:
        network, star, http, pids = running.network, running.star, running.http, running.pids
        idle_cpu = {k: v * 60 for k, v in running.idle_cpu_per_second.items()}
        idle_conns = _connections(network)  # at the end of the idle window
        reset_peaks([p for ps in pids.values() for p in ps])
        requests0, checkpoints0 = _witness_requests(network, http), _checkpoints(network)
        before = _cpu(pids)
        t0 = time.perf_counter()
        origins = list(network.nodes)
        latencies, conns, samples, ours = [], dict.fromkeys(network.nodes, 0), 0, 0  # the most seen
        every = max(1, shares // CONNECTION_SAMPLES)
        for i in range(shares):
            latencies.append(share_to_all(network, http, origins[i % n], i))
            if (i + 1) % every == 0 or i + 1 == shares:
                conns = {k: max(v, conns[k]) for k, v in _connections(network).items()}
                ours = max(ours, established_tcp([os.getpid()]))
                samples += 1
        phase = time.perf_counter() - t0
        cpu = {k: v - before[k] for k, v in _cpu(pids).items()}
        rss = {k: max(peak_rss(p) for p in ps) / (1 << 20) for k, ps in pids.items()}
        time.sleep(5.0)  # the phase's last checkpoints reach their witnesses
        requests = _witness_requests(network, http) - requests0
        checkpoints = _checkpoints(network) - checkpoints0
        partition: dict[str, Any] = {}
        if star is not None and partition_seconds > 0:
            partition = partition_heal(network, star, http, partition_seconds, shares)
    copies = shares * (n - 1)
    return {
        "nodes": n,
        "partners_per_share": n - 1,
        "shares": shares,
        "prepare_seconds": round(running.prepare_seconds, 2),
        "start_seconds": round(running.start_seconds, 2),
        "p50_s": round(statistics.median(latencies), 4),
        "p99_s": round(_percentile(latencies, 0.99), 4),
        "max_s": round(max(latencies), 4),
        "phase_seconds": round(phase, 2),
        "cpu_s_per_node_mean": round(statistics.mean(cpu.values()), 3),
        "cpu_s_per_node_max": round(max(cpu.values()), 3),
        "cpu_ms_per_delivered_copy": round(1000 * sum(cpu.values()) / copies, 2),
        "idle_cpu_s_per_node_per_minute": round(statistics.mean(idle_cpu.values()), 3),
        **per_hour(cpu, idle_cpu, shares, phase),
        "connections_per_node_mean": round(float(statistics.mean(conns.values())), 1),
        "connections_per_node_max": max(conns.values()),
        "connections_samples": samples,
        "load_generator_connections_max": ours,  # its keep-alive ones: at most 1 per node
        "idle_connections_per_node_mean": round(float(statistics.mean(idle_conns.values())), 1),
        "idle_connections_per_node_max": max(idle_conns.values()),
        "peak_rss_mib_per_node_mean": round(statistics.mean(rss.values()), 1),
        "peak_rss_mib_per_node_max": round(max(rss.values()), 1),
        "witnesses_per_log": min(WITNESS_COUNT, n - 1),
        "witness_requests": requests,
        "checkpoints": checkpoints,
        "witness_requests_per_checkpoint": round(requests / checkpoints, 2)
        if checkpoints
        else None,
        **partition,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 10, 20], help="values of N")
    parser.add_argument("--shares", type=int, default=40, help="shares to all per N")
    parser.add_argument("--idle", type=float, default=10.0, help="idle window, seconds")
    parser.add_argument("--quick", action="store_true", help="N = 3, 6 shares")
    parser.add_argument("--json", type=Path, help="also write the JSON result here")
    parser.add_argument("--keep", action="store_true", help="keep the nodes' homes and logs")
    parser.add_argument(
        "--netns", action="store_true", help="nodes in network namespaces (root, iproute2)"
    )
    parser.add_argument(
        "--rtt-ms", type=float, default=50.0, help="with --netns: round trip between two nodes"
    )
    parser.add_argument(
        "--partition-seconds", type=float, default=300.0,
        help="with --netns: then cut half the nodes off this long, heal, time the convergence",
    )  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.shares, args.idle, args.partition_seconds = [3], 6, 2.0, 4.0
    if args.netns and (missing := missing_for_namespaces()) is not None:
        raise SystemExit(f"--netns needs {missing[0]}: {missing[1]}")
    rtt = args.rtt_ms if args.netns else None
    load_before = os.getloadavg()[0]
    sizes: dict[str, Any] = {}
    for n in args.sizes:
        row = run_size(n, args.shares, args.idle, args.keep, rtt, args.partition_seconds)
        sizes[str(n)] = row
        print(
            f"N={n:>2}: share to {n - 1} partners p50 {row['p50_s']:.3f} s, p99 "
            f"{row['p99_s']:.3f} s; CPU per node {row['cpu_s_per_node_mean']:.2f} s (max "
            f"{row['cpu_s_per_node_max']:.2f}) over {row['phase_seconds']:.1f} s, "
            f"{row['cpu_ms_per_delivered_copy']:.1f} ms per delivered copy; idle "
            f"{row['idle_cpu_s_per_node_per_minute']:.2f} CPU s/min per node; peak RSS "
            f"{row['peak_rss_mib_per_node_max']:.0f} MiB; witness requests per checkpoint "
            f"{row['witness_requests_per_checkpoint']} (witnesses per log "
            f"{row['witnesses_per_log']}); started in {row['start_seconds']:.1f} s",
            flush=True,
        )
        print(
            f"      steady sharing at {row['shares_to_all_per_hour']} shares to all per hour: "
            f"CPU per node {row['cpu_s_per_node_per_hour_mean']:.0f} s per hour (max "
            f"{row['cpu_s_per_node_per_hour_max']:.0f}; / (N-1): "
            f"{row['cpu_s_per_node_per_hour_per_partner']:.1f}); idle "
            f"{row['idle_cpu_s_per_node_per_hour']:.0f} s per hour; the nodes kept "
            f"{row['nodes_cores_busy']:.2f} cores busy. Established TCP connections per node "
            f"while sharing {row['connections_per_node_mean']:.1f} (max "
            f"{row['connections_per_node_max']}), idle {row['idle_connections_per_node_mean']:.1f} "
            f"(max {row['idle_connections_per_node_max']}); the load generator's own, at most "
            f"one per node: {row['load_generator_connections_max']}",
            flush=True,
        )
        if "converged_s" in row:
            print(
                f"      {row['partitioned_nodes']} of {n} nodes cut off for "
                f"{row['partition_seconds']:.0f} s while {row['partition_shares']} shares went "
                f"out: every receipt {row['converged_s']:.1f} s after healing",
                flush=True,
            )
    result = {
        "quick": args.quick,
        "sizes": sizes,
        "target_p99_s_at_20": TARGET_P99_SECONDS,
        "loopback": not args.netns,
        "rtt_ms": rtt,
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }
    line = json.dumps(result, sort_keys=True)
    if args.json:
        args.json.write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
