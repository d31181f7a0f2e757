"""Three replicas of one node on one PostgreSQL database and one SeaweedFS bucket prefix, with
one replica killed -9 every few seconds and restarted, while a thread pool shares through a
round-robin balancer and the node delivers to a partner (issue 18, "Show it").

The balancer is the client's: :class:`Balancer` is an ``httpx`` transport that sends each
request to the next replica that is up, so a share whose connection dies is retried by
:class:`service.client.Client` itself (``retries=``), with the share's one ``Idempotency-Key``,
on the next replica: exactly what a user of the Python client gets behind a load balancer.

Afterwards, with every replica up and the outbox drained: every share that got its 201 is one
artifact row (one per idempotency key, one per plaintext digest: every body is random), the
partner received each exactly once and signed one receipt for it (the one the origin recorded),
every blob an artifact refers to is an object in the bucket, and after the start-up sweep of a
replica started with no grace period, no object in the prefix is unreferenced; both nodes'
audit logs verify.

Every hundredth share is larger than an S3 part (a multipart upload under ``<prefix>/tmp/``,
then a copy), so kills also land in those. Each restart sweeps at start (journal rows older than
60 s) while the other replicas share; no replica may log an error (a 500 would).

``ENTENTE_REPLICA_S3_TEST_COUNT`` sets the number of shares. The default, 2000, took 3 to 4
minutes for the whole test on a two-core machine busy with a CI run (load average 6 to 13),
110 to 190 s of it sharing, with 19 to 24 kills.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import signal
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from service.client import Client
from service.federation.setup import prepare_federation
from tests.nodes import PASSPHRASE, NodeProcess, base_env, run_cli
from tests.seaweed import BUCKET, SeaweedFS

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.postgres]

COUNT = int(os.environ.get("ENTENTE_REPLICA_S3_TEST_COUNT", "2000"))
REPLICAS = 3
WORKERS = 8  # shares in flight at once
KILL_EVERY = (2.0, 4.0)  # seconds between two kills, drawn uniformly
BODY_BYTES = 2048  # random plaintext of each share: no two shares have the same digest
PART_BYTES = 5 << 20  # the smallest S3 part (ENTENTE_S3_PART_BYTES)
LARGE_EVERY = 100  # every 100th share is larger than a part: a multipart upload to <prefix>/tmp/
LARGE_BYTES = PART_BYTES + (64 << 10)  # then copied to its content address
DRAIN_SECONDS = 300.0  # bounds the wait for the outbox and the sweep; never a measure of speed


class Replicas:
    """The replicas' processes and which of them the balancer may send to (``up``)."""

    def __init__(self, nodes: list[NodeProcess]) -> None:
        self.nodes = nodes
        self._lock = threading.Lock()
        self._up = set(range(len(nodes)))
        self._turn = 0

    def next_port(self) -> int:
        """Round robin over the replicas that are up (over all of them while none is)."""
        with self._lock:
            up = sorted(self._up) or list(range(len(self.nodes)))
            self._turn += 1
            return self.nodes[up[self._turn % len(up)]].port

    def mark(self, index: int, *, up: bool) -> None:
        with self._lock:
            (self._up.add if up else self._up.discard)(index)

    def up(self) -> list[int]:
        with self._lock:
            return sorted(self._up)


class Balancer(httpx.BaseTransport):
    """A client-side load balancer: each request goes to the next replica that is up."""

    def __init__(self, replicas: Replicas) -> None:
        self._replicas = replicas
        self._inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        port = self._replicas.next_port()
        request.url = request.url.copy_with(host="127.0.0.1", port=port)
        request.headers["Host"] = f"127.0.0.1:{port}"
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


@dataclass
class Outcome:
    key: str
    sha256: str
    artifact_id: str | None = None
    status: str | None = None
    replayed: bool = False  # answered from the key: an earlier attempt had shared it
    error: str | None = None
    retries: list[str] = field(default_factory=list)


def share_one(client: Client, i: int) -> Outcome:
    body = os.urandom(LARGE_BYTES if i % LARGE_EVERY == LARGE_EVERY - 1 else BODY_BYTES)
    outcome = Outcome(str(uuid.uuid4()), hashlib.sha256(body).hexdigest())
    try:
        shared = client.share(
            io.BytesIO(body),
            to=["us-aisi"],
            tlp="TLP:GREEN",
            title=f"replicated share {i}",
            topics=["evaluation"],
            purposes=["evaluation"],
            filename=f"share-{i}.bin",
            idempotency_key=outcome.key,
            on_retry=lambda retry: outcome.retries.append(retry.reason),
        )
    except Exception as exc:  # recorded and asserted on: every share must succeed
        outcome.error = f"{type(exc).__name__}: {exc}"
        return outcome
    outcome.status = shared.status
    outcome.replayed = shared.replayed
    outcome.artifact_id = shared.artifact.id if shared.artifact is not None else None
    return outcome


