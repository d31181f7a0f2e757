"""The webhook dispatcher: one of the node's background workers (``service.app``).

Each round (every ``webhook_poll_seconds``) it claims the subscriptions that have something to
do (an event above their cursor, or a retry that is due) and are not being delivered already,
at most as many as it has free threads (``webhook_concurrency``), and delivers each on a thread
of its own: a slow or silent receiver holds one thread for at most ``webhook_timeout_seconds``
per attempt, and every other subscription goes on.

Delivering a subscription reads the events above its cursor from the same source as
``GET /v1/events`` (:func:`service.artifacts.events.events_after`), keeps the kinds it wants,
and POSTs them one at a time, in order, signed (:mod:`service.webhooks.signing`), with no
redirects followed and no proxy from the environment. A 2xx answer advances the cursor past the
event; anything else (another status, a timeout, a refused connection) stops the subscription
there: it is ``failing`` and retried after ``webhook_retry_base_seconds``, doubling up to
``webhook_retry_max_seconds``, and after ``webhook_max_attempts`` failures in a row it is
``disabled`` (audited ``webhook.disabled``) and waits for an operator. So a receiver sees every
event once, in order, unless it answered 2xx and the node stopped before it recorded that: then
the event comes again with the same ``webhook-id``, for the receiver to drop (at least once).

A claim is a lease on the row (``lease_owner``, ``lease_until``, renewed with every event), so
replicas sharing the database never deliver one subscription twice at once, and a dispatcher
that died gives it up when the lease lapses.
"""

from __future__ import annotations

import json
import logging
import secrets
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta

import httpx
import sqlalchemy as sa
from sqlmodel import col, select

from service.artifacts.events import events_after, log_size
from service.audit.log import record
from service.errors import EntenteError
from service.models import Webhook
from service.node import Node
from service.webhooks.destinations import check_url
from service.webhooks.signing import event_body, message_id, signed_headers
from service.webhooks.subscriptions import open_secret, partner_urls

__all__ = ["ACTOR", "WebhookDispatcher"]

log = logging.getLogger("entente.webhooks")

ACTOR = "node:webhooks"
LEASE_MARGIN_SECONDS = 10.0  # seconds added to two delivery timeouts: a claim's lease
MAX_BATCHES = 10  # batches of events one claim delivers before it lets others have the thread


