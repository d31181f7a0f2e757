"""Retention carried out, in-process, on two nodes with one injected clock (no sleeps): the
worker deletes what expiry (``delete_at_expiry``) and ``retain_max`` require at both ends, each
deletion audited with its rule and clause, the holder's signed statement reaches the origin, and
a share whose terms contradict each other is refused."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from crypto.dsse import Envelope
from crypto.receipt import verify_receipt
from service.artifacts import retention
from service.artifacts import share as sharing
from service.artifacts.read import open_for_read
from service.artifacts.retention import RetentionWorker
from service.artifacts.retention_rules import RetentionFacts
from service.artifacts.revoke import revoke_artifact
from service.artifacts.sweep import sweep
from service.artifacts.terms import ShareTerms
from service.db import open_database
from service.errors import ConflictError, InvalidInputError
from service.federation.receive import Receiver
from service.models import Artifact, AuditEntry, Outbox
from service.node import Node
from service.partners import partner_keys
from service.tokens import Principal, Role
from tests.service.nodekit import UPLOAD_HEADERS, Kit, make_node, pin, upload_body
from tests.service.test_federation_input import sealed_artifact
from tests.service.test_federation_sync import Pair, joined

PUBLISHER = Principal(token_id="tok_test", name="tester", role=Role.PUBLISHER)


class Clock:
    """One simulated time for both nodes (HTTP signatures allow only a little skew)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def pair(tmp_path: Path, clock: Clock) -> Iterator[Pair]:
    # Descriptors valid for ten years: the clock moves two years ahead.
    uk = make_node(tmp_path, "uk-aisi", descriptor_validity_days=3650)
    us = make_node(tmp_path, "us-aisi", descriptor_validity_days=3650)
    uk.node.clock = us.node.clock = clock
    pair = joined(uk, us)
    yield pair
    pair.transport.close()


def share(kit: Kit, *, tlp: str = "TLP:GREEN", **when: datetime) -> str:
    meta = ShareTerms(
        title="finding", tlp=tlp, topics=("evaluation",), purposes=("evaluation",),
        partners=("us-aisi",), **when,  # type: ignore[arg-type]
    )  # fmt: skip
    decisions = sharing.decide_share(kit.node, meta, principal=PUBLISHER)
    row = sharing.share_artifact(
        kit.node, kit.node.blobs, meta, io.BytesIO(b"secret findings" * 100),
        principal=PUBLISHER, decisions=decisions,
    )  # fmt: skip
    return row.id


def deliver(pair: Pair, kit: Kit) -> None:
    worker = pair.worker(kit)
    try:
        while worker.run_once():
            pass
    finally:
        worker.close()


def row_of(kit: Kit, art_id: str) -> Artifact:
    with kit.node.db.session() as session:
        [row] = session.exec(select(Artifact).where(Artifact.id == art_id)).all()
        return row


def entries(kit: Kit, kind: str, art_id: str) -> list[AuditEntry]:
    with kit.node.db.session() as session:
        return list(
            session.exec(
                select(AuditEntry).where(AuditEntry.kind == kind, AuditEntry.artifact_id == art_id)
            )
        )


