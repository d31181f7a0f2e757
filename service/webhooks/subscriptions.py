"""Webhook subscriptions: created with a secret shown once, listed without it, deleted; audited.

The secret (``whsec_`` and 32 random bytes in base64, as Standard Webhooks writes them) signs
every delivery, so the node must be able to read it back: it cannot be stored as a hash like a
bearer token (``service.tokens``). It is stored age-encrypted to this node's own identity (the
post-quantum one when the node has it), the key that already guards everything partners send
here: a copy of the database alone does not reveal it, and it stays readable after a key
rotation (the retired identities still open it). It is answered once, by the call that creates
the subscription, and never listed, logged or audited.

A new subscription starts at the present (the log's size: the next event is its first), or at
``after`` (``0``: every event from the start of the log). This module reads and writes rows; it
sends nothing (``service.webhooks.dispatch``).
"""

from __future__ import annotations

import base64
import io
import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, col, func, select

from crypto import age
from crypto.errors import CryptoError
from service.artifacts.events import EVENT_KINDS, log_size
from service.audit.log import record
from service.errors import ConflictError, InvalidInputError, KeyStoreError, NotFoundError
from service.keystore import NodeKeys
from service.models import Partner, Webhook
from service.node import Node
from service.webhooks.destinations import check_url

__all__ = [
    "EVENT_NAMES",
    "MAX_CURSOR",
    "STATES",
    "Created",
    "create_webhook",
    "delete_webhook",
    "list_webhooks",
    "new_secret",
    "open_secret",
    "parse_events",
    "partner_urls",
    "seal_secret",
    "webhook_out",
]

EVENT_NAMES = tuple(sorted(set(EVENT_KINDS.values())))  # what GET /v1/events emits
STATES = ("active", "failing", "disabled")
SECRET_BYTES = 32  # random bytes of a signing secret
MAX_CURSOR = 2**62  # a log index no node reaches


@dataclass(frozen=True)
class Created:
    row: Webhook
    secret: str  # whsec_<base64>: shown once


def new_secret(rng: Callable[[int], bytes] = secrets.token_bytes) -> str:
    return "whsec_" + base64.b64encode(rng(SECRET_BYTES)).decode("ascii")


def seal_secret(keys: NodeKeys, secret: str) -> str:
    """``secret`` age-encrypted to this node's current identity, in base64."""
    recipient: age.Recipient = (
        keys.identity.recipient if keys.hybrid is None else keys.hybrid.recipient
    )
    out = io.BytesIO()
    age.encrypt(io.BytesIO(secret.encode("ascii")), out, [recipient])
    return base64.b64encode(out.getvalue()).decode("ascii")


def open_secret(keys: NodeKeys, sealed: str) -> str:
    """The secret :func:`seal_secret` sealed, opened with any identity of this node (current or
    retired). Raises :class:`service.errors.KeyStoreError` when none opens it."""
    out = io.BytesIO()
    try:
        age.decrypt(io.BytesIO(base64.b64decode(sealed, validate=True)), out, keys.all_identities)
        return out.getvalue().decode("ascii")
    except (CryptoError, ValueError):
        raise KeyStoreError(
            "a webhook's secret could not be opened with this node's keys"
        ) from None


def parse_events(names: Sequence[str] | None) -> list[str]:
    """The event kinds a subscription wants: all of them when ``None``; an empty list or an
    unknown name is refused (a filter that lets nothing through is a mistake)."""
    if names is None:
        return list(EVENT_NAMES)
    if not names:
        raise InvalidInputError(
            "name at least one event kind, or leave events out for all of them "
            f"({', '.join(EVENT_NAMES)})",
            reason="events",
        )
    unknown = sorted({n for n in names if n not in EVENT_NAMES})
    if unknown:
        raise InvalidInputError(
            f"unknown event kind {unknown[0][:40]!r}: choose among {', '.join(EVENT_NAMES)}",
            reason="events",
        )
    return sorted(set(names))


def partner_urls(session: Session) -> list[tuple[str, str]]:
    """Every pinned partner's ``(node id, base URL)``."""
    return [(str(n), str(u)) for n, u in session.exec(select(Partner.node_id, Partner.url))]


def create_webhook(
    node: Node,
    *,
    url: str,
    events: Sequence[str] | None,
    after: int | None,
    actor: str,
) -> Created:
    """Subscribe ``url`` to the ``events`` above ``after`` (default: the present); audited
    ``webhook.created``. The secret comes back once, in :class:`Created`."""
    settings = node.settings
    kinds = parse_events(events)
    if after is not None and not 0 <= after <= MAX_CURSOR:
        raise InvalidInputError("after must be an event id (a whole number >= 0)", reason="after")
    now = node.now()
    with node.db.session() as session:
        url = check_url(
            url, allowed_hosts=settings.webhook_allowed_hosts, partners=partner_urls(session)
        )
        held = session.exec(select(func.count()).select_from(Webhook)).one()
        if held >= settings.webhook_max_subscriptions:
            raise ConflictError(
                f"this node holds {held} webhooks, its limit "
                "(ENTENTE_WEBHOOK_MAX_SUBSCRIPTIONS): delete one first",
                reason="webhook-limit",
            )
        secret = new_secret()
        row = Webhook(
            id=f"whk_{secrets.token_hex(8)}",
            url=url,
            secret=seal_secret(node.keys, secret),
            events=json.dumps(kinds),
            created_at=now,
            created_by=actor[:300],
            cursor=log_size(session) if after is None else after,
            state="active",
        )
        session.add(row)
        record(
            session,
            kind="webhook.created",
            actor=actor,
            detail={"webhook_id": row.id, "url": url, "events": kinds, "cursor": row.cursor},
            now=now,
        )
    return Created(row, secret)


def list_webhooks(session: Session) -> list[Webhook]:
    return list(session.exec(select(Webhook).order_by(col(Webhook.created_at), col(Webhook.id))))


def delete_webhook(node: Node, *, webhook_id: str, actor: str) -> Webhook:
    """Delete a subscription (no more deliveries, even one under way is not recorded); audited
    ``webhook.deleted``."""
    now = node.now()
    with node.db.session() as session:
        row = session.get(Webhook, webhook_id)
        if row is None:
            raise NotFoundError(f"no webhook {webhook_id[:60]!r}")
        session.delete(row)
        record(
            session,
            kind="webhook.deleted",
            actor=actor,
            detail={"webhook_id": row.id, "url": row.url, "state": row.state},
            now=now,
        )
    return row


def _time(value: Any) -> str | None:
    return None if value is None else value.isoformat()


def webhook_out(row: Webhook) -> dict[str, Any]:
    """A subscription as the API shows it: never its secret."""
    return {
        "id": row.id,
        "url": row.url,
        "events": json.loads(row.events),
        "state": row.state,
        "cursor": row.cursor,
        "failures": row.failures,
        "next_attempt_at": _time(row.next_attempt_at),
        "last_error": row.last_error,
        "last_delivered_at": _time(row.last_delivered_at),
        "created_at": _time(row.created_at),
        "created_by": row.created_by,
    }