class WebhookDispatcher:
    """Delivers every subscription's events; :meth:`round` starts the due ones on its threads.

    ``transport`` replaces the network (an ``httpx.MockTransport`` in tests)."""

    def __init__(self, node: Node, *, transport: httpx.BaseTransport | None = None) -> None:
        self.node = node
        settings = node.settings
        self.owner = secrets.token_hex(8)
        self._threads = settings.webhook_concurrency
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="entente-webhook")
        self._running: dict[str, Future[None]] = {}
        self._closing = False
        self._client = httpx.Client(
            timeout=settings.webhook_timeout_seconds,
            follow_redirects=False,
            trust_env=False,  # never through a proxy named in the environment
            limits=httpx.Limits(max_connections=self._threads, max_keepalive_connections=0),
            transport=transport,
        )

    def close(self) -> None:
        self._closing = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    # -- claiming ---------------------------------------------------------------------------

    def _lease(self) -> timedelta:
        return timedelta(
            seconds=2 * self.node.settings.webhook_timeout_seconds + LEASE_MARGIN_SECONDS
        )

    def round(self) -> list[str]:
        """Start delivering every due subscription there is a free thread for; their ids."""
        for webhook_id, future in list(self._running.items()):
            if future.done():
                del self._running[webhook_id]
                error = None if future.cancelled() else future.exception()
                if error is not None:
                    log.error("webhook %s: delivery failed", webhook_id, exc_info=error)
        free = self._threads - len(self._running)
        if free <= 0 or self._closing:
            return []
        started = self.claim(limit=free, exclude=set(self._running))
        for webhook_id in started:
            self._running[webhook_id] = self._pool.submit(self.deliver, webhook_id)
        return started

    def claim(self, *, limit: int, exclude: set[str] | None = None) -> list[str]:
        """Lease up to ``limit`` due subscriptions to this dispatcher; their ids."""
        now = self.node.now()
        free = sa.or_(col(Webhook.lease_until).is_(None), col(Webhook.lease_until) < now)
        claimed: list[str] = []
        with self.node.db.session() as session:
            head = log_size(session)
            due = session.exec(
                select(Webhook.id)
                .where(
                    col(Webhook.state).in_(("active", "failing")),
                    sa.or_(
                        col(Webhook.next_attempt_at).is_(None),
                        col(Webhook.next_attempt_at) <= now,
                    ),
                    sa.or_(col(Webhook.cursor) < head, col(Webhook.state) == "failing"),
                    free,
                )
                .order_by(col(Webhook.next_attempt_at), col(Webhook.id))
                # Rows another replica's claim holds are skipped, never waited for: two claims
                # that read the due rows in different orders cannot each hold one the other wants.
                .with_for_update(skip_locked=True)
            ).all()
            for webhook_id in due:
                if len(claimed) >= limit:
                    break
                if exclude and webhook_id in exclude:
                    continue
                taken = session.execute(
                    sa.update(Webhook)
                    .where(col(Webhook.id) == webhook_id, free)
                    .values(lease_owner=self.owner, lease_until=now + self._lease())
                )
                if taken.rowcount == 1:  # type: ignore[attr-defined]
                    claimed.append(webhook_id)
        return claimed

    # -- delivering -------------------------------------------------------------------------

    def deliver(self, webhook_id: str) -> None:
        """Deliver one claimed subscription's events, in order, until none is left, one fails,
        or :data:`MAX_BATCHES` batches went out; then give the lease back."""
        settings = self.node.settings
        with self.node.db.session() as session:
            row = session.get(Webhook, webhook_id)
            if row is None or row.lease_owner != self.owner or row.state == "disabled":
                return
            url, sealed, cursor = row.url, row.secret, row.cursor
            kinds = set(json.loads(row.events))
            partners = partner_urls(session)
        try:
            # Again at each claim: a partner pinned at this address since stops it.
            check_url(url, allowed_hosts=settings.webhook_allowed_hosts, partners=partners)
            secret = open_secret(self.node.keys, sealed)
        except EntenteError as exc:
            # A partner pinned at its address since is the partner's act, not the receiver's:
            # retried like a failed delivery, not disabled at once.
            self._failed(webhook_id, exc.message, final=exc.extra.get("reason") != "partner")
            return
        for _ in range(MAX_BATCHES):
            with self.node.db.session() as session:
                head = log_size(session)  # read first: every event below it is in the batch
                batch = events_after(session, cursor, limit=settings.webhook_batch)
                bodies = [
                    (ev.cursor, event_body(ev, node_id=self.node.node_id))
                    for ev in batch.events
                    if ev.name in kinds
                ]
            for event_cursor, body in bodies:
                error = self._post(url, secret, event_cursor, body)
                if error is not None:
                    self._failed(webhook_id, error)
                    return
                self.node.metrics.webhook_deliveries.labels(webhook_id, "ok").inc()
                if not self._advance(webhook_id, event_cursor, delivered=True):
                    return  # deleted, or the lease was lost
            after = batch.cursor if batch.cursor > cursor else max(cursor, head)
            if after != cursor and not self._advance(webhook_id, after, delivered=False):
                return
            if batch.cursor <= cursor:
                break  # nothing more above the cursor
            cursor = after
        self._release(webhook_id)

    def _post(self, url: str, secret: str, cursor: int, body: bytes) -> str | None:
        """One attempt; None when the receiver answered 2xx, else what went wrong."""
        headers = signed_headers(secret, msg_id=message_id(cursor), body=body, now=self.node.now())
        try:
            with self._client.stream("POST", url, content=body, headers=headers) as response:
                status = response.status_code  # the answer's body is never read
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"[:300] if str(exc) else type(exc).__name__
        if 200 <= status < 300:
            return None
        if 300 <= status < 400:
            return f"HTTP {status} (redirects are not followed)"
        return f"HTTP {status}"

    # -- recording --------------------------------------------------------------------------

    def _advance(self, webhook_id: str, cursor: int, *, delivered: bool) -> bool:
        """Move the cursor to ``cursor`` and renew the lease; False when the row is gone or no
        longer leased to this dispatcher."""
        now = self.node.now()
        values: dict[str, object] = {"cursor": cursor, "lease_until": now + self._lease()}
        if delivered:
            values.update(
                state="active", failures=0, next_attempt_at=None, last_error=None,
                last_delivered_at=now,
            )  # fmt: skip
        with self.node.db.session() as session:
            moved = session.execute(
                sa.update(Webhook)
                .where(
                    col(Webhook.id) == webhook_id,
                    col(Webhook.lease_owner) == self.owner,
                    col(Webhook.cursor) <= cursor,
                )
                .values(**values)
            )
            return bool(moved.rowcount == 1)  # type: ignore[attr-defined]

    def _release(self, webhook_id: str) -> None:
        with self.node.db.session() as session:
            session.execute(
                sa.update(Webhook)
                .where(col(Webhook.id) == webhook_id, col(Webhook.lease_owner) == self.owner)
                .values(lease_owner=None, lease_until=None)
            )

    def _delay(self, failures: int) -> timedelta:
        settings = self.node.settings
        seconds = settings.webhook_retry_base_seconds * 2 ** min(failures - 1, 30)
        return timedelta(seconds=min(seconds, settings.webhook_retry_max_seconds))

    def _failed(self, webhook_id: str, error: str, *, final: bool = False) -> None:
        """Record a failed attempt: retry later, or, after ``webhook_max_attempts`` in a row
        (or at once when ``final``), disable the subscription (audited)."""
        if self._closing:
            self._release(webhook_id)  # the node is stopping: not the receiver's failure
            return
        self.node.metrics.webhook_deliveries.labels(webhook_id, "failed").inc()
        settings = self.node.settings
        now = self.node.now()
        with self.node.db.session() as session:
            row = session.get(Webhook, webhook_id)
            if row is None or row.lease_owner != self.owner:
                return
            row.failures += 1
            row.last_error = error[:500]
            row.lease_owner = row.lease_until = None
            if final or row.failures >= settings.webhook_max_attempts:
                row.state = "disabled"
                row.next_attempt_at = None
                record(
                    session,
                    kind="webhook.disabled",
                    actor=ACTOR,
                    detail={
                        "webhook_id": row.id,
                        "url": row.url,
                        "attempts": row.failures,
                        "cursor": row.cursor,
                        "error": row.last_error,
                    },
                    now=now,
                )
                log.warning(
                    "webhook %s disabled after %d failures: %s", row.id, row.failures, error
                )
            else:
                row.state = "failing"
                row.next_attempt_at = now + self._delay(row.failures)
                log.info("webhook %s: delivery failed (%s); retrying", row.id, error)
            session.add(row)
