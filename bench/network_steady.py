"""Benchmark: a network of N nodes sharing at a FIXED rate per node, to show how each node's
work grows with N.

``bench/network.py`` sends one share to all at a time, back to back, so its rate is whatever
the machine manages and falls as N grows: its per-hour figures cannot say how a node's work
grows at a given rate. Here every node shares to all its N-1 partners ``--rate`` times a
minute (the network's shares go out evenly spaced, each node in turn, whether or not the
earlier ones have their receipts: an open loop, as institutes publish) for ``--seconds``.
At a fixed rate per node, each node seals its own shares and receives and receipts N-1 others'
shares per round, so its work should grow as N-1: the CPU per node per hour of sharing, less
its idle CPU, over N-1 (``active_cpu_s_per_node_per_hour_per_partner``) stays flat if it does.

On two cores a fixed rate per node loads the machine as N(N-1): at N = 20 the contention for
the cores inflates every process's CPU, so the growth of the design and the contention cannot
be told apart. ``--copies-per-second C`` instead picks, for each N, the rate per node that
delivers C copies a second in the whole network (C x 60 / (N (N-1)) shares per node per
minute): the same load on the machine at every N. Then the CPU per delivered copy, flat across
N, is what says that each node's work at a fixed rate grows linearly (a node's copies grow as
N-1).

Figures per N: that, beside the raw CPU per node per hour (mean, max) and the idle CPU per
hour measured before the phase; the cores the nodes kept busy; the CPU per delivered copy
with and without the idle share; share to all receipts (p50, p99, max: from the start of the
``POST`` to the last partner's receipt stored at the origin), which here includes the queueing
that overlapping shares cause. ``--netns --rtt-ms 50`` runs it with the nodes in network
namespaces and 50 ms round trips between any two (``service.netsim``), as ``bench/network.py``.

Usage::

    python bench/network_steady.py                        # N = 5, 10, 20; 2 shares/node/min, 120 s
    python bench/network_steady.py --netns --rtt-ms 50    # with 50 ms round trips
    python bench/network_steady.py --copies-per-second 6  # the same machine load at every N
    python bench/network_steady.py --quick                # N = 3, 10 s: only checks it runs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._proc import reset_peaks  # noqa: E402
from bench.network import (  # noqa: E402
    TARGET_P99_SECONDS,
    _cpu,
    _percentile,
    _pids,
    post_share,
    receipted,
    running_network,
)
from service.netsim import missing_for_namespaces  # noqa: E402
from service.network import Network  # noqa: E402

POLL = 0.05  # seconds between looks at an origin's receipts (the latency is read from them)


def steady(
    network: Network, http: httpx.Client, rate: float, seconds: float
) -> tuple[list[tuple[float, str, str]], dict[str, float], float, int]:
    """Every node shares to all ``rate`` times a minute for ``seconds``, evenly spaced over the
    network. Returns the latencies (each with its share's origin and artifact id), each node's
    CPU seconds over the phase, the phase's wall seconds and the shares sent. The CPU is read
    over the phase only; the receipts of the last shares are waited for after it."""
    ids = list(network.nodes)
    interval = 60.0 / (rate * len(ids))
    pids = _pids(network)
    reset_peaks([p for ps in pids.values() for p in ps])
    latencies: list[tuple[float, str, str]] = []
    lock = threading.Lock()

    def one(origin: str, i: int) -> None:
        artifact, started = post_share(network, http, origin, i)
        took = receipted(network, origin, artifact, started, poll=POLL)
        with lock:
            latencies.append((took, origin, artifact))

    before = _cpu(pids)
    t0 = time.monotonic()
    futures = []
    with ThreadPoolExecutor(max_workers=64, thread_name_prefix="share") as pool:
        i = 0
        while (due := t0 + i * interval) < t0 + seconds:
            time.sleep(max(0.0, due - time.monotonic()))
            futures.append(pool.submit(one, ids[i % len(ids)], i))
            i += 1
        time.sleep(max(0.0, t0 + seconds - time.monotonic()))
        cpu = {k: v - before[k] for k, v in _cpu(pids).items()}
        phase = time.monotonic() - t0
        for future in futures:
            future.result()  # every share receipted (or the error that stopped it)
    return latencies, cpu, phase, i


def run_size(
    n: int, rate: float, seconds: float, idle: float, rtt_ms: float | None, keep: bool
) -> dict[str, Any]:
    with running_network(
        n, rtt_ms=rtt_ms, idle=idle, keep=keep, prefix="steady", max_connections=64
    ) as running:
        idle_per_hour = {k: v * 3600 for k, v in running.idle_cpu_per_second.items()}
        timed, cpu, phase, shares = steady(running.network, running.http, rate, seconds)
    latencies = [took for took, _, _ in timed]
    per_hour = {k: v * 3600 / phase for k, v in cpu.items()}
    active = {k: per_hour[k] - idle_per_hour[k] for k in per_hour}
    mean_active = statistics.mean(active.values())
    copies = shares * (n - 1)
    return {
        "nodes": n,
        "rate_per_node_per_minute": rate,
        "shares": shares,
        "phase_seconds": round(phase, 1),
        "p50_s": round(statistics.median(latencies), 4),
        "p99_s": round(_percentile(latencies, 0.99), 4),
        "max_s": round(max(latencies), 4),
        "slowest": [
            {"seconds": round(took, 3), "origin": origin, "artifact": artifact}
            for took, origin, artifact in sorted(timed, reverse=True)[:3]
        ],
        "cpu_s_per_node_per_hour_mean": round(statistics.mean(per_hour.values()), 1),
        "cpu_s_per_node_per_hour_max": round(max(per_hour.values()), 1),
        "idle_cpu_s_per_node_per_hour": round(statistics.mean(idle_per_hour.values()), 1),
        "active_cpu_s_per_node_per_hour_mean": round(mean_active, 1),
        "active_cpu_s_per_node_per_hour_per_partner": round(mean_active / (n - 1), 2),
        "nodes_cores_busy": round(sum(cpu.values()) / phase, 2),
        "cpu_ms_per_delivered_copy": round(1000 * sum(cpu.values()) / copies, 1),
        "active_cpu_ms_per_delivered_copy": round(
            1000 * sum(active.values()) * phase / 3600 / copies, 1
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 10, 20], help="values of N")
    parser.add_argument("--rate", type=float, default=2.0, help="shares to all per node per minute")
    parser.add_argument(
        "--copies-per-second", type=float, default=None,
        help="instead of --rate: the rate per node that delivers this many copies a second in "
        "the whole network at every N (the same load on the machine)",
    )  # fmt: skip
    parser.add_argument("--seconds", type=float, default=120.0, help="sharing phase, seconds")
    parser.add_argument(
        "--idle", type=float, default=40.0,
        help="idle window, seconds (longer than the 30 s feed pull, so that it is counted)",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="N = 3, 10 s")
    parser.add_argument("--json", type=Path, help="also write the JSON result here")
    parser.add_argument("--keep", action="store_true", help="keep the nodes' homes and logs")
    parser.add_argument(
        "--netns", action="store_true", help="nodes in network namespaces (root, iproute2)"
    )
    parser.add_argument(
        "--rtt-ms", type=float, default=50.0, help="with --netns: round trip between two nodes"
    )
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.seconds, args.idle, args.rate = [3], 10.0, 3.0, 6.0
    if args.netns and (missing := missing_for_namespaces()) is not None:
        raise SystemExit(f"--netns needs {missing[0]}: {missing[1]}")
    rtt = args.rtt_ms if args.netns else None
    load_before = os.getloadavg()[0]
    sizes: dict[str, Any] = {}
    for n in args.sizes:
        rate = args.rate
        if args.copies_per_second is not None:
            rate = round(args.copies_per_second * 60 / (n * (n - 1)), 3)
        row = sizes[str(n)] = run_size(n, rate, args.seconds, args.idle, rtt, args.keep)
        print(
            f"N={n:>2} at {rate:g} shares to all per node per minute ({row['shares']} "
            f"shares in {row['phase_seconds']:.0f} s): p50 {row['p50_s']:.3f} s, p99 "
            f"{row['p99_s']:.3f} s to the last receipt; CPU per node per hour "
            f"{row['cpu_s_per_node_per_hour_mean']:.0f} s (max "
            f"{row['cpu_s_per_node_per_hour_max']:.0f}), idle "
            f"{row['idle_cpu_s_per_node_per_hour']:.0f}, active "
            f"{row['active_cpu_s_per_node_per_hour_mean']:.0f} = "
            f"{row['active_cpu_s_per_node_per_hour_per_partner']:.1f} per partner; "
            f"{row['nodes_cores_busy']:.2f} cores busy; "
            f"{row['active_cpu_ms_per_delivered_copy']:.1f} ms active CPU per delivered copy "
            f"({row['cpu_ms_per_delivered_copy']:.1f} with the idle work)",
            flush=True,
        )
    result = {
        "quick": args.quick,
        "sizes": sizes,
        "target_p99_s_at_20": TARGET_P99_SECONDS,
        "loopback": not args.netns,
        "rtt_ms": rtt,
        "copies_per_second": args.copies_per_second,
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }
    line = json.dumps(result, sort_keys=True)
    if args.json:
        args.json.write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
