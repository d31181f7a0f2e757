"""A database that does not answer in time (SQLite's write lock held past the busy timeout by
another process; a PostgreSQL server gone) is a problem document the client can retry, 503
with Retry-After, never a 500 "internal"; nothing of the refused request is kept."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlmodel import col, func, select

from service import app as app_module
from service import db as db_module
from service.audit import refusals
from service.audit.refusals import RefusalLedger
from service.federation.client import PartnerClient
from service.federation.pull import pull_all
from service.models import Artifact, AuditEntry, Outbox, PullState
from service.tokens import Role
from tests.conftest import PG_ADMIN_URL
from tests.service.nodekit import UPLOAD_HEADERS, Kit, make_node, pin, upload_body
from tests.service.test_federation_sync import PortalTransport, accepted, joined, outbox, share

META = json.dumps(
    {"title": "Finding", "tlp": "TLP:AMBER", "topics": ["evaluation/red-teaming"],
     "purposes": ["evaluation"], "partners": ["us-aisi"]}
)  # fmt: skip


@pytest.fixture
def uk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Kit:
    monkeypatch.setattr(db_module, "BUSY_TIMEOUT_MS", 200)  # every connection made from now
    kit = make_node(tmp_path, "uk-aisi")  # SQLite
    pin(kit, make_node(tmp_path, "us-aisi"))
    return kit


@pytest.fixture
def write_lock(uk: Kit) -> Iterator[sqlite3.Connection]:
    """Another process's write transaction on the node's database (an operator's `sqlite3`
    shell, a backup tool), held until the test lets go."""
    path = uk.node.db.engine.url.database
    assert path is not None
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    yield holder
    if holder.in_transaction:
        holder.execute("ROLLBACK")
    holder.close()


def _refusals(kit: Kit) -> list[AuditEntry]:
    with kit.node.db.session() as s:
        query = select(AuditEntry).where(AuditEntry.kind == "request.refused")
        return list(s.exec(query.order_by(col(AuditEntry.id))))


def _count(kit: Kit, model: type) -> int:
    with kit.node.db.session() as s:
        return int(s.exec(select(func.count()).select_from(model)).one())


async def test_a_share_while_the_write_lock_is_held_elsewhere_is_a_503_to_retry(
    uk: Kit, write_lock: sqlite3.Connection
) -> None:
    entries = _count(uk, AuditEntry)
    async with uk.client() as c:
        refused = await c.post(
            "/v1/artifacts",
            content=upload_body(META, b"finding\n"),
            headers={**UPLOAD_HEADERS, **uk.auth(Role.PUBLISHER)},
        )
        assert refused.status_code == 503, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert int(refused.headers["retry-after"]) >= 1
        problem = refused.json()
        assert problem["type"].endswith("database") and problem["status"] == 503
        assert "retry" in problem["detail"]

        ledger = RefusalLedger.of(uk.app.state, uk.node)
        assert ledger.flush() == 0  # the database still does not answer: the refusal is kept
        write_lock.execute("ROLLBACK")  # the other process lets go
        assert _count(uk, Artifact) == 0  # nothing of the refused share was kept
        assert ledger.flush() == 1  # and now it is on record
        [entry] = _refusals(uk)
        assert (entry.rule, entry.decision) == ("database", "deny")
        assert entry.actor.startswith("publisher:publisher-user")
        assert json.loads(entry.detail)["path"] == "/v1/artifacts"
        assert sorted(uk.node.blobs.iter_digests()) == []
        retried = await c.post(
            "/v1/artifacts",
            content=upload_body(META, b"finding\n"),
            headers={**UPLOAD_HEADERS, **uk.auth(Role.PUBLISHER)},
        )
        assert retried.status_code == 201, retried.text
    assert _count(uk, Artifact) == 1
    assert _count(uk, AuditEntry) > entries


async def test_reads_go_on_while_the_write_lock_is_held_elsewhere(
    uk: Kit, write_lock: sqlite3.Connection
) -> None:
    async with uk.client() as c:
        listed = await c.get("/v1/artifacts", headers=uk.auth(Role.READER))
        assert listed.status_code == 200, listed.text
        assert (await c.get("/healthz")).status_code == 200


def test_refusals_kept_while_the_database_is_away_are_bounded_and_all_counted(
    uk: Kit, monkeypatch: pytest.MonkeyPatch, write_lock: sqlite3.Connection
) -> None:
    monkeypatch.setattr(refusals, "DEFERRED_MAX", 3)
    ledger = RefusalLedger.for_node(uk.node)
    for i in range(5):
        ledger.refused_later(
            kind="request.refused", actor="token:reader-user", reason="503 database",
            rule="database", detail={"path": f"/v1/artifacts/{i}"},
        )  # fmt: skip
    assert ledger.flush() == 0
    write_lock.execute("ROLLBACK")
    assert ledger.flush() == 4  # three kept one by one, and one summary counting the other two
    entries = _refusals(uk)
    assert [json.loads(e.detail).get("path") for e in entries[:3]] == [
        f"/v1/artifacts/{i}" for i in range(3)
    ]
    assert (entries[3].rule, json.loads(entries[3].detail)["count"]) == ("summary", 2)
    assert ledger.flush() == 0  # written once


async def test_a_worker_whose_round_meets_a_busy_database_says_why_in_one_line_and_retries(
    uk: Kit, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(app_module, "RETRY_SECONDS", 0.01)
    rounds: list[int] = []
    again = asyncio.Event()

    async def step() -> float:
        rounds.append(len(rounds))
        if len(rounds) == 1:
            locked = sqlite3.OperationalError("database is locked")
            raise sa.exc.OperationalError("UPDATE outbox SET ...", {}, locked)
        again.set()
        return 60.0

    workers = app_module.Workers(uk.node)
    workers.add("deliver", step)
    with caplog.at_level(logging.WARNING, logger="entente.workers"):
        await workers.start()
        await asyncio.wait_for(again.wait(), timeout=30)
        await workers.stop()
    [said] = [r for r in caplog.records if r.name == "entente.workers"]
    assert said.getMessage() == (
        "worker deliver: the database did not answer (database is locked); retrying in 0 s"
    )
    assert said.exc_info is None  # no stack trace for a busy database
    assert rounds == [0, 1]


@pytest.mark.postgres
async def test_a_share_while_the_postgresql_database_refuses_connections_is_a_503_to_retry(
    tmp_path: Path, pg_url: str
) -> None:
    """The node's PostgreSQL database stops taking connections (its server restarting, a
    failover) and its open ones are ended: the share is a 503 to retry, and goes through once
    the database is back, the refusal then on record."""
    kit = make_node(tmp_path, "uk-aisi", db_url=pg_url)
    pin(kit, make_node(tmp_path, "us-aisi"))
    name = pg_url.rsplit("/", 1)[1]
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")

    def connections(allowed: bool) -> None:
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {allowed}'))
            if not allowed:
                conn.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": name},
                )

    share = {
        "content": upload_body(META, b"finding\n"),
        "headers": {**UPLOAD_HEADERS, **kit.auth(Role.PUBLISHER)},
    }
    try:
        async with kit.client() as c:
            connections(False)
            try:
                refused = await c.post("/v1/artifacts", **share)  # type: ignore[arg-type]
            finally:
                connections(True)
            assert refused.status_code == 503, refused.text
            assert refused.json()["type"].endswith("database")
            assert "retry-after" in refused.headers
            retried = await c.post("/v1/artifacts", **share)  # type: ignore[arg-type]
            assert retried.status_code == 201, retried.text
        assert RefusalLedger.of(kit.app.state, kit.node).flush() == 1
        [entry] = _refusals(kit)
        assert entry.rule == "database"
        assert _count(kit, Artifact) == 1
    finally:
        admin.dispose()


def test_refusals_still_kept_when_the_process_stops_are_reported_as_not_audited(
    uk: Kit, write_lock: sqlite3.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = RefusalLedger.for_node(uk.node)
    ledger.refused_later(
        kind="request.refused", actor="token:reader-user", reason="503 database",
        rule="database", detail={"path": "/v1/artifacts"},
    )  # fmt: skip
    with caplog.at_level(logging.ERROR, logger="entente.audit"):
        assert ledger.flush(force=True) == 0  # at shutdown: the last flush there will be
    assert "1 refusal(s) not audited" in caplog.text
    write_lock.execute("ROLLBACK")
    assert ledger.flush() == 0 and _refusals(uk) == []  # not kept for a flush that never comes


def test_a_pull_that_meets_its_own_busy_database_says_why_in_one_line_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The puller's own database held by another process while it stores a pulled page: one
    line saying why (no stack trace, nothing recorded against the partner, whose feed is fine),
    and the next round takes the page."""
    monkeypatch.setattr(db_module, "BUSY_TIMEOUT_MS", 200)
    uk, us = make_node(tmp_path, "uk-aisi"), make_node(tmp_path, "us-aisi")
    pin(uk, us)
    pin(us, uk)
    [artifact_id] = share(uk, 1)
    transport = PortalTransport({"uk-aisi": uk.app, "us-aisi": us.app})
    path = us.node.db.engine.url.database
    assert path is not None
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        client = PartnerClient(us.node, http=httpx.Client(transport=transport))
        holder.execute("BEGIN IMMEDIATE")
        with caplog.at_level(logging.WARNING):
            assert pull_all(us.node, client) == 0
        said = [r for r in caplog.records if r.name == "entente.pull"]
        assert [r.getMessage() for r in said] == [
            "pulling uk-aisi stopped: the database did not answer (database is locked); "
            "pulled again next round"
        ]
        assert all(r.exc_info is None for r in caplog.records)  # no stack trace anywhere
        holder.execute("ROLLBACK")
        with us.node.db.session() as session:
            assert session.get(PullState, "uk-aisi") is None  # no error held against uk-aisi
        assert pull_all(us.node, client) == 1  # the next round takes the page
        assert accepted(us) == {artifact_id: 1}
    finally:
        holder.close()
        transport.close()


