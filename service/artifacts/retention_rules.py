"""The rules that say when an artifact's ciphertext must be deleted, and when a share's terms
contradict each other: pure functions of facts and ``now``.

:func:`deletion_due` says whether and why a copy this node holds must go now (and
:func:`next_due` from when it will): the origin
revoked it; it expired and an obligation says ``delete_at_expiry``; or it is past a
``retain_max`` obligation's days, counted from when this node recorded it. Each
:class:`Term` names the rule (or rules) and MOU clause that state it and whose terms they are
(``origin``: the origin's decision, disclosed with the artifact; ``own``: this node's own
decisions, on the same agreement's terms).

:func:`terms_of_decision` reads the terms of a stored decision (``{"rules", "obligations"}``);
:func:`inconsistent_terms` is the check a share runs before anything is sealed: an embargo at
or after the expiry, or a retention that ends before the embargo does, can never be honoured.

This module opens no database, deletes nothing and audits nothing: ``service.artifacts.retention``
(the worker) and ``service.artifacts.share`` do.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

__all__ = [
    "RETENTION_KINDS",
    "Deletion",
    "RetentionFacts",
    "Term",
    "deletion_due",
    "inconsistent_terms",
    "next_due",
    "terms_of_decision",
]

RETENTION_KINDS = frozenset({"delete_at_expiry", "retain_max"})


@dataclass(frozen=True, slots=True)
class Term:
    """One retention obligation and where it comes from."""

    kind: str  # delete_at_expiry | retain_max
    days: int | None = None  # retain_max only: days kept at most, from when it was recorded here
    rule: str | None = None  # the rule id(s) that state it, comma-separated; None when unknown
    clause: str | None = None  # their MOU clause(s)
    stated_by: str = "own"  # origin | own

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "stated_by": self.stated_by}
        if self.days is not None:
            out["days"] = self.days
        return out


@dataclass(frozen=True, slots=True)
class RetentionFacts:
    """What decides whether a copy must be deleted."""

    artifact_id: str
    recorded_at: datetime  # when this node stored it (retention counts from here)
    holds_ciphertext: bool
    revoked_at: datetime | None = None
    expires_at: datetime | None = None
    terms: tuple[Term, ...] = ()


@dataclass(frozen=True, slots=True)
class Deletion:
    """A deletion that is due: why (``revoked``, ``expired``, ``retention``), since when, and
    the term that requires it (``None`` for a revocation, which the origin ordered itself)."""

    reason: str
    due_at: datetime
    term: Term | None = None

    @property
    def rule(self) -> str:
        if self.term is None or self.term.rule is None:
            return self.reason if self.term is None else self.term.kind
        return self.term.rule

    @property
    def clause(self) -> str | None:
        return self.term.clause if self.term else None


def deletion_due(facts: RetentionFacts, *, now: datetime) -> Deletion | None:
    """The deletion due at ``now``, if any: a revocation first, else the obligation that fell
    due earliest (on a tie, the origin's term, so that it is acknowledged)."""
    if not facts.holds_ciphertext:
        return None
    if facts.revoked_at is not None:
        return Deletion("revoked", facts.revoked_at)
    due: list[tuple[datetime, int, Deletion]] = []
    for term in facts.terms:
        rank = 0 if term.stated_by == "origin" else 1
        if term.kind == "delete_at_expiry" and facts.expires_at is not None:
            if now >= facts.expires_at:
                due.append((facts.expires_at, rank, Deletion("expired", facts.expires_at, term)))
        elif term.kind == "retain_max" and term.days is not None:
            until = days_after(facts.recorded_at, term.days)
            if until is not None and now >= until:
                due.append((until, rank, Deletion("retention", until, term)))
    if not due:
        return None
    return min(due, key=lambda d: (d[0], d[1]))[2]


def next_due(facts: RetentionFacts) -> datetime | None:
    """The earliest ``now`` at which :func:`deletion_due` is not None (it stays due from then
    on), or None if no term can ever make it due: what the worker stores, so that a round looks
    only at the rows whose time has come."""
    if not facts.holds_ciphertext:
        return None
    if facts.revoked_at is not None:
        return facts.revoked_at
    times: list[datetime] = []
    for term in facts.terms:
        if term.kind == "delete_at_expiry" and facts.expires_at is not None:
            times.append(facts.expires_at)
        elif term.kind == "retain_max" and term.days is not None:
            until = days_after(facts.recorded_at, term.days)
            if until is not None:
                times.append(until)
    return min(times, default=None)


def days_after(start: datetime, days: int) -> datetime | None:
    """``start`` plus ``days`` days, or None past the last date a datetime can hold (a term of
    millions of days, which a partner may state: it never falls due, and must not stop the
    rounds that work out every other row's terms)."""
    try:
        return start + timedelta(days=days)
    except OverflowError:
        return None


def terms_of_decision(
    entry: Mapping[str, Any],
    *,
    stated_by: str,
    permits: Mapping[str, Iterable[tuple[str, int | None]]] | None = None,
) -> list[Term]:
    """The retention terms of a stored decision ``{"rules": [...], "obligations": [...]}``.

    A decision carries the union of its rules' obligations; ``permits`` (rule id to its
    ``(kind, days)`` obligations, when the policy that decided is known here) names the very
    rule that states each one, else every rule of the decision is named."""
    rules = [r for r in _dicts(entry.get("rules")) if isinstance(r.get("id"), str)]
    out = []
    for obligation in _dicts(entry.get("obligations")):
        kind = obligation.get("kind")
        if kind not in RETENTION_KINDS:
            continue
        days = _days(obligation) if kind == "retain_max" else None
        if kind == "retain_max" and days is None:
            continue
        stating = rules
        if permits is not None:
            key = (str(kind), days)
            stating = [r for r in rules if key in set(permits.get(r["id"], ()))] or rules
        clauses = dict.fromkeys(str(r["clause"]) for r in stating if r.get("clause"))
        out.append(
            Term(
                kind=str(kind),
                days=days,
                rule=",".join(r["id"] for r in stating) or None,
                clause="; ".join(clauses) or None,
                stated_by=stated_by,
            )
        )
    return out


def inconsistent_terms(
    *,
    embargo_until: datetime | None,
    expires_at: datetime | None,
    retention: Term | None,
    now: datetime,
) -> tuple[str, str] | None:
    """``(reason, message)`` when a share's terms cannot all be honoured, else ``None``:
    an embargo at or after the expiry (``embargo-after-expiry``: it could never be read), or a
    ``retain_max`` that ends at or before the embargo (``retention-before-embargo``: it would
    be deleted before it could be read)."""
    if embargo_until is not None and expires_at is not None and embargo_until >= expires_at:
        return (
            "embargo-after-expiry",
            f"the embargo ({embargo_until.isoformat()}) is not before the expiry "
            f"({expires_at.isoformat()}): the artifact could never be read",
        )
    if embargo_until is not None and retention is not None and retention.days is not None:
        until = days_after(now, retention.days)
        if until is not None and until <= embargo_until:
            return (
                "retention-before-embargo",
                f"rule {retention.rule} keeps it at most {retention.days} days (until "
                f"{until.isoformat()}), not past the embargo ({embargo_until.isoformat()}): "
                "it would be deleted before it could be read",
            )
    return None


def _dicts(value: object) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _days(obligation: Mapping[str, Any]) -> int | None:
    days = obligation.get("days")
    return days if isinstance(days, int) and not isinstance(days, bool) and days >= 1 else None
