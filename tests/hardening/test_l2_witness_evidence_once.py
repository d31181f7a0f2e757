"""L2: a witness keeps the evidence of one conflicting checkpoint once, however often it is
re-sent (a partner re-sending its fork used to add a row, with the whole request, each time)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import select

from crypto import merkle
from crypto.note import AddCheckpointRequest
from service.audit.checkpoints import latest_checkpoint
from service.audit.models import WitnessEvidence
from service.audit.tree import consistency_proof
from service.audit.witness import add_checkpoint, witness_cosigner
from service.errors import ConflictError, InvalidInputError
from service.models import AuditEntry
from service.node import Node
from tests.service.audit_fixtures import add_events, make_node, pin, second_database, seq_all


def _request(node: Node, old: int) -> bytes:
    with node.db.session() as s:
        cp = latest_checkpoint(s)
        proof = consistency_proof(s, old=old, new=cp.size) if 0 < old < cp.size else []
    return AddCheckpointRequest(old, tuple(proof), cp.note).to_bytes()


def _witness(us: Node, body: bytes) -> str:
    with us.db.session() as s:
        return add_checkpoint(
            s,
            origin_partner="uk-aisi",
            request_body=body,
            cosigner=witness_cosigner(us),
            now=us.now(),
        )


def _rewrite(node: Node) -> None:
    with node.db.session() as s:
        s.execute(sa.text("UPDATE audit_entries SET actor = 'mallory' WHERE seq = 1"))
        s.execute(sa.text("UPDATE audit_entries SET seq = NULL"))
        s.execute(sa.text("DELETE FROM audit_merkle_nodes"))
        s.execute(sa.text("DELETE FROM audit_checkpoints"))
        s.execute(
            sa.text("UPDATE audit_log_head SET size = 0, root = :r"), {"r": merkle.EMPTY_ROOT}
        )


def _count(node: Node, kind: str | None = None) -> int:
    with node.db.session() as s:
        if kind is None:
            return len(list(s.exec(select(WitnessEvidence))))
        return len(list(s.exec(select(AuditEntry).where(AuditEntry.kind == kind))))


@pytest.mark.parametrize("same_size", [True, False], ids=["same-size-fork", "inconsistent"])
def test_a_resent_conflicting_checkpoint_is_kept_once(
    tmp_path: Path, db_url: str, same_size: bool
) -> None:
    with second_database(db_url, tmp_path) as us_url:
        uk = make_node(tmp_path, "uk-aisi", db_url)
        us = make_node(tmp_path, "us-aisi", us_url)
        try:
            pin(uk, us)
            pin(us, uk)
            add_events(uk, 5)
            seq_all(uk)
            _witness(us, _request(uk, 0))
            with uk.db.session() as s:
                n = latest_checkpoint(s).size
            _rewrite(uk)
            if not same_size:
                add_events(uk, 3)
            seq_all(uk)
            body = _request(uk, n)
            for _ in range(5):
                with pytest.raises((ConflictError, InvalidInputError)):
                    _witness(us, body)
            assert _count(us) == 1  # one row of evidence for one conflicting checkpoint
            # every refusal is still on record (an authenticated partner: one entry each)
            assert _count(us, "witness.refused") == 5
        finally:
            uk.db.dispose()
            us.db.dispose()
