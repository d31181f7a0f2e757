"""This node as a C2SP tlog-witness for its partners' logs.

Witness side (:func:`add_checkpoint`, c2sp.org/tlog-witness ``add-checkpoint``): a partner sends
``old <size>``, a consistency proof and its newly signed checkpoint. The witness checks the log's
signature against the partner's pinned key, checks the proof from the last checkpoint it cosigned
for that log (atomically: the state row is locked), persists the new checkpoint and answers with
its tlog-cosignature v1 line. A checkpoint that contradicts what it cosigned before (a different
root at the same size, or a failed consistency proof) is refused and kept whole, with the
checkpoint it contradicts, in ``witness_evidence``.

Held checkpoints (:func:`held_checkpoint`): the witness serves, to anyone who asks, the latest
checkpoint it cosigned for a log, with a fresh cosignature: an auditor compares a log with it and
so cannot be shown a truncated or rewritten history (``entente audit verify``). It carries only
the log's size and root hash, which witnesses exist to publish.

The node's single Ed25519 key signs as the log (signature type 0x01, key name
``entente.dev/audit/<node id>``) and cosigns as a witness (type 0x04, key name
``entente.dev/witness/<node id>``). The two signed messages cannot be confused: a cosigned
message starts ``cosignature/v1\\ntime <n>\\n`` and its second line is not a decimal tree size.

Routine cosignatures are not audit events: each would grow the witness's log, whose checkpoint
the partner would cosign in turn, growing the partner's log, and so on forever. The first
cosignature of a partner's log and every refusal are audited.

This module does not submit this node's own checkpoints (``service.audit.submission``).
"""

from __future__ import annotations

import base64
import logging
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, select

from crypto.errors import CryptoError, MalformedError, VerificationError
from crypto.keys import VerifyKey
from crypto.merkle import EMPTY_ROOT, verify_consistency
from crypto.note import (
    SIG_COSIGNATURE_V1,
    AddCheckpointRequest,
    Checkpoint,
    Cosigner,
    Note,
    NoteVerifier,
    cosign_checkpoint,
    open_checkpoint,
    parse_note,
)
from service.audit.entries import log_origin, node_id_from_origin, witness_name
from service.audit.log import record
from service.audit.models import (
    WitnessEvidence,
    WitnessLog,
)
from service.errors import (
    ConflictError,
    EntenteError,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
)
from service.models import Partner

if TYPE_CHECKING:
    from service.node import Node


__all__ = [
    "ADD_CHECKPOINT_MAX_BYTES",
    "TLOG_SIZE_MEDIA_TYPE",
    "BadRequestError",
    "WitnessSizeConflictError",
    "add_checkpoint",
    "held_checkpoint",
    "partner_witness_verifier",
    "witness_cosigner",
]

log = logging.getLogger("entente.witness")

ADD_CHECKPOINT_MAX_BYTES = 140 * 1024  # bytes: a 128 KiB note plus 64 proof lines
TLOG_SIZE_MEDIA_TYPE = "text/x.tlog.size"  # tlog-witness: the 409 body's content type
ADD_CHECKPOINT_PATH = "/federation/v1/add-checkpoint"


class BadRequestError(InvalidInputError):
    """tlog-witness: an old size above the checkpoint size is a 400."""

    kind = "bad-request"
    status = 400
    title = "Bad request"


class WitnessSizeConflictError(ConflictError):
    """tlog-witness: the old size is not the size this witness last cosigned (409, and the body
    is that size in decimal, ``text/x.tlog.size``)."""

    def __init__(self, message: str, *, latest_size: int) -> None:
        super().__init__(message, latest_size=latest_size)
        self.latest_size = latest_size


def witness_cosigner(node: Node) -> Cosigner:
    """The node's Ed25519 key as a tlog-cosignature v1 witness key."""
    return Cosigner(witness_name(node.node_id), node.keys.signing)


def partner_log_verifier(partner: Partner) -> NoteVerifier:
    return NoteVerifier(
        log_origin(partner.node_id), VerifyKey(base64.b64decode(partner.signing_key))
    )


def partner_witness_verifier(partner: Partner) -> NoteVerifier:
    """The pinned partner's key as the verifier of its cosignatures on our checkpoints."""
    return NoteVerifier(
        witness_name(partner.node_id),
        VerifyKey(base64.b64decode(partner.signing_key)),
        SIG_COSIGNATURE_V1,
    )


# ---------------------------------------------------------------------------------------------
# Witness side


