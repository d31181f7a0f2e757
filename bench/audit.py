"""Benchmark: the audit transparency log (DESIGN.md section 10).

Targets: 10,000 durable appends per second; an inclusion proof in a 10-million-entry log under
1 ms; offline verification of a whole log at 500,000 entries per second. The peer is Tessera
(transparency-dev/tessera), whose published figures are about 10,000 writes per second on NVMe
and 600 to 1,500 on a small VM.

Three measurements, each on a fresh SQLite file (WAL, ``synchronous=NORMAL``: durable across a
process crash; an OS crash may lose the last transactions; use ``--database-url`` for PostgreSQL):

1. appends: ``service.audit.log.record`` writes N entries, 100 per transaction, while the sequencer
   (``service.audit.sequencer.sequence``, as the node's worker runs it, every 0.25 s here)
   integrates them into the stored tree and signs a checkpoint per round, in two threads of one
   process.
   The figure is N divided by the time until the last entry is covered by a signed checkpoint.
   Single-entry transactions (one commit per event) and the sequencer alone on a backlog are
   measured too.
2. proofs: the ``audit_merkle_nodes`` table (the layout the node uses) is filled for a tree of
   ``--proof-size`` synthetic leaves (default 10 million) and ``service.audit
   .inclusion_proof`` (what ``/audit/v1/proof/inclusion`` calls: one indexed query) is timed for
   random leaves; every proof is verified with ``crypto.merkle``.
3. verification: ``service.audit.verify.verify_log`` over a log of ``--verify`` entries (default
   10 million), read from the database (``DatabaseSource``, what ``entente audit verify --home``
   does) in a fresh process whose peak memory, and its hashing workers', is reported: every leaf
   hash recomputed from the entry fields, the tree rebuilt, every checkpoint signature checked.
   The first million entries from memory isolate the verifier's own cost.

Beside each figure, the limit it runs against, measured in the same run on the same machine:
for appends, SQLite inserting the same rows with nothing else (raw ``executemany``, 100 per
transaction, WAL, ``synchronous=NORMAL``, into the node's ``audit_entries`` table); for
verification, reading the rows and SHA-256 of their leaves with no re-encoding, per core, times
the hashing processes (the floor of any design that reads these rows and hashes them).

``--scale`` instead runs appends and verification at 1x, 10x and 100x a base size (10,000), each
in its own process, and reports how time and peak memory grow.

Usage::

    python bench/audit.py                  # 200k appends, 10M-leaf proofs, 10M verified
    python bench/audit.py --quick          # small sizes: only checks that everything runs
    python bench/audit.py --proof-size 1000000 --json result.json
    python bench/audit.py --scale          # appends and verification of 10k, 100k, 1M entries

Figures go to stdout; the JSON result is the last stdout line, or goes to ``--json PATH``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._proc import peak_rss, tree  # noqa: E402
from crypto import merkle  # noqa: E402
from crypto.keys import SigningKey  # noqa: E402
from crypto.note import NoteSigner  # noqa: E402
from service.audit.entries import (  # noqa: E402
    encode_row,
    fetch_entry_rows,
    iter_entries,
    log_origin,
)
from service.audit.leaves import PARALLEL_MIN, worker_count  # noqa: E402
from service.audit.log import record  # noqa: E402
from service.audit.sequencer import sequence  # noqa: E402
from service.audit.sources import DatabaseSource  # noqa: E402
from service.audit.tree import inclusion_proof  # noqa: E402
from service.audit.verify import verify_log  # noqa: E402
from service.db import Database, open_database  # noqa: E402

TESSERA_NVME = 10_000  # writes/s, Tessera's published figure on NVMe
TESSERA_VM = (600, 1_500)  # writes/s, Tessera on a small VM
TARGET_APPENDS = 10_000  # per second
TARGET_PROOF_MS = 1.0
TARGET_VERIFY = 500_000  # entries per second
T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
SEQUENCER_PAUSE = 0.25  # seconds between sequencing rounds (the node's default is 2)


def _cpu() -> float:
    """CPU seconds used by this process and its finished children (worker pools)."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _signer() -> NoteSigner:
    return NoteSigner(log_origin("bench-aisi"), SigningKey.generate())


def _db(work: Path, name: str, url: str | None) -> Database:
    return open_database(url or f"sqlite:///{work / name}", migrate=True)


