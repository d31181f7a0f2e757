"""Delivery state per partner, for ``GET /v1/sync`` and ``entente sync status``.

For each pinned partner (and any partner that still has outbox rows): rows pending, delivered,
failing (pending after at least one failed attempt, or given up as ``failed``) with the last
error among them, the last successful contact (a receipt stored, or a feed pulled cleanly), and
the error of the last pull of the partner's feed (each partner's pull fails on its own).
Reads only; no keys needed, so the CLI can run it against a stopped node's database.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import Session, col, func, select

from service.models import Outbox, Partner, PullState
from service.schemas import SyncPartnerOut

__all__ = ["sync_state"]


def _failing(partner: str) -> sa.ColumnElement[bool]:
    return sa.and_(
        col(Outbox.partner) == partner,
        sa.or_(
            col(Outbox.state) == "failed",
            sa.and_(col(Outbox.state) == "pending", col(Outbox.attempts) > 0),
        ),
    )


def sync_state(session: Session) -> list[SyncPartnerOut]:
    pinned = [p.node_id for p in session.exec(select(Partner).order_by(col(Partner.node_id)))]
    counts: dict[tuple[str, str], int] = {}
    for partner, state, n in session.exec(
        select(Outbox.partner, Outbox.state, func.count()).group_by(
            col(Outbox.partner), col(Outbox.state)
        )
    ):
        counts[(partner, state)] = n
    pulls = {s.partner: s for s in session.exec(select(PullState))}
    pulled = {p: s.last_ok_at for p, s in pulls.items() if s.last_ok_at}
    out = []
    for partner in sorted(set(pinned) | {p for p, _ in counts}):
        failing = session.exec(select(func.count()).where(_failing(partner))).one()
        last_error = (
            session.exec(
                select(Outbox.last_error)
                .where(_failing(partner), col(Outbox.last_error).is_not(None))
                .order_by(col(Outbox.id).desc())
                .limit(1)
            ).first()
            if failing
            else None
        )
        delivered_at = session.exec(
            select(func.max(Outbox.delivered_at)).where(Outbox.partner == partner)
        ).first()
        contacts = [c for c in (delivered_at, pulled.get(partner)) if c is not None]
        out.append(
            SyncPartnerOut(
                partner=partner,
                pending=counts.get((partner, "pending"), 0),
                delivered=counts.get((partner, "delivered"), 0),
                failing=failing,
                last_error=last_error,
                last_contact=max(contacts) if contacts else None,
                pull_error=pulls[partner].last_error if partner in pulls else None,
                last_pull_at=pulls[partner].last_pull_at if partner in pulls else None,
            )
        )
    return out
