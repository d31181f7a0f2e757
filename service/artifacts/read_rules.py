"""The rules that keep an artifact from being read, as a pure function of its facts and ``now``.

:func:`check_readable` raises the first refusal that applies, in this order (the order in which
they are reported when several do): the origin revoked it (410), it is under embargo (403), it
expired (409), it is past the retention period an obligation set (409). Each error's
``reason`` (``revoked``, ``embargo``, ``expired``, ``retention``) is the rule its audit entry
cites.

The MOU policy's own decision on a read is the enforcement step's (``service.artifacts.enforce``).
This module opens no database and audits nothing: ``service.artifacts.read`` (the shell) looks
the facts up, calls it, and records a refusal once as ``read.denied``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from crypto.rfc3339 import format_seconds
from service.errors import ConflictError, EntenteError, ForbiddenError, GoneError

__all__ = ["ReadFacts", "check_readable"]


@dataclass(frozen=True, slots=True)
class ReadFacts:
    """What decides whether an artifact may still be read, besides the policy."""

    artifact_id: str
    recorded_at: datetime  # when this node stored it (retention counts from here)
    revoked_at: datetime | None = None
    embargo_until: datetime | None = None
    expires_at: datetime | None = None
    retention_days: int | None = None  # the shortest ``retain_max`` obligation, if any


def check_readable(facts: ReadFacts, *, now: datetime) -> None:
    """Raise the first refusal that applies to reading the artifact at ``now``, if any."""
    refusal = _first_refusal(facts, now)
    if refusal is not None:
        raise refusal


def _first_refusal(facts: ReadFacts, now: datetime) -> EntenteError | None:
    aid = facts.artifact_id
    if facts.revoked_at is not None:
        return GoneError(
            f"artifact {aid} was revoked by its origin at {format_seconds(facts.revoked_at)}",
            reason="revoked",
            revoked_at=format_seconds(facts.revoked_at),
        )
    if facts.embargo_until is not None and now < facts.embargo_until:
        return ForbiddenError(
            f"artifact {aid} is under embargo until {facts.embargo_until}",
            reason="embargo",
            embargo_until=facts.embargo_until.isoformat(),
        )
    if facts.expires_at is not None and now >= facts.expires_at:
        return ConflictError(f"artifact {aid} expired at {facts.expires_at}", reason="expired")
    days = facts.retention_days
    if days is not None and now >= facts.recorded_at + timedelta(days=days):
        return ConflictError(
            f"artifact {aid} is past its retention period ({days} days)", reason="retention"
        )
    return None
