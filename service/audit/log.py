"""Recording audit events.

:func:`record` adds an :class:`service.models.AuditEntry` row to the caller's transaction, so the
event commits with the action it records, or not at all. Entries carry who, what (artifact id and
digest, never content), which partner, the decision with its rule and MOU clause, and when. The
Merkle log over them is built by the sequencer (``service.audit``).

For speed the rows of one transaction are inserted together (one multi-row INSERT) just before it
commits, or earlier by :func:`flush_audit`; they are discarded if it rolls back. A query in the
same transaction sees them only after :func:`flush_audit`.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy.orm import SessionTransaction
from sqlmodel import Session

from service.models import AuditEntry, utcnow

__all__ = ["AUDIT_TABLE", "EVENT_KINDS", "audit_row", "flush_audit", "record"]

_PENDING = "entente.audit.pending"  # session.info key: rows recorded, not yet inserted
_entries = AuditEntry.__table__  # type: ignore[attr-defined]
AUDIT_TABLE: sa.Table = _entries

EVENT_KINDS = frozenset(
    {
        "node.initialized",
        "node.backup",
        "node.restored",
        "partner.added",
        "partner.replaced",
        "partner.removed",
        "roster.imported",
        "partner.key_rotated",
        "partner.updated",
        "policy.set_changed",
        "agreement.officer_certified",
        "token.created",
        "token.revoked",
        "auth.refused",
        "share.allowed",
        "share.denied",
        "share.failed",
        "delivery.sent",
        "delivery.failed",
        "receipt.recorded",
        "receive.accepted",
        "receive.rejected",
        "federation.refused",
        "read",
        "read.denied",
        "access_notice.sent",
        "access_notice.received",
        "revocation.issued",
        "revocation.received",
        "revocation.acknowledged",
        "artifact.deleted",
        "deletion_notice.sent",
        "deletion.acknowledged",
        "onward.allowed",
        "onward.denied",
        "key.rotated",
        "audit.read",
        "audit.exported",
        "witness.cosigned",
        "witness.refused",
        "audit.rollback_detected",
        "request.refused",
        "approval.requested",
        "approval.granted",
        "approval.refused",
        "approval.rejected",
        "approval.expired",
        "webhook.created",
        "webhook.deleted",
        "webhook.disabled",
    }
)


def record(
    session: Session,
    *,
    kind: str,
    actor: str,
    partner: str | None = None,
    artifact_id: str | None = None,
    digest: str | None = None,
    decision: str | None = None,
    rule: str | None = None,
    clause: str | None = None,
    detail: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> None:
    """Add an audit entry to ``session``'s transaction (inserted when it commits, or at
    :func:`flush_audit`; its ``id`` is assigned then, and its ``seq`` by the sequencer)."""
    row = audit_row(
        kind=kind, actor=actor, partner=partner, artifact_id=artifact_id, digest=digest,
        decision=decision, rule=rule, clause=clause, detail=detail, now=now,
    )  # fmt: skip
    session.info.setdefault(_PENDING, []).append(row)


def audit_row(
    *,
    kind: str,
    actor: str,
    partner: str | None = None,
    artifact_id: str | None = None,
    digest: str | None = None,
    decision: str | None = None,
    rule: str | None = None,
    clause: str | None = None,
    detail: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The row :func:`record` would insert, for a writer that inserts it itself (into
    :data:`AUDIT_TABLE`, in the transaction of the action it records)."""
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown audit event kind {kind!r}")
    return {
        "seq": None,
        "created_at": now or utcnow(),
        "kind": kind,
        "actor": actor[:200],
        "partner": partner,
        "artifact_id": artifact_id,
        "digest": digest,
        "decision": decision,
        "rule": rule[:200] if rule else None,
        "clause": clause[:500] if clause else None,
        "detail": json.dumps(detail or {}, sort_keys=True, separators=(",", ":"), default=str),
    }


def flush_audit(session: Session | OrmSession) -> None:
    """Insert the entries recorded in ``session``'s transaction so far."""
    rows = session.info.pop(_PENDING, None)
    if rows:
        # On the session's connection: a Core executemany, without the ORM's statement
        # machinery (or an autoflush: pending ORM objects are flushed by the commit itself).
        session.connection().execute(sa.insert(_entries), rows)


@event.listens_for(OrmSession, "before_commit")
def _insert_before_commit(session: OrmSession) -> None:
    flush_audit(session)


@event.listens_for(OrmSession, "after_transaction_end")
def _forget_on_end(session: OrmSession, transaction: SessionTransaction) -> None:
    # A rollback (or close) of the outermost transaction drops what it recorded.
    if transaction.parent is None:
        session.info.pop(_PENDING, None)
