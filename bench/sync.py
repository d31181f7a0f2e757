"""Benchmark: federation sync between two real nodes on this machine.

DESIGN.md section 10: end-to-end delivery between two nodes on one machine (share to receipt),
500 artifacts per second; catch-up pull after a partition, 2,000 per second. The peer figure is
MISP's reported 2-3 seconds per event for synchronisation between instances.

Two ``entente serve`` processes (``uk-aisi`` shares, ``us-aisi`` receives) on loopback, SQLite
homes in a temporary folder, the example MOU policies, 4 KiB artifacts. Figures:

* shares/s: ``POST /v1/artifacts`` of N artifacts (a few concurrent publishers) accepted by the
  sharing node (policy check, hash, encrypt, sign, store, audit, outbox row);
* end to end/s: N divided by the time from the first share to the last signed receipt stored at
  the sharing node (sharing, push delivery, verification, storage and receipt together);
* push delivery alone/s: N artifacts queued at the stopped sharing node (same domain code, no
  upload), which then starts: N divided by the time from its start until the last receipt;
* catch-up/s: the receiver is down while N are shared (their pushes fail and are parked by a
  long backoff), then it starts: N divided by the time from its start (healthy) until it holds
  all N, all of them pulled from the sharer's feed (the start-up time is reported beside it).

Beside them, the limit: the cryptography each artifact needs, timed in this process in the same
run (median of many): the sharer seals 4 KiB to itself and the partner and verifies the signed
receipt; the receiver verifies the manifest, decrypts to nowhere and signs the receipt. With the
two nodes on two cores, end to end cannot beat one artifact per the busier node's crypto time,
and catch-up (nothing to seal) one per the receiver's.

``--profile uk,us`` records the nodes with py-spy during each phase (collapsed stacks in the
bench folder, which is then kept). The machine's load average is printed with the figures: the
numbers mean little when other work competes for the same cores.

Usage::

    python bench/sync.py            # N = 2000
    python bench/sync.py --quick    # N = 50: only checks that everything runs
    python bench/sync.py -n 5000 --json result.json
    python bench/sync.py --scale      # 200, 2,000 and 20,000 per phase: how cost grows
    python bench/sync.py --processes 2   # two server processes per node (ENTENTE_WORKERS)

Figures go to stdout; the JSON result is the last stdout line (or goes to ``--json PATH``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._load import request_bytes, run_load  # noqa: E402
from bench._proc import cpu_seconds, peak_rss, reset_peaks, tree  # noqa: E402
from service.localnet import NodeProcess, clean_env, prepare_nodes  # noqa: E402

MISP_SECONDS_PER_EVENT = (2.0, 3.0)  # MISP's reported sync cost per event (the peer)
TARGET_E2E = 500.0  # artifacts per second, share to receipt
TARGET_CATCHUP = 2000.0  # artifacts per second, pull after a partition
SIZE = 4096  # bytes per artifact
BOUNDARY = "entente-bench"


def upload(meta: dict[str, Any], content: bytes) -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n'.encode()
        + json.dumps(meta).encode()
        + f'\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
        'filename="f"\r\n\r\n'.encode()
        + content
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


CLASSIC_ONLY = False  # --classic-only: homes without post-quantum keys (to compare the cost)


def prepare(root: Path, env: dict[str, str]) -> tuple[NodeProcess, NodeProcess]:
    """The two nodes' homes (keys unencrypted: a benchmark's), pinned to each other; not started.
    Post-quantum (hybrid sealing, Ed25519 + ML-DSA-65 signatures) unless ``CLASSIC_ONLY``."""
    nodes = ("uk-aisi", "us-aisi")
    federation = prepare_nodes(
        root, nodes, env=clean_env(**env), classic_only=nodes if CLASSIC_ONLY else ()
    )
    return federation.nodes["uk-aisi"], federation.nodes["us-aisi"]


def share_many(url: str, token: str, n: int, *, tag: str, workers: int) -> float:
    """Share ``n`` artifacts with us-aisi over ``workers`` connections; return the wall time.

    Driven by the raw-socket load generator (``bench/_load.py``): an httpx client would spend
    as much CPU per request as the node it measures, on the same cores."""
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
    }
    meta = {
        "title": "bench",
        "tlp": "TLP:GREEN",
        "topics": ["evaluation"],
        "purposes": ["evaluation"],
        "partners": ["us-aisi"],
    }
    target = f"{url}/v1/artifacts"

    def make(i: int) -> bytes:
        content = (f"{tag}-{i}-".encode() * SIZE)[:SIZE]
        body = upload({**meta, "title": f"bench {tag} {i}"}, content)
        return request_bytes("POST", target, headers=headers, body=body)

    result = asyncio.run(run_load(url, make, concurrency=workers, count=n))
    if result.done != n:
        raise RuntimeError(f"share failed: {dict(result.statuses)} {result.first_error[:200]!r}")
    return result.seconds


def count(db: Path, sql: str) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        value: int = conn.execute(sql).fetchone()[0]
    return value


def wait_until(check: Any, timeout: float, what: str) -> float:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if check():
            return time.perf_counter()
        time.sleep(0.02)
    raise RuntimeError(f"timed out waiting for {what}")


def _spy(profile: str | None, nodes: dict[str, NodeProcess], root: Path, phase: str) -> list[Any]:
    """``--profile uk,us``: py-spy record the named nodes during a phase (collapsed stacks)."""
    import subprocess

    spies = []
    for name in (profile or "").split(","):
        node = nodes.get(name.strip())
        if node is None or node.proc is None:
            continue
        out = root / f"profile-{phase}-{name}.txt"
        spies.append(
            subprocess.Popen(
                [str(Path(sys.executable).with_name("py-spy")), "record",
                 "--pid", str(node.pid), "--format", "raw", "--subprocesses",
                 "--threads", "-o", str(out), "--rate", "200"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )  # fmt: skip
        print(f"profiling {name} during {phase} into {out}", file=sys.stderr)
    time.sleep(0.5 if spies else 0)
    return spies


IDLE = (
    "Condition.wait",
    "EpollSelector.select",
    "_worker (concurrent",
    "Queue.get",
    "SyncStream.read",
)


def summarize_profiles(folder: Path, top: int = 12) -> None:
    """Print the busiest frames (self time, idle waits left out) of each recorded profile."""
    from collections import Counter

    for path in sorted(folder.glob("profile-*.txt")):
        own: Counter[str] = Counter()
        total = 0
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frame = stack.split(";")[-1]
            if frame.startswith(IDLE) or not frame:
                continue
            own[frame] += int(count)
            total += int(count)
        print(f"--- {path.name}: busiest frames ({total} busy samples)")
        for frame, n in own.most_common(top):
            print(f"  {100 * n / max(total, 1):5.1f}%  {frame}")


def _stop_spies(spies: list[Any]) -> None:
    import signal

    for spy in spies:
        spy.send_signal(signal.SIGINT)
    for spy in spies:
        spy.wait(30)


class _Phase:
    """CPU seconds and peak resident memory of each node's processes during one phase."""

    def __init__(self, nodes: dict[str, NodeProcess]) -> None:
        self.nodes = nodes
        self.pids = {k: tree(n.pid) for k, n in nodes.items() if n.proc is not None}
        for pids in self.pids.values():
            reset_peaks(pids)
        self.cpu = {k: cpu_seconds(pids) for k, pids in self.pids.items()}

    def end(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, pids in self.pids.items():
            out[k] = {
                "cpu_seconds": round(cpu_seconds(pids) - self.cpu[k], 2),
                "peak_rss_mib": round(max(peak_rss(p) for p in pids) / (1 << 20), 1),
            }
        return out


def run(n: int, workers: int, profile: str | None, processes: int = 1) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="entente-bench-sync-"))
    env = {
        "ENTENTE_WORKERS": str(processes),
        "ENTENTE_SYNC_INTERVAL_SECONDS": "0.05",
        # The pushes that fail during the partition stay parked for longer than the catch-up
        # takes, so that the phase measures the pull alone (with 120 s, a 20,000-artifact
        # catch-up saw 3,289 of them pushed when the parked pushes woke, and the receiver's
        # memory counted pulled pages and pushed batches together).
        "ENTENTE_RETRY_BASE_SECONDS": str(max(120, n // 10)),
        "ENTENTE_RETRY_MAX_SECONDS": str(max(300, n // 5)),
        "ENTENTE_PULL_INTERVAL_SECONDS": "3600",
        "ENTENTE_LOG_LEVEL": "WARNING",
        "ENTENTE_RATE_LIMIT_PER_MINUTE": "1000000",
    }
    uk, us = prepare(root, env)
    uk_db, us_db = uk.home / "entente.db", us.home / "entente.db"
    delivered_sql = "SELECT count(*) FROM outbox WHERE state='delivered' AND receipt IS NOT NULL"
    held_sql = "SELECT count(*) FROM artifacts WHERE direction='received'"
    nodes = {"uk": uk, "us": us}
    try:
        uk.start()
        us.start()
        # warm up both processes (imports, connections, first signatures)
        share_many(uk.url, uk.tokens["publisher"], 20, tag="warm", workers=2)
        wait_until(lambda: count(uk_db, delivered_sql) >= 20, 60, "warm-up deliveries")

        timeout = max(600.0, n / 20)  # seconds: at least 20 artifacts per second
        phases: dict[str, Any] = {}

        # 1. end to end: share N over HTTP, wait for N receipts
        base = count(uk_db, delivered_sql)
        spies = _spy(profile, nodes, root, "e2e")
        phase = _Phase(nodes)
        t0 = time.perf_counter()
        share_seconds = share_many(uk.url, uk.tokens["publisher"], n, tag="e2e", workers=workers)
        t_done = wait_until(lambda: count(uk_db, delivered_sql) >= base + n, timeout, "receipts")
        e2e_seconds = t_done - t0
        phases["e2e"] = phase.end()
        _stop_spies(spies)

        # 2. push delivery alone: N queued at the stopped sender, then it starts
        uk.stop()
        queue_shares(uk.home, n, tag="push")
        base = count(uk_db, delivered_sql)
        uk.start()
        t_up = time.perf_counter()
        phase = _Phase(nodes)
        spies = _spy(profile, nodes, root, "push")
        t_done = wait_until(lambda: count(uk_db, delivered_sql) >= base + n, timeout, "receipts")
        push_seconds = t_done - t_up
        phases["push"] = phase.end()
        _stop_spies(spies)

        # 3. catch-up: the receiver is down while N are shared; their pushes fail and are
        #    parked by the long backoff; then the receiver starts and pulls the feed
        us.stop()
        uk.stop()
        held_before = count(us_db, held_sql)
        queue_shares(uk.home, n, tag="partition")
        uk.start()
        wait_until(
            lambda: (
                count(uk_db, "SELECT count(*) FROM outbox WHERE state='pending' AND attempts=0")
                == 0
            ),
            timeout,
            "the pushes to fail while the receiver is down",
        )
        t1 = time.perf_counter()
        us.start()
        t_ready = time.perf_counter()
        phase = _Phase(nodes)
        spies = _spy(profile, nodes, root, "catchup")
        t_caught = wait_until(
            lambda: count(us_db, held_sql) >= held_before + n, timeout, "catch-up"
        )
        catchup_seconds = t_caught - t_ready
        phases["catchup"] = phase.end()
        _stop_spies(spies)
        pulled = count(
            us_db,
            "SELECT count(*) FROM audit_entries WHERE kind='receive.accepted' "
            'AND detail LIKE \'%"via":"pull"%\'',
        )
    finally:
        us.stop()
        uk.stop()
    return {
        "n": n,
        "post_quantum": not CLASSIC_ONLY,
        "processes": processes,
        "publishers": workers,
        "artifact_bytes": SIZE,
        "share_per_second": n / share_seconds,
        "end_to_end_per_second": n / e2e_seconds,
        "end_to_end_seconds": e2e_seconds,
        "push_delivery_per_second": n / push_seconds,
        "catchup_per_second": n / catchup_seconds,
        "catchup_seconds": catchup_seconds,
        "receiver_start_seconds": t_ready - t1,
        "catchup_via_pull": pulled,
        "phases": phases,
        "home": str(root),
    }


def crypto_limit(operations: int = 300) -> dict[str, Any]:
    """Median microseconds of each artifact's cryptography (hybrid keys unless
    ``--classic-only``), and the rates it alone allows: see the module docstring."""
    import io
    import statistics
    from datetime import UTC, datetime

    from bench.pq import Party, _seal_kwargs
    from crypto.receipt import Receipt, sign_receipt, verify_receipt
    from crypto.sealed import open_sealed, seal

    hybrid = not CLASSIC_ONLY
    origin, partner = Party("uk-aisi", hybrid=hybrid), Party("us-aisi", hybrid=hybrid)
    payload = os.urandom(SIZE)
    times: dict[str, list[float]] = {"seal": [], "open": [], "sign": [], "verify": []}
    for _ in range(operations):
        sink = io.BytesIO()
        start = time.perf_counter()
        sealed = seal(io.BytesIO(payload), sink, **_seal_kwargs(origin, [origin, partner]))
        times["seal"].append(time.perf_counter() - start)
        start = time.perf_counter()
        open_sealed(
            io.BytesIO(sink.getvalue()), io.BytesIO(), envelope=sealed.envelope,
            identities=[partner.identity], keysets=[origin.signer.public], reader=partner.node_id,
        )  # fmt: skip
        times["open"].append(time.perf_counter() - start)
        receipt = Receipt(
            kind="delivery", artifact_id="art_bench", sha256="0" * 64, receiver=partner.node_id,
            sender=origin.node_id, received_at=datetime.now(UTC),
        )  # fmt: skip
        start = time.perf_counter()
        signed = sign_receipt(receipt, key=partner.signer)
        times["sign"].append(time.perf_counter() - start)
        start = time.perf_counter()
        verify_receipt(
            signed, keysets=[partner.signer.public], expect_kind="delivery",
            artifact_id="art_bench", sha256="0" * 64, receiver=partner.node_id,
            sender=origin.node_id,
        )  # fmt: skip
        times["verify"].append(time.perf_counter() - start)
    us = {k: 1e6 * statistics.median(v) for k, v in times.items()}
    sender, receiver = us["seal"] + us["verify"], us["open"] + us["sign"]
    return {
        "post_quantum": hybrid,
        **{f"{k}_us": round(v, 1) for k, v in us.items()},
        "end_to_end_per_second": round(1e6 / max(sender, receiver)),
        "catchup_per_second": round(1e6 / max(receiver, us["verify"])),
    }


def queue_shares(home: Path, n: int, *, tag: str) -> None:
    """Share ``n`` artifacts in-process at the stopped node ``home`` (same domain code as
    ``POST /v1/artifacts``, without the upload), so a phase can time delivery alone."""
    import io

    from service.artifacts import share as sharing
    from service.artifacts.terms import ShareTerms
    from service.node import load_node
    from service.settings import Settings
    from service.tokens import Principal, Role

    settings = Settings(home=home)
    node = load_node(settings, migrate=True)
    principal = Principal(token_id="tok_bench", name="bench", role=Role.PUBLISHER)  # noqa: S106
    meta = ShareTerms(
        title=f"bench {tag}", tlp="TLP:GREEN", topics=("evaluation",), purposes=("evaluation",),
        partners=("us-aisi",),
    )  # fmt: skip
    try:
        decisions = sharing.decide_share(node, meta, principal=principal)
        for i in range(n):
            content = (f"{tag}-{i}-".encode() * SIZE)[:SIZE]
            sharing.share_artifact(
                node, node.blobs, meta, io.BytesIO(content), principal=principal,
                decisions=decisions,
            )  # fmt: skip
    finally:
        node.db.dispose()


def report(result: dict[str, Any]) -> None:
    lo, hi = MISP_SECONDS_PER_EVENT
    misp_rate = (1 / hi, 1 / lo)
    e2e, catch = result["end_to_end_per_second"], result["catchup_per_second"]
    print(f"artifacts: {result['n']} x {result['artifact_bytes']} bytes, two nodes on loopback")
    load = result["load_average"]
    print(
        f"machine: {result['cpus']} CPUs, 1-minute load average {load[0]} before, {load[1]} after"
        " (anything above 0 is other work competing with the two nodes)"
    )
    print(f"share accepted:      {result['share_per_second']:8.0f} /s")
    print(
        f"end to end:          {e2e:8.0f} /s  (target {TARGET_E2E:.0f}/s: "
        f"{'met' if e2e >= TARGET_E2E else 'NOT met'}; {e2e / TARGET_E2E:.2f}x)"
    )
    print(
        f"push delivery alone: {result['push_delivery_per_second']:8.0f} /s  (queued, to receipt)"
    )
    print(
        f"catch-up pull:       {catch:8.0f} /s  (target {TARGET_CATCHUP:.0f}/s: "
        f"{'met' if catch >= TARGET_CATCHUP else 'NOT met'}; {catch / TARGET_CATCHUP:.2f}x; "
        f"{result['catchup_via_pull']} of {result['n']} by pull; the receiver's start, "
        f"{result['receiver_start_seconds']:.1f} s, not included)"
    )
    limit = result.get("crypto_limit")
    if limit:
        print(
            "limit (crypto alone, one core per node): end to end "
            f"{limit['end_to_end_per_second']:,}/s, catch-up {limit['catchup_per_second']:,}/s "
            f"(seal {limit['seal_us']:.0f} µs, "
            f"open {limit['open_us']:.0f}, receipt sign {limit['sign_us']:.0f}, verify "
            f"{limit['verify_us']:.0f})"
        )
    print(
        f"peer (MISP sync):    {misp_rate[0]:.2f}-{misp_rate[1]:.2f} /s (2-3 s per event): "
        f"end to end {e2e * lo:,.0f}-{e2e * hi:,.0f}x, "
        f"catch-up {catch * lo:,.0f}-{catch * hi:,.0f}x"
    )
    result["misp_per_second"] = list(misp_rate)
    result["ratio_vs_misp_end_to_end"] = [e2e * lo, e2e * hi]
    result["ratio_vs_misp_catchup"] = [catch * lo, catch * hi]


def scale(base: int, workers: int, processes: int) -> dict[str, Any]:
    """The three phases at 1x, 10x and 100x ``base`` artifacts, each on fresh nodes: how the
    time per artifact and the nodes' peak memory grow with the size of the run."""
    steps = []
    for factor in (1, 10, 100):
        n = base * factor
        print(f"scale: {n} artifacts per phase", file=sys.stderr, flush=True)
        result = run(n, workers, None, processes)
        shutil.rmtree(result.pop("home"), ignore_errors=True)
        step: dict[str, Any] = {"factor": factor, "n": n}
        for phase, seconds in (
            ("e2e", result["end_to_end_seconds"]),
            ("push", n / result["push_delivery_per_second"]),
            ("catchup", result["catchup_seconds"]),
        ):
            nodes = result["phases"][phase]
            step[phase] = {
                "seconds": round(seconds, 2),
                "per_second": round(n / seconds, 1),
                "us_per_artifact": round(1e6 * seconds / n, 1),
                "peak_rss_mib": {k: v["peak_rss_mib"] for k, v in nodes.items()},
                "cpu_ms_per_artifact": {
                    k: round(1000 * v["cpu_seconds"] / n, 2) for k, v in nodes.items()
                },
            }
        steps.append(step)
    for step in steps:
        print(
            f"  {step['n']:>7,} artifacts: "
            + "; ".join(
                f"{p} {step[p]['seconds']:.1f} s ({step[p]['per_second']:,.0f}/s, peak RSS "
                + ", ".join(f"{k} {v:.0f} MiB" for k, v in step[p]["peak_rss_mib"].items())
                + ")"
                for p in ("e2e", "push", "catchup")
            )
        )
    return {"benchmark": "sync-scale", "base": base, "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="artifacts per phase")
    parser.add_argument(
        "--scale",
        type=int,
        nargs="?",
        const=200,
        default=None,
        metavar="BASE",
        help="run at 1x, 10x and 100x BASE artifacts (default 200) and report how cost grows",
    )
    parser.add_argument("--quick", action="store_true", help="N = 50")
    parser.add_argument("--workers", type=int, default=16, help="concurrent publishers")
    parser.add_argument(
        "--processes", type=int, default=1, help="server processes per node (ENTENTE_WORKERS)"
    )
    parser.add_argument("--json", type=Path, help="also write the JSON result here")
    parser.add_argument(
        "--classic-only", action="store_true", help="nodes without post-quantum keys"
    )
    parser.add_argument("--keep", action="store_true", help="keep the nodes' homes and logs")
    parser.add_argument(
        "--profile", help="py-spy record these nodes (uk, us, or uk,us) into the bench folder"
    )
    args = parser.parse_args()
    global CLASSIC_ONLY
    CLASSIC_ONLY = args.classic_only
    if args.scale is not None:
        load_before = os.getloadavg()[0]
        grown = scale(2 if args.quick else args.scale, args.workers, args.processes)
        grown["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        line = json.dumps(grown, sort_keys=True)
        if args.json:
            args.json.write_text(line + "\n")
        print(line)
        return
    n = 50 if args.quick else args.n
    load_before = os.getloadavg()[0]
    result = run(n, args.workers, args.profile, args.processes)
    if args.profile:
        summarize_profiles(Path(result["home"]))
    elif not args.keep:
        shutil.rmtree(result.pop("home"), ignore_errors=True)
    result["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    result["cpus"] = os.cpu_count()
    result["crypto_limit"] = crypto_limit(30 if args.quick else 300)
    report(result)
    line = json.dumps(result, sort_keys=True)
    if args.json:
        args.json.write_text(line + "\n")
    print(line)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
