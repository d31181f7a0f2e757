"""M11: a witness keeps a bounded amount of evidence per log, however many forks it is sent.

A hostile partner signs, with its own log key, a fresh checkpoint at the size this witness
cosigned, a random root each time, padded with signature lines up to the note limit, and sends
one per request. Each was a new (origin, size, root), so each stored a row with the whole body
(L2 deduplicated only repeats of one fork). Now the first ``EVIDENCE_PER_LOG`` are kept whole
(the first proves the fork), later ones only audited, each refusal still on record."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sqlmodel import col, select

from crypto.keys import SigningKey
from crypto.note import (
    MAX_NOTE_BYTES,
    AddCheckpointRequest,
    Checkpoint,
    NoteSigner,
    sign_note,
)
from service.audit.checkpoints import latest_checkpoint
from service.audit.entries import log_origin, log_signer
from service.audit.models import WitnessEvidence
from service.audit.witness import (
    ADD_CHECKPOINT_MAX_BYTES,
    EVIDENCE_PER_LOG,
    add_checkpoint,
    witness_cosigner,
)
from service.errors import ConflictError
from service.models import AuditEntry
from service.node import Node
from tests.service.audit_fixtures import add_events, make_node, pin, second_database, seq_all

FORKS = EVIDENCE_PER_LOG + 8
# Signers whose lines pad every fork to near the note limit (90 lines of ~1.3 kB).
PADDING = [NoteSigner(f"pad{i}.example/" + "x" * 1200, SigningKey.generate()) for i in range(90)]


def _witness(us: Node, body: bytes) -> str:
    with us.db.session() as s:
        return add_checkpoint(
            s,
            origin_partner="uk-aisi",
            request_body=body,
            cosigner=witness_cosigner(us),
            now=us.now(),
        )


def _fork(uk: Node, size: int) -> tuple[bytes, bytes]:
    """(root, body): a checkpoint at ``size`` with a random root, signed by the UK's log key."""
    root = os.urandom(32)
    text = Checkpoint(log_origin("uk-aisi"), size, root).to_text()
    note = sign_note(text, [log_signer(uk), *PADDING])
    return root, AddCheckpointRequest(size, (), note).to_bytes()


def _refusals(us: Node) -> list[dict[str, object]]:
    with us.db.session() as s:
        rows = s.exec(select(AuditEntry).where(AuditEntry.kind == "witness.refused"))
        return [json.loads(r.detail) for r in rows]


def test_a_partner_forking_again_and_again_stores_bounded_evidence(
    tmp_path: Path, db_url: str
) -> None:
    with second_database(db_url, tmp_path) as us_url:
        uk = make_node(tmp_path, "uk-aisi", db_url)
        us = make_node(tmp_path, "us-aisi", us_url)
        try:
            pin(uk, us)
            pin(us, uk)
            add_events(uk, 5)
            seq_all(uk)
            with uk.db.session() as s:
                cp = latest_checkpoint(s)
            _witness(us, AddCheckpointRequest(0, (), cp.note).to_bytes())

            roots = []
            for _ in range(FORKS):
                root, body = _fork(uk, cp.size)
                assert len(body) > MAX_NOTE_BYTES * 9 // 10  # padded: near the largest body
                roots.append(root)
                with pytest.raises(ConflictError):
                    _witness(us, body)
            with pytest.raises(ConflictError):  # a kept fork sent again: still on record
                _witness(us, _request_for(us, roots[0]))

            with us.db.session() as s:
                kept = list(s.exec(select(WitnessEvidence).order_by(col(WitnessEvidence.id))))
            assert [bytes(e.root) for e in kept] == roots[:EVIDENCE_PER_LOG]  # the first ones
            stored = sum(len(e.request) for e in kept)
            assert all(len(e.request) <= ADD_CHECKPOINT_MAX_BYTES for e in kept)
            assert stored <= EVIDENCE_PER_LOG * ADD_CHECKPOINT_MAX_BYTES

            refusals = _refusals(us)
            assert len(refusals) == FORKS + 1  # every refusal is on record
            flags = [r["evidence"] for r in refusals]
            assert flags == [True] * EVIDENCE_PER_LOG + [False] * (FORKS - EVIDENCE_PER_LOG) + [
                True
            ]
            not_kept = [r for r in refusals if "evidence_not_kept" in r]
            assert len(not_kept) == FORKS - EVIDENCE_PER_LOG
            assert all(len(json.dumps(r)) < 1000 for r in refusals)  # never the body
        finally:
            uk.db.dispose()
            us.db.dispose()


def _request_for(us: Node, root: bytes) -> bytes:
    """The body kept for the fork with ``root``, to send again."""
    with us.db.session() as s:
        row = s.exec(select(WitnessEvidence).where(WitnessEvidence.root == root)).one()
    return bytes(row.request)
