"""What a witness's answer proves to the verifier, and when (found by review).

A witness asked what it holds cosigns its answer when it answers
(``service.audit.witness.held_checkpoint``). The verifier counted any answer whose cosignature
verified, however old: the operator of a cut and re-signed log could serve, from wherever it
says its witnesses are, a note the node kept from before the cut, still carrying both witnesses'
genuine cosignatures, and ``audit verify --witness ... --min-cosignatures 2`` said VERIFIED. Now
an answer not cosigned when asked (within ``WITNESS_VIEW_MAX_AGE``) vouches for nothing, though
the log is still checked against it. And a cosignature dated past the verifier's clock, which
failed the whole log, is now only not counted: the node accepts a witness's clock that far
ahead, and one skewed witness must not make an honest log fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from crypto.keys import SigningKey
from crypto.merkle import EMPTY_ROOT
from crypto.note import Checkpoint, Cosigner, Note, cosign_checkpoint, parse_note
from service.audit.checkpoints import get_checkpoint
from service.audit.entries import log_signer
from service.audit.models import AuditCosignature
from service.audit.sources import DatabaseSource
from service.audit.verify import (
    COSIGNATURE_MAX_FUTURE,
    WITNESS_VIEW_MAX_AGE,
    Verdict,
    WitnessView,
    verify_log,
)
from service.node import Node
from tests.service.audit_fixtures import T0, add_events, make_node, seq_all

NOW = int(T0.timestamp())
US = Cosigner("entente.dev/witness/us-aisi", SigningKey.generate())


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = make_node(tmp_path, "uk-aisi", f"sqlite:///{tmp_path / 'uk.db'}")
    add_events(n, 20)
    seq_all(n, batch_max=5)  # checkpoints at 5, 10, 15 and 20
    yield n
    n.db.dispose()


def held(node: Node, size: int, *, at: int) -> bytes:
    """The checkpoint of ``size`` as the witness serves what it holds: cosigned at ``at``."""
    with node.db.session() as session:
        stored = get_checkpoint(session, size)
    note = parse_note(stored.note)
    mine = cosign_checkpoint(Checkpoint.parse(note.text), cosigner=US, timestamp=at)
    return Note(note.text, (*note.signatures[:1], mine)).to_bytes()


def verify(node: Node, answer: bytes | None, *, min_cosignatures: int = 1) -> Verdict:
    return verify_log(
        DatabaseSource(node.db),
        log=log_signer(node).verifier,
        witnesses=[US.verifier],
        witnessed=[] if answer is None else [WitnessView(US.verifier, answer)],
        min_cosignatures=min_cosignatures,
        now=NOW,
    )


def test_an_answer_cosigned_long_ago_vouches_for_nothing(node: Node) -> None:
    verdict = verify(node, held(node, 20, at=NOW - 86_400))  # a day-old note, served again
    assert not verdict.ok
    assert "vouched for by 0" in (verdict.problem or "")
    assert any("not made when asked" in n for n in verdict.notes), verdict.notes
    stale = verify(node, held(node, 20, at=NOW - WITNESS_VIEW_MAX_AGE - 1))
    assert not stale.ok and stale.vouched == ()


def test_an_answer_cosigned_when_asked_vouches(node: Node) -> None:
    verdict = verify(node, held(node, 20, at=NOW - 2))
    assert verdict.ok, verdict.problem
    assert verdict.vouched == (US.name,) and verdict.witnessed == {US.name: 20}


def test_a_witness_behind_the_log_vouches_and_the_rest_is_said(node: Node) -> None:
    verdict = verify(node, held(node, 15, at=NOW))
    assert verdict.ok, verdict.problem
    assert verdict.witnessed == {US.name: 15}
    assert any("entries 15 to 19 are signed by the log key alone" in n for n in verdict.notes)


def test_a_stale_answer_still_proves_a_rewrite(node: Node) -> None:
    answer = held(node, 10, at=NOW - 86_400)
    with node.db.engine.begin() as conn:  # the operator rewrites an entry and re-signs the log
        conn.exec_driver_sql("UPDATE audit_entries SET actor = 'reader:mallory' WHERE seq = 3")
        for statement in (
            "UPDATE audit_entries SET seq = NULL",
            "DELETE FROM audit_merkle_nodes",
            "DELETE FROM audit_checkpoints",
            "DELETE FROM audit_cosignatures",
        ):
            conn.exec_driver_sql(statement)
        conn.exec_driver_sql("UPDATE audit_log_head SET size = 0, root = ?", (EMPTY_ROOT,))
    seq_all(node, batch_max=5)
    assert verify(node, None, min_cosignatures=0).ok  # its own checkpoints agree with it
    verdict = verify(node, answer, min_cosignatures=0)
    assert not verdict.ok
    assert "the log was forked" in (verdict.problem or "")
    assert f"the one witness {US.name} cosigned" in (verdict.problem or "")


def test_a_cosignature_dated_past_the_clock_is_not_counted_and_fails_nothing(node: Node) -> None:
    with node.db.session() as session:
        stored = get_checkpoint(session, 20)
        checkpoint = Checkpoint.parse(parse_note(stored.note).text)
        ahead = NOW + COSIGNATURE_MAX_FUTURE + 60
        line = cosign_checkpoint(checkpoint, cosigner=US, timestamp=ahead).line()
        session.add(
            AuditCosignature(
                checkpoint_size=20, witness="us-aisi", line=line, timestamp=ahead, received_at=T0
            )
        )
        session.commit()
    verdict = verify(node, None, min_cosignatures=0)
    assert verdict.ok, verdict.problem
    assert verdict.latest is not None and verdict.latest.cosigners == ()
    assert any("ahead of this clock: not counted" in n for n in verdict.notes), verdict.notes
    assert not verify(node, None, min_cosignatures=1).ok
