"""This node as a C2SP tlog-witness for its partners' logs.

Witness side (:func:`add_checkpoint`, c2sp.org/tlog-witness ``add-checkpoint``): a partner sends
``old <size>``, a consistency proof and its newly signed checkpoint. The witness checks the log's
signature against the partner's pinned key, checks the proof from the last checkpoint it cosigned
for that log (atomically: the state row is locked), persists the new checkpoint and answers with
its tlog-cosignature v1 line. A checkpoint that contradicts what it cosigned before (a different
root at the same size, or a failed consistency proof) is refused and kept whole, with the
checkpoint it contradicts, in ``witness_evidence``: the first :data:`EVIDENCE_PER_LOG` distinct
ones of each log (the first already proves the fork). Past them a refusal is still audited, with
``evidence_not_kept``, but its body is not stored: a hostile log signing a fresh fork per request
cannot grow the witness's database by a whole request each time.

The rules themselves are the pure checker ``service.audit.witness_rules``; this module looks up
the facts it needs, locks the state row, and records the outcome once (:func:`_refuse` for a
refusal, the new state and the first cosignature otherwise).

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

from sqlmodel import Session, func, select

from crypto.keys import VerifyKey
from crypto.merkle import EMPTY_ROOT
from crypto.note import (
    SIG_COSIGNATURE_V1,
    Checkpoint,
    Cosigner,
    Note,
    NoteVerifier,
    cosign_checkpoint,
    parse_note,
)
from service.audit.entries import node_id_from_origin, witness_name
from service.audit.log import record
from service.audit.models import (
    WitnessEvidence,
    WitnessLog,
)
from service.audit.refusals import mark_audited
from service.audit.witness_rules import (
    Refusal,
    Submission,
    check_against_cosigned,
    check_submitter,
    parse_submission,
)
from service.db import insert_if_missing
from service.errors import (
    EntenteError,
    NotFoundError,
)
from service.models import Partner

if TYPE_CHECKING:
    from service.node import Node


__all__ = [
    "ADD_CHECKPOINT_MAX_BYTES",
    "EVIDENCE_PER_LOG",
    "TLOG_SIZE_MEDIA_TYPE",
    "add_checkpoint",
    "cosign_submission",
    "held_checkpoint",
    "partner_witness_verifier",
    "witness_cosigner",
]

log = logging.getLogger("entente.witness")

ADD_CHECKPOINT_MAX_BYTES = 140 * 1024  # bytes: a 128 KiB note plus 64 proof lines
TLOG_SIZE_MEDIA_TYPE = "text/x.tlog.size"  # tlog-witness: the 409 body's content type
ADD_CHECKPOINT_PATH = "/federation/v1/add-checkpoint"
EVIDENCE_PER_LOG = 16  # conflicting checkpoints kept whole per log; later ones are only audited


def witness_cosigner(node: Node) -> Cosigner:
    """The node's Ed25519 key as a tlog-cosignature v1 witness key."""
    return Cosigner(witness_name(node.node_id), node.keys.signing)


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
    # On SQLite this write is the transaction's first statement: it takes the writer lock.
    insert_if_missing(session, table, values, ["origin"])
    query = select(WitnessLog).where(WitnessLog.origin == origin)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    state = session.exec(query.execution_options(populate_existing=True)).one()
    return state


def _refuse(
    session: Session,
    refusal: Refusal,
    *,
    partner: str | None,
    now: datetime,
    evidence: WitnessEvidence | None = None,
    actor: str | None = None,
) -> EntenteError:
    """Audit a refusal (and keep its evidence) durably, then hand back the error to raise,
    marked audited (the problem handler adds no entry of its own). ``actor`` defaults to the
    submitting ``partner``; a log that is no partner's submits as ``log:<origin>``.

    Commits the caller's session: the refusal must be on record even though the request fails.
    """
    error = refusal.error
    kept = evidence is not None and _keep_evidence(session, evidence)
    detail: dict[str, object] = {
        "origin": refusal.origin,
        "reason": error.message,
        "status": error.status,
        "evidence": kept,
    }
    if evidence is not None and not kept:
        detail["evidence_not_kept"] = (
            f"the first {EVIDENCE_PER_LOG} conflicting checkpoints of this log are kept"
        )
    record(
        session,
        kind="witness.refused",
        actor=actor or f"partner:{partner}",
        partner=partner,
        decision="deny",
        detail=detail,
        now=now,
    )
    session.commit()
    return mark_audited(error)


def _keep_evidence(session: Session, evidence: WitnessEvidence) -> bool:
    """Store this conflicting checkpoint unless it is on record already or its log has
    :data:`EVIDENCE_PER_LOG` on record; whether it is on record now. Read under the state lock,
    so concurrent refusals cannot pass the bound together."""
    same_log = WitnessEvidence.origin == evidence.origin
    query = select(WitnessEvidence.id).where(
        same_log, WitnessEvidence.size == evidence.size, WitnessEvidence.root == evidence.root
    )
    if session.exec(query.limit(1)).first() is not None:
        return True
    held = session.exec(select(func.count()).select_from(WitnessEvidence).where(same_log)).one()
    if held >= EVIDENCE_PER_LOG:
        return False
    session.add(evidence)
    return True


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
    before raising; contradicting checkpoints are kept in ``witness_evidence`` (up to
    :data:`EVIDENCE_PER_LOG` a log).
    """
    parsed = parse_submission(request_body)
    if isinstance(parsed, Refusal):
        raise _refuse(session, parsed, partner=origin_partner, now=now)
    origin = parsed.origin
    log_owner = node_id_from_origin(origin)
    pinned = session.get(Partner, log_owner) if log_owner else None
    partner = check_submitter(parsed, submitter=origin_partner, log_owner=pinned)
    if isinstance(partner, Refusal):
        raise _refuse(session, partner, partner=origin_partner, now=now)

    return cosign_submission(
        session,
        parsed,
        owner=partner.node_id,
        partner=partner.node_id,
        actor=f"partner:{origin_partner}",
        cosigner=cosigner,
        now=now,
    )


def cosign_submission(
    session: Session,
    parsed: Submission,
    *,
    owner: str,
    partner: str | None,
    actor: str,
    cosigner: Cosigner,
    now: datetime,
) -> str:
    """The tlog-witness steps after the log's signature checked out: lock this log's state,
    check the request against the checkpoint cosigned last, persist the new one, cosign.
    ``owner`` labels the state row (the partner, or ``""`` for a log that is no partner's);
    ``actor`` (and ``partner``) go into the audit entries."""
    request, checkpoint, origin = parsed.request, parsed.checkpoint, parsed.origin
    state = _lock_state(session, origin=origin, partner=owner, now=now)
    first = state.note is None
    refusal = check_against_cosigned(
        parsed, cosigned_size=state.size, cosigned_root=bytes(state.root)
    )
    if refusal is not None:
        if refusal.error.quiet:
            session.commit()  # release the lock; a stale client is not misbehaviour
            raise refusal.error
        evidence = None
        if refusal.evidence is not None:
            evidence = WitnessEvidence(
                origin=origin,
                partner=owner,
                received_at=now,
                reason=refusal.evidence,
                old_size=request.old_size,
                size=checkpoint.size,
                root=checkpoint.root_hash,
                request=parsed.body,
                cosigned_size=state.size,
                cosigned_root=bytes(state.root),
                cosigned_note=state.note,
            )
        raise _refuse(session, refusal, partner=partner, now=now, evidence=evidence, actor=actor)

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
            actor=actor,
            partner=partner,
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
