"""A log behind its witnesses signs nothing (``service.audit.rollback``): only a checkpoint signed
by the log's own key and cosigned by the witness counts; a restored node waits for each witness;
what is found is audited once."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlmodel import select

from crypto.note import Checkpoint, Note, NoteSigner, cosign_checkpoint, parse_note, sign_checkpoint
from service.audit.checkpoints import latest_checkpoint
from service.audit.entries import log_origin, log_signer
from service.audit.errors import LogRolledBackError
from service.audit.log import record
from service.audit.models import AuditCheckpoint, AuditRollback
from service.audit.rollback import check_unconfirmed, check_witnesses, mark_unconfirmed
from service.audit.sequencer import run_sequencer, sequence
from service.audit.witness import witness_cosigner
from service.models import AuditEntry
from tests.service.nodekit import Kit, make_node, pin


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Kit, Kit]:
    uk, us = make_node(tmp_path, "uk-aisi"), make_node(tmp_path, "us-aisi")
    pin(uk, us)
    pin(us, uk)
    assert run_sequencer(uk.node).checkpoint_signed
    return uk, us


def held(uk: Kit, us: Kit, *, size: int, root: bytes, signer: NoteSigner | None = None) -> bytes:
    """What the witness ``us`` would serve: a checkpoint of uk's log with its cosignature."""
    checkpoint = Checkpoint(log_origin("uk-aisi"), size, root)
    note = parse_note(sign_checkpoint(checkpoint, signer=signer or log_signer(uk.node)))
    line = cosign_checkpoint(
        checkpoint, cosigner=witness_cosigner(us.node), timestamp=int(time.time())
    )
    return Note(note.text, (*note.signatures, line)).to_bytes()


def witness(body: bytes | None) -> httpx.Client:
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/witness/v1/checkpoint"
        assert request.url.params["origin"] == log_origin("uk-aisi")
        if body is None:
            return httpx.Response(404, json={"detail": "none"})
        return httpx.Response(200, content=body)

    return httpx.Client(transport=httpx.MockTransport(answer))


def ask(uk: Kit, client: httpx.Client) -> list[str]:
    checks = check_witnesses(
        uk.node.db,
        node_id="uk-aisi",
        log_key=log_signer(uk.node).verifier,
        witness_count=5,
        now=datetime.now(UTC),
        http=client,
    )
    return [c.state for c in checks]


def add_entry(uk: Kit) -> None:
    with uk.node.db.session() as session:
        record(session, kind="token.created", actor="test", detail={"n": os.urandom(4).hex()})


def checkpoints(uk: Kit) -> int:
    with uk.node.db.session() as session:
        return len(session.exec(select(AuditCheckpoint.size)).all())


def test_a_witness_holding_a_larger_signed_checkpoint_stops_signing(pair: tuple[Kit, Kit]) -> None:
    uk, us = pair
    with uk.node.db.session() as session:
        size = latest_checkpoint(session).size
    note = held(uk, us, size=size + 5, root=b"\x01" * 32)
    assert ask(uk, witness(note)) == ["behind"]
    assert ask(uk, witness(note)) == ["behind"]  # known: audited once
    with uk.node.db.session() as session:
        row = session.get(AuditRollback, "us-aisi")
        assert row is not None and (row.state, row.held_size, row.local_size) == (
            "behind", size + 5, size,
        )  # fmt: skip
        found = session.exec(
            select(AuditEntry).where(AuditEntry.kind == "audit.rollback_detected")
        ).all()
    assert len(found) == 1 and found[0].partner == "us-aisi"
    add_entry(uk)
    before = checkpoints(uk)
    result = run_sequencer(uk.node)
    assert not result.checkpoint_signed and checkpoints(uk) == before
    with uk.node.db.session() as session, pytest.raises(LogRolledBackError, match="size"):
        sequence(session, signer=log_signer(uk.node), now=datetime.now(UTC))


def test_another_root_at_a_size_the_log_has_is_a_fork(pair: tuple[Kit, Kit]) -> None:
    uk, us = pair
    with uk.node.db.session() as session:
        size = latest_checkpoint(session).size
    assert ask(uk, witness(held(uk, us, size=size, root=b"\x02" * 32))) == ["behind"]
    add_entry(uk)
    assert not run_sequencer(uk.node).checkpoint_signed


def test_a_size_without_this_logs_signature_proves_nothing(pair: tuple[Kit, Kit]) -> None:
    uk, us = pair
    forged = NoteSigner(log_origin("uk-aisi"), us.node.keys.signing)  # not uk's log key
    assert ask(uk, witness(held(uk, us, size=10_000, root=b"\x03" * 32, signer=forged))) == [
        "unverifiable"
    ]
    add_entry(uk)
    assert run_sequencer(uk.node).checkpoint_signed


def test_a_restored_log_waits_for_each_witness(pair: tuple[Kit, Kit]) -> None:
    uk, us = pair
    with uk.node.db.session() as session:
        mark_unconfirmed(session, ["us-aisi"], now=datetime.now(UTC))
    add_entry(uk)
    assert not run_sequencer(uk.node).checkpoint_signed  # not heard from yet

    def down(_request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    assert ask(uk, httpx.Client(transport=httpx.MockTransport(down))) == ["unreachable"]
    assert not run_sequencer(uk.node).checkpoint_signed
    with uk.node.db.session() as session:
        latest = latest_checkpoint(session)
    assert ask(uk, witness(held(uk, us, size=latest.size, root=latest.root))) == ["consistent"]
    with uk.node.db.session() as session:
        assert session.get(AuditRollback, "us-aisi") is None
    assert run_sequencer(uk.node).checkpoint_signed


def test_a_witness_holding_nothing_confirms_a_restored_log(pair: tuple[Kit, Kit]) -> None:
    uk, _us = pair
    with uk.node.db.session() as session:
        mark_unconfirmed(session, ["us-aisi"], now=datetime.now(UTC))
    assert ask(uk, witness(None)) == ["consistent"]
    add_entry(uk)
    assert run_sequencer(uk.node).checkpoint_signed


def test_a_witness_no_longer_pinned_is_not_waited_for(pair: tuple[Kit, Kit]) -> None:
    uk, _us = pair
    with uk.node.db.session() as session:
        mark_unconfirmed(session, ["ca-aisi"], now=datetime.now(UTC))  # not a partner any more
    add_entry(uk)
    assert not run_sequencer(uk.node).checkpoint_signed
    assert check_unconfirmed(uk.node) == []  # nothing to ask: no request is made
    assert run_sequencer(uk.node).checkpoint_signed
