"""Settling deliveries: the outcomes of a delivery attempt (:class:`Done`, :class:`Retry`,
:class:`Finish`) written in one transaction by :func:`settle_outcomes`, the guarded transitions
of outbox rows, the audit events of a delivery, and the receipts a partner sends after pulling
its feed (``POST receipts``).

A row moves only while it is still pending under the lease of the worker that claimed it (or
under no live lease, for a receipt that arrives later), so a delivery is settled once whoever
settles it. This module sends nothing (``service.federation.outbox``).
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlmodel import Session

from crypto import strict_json
from crypto.dsse import Envelope
from crypto.errors import CryptoError
from crypto.keyset import KeySet
from crypto.receipt import verify_receipt
from service.audit.log import AUDIT_TABLE, audit_row
from service.federation.schedule import backoff
from service.models import Artifact, Outbox
from service.node import Node
from service.partners import PartnerKeys, partner_keys

__all__ = ["Done", "Finish", "Outcome", "Retry", "record_receipts", "settle_outcomes"]


_NEVER = datetime.max.replace(tzinfo=UTC)  # no readable time: only the current keys hold


def receipt_keys(keys: PartnerKeys, envelope: Envelope) -> list[KeySet]:
    """The partner's key sets that may verify this receipt: a retired set only one it issued
    (``received_at``) before its retirement. The time is read from the payload before the
    signature is checked; the signature then covers those same bytes. A payload without a
    readable time gets the current keys only."""
    try:
        data = strict_json.loads(envelope.payload)
        when = datetime.fromisoformat(str(data["received_at"]).replace("Z", "+00:00"))
        if when.tzinfo is None:
            raise ValueError("no time zone")
    except (ValueError, TypeError, KeyError, RecursionError):
        when = _NEVER
    return keys.sets_valid_at(when)


def _transition(
    conn: Connection | Session,
    ident: int,
    values: dict[str, Any],
    *,
    owner: str | None,
    now: datetime | None = None,
) -> bool:
    """Update a pending row if it is still pending under ``owner``'s lease (or, with ``owner``
    None, under no live lease at ``now``). True when it did."""
    params = {"b_id": ident, "b_owner": owner, "b_now": now}
    params.update({f"v_{k}": v for k, v in values.items()})
    result = conn.execute(_transition_statement(tuple(sorted(values)), owner is not None), params)
    return int(getattr(result, "rowcount", 0) or 0) == 1


_OUTBOX = Outbox.__table__  # type: ignore[attr-defined]
_ARTIFACTS = Artifact.__table__  # type: ignore[attr-defined]

# What settling a delivery reads of its row and its artifact (an artifact is (id, origin)).
_SETTLEMENT_COLUMNS = sa.select(
    _OUTBOX.c.id,
    _OUTBOX.c.partner,
    _OUTBOX.c.kind,
    _OUTBOX.c.artifact_id,
    _OUTBOX.c.attempts,
    _OUTBOX.c.created_at,
    _ARTIFACTS.c.sha256,
)
_OF_ARTIFACT = sa.and_(
    _ARTIFACTS.c.id == _OUTBOX.c.artifact_id,
    _ARTIFACTS.c.origin == _OUTBOX.c.artifact_origin,
)

# The rows a settlement needs, with their artifact's digest (built once: see _settle).
_SETTLING = _SETTLEMENT_COLUMNS.select_from(_OUTBOX.outerjoin(_ARTIFACTS, _OF_ARTIFACT)).where(
    _OUTBOX.c.id.in_(sa.bindparam("ids", expanding=True))
)


@functools.cache
def _transition_statement(columns: tuple[str, ...], owned: bool) -> sa.Update:
    """The conditional UPDATE of :func:`_transition` setting ``columns``, built once per shape."""
    if owned:
        lease = _OUTBOX.c.lease_owner == sa.bindparam("b_owner")
    else:
        lease = sa.or_(
            _OUTBOX.c.lease_until.is_(None), _OUTBOX.c.lease_until < sa.bindparam("b_now")
        )
    return (
        sa.update(_OUTBOX)
        .where(_OUTBOX.c.id == sa.bindparam("b_id"), _OUTBOX.c.state == "pending", lease)
        .values({c: sa.bindparam(f"v_{c}") for c in columns})
    )


@functools.cache
def _insert_audit() -> sa.Insert:
    return sa.insert(AUDIT_TABLE)


def _delivered_events(
    node: Node,
    row: Any,
    receipt: str,
    digest: str | None,
    now: datetime,
    expect: str,
    *,
    attempts: int,
    via: str = "push",
) -> list[dict[str, Any]]:
    """The audit events of a delivery, a notice or a descriptor push that a partner signed
    for (``row``: an outbox row's partner, kind and artifact id)."""
    if row.kind == "deliver":
        return [
            audit_row(
                kind="delivery.sent", actor=f"node:{node.node_id}",
                partner=row.partner, artifact_id=row.artifact_id, digest=digest,
                detail={"attempts": attempts, "via": via}, now=now,
            ),
            audit_row(
                kind="receipt.recorded", actor=f"partner:{row.partner}",
                partner=row.partner, artifact_id=row.artifact_id, digest=digest,
                detail={"receipt": json.loads(receipt)["signatures"][0]["keyid"], "via": via},
                now=now,
            ),
        ]  # fmt: skip
    if row.kind == "descriptor":
        return [
            audit_row(
                kind="delivery.sent", actor=f"node:{node.node_id}",
                partner=row.partner, detail={"kind": "descriptor", "fingerprint": row.artifact_id},
                now=now,
            )
        ]  # fmt: skip
    revocation = expect == "revocation"
    kind = {"revocation": "revocation.acknowledged", "deletion": "deletion_notice.sent"}
    return [
        audit_row(
            kind=kind.get(expect, "access_notice.sent"),
            actor=f"partner:{row.partner}" if revocation else f"node:{node.node_id}",
            partner=row.partner, artifact_id=row.artifact_id, digest=digest,
            detail={"notice_id": row.id}, now=now,
        )
    ]  # fmt: skip


def record_receipts(node: Node, *, partner: str, receipts: Any) -> int:
    """Store delivery receipts a partner sends after pulling its feed (``POST receipts``).

    Each must be signed by the partner, acknowledge a delivery from this node to that partner,
    and match a pending, unleased outbox row for the same artifact and digest; anything else is
    ignored. Returns how many rows it settled.
    """
    if not isinstance(receipts, list):
        return 0
    now = node.now()
    with node.db.session() as session:
        trusted = partner_keys(session, partner)
    verified: dict[str, tuple[str, str]] = {}
    for raw in receipts[:1000]:
        try:
            envelope = Envelope.from_json(raw)
            payload = strict_json.loads(envelope.payload)
            artifact_id = str(payload.get("artifact_id", ""))[:64]
            sha256 = str(payload.get("sha256", ""))[:64]
            verify_receipt(
                envelope, keysets=receipt_keys(trusted, envelope), expect_kind="delivery",
                artifact_id=artifact_id,
                sha256=sha256, receiver=partner, sender=node.node_id,
            )  # fmt: skip
        except (CryptoError, ValueError, AttributeError):
            continue
        verified[artifact_id] = (sha256, envelope.to_bytes().decode())
    if not verified:
        return 0
    settled = 0
    events: list[dict[str, Any]] = []
    with node.db.engine.begin() as conn:
        rows = conn.execute(
            _ACKNOWLEDGEABLE, {"partner": partner, "ids": list(verified), "now": now}
        ).all()
        for row in rows:
            sha256, receipt = verified[row.artifact_id]
            if sha256 != row.sha256:
                continue
            values = {
                "state": "delivered", "delivered_at": now, "receipt": receipt, "last_error": None,
            }  # fmt: skip
            if not _transition(conn, row.id, values, owner=None, now=now):
                continue
            events += _delivered_events(
                node, row, receipt, sha256, now, "delivery", attempts=row.attempts, via="pull"
            )
            node.metrics.observe_delivery(partner, row.created_at, now)
            settled += 1
        if events:
            conn.execute(_insert_audit(), events)
    if settled:
        node.metrics.deliveries.labels(partner, "delivered").inc(settled)
    return settled


# Pending, unleased deliveries to a partner for the given artifacts (built once), in outbox id
# order: each is then settled in the order every other settling path takes its rows, so two
# replicas recording the same receipts at once do not each hold a row the other waits for.
_ACKNOWLEDGEABLE = (
    _SETTLEMENT_COLUMNS.select_from(_OUTBOX.join(_ARTIFACTS, _OF_ARTIFACT))
    .where(
        _OUTBOX.c.partner == sa.bindparam("partner"),
        _OUTBOX.c.kind == "deliver",
        _OUTBOX.c.state == "pending",
        _OUTBOX.c.artifact_id.in_(sa.bindparam("ids", expanding=True)),
        sa.or_(_OUTBOX.c.lease_until.is_(None), _OUTBOX.c.lease_until < sa.bindparam("now")),
    )
    .order_by(_OUTBOX.c.id)
)


# --- the outcomes of a delivery attempt -------------------------------------------------------


@dataclass(frozen=True)
class Done:
    receipt: str
    kind: str  # deliver | notice | descriptor
    expect: str  # delivery | revocation | access | descriptor


@dataclass(frozen=True)
class Retry:
    error: str
    retry_after: float | None = None  # the partner's Retry-After, in seconds


@dataclass(frozen=True)
class Finish:
    state: str  # failed | cancelled
    error: str
    audit: bool = False


Outcome = Done | Retry | Finish


def _failed_event(
    node: Node, row: Any, error: str, *, retrying: bool, now: datetime
) -> dict[str, Any]:
    """The ``delivery.failed`` event of an outbox row (retried or given up)."""
    return audit_row(
        kind="delivery.failed", actor=f"node:{node.node_id}", partner=row.partner,
        artifact_id=row.artifact_id,
        detail={"error": error[:500], "retrying": retrying, "kind": row.kind}, now=now,
    )  # fmt: skip


def settle_outcomes(node: Node, owner: str, outcomes: Sequence[tuple[int, Outcome]]) -> None:
    """Write the outcomes of one request (or several rows) in one transaction.

    Each row moves on only if it is still pending under ``owner``'s lease (a conditional
    update, so a pull's acknowledgement that settled it meanwhile wins, and nothing is
    recorded twice). Core statements built once: a batch settles 64 rows, and building an
    ORM UPDATE per row cost more than the delivery's own verification.
    """
    now = node.now()
    pause = partial(backoff, base=node.settings.retry_base_seconds,
                    cap=node.settings.retry_max_seconds)  # fmt: skip
    counts: dict[tuple[str, str], int] = defaultdict(int)
    events: list[dict[str, Any]] = []
    with node.db.engine.begin() as conn:
        rows = {r.id: r for r in conn.execute(_SETTLING, {"ids": [i for i, _ in outcomes]}).all()}
        for ident, outcome in outcomes:
            row = rows.get(ident)
            if row is None:
                continue
            attempts = row.attempts + 1
            values: dict[str, Any] = {
                "attempts": attempts, "lease_owner": None, "lease_until": None,
            }  # fmt: skip
            if isinstance(outcome, Done):
                values.update(
                    state="delivered", delivered_at=now, receipt=outcome.receipt,
                    last_error=None,
                )  # fmt: skip
                label = "delivered"
            elif isinstance(outcome, Retry):
                values.update(
                    next_attempt_at=now + pause(attempts, retry_after=outcome.retry_after),
                    last_error=outcome.error[:1000],
                )
                label = "retry"
            else:
                values.update(state=outcome.state, last_error=outcome.error[:1000])
                label = outcome.state
            if not _transition(conn, ident, values, owner=owner):
                continue  # settled elsewhere meanwhile (a pull's acknowledgement)
            if isinstance(outcome, Done):
                if row.kind == "deliver":
                    node.metrics.observe_delivery(row.partner, row.created_at, now)
                events += _delivered_events(
                    node, row, outcome.receipt, row.sha256, now, outcome.expect,
                    attempts=attempts,
                )  # fmt: skip
            elif isinstance(outcome, Retry):
                if attempts == 1:
                    events.append(_failed_event(node, row, outcome.error, retrying=True, now=now))
            elif outcome.audit or outcome.state == "failed":
                events.append(_failed_event(node, row, outcome.error, retrying=False, now=now))
            counts[(row.partner, label)] += 1
        if events:
            conn.execute(_insert_audit(), events)
    for (partner, label), n in counts.items():
        node.metrics.deliveries.labels(partner, label).inc(n)
