"""``/audit/v1``: the audit transparency log for auditors (and admins).

- ``GET checkpoint``: the latest signed checkpoint (C2SP signed note, ``text/plain``) with the
  partners' cosignatures attached; ``?min_cosignatures=N`` for the latest with at least N.
- ``GET checkpoints``: every checkpoint in size order (cursor pagination), for verifiers.
- ``GET entries``: entries filtered by time, partner, artifact, kind and actor (cursor
  pagination). Recorded as an ``audit.read`` event.
- ``GET proof/inclusion``, ``GET proof/consistency``: RFC 6962 proofs (base64 hashes).
- ``GET export``: every entry as JSON Lines, each line the entry's canonical encoding (so
  ``SHA-256(0x00 || line)`` is its leaf hash). Recorded as an ``audit.exported`` event.
- ``GET witnesses``: the log's key, this node's witness key, and the partners' witness keys as
  this node has pinned them (a verifier should pin its own).

Checkpoints and proofs carry only hashes and are not audited: a log that grew every time a
monitor polled it would never settle. Entries and exports are.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response, StreamingResponse
from sqlmodel import Session, select
from starlette.concurrency import run_in_threadpool

from service.api.deps import require_roles
from service.audit.checkpoints import latest_checkpoint, list_checkpoints
from service.audit.entries import encode_leaf, entry_columns, iter_entries, log_signer, row_object
from service.audit.log import EVENT_KINDS, record
from service.audit.models import AuditWitnessSubmission, WitnessEvidence, WitnessLog
from service.audit.submission import chosen_witnesses
from service.audit.tree import consistency_proof, inclusion_proof, stored_leaf_hashes, stored_root
from service.audit.witness import partner_witness_verifier, witness_cosigner
from service.audit.witness_choice import quorum
from service.audit.witness_external import external_witnesses
from service.errors import InvalidInputError, NotFoundError
from service.models import AuditEntry, Partner
from service.node import Node
from service.tokens import Principal, Role
from service.web import NodeDep

__all__ = ["JSONL", "router"]

router = APIRouter(prefix="/audit/v1", tags=["audit"])

JSONL = "application/jsonl"
Auditor = Annotated[Principal, Depends(require_roles(Role.AUDITOR, Role.ADMIN))]
_entries = AuditEntry.__table__  # type: ignore[attr-defined]
MAX_SEQ = (1 << 63) - 1  # sequence numbers and tree sizes are SQL BIGINTs; larger ones overflow


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _page_size(node: Node, limit: int | None) -> int:
    settings = node.settings
    if limit is None:
        return min(settings.page_size_default, settings.page_size_max)
    if not 1 <= limit <= settings.page_size_max:
        raise InvalidInputError(f"limit must be between 1 and {settings.page_size_max}")
    return limit


def _aware(value: datetime | None, name: str) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise InvalidInputError(f"{name} needs a time zone (e.g. 2026-01-31T12:00:00Z)")
    try:
        return value.astimezone(UTC) if value is not None else None
    except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00
        raise InvalidInputError(f"{name} is out of range once converted to UTC") from None


def _tree_size(session: Session) -> int:
    try:
        return latest_checkpoint(session).size
    except NotFoundError:
        return 0


@router.get(
    "/checkpoint",
    summary="The latest signed checkpoint, with cosignatures",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
)
def checkpoint(
    node: NodeDep,
    _who: Auditor,
    min_cosignatures: Annotated[int, Query(ge=0, le=100)] = 0,
) -> Response:
    with node.db.session() as session:
        cp = latest_checkpoint(session, min_cosignatures=min_cosignatures)
    return Response(
        cp.note,
        media_type="text/plain; charset=utf-8",
        headers={"Cache-Control": "no-store", "X-Tree-Size": str(cp.size)},
    )


@router.get("/checkpoints", summary="Every signed checkpoint, in size order")
def checkpoints(
    node: NodeDep,
    _who: Auditor,
    after: Annotated[int | None, Query(ge=0, le=MAX_SEQ, description="Cursor: a tree size")] = None,
    limit: Annotated[int | None, Query()] = None,
) -> dict[str, Any]:
    size = _page_size(node, limit)
    with node.db.session() as session:
        rows = list_checkpoints(session, after=after, limit=size + 1)
    more = len(rows) > size
    rows = rows[:size]
    return {
        "checkpoints": [
            {
                "size": cp.size,
                "root": _b64(cp.root),
                "created_at": cp.created_at.isoformat(),
                "cosigners": list(cp.cosigners),
                "note": cp.note.decode("utf-8"),
            }
            for cp in rows
        ],
        "next": str(rows[-1].size) if more and rows else None,
    }


@router.get("/entries", summary="Audit entries, filtered (an audited read)")
def entries(
    node: NodeDep,
    who: Auditor,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_SEQ, description="Cursor: the last seq seen")
    ] = None,
    limit: Annotated[int | None, Query()] = None,
    since: Annotated[datetime | None, Query(description="created_at >= since")] = None,
    until: Annotated[datetime | None, Query(description="created_at < until")] = None,
    partner: Annotated[str | None, Query(max_length=63)] = None,
    artifact_id: Annotated[str | None, Query(max_length=64)] = None,
    kind: Annotated[list[str] | None, Query(max_length=64)] = None,
    actor: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    size = _page_size(node, limit)
    _aware(since, "since")
    _aware(until, "until")
    kinds = sorted(set(kind or []))
    unknown = [k for k in kinds if k not in EVENT_KINDS]
    if unknown:
        raise InvalidInputError(f"unknown event kind {unknown[0]!r}")
    if len(kinds) > 32:
        raise InvalidInputError("at most 32 kinds")
    query = sa.select(*entry_columns()).where(_entries.c.seq.is_not(None))
    if after is not None:
        query = query.where(_entries.c.seq > after)
    if since is not None:
        query = query.where(_entries.c.created_at >= since)
    if until is not None:
        query = query.where(_entries.c.created_at < until)
    if partner is not None:
        query = query.where(_entries.c.partner == partner)
    if artifact_id is not None:
        query = query.where(_entries.c.artifact_id == artifact_id)
    if kinds:
        query = query.where(_entries.c.kind.in_(kinds))
    if actor is not None:
        query = query.where(_entries.c.actor == actor)
    filters = {
        "after": after,
        "since": since.isoformat() if since else None,
        "until": until.isoformat() if until else None,
        "partner": partner,
        "artifact_id": artifact_id,
        "kind": kinds or None,
        "actor": actor,
    }
    with node.db.session() as session:
        rows = session.execute(query.order_by(_entries.c.seq).limit(size + 1)).all()
        more = len(rows) > size
        rows = rows[:size]
        leaves = stored_leaf_hashes(session, (int(r[1]) for r in rows))
        tree_size = _tree_size(session)
        record(
            session,
            kind="audit.read",
            actor=who.actor,
            detail={
                "filters": {k: v for k, v in filters.items() if v is not None},
                "count": len(rows),
            },
            now=node.now(),
        )
    out = []
    for row in rows:
        obj = row_object(row)
        leaf = leaves.get(obj["seq"])
        obj["leaf_hash"] = _b64(leaf) if leaf is not None else None
        out.append(obj)
    return {
        "entries": out,
        "next": str(out[-1]["seq"]) if more and out else None,
        "tree_size": tree_size,
    }


@router.get("/proof/inclusion", summary="RFC 6962 inclusion proof of one entry")
def proof_inclusion(
    node: NodeDep,
    _who: Auditor,
    seq: Annotated[int, Query(ge=0, le=MAX_SEQ)],
    size: Annotated[
        int | None, Query(ge=1, le=MAX_SEQ, description="Tree size (default: latest)")
    ] = None,
) -> dict[str, Any]:
    with node.db.session() as session:
        tree_size = size if size is not None else _tree_size(session)
        proof = inclusion_proof(session, index=seq, size=tree_size)
        leaf = stored_leaf_hashes(session, [seq]).get(seq)
        root = stored_root(session, tree_size)
    return {
        "seq": seq,
        "size": tree_size,
        "leaf_hash": _b64(leaf) if leaf is not None else None,
        "root": _b64(root),
        "proof": [_b64(h) for h in proof],
    }


@router.get("/proof/consistency", summary="RFC 6962 consistency proof between two sizes")
def proof_consistency(
    node: NodeDep,
    _who: Auditor,
    old: Annotated[int, Query(ge=1, le=MAX_SEQ)],
    new: Annotated[
        int | None, Query(ge=1, le=MAX_SEQ, description="Tree size (default: latest)")
    ] = None,
) -> dict[str, Any]:
    with node.db.session() as session:
        new_size = new if new is not None else _tree_size(session)
        proof = consistency_proof(session, old=old, new=new_size)
    return {"old": old, "new": new_size, "proof": [_b64(h) for h in proof]}


@router.get(
    "/export",
    summary="Every entry as JSON Lines (an audited export)",
    response_class=StreamingResponse,
    responses={200: {"content": {JSONL: {}}}},
)
async def export(
    node: NodeDep,
    who: Auditor,
    start: Annotated[int, Query(ge=0, le=MAX_SEQ, description="First seq")] = 0,
    size: Annotated[int | None, Query(ge=0, le=MAX_SEQ, description="Stop before this seq")] = None,
) -> Response:
    def begin() -> int:
        with node.db.session() as session:
            end = size if size is not None else _tree_size(session)
            record(
                session,
                kind="audit.exported",
                actor=who.actor,
                detail={"start": start, "size": end, "via": "api"},
                now=node.now(),
            )
        return end

    end = await run_in_threadpool(begin)

    def lines() -> Iterator[bytes]:
        for obj in iter_entries(node.db.session, after=start - 1, size=end):
            yield encode_leaf(obj) + b"\n"

    return StreamingResponse(
        lines(), media_type=JSONL, headers={"X-Tree-Size": str(end), "Cache-Control": "no-store"}
    )


@router.get("/witnesses", summary="The log key, this node's witness key and its partners'")
def witnesses(node: NodeDep, _who: Auditor) -> dict[str, Any]:
    signer = log_signer(node)
    chosen = set(chosen_witnesses(node))
    with node.db.session() as session:
        partners = [
            p
            for p in session.exec(select(Partner).order_by(Partner.node_id))
            if p.node_id in chosen
        ]
        states = {s.partner: s for s in session.exec(select(AuditWitnessSubmission))}
    externals = external_witnesses(node.settings.external_witnesses_file)
    return {
        "quorum": quorum(len(partners) + len(externals), node.settings.witness_quorum),
        "log": {"origin": signer.name, "vkey": signer.verifier.vkey},
        "witness": {
            "name": witness_cosigner(node).name,
            "vkey": witness_cosigner(node).verifier.vkey,
        },
        "witnesses": [
            {
                "node_id": p.node_id,
                "name": partner_witness_verifier(p).name,
                "vkey": partner_witness_verifier(p).vkey,
                "url": p.url,  # where it serves what it holds: GET /witness/v1/checkpoint
                "cosigned_size": states[p.node_id].cosigned_size if p.node_id in states else 0,
                "last_error": states[p.node_id].last_error if p.node_id in states else None,
            }
            for p in partners
        ],
        # witnesses that are no partner's (ENTENTE_EXTERNAL_WITNESSES_FILE), asked by plain C2SP
        "external": [
            {
                "id": w.key,
                "name": w.verifier.name,
                "vkey": w.verifier.vkey,
                "url": w.url,  # its submission prefix
                "cosigned_size": states[w.key].cosigned_size if w.key in states else 0,
                "last_error": states[w.key].last_error if w.key in states else None,
            }
            for w in externals
        ],
    }


@router.get("/witnessed", summary="What this node holds as a witness of its partners' logs")
def witnessed(
    node: NodeDep,
    _who: Auditor,
    evidence_after: Annotated[int | None, Query(ge=0, le=MAX_SEQ)] = None,
    limit: Annotated[int | None, Query()] = None,
) -> dict[str, Any]:
    """The latest checkpoint this node cosigned for each partner's log, and the refused
    checkpoints kept as evidence (compare them with what the partner serves its auditors)."""
    size = _page_size(node, limit)
    with node.db.session() as session:
        logs = list(session.exec(select(WitnessLog).order_by(WitnessLog.origin)))
        query = select(WitnessEvidence).order_by(WitnessEvidence.id).limit(size + 1)  # type: ignore[arg-type]
        if evidence_after is not None:
            query = query.where(WitnessEvidence.id > evidence_after)  # type: ignore[operator]
        evidence = list(session.exec(query))
    more = len(evidence) > size
    evidence = evidence[:size]
    return {
        "logs": [
            {
                "origin": w.origin,
                "partner": w.partner,
                "size": w.size,
                "root": _b64(w.root),
                "cosigned_at": w.cosigned_at.isoformat() if w.cosigned_at else None,
                "checkpoint": w.note,
            }
            for w in logs
        ],
        "evidence": [
            {
                "id": e.id,
                "origin": e.origin,
                "partner": e.partner,
                "received_at": e.received_at.isoformat(),
                "reason": e.reason,
                "old_size": e.old_size,
                "size": e.size,
                "root": _b64(e.root),
                "request": _b64(e.request),
                "cosigned_size": e.cosigned_size,
                "cosigned_root": _b64(e.cosigned_root),
                "cosigned_checkpoint": e.cosigned_note,
            }
            for e in evidence
        ],
        "next": str(evidence[-1].id) if more and evidence else None,
    }
