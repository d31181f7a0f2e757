"""Scale-out: two `entente serve` replicas of one node on one PostgreSQL database and one blob
folder behave as one node, even when one of them is killed -9 in the middle of the work."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from service.federation.setup import prepare_federation
from tests.nodes import ENTENTE, PASSPHRASE, NodeProcess, base_env

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.postgres]

COUNT = int(os.environ.get("ENTENTE_REPLICA_TEST_COUNT", "1000"))
META = {
    "title": "replicated share",
    "tlp": "TLP:GREEN",
    "topics": ["evaluation"],
    "purposes": ["evaluation"],
    "partners": ["us-aisi"],
}


def _body(i: int) -> tuple[bytes, dict[str, str]]:
    b = "replica-test"
    body = (
        f'--{b}\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n'.encode()
        + json.dumps({**META, "title": f"replicated share {i}"}).encode()
        + f'\r\n--{b}\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n'.encode()
        + f"artifact {i}\n".encode() * 64
        + f"\r\n--{b}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={b}"}


async def _share_all(
    urls: list[str], token: str, count: int, kill_at: int, victim: NodeProcess
) -> int:
    """Share ``count`` artifacts round-robin over the replicas; kill one at ``kill_at``."""
    accepted = 0
    lock = asyncio.Lock()
    next_index = 0
    alive = list(urls)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal accepted, next_index
        while True:
            async with lock:
                if next_index >= count:
                    return
                i = next_index
                next_index += 1
                if i == kill_at and victim.proc is not None:
                    victim.proc.send_signal(signal.SIGKILL)
                    victim.proc.wait()
                    alive.remove(victim.url)
                url = alive[i % len(alive)]
            body, headers = _body(i)
            for _attempt in range(3):
                try:
                    r = await client.post(
                        f"{url}/v1/artifacts",
                        content=body,
                        headers={**headers, "Authorization": f"Bearer {token}"},
                    )
                except httpx.HTTPError:
                    url = alive[0]  # the replica died under us: the client retries elsewhere
                    continue
                assert r.status_code == 201, r.text
                async with lock:
                    accepted += 1
                break

    async with httpx.AsyncClient(timeout=60) as client:
        await asyncio.gather(*(worker(client) for _ in range(8)))
    return accepted


def test_two_replicas_on_postgres_survive_a_kill(tmp_path: Path, pg_url: str) -> None:
    env = base_env(
        ENTENTE_DATABASE_URL=pg_url,
        ENTENTE_BLOB_DIR=str(tmp_path / "shared-blobs"),
        ENTENTE_SYNC_INTERVAL_SECONDS="0.2",
        ENTENTE_RETRY_BASE_SECONDS="0.2",
        ENTENTE_RETRY_MAX_SECONDS="2",
        # A delivery lease is two request timeouts: a killed replica's claims lapse in ~15 s.
        ENTENTE_REQUEST_TIMEOUT_SECONDS="5",
        ENTENTE_LOG_LEVEL="WARNING",
        ENTENTE_RATE_LIMIT_PER_MINUTE="1000000",  # one token shares as fast as it can here
    )
    replica_a = NodeProcess(tmp_path / "uk-aisi", "uk-aisi", env=env)
    replica_b = NodeProcess(tmp_path / "uk-aisi", "uk-aisi", env=env)
    us = NodeProcess(tmp_path / "us-aisi", "us-aisi", env=base_env(ENTENTE_LOG_LEVEL="WARNING"))
    # Both replicas are one node: one home, one URL (here replica A's; partners reach the node
    # through a load balancer in production, and deliveries are made by whichever replica claims).
    prepared = prepare_federation(
        {"uk-aisi": replica_a.url, "us-aisi": us.url},
        root=tmp_path,
        passphrase=PASSPHRASE,
        scrypt_work_factor=10,
        database_urls={"uk-aisi": pg_url},
    )
    replica_b.log_path = tmp_path / "uk-aisi-b.log"
    for node in (us, replica_a):
        node.start()
    replica_b.start()
    try:
        token = prepared["uk-aisi"].tokens["publisher"]
        accepted = asyncio.run(
            _share_all([replica_a.url, replica_b.url], token, COUNT, COUNT // 2, replica_a)
        )
        assert accepted == COUNT
        engine = sa.create_engine(pg_url)

        def delivered() -> int:
            with engine.connect() as conn:
                return int(
                    conn.execute(
                        sa.text(
                            "SELECT count(*) FROM outbox WHERE kind='deliver' AND state='delivered'"
                        )
                    ).scalar_one()
                )

        deadline = time.monotonic() + 240
        while delivered() < COUNT and time.monotonic() < deadline:
            time.sleep(0.5)
        with engine.connect() as conn:
            states = dict(
                conn.execute(
                    sa.text(
                        "SELECT state, count(*) FROM outbox WHERE kind='deliver' GROUP BY state"
                    )
                ).all()
            )
            receipts = conn.execute(
                sa.text("SELECT count(*) FROM outbox WHERE kind='deliver' AND receipt IS NOT NULL")
            ).scalar_one()
            sent = conn.execute(
                sa.text("SELECT count(*) FROM audit_entries WHERE kind='share.allowed'")
            ).scalar_one()
        engine.dispose()
        # A share the killed replica committed but could not answer is retried by the client on
        # the other replica and becomes a second artifact (uploads carry no idempotency key), so
        # the node may hold a few more artifacts than the client counted.
        assert COUNT <= sent <= COUNT + 8
        assert states == {"delivered": sent}, states
        assert receipts == sent
    finally:
        for node in (replica_b, us):
            node.stop()
        replica_a.stop()

    import sqlite3

    with sqlite3.connect(tmp_path / "us-aisi" / "entente.db") as conn:
        artifacts = conn.execute("SELECT count(*) FROM artifacts").fetchone()[0]
        per_artifact = conn.execute(
            "SELECT max(n) FROM (SELECT count(*) AS n FROM audit_entries "
            "WHERE kind='receive.accepted' GROUP BY artifact_id)"
        ).fetchone()[0]
    assert artifacts == sent  # every artifact arrived
    assert per_artifact == 1  # and exactly once

    # One verifiable log, written by both replicas.
    verify = subprocess.run(
        [ENTENTE, "audit", "verify", "--home", str(tmp_path / "uk-aisi"), "--json",
         "--state", str(tmp_path / "audit-state.json")],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    verdict = json.loads(verify.stdout.strip().splitlines()[-1])
    assert verdict["ok"] is True
    assert verdict["entries"] >= 2 * COUNT  # a share and a delivery per artifact, at least
