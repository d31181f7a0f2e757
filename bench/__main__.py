"""Run every benchmark and publish the figures: ``python -m bench`` (or ``./dev bench``).

Each benchmark runs alone in its own process (``bench/<name>.py [--quick] --json FILE``), so one
cannot warm or starve another. The runner collects their JSON results into
``bench/results/latest.json`` and writes ``docs/performance.md``: each figure beside its peer's
figure from the same run, the ratio, the target of DESIGN.md section 10, and whether it holds.

    python -m bench                  # full sizes (takes a while: 1 GiB files, 10M-entry logs)
                                     # and the scaling runs (sync and audit at 1x, 10x, 100x)
    python -m bench --quick          # small sizes, only to check that everything runs
    python -m bench --only seal api  # a subset (no scaling runs unless --scale), merged into
                                     # the last full record (bench/results/latest.json)
    python -m bench --no-scale       # every benchmark, without the scaling runs
    python -m bench --render         # run nothing: rewrite the tables from latest.json

The tables go between the ``<!-- bench:begin -->`` and ``<!-- bench:end -->`` markers of
``docs/performance.md``; the text around them (profiles, what does not hold and why) is kept.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCHES = ("seal", "policy", "api", "sync", "audit", "pq", "profile", "network", "replicas")


def _get(data: Any, *path: str | int) -> Any:
    for key in path:
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _policy(data: Any, engine: str, field: str) -> Any:
    for row in _get(data, "results") or []:
        if row.get("engine") == engine and row.get("scenario") == "mixed":
            return row.get(field)
    return None


@dataclass(frozen=True)
class Row:
    bench: str
    what: str
    ours: Callable[[Any], Any]
    peer_label: str
    peer: Callable[[Any], Any]
    target: str
    holds: Callable[[Any], bool | None]
    unit: str
    # What bounds the figure on this machine, measured in the same run: (what, value in
    # ``unit``), or None. Not a target: how close to the ceiling the figure already is.
    limit: Callable[[Any], tuple[str, Any] | None] = lambda d: None


def _limit(what: str, *path: str) -> Callable[[Any], tuple[str, Any] | None]:
    def read(d: Any) -> tuple[str, Any] | None:
        value = _get(d, *path)
        return None if value is None else (what, value)

    return read


def _limit_cell(row: Row, ours: Any, data: Any) -> str:
    found = row.limit(data)
    if found is None:
        return "-"
    what, value = found
    # rates: ours / limit; times (lower is better): limit / ours
    share = _ratio(ours, value) if row.unit.endswith("/s") else _ratio(value, ours)
    at = f" (at {100 * share:.0f}%)" if share else ""
    return f"{what}: {_fmt(value)} {row.unit}{at}"


def _ratio(a: Any, b: Any) -> float | None:
    try:
        return float(a) / float(b) if a is not None and b else None
    except (TypeError, ValueError):
        return None


def _at_least(value: Any, bound: float) -> bool | None:
    return None if value is None else float(value) >= bound


def _below(value: Any, bound: float) -> bool | None:
    return None if value is None else float(value) < bound


def _at_most(value: Any, bound: float) -> bool | None:
    return None if value is None else float(value) <= bound


ROWS = [
    Row(
        "seal",
        "seal 1 GiB (hash + encrypt + sign)",
        lambda d: _get(d, "seal", "entente_mb_s"),
        "age -r + sha256sum",
        lambda d: _get(d, "seal", "peer_mb_s"),
        "ratio >= 1.2",
        lambda d: _at_least(_get(d, "seal", "ratio"), 1.2),
        "MB/s",
        _limit("SHA-256 beside ChaCha20-Poly1305 alone", "limit_mb_s"),
    ),
    Row(
        "seal",
        "seal peak RSS",
        lambda d: _get(d, "seal", "peak_rss_mib"),
        "",
        lambda d: None,
        "< 64 MiB",
        lambda d: _below(_get(d, "seal", "peak_rss_mib"), 64),
        "MiB",
    ),
    Row(
        "seal",
        "open 1 GiB (decrypt + verify)",
        lambda d: _get(d, "open", "entente_mb_s"),
        "age -d + sha256sum",
        lambda d: _get(d, "open", "peer_mb_s"),
        "ratio >= 1.2",
        lambda d: _at_least(_get(d, "open", "ratio"), 1.2),
        "MB/s",
        _limit("SHA-256 beside ChaCha20-Poly1305 alone", "limit_mb_s"),
    ),
    Row(
        "seal",
        "open peak RSS",
        lambda d: _get(d, "open", "peak_rss_mib"),
        "",
        lambda d: None,
        "< 64 MiB",
        lambda d: _below(_get(d, "open", "peak_rss_mib"), 64),
        "MiB",
    ),
    Row(
        "seal",
        "`entente seal` 1 GiB, the CLI from a passphrase-protected home (best of the rounds)",
        lambda d: _get(d, "cli", "protected", "seal_mb_s"),
        "age -r + sha256sum (best)",
        lambda d: _get(d, "cli", "peer_mb_s", "seal"),
        "ratio >= 1.2",
        lambda d: _at_least(_get(d, "cli", "protected", "seal_ratio"), 1.2),
        "MB/s",
    ),
    Row(
        "seal",
        "`entente open` 1 GiB, the CLI from a passphrase-protected home (best of the rounds)",
        lambda d: _get(d, "cli", "protected", "open_mb_s"),
        "age -d + sha256sum (best)",
        lambda d: _get(d, "cli", "peer_mb_s", "open"),
        "ratio >= 1.2",
        lambda d: _at_least(_get(d, "cli", "protected", "open_ratio"), 1.2),
        "MB/s",
    ),
    Row(
        "seal",
        "`entente seal` 1 GiB peak RSS, home without passphrase",
        lambda d: _get(d, "cli", "plain", "seal_peak_rss_mib"),
        "",
        lambda d: None,
        "< 64 MiB",
        lambda d: _below(_get(d, "cli", "plain", "seal_peak_rss_mib"), 64),
        "MiB",
    ),
    Row(
        "seal",
        "`entente --help` wall time",
        lambda d: _get(d, "cli", "help_seconds"),
        "",
        lambda d: None,
        "< 0.3 s",
        lambda d: _below(_get(d, "cli", "help_seconds"), 0.3),
        "s",
    ),
    Row(
        "seal",
        "184-byte `entente seal`, home without passphrase",
        lambda d: _get(d, "cli", "plain", "small_seal_seconds"),
        "",
        lambda d: None,
        "< 0.5 s",
        lambda d: _below(_get(d, "cli", "plain", "small_seal_seconds"), 0.5),
        "s",
    ),
    Row(
        "seal",
        "184-byte `entente seal`, passphrase-protected home (with the scrypt key unlock)",
        lambda d: _get(d, "cli", "protected", "small_seal_seconds"),
        "",
        lambda d: None,
        "(reported)",
        lambda d: None,
        "s",
    ),
    Row(
        "policy",
        "policy decision p50, 50 rules",
        lambda d: _policy(d, "entente", "p50_us"),
        "cedarpy p50",
        lambda d: _policy(d, "cedarpy", "p50_us"),
        "p50 < 20 µs",
        lambda d: _below(_policy(d, "entente", "p50_us"), 20),
        "µs",
    ),
    Row(
        "api",
        "local shares of 4 KiB, SQLite",
        lambda d: _get(d, "shares_per_second"),
        "bare FastAPI upload (parse, write file)",
        lambda d: _get(d, "bare_uploads_per_second"),
        ">= 1,000/s",
        lambda d: _at_least(_get(d, "shares_per_second"), 1000),
        "/s",
        _limit("HTTP alone (the bare peer)", "bare_uploads_per_second"),
    ),
    Row(
        "api",
        "server CPU per local share",
        lambda d: _get(d, "server_cpu_ms_per_share"),
        "",
        lambda d: None,
        "<= 2 ms (1,000/s on 2 cores)",
        lambda d: _below(_get(d, "server_cpu_ms_per_share"), 2.0001),
        "ms",
        _limit("HTTP alone (the bare peer)", "bare_cpu_ms_per_upload"),
    ),
    Row(
        "api",
        "GET /v1/artifacts request rate",
        lambda d: _get(d, "list_requests_per_second"),
        "bare FastAPI endpoint",
        lambda d: _get(d, "bare_fastapi_requests_per_second"),
        "(ratio reported)",
        lambda d: None,
        "req/s",
    ),
    Row(
        "api",
        "server RSS growth during a 2 GiB upload",
        lambda d: _get(d, "server_rss_growth_mib"),
        "",
        lambda d: None,
        "flat (< 64 MiB)",
        lambda d: _below(_get(d, "server_rss_growth_mib"), 64),
        "MiB",
    ),
    Row(
        "sync",
        "end-to-end delivery, share to receipt",
        lambda d: _get(d, "end_to_end_per_second"),
        "MISP, published (2-3 s per event)",
        lambda d: 0.5,
        ">= 500/s",
        lambda d: _at_least(_get(d, "end_to_end_per_second"), 500),
        "/s",
        _limit("the crypto alone, one core per node", "crypto_limit", "end_to_end_per_second"),
    ),
    Row(
        "sync",
        "push delivery alone (queued, to receipt)",
        lambda d: _get(d, "push_delivery_per_second"),
        "",
        lambda d: None,
        "(reported)",
        lambda d: None,
        "/s",
    ),
    Row(
        "sync",
        "catch-up pull after a partition",
        lambda d: _get(d, "catchup_per_second"),
        "MISP, published (2-3 s per event)",
        lambda d: 0.5,
        ">= 2,000/s",
        lambda d: _at_least(_get(d, "catchup_per_second"), 2000),
        "/s",
        _limit("the crypto alone, one core per node", "crypto_limit", "catchup_per_second"),
    ),
    Row(
        "pq",
        "post-quantum seal of 1 GiB (hybrid ML-KEM recipients, Ed25519 + ML-DSA-65)",
        lambda d: _get(d, "large", "seal_mib_per_second", "hybrid"),
        "classic seal, same run (X25519, Ed25519)",
        lambda d: _get(d, "large", "seal_mib_per_second", "classic"),
        "time <= 1.05x classic",
        lambda d: _at_most(_get(d, "large", "seal_hybrid_over_classic"), 1.05),
        "MiB/s",
    ),
    Row(
        "pq",
        "post-quantum open of 1 GiB (both signatures checked)",
        lambda d: _get(d, "large", "open_mib_per_second", "hybrid"),
        "classic open, same run",
        lambda d: _get(d, "large", "open_mib_per_second", "classic"),
        "time <= 1.05x classic",
        lambda d: _at_most(_get(d, "large", "open_hybrid_over_classic"), 1.05),
        "MiB/s",
    ),
    Row(
        "pq",
        "post-quantum seal of 4 KiB to 20 parties (origin + 19 partners)",
        lambda d: _get(d, "small_20", "seal_hybrid_us"),
        "classic, same run",
        lambda d: _get(d, "small_20", "seal_classic_us"),
        "(reported)",
        lambda d: None,
        "µs",
    ),
    Row(
        "pq",
        "post-quantum local shares of 4 KiB, SQLite",
        lambda d: _get(d, "nodes", "shares_per_second", "hybrid"),
        "classic-only node, same run",
        lambda d: _get(d, "nodes", "shares_per_second", "classic"),
        ">= 0.90x classic",
        lambda d: _at_least(_get(d, "nodes", "share_hybrid_over_classic"), 0.9),
        "/s",
    ),
    Row(
        "pq",
        "post-quantum end to end, share to signed receipt",
        lambda d: _get(d, "nodes", "end_to_end_per_second", "hybrid"),
        "classic-only nodes, same run",
        lambda d: _get(d, "nodes", "end_to_end_per_second", "classic"),
        "(reported)",
        lambda d: None,
        "/s",
    ),
    Row(
        "audit",
        "durable audit appends",
        lambda d: _get(d, "appends", "durable_appends_per_s"),
        "Tessera on NVMe, published",
        lambda d: _get(d, "peer", "tessera_nvme_writes_per_s"),
        ">= 10,000/s",
        lambda d: _at_least(_get(d, "appends", "durable_appends_per_s"), 10_000),
        "/s",
        _limit("SQLite inserting the same rows alone", "appends", "sqlite_insert_limit_per_s"),
    ),
    Row(
        "audit",
        "inclusion proof p50",
        lambda d: _get(d, "proofs", "proof_ms_p50"),
        "",
        lambda d: None,
        "< 1 ms at 10M",
        lambda d: _below(_get(d, "proofs", "proof_ms_p50"), 1.0),
        "ms",
    ),
    Row(
        "audit",
        "offline verification of the whole log (from its database)",
        lambda d: _get(d, "verify", "verify_db_entries_per_s"),
        "",
        lambda d: None,
        ">= 500,000/s",
        lambda d: _at_least(_get(d, "verify", "verify_db_entries_per_s"), 500_000),
        "/s",
        _limit(
            "reading the rows and SHA-256 alone, no re-encoding",
            "verify",
            "limit",
            "read_and_hash_per_s",
        ),
    ),
    Row(
        "audit",
        "peak memory of that verification (10M entries: verifier, each hashing worker)",
        lambda d: _pair(
            _get(d, "verify", "verify_db_peak_rss_mib"),
            _get(d, "verify", "verify_db_worker_peak_rss_mib"),
        ),
        "",
        lambda d: None,
        "flat (reported)",
        lambda d: None,
        "MiB",
    ),
]

NETWORK_SIZES = (5, 10, 20)  # bench/network.py's N (its --quick runs N = 3: these read n/a)
WITNESS_COUNT = 5  # the default of ENTENTE_WITNESS_COUNT


def _by_size(field: str) -> Callable[[Any], Any]:
    """One bench/network.py figure at each of NETWORK_SIZES, "a / b / c" (None if any lacks)."""

    def read(d: Any) -> Any:
        values = [_get(d, "sizes", str(n), field) for n in NETWORK_SIZES]
        return None if None in values else " / ".join(_fmt(v) for v in values)

    return read


def _latency(n: int) -> Callable[[Any], Any]:
    return lambda d: _pair(_get(d, "sizes", str(n), "p50_s"), _get(d, "sizes", str(n), "p99_s"))


def _witnessing_is_bounded(d: Any) -> bool | None:
    values = [_get(d, "sizes", str(n), "witness_requests_per_checkpoint") for n in NETWORK_SIZES]
    return None if None in values else _at_most(max(values), WITNESS_COUNT)


def _grows_at_most_linearly(d: Any, field: str) -> bool | None:
    first, last = (_get(d, "sizes", str(n), field) for n in (NETWORK_SIZES[0], NETWORK_SIZES[-1]))
    ratio = _ratio(last, first)
    return None if ratio is None else ratio <= NETWORK_SIZES[-1] / NETWORK_SIZES[0]


ROWS += [
    *(
        Row(
            "network",
            f"network of {n} (loopback): share to all {n - 1} partners, p50 / p99 to the last "
            "receipt",
            _latency(n),
            "",
            lambda d: None,
            "p99 < 3 s with 50 ms round trips (not simulated here)" if n == 20 else "(reported)",
            lambda d: None,
            "s",
        )
        for n in NETWORK_SIZES
    ),
    Row(
        "network",
        "CPU seconds per node over the sharing phase (mean), N = 5 / 10 / 20",
        _by_size("cpu_s_per_node_mean"),
        "",
        lambda d: None,
        "at most linear in N",
        lambda d: _grows_at_most_linearly(d, "cpu_s_per_node_mean"),
        "s",
    ),
    Row(
        "network",
        "peak RSS per node (max), N = 5 / 10 / 20",
        _by_size("peak_rss_mib_per_node_max"),
        "",
        lambda d: None,
        "at most linear in N",
        lambda d: _grows_at_most_linearly(d, "peak_rss_mib_per_node_max"),
        "MiB",
    ),
    Row(
        "network",
        "CPU s per node per hour of steady sharing, / (N-1), N = 5 / 10 / 20",
        _by_size("cpu_s_per_node_per_hour_per_partner"),
        "",
        lambda d: None,
        "(reported: the share rate falls with N on two cores)",
        lambda d: None,
        "s",
    ),
    Row(
        "network",
        "established TCP connections per node while sharing (max), N = 5 / 10 / 20",
        _by_size("connections_per_node_max"),
        "",
        lambda d: None,
        "(reported)",
        lambda d: None,
        "",
    ),
    Row(
        "network",
        "witness requests per checkpoint, N = 5 / 10 / 20",
        _by_size("witness_requests_per_checkpoint"),
        "",
        lambda d: None,
        "<= 5 (ENTENTE_WITNESS_COUNT), not N-1",
        _witnessing_is_bounded,
        "",
    ),
]


REPLICAS = (1, 2, 3)  # bench/replicas.py's replica counts


def _by_replicas(field: str) -> Callable[[Any], Any]:
    """One bench/replicas.py figure with each of REPLICAS replicas, "a / b / c" (None if any
    lacks)."""

    def read(d: Any) -> Any:
        values = [_get(d, "replicas", str(k), field) for k in REPLICAS]
        return None if None in values else " / ".join(_fmt(v) for v in values)

    return read


def _setup_ms(d: Any, setup: tuple[str, ...], phase: str, groups: tuple[str, ...]) -> Any:
    """CPU milliseconds per artifact of ``groups``' processes in one phase of one setup of a
    bench/replicas.py result ``d``: what the setup spent, not the client nor other work."""
    cpu, n = _get(d, *setup, phase), _get(d, "n")
    if not isinstance(cpu, dict) or not n:
        return None
    return round(1000 * sum(cpu.get(f"{g}_cpu_s", 0.0) for g in groups) / n, 2)


SHARE_SIDE = ("replicas", "postgres", "seaweedfs")  # the origin's processes and its stores
DELIVERY_SIDE = (*SHARE_SIDE, "partner")


def _cpu_by_replicas(phase: str, groups: tuple[str, ...]) -> Callable[[Any], Any]:
    def read(d: Any) -> Any:
        values = [_setup_ms(d, ("replicas", str(k)), phase, groups) for k in REPLICAS]
        return None if None in values else " / ".join(_fmt(v) for v in values)

    return read


def _big(store: str, field: str) -> Callable[[Any], Any]:
    return lambda d: _get(d, "big", store, field)


ROWS += [
    Row(
        "replicas",
        "local shares of 4 KiB, 1 / 2 / 3 replicas (one process each) on PostgreSQL + SeaweedFS",
        _by_replicas("shares_per_second"),
        "one process, SQLite + filesystem, same run",
        lambda d: _get(d, "peer", "shares_per_second"),
        "(reported)",
        lambda d: None,
        "/s",
    ),
    Row(
        "replicas",
        "end-to-end delivery, share to receipt, 1 / 2 / 3 replicas on PostgreSQL + SeaweedFS",
        _by_replicas("end_to_end_per_second"),
        "one process, SQLite + filesystem, same run",
        lambda d: _get(d, "peer", "end_to_end_per_second"),
        "(reported)",
        lambda d: None,
        "/s",
    ),
    Row(
        "replicas",
        "CPU per local share (replicas + PostgreSQL + SeaweedFS), 1 / 2 / 3 replicas",
        _cpu_by_replicas("share_cpu", SHARE_SIDE),
        "one process, SQLite + filesystem",
        lambda d: _setup_ms(d, ("peer",), "share_cpu", SHARE_SIDE),
        "(reported)",
        lambda d: None,
        "ms",
    ),
    Row(
        "replicas",
        "CPU per delivered share (origin, its stores and the partner), 1 / 2 / 3 replicas",
        _cpu_by_replicas("end_to_end_cpu", DELIVERY_SIDE),
        "one process, SQLite + filesystem",
        lambda d: _setup_ms(d, ("peer",), "end_to_end_cpu", DELIVERY_SIDE),
        "(reported)",
        lambda d: None,
        "ms",
    ),
    Row(
        "replicas",
        "share of 1 GiB through the API, blobs on SeaweedFS (multipart upload)",
        _big("s3", "share_mib_per_second"),
        "the same, blobs on the filesystem",
        _big("filesystem", "share_mib_per_second"),
        "(reported)",
        lambda d: None,
        "MiB/s",
    ),
    Row(
        "replicas",
        "server peak RSS during that share, growth over its RSS before",
        lambda d: _pair(
            _get(d, "big", "s3", "share_peak_rss_mib"), _big("s3", "share_rss_growth_mib")(d)
        ),
        "",
        lambda d: None,
        "flat (growth < 64 MiB)",
        lambda d: _below(_get(d, "big", "s3", "share_rss_growth_mib"), 64),
        "MiB",
    ),
    Row(
        "replicas",
        "download of that 1 GiB (decrypt + verify) from SeaweedFS through the API",
        _big("s3", "open_mib_per_second"),
        "the same, blobs on the filesystem",
        _big("filesystem", "open_mib_per_second"),
        "(reported)",
        lambda d: None,
        "MiB/s",
    ),
    Row(
        "replicas",
        "server peak RSS during that download, growth over its RSS before",
        lambda d: _pair(
            _get(d, "big", "s3", "open_peak_rss_mib"), _big("s3", "open_rss_growth_mib")(d)
        ),
        "",
        lambda d: None,
        "flat (growth < 64 MiB)",
        lambda d: _below(_get(d, "big", "s3", "open_rss_growth_mib"), 64),
        "MiB",
    ),
]


def _pair(a: Any, b: Any) -> str | None:
    return None if a is None or b is None else f"{_fmt(a)}, {_fmt(b)}"


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.1f}" if value >= 10 else f"{value:,.3g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _table(results: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    lines = [
        f"- run: {meta['when']}, {'quick sizes' if meta['quick'] else 'full sizes'}",
        f"- machine: {meta['machine']}; 1-minute load average {meta['load_before']} before "
        f"the run, {meta['load_after']} after (other work on the same cores)",
        *[f"- {bench} re-run alone: {when}" for bench, when in meta.get("reruns", {}).items()],
        "",
        "| benchmark | figure | Entente | peer | peer figure | ratio | limit, same run | target "
        "| holds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in ROWS:
        data = results.get(row.bench)
        if data is None:
            continue
        ours, peer = row.ours(data), row.peer(data)
        ratio = _ratio(ours, peer) if row.peer_label else None
        if row.bench == "policy" and ratio:
            ratio = 1 / ratio  # faster is better: peer time / our time
        holds = row.holds(data)
        mark = {True: "yes", False: "**no**", None: "n/a"}[holds]
        lines.append(
            f"| {row.bench} | {row.what} | {_fmt(ours)} {row.unit} | {row.peer_label or '-'} | "
            f"{_fmt(peer) + ' ' + row.unit if row.peer_label else '-'} | "
            f"{_fmt(ratio) + 'x' if ratio else '-'} | {_limit_cell(row, ours, data)} | "
            f"{row.target} | {mark} |"
        )
    return lines


def _growth(first: float, last: float, factor: int) -> str:
    """How a cost grew over a ``factor`` times larger run, against linear growth."""
    if not first:
        return "n/a"
    ratio = last / first
    if ratio <= factor:
        verdict = "linear or better"
    elif ratio <= factor * 1.25:
        verdict = f"{100 * (ratio / factor - 1):.0f}% above linear"
    else:
        verdict = "WORSE than linear"
    return f"{ratio:,.1f}x ({verdict})"


def _scale_table(scale: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    sync = scale.get("sync")
    if sync:
        steps = sync["steps"]
        lines += [
            f"Delivery between two nodes (bench/sync.py --scale {sync['base']}): seconds for the "
            "whole phase, artifacts per second, and the peak resident memory of each node's "
            "process during it.",
            "",
            "| phase | " + " | ".join(f"{st['n']:,} artifacts" for st in steps) + " | time grew "
            f"({steps[-1]['factor']}x the work) | memory grew |",
            "|---|" + "---|" * (len(steps) + 2),
        ]
        for phase in ("e2e", "push", "catchup"):
            cells = []
            for st in steps:
                p = st[phase]
                mem = ", ".join(f"{k} {v:,.0f}" for k, v in p["peak_rss_mib"].items())
                cells.append(f"{p['seconds']:,.1f} s ({p['per_second']:,.0f}/s); {mem} MiB")
            first, last = steps[0][phase], steps[-1][phase]
            mem_first = max(first["peak_rss_mib"].values())
            mem_last = max(last["peak_rss_mib"].values())
            lines.append(
                f"| {phase} | " + " | ".join(cells) + f" | "
                f"{_growth(first['seconds'], last['seconds'], steps[-1]['factor'])} | "
                f"{mem_first:,.0f} -> {mem_last:,.0f} MiB |"
            )
        lines.append("")
    audit = scale.get("audit")
    if audit:
        steps = audit["steps"]
        lines += [
            f"Audit log (bench/audit.py --scale {audit['base']}): durable appends (with the "
            "sequencer alongside) and verification of the resulting log from its database, "
            "each step in its own process.",
            "",
            "| step | " + " | ".join(f"{st['n']:,} entries" for st in steps) + " | time grew "
            f"({steps[-1]['factor']}x the work) | memory grew |",
            "|---|" + "---|" * (len(steps) + 2),
        ]
        for label, t, rate, mem in (
            ("appends", "appends_s", "appends_per_s", "appends_peak_rss_mib"),
            ("verification", "verify_s", "verify_per_s", "verify_peak_rss_mib"),
        ):
            cells = [f"{st[t]:,.1f} s ({st[rate]:,.0f}/s); {st[mem]:,.0f} MiB" for st in steps]
            lines.append(
                f"| {label} | " + " | ".join(cells) + " | "
                f"{_growth(steps[0][t], steps[-1][t], steps[-1]['factor'])} | "
                f"{steps[0][mem]:,.0f} -> {steps[-1][mem]:,.0f} MiB |"
            )
        lines.append("")
    return lines


BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def _markdown(results: dict[str, Any], meta: dict[str, Any], scale: dict[str, Any]) -> str:
    lines = [
        BEGIN,
        "<!-- written by `./dev bench` (python -m bench); edit the text outside the markers -->",
        "",
        *_table(results, meta),
        "",
    ]
    if scale:
        lines += ["### How cost grows", "", *_scale_table(scale)]
    profile = results.get("profile")
    if profile:
        from bench.profile import markdown as profile_markdown

        lines += [
            "### Where the time goes (bench/profile.py)",
            "",
            profile_markdown(profile.get("share"), profile.get("verify"), profile.get("receive")),
        ]
    lines.append(END)
    return "\n".join(lines)


def _publish(path: Path, block: str) -> None:
    """Put ``block`` between the markers of ``path``, keeping the text around them."""
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + block + tail
    else:
        text = (
            "# Performance\n\nEvery figure and its peer come from the same run on the same "
            "machine. Targets are DESIGN.md section 10. Raw results: "
            "`bench/results/latest.json`.\n\n" + block + "\n"
        )
    path.write_text(text)


def _run(name: str, cmd: list[str], out: Path) -> Any:
    print(f"== {name}", flush=True)
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, check=False)
    if proc.returncode != 0 or not out.exists():
        print(f"   {name} failed (exit {proc.returncode})", flush=True)
        return None
    print(f"   {name} done in {time.monotonic() - started:.0f} s", flush=True)
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: checks that all run")
    parser.add_argument("--only", nargs="*", choices=BENCHES, help="run only these")
    parser.add_argument(
        "--scale",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also run the scaling runs (default: on a full run of every benchmark)",
    )
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "performance.md")
    parser.add_argument(
        "--render",
        action="store_true",
        help="run nothing: rewrite the report's tables from the results' latest.json",
    )
    args = parser.parse_args(argv)
    if args.render:
        saved = json.loads((args.results / "latest.json").read_text())
        block = _markdown(saved["results"], saved["meta"], saved.get("scale", {}))
        _publish(args.docs, block)
        print(block)
        return 0
    results: dict[str, Any] = {}
    scale: dict[str, Any] = {}
    failed = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="entente-bench-") as tmp:
        for name in args.only or BENCHES:
            out = Path(tmp) / f"{name}.json"
            cmd = [sys.executable, str(ROOT / "bench" / f"{name}.py"), "--json", str(out)]
            if args.quick:
                cmd.append("--quick")
            data = _run(name, cmd, out)
            if data is None:
                failed.append(name)
            else:
                results[name] = data
        run_scale = args.scale if args.scale is not None else not (args.quick or args.only)
        for name in ("sync", "audit") if run_scale else ():
            out = Path(tmp) / f"{name}-scale.json"
            cmd = [
                sys.executable,
                str(ROOT / "bench" / f"{name}.py"),
                "--scale",
                "--json",
                str(out),
            ]
            if args.quick:
                cmd.append("--quick")
            data = _run(f"{name} --scale", cmd, out)
            if data is None:
                failed.append(f"{name} --scale")
            else:
                scale[name] = data
    meta = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick,
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        ),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }
    args.results.mkdir(parents=True, exist_ok=True)
    name = "latest-quick.json" if args.quick else "latest.json"
    path = args.results / name
    if args.only and path.exists():
        # A partial run updates the last full record: the other benchmarks keep their figures.
        previous = json.loads(path.read_text())
        reruns = previous["meta"].setdefault("reruns", {})
        for bench in results:
            reruns[bench] = f"{meta['when']} (load {meta['load_before']} -> {meta['load_after']})"
        previous["results"].update(results)
        if scale:
            previous.setdefault("scale", {}).update(scale)
        meta, results, scale = previous["meta"], previous["results"], previous.get("scale", {})
    record: dict[str, Any] = {"meta": meta, "results": results}
    if scale:
        record["scale"] = scale
    path.write_text(json.dumps(record, indent=2) + "\n")
    block = _markdown(results, meta, scale)
    if not args.quick:
        args.docs.parent.mkdir(parents=True, exist_ok=True)
        _publish(args.docs, block)
    print(block)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