def test_expired_artifact_deleted_at_both_ends_and_acknowledged(pair: Pair, clock: Clock) -> None:
    art = share(pair.uk, expires_at=clock.now + timedelta(days=1))
    deliver(pair, pair.uk)
    held = row_of(pair.us, art)
    assert held.blob is not None and pair.us.node.blobs.exists(held.blob)
    origin_blob = row_of(pair.uk, art).blob
    assert origin_blob is not None

    # Not yet due: a round deletes nothing.
    for kit in (pair.uk, pair.us):
        assert RetentionWorker(kit.node).run_once().deleted == ()
    clock.advance(days=1, seconds=1)
    assert [d.artifact_id for d in RetentionWorker(pair.us.node).plan()] == [art]
    [done] = RetentionWorker(pair.us.node).run_once().deleted
    assert (done.deletion.reason, done.deletion.rule) == ("expired", "share-evaluation")
    assert RetentionWorker(pair.us.node).run_once().deleted == ()  # idempotent

    # The recipient: ciphertext gone, row and manifest kept, the deletion audited.
    after = row_of(pair.us, art)
    assert after.blob is None and after.deleted_at == clock.now and after.manifest
    assert not pair.us.node.blobs.exists(held.blob)
    [entry] = entries(pair.us, "artifact.deleted", art)
    assert entry.partner == "uk-aisi" and entry.rule == "share-evaluation"
    assert entry.clause and "§2(a)" in entry.clause
    detail = json.loads(entry.detail)
    assert detail["reason"] == "expired" and detail["obligation"]["kind"] == "delete_at_expiry"
    assert detail["obligation"]["stated_by"] == "origin" and detail["acknowledged"] is True

    # The signed deletion notice reaches the origin, which verifies and records it.
    deliver(pair, pair.us)
    [ack] = entries(pair.uk, "deletion.acknowledged", art)
    assert ack.partner == "us-aisi" and ack.rule == "share-evaluation"
    statement = Envelope.from_json(json.loads(ack.detail)["statement"])
    with pair.uk.node.db.session() as session:
        keys = partner_keys(session, "us-aisi")
    sha256 = row_of(pair.uk, art).sha256
    verify_receipt(
        statement, keysets=keys.sets_valid_at(clock.now), expect_kind="deletion",
        artifact_id=art, sha256=sha256, receiver="us-aisi", sender="uk-aisi",
    )  # fmt: skip
    assert len(entries(pair.us, "deletion_notice.sent", art)) == 1
    with pair.us.node.db.session() as session:
        [notice] = session.exec(select(Outbox).where(Outbox.kind == "notice")).all()
    assert notice.state == "delivered" and notice.receipt

    # The origin's own copy: its share decision said delete_at_expiry too.
    [own] = RetentionWorker(pair.uk.node).run_once().deleted
    assert own.direction == "sent" and own.deletion.rule == "share-evaluation"
    assert row_of(pair.uk, art).blob is None and not pair.uk.node.blobs.exists(origin_blob)
    [mine] = entries(pair.uk, "artifact.deleted", art)
    assert mine.partner is None and json.loads(mine.detail)["acknowledged"] is False
    with pair.uk.node.db.session() as session:  # the origin notifies nobody of its own copy
        assert session.exec(select(Outbox).where(Outbox.kind == "notice")).all() == []


def test_retain_max_on_a_read_rule_deletes_after_its_days(pair: Pair, clock: Clock) -> None:
    art = share(pair.uk, tlp="TLP:AMBER")
    deliver(pair, pair.uk)
    clock.advance(days=729)
    assert RetentionWorker(pair.us.node).run_once().deleted == ()
    clock.advance(days=95)  # 824 days: the TLP:AMBER artifact
    [done] = RetentionWorker(pair.us.node).run_once().deleted
    assert done.deletion.reason == "retention"
    [entry] = entries(pair.us, "artifact.deleted", art)
    assert entry.rule == "read-amber-inform" and entry.clause and "§4(b)" in entry.clause
    assert json.loads(entry.detail)["obligation"] == {
        "kind": "retain_max", "days": 730, "stated_by": "own",
    }  # fmt: skip
    assert row_of(pair.us, art).blob is None
    deliver(pair, pair.us)
    [ack] = entries(pair.uk, "deletion.acknowledged", art)
    assert ack.rule == "read-amber-inform" and json.loads(ack.detail)["reason"] == "retention"
    # The origin shared it under no retention of its own: it keeps its sealed copy.
    assert RetentionWorker(pair.uk.node).run_once().deleted == ()


def test_a_round_is_bounded_and_the_cursor_wraps(tmp_path: Path, clock: Clock) -> None:
    uk = make_node(tmp_path, "uk-aisi", retention_batch=2)
    us = make_node(tmp_path, "us-aisi")
    uk.node.clock = clock
    pin(uk, us)
    arts = [share(uk, expires_at=clock.now + timedelta(hours=1)) for _ in range(5)]
    clock.advance(hours=2)
    worker = RetentionWorker(uk.node)
    rounds = [worker.run_once() for _ in range(3)]
    assert [len(r.deleted) for r in rounds] == [2, 2, 1]
    assert [r.more for r in rounds] == [True, True, False]
    assert sorted(d.artifact_id for r in rounds for d in r.deleted) == sorted(arts)
    assert worker.run_once().deleted == ()