def _reset(db: Database) -> None:
    """Empty a PostgreSQL database given with --database-url between measurements."""
    if db.is_postgres:
        with db.engine.begin() as conn:
            import sqlalchemy as sa

            conn.execute(
                sa.text(
                    "TRUNCATE audit_entries, audit_merkle_nodes, audit_checkpoints, "
                    "audit_cosignatures RESTART IDENTITY"
                )
            )
            conn.execute(
                sa.text("UPDATE audit_log_head SET size = 0, root = :r"), {"r": merkle.EMPTY_ROOT}
            )


def _event(session: Any, i: int) -> None:
    record(
        session,
        kind="read",
        actor=f"reader:alice{i % 7} (tok_{i % 97:08x})",
        partner="us-aisi",
        artifact_id=f"{i:032x}",
        digest=f"{i:064x}",
        decision="allow",
        rule="permit-read",
        clause="US-UK MOU 4.2",
        detail={"via": "api", "bytes": 4096},
        now=T0 + timedelta(microseconds=i),
    )


# --- 1. appends ---------------------------------------------------------------------------------


def _append_with_sequencer(
    db: Database, signer: NoteSigner, first: int, n: int
) -> tuple[float, int]:
    """Write entries ``first .. first + n - 1`` in batches of 100 per transaction, with the
    sequencer alongside as in a node; (seconds until the last one is covered by a signed
    checkpoint, checkpoints signed)."""
    checkpoints = 0

    def writer() -> None:
        for base in range(0, n, 100):
            with db.session() as session:
                for i in range(base, min(base + 100, n)):
                    _event(session, first + i)

    target = first + n
    start = time.perf_counter()
    thread = threading.Thread(target=writer)
    thread.start()
    size = 0
    while size < target:
        # As the node's worker does: a round, then (unless the batch was full) a pause.
        with db.session() as session:
            result = sequence(session, signer=signer, now=T0)
        size = result.size
        checkpoints += int(result.checkpoint_signed)
        if not result.more and size < target:
            time.sleep(SEQUENCER_PAUSE)
    elapsed = time.perf_counter() - start
    thread.join()
    return elapsed, checkpoints


def bench_appends(work: Path, n: int, single: int, url: str | None) -> dict[str, Any]:
    db = _db(work, "appends.db", url)
    _reset(db)
    signer = _signer()
    # One commit per event.
    start = time.perf_counter()
    for i in range(single):
        with db.session() as session:
            _event(session, i)
    single_rate = single / (time.perf_counter() - start)
    with db.session() as session:
        sequence(session, signer=signer, now=T0)

    elapsed, checkpoints = _append_with_sequencer(db, signer, single, n)
    target = single + n

    # The sequencer alone, on a backlog (entries already committed).
    with db.session() as session:
        for i in range(n):
            _event(session, target + i)
    start = time.perf_counter()
    while True:
        with db.session() as session:
            result = sequence(session, signer=signer, now=T0)
        if not result.sequenced:
            break
    sequencer_rate = n / (time.perf_counter() - start)
    db.dispose()
    return {
        "sqlite_insert_limit_per_s": None if url else insert_limit(work, n),
        "appends": n,
        "durable_appends_per_s": n / elapsed,
        "checkpoints": checkpoints,
        "single_event_tx_per_s": single_rate,
        "sequencer_entries_per_s": sequencer_rate,
        "backend": "postgresql" if url else "sqlite-wal-normal",
    }


# --- 2. proofs ----------------------------------------------------------------------------------


def _build_tree_sqlite(path: Path, size: int) -> bytes:
    """Fill audit_merkle_nodes for ``size`` synthetic leaves, as the sequencer would."""
    db = open_database(f"sqlite:///{path}", migrate=True)
    db.dispose()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")  # building is not what is measured
    tree = merkle.CompactRange()
    rows: list[tuple[int, int, bytes]] = []
    visit = lambda level, idx, h: rows.append((level, idx, h))  # noqa: E731
    sha = hashlib.sha256
    insert = "INSERT INTO audit_merkle_nodes (level, idx, hash) VALUES (?, ?, ?)"
    for i in range(size):
        tree.append(merkle.leaf_hash(sha(i.to_bytes(8, "big")).digest()), visit)
        if len(rows) >= 200_000:
            conn.executemany(insert, rows)
            conn.commit()
            rows.clear()
    conn.executemany(insert, rows)
    root = tree.root()
    conn.execute("UPDATE audit_log_head SET size = ?, root = ? WHERE id = 1", (size, root))
    conn.commit()
    conn.close()
    return root


