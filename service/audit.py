"""Recording audit events.

:func:`record` adds an :class:`service.models.AuditEntry` to the caller's session, so the event
commits in the same transaction as the action it records, or not at all. Entries carry who, what
(artifact id and digest, never content), which partner, the decision with its rule and MOU clause,
and when. The Merkle log over them is built by the sequencer (``service.transparency``).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlmodel import Session

from service.models import AuditEntry, utcnow

__all__ = ["EVENT_KINDS", "record"]

EVENT_KINDS = frozenset(
    {
        "node.initialized",
        "partner.added",
        "partner.replaced",
        "partner.removed",
        "partner.key_rotated",
        "policy.set_changed",
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
        "onward.allowed",
        "onward.denied",
        "key.rotated",
        "audit.read",
        "audit.exported",
        "witness.cosigned",
        "witness.refused",
        "request.refused",
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
) -> AuditEntry:
    """Add an audit entry to ``session`` (committed with the caller's transaction)."""
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown audit event kind {kind!r}")
    entry = AuditEntry(
        created_at=now or utcnow(),
        kind=kind,
        actor=actor[:200],
        partner=partner,
        artifact_id=artifact_id,
        digest=digest,
        decision=decision,
        rule=rule[:200] if rule else None,
        clause=clause[:500] if clause else None,
        detail=json.dumps(detail or {}, sort_keys=True, separators=(",", ":"), default=str),
    )
    session.add(entry)
    return entry