def share_all(replicas: Replicas, token: str, count: int) -> tuple[list[Future[Outcome]], Pool]:
    """Submit ``count`` shares to a pool of :data:`WORKERS` threads, each with its own client
    behind the balancer; the caller waits on the futures, then closes the pool."""
    pool = Pool(replicas, token)
    futures = [pool.executor.submit(lambda i=i: share_one(pool.client(), i)) for i in range(count)]
    return futures, pool


class Pool:
    """The sharing threads and their clients."""

    def __init__(self, replicas: Replicas, token: str) -> None:
        self.executor = ThreadPoolExecutor(WORKERS, thread_name_prefix="share")
        self._replicas = replicas
        self._token = token
        self._local = threading.local()
        self._lock = threading.Lock()
        self._clients: list[Client] = []

    def client(self) -> Client:
        """This thread's client. Enough retries to outlast the idempotency lease of a killed
        replica's request (ENTENTE_IDEMPOTENCY_LEASE_SECONDS) and two replicas restarting."""
        if not hasattr(self._local, "client"):
            self._local.client = Client(
                "http://balancer.invalid", self._token, retries=12,
                transport=Balancer(self._replicas), timeout=httpx.Timeout(60.0, connect=5.0),
            )  # fmt: skip
            with self._lock:
                self._clients.append(self._local.client)
        client: Client = self._local.client
        return client

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        for client in self._clients:
            client.close()


def answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def chaos(replicas: Replicas, done: Callable[[], bool], rng: random.Random) -> int:
    """Until ``done()``: every 2-4 s SIGKILL a random replica that is up (never the last one up)
    and start it again with the same command; then wait until all answer. Runs on the calling
    thread, which must be the test's (the replicas die with the thread that starts them).
    Returns the number of kills."""
    kills = 0
    restarting: set[int] = set()
    next_kill = time.monotonic() + rng.uniform(*KILL_EVERY)
    while True:
        for i in sorted(restarting):
            node = replicas.nodes[i]
            assert node.proc is not None
            if node.proc.poll() is not None:
                node.wait_healthy()  # raises with the end of its log
            if answers(node.url):
                restarting.discard(i)
                replicas.mark(i, up=True)
        for i in replicas.up():  # a replica that died of itself is a failure
            proc = replicas.nodes[i].proc
            assert proc is not None and proc.poll() is None, f"replica {i} exited by itself"
        if done():
            break
        if time.monotonic() >= next_kill:
            up = replicas.up()
            if len(up) >= 2:
                victim = rng.choice(up)
                node = replicas.nodes[victim]
                assert node.proc is not None
                node.proc.send_signal(signal.SIGKILL)
                replicas.mark(victim, up=False)
                node.proc.wait()
                node.spawn()  # the same command, home, port and environment
                restarting.add(victim)
                kills += 1
            next_kill = time.monotonic() + rng.uniform(*KILL_EVERY)
        time.sleep(0.1)
    for i in sorted(restarting):
        replicas.nodes[i].wait_healthy()
        replicas.mark(i, up=True)
    return kills


def scalar(engine: sa.Engine, sql: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql)).scalar_one()