def bench_proofs(work: Path, size: int, samples: int) -> dict[str, Any]:
    path = work / "proofs.db"
    start = time.perf_counter()
    root = _build_tree_sqlite(path, size)
    build_s = time.perf_counter() - start
    db = open_database(f"sqlite:///{path}")
    rng = random.Random(7)
    latencies = []
    with db.session() as session:
        for _ in range(samples):
            index = rng.randrange(size)
            t = time.perf_counter()
            proof = inclusion_proof(session, index=index, size=size)
            latencies.append((time.perf_counter() - t) * 1000)
            leaf = merkle.leaf_hash(hashlib.sha256(index.to_bytes(8, "big")).digest())
            merkle.verify_inclusion(leaf_hash=leaf, index=index, size=size, proof=proof, root=root)
    db.dispose()
    latencies.sort()
    return {
        "tree_size": size,
        "samples": samples,
        "build_s": build_s,
        "db_bytes": path.stat().st_size
        + (
            path.with_name(path.name + "-wal").stat().st_size
            if path.with_name(path.name + "-wal").exists()
            else 0
        ),
        "proof_ms_p50": statistics.median(latencies),
        "proof_ms_p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "proof_ms_mean": statistics.fmean(latencies),
    }


# --- 3. verification ----------------------------------------------------------------------------


class _MemorySource:
    def __init__(self, notes: list[bytes], entries: list[dict[str, Any]]) -> None:
        self._notes = notes
        self._entries = entries

    def checkpoints(self, upto: int | None) -> list[bytes]:
        return self._notes

    def entries(self, start: int | None, end: int) -> list[dict[str, Any]]:
        return self._entries[(start or 0) : end]

    def consistency_proof(self, old: int, new: int) -> list[bytes]:
        raise NotImplementedError

    def uncovered(self, size: int) -> None:
        return None


_INSERT_SQL = (
    "INSERT INTO audit_entries (created_at, kind, actor, partner, artifact_id, digest, "
    "decision, rule, clause, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _entry_rows(n: int) -> Any:
    """The rows of ``_event`` 0 .. n - 1 as SQLite stores them (``created_at`` as text)."""
    detail = json.dumps({"via": "api", "bytes": 4096}, sort_keys=True, separators=(",", ":"))
    rows = (
        (
            (T0 + timedelta(microseconds=i)).strftime("%Y-%m-%d %H:%M:%S.%f"),
            "read",
            f"reader:alice{i % 7} (tok_{i % 97:08x})",
            "us-aisi",
            f"{i:032x}",
            f"{i:064x}",
            "allow",
            "permit-read",
            "US-UK MOU 4.2",
            detail,
        )
        for i in range(n)
    )
    return rows


def _fill_entries_sqlite(path: Path, n: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous=OFF")
    conn.executemany(_INSERT_SQL, _entry_rows(n))
    conn.commit()
    conn.close()


def insert_limit(work: Path, n: int) -> float:
    """Rows per second SQLite takes the same entries at with nothing else: 100 per
    transaction, WAL, ``synchronous=NORMAL`` (as a node opens it), into a fresh node schema.
    The ceiling of durable appends on this database and disk."""
    path = work / "limit.db"
    _db(work, "limit.db", None).dispose()  # the node's schema, migrated
    rows = list(_entry_rows(n))
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    start = time.perf_counter()
    for base in range(0, n, 100):
        conn.execute("BEGIN")
        conn.executemany(_INSERT_SQL, rows[base : base + 100])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return n / elapsed


def verify_limit(db: Database, n: int) -> dict[str, Any]:
    """Per core: reading the first ``n`` sequenced rows as the hashing workers read them, and
    SHA-256 of their leaves (encoded beforehand, untimed); their sum is what a verifier that
    never re-encoded would still pay per entry."""
    read_s = hash_s = 0.0
    done = 0
    while done < n:
        start = time.perf_counter()
        rows = fetch_entry_rows(db.engine, seq_from=done, seq_below=n, limit=50_000)
        read_s += time.perf_counter() - start
        if not rows:
            break
        leaves = [encode_row(row) for row in rows]
        leaf_hash = merkle.leaf_hash
        start = time.perf_counter()
        for leaf in leaves:
            leaf_hash(leaf)
        hash_s += time.perf_counter() - start
        done += len(rows)
    workers = worker_count()
    return {
        "entries": done,
        "row_read_us": round(1e6 * read_s / done, 3),
        "leaf_hash_us": round(1e6 * hash_s / done, 3),
        "cores": workers,
        "read_and_hash_per_s": round(workers * done / (read_s + hash_s)),
    }


def _verify_child(url: str, key_hex: str, n: int) -> None:
    """In a child process (``--verify-child``): verify the log at ``url`` from its database, as
    ``entente audit verify --home`` does, and print timing and peak memory as JSON.

    Peak memory is ``VmHWM`` from ``/proc``, of this process and (sampled every 0.1 s) of each
    hashing worker: ``getrusage``'s ``ru_maxrss`` carries the high-water mark of the process that
    forked this one across ``exec``, so it reported the benchmark's own 400 MiB here."""
    db = open_database(url)
    signer = NoteSigner(log_origin("bench-aisi"), SigningKey(bytes.fromhex(key_hex)))
    workers_peak = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal workers_peak
        me = os.getpid()
        while not done.wait(0.1):
            for pid in tree(me)[1:]:
                workers_peak = max(workers_peak, peak_rss(pid))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start, cpu = time.perf_counter(), _cpu()
    verdict = verify_log(DatabaseSource(db), log=signer.verifier, now=int(T0.timestamp()))
    seconds, cpu_s = time.perf_counter() - start, _cpu() - cpu
    done.set()
    watcher.join()
    if not verdict.ok or verdict.size != n:
        raise SystemExit(f"verification failed: {verdict.problem}")
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_s, "peak_rss": peak_rss(os.getpid()),
                      "worker_peak_rss": workers_peak}))  # fmt: skip
    db.dispose()


