"""The delivery worker, the feed pull and key rotation, in-process.

:class:`PortalTransport` lets the synchronous :class:`PartnerClient` reach in-process partner
apps: each request is handed to an ``httpx.ASGITransport`` on an event loop in a helper thread
(``anyio`` blocking portal), so the real routes, signatures and receipts are exercised without
sockets.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio.from_thread
import httpx
import pytest
from fastapi import FastAPI
from sqlmodel import col, func, select

from crypto.dsse import Envelope
from crypto.receipt import verify_receipt
from service.app import create_app
from service.artifacts import read as reading
from service.artifacts import share as sharing
from service.artifacts.terms import ShareTerms
from service.db import open_database
from service.federation.client import PartnerClient, retry_after_seconds
from service.federation.outbox import BATCH_ITEM_MAX_BYTES, OutboxWorker
from service.federation.pull import pull_all
from service.federation.rotation import queue_rotation
from service.federation.settle import Retry
from service.federation.status import sync_state
from service.home import open_home, rotate_keys
from service.models import Artifact, AuditEntry, Outbox, Partner, PartnerKey
from service.node import Node
from service.partners import partner_verify_keys
from service.tokens import Principal, Role
from tests.service.nodekit import CREATED, Kit, folder_store, make_node, pin

PUBLISHER = Principal(token_id="tok_test", name="tester", role=Role.PUBLISHER)


class PortalTransport(httpx.BaseTransport):
    """Routes requests by host to in-process ASGI apps; ``down`` hosts refuse to connect."""

    def __init__(self, apps: dict[str, FastAPI]) -> None:
        self.apps = apps
        self.down: set[str] = set()
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._cm = anyio.from_thread.start_blocking_portal()
        self._portal = self._cm.__enter__()

    def close(self) -> None:
        self._cm.__exit__(None, None, None)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        with self._lock:
            self.requests.append((request.method, request.url.path))
        if host in self.down or host not in self.apps:
            raise httpx.ConnectError(f"{host} is down", request=request)
        body = request.read()
        app = self.apps[host]

        async def call() -> tuple[int, list[tuple[str, str]], bytes]:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url=f"http://{host}") as c:
                r = await c.request(
                    request.method, str(request.url), headers=request.headers, content=body
                )
                return r.status_code, list(r.headers.multi_items()), r.content

        status, headers, content = self._portal.call(call)
        return httpx.Response(status, headers=headers, content=content)


@dataclass
class Pair:
    uk: Kit
    us: Kit
    transport: PortalTransport

    def client(self, kit: Kit) -> PartnerClient:
        return PartnerClient(kit.node, http=httpx.Client(transport=self.transport))

    def worker(self, kit: Kit, **kwargs: Any) -> OutboxWorker:
        return OutboxWorker(kit.node, self.client(kit), **kwargs)


def joined(uk: Kit, us: Kit) -> Pair:
    """``uk`` and ``us`` pinning each other, reachable through one in-process transport (close
    ``pair.transport`` when done)."""
    pin(uk, us)
    pin(us, uk)
    return Pair(uk, us, PortalTransport({"uk-aisi": uk.app, "us-aisi": us.app}))


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    uk = make_node(tmp_path, "uk-aisi", retry_base_seconds=10.0, retry_max_seconds=60.0)
    pair = joined(uk, make_node(tmp_path, "us-aisi"))
    yield pair
    pair.transport.close()


def share(kit: Kit, n: int = 1, *, size: int = 4096, to: str = "us-aisi") -> list[str]:
    meta = ShareTerms(
        title="finding", tlp="TLP:GREEN", topics=("evaluation",), purposes=("evaluation",),
        partners=(to,),
    )  # fmt: skip
    ids = []
    for i in range(n):
        decisions = sharing.decide_share(kit.node, meta, principal=PUBLISHER)
        content = (f"{i}:".encode() * size)[:size]
        row = sharing.share_artifact(
            kit.node, kit.node.blobs, meta, io.BytesIO(content), principal=PUBLISHER,
            decisions=decisions,
        )  # fmt: skip
        ids.append(row.id)
    return ids


def accepted(kit: Kit) -> dict[str, int]:
    """receive.accepted events per artifact id."""
    with kit.node.db.session() as session:
        rows = session.exec(
            select(AuditEntry.artifact_id, func.count())
            .where(AuditEntry.kind == "receive.accepted")
            .group_by(col(AuditEntry.artifact_id))
        ).all()
    return {a: n for a, n in rows if a}


def outbox(kit: Kit) -> list[Outbox]:
    with kit.node.db.session() as session:
        return list(session.exec(select(Outbox).order_by(col(Outbox.id))))


def receipts_verify(sender: Kit, receiver: Kit) -> None:
    with sender.node.db.session() as session:
        trusted = partner_verify_keys(session, receiver.node.node_id)
        for row in session.exec(select(Outbox).where(Outbox.kind == "deliver")):
            art = session.exec(select(Artifact).where(Artifact.id == row.artifact_id)).first()
            assert row.state == "delivered" and row.receipt and art is not None
            verify_receipt(
                Envelope.from_bytes(row.receipt.encode()),
                trusted=trusted, expect_kind="delivery", artifact_id=art.id,
                sha256=art.sha256, receiver=receiver.node.node_id, sender=sender.node.node_id,
            )  # fmt: skip


def test_small_artifacts_go_in_batches_large_ones_stream(pair: Pair) -> None:
    small = share(pair.uk, 70)
    large = share(pair.uk, 1, size=BATCH_ITEM_MAX_BYTES + 1)
    worker = pair.worker(pair.uk)
    try:
        assert worker.run_once() == 71
    finally:
        worker.close()
    assert accepted(pair.us) == dict.fromkeys(small + large, 1)
    receipts_verify(pair.uk, pair.us)
    inbox_posts = [p for m, p in pair.transport.requests if p == "/federation/v1/inbox"]
    assert len(inbox_posts) == 3  # 64 + 6 small in two batches, the large one alone
    with pair.uk.node.db.session() as session:
        kinds = [e.kind for e in session.exec(select(AuditEntry))]
    assert kinds.count("delivery.sent") == 71 and kinds.count("receipt.recorded") == 71
    # Each receipted delivery's latency, per partner (share commit to signed receipt).
    assert sample(pair.uk, "entente_delivery_seconds_count", "us-aisi") == 71.0


def sample(kit: Kit, name: str, partner: str) -> float | None:
    return kit.node.metrics.registry.get_sample_value(name, {"partner": partner})


def test_a_lost_receipt_means_a_repeat_delivery_with_the_same_receipt(pair: Pair) -> None:
    [art_id] = share(pair.uk)
    worker = pair.worker(pair.uk)
    try:
        worker.run_once()
        first = outbox(pair.uk)[0].receipt
        with pair.uk.node.db.session() as session:  # as if the reply never arrived
            row = session.exec(select(Outbox)).one()
            row.state, row.receipt, row.delivered_at = "pending", None, None
            session.add(row)
        assert worker.run_once() == 1
    finally:
        worker.close()
    assert outbox(pair.uk)[0].receipt == first
    assert accepted(pair.us) == {art_id: 1}


def test_unreachable_partner_backs_off_then_delivers(pair: Pair) -> None:
    [art_id] = share(pair.uk)
    pair.transport.down.add("us-aisi")
    worker = pair.worker(pair.uk)
    try:
        start = datetime.now(UTC)
        assert worker.run_once() == 1
        [row] = outbox(pair.uk)
        assert row.state == "pending" and row.attempts == 1
        assert "unreachable" in (row.last_error or "")
        delay = (row.next_attempt_at - start).total_seconds()
        assert 10 * 0.5 - 1 <= delay <= 10 * 1.5 + 1  # base 10 s, jitter 0.5-1.5
        assert worker.run_once() == 0  # not due yet
        with pair.uk.node.db.session() as session:
            [status] = [s for s in sync_state(session) if s.partner == "us-aisi"]
        assert (status.pending, status.failing, status.delivered) == (1, 1, 0)
        assert status.last_error and "unreachable" in status.last_error
        pair.transport.down.clear()
        with pair.uk.node.db.session() as session:
            row = session.exec(select(Outbox)).one()
            row.next_attempt_at = datetime.now(UTC) - timedelta(seconds=1)
            session.add(row)
        assert worker.run_once() == 1
    finally:
        worker.close()
    [row] = outbox(pair.uk)
    assert row.state == "delivered" and row.attempts == 2 and row.last_error is None
    assert accepted(pair.us) == {art_id: 1}
    with pair.uk.node.db.session() as session:
        [status] = [s for s in sync_state(session) if s.partner == "us-aisi"]
    assert (status.pending, status.failing, status.delivered) == (0, 0, 1)
    assert status.last_contact is not None


def test_a_refusal_fails_the_row_for_an_operator(pair: Pair) -> None:
    share(pair.uk)
    (pair.us.node.home.policies_dir / "uk-aisi.yaml").unlink()  # the US accepts nothing now
    pair.us.node.policies.reload(actor="test", now=pair.us.node.now())
    worker = pair.worker(pair.uk)
    try:
        worker.run_once()
    finally:
        worker.close()
    [row] = outbox(pair.uk)
    assert row.state == "failed" and "403" in (row.last_error or "")
    with pair.uk.node.db.session() as session:
        failed = session.exec(select(AuditEntry).where(AuditEntry.kind == "delivery.failed")).one()
    assert json.loads(failed.detail)["retrying"] is False


def test_pull_catches_up_inline_and_the_sender_records_the_receipts(pair: Pair) -> None:
    ids = share(pair.uk, 30) + share(pair.uk, 1, size=200_000)  # one too big to inline
    stored = pull_all(pair.us.node, pair.client(pair.us))
    assert stored == 31
    assert accepted(pair.us) == dict.fromkeys(ids, 1)
    payloads = [p for _, p in pair.transport.requests if p.endswith("/payload")]
    assert len(payloads) == 1
    # the UK settled its outbox from the pulled receipts, without pushing anything
    receipts_verify(pair.uk, pair.us)
    with pair.uk.node.db.session() as session:
        sent = session.exec(select(AuditEntry).where(AuditEntry.kind == "delivery.sent")).all()
    assert len(sent) == 31 and all(json.loads(e.detail)["via"] == "pull" for e in sent)
    assert not [p for _, p in pair.transport.requests if p == "/federation/v1/inbox"]
    # a second round finds nothing new
    assert pull_all(pair.us.node, pair.client(pair.us)) == 0
    assert accepted(pair.us) == dict.fromkeys(ids, 1)


def test_push_and_pull_racing_store_once(pair: Pair) -> None:
    ids = share(pair.uk, 20)
    worker = pair.worker(pair.uk)
    errors: list[BaseException] = []

    def pull() -> None:
        try:
            pull_all(pair.us.node, pair.client(pair.us))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=pull)
    thread.start()
    try:
        worker.run_once()
    finally:
        thread.join()
        worker.close()
    assert not errors
    assert accepted(pair.us) == dict.fromkeys(ids, 1)
    with pair.uk.node.db.session() as session:
        sent = session.exec(
            select(AuditEntry.artifact_id, func.count())
            .where(AuditEntry.kind == "delivery.sent")
            .group_by(col(AuditEntry.artifact_id))
        ).all()
    assert dict(sent) == dict.fromkeys(ids, 1)


def _reopen(kit: Kit) -> Kit:
    """``kit`` with its keys read again from its home (after a rotation)."""
    node = kit.node
    fresh = open_home(node.home.path)
    new = Node(
        settings=node.settings, home=fresh, keys=fresh.unlock(node.settings), db=node.db,
        blobs=node.blobs, policies=node.policies,
    )  # fmt: skip
    return Kit(node=new, app=create_app(new, start_workers=False), tokens=kit.tokens)


def test_rotated_descriptor_is_pushed_with_the_old_key_and_accepted(pair: Pair) -> None:
    [before] = share(pair.uk)
    worker = pair.worker(pair.uk)
    try:
        worker.run_once()
    finally:
        worker.close()
    old_fp = pair.uk.node.keys.signing.fingerprint
    now = datetime.now(UTC)
    rotation = rotate_keys(pair.uk.node.home, pair.uk.node.settings, now=now)
    uk = _reopen(pair.uk)
    pair.transport.apps["uk-aisi"] = uk.app
    with uk.node.db.session() as session:
        assert queue_rotation(session, envelope=rotation.descriptor, actor="t", now=now) == [
            "us-aisi"
        ]
    [after] = share(uk)  # queued after the rotation: held back until the US knows the key
    worker = OutboxWorker(uk.node, pair.client(uk))
    try:
        assert worker.run_once() == 1  # only the descriptor push
        assert worker.run_once() == 1  # then the delivery
    finally:
        worker.close()
    with pair.us.node.db.session() as session:
        partner = session.get(Partner, "uk-aisi")
        keys = {k.fingerprint: k.retired_at for k in session.exec(select(PartnerKey))}
        rotated = session.exec(
            select(AuditEntry).where(AuditEntry.kind == "partner.key_rotated")
        ).all()
    assert partner is not None and partner.fingerprint == rotation.home.fingerprint
    assert keys[old_fp] is not None and keys[rotation.home.fingerprint] is None
    assert len(rotated) == 1
    assert accepted(pair.us) == {before: 1, after: 1}
    # the artifact signed with the old key still opens at the US and at the UK itself
    for kit, art_id in ((pair.us, before), (uk, before), (pair.us, after)):
        with kit.node.db.session() as session:
            row = session.exec(select(Artifact).where(Artifact.id == art_id)).first()
        assert row is not None
        assert b"".join(reading.plaintext_chunks(kit.node, kit.node.blobs, row))


async def test_descriptor_endpoint_refusals(pair: Pair) -> None:
    from tests.service.test_federation_input import sign

    async with pair.us.client() as client:
        # another node's descriptor, sent by the UK
        body = pair.us.node.descriptor().to_bytes()
        headers = sign(pair.uk, pair.us, "POST", "/federation/v1/descriptor", body,
                       content_type="application/json")  # fmt: skip
        r = await client.post("/federation/v1/descriptor", content=body, headers=headers)
        assert r.status_code == 403 and r.json()["reason"] == "not-own"
        # garbage
        headers = sign(pair.uk, pair.us, "POST", "/federation/v1/descriptor", b"{}",
                       content_type="application/json")  # fmt: skip
        r = await client.post("/federation/v1/descriptor", content=b"{}", headers=headers)
        assert r.status_code == 422
        # a new key without the old one's signature (an impostor's rotation)
        from crypto.descriptor import NodeDescriptor, sign_descriptor
        from crypto.keys import SigningKey

        impostor = SigningKey.generate()
        fake = NodeDescriptor(
            node_id="uk-aisi", name="UK", url="http://uk-aisi", signing_key=impostor.public,
            age_recipient=pair.uk.node.home.age_recipient, created=datetime.now(UTC),
            expires=datetime.now(UTC) + timedelta(days=1),
        )  # fmt: skip
        body = sign_descriptor(fake, key=impostor).to_bytes()
        headers = sign(pair.uk, pair.us, "POST", "/federation/v1/descriptor", body,
                       content_type="application/json")  # fmt: skip
        r = await client.post("/federation/v1/descriptor", content=body, headers=headers)
        assert r.status_code == 422 and r.json()["type"] == "urn:entente:problem:partner"
    with pair.us.node.db.session() as session:
        partner = session.get(Partner, "uk-aisi")
    assert partner is not None and partner.fingerprint == pair.uk.node.keys.signing.fingerprint


@pytest.mark.postgres
def test_two_workers_on_postgres_never_claim_the_same_row(tmp_path: Path, pg_url: str) -> None:
    kit = make_node(tmp_path, "uk-aisi", db_url=pg_url)
    pin(kit, make_node(tmp_path, "us-aisi"))
    now = datetime.now(UTC)
    with kit.node.db.session() as session:
        for i in range(600):
            session.add(
                Outbox(partner="us-aisi", kind="deliver", artifact_id=f"art_{i}",
                       created_at=now, next_attempt_at=now)
            )  # fmt: skip
    # a second replica: its own engine (connection pool) on the same database
    other_db = open_database(pg_url)
    other = Node(
        settings=kit.node.settings, home=kit.node.home, keys=kit.node.keys, db=other_db,
        blobs=kit.node.blobs, policies=kit.node.policies,
    )  # fmt: skip
    CREATED.append(other)
    unused = httpx.Client(transport=httpx.MockTransport(lambda _r: httpx.Response(503)))
    dummy = PartnerClient(kit.node, http=unused)
    workers = [
        OutboxWorker(kit.node, dummy, batch=25, owner="replica-a"),
        OutboxWorker(other, dummy, batch=25, owner="replica-b"),
    ]
    claims: dict[str, list[int]] = {"replica-a": [], "replica-b": []}
    barrier = threading.Barrier(2)

    def run(worker: OutboxWorker) -> None:
        barrier.wait()
        while ids := worker.claim():
            claims[worker.owner].extend(ids)

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for w in workers:
        w.close()
    dummy.close()
    a, b = set(claims["replica-a"]), set(claims["replica-b"])
    assert not a & b
    assert len(a) + len(b) == 600 and a and b
    assert len(claims["replica-a"]) == len(a) and len(claims["replica-b"]) == len(b)
    with kit.node.db.session() as session:
        owners = dict(
            session.exec(
                select(Outbox.lease_owner, func.count()).group_by(col(Outbox.lease_owner))
            ).all()
        )
    assert owners == {"replica-a": len(a), "replica-b": len(b)}


def test_an_unexpected_failure_is_retried_not_lost(pair: Pair) -> None:
    [art_id] = share(pair.uk)
    with pair.uk.node.db.session() as session:
        row = session.exec(select(Artifact).where(Artifact.id == art_id)).first()
        assert row is not None and row.blob is not None
        blob = row.blob
    path = folder_store(pair.uk.node).path_for(blob)
    moved = path.with_name("moved")
    path.rename(moved)  # the ciphertext is briefly unreadable (a storage hiccup)
    worker = pair.worker(pair.uk)
    try:
        assert worker.run_once() == 1
        [row] = outbox(pair.uk)
        assert row.state == "pending" and row.attempts == 1 and row.lease_owner is None
        assert "internal error" in (row.last_error or "")
        moved.rename(path)
        with pair.uk.node.db.session() as session:
            again = session.exec(select(Outbox)).one()
            again.next_attempt_at = datetime.now(UTC)
            session.add(again)
        assert worker.run_once() == 1
    finally:
        worker.close()
    assert outbox(pair.uk)[0].state == "delivered"
    assert accepted(pair.us) == {art_id: 1}


class _Busy(httpx.BaseTransport):
    """A partner whose rate limiter answers every request with ``status`` and ``Retry-After``."""

    def __init__(self, status: int, retry_after: str) -> None:
        self.status, self.retry_after = status, retry_after

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        problem = {"type": "about:blank", "title": "busy", "status": self.status, "detail": "busy"}
        return httpx.Response(self.status, headers={"Retry-After": self.retry_after}, json=problem)


@pytest.mark.parametrize(
    ("status", "header", "low", "high"),
    [
        (429, "45", 45, 46),  # beyond the first backoff (base 10 s, at most 15 s with jitter)
        (503, "100000", 60, 61),  # capped at retry_max_seconds (60 s in this fixture)
        (429, "soon", 10 * 0.5 - 1, 10 * 1.5 + 1),  # malformed: the node's own backoff
        (503, "Thu, 01 Jan 1970 00:00:00 GMT", 10 * 0.5 - 1, 10 * 1.5 + 1),  # a past date
    ],
)
def test_the_outbox_waits_as_long_as_the_partners_retry_after(
    pair: Pair, status: int, header: str, low: float, high: float
) -> None:
    share(pair.uk)
    client = PartnerClient(pair.uk.node, http=httpx.Client(transport=_Busy(status, header)))
    worker = OutboxWorker(pair.uk.node, client)
    try:
        start = datetime.now(UTC)
        assert worker.run_once() == 1
    finally:
        worker.close()
    [row] = outbox(pair.uk)
    assert row.state == "pending" and row.attempts == 1
    assert f"({status})" in (row.last_error or "")
    delay = (row.next_attempt_at - start).total_seconds()
    assert low <= delay <= high, delay


def test_retry_after_parses_seconds_and_http_dates() -> None:
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    assert retry_after_seconds("120", now=now) == 120.0
    assert retry_after_seconds(" 0 ", now=now) == 0.0
    assert retry_after_seconds("Thu, 26 Nov 2026 12:01:30 GMT", now=now) == 90.0
    assert retry_after_seconds("Thu, 26 Nov 2026 11:00:00 GMT", now=now) == 0.0
    for bad in (None, "", "-5", "1.5", "soon", "٣", "Thu, 26 Nov 2026 12:01:30"):
        assert retry_after_seconds(bad, now=now) is None, bad


@pytest.mark.parametrize("status", [{}, [403], "403", None, True, 201.0])
def test_a_batch_result_with_a_malformed_status_is_retried(pair: Pair, status: object) -> None:
    """A partner's signed batch reply is the partner's to write: a result whose status is not
    an integer (a JSON object could not even be looked up among the permanent refusals: a
    TypeError took the whole batch) is a malformed result, retried like the others."""
    [art_id] = share(pair.uk)
    with pair.uk.node.db.session() as session:
        artifact = session.exec(select(Artifact).where(Artifact.id == art_id)).one()
        partner = session.get(Partner, "us-aisi")
    assert partner is not None
    worker = pair.worker(pair.uk)
    try:
        trusted = worker._keys("us-aisi")
        outcome = worker._item_outcome(partner, artifact, {"status": status}, trusted)
    finally:
        worker.close()
    assert isinstance(outcome, Retry) and "malformed" in outcome.error
