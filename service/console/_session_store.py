"""Console sessions recorded server-side, so that signing out ends a session everywhere.

The signed cookie (``_session``) says which session a browser holds; this table says whether
that session is still live. A session row is written at sign-in and ended at sign-out, so a
copy of the cookie stops working at once, after a restart, and at every replica (they share the
database). Each token keeps at most :data:`MAX_LIVE_PER_TOKEN` live sessions (signing in again
beyond that ends the oldest), and rows that ended or expired more than :data:`KEEP_ENDED` ago
are deleted at each sign-in, so the table stays small whatever a client does.

This module neither checks cookies nor tokens (``_session``, ``service.tokens``); it stores and
answers about session ids.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session, SQLModel

from service.models import UTCDateTime

__all__ = [
    "KEEP_ENDED",
    "MAX_LIVE_PER_TOKEN",
    "SESSIONS",
    "end_session",
    "session_state",
    "start_session",
]

MAX_LIVE_PER_TOKEN = 16  # live console sessions per token
KEEP_ENDED = timedelta(days=1)  # how long an ended or expired session row is kept

SESSIONS = sa.Table(
    "console_sessions",
    SQLModel.metadata,
    sa.Column("id", sa.String(32), primary_key=True),  # the cookie's session id (128 bits)
    sa.Column("token_id", sa.String(32), nullable=False, index=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    sa.Column("ended_at", UTCDateTime(), nullable=True),
)


def start_session(
    session: Session, *, session_id: str, token_id: str, now: datetime, expires_at: datetime
) -> None:
    """Record a new live session (and tidy: old rows, sessions beyond the per-token cap)."""
    session.execute(
        sa.delete(SESSIONS).where(
            sa.or_(SESSIONS.c.expires_at < now - KEEP_ENDED, SESSIONS.c.ended_at < now - KEEP_ENDED)
        )
    )
    live = session.execute(
        sa.select(SESSIONS.c.id)
        .where(
            SESSIONS.c.token_id == token_id,
            SESSIONS.c.ended_at.is_(None),
            SESSIONS.c.expires_at > now,
        )
        .order_by(SESSIONS.c.created_at.desc(), SESSIONS.c.id)
    ).scalars()
    beyond = list(live)[MAX_LIVE_PER_TOKEN - 1 :]
    if beyond:
        session.execute(sa.update(SESSIONS).where(SESSIONS.c.id.in_(beyond)).values(ended_at=now))
    session.execute(
        sa.insert(SESSIONS).values(
            id=session_id, token_id=token_id, created_at=now, expires_at=expires_at
        )
    )


def session_state(session: Session, *, session_id: str, token_id: str, now: datetime) -> str:
    """``"live"``, or why not: ``"unknown"``, ``"ended"`` or ``"expired"``."""
    row = session.execute(
        sa.select(SESSIONS.c.token_id, SESSIONS.c.expires_at, SESSIONS.c.ended_at).where(
            SESSIONS.c.id == session_id
        )
    ).first()
    if row is None or row.token_id != token_id:
        return "unknown"
    if row.ended_at is not None:
        return "ended"
    if row.expires_at <= now:
        return "expired"
    return "live"


def end_session(session: Session, *, session_id: str, now: datetime) -> None:
    """End a session (signing out); ending an ended or unknown one changes nothing."""
    session.execute(
        sa.update(SESSIONS)
        .where(SESSIONS.c.id == session_id, SESSIONS.c.ended_at.is_(None))
        .values(ended_at=now)
    )
