"""Arrivals at this node, in the order its audit log sequenced them: what ``GET /v1/events``
streams.

An event is an audit entry that records something reaching this node from a partner: an
artifact received (``receive.accepted``), a received artifact revoked by its origin
(``revocation.received``) or deleted here under an obligation (``artifact.deleted`` of a received
copy). Its cursor is the entry's place in the log: ``seq + 1``, the log's size once the entry
joined it. The log is append-only and sequenced in one transaction per batch, so the cursor
survives a restart, is the same on every replica sharing the database, only grows, and an event
never appears below a cursor a reader has already passed. An entry is an event once it is
sequenced (within ``checkpoint_interval_seconds`` of the action).

This module reads only: it neither streams (``service.api.events``) nor audits, and it never
touches content, only the artifact's row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, col, select

from service.audit.models import AuditLogHead
from service.models import Artifact, AuditEntry

__all__ = ["EVENT_KINDS", "Event", "events_after", "log_size"]

EVENT_KINDS = {  # audit entry kind -> event name
    "receive.accepted": "arrived",
    "revocation.received": "revoked",
    "artifact.deleted": "deleted",
}


@dataclass(frozen=True)
class Event:
    cursor: int  # the entry's seq + 1
    name: str  # arrived | revoked | deleted
    artifact: Artifact
    at: datetime | None = None  # when the entry was recorded


@dataclass(frozen=True)
class Batch:
    events: list[Event]
    cursor: int  # the cursor after the last entry read (events or not)


def log_size(session: Session) -> int:
    """The cursor of "now": the number of sequenced entries."""
    size = session.exec(select(AuditLogHead.size).where(AuditLogHead.id == 1)).first()
    return int(size or 0)


def _artifact(session: Session, entry: AuditEntry) -> Artifact | None:
    """The received artifact an entry names: its id, from the partner that sent or made it."""
    if entry.artifact_id is None or entry.partner is None:
        return None
    return session.exec(
        select(Artifact)
        .where(
            Artifact.id == entry.artifact_id,
            Artifact.direction == "received",
            sa.or_(col(Artifact.origin) == entry.partner, col(Artifact.sender) == entry.partner),
        )
        .limit(1)
    ).first()


def events_after(session: Session, cursor: int, *, limit: int) -> Batch:
    """The events whose cursor is above ``cursor``, oldest first, at most ``limit`` of them.

    The batch's ``cursor`` is the last one read, so that a caller resuming from it skips an
    entry that names no artifact held here (a revocation of one never received)."""
    entries = list(
        session.exec(
            select(AuditEntry)
            .where(
                col(AuditEntry.seq) >= cursor,
                col(AuditEntry.kind).in_(tuple(EVENT_KINDS)),
                col(AuditEntry.partner).is_not(None),
            )
            .order_by(col(AuditEntry.seq))
            .limit(limit)
        )
    )
    events: list[Event] = []
    for entry in entries:
        artifact = _artifact(session, entry)
        if artifact is not None and entry.seq is not None:
            events.append(Event(entry.seq + 1, EVENT_KINDS[entry.kind], artifact, entry.created_at))
    last = entries[-1].seq if entries else None
    return Batch(events, cursor if last is None else max(cursor, last + 1))