def test_a_crash_before_the_blob_delete_leaves_only_a_swept_orphan(
    pair: Pair, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    art = share(pair.uk, expires_at=clock.now + timedelta(hours=1))
    blob = row_of(pair.uk, art).blob
    assert blob is not None
    clock.advance(hours=2)

    def crash(digest: str) -> None:
        raise RuntimeError("killed")

    monkeypatch.setattr(pair.uk.node.blobs, "delete", crash)
    with pytest.raises(RuntimeError):
        RetentionWorker(pair.uk.node).run_once()
    monkeypatch.undo()
    # The row says it holds nothing; the blob is an orphan that the start-up sweep removes.
    assert row_of(pair.uk, art).blob is None and pair.uk.node.blobs.exists(blob)
    report = sweep(pair.uk.node, clock=lambda: 4e9)  # 2096: far past the grace period
    assert report.orphans_removed == 1 and report.missing_blobs == 0
    assert not pair.uk.node.blobs.exists(blob)
    assert len(entries(pair.uk, "artifact.deleted", art)) == 1


def test_revoked_copy_still_holding_ciphertext_is_deleted(pair: Pair, clock: Clock) -> None:
    art = share(pair.uk)
    revoke_artifact(pair.uk.node, art, principal=PUBLISHER, reason="withdrawn")
    [done] = RetentionWorker(pair.uk.node).run_once().deleted
    assert done.deletion.reason == "revoked"
    [entry] = entries(pair.uk, "artifact.deleted", art)
    assert entry.rule == "revoked" and row_of(pair.uk, art).blob is None


@pytest.mark.parametrize(
    ("tlp", "embargo_days", "expiry_days", "reason", "rule"),
    [
        ("TLP:GREEN", 10, 10, "embargo-after-expiry", "embargo-after-expiry"),
        ("TLP:GREEN", 11, 10, "embargo-after-expiry", "embargo-after-expiry"),
    ],
)
def test_inconsistent_terms_refused_at_share(
    pair: Pair, clock: Clock, tlp: str, embargo_days: int, expiry_days: int, reason: str, rule: str
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        share(
            pair.uk, tlp=tlp, embargo_until=clock.now + timedelta(days=embargo_days),
            expires_at=clock.now + timedelta(days=expiry_days),
        )  # fmt: skip
    assert caught.value.extra["reason"] == reason
    with pair.uk.node.db.session() as session:
        [denied] = session.exec(select(AuditEntry).where(AuditEntry.kind == "share.denied")).all()
        assert session.exec(select(Artifact)).all() == []
    assert denied.rule == rule and denied.partner == "us-aisi"
    assert json.loads(denied.detail)["reason"] == reason


async def test_retention_shorter_than_the_embargo_is_a_422_naming_the_rule(
    tmp_path: Path,
) -> None:
    uk = make_node(tmp_path, "uk-aisi")
    us = make_node(tmp_path, "us-aisi")
    pin(uk, us)
    # The origin's own terms keep TLP:AMBER shares at most 30 days.
    path = uk.node.home.policies_dir / "us-aisi.yaml"
    text = path.read_text()
    marker = "      attribute: UK AI Safety Institute\n      delete_at_expiry: true\n"
    assert marker in text
    path.write_text(text.replace(marker, marker + "      retain_max: {days: 30}\n", 1))
    uk.node.policies.reload(actor="test", now=uk.node.now())
    now = datetime.now(UTC)
    metadata = {
        "title": "finding", "tlp": "TLP:AMBER", "topics": ["evaluation"],
        "purposes": ["evaluation"], "partners": ["us-aisi"],
        "embargo_until": (now + timedelta(days=60)).isoformat(),
    }  # fmt: skip
    async with uk.client() as client:
        answer = await client.post(
            "/v1/artifacts", content=upload_body(json.dumps(metadata), b"x" * 64),
            headers={**UPLOAD_HEADERS, **uk.auth(Role.PUBLISHER)},
        )  # fmt: skip
    assert answer.status_code == 422, answer.text
    problem = answer.json()
    assert problem["reason"] == "retention-before-embargo"
    assert problem["rule"] == "share-evaluation" and "§2(a)" in problem["clause"]
    assert problem["partner"] == "us-aisi" and "30 days" in problem["detail"]
    with uk.node.db.session() as session:
        [denied] = session.exec(select(AuditEntry).where(AuditEntry.kind == "share.denied")).all()
    assert denied.rule == "share-evaluation" and json.loads(denied.detail)["reason"] == (
        "retention-before-embargo"
    )


READER = Principal(token_id="tok_reader", name="reader", role=Role.READER)


def test_an_access_and_a_deletion_notice_ring_the_delivery_doorbell(
    pair: Pair, clock: Clock
) -> None:
    """Each notice a commit queues goes at once, as a share's deliveries do, not at the worker's
    next poll (``service.doorbell``; any committed outbox row rings it,
    tests/service/test_commit_doorbell.py): an access notice (the read rule's ``inform``) and a
    deletion acknowledgement. A received revocation with no onward copies to tell queues
    nothing and rings nothing."""
    art = share(pair.uk, tlp="TLP:AMBER")
    deliver(pair, pair.uk)
    bell = pair.us.node.deliveries
    rings = bell.rings
    stream = open_for_read(pair.us.node, pair.us.node.blobs, art, principal=READER)
    assert b"".join(stream.chunks) == b"secret findings" * 100
    assert bell.rings == rings + 1  # the read rule says inform

    clock.advance(days=825)  # past the read rule's retain_max of 730 days
    [done] = RetentionWorker(pair.us.node).run_once().deleted
    assert done.deletion.term is not None and bell.rings == rings + 2

    other = share(pair.uk, tlp="TLP:GREEN")
    deliver(pair, pair.uk)
    revoke_artifact(pair.uk.node, other, principal=PUBLISHER, reason="superseded")
    deliver(pair, pair.uk)
    assert row_of(pair.us, other).revoked_at is not None
    assert bell.rings == rings + 2  # no onward copies: nothing queued, no ring


def test_a_round_looks_only_at_the_rows_that_may_be_due(
    pair: Pair, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row worked out under the policy version in force and not yet due is not looked at
    again (a round costs what is due, not what is held); its stored time brings it back, and so
    do a revocation and a reload that changes the terms, where the rule decides again."""
    looked: list[str] = []
    work_out = retention.retention_facts

    def counted(node: Node, row: Artifact) -> RetentionFacts:
        looked.append(row.id)
        return work_out(node, row)

    monkeypatch.setattr(retention, "retention_facts", counted)
    kept = [share(pair.uk, tlp="TLP:AMBER") for _ in range(3)]  # the read rule: 730 days
    expiring = share(pair.uk, expires_at=clock.now + timedelta(days=1))  # at expiry
    deliver(pair, pair.uk)
    us, uk = RetentionWorker(pair.us.node), RetentionWorker(pair.uk.node)
    assert us.run_once().deleted == () and sorted(looked) == sorted([*kept, expiring])
    assert uk.run_once().deleted == () and len(looked) == 8  # the origin keeps its copies
    looked.clear()
    assert us.run_once().deleted == () and uk.run_once().deleted == () and looked == []

    clock.advance(days=1, seconds=1)  # the stored expiry has come: that row alone
    [gone] = us.run_once().deleted
    assert gone.artifact_id == expiring and looked == [expiring]

    revoke_artifact(pair.uk.node, kept[0], principal=PUBLISHER, reason="withdrawn")
    looked.clear()
    # The origin: its own copy revoked, and the expiring one (its own terms), looked at alone.
    gone_at_origin = {(d.artifact_id, d.deletion.reason) for d in uk.run_once().deleted}
    assert gone_at_origin == {(kept[0], "revoked"), (expiring, "expired")}
    assert sorted(looked) == sorted([kept[0], expiring])
    deliver(pair, pair.uk)  # the revocation: the partner deletes its copy on receipt
    assert row_of(pair.us, kept[0]).blob is None

    # A reload narrowing the read rule's retention: worked out again under the new version.
    terms = pair.us.node.home.policies_dir / "uk-aisi.yaml"
    text = terms.read_text()
    assert text.count("retain_max: {days: 730}") == 1
    terms.write_text(text.replace("retain_max: {days: 730}", "retain_max: {days: 30}"))
    assert pair.us.node.policies.reload(actor="test", now=clock.now).changed
    looked.clear()
    assert us.run_once().deleted == ()  # 1 day in: not yet due under 30 days either
    assert sorted(looked) == sorted(kept[1:])
    looked.clear()
    clock.advance(days=30)
    deleted = us.run_once().deleted
    assert sorted(d.artifact_id for d in deleted) == sorted(kept[1:])
    assert {d.deletion.term.days for d in deleted if d.deletion.term} == {30}


def test_each_way_in_is_an_index_search_not_a_scan(tmp_path: Path) -> None:
    """The round's conditions (``may_be_due``) and the partial indexes of migration 0018 are
    written in two places; SQLite uses a partial index only where the query implies its WHERE,
    so a drift between them would quietly turn each round back into a scan of every row."""
    db = open_database(f"sqlite:///{tmp_path / 'plan.db'}", migrate=True)
    try:
        with db.engine.connect() as conn:
            for way_in, index in zip(
                retention.may_be_due(3, datetime.now(UTC)),
                ("retention_version", "retention_due", "revoked"),
                strict=True,
            ):
                query = select(Artifact).where(way_in).limit(200)
                sql = query.compile(
                    dialect=db.engine.dialect, compile_kwargs={"literal_binds": True}
                )
                [plan] = [row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")]
                assert plan.startswith(f"SEARCH artifacts USING INDEX ix_artifacts_held_{index} ")
    finally:
        db.dispose()


def test_a_read_past_a_read_rules_retention_is_refused_before_the_worker_runs(
    pair: Pair, clock: Clock
) -> None:
    """Reads checked only the receive decision's retention: past the read rule's 730 days an
    AMBER artifact stayed readable until a retention round deleted it (found by review)."""
    art = share(pair.uk, tlp="TLP:AMBER")
    deliver(pair, pair.uk)
    clock.advance(days=731)  # no retention round has run
    with pytest.raises(ConflictError) as refused:
        open_for_read(pair.us.node, pair.us.node.blobs, art, principal=READER)
    assert refused.value.extra["reason"] == "retention"
    [denied] = entries(pair.us, "read.denied", art)
    assert denied.rule == "read-amber-inform" and denied.clause and "§4(b)" in denied.clause


def test_a_retention_term_of_a_million_years_stops_no_round(pair: Pair, clock: Clock) -> None:
    """A partner's disclosed ``retain_max`` of 10^12 days made every round raise OverflowError
    before it deleted anything: one partner stopped retention for every artifact (found by
    review). Such a term never falls due; the rest of the round goes on."""
    huge = {"partner": "us-aisi", "effect": "allow",
            "rules": [{"id": "keep", "kind": "permit", "clause": "c"}],
            "obligations": [{"kind": "retain_max", "days": 10**12}]}  # fmt: skip
    _, line, ciphertext = sealed_artifact(pair.uk, [pair.us], policy={"decisions": [huge]})
    Receiver(pair.us.node, sender="uk-aisi", via="push").receive(line, io.BytesIO(ciphertext))
    art = share(pair.uk, expires_at=clock.now + timedelta(days=1))
    deliver(pair, pair.uk)
    clock.advance(days=2)
    done = RetentionWorker(pair.us.node).run_once().deleted
    assert [(d.artifact_id, d.deletion.reason) for d in done] == [(art, "expired")]


def test_a_read_stopped_near_its_end_leaves_no_decrypting_thread(pair: Pair, clock: Clock) -> None:
    """The thread decrypting a read handed over its last chunks and then its end with no
    timeout: a reader gone by then (a client that went away) left it blocked for ever, one
    thread per download abandoned near its end (found beside the uploads' finding)."""
    meta = ShareTerms(
        title="finding", tlp="TLP:GREEN", topics=("evaluation",), purposes=("evaluation",),
        partners=("us-aisi",),
    )  # fmt: skip
    decisions = sharing.decide_share(pair.uk.node, meta, principal=PUBLISHER)
    row = sharing.share_artifact(
        pair.uk.node, pair.uk.node.blobs, meta, io.BytesIO(bytes(4 << 20) + b"end"),
        principal=PUBLISHER, decisions=decisions,
    )  # fmt: skip
    read = open_for_read(pair.uk.node, pair.uk.node.blobs, row.id, principal=READER)
    chunks = iter(read.chunks)
    assert next(chunks)
    time.sleep(0.5)  # the thread fills the queue with the rest, then hands over the end
    read.chunks.close()  # type: ignore[attr-defined]
    deadline = time.monotonic() + 5
    while _decrypting(row.id) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _decrypting(row.id) == []


def _decrypting(art_id: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == f"decrypt-{art_id}"]