def _fill_log(work: Path, n: int, url: str | None) -> tuple[Database, bytes, dict[str, Any]]:
    """A sequenced, checkpointed log of ``n`` entries (SQLite: written directly); returns the
    database, the log key's seed (a throwaway) and how long building it took."""
    path = work / "verify.db"
    db = _db(work, "verify.db", url)
    _reset(db)
    seed = os.urandom(32)
    signer = NoteSigner(log_origin("bench-aisi"), SigningKey(seed))
    start = time.perf_counter()
    if db.is_sqlite:
        _fill_entries_sqlite(path, n)
    else:
        for base in range(0, n, 1000):
            with db.session() as session:
                for i in range(base, min(base + 1000, n)):
                    _event(session, i)
    fill_s = time.perf_counter() - start
    start = time.perf_counter()
    checkpoints = 0
    while True:
        with db.session() as session:
            result = sequence(session, signer=signer, now=T0)
        checkpoints += int(result.checkpoint_signed)
        if not result.sequenced:
            break
    sequence_s = time.perf_counter() - start
    return db, seed, {"fill_s": fill_s, "sequence_s": sequence_s, "checkpoints": checkpoints}


def verify_in_child(db: Database, seed: bytes, n: int) -> dict[str, Any]:
    """Verify the whole log from the database in a fresh process: time and peak memory."""
    url = db.engine.url.render_as_string(hide_password=False)
    out = subprocess.run(
        [sys.executable, __file__, "--verify-child", url, seed.hex(), str(n)],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def bench_verify(work: Path, n: int, url: str | None, memory_n: int) -> dict[str, Any]:
    db, seed, built = _fill_log(work, n, url)
    signer = NoteSigner(log_origin("bench-aisi"), SigningKey(seed))
    # Close this process's connections first: on SQLite the last one to close checkpoints the
    # write-ahead log that filling the log left behind (gigabytes at 10M entries, which a running
    # node's automatic checkpoints never let grow), so the verifier reads the log as it would
    # find it at a node.
    db.dispose()
    child = verify_in_child(db, seed, n)

    m = min(n, memory_n)  # the whole log as entry objects would not fit in memory at 10M
    entries = list(iter_entries(db.session, after=None, size=m, chunk=50_000))
    notes = [note for note in DatabaseSource(db).checkpoints(None) if _note_size(note) <= m]
    start, cpu = time.perf_counter(), _cpu()
    verdict = verify_log(
        _MemorySource(notes, entries), log=signer.verifier, now=int(T0.timestamp())
    )
    memory_s, memory_cpu = time.perf_counter() - start, _cpu() - cpu
    assert verdict.ok, verdict.problem
    del entries
    limit = verify_limit(db, m)
    db.dispose()
    mib = 1 << 20
    return {
        "entries": n,
        "checkpoints": built["checkpoints"],
        "verify_db_entries_per_s": n / child["seconds"],
        "verify_db_entries_per_cpu_s": n / child["cpu_seconds"],
        "verify_db_peak_rss_mib": round(child["peak_rss"] / mib, 1),
        "verify_db_worker_peak_rss_mib": round(child["worker_peak_rss"] / mib, 1),
        "verify_memory_entries": m,
        "verify_memory_entries_per_s": m / memory_s,
        "verify_memory_entries_per_cpu_s": m / memory_cpu,
        "workers": worker_count() if n >= PARALLEL_MIN else 1,
        "sequencer_backlog_entries_per_s": n / built["sequence_s"],
        "limit": limit,
    }


def _note_size(note: bytes) -> int:
    return int(note.split(b"\n", 2)[1])


# --- report -------------------------------------------------------------------------------------


def _print(summary: dict[str, Any]) -> None:
    a, p, v = summary["appends"], summary["proofs"], summary["verify"]
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} CPUs, load average {load:.1f}; backend {a['backend']}")
    print(
        f"appends:  {a['durable_appends_per_s']:>10,.0f} durable appends/s "
        f"({a['appends']:,} entries, 100 per transaction, sequenced and checkpointed "
        f"concurrently; {a['checkpoints']} checkpoints) | target {TARGET_APPENDS:,}/s | "
        f"Tessera ~{TESSERA_NVME:,}/s NVMe, {TESSERA_VM[0]:,}-{TESSERA_VM[1]:,}/s small VM"
    )
    print(
        f"          {a['single_event_tx_per_s']:>10,.0f} single-event transactions/s | "
        f"sequencer alone {a['sequencer_entries_per_s']:,.0f} entries/s"
    )
    if a.get("sqlite_insert_limit_per_s"):
        print(
            f"   limit: {a['sqlite_insert_limit_per_s']:>10,.0f} rows/s SQLite takes the same "
            "rows at with nothing else (100 per transaction, WAL, synchronous=NORMAL)"
        )
    print(
        f"proofs:   p50 {p['proof_ms_p50']:.3f} ms, p99 {p['proof_ms_p99']:.3f} ms, mean "
        f"{p['proof_ms_mean']:.3f} ms in a {p['tree_size']:,}-leaf tree "
        f"({p['samples']} random leaves, all verified; tree built in {p['build_s']:.0f} s, "
        f"{p['db_bytes'] / 1e6:,.0f} MB) | target < {TARGET_PROOF_MS} ms"
    )
    print(
        f"verify:   {v['verify_db_entries_per_s']:>10,.0f} entries/s from the database "
        f"({v['workers']} hashing processes; {v['verify_db_entries_per_cpu_s']:,.0f} per "
        f"CPU-second; peak RSS {v['verify_db_peak_rss_mib']:.0f} MiB, each worker at most "
        f"{v['verify_db_worker_peak_rss_mib']:.0f} MiB), "
        f"{v['verify_memory_entries_per_s']:,.0f} entries/s from memory "
        f"({v['verify_memory_entries_per_cpu_s']:,.0f} per CPU-second, first "
        f"{v['verify_memory_entries']:,}); {v['entries']:,} "
        f"entries, {v['checkpoints']} checkpoints | target {TARGET_VERIFY:,}/s"
    )
    lim = v["limit"]
    print(
        f"   limit: {lim['read_and_hash_per_s']:>10,.0f} entries/s reading the rows "
        f"({lim['row_read_us']:.2f} µs each) and hashing their leaves ({lim['leaf_hash_us']:.2f} "
        f"µs) with no re-encoding, on {lim['cores']} cores (per core x cores)"
    )
    print("targets met" if summary["ok"] else "TARGETS NOT MET (see the figures above)")


