"""Witnessing (C2SP tlog-witness add-checkpoint, tlog-cosignature v1) between two in-process
nodes, on SQLite and PostgreSQL: the witness logic, then the signed route and submission loop."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlmodel import select

from crypto import merkle
from crypto.keys import SigningKey
from crypto.note import (
    AddCheckpointRequest,
    Checkpoint,
    NoteSigner,
    open_checkpoint,
    parse_signature_lines,
    sign_checkpoint,
    verify_cosignature,
)
from service.app import create_app
from service.audit.checkpoints import latest_checkpoint
from service.audit.entries import log_origin, log_signer
from service.audit.errors import BadRequestError, WitnessSizeConflictError
from service.audit.models import (
    AuditCosignature,
    AuditWitnessSubmission,
    WitnessEvidence,
    WitnessLog,
)
from service.audit.sources import DatabaseSource
from service.audit.submission import SignedWitnessTransport, submit_checkpoint
from service.audit.tree import consistency_proof
from service.audit.verify import verify_log
from service.audit.witness import (
    add_checkpoint,
    partner_witness_verifier,
    witness_cosigner,
)
from service.errors import ConflictError, ForbiddenError, InvalidInputError, NotFoundError
from service.federation.client import PartnerClient
from service.models import AuditEntry, Partner
from service.node import Node
from service.tokens import Role
from tests.service.audit_fixtures import (
    T0,
    add_events,
    make_node,
    pin,
    second_database,
    seq_all,
    token,
)
from tests.service.test_federation_sync import PortalTransport


@dataclass
class Pair:
    uk: Node  # the log
    us: Node  # its witness


@pytest.fixture
def pair(tmp_path: Path, db_url: str) -> Iterator[Pair]:
    with second_database(db_url, tmp_path) as us_url:
        uk = make_node(tmp_path, "uk-aisi", db_url)
        us = make_node(tmp_path, "us-aisi", us_url)
        pin(uk, us)
        pin(us, uk)
        yield Pair(uk, us)
        uk.db.dispose()
        us.db.dispose()


def _size(node: Node) -> int:
    with node.db.session() as s:
        return latest_checkpoint(s).size


def _request(node: Node, old: int) -> bytes:
    with node.db.session() as s:
        cp = latest_checkpoint(s)
        proof = consistency_proof(s, old=old, new=cp.size) if 0 < old < cp.size else []
    return AddCheckpointRequest(old, tuple(proof), cp.note).to_bytes()


def _witness(pair: Pair, body: bytes, *, caller: str = "uk-aisi") -> str:
    with pair.us.db.session() as s:
        return add_checkpoint(
            s,
            origin_partner=caller,
            request_body=body,
            cosigner=witness_cosigner(pair.us),
            now=pair.us.now(),
        )


def _evidence(node: Node) -> list[WitnessEvidence]:
    with node.db.session() as s:
        return list(s.exec(select(WitnessEvidence)))


def _state(node: Node) -> WitnessLog:
    with node.db.session() as s:
        row = s.get(WitnessLog, log_origin("uk-aisi"))
    assert row is not None
    return row


def _rewrite_history(node: Node) -> None:
    """What a dishonest operator would do: edit an old entry and rebuild the whole log."""
    with node.db.session() as s:
        s.execute(sa.text("UPDATE audit_entries SET actor = 'mallory' WHERE seq = 1"))
        s.execute(sa.text("UPDATE audit_entries SET seq = NULL"))
        s.execute(sa.text("DELETE FROM audit_merkle_nodes"))
        s.execute(sa.text("DELETE FROM audit_checkpoints"))
        s.execute(
            sa.text("UPDATE audit_log_head SET size = 0, root = :r"), {"r": merkle.EMPTY_ROOT}
        )


def test_consistent_checkpoints_are_cosigned(pair: Pair) -> None:
    add_events(pair.uk, 5)
    seq_all(pair.uk)
    line = _witness(pair, _request(pair.uk, 0))
    with pair.uk.db.session() as s:
        cp = latest_checkpoint(s)
        partner = s.get(Partner, "us-aisi")
        assert partner is not None
        verifier = partner_witness_verifier(partner)
    (sig,) = parse_signature_lines(line)
    checkpoint = open_checkpoint(cp.note, log=log_signer(pair.uk).verifier).checkpoint
    assert verify_cosignature(checkpoint, sig, verifier=verifier) == int(T0.timestamp())
    assert (_state(pair.us).size, _state(pair.us).root) == (cp.size, cp.root)

    # The next checkpoint, with a consistency proof from the cosigned one.
    add_events(pair.uk, 7)
    seq_all(pair.uk)
    _witness(pair, _request(pair.uk, cp.size))
    assert _state(pair.us).size == cp.size + 7
    # Re-submitting the same checkpoint (old size = its size) is cosigned again.
    _witness(pair, _request(pair.uk, cp.size + 7))
    assert _evidence(pair.us) == []
    with pair.us.db.session() as s:
        kinds = [
            e.kind for e in s.exec(select(AuditEntry).where(AuditEntry.kind == "witness.cosigned"))
        ]
    assert kinds == ["witness.cosigned"]  # the first cosignature of a log only


def test_a_stale_old_size_is_a_409_with_the_cosigned_size(pair: Pair) -> None:
    add_events(pair.uk, 3)
    seq_all(pair.uk)
    _witness(pair, _request(pair.uk, 0))
    cosigned = _size(pair.uk)
    add_events(pair.uk, 2)
    seq_all(pair.uk)
    with pytest.raises(WitnessSizeConflictError) as caught:
        _witness(pair, _request(pair.uk, 0))
    assert caught.value.latest_size == cosigned
    assert caught.value.status == 409
    assert _evidence(pair.us) == []  # a stale client is not misbehaviour


def test_a_rewritten_log_is_refused_and_the_evidence_kept(pair: Pair) -> None:
    add_events(pair.uk, 6)
    seq_all(pair.uk)
    _witness(pair, _request(pair.uk, 0))
    cosigned = _state(pair.us)
    n = cosigned.size
    _rewrite_history(pair.uk)
    add_events(pair.uk, 4)
    seq_all(pair.uk)  # a fresh, validly signed checkpoint over the edited history
    body = _request(pair.uk, n)
    with pytest.raises(InvalidInputError, match="inconsistent checkpoint") as caught:
        _witness(pair, body)
    assert caught.value.status == 422
    (evidence,) = _evidence(pair.us)
    assert evidence.request == body  # the signed checkpoint and its proof, whole
    assert (evidence.old_size, evidence.size) == (n, n + 4)
    assert evidence.cosigned_note == cosigned.note  # what it contradicts
    assert _state(pair.us).size == n  # not cosigned, state unchanged
    with pair.us.db.session() as s:
        refused = s.exec(select(AuditEntry).where(AuditEntry.kind == "witness.refused")).one()
    assert refused.partner == "uk-aisi" and refused.decision == "deny"


def test_a_different_root_at_the_cosigned_size_is_a_409_with_evidence(pair: Pair) -> None:
    add_events(pair.uk, 4)
    seq_all(pair.uk)
    _witness(pair, _request(pair.uk, 0))
    n = _size(pair.uk)
    _rewrite_history(pair.uk)
    seq_all(pair.uk)  # the same size again, another root: a fork
    assert _size(pair.uk) == n
    with pytest.raises(ConflictError, match="different root") as caught:
        _witness(pair, _request(pair.uk, n))
    assert caught.value.status == 409
    assert not isinstance(caught.value, WitnessSizeConflictError)
    assert [e.size for e in _evidence(pair.us)] == [n]


def _note(node: Node) -> bytes:
    with node.db.session() as s:
        return latest_checkpoint(s).note


def _signed(origin: str, key: SigningKey, size: int = 1) -> bytes:
    cp = Checkpoint(origin, size, merkle.leaf_hash(b"x"))
    return sign_checkpoint(cp, signer=NoteSigner(origin, key))


@pytest.mark.parametrize(
    ("make_body", "caller", "error", "status"),
    [
        (lambda uk: b"not a request", "uk-aisi", InvalidInputError, 422),
        (lambda uk: b"old 01\n\n" + _note(uk), "uk-aisi", InvalidInputError, 422),
        (
            lambda uk: AddCheckpointRequest(0, (b"\0" * 32,), _note(uk)).to_bytes(),
            "uk-aisi",
            InvalidInputError,
            422,
        ),
        (
            lambda uk: AddCheckpointRequest(
                0, (), _signed(log_origin("xx-aisi"), SigningKey.generate())
            ).to_bytes(),
            "uk-aisi",
            NotFoundError,
            404,
        ),
        (
            lambda uk: AddCheckpointRequest(
                0, (), _signed(log_origin("uk-aisi"), SigningKey.generate())
            ).to_bytes(),
            "uk-aisi",
            ForbiddenError,
            403,
        ),
        (lambda uk: _request(uk, 0), "ca-aisi", ForbiddenError, 403),
        (
            lambda uk: AddCheckpointRequest(99, (), _note(uk)).to_bytes(),
            "uk-aisi",
            BadRequestError,
            400,
        ),
    ],
    ids=["garbage", "leading-zero", "proof-from-zero", "unknown-origin", "wrong-key",
         "someone-elses-log", "old-above-size"],
)  # fmt: skip
def test_refusals(
    pair: Pair, make_body: object, caller: str, error: type[Exception], status: int
) -> None:
    add_events(pair.uk, 2)
    seq_all(pair.uk)
    body = make_body(pair.uk)  # type: ignore[operator]
    with pytest.raises(error) as caught:
        _witness(pair, body, caller=caller)
    assert caught.value.status == status  # type: ignore[attr-defined]
    assert _evidence(pair.us) == []
    with pair.us.db.session() as s:
        assert s.get(WitnessLog, log_origin("uk-aisi")) is None or _state(pair.us).size == 0
        kinds = [
            e.kind for e in s.exec(select(AuditEntry).where(AuditEntry.kind == "witness.refused"))
        ]
    assert kinds == ["witness.refused"]


# --- The route and the submission loop, signed end to end (RFC 9421) -------------------------


@pytest.fixture
async def transport(pair: Pair) -> Iterator[SignedWitnessTransport]:
    app = create_app(pair.us, start_workers=False)
    routes = PortalTransport({"us-aisi.example": app})  # the partner's app, in-process
    client = PartnerClient(pair.uk, http=httpx.Client(transport=routes))
    try:
        yield SignedWitnessTransport(client)  # type: ignore[misc]
    finally:
        client.close()
        routes.close()


async def test_submission_collects_cosignatures_and_serves_them(
    pair: Pair, transport: SignedWitnessTransport
) -> None:
    add_events(pair.uk, 9)
    seq_all(pair.uk)
    outcome = await submit_checkpoint(pair.uk, transport, "us-aisi")
    assert (outcome.state, outcome.size) == ("cosigned", _size(pair.uk)), outcome.detail
    assert (await submit_checkpoint(pair.uk, transport, "us-aisi")).state == "up-to-date"

    add_events(pair.uk, 5)
    seq_all(pair.uk)
    assert (await submit_checkpoint(pair.uk, transport, "us-aisi")).state == "cosigned"

    # The witness forgot nothing, but we did: its 409 tells us the size it holds.
    with pair.uk.db.session() as s:
        row = s.get(AuditWitnessSubmission, "us-aisi")
        assert row is not None
        row.cosigned_size = 0
        s.add(row)
        s.execute(sa.delete(AuditCosignature))
    outcome = await submit_checkpoint(pair.uk, transport, "us-aisi")
    assert outcome.state == "cosigned", outcome.detail

    with pair.uk.db.session() as s:
        cp = latest_checkpoint(s)
        partner = s.get(Partner, "us-aisi")
        assert partner is not None
    assert cp.cosigners == ("us-aisi",)
    witness = partner_witness_verifier(partner)
    opened = open_checkpoint(cp.note, log=log_signer(pair.uk).verifier, witnesses=[witness])
    assert [c.name for c in opened.cosignatures] == ["entente.dev/witness/us-aisi"]
    verdict = verify_log(
        DatabaseSource(pair.uk.db),
        log=log_signer(pair.uk).verifier,
        witnesses=[witness],
        min_cosignatures=1,
        now=int(T0.timestamp()),
    )
    assert verdict.ok, verdict.problem
    assert verdict.latest_cosigned is not None
    assert verdict.latest_cosigned.size == cp.size


async def test_a_node_that_rewrites_its_log_is_refused_by_its_witness(
    pair: Pair, transport: SignedWitnessTransport
) -> None:
    add_events(pair.uk, 8)
    seq_all(pair.uk)
    assert (await submit_checkpoint(pair.uk, transport, "us-aisi")).state == "cosigned"
    n = _size(pair.uk)
    _rewrite_history(pair.uk)
    add_events(pair.uk, 1)
    seq_all(pair.uk)
    outcome = await submit_checkpoint(pair.uk, transport, "us-aisi")
    assert outcome.state == "failed"
    assert "422" in outcome.detail and "inconsistent" in outcome.detail
    with pair.us.db.session() as s:  # audited once, by the witness (not again by the handler)
        refusals = [e.kind for e in s.exec(select(AuditEntry)) if e.decision == "deny"]
    assert refusals == ["witness.refused"]
    (evidence,) = _evidence(pair.us)
    assert (evidence.cosigned_size, evidence.size) == (n, n + 1)
    # The evidence is self-contained: the old cosigned checkpoint and the new one both carry
    # valid signatures by the log's key, and no consistency proof can join them.
    log_key = log_signer(pair.uk).verifier
    assert evidence.cosigned_note is not None
    old = open_checkpoint(evidence.cosigned_note.encode(), log=log_key).checkpoint
    new_note = AddCheckpointRequest.parse(evidence.request).checkpoint
    new = open_checkpoint(new_note, log=log_key).checkpoint
    with pytest.raises(Exception, match="consistency"):
        merkle.verify_consistency(
            size1=old.size,
            size2=new.size,
            root1=old.root_hash,
            root2=new.root_hash,
            proof=consistency_proof_of(pair.uk, old.size, new.size),
        )

    # Auditors of the witness see what it holds and the evidence it kept.
    app = create_app(pair.us, start_workers=False)
    auth = {"Authorization": f"Bearer {token(pair.us, Role.AUDITOR)}"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="https://us-aisi.example"
    ) as client:
        held = (await client.get("/audit/v1/witnessed", headers=auth)).json()
    assert [(w["origin"], w["size"]) for w in held["logs"]] == [(log_origin("uk-aisi"), n)]
    (kept,) = held["evidence"]
    assert (kept["partner"], kept["cosigned_size"], kept["size"]) == ("uk-aisi", n, n + 1)
    assert base64.b64decode(kept["request"]) == evidence.request


def consistency_proof_of(node: Node, old: int, new: int) -> list[bytes]:
    with node.db.session() as s:
        return consistency_proof(s, old=old, new=new)


async def test_an_unsigned_add_checkpoint_is_refused(pair: Pair) -> None:
    add_events(pair.uk, 1)
    seq_all(pair.uk)
    app = create_app(pair.us, start_workers=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="https://us-aisi.example"
    ) as client:
        response = await client.post("/federation/v1/add-checkpoint", content=_request(pair.uk, 0))
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    with pair.us.db.session() as s:
        assert s.get(WitnessLog, log_origin("uk-aisi")) is None