def _lock_state(session: Session, *, origin: str, partner: str, now: datetime) -> WitnessLog:
    """The witness state row for ``origin``, created if missing and locked for this transaction:
    checking the old size and storing the new checkpoint must be atomic (tlog-witness)."""
    table = WitnessLog.__table__  # type: ignore[attr-defined]
    values = {"origin": origin, "partner": partner, "size": 0, "root": EMPTY_ROOT}
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    # On SQLite this write is the transaction's first statement: it takes the writer lock.
    session.execute(insert.values(**values).on_conflict_do_nothing(index_elements=["origin"]))
    query = select(WitnessLog).where(WitnessLog.origin == origin)
    if dialect == "postgresql":
        query = query.with_for_update()
    state = session.exec(query.execution_options(populate_existing=True)).one()
    return state


def _refuse(
    session: Session,
    error: EntenteError,
    *,
    partner: str,
    now: datetime,
    origin: str | None = None,
    evidence: WitnessEvidence | None = None,
) -> EntenteError:
    """Audit a refusal (and keep its evidence) durably, then hand back the error to raise.

    Commits the caller's session: the refusal must be on record even though the request fails.
    """
    if evidence is not None and not _evidence_kept(session, evidence):
        session.add(evidence)
    record(
        session,
        kind="witness.refused",
        actor=f"partner:{partner}",
        partner=partner,
        decision="deny",
        detail={
            "origin": origin,
            "reason": error.message,
            "status": error.status,
            "evidence": evidence is not None,
        },
        now=now,
    )
    session.commit()
    return error


def _evidence_kept(session: Session, evidence: WitnessEvidence) -> bool:
    """Whether this conflicting checkpoint is on record already (read under the state lock)."""
    query = select(WitnessEvidence.id).where(
        WitnessEvidence.origin == evidence.origin,
        WitnessEvidence.size == evidence.size,
        WitnessEvidence.root == evidence.root,
    )
    return session.exec(query.limit(1)).first() is not None