# --- how cost grows -----------------------------------------------------------------------------


def scale_step(work: Path, n: int, url: str | None) -> dict[str, Any]:
    """Durable appends of ``n`` entries (this process's peak memory after them), then the
    verification of that log in a fresh process (its peak memory and its workers')."""
    db = _db(work, "scale.db", url)
    _reset(db)
    seed = os.urandom(32)
    signer = NoteSigner(log_origin("bench-aisi"), SigningKey(seed))
    appends_s, _ = _append_with_sequencer(db, signer, 0, n)
    appends_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    child = verify_in_child(db, seed, n)
    db.dispose()
    mib = 1 << 20
    return {
        "n": n,
        "appends_s": round(appends_s, 3),
        "appends_per_s": round(n / appends_s, 1),
        "appends_peak_rss_mib": round(appends_rss / mib, 1),
        "verify_s": round(child["seconds"], 3),
        "verify_per_s": round(n / child["seconds"], 1),
        "verify_peak_rss_mib": round(child["peak_rss"] / mib, 1),
        "verify_worker_peak_rss_mib": round(child["worker_peak_rss"] / mib, 1),
    }


def scale(base: int, url: str | None, scratch: Path | None) -> dict[str, Any]:
    """:func:`scale_step` at 1x, 10x and 100x ``base`` entries, each in its own process."""
    steps = []
    for factor in (1, 10, 100):
        n = base * factor
        print(f"scale: {n:,} entries", file=sys.stderr, flush=True)
        cmd = [sys.executable, __file__, "--scale-step", str(n)]
        if url:
            cmd += ["--database-url", url]
        if scratch:
            cmd += ["--dir", str(scratch)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
        steps.append({"factor": factor, **json.loads(out.stdout.strip().splitlines()[-1])})
    for st in steps:
        print(
            f"  {st['n']:>10,} entries: appends {st['appends_s']:.1f} s "
            f"({st['appends_per_s']:,.0f}/s, peak RSS {st['appends_peak_rss_mib']:.0f} MiB); "
            f"verify {st['verify_s']:.1f} s ({st['verify_per_s']:,.0f}/s, peak RSS "
            f"{st['verify_peak_rss_mib']:.0f} MiB, "
            f"workers {st['verify_worker_peak_rss_mib']:.0f} MiB)"
        )
    return {"bench": "audit-scale", "base": base, "steps": steps}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes; checks it runs")
    parser.add_argument("--appends", type=int, default=None, help="entries (default 200000)")
    parser.add_argument("--proof-size", type=int, default=None, help="leaves (default 10M)")
    parser.add_argument("--verify", type=int, default=None, help="entries (default 1000000)")
    parser.add_argument("--database-url", default=None, help="PostgreSQL for appends/verify")
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder's parent")
    parser.add_argument("--json", type=Path, default=None, help="write the JSON result here")
    parser.add_argument(
        "--scale",
        type=int,
        nargs="?",
        const=10_000,
        default=None,
        metavar="BASE",
        help="appends and verification at 1x, 10x, 100x BASE entries (default 10000)",
    )
    parser.add_argument("--scale-step", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--verify-child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.verify_child is not None:
        url, seed, n = args.verify_child
        _verify_child(url, seed, int(n))
        return 0
    if args.scale_step is not None:
        work = Path(tempfile.mkdtemp(prefix="entente-bench-audit-", dir=args.dir))
        try:
            print(json.dumps(scale_step(work, args.scale_step, args.database_url)))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return 0
    if args.scale is not None:
        grown = scale(100 if args.quick else args.scale, args.database_url, args.dir)
        grown["machine"] = {"cpus": os.cpu_count(), "load_average": os.getloadavg()[0]}
        line = json.dumps(grown, sort_keys=True)
        if args.json is not None:
            args.json.write_text(line + "\n")
        print(line)
        return 0
    appends = args.appends or (1_000 if args.quick else 200_000)
    proof_size = args.proof_size or (20_000 if args.quick else 10_000_000)
    verify_n = args.verify or (5_000 if args.quick else 10_000_000)
    work = Path(tempfile.mkdtemp(prefix="entente-bench-audit-", dir=args.dir))
    try:
        summary: dict[str, Any] = {
            "bench": "audit",
            "quick": args.quick,
            "appends": bench_appends(work, appends, min(appends, 2_000), args.database_url),
            "proofs": bench_proofs(work, proof_size, 200 if args.quick else 2_000),
            "verify": bench_verify(work, verify_n, args.database_url, 1_000_000),
            "peer": {"tessera_nvme_writes_per_s": TESSERA_NVME, "tessera_small_vm": TESSERA_VM},
            "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg()[0]},
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary["ok"] = (
        summary["appends"]["durable_appends_per_s"] >= TARGET_APPENDS
        and summary["proofs"]["proof_ms_p99"] < TARGET_PROOF_MS
        and summary["verify"]["verify_db_entries_per_s"] >= TARGET_VERIFY
    )
    _print(summary)
    line = json.dumps(summary, sort_keys=True)
    if args.json is not None:
        args.json.write_text(line + "\n")
    else:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
