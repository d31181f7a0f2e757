"""What the auditor's pages show: the life of one artifact, and the witness evidence this node
keeps of its partners' refused checkpoints (server side, read from the database).

An artifact's life is every sequenced (or still waiting) audit entry about it or about the
onward copies this node made of it, in log order, and the signed statements about it that this
node holds: the receipts partners signed for its deliveries and notices, the deletion
statements holders signed, and the receipts this node signed itself. Each statement is verified
again here, against the signer's pinned keys (or this node's own), and shown with the outcome:
a stored receipt is evidence only as long as it still verifies.

This module does not record audit events and does not render anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from crypto import strict_json
from crypto.dsse import Envelope
from crypto.errors import CryptoError
from crypto.keyset import KeySet
from crypto.receipt import verify_receipt
from service.audit.entries import entry_columns, row_object
from service.audit.models import WitnessEvidence, WitnessLog
from service.errors import NotFoundError
from service.evaluations import EvaluationSummary
from service.federation.settle import receipt_keys
from service.models import Artifact, AuditEntry, Outbox, ReceivedNotice
from service.node import Node
from service.partners import partner_keys

__all__ = [
    "LIFE_LIMIT",
    "ArtifactLife",
    "Signed",
    "WitnessView",
    "artifact_life",
    "parse_artifact_id",
    "witness_view",
]

_entries = AuditEntry.__table__  # type: ignore[attr-defined]
LIFE_LIMIT = 1000  # entries shown on one artifact page (the audit log filter shows the rest)

# What each kind of entry means in an artifact's life, in words.
PHRASES: dict[str, str] = {
    "share.allowed": "shared: the policy allowed it",
    "share.denied": "share refused by the policy",
    "share.failed": "share failed",
    "approval.requested": "waiting for a second approver",
    "approval.granted": "approved by a second person",
    "approval.refused": "approval refused",
    "approval.rejected": "approval rejected",
    "approval.expired": "approval expired",
    "delivery.sent": "delivered to the partner",
    "delivery.failed": "delivery failed",
    "receipt.recorded": "the partner signed a receipt",
    "receive.accepted": "received from the origin",
    "receive.rejected": "delivery refused here",
    "read": "read",
    "read.denied": "read refused",
    "access_notice.sent": "access notice sent to the origin",
    "access_notice.received": "a partner reported a read",
    "revocation.issued": "revoked",
    "revocation.received": "revocation received from the origin",
    "revocation.acknowledged": "the partner acknowledged the revocation",
    "artifact.deleted": "ciphertext deleted",
    "deletion_notice.sent": "deletion reported to the origin",
    "deletion.acknowledged": "a holder reported deleting its copy",
    "onward.allowed": "shared onward",
    "onward.denied": "onward share refused",
}


def parse_artifact_id(value: str) -> str:
    """An artifact id from a path (at most 64 printable characters) or a 404."""
    if not value or len(value) > 64 or not value.isprintable():
        raise NotFoundError("there is no such artifact")
    return value


@dataclass(frozen=True)
class Signed:
    """A signed statement about the artifact that this node holds, verified again now."""

    what: str  # e.g. "delivery receipt"
    signer: str  # the node that signed it
    about: str  # why it was signed, in words
    signed_at: str | None  # as the statement says (the signer's claim)
    keyid: str | None  # the first signature's key id
    verified: bool
    problem: str | None  # why it does not verify


@dataclass(frozen=True)
class ArtifactLife:
    artifact_id: str
    rows: list[Artifact]  # this node's rows with this id (one per origin; usually one)
    copies: list[Artifact]  # onward copies this node made of it
    entries: list[dict[str, Any]]  # entry objects in log order (unsequenced last)
    truncated: bool
    signed: list[Signed]

    def phrase(self, entry: dict[str, Any]) -> str:
        words = PHRASES.get(str(entry["kind"]), "")
        if entry["artifact_id"] != self.artifact_id:
            return f"onward copy {entry['artifact_id']}: {words}" if words else "onward copy"
        return words

    @staticmethod
    def recipients(row: Artifact) -> list[str]:
        loaded = json.loads(row.recipients)
        return [str(r) for r in loaded] if isinstance(loaded, list) else []

    @staticmethod
    def evaluation(row: Artifact) -> EvaluationSummary | None:
        """An evaluation log's summary, as its signed manifest gives it (checked when the
        row was written: ``service.artifacts.rows``)."""
        if row.evaluation is None:
            return None
        return EvaluationSummary.model_validate_json(row.evaluation)


def _verify(
    raw: Any, *, signer: str, keysets: list[KeySet], expect: str, artifact_id: str,
    sha256: str, receiver: str, sender: str,
) -> tuple[bool, str | None, str | None, str | None]:  # fmt: skip
    """(verified, problem, signed at, key id) of one stored receipt or statement."""
    try:
        envelope = Envelope.from_json(json.loads(raw) if isinstance(raw, str) else raw)
    except (CryptoError, ValueError, TypeError):
        return False, "not a DSSE envelope", None, None
    keyid = envelope.signatures[0][0] if envelope.signatures else None
    try:
        when = str(strict_json.loads(envelope.payload).get("received_at"))
    except (ValueError, AttributeError, RecursionError):
        when = None
    if not keysets:
        return False, f"no key of {signer} that could have signed it is pinned", when, keyid
    try:
        verify_receipt(
            envelope, keysets=keysets, expect_kind=expect, artifact_id=artifact_id,
            sha256=sha256, receiver=receiver, sender=sender,
        )  # fmt: skip
    except (CryptoError, ValueError) as exc:
        return False, str(exc)[:200] or type(exc).__name__, when, keyid
    return True, None, when, keyid


def _partner_sets(session: Session, partner: str, raw: Any) -> list[KeySet]:
    try:
        envelope = Envelope.from_json(json.loads(raw) if isinstance(raw, str) else raw)
    except (CryptoError, ValueError, TypeError):
        return []
    return receipt_keys(partner_keys(session, partner), envelope)


def _signed(
    node: Node, session: Session, art: Artifact, entries: list[dict[str, Any]]
) -> list[Signed]:
    out: list[Signed] = []
    me = node.node_id
    outbox = session.exec(
        select(Outbox)
        .where(Outbox.artifact_id == art.id, col(Outbox.receipt).is_not(None))
        .order_by(col(Outbox.id))
    ).all()
    for row in outbox:
        if (row.artifact_origin or me) != art.origin or row.kind not in ("deliver", "notice"):
            continue
        expect = "delivery" if row.kind == "deliver" else str(json.loads(row.payload).get("type"))
        ok, problem, when, keyid = _verify(
            row.receipt, signer=row.partner,
            keysets=_partner_sets(session, row.partner, row.receipt), expect=expect,
            artifact_id=art.id, sha256=art.sha256, receiver=row.partner, sender=me,
        )  # fmt: skip
        about = f"for this node's {expect} notice" if row.kind == "notice" else "for the delivery"
        out.append(Signed(f"{expect} receipt", row.partner, about, when, keyid, ok, problem))
    for entry in entries:
        if entry["kind"] != "deletion.acknowledged" or entry["artifact_id"] != art.id:
            continue
        try:
            statement = json.loads(entry["detail"]).get("statement")
        except (ValueError, AttributeError):
            statement = None
        holder = str(entry["partner"])
        ok, problem, when, keyid = _verify(
            statement, signer=holder, keysets=_partner_sets(session, holder, statement),
            expect="deletion", artifact_id=art.id, sha256=art.sha256, receiver=holder, sender=me,
        )  # fmt: skip
        about = "that it deleted its copy"
        out.append(Signed("deletion statement", holder, about, when, keyid, ok, problem))
    own = node.keys.keysets
    if art.receipt is not None:
        ok, problem, when, keyid = _verify(
            art.receipt, signer=me, keysets=own, expect="delivery", artifact_id=art.id,
            sha256=art.sha256, receiver=me, sender=art.sender,
        )  # fmt: skip
        about = f"given to {art.sender} for the delivery"
        out.append(Signed("delivery receipt", me, about, when, keyid, ok, problem))
    notices = session.exec(
        select(ReceivedNotice)
        .where(ReceivedNotice.artifact_id == art.id)
        .order_by(col(ReceivedNotice.received_at))
    ).all()
    for notice in notices:
        origin = notice.partner if notice.kind == "revocation" else me
        if origin != art.origin:
            continue
        ok, problem, when, keyid = _verify(
            notice.receipt, signer=me, keysets=own, expect=notice.kind, artifact_id=art.id,
            sha256=art.sha256, receiver=me, sender=notice.partner,
        )  # fmt: skip
        about = f"given to {notice.partner} for its {notice.kind} notice"
        out.append(Signed(f"{notice.kind} receipt", me, about, when, keyid, ok, problem))
    return out


def artifact_life(node: Node, session: Session, artifact_id: str) -> ArtifactLife:
    rows = list(session.exec(select(Artifact).where(Artifact.id == artifact_id)))
    copies = list(
        session.exec(
            select(Artifact)
            .where(Artifact.upstream_id == artifact_id, Artifact.origin == node.node_id)
            .order_by(col(Artifact.created_at))
        )
    )
    ids = [artifact_id, *(c.id for c in copies)]
    c = _entries.c
    query = (
        sa.select(*entry_columns())
        .where(c.artifact_id.in_(ids))
        .order_by(c.seq.is_(None), c.seq, c.id)
        .limit(LIFE_LIMIT + 1)
    )
    entries = [row_object(r) for r in session.execute(query)]
    truncated = len(entries) > LIFE_LIMIT
    entries = entries[:LIFE_LIMIT]
    if not rows and not entries:
        raise NotFoundError("this node holds no artifact and no audit entry with that id")
    signed = [s for art in rows for s in _signed(node, session, art, entries)]
    return ArtifactLife(artifact_id, rows, copies, entries, truncated, signed)


# ---------------------------------------------------------------------------------------------
# Witness evidence


@dataclass(frozen=True)
class WitnessView:
    logs: list[WitnessLog]  # the latest checkpoint cosigned per partner log
    evidence: list[WitnessEvidence]  # newest first
    older: int | None  # cursor (an evidence id) for the next page


def witness_view(session: Session, *, before: int | None, limit: int) -> WitnessView:
    logs = list(session.exec(select(WitnessLog).order_by(col(WitnessLog.origin))))
    query = select(WitnessEvidence).order_by(col(WitnessEvidence.id).desc()).limit(limit + 1)
    if before is not None:
        query = query.where(col(WitnessEvidence.id) < before)
    evidence = list(session.exec(query))
    more = len(evidence) > limit
    evidence = evidence[:limit]
    return WitnessView(logs, evidence, evidence[-1].id if more and evidence else None)