def test_a_delivery_that_meets_its_own_busy_database_says_why_in_one_line_and_is_redone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The sender's database held by another process between the claim and the settling of a
    delivery: one line saying why (no stack trace), the row left pending under its lease (not
    failed, not counted as an attempt), and delivered once the lease has ended."""
    monkeypatch.setattr(db_module, "BUSY_TIMEOUT_MS", 200)
    uk, us = make_node(tmp_path, "uk-aisi"), make_node(tmp_path, "us-aisi")
    pair = joined(uk, us)
    [artifact_id] = share(uk, 1)
    path = uk.node.db.engine.url.database
    assert path is not None
    holder = sqlite3.connect(path, isolation_level=None)
    worker = pair.worker(uk)
    claim = worker.claim

    def claim_then_lock(**kwargs: Any) -> list[int]:
        ids = claim(**kwargs)
        holder.execute("BEGIN IMMEDIATE")  # another process takes the write lock
        return ids

    monkeypatch.setattr(worker, "claim", claim_then_lock)
    try:
        with caplog.at_level(logging.WARNING):
            assert worker.run_once() == 1
        said = [r.getMessage() for r in caplog.records if r.name == "entente.outbox"]
        assert said == [
            "delivering 1 outbox row(s) stopped: the database did not answer (database is locked)"
        ]
        assert all(r.exc_info is None for r in caplog.records)  # no stack trace anywhere
        holder.execute("ROLLBACK")
        [row] = [r for r in outbox(uk) if r.kind == "deliver"]
        assert (row.state, row.attempts, row.lease_owner) == ("pending", 0, worker.owner)
        assert accepted(us) == {artifact_id: 1}  # the partner took it; the receipt was lost
        with uk.node.db.engine.begin() as conn:  # the lease runs out
            conn.execute(sa.update(Outbox).values(lease_until=None))
        monkeypatch.setattr(worker, "claim", claim)
        assert worker.run_once() == 1
        [row] = [r for r in outbox(uk) if r.kind == "deliver"]
        assert row.state == "delivered" and row.receipt
        assert accepted(us) == {artifact_id: 1}  # stored once
    finally:
        holder.close()
        pair.transport.close()


def test_a_delivery_failing_otherwise_whose_settling_meets_the_busy_database_says_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A delivery job that fails for a reason of its own (a defect: its stack trace is logged),
    and whose recording of that failure then meets the database held by another process: one
    more line saying so, nothing raised out of the lane, the row pending under its lease with no
    attempt counted, and delivered once the lease has ended."""
    monkeypatch.setattr(db_module, "BUSY_TIMEOUT_MS", 200)
    uk, us = make_node(tmp_path, "uk-aisi"), make_node(tmp_path, "us-aisi")
    pair = joined(uk, us)
    [artifact_id] = share(uk, 1)
    path = uk.node.db.engine.url.database
    assert path is not None
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    worker = pair.worker(uk)
    deliver = worker._batch

    def lock_then_fail(*args: Any) -> None:
        holder.execute("BEGIN IMMEDIATE")  # another process takes the write lock
        raise RuntimeError("a defect in the delivery")

    monkeypatch.setattr(worker, "_batch", lock_then_fail)
    try:
        with caplog.at_level(logging.WARNING):
            assert worker.run_once() == 1
        said = [r for r in caplog.records if r.name.startswith("entente.")]
        assert [r.getMessage() for r in said] == [
            "an outbox job failed unexpectedly",
            "recording the failure of 1 outbox row(s) stopped: the database did not answer "
            "(database is locked); delivered again once their lease ends",
        ]
        assert said[0].exc_info is not None and said[1].exc_info is None
        holder.execute("ROLLBACK")
        [row] = [r for r in outbox(uk) if r.kind == "deliver"]
        assert (row.state, row.attempts, row.lease_owner) == ("pending", 0, worker.owner)
        assert accepted(us) == {}
        with uk.node.db.engine.begin() as conn:  # the lease runs out
            conn.execute(sa.update(Outbox).values(lease_until=None))
        monkeypatch.setattr(worker, "_batch", deliver)
        assert worker.run_once() == 1
        [row] = [r for r in outbox(uk) if r.kind == "deliver"]
        assert row.state == "delivered" and row.receipt
        assert accepted(us) == {artifact_id: 1}
    finally:
        holder.close()
        pair.transport.close()
