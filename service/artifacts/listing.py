"""Listing and looking up artifacts at this node: cursor-paginated listing, one artifact by id
(and origin), and its deliveries.

This module reads only: it neither decrypts (``service.artifacts.read``) nor audits.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlmodel import Session, col, select

from crypto import strict_json
from crypto.rfc3339 import format_seconds
from service.errors import (
    ConflictError,
    GoneError,
    InvalidInputError,
    NotFoundError,
)
from service.models import Artifact, Outbox

__all__ = ["ArtifactFilter", "get_artifact", "list_artifacts"]

MAX_RECIPIENTS_PER_ID = 64  # origins listed when a plain id is ambiguous


# --- list and get -----------------------------------------------------------------------------


def _encode_cursor(row: Artifact) -> str:
    raw = json.dumps([row.recorded_at.isoformat(), row.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, ident = strict_json.loads(raw)
        at = datetime.fromisoformat(stamp)
        if at.tzinfo is None:
            raise ValueError("naive")
        return at.astimezone(UTC), str(ident)
    except (ValueError, TypeError, UnicodeDecodeError, OverflowError):
        raise InvalidInputError("the cursor is not one this node issued") from None


@dataclass(frozen=True)
class ArtifactFilter:
    """Which artifacts a listing keeps (every field that is set must match)."""

    direction: str | None = None  # sent or received
    partner: str | None = None  # the origin, the sender or one of the recipients
    tlp: str | None = None
    topic: str | None = None
    purpose: str | None = None
    task: str | None = None  # an evaluation log's task (exact name)
    model: str | None = None  # an evaluation log's model (exact name)
    title: str | None = None  # words in the title, any case
    since: datetime | None = None  # recorded at or after
    until: datetime | None = None  # recorded before


def list_artifacts(
    session: Session, keep: ArtifactFilter, *, cursor: str | None, limit: int
) -> tuple[list[Artifact], str | None]:
    """Newest first, keyset-paginated on (recorded_at, id); deleted artifacts are left out."""
    query = select(Artifact).where(col(Artifact.deleted_at).is_(None))
    direction, partner, tlp, topic = keep.direction, keep.partner, keep.tlp, keep.topic
    task, model = keep.task, keep.model
    if direction is not None:
        query = query.where(Artifact.direction == direction)
    if partner is not None:
        query = query.where(
            sa.or_(
                col(Artifact.origin) == partner,
                col(Artifact.sender) == partner,
                col(Artifact.recipients).contains(json.dumps(partner)),
            )
        )
    if tlp is not None:
        query = query.where(Artifact.tlp == tlp)
    if topic is not None:
        query = query.where(col(Artifact.topics).contains(json.dumps(topic)))
    if task is not None:
        query = query.where(Artifact.eval_task == task)
    if model is not None:
        query = query.where(Artifact.eval_model == model)
    if keep.purpose is not None:
        query = query.where(col(Artifact.purposes).contains(json.dumps(keep.purpose)))
    if keep.title is not None:
        query = query.where(col(Artifact.title).icontains(keep.title, autoescape=True))
    if keep.since is not None:
        query = query.where(col(Artifact.recorded_at) >= keep.since)
    if keep.until is not None:
        query = query.where(col(Artifact.recorded_at) < keep.until)
    if cursor is not None:
        at, ident = _decode_cursor(cursor)
        query = query.where(
            sa.or_(
                col(Artifact.recorded_at) < at,
                sa.and_(col(Artifact.recorded_at) == at, col(Artifact.id) < ident),
            )
        )
    rows = list(
        session.exec(
            query.order_by(col(Artifact.recorded_at).desc(), col(Artifact.id).desc()).limit(
                limit + 1
            )
        )
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, _encode_cursor(rows[-1]) if more and rows else None


def get_artifact(session: Session, artifact_id: str) -> Artifact:
    """The artifact ``id`` or ``id@origin`` names (ids are unique per origin).

    A plain id names this node's own artifact when it has one under that id (its own
    namespace), else the one artifact received under it; when several origins used the id,
    the caller must say which (409, naming the ``id@origin`` forms)."""
    ident, _, origin = artifact_id.partition("@")
    if len(ident) > 64 or len(origin) > 63:
        raise NotFoundError(f"no artifact {artifact_id[:100]!r}")
    query = select(Artifact).where(Artifact.id == ident, col(Artifact.deleted_at).is_(None))
    if origin:
        query = query.where(Artifact.origin == origin)
    rows = list(session.exec(query.limit(MAX_RECIPIENTS_PER_ID)))
    own = [r for r in rows if r.direction == "sent"]
    if own:
        return own[0]
    if not rows:
        _raise_if_gone(session, ident, origin)
        raise NotFoundError(f"no artifact {artifact_id[:100]!r}")
    if len(rows) > 1:
        refs = ", ".join(sorted(f"{r.id}@{r.origin}" for r in rows))
        raise ConflictError(
            f"artifact id {ident!r} is used by several origins: name one of {refs}",
            reason="ambiguous",
        )
    return rows[0]


def _raise_if_gone(session: Session, ident: str, origin: str) -> None:
    """A 410 that says when and why, for an artifact this node held and no longer holds (its
    origin revoked it, or its expiry or retention period ended), instead of "no artifact"."""
    query = select(Artifact).where(Artifact.id == ident, col(Artifact.deleted_at).is_not(None))
    if origin:
        query = query.where(Artifact.origin == origin)
    gone = session.exec(query.order_by(col(Artifact.deleted_at).desc()).limit(1)).first()
    if gone is None or gone.deleted_at is None:
        return
    deleted = format_seconds(gone.deleted_at)
    if gone.revoked_at is not None:
        raise GoneError(
            f"artifact {gone.id} was revoked by its origin {gone.origin} at "
            f"{format_seconds(gone.revoked_at)}; this node deleted its copy at {deleted}",
            reason="revoked",
            origin=gone.origin,
            revoked_at=format_seconds(gone.revoked_at),
            deleted_at=deleted,
        )
    raise GoneError(
        f"artifact {gone.id} was deleted here at {deleted} (its expiry or retention period ended)",
        reason="deleted",
        origin=gone.origin,
        deleted_at=deleted,
    )


def deliveries_for(session: Session, artifact_id: str) -> list[Outbox]:
    return list(
        session.exec(
            select(Outbox)
            .where(Outbox.artifact_id == artifact_id, Outbox.kind == "deliver")
            .order_by(col(Outbox.partner))
        )
    )