def add_checkpoint(
    session: Session,
    *,
    origin_partner: str,
    request_body: bytes,
    cosigner: Cosigner,
    now: datetime,
) -> str:
    """Handle a tlog-witness ``add-checkpoint`` request from the authenticated partner
    ``origin_partner``; return the cosignature line (with its newline).

    Raises :class:`InvalidInputError` (422) for a malformed body or a consistency proof that
    does not verify, :class:`NotFoundError` (404) for an unknown log, :class:`ForbiddenError`
    (403) for a checkpoint not signed by the partner's pinned key, :class:`BadRequestError`
    (400) when the old size exceeds the checkpoint size, :class:`WitnessSizeConflictError`
    (409) when the old size is not what this witness cosigned last, and :class:`ConflictError`
    (409) for a different root at the cosigned size. Refusals are committed to the audit log
    before raising; contradicting checkpoints are kept in ``witness_evidence``.
    """
    # tlog-witness: the body is "old N", proof lines, a blank line, the signed checkpoint.
    try:
        request = AddCheckpointRequest.parse(request_body)
        checkpoint = Checkpoint.parse(parse_note(request.checkpoint).text)
    except MalformedError as exc:
        raise _refuse(
            session,
            InvalidInputError(f"malformed add-checkpoint request: {exc}"),
            partner=origin_partner,
            now=now,
        ) from None
    origin = checkpoint.origin
    # "If the checkpoint origin is unknown, the witness MUST respond with 404".
    log_owner = node_id_from_origin(origin)
    partner = session.get(Partner, log_owner) if log_owner else None
    if partner is None:
        raise _refuse(
            session,
            NotFoundError(f"this witness does not follow a log with origin {origin[:200]!r}"),
            partner=origin_partner,
            now=now,
            origin=origin[:200],
        )
    if partner.node_id != origin_partner:
        raise _refuse(
            session,
            ForbiddenError(f"partner {origin_partner} may submit only its own log's checkpoints"),
            partner=origin_partner,
            now=now,
            origin=origin,
        )
    # "If none of the signatures verify against a trusted public key ... 403".
    try:
        open_checkpoint(request.checkpoint, log=partner_log_verifier(partner))
    except CryptoError:
        raise _refuse(
            session,
            ForbiddenError("the checkpoint is not signed by the partner's pinned key"),
            partner=origin_partner,
            now=now,
            origin=origin,
        ) from None
    # "The old size MUST be equal to or lower than the checkpoint size" (else 400).
    if request.old_size > checkpoint.size:
        raise _refuse(
            session,
            BadRequestError(
                f"old size {request.old_size} is above the checkpoint size {checkpoint.size}"
            ),
            partner=origin_partner,
            now=now,
            origin=origin,
        )

    state = _lock_state(session, origin=origin, partner=partner.node_id, now=now)
    first = state.note is None

    def evidence(reason: str) -> WitnessEvidence:
        return WitnessEvidence(
            origin=origin,
            partner=partner.node_id,
            received_at=now,
            reason=reason,
            old_size=request.old_size,
            size=checkpoint.size,
            root=checkpoint.root_hash,
            request=request_body,
            cosigned_size=state.size,
            cosigned_root=bytes(state.root),
            cosigned_note=state.note,
        )

    # "The witness MUST check that the old size matches the size of the latest checkpoint it
    # cosigned ... If it doesn't match ... 409", body: that size.
    if request.old_size != state.size:
        session.commit()  # release the lock; a stale client is not misbehaviour
        raise WitnessSizeConflictError(
            f"this witness last cosigned size {state.size}, not {request.old_size}",
            latest_size=state.size,
        )
    if request.old_size == 0:
        # "The proof MUST be empty if the old size is zero."
        if request.proof:
            raise _refuse(
                session,
                InvalidInputError("a consistency proof from size 0 must be empty"),
                partner=origin_partner,
                now=now,
                origin=origin,
            )
    elif request.old_size == checkpoint.size:
        if request.proof:
            raise _refuse(
                session,
                InvalidInputError("a consistency proof between equal sizes must be empty"),
                partner=origin_partner,
                now=now,
                origin=origin,
            )
        # "If the old size matches the checkpoint size, ... the root hashes [must be]
        # identical. If they don't match, ... 409".
        if checkpoint.root_hash != bytes(state.root):
            reason = f"a different root hash for size {checkpoint.size}, which was cosigned"
            raise _refuse(
                session,
                ConflictError(f"conflicting checkpoint: {reason}"),
                partner=origin_partner,
                now=now,
                origin=origin,
                evidence=evidence(reason),
            )
    else:
        # "The consistency proof lines MUST encode a Merkle Consistency Proof from the old size
        # to the checkpoint size ... If [it] doesn't verify, ... 422."
        try:
            verify_consistency(
                size1=request.old_size,
                size2=checkpoint.size,
                root1=bytes(state.root),
                root2=checkpoint.root_hash,
                proof=request.proof,
            )
        except (VerificationError, MalformedError) as exc:
            reason = f"not consistent with the cosigned size {state.size}: {exc}"
            raise _refuse(
                session,
                InvalidInputError(f"inconsistent checkpoint: {reason}"),
                partner=origin_partner,
                now=now,
                origin=origin,
                evidence=evidence(reason),
            ) from None

    # "The witness MUST update its record of the latest cosigned checkpoint" and persist it
    # before responding (the caller's transaction commits before the response is sent).
    state.size = checkpoint.size
    state.root = checkpoint.root_hash
    state.note = request.checkpoint.decode("utf-8")
    state.cosigned_at = now
    session.add(state)
    if first:
        record(
            session,
            kind="witness.cosigned",
            actor=f"partner:{origin_partner}",
            partner=partner.node_id,
            decision="allow",
            detail={
                "origin": origin,
                "size": checkpoint.size,
                "root": base64.b64encode(checkpoint.root_hash).decode("ascii"),
                "first": True,
            },
            now=now,
        )
    signature = cosign_checkpoint(checkpoint, cosigner=cosigner, timestamp=int(now.timestamp()))
    return signature.line()


def held_checkpoint(session: Session, *, origin: str, cosigner: Cosigner, now: datetime) -> bytes:
    """The latest checkpoint this witness cosigned for ``origin``, as the log signed it, with
    this witness's cosignature dated ``now`` (it still vouches for it: tlog-cosignature v1).

    Raises :class:`NotFoundError` for a log it does not follow or has not cosigned yet.
    """
    state = session.get(WitnessLog, origin[:200])
    if state is None or state.note is None:
        raise NotFoundError(f"this witness holds no cosigned checkpoint of {origin[:200]!r}")
    note = parse_note(state.note.encode("utf-8"))
    checkpoint = Checkpoint.parse(note.text)
    line = cosign_checkpoint(checkpoint, cosigner=cosigner, timestamp=int(now.timestamp()))
    return Note(note.text, (*note.signatures[:1], line)).to_bytes()
