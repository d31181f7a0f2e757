"""Run every benchmark and publish the figures: ``python -m bench`` (or ``./dev bench``).

Each benchmark runs alone in its own process (``bench/<name>.py [--quick] --json FILE``), so one
cannot warm or starve another. The runner collects their JSON results into
``bench/results/latest.json`` and writes ``docs/performance.md``: each figure beside its peer's
figure from the same run, the ratio, the target of DESIGN.md section 10, and whether it holds.

    python -m bench                  # full sizes (takes a while: 1 GiB files, 10M-leaf trees)
    python -m bench --quick          # small sizes, only to check that everything runs
    python -m bench --only seal api  # a subset
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
BENCHES = ("seal", "policy", "api", "sync", "audit")


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


def _ratio(a: Any, b: Any) -> float | None:
    try:
        return float(a) / float(b) if a is not None and b else None
    except (TypeError, ValueError):
        return None


def _at_least(value: Any, bound: float) -> bool | None:
    return None if value is None else float(value) >= bound


def _below(value: Any, bound: float) -> bool | None:
    return None if value is None else float(value) < bound


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
        "",
        lambda d: None,
        ">= 1,000/s",
        lambda d: _at_least(_get(d, "shares_per_second"), 1000),
        "/s",
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
        "MISP (2-3 s per event)",
        lambda d: 0.5,
        ">= 500/s",
        lambda d: _at_least(_get(d, "end_to_end_per_second"), 500),
        "/s",
    ),
    Row(
        "sync",
        "catch-up pull after a partition",
        lambda d: _get(d, "catchup_per_second"),
        "MISP (2-3 s per event)",
        lambda d: 0.5,
        ">= 2,000/s",
        lambda d: _at_least(_get(d, "catchup_per_second"), 2000),
        "/s",
    ),
    Row(
        "audit",
        "durable audit appends",
        lambda d: _get(d, "appends", "durable_appends_per_s"),
        "Tessera (NVMe)",
        lambda d: _get(d, "peer", "tessera_nvme_writes_per_s"),
        ">= 10,000/s",
        lambda d: _at_least(_get(d, "appends", "durable_appends_per_s"), 10_000),
        "/s",
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
        "offline log verification",
        lambda d: _get(d, "verify", "verify_memory_entries_per_s"),
        "",
        lambda d: None,
        ">= 500,000/s",
        lambda d: _at_least(_get(d, "verify", "verify_memory_entries_per_s"), 500_000),
        "/s",
    ),
]


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.1f}" if value >= 10 else f"{value:,.3g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _markdown(results: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [
        "# Performance",
        "",
        "Written by `./dev bench` (`python -m bench`); every figure and its peer come from the",
        "same run on the same machine. Targets are DESIGN.md section 10. Raw results:",
        "`bench/results/latest.json`.",
        "",
        f"- run: {meta['when']}, {'quick sizes' if meta['quick'] else 'full sizes'}",
        f"- machine: {meta['machine']}",
        "",
        "| benchmark | figure | Entente | peer | peer figure | ratio | target | holds |",
        "|---|---|---|---|---|---|---|---|",
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
            f"{_fmt(ratio) + 'x' if ratio else '-'} | {row.target} | {mark} |"
        )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: checks that all run")
    parser.add_argument("--only", nargs="*", choices=BENCHES, help="run only these")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "performance.md")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    failed = []
    with tempfile.TemporaryDirectory(prefix="entente-bench-") as tmp:
        for name in args.only or BENCHES:
            out = Path(tmp) / f"{name}.json"
            cmd = [sys.executable, str(ROOT / "bench" / f"{name}.py"), "--json", str(out)]
            if args.quick:
                cmd.append("--quick")
            print(f"== {name}", flush=True)
            started = time.monotonic()
            proc = subprocess.run(cmd, cwd=ROOT, check=False)
            if proc.returncode != 0 or not out.exists():
                failed.append(name)
                print(f"   {name} failed (exit {proc.returncode})", flush=True)
                continue
            results[name] = json.loads(out.read_text())
            print(f"   {name} done in {time.monotonic() - started:.0f} s", flush=True)
    meta = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick,
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        ),
    }
    args.results.mkdir(parents=True, exist_ok=True)
    name = "latest-quick.json" if args.quick else "latest.json"
    (args.results / name).write_text(
        json.dumps({"meta": meta, "results": results}, indent=2) + "\n"
    )
    if not args.quick:
        args.docs.parent.mkdir(parents=True, exist_ok=True)
        args.docs.write_text(_markdown(results, meta))
    print(_markdown(results, meta))
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