def wait_for(check: Callable[[], bool], what: str, timeout: float = DRAIN_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def bucket_objects(seaweedfs: SeaweedFS, prefix: str) -> list[str]:
    """Every key under ``prefix/`` (relative to it)."""
    s3 = seaweedfs.client()
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{prefix}/"):
        keys.extend(o["Key"][len(prefix) + 1 :] for o in page.get("Contents", []))
    return keys


def blob_key(digest: str) -> str:
    return f"{digest[:2]}/{digest[2:4]}/{digest}"


def logged_errors(paths: list[Path]) -> list[str]:
    """The lines logged at level error or above, and tracebacks (an unhandled error: a 500)."""
    found = []
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            try:
                level = json.loads(line).get("level", "")
            except ValueError:
                level = ""
            if level in ("error", "critical") or "Traceback" in line:
                found.append(f"{path.name}: {line[:300]}")
    return found


def audit_verify(home: Path, env: dict[str, str], state: Path) -> dict[str, Any]:
    result = run_cli(
        "audit", "verify", "--home", str(home), "--json", "--state", str(state),
        env=env, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    verdict: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return verdict


def test_three_replicas_on_postgres_and_seaweedfs_under_repeated_kills(
    tmp_path: Path, pg_url: str, seaweedfs: SeaweedFS, s3_prefix: str
) -> None:
    settings = {
        "ENTENTE_DATABASE_URL": pg_url,
        **seaweedfs.env(s3_prefix),
        "ENTENTE_SYNC_INTERVAL_SECONDS": "0.2",
        "ENTENTE_RETRY_BASE_SECONDS": "0.2",
        "ENTENTE_RETRY_MAX_SECONDS": "2",
        # A delivery lease is two request timeouts: a killed replica's claims lapse in ~15 s.
        "ENTENTE_REQUEST_TIMEOUT_SECONDS": "5",
        # A killed replica's idempotency keys are taken over by a retry after this long.
        "ENTENTE_IDEMPOTENCY_LEASE_SECONDS": "5",
        # Each restart sweeps the journal rows older than this while the others share: a
        # share takes well under a second, so nothing in flight is that old.
        "ENTENTE_BLOB_ORPHAN_GRACE_SECONDS": "60",
        "ENTENTE_S3_PART_BYTES": str(PART_BYTES),
        "ENTENTE_LOG_LEVEL": "WARNING",
        "ENTENTE_RATE_LIMIT_PER_MINUTE": "1000000",  # one token shares as fast as it can here
    }
    env = base_env(**settings)
    home = tmp_path / "uk-aisi"
    nodes = [NodeProcess(home, "uk-aisi", env=env) for _ in range(REPLICAS)]
    for i, node in enumerate(nodes):
        node.log_path = tmp_path / f"uk-aisi-{i}.log"
    us_env = base_env(ENTENTE_LOG_LEVEL="WARNING", ENTENTE_RATE_LIMIT_PER_MINUTE="1000000")
    us = NodeProcess(tmp_path / "us-aisi", "us-aisi", env=us_env)
    # The replicas are one node with one URL (replica 0's here; a load balancer's in
    # production): partners reach it there, deliveries are made by whichever replica claims.
    prepared = prepare_federation(
        {"uk-aisi": nodes[0].url, "us-aisi": us.url},
        root=tmp_path,
        passphrase=PASSPHRASE,
        scrypt_work_factor=10,
        database_urls={"uk-aisi": pg_url},
    )
    token = prepared["uk-aisi"].tokens["publisher"]
    engine = sa.create_engine(pg_url)
    replicas = Replicas(nodes)
    sweeper = NodeProcess(
        home, "uk-aisi", env=base_env(**{**settings, "ENTENTE_BLOB_ORPHAN_GRACE_SECONDS": "0"})
    )
    sweeper.log_path = tmp_path / "uk-aisi-sweep.log"
    pool: Pool | None = None
    try:
        us.start()
        for node in nodes:  # one at a time: the first one migrates the fresh database
            node.start()
        started = time.monotonic()
        futures, pool = share_all(replicas, token, COUNT)
        rng = random.Random()  # noqa: S311 - which replica to kill, and when: not a secret
        kills = chaos(replicas, lambda: all(f.done() for f in futures), rng)
        shared_in = time.monotonic() - started
        outcomes = [f.result() for f in futures]

        # Every share was accepted (a 201 each), retries included.
        failed = [o for o in outcomes if o.error is not None]
        assert not failed, f"{len(failed)} shares failed, e.g. {failed[:3]}"
        assert {o.status for o in outcomes} == {"shared"}
        retried = sum(1 for o in outcomes if o.retries)
        replayed = sum(1 for o in outcomes if o.replayed)
        why = Counter(r.split(" (")[0] for o in outcomes for r in o.retries)

        def drained() -> bool:
            return not scalar(
                engine, "SELECT count(*) FROM outbox WHERE kind='deliver' AND state <> 'delivered'"
            )

        wait_for(drained, "the outbox to drain")
        drained_in = time.monotonic() - started

        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT id, sha256, blob FROM artifacts WHERE direction='sent'")
            ).all()
            keys = dict(
                conn.execute(
                    sa.text(
                        "SELECT idempotency_key, response FROM idempotency_keys "
                        "WHERE state='done' AND status=201"
                    )
                ).all()
            )
            outbox = conn.execute(
                sa.text(
                    "SELECT artifact_id, state, receipt FROM outbox WHERE kind='deliver' "
                    "AND partner='us-aisi'"
                )
            ).all()
            sent_events = Counter(
                a
                for (a,) in conn.execute(
                    sa.text("SELECT artifact_id FROM audit_entries WHERE kind='delivery.sent'")
                )
            )
            share_events = Counter(
                a
                for (a,) in conn.execute(
                    sa.text("SELECT artifact_id FROM audit_entries WHERE kind='share.allowed'")
                )
            )

        # Every accepted share is exactly one artifact: one row per plaintext digest (each body
        # is random), the row the 201 named, the one its idempotency key answers with.
        by_digest = Counter(sha for _, sha, _ in rows)
        assert len(rows) == COUNT, f"{len(rows)} artifacts for {COUNT} shares"
        assert max(by_digest.values()) == 1
        ids = {sha: artifact_id for artifact_id, sha, _ in rows}
        for o in outcomes:
            assert ids.get(o.sha256) == o.artifact_id, o
            assert o.key in keys and json.loads(keys[o.key])["id"] == o.artifact_id, o
        assert set(share_events) == set(ids.values())
        assert max(share_events.values()) == 1

        # Every delivery happened exactly once: one outbox row per artifact, delivered with a
        # receipt, and one delivery event for it in the origin's log.
        assert Counter(a for a, _, _ in outbox) == Counter(ids.values())
        assert {state for _, state, _ in outbox} == {"delivered"}
        assert all(receipt for _, _, receipt in outbox)
        assert sent_events == Counter(ids.values()), "a delivery was recorded twice"

        # Every blob an artifact refers to is an object in the bucket (HEAD by its key).
        s3 = seaweedfs.client()
        for _, _, blob in rows:
            assert blob is not None
            s3.head_object(Bucket=BUCKET, Key=f"{s3_prefix}/{blob_key(blob)}")
        referenced = {blob_key(blob) for _, _, blob in rows}
        before_sweep = set(bucket_objects(seaweedfs, s3_prefix))
        orphans_before = len(before_sweep - referenced)
        journal_before = scalar(engine, "SELECT count(*) FROM blobs_in_flight")
        for node in nodes:
            node.send_signal(signal.SIGTERM)
        for node in nodes:
            node.stop()

        # The sweep: a replica started with no grace period sweeps every journal row at start.
        sweeper.start()
        wait_for(lambda: not scalar(engine, "SELECT count(*) FROM blobs_in_flight"), "the sweep")
    finally:
        if pool is not None:  # before the replicas stop: no share is left waiting for them
            pool.close()
        for node in [*nodes, sweeper, us]:
            node.send_signal(signal.SIGTERM)
        for node in [*nodes, sweeper, us]:
            node.stop()
        engine.dispose()
    after_sweep = set(bucket_objects(seaweedfs, s3_prefix))
    assert after_sweep == referenced, (
        f"unreferenced after the sweep: {sorted(after_sweep - referenced)[:5]}; "
        f"missing: {sorted(referenced - after_sweep)[:5]}"
    )
    uploads = s3.list_multipart_uploads(Bucket=BUCKET, Prefix=f"{s3_prefix}/")
    assert not uploads.get("Uploads")

    # The partner received each artifact once, and the receipt the origin recorded is the one
    # the partner issued.
    with sqlite3.connect(tmp_path / "us-aisi" / "entente.db") as conn:
        received = dict(
            conn.execute("SELECT id, receipt FROM artifacts WHERE direction='received'")
        )
        accepted = Counter(
            a for (a,) in conn.execute(
                "SELECT artifact_id FROM audit_entries WHERE kind='receive.accepted'"
            )
        )  # fmt: skip
    assert set(received) == set(ids.values())
    assert accepted == Counter(ids.values()), "the partner accepted an artifact twice"
    assert {a: r for a, _, r in outbox} == received

    # Both audit logs verify: the origin's, written by three replicas and their restarts.
    origin = audit_verify(home, env, tmp_path / "uk-state.json")
    assert origin["ok"] is True
    assert origin["entries"] >= 3 * COUNT  # a share, a delivery and a receipt per artifact
    partner = audit_verify(tmp_path / "us-aisi", us_env, tmp_path / "us-state.json")
    assert partner["ok"] is True
    assert partner["entries"] >= COUNT

    # Nothing failed unhandled, on any replica or on the partner.
    logs = [n.log_path for n in [*nodes, sweeper, us] if n.log_path is not None]
    assert not logged_errors(logs), logged_errors(logs)[:10]

    print(
        f"\n{COUNT} shares through {REPLICAS} replicas, {kills} kills, {retried} shares retried "
        f"({replayed} answered from their key; retries: {dict(why)}), "
        f"shared in {shared_in:.0f} s, delivered in {drained_in:.0f} s; "
        f"{orphans_before} orphans and {journal_before} journal rows before the sweep"
    )
    assert kills >= 1
