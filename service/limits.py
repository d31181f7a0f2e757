"""Abuse limits: request rates and requests in flight per bearer token and per partner, a daily
delivery volume per partner, a bound on the replay (nonce) cache, and timeouts on request heads
and bodies.

- **Rates** (``rate_limit_per_minute``): a token bucket per key, ``token:<id>`` after a bearer
  token authenticates and ``partner:<node id>`` after a federation signature verifies. A bucket
  holds a minute's worth of requests (the burst) and refills at the configured rate. Buckets
  live in memory, per process: with N processes in all (replicas behind a load balancer, and
  the processes of ``entente serve --workers``) a caller may reach N times the rate, each
  process refusing on its own. That is the price of a limiter that costs no database round trip
  per request; a hard cluster-wide cap belongs in the load balancer. The
  number of buckets is bounded (``MAX_BUCKETS``): the least recently used one is forgotten,
  which can only ever err towards letting a caller through.
- **Volume** (``volume_limit_bytes_per_day``, or ``volume_limits_by_partner[partner]`` for a
  partner whose MOU sets a cap; MOU policy files have no volume term): the ciphertext bytes of
  the artifacts received from the partner since 00:00 UTC, counted in the database, so every
  replica sees the same total and a restart forgets nothing. A delivery whose declared length
  would pass the cap is refused before its body is read. A delivery without a length is
  refused only once the cap is reached (it may pass it by that one delivery, itself bounded by
  ``max_artifact_bytes``). Deliveries run concurrently may together pass the cap by as much.
- **Replay cache** (``nonce_cache_size``, per partner): lives in
  ``service/federation/replay.py``.
- **Request bodies** (``request_body_idle_seconds``, ``request_body_min_rate`` over windows of
  ``request_body_rate_window_seconds``): :class:`RequestBounds` answers 408 when a body sends
  nothing for that long, or trickles: less than the minimum rate over a window of time spent
  waiting for it. (A body is read on the event loop and holds no thread while it waits:
  ``service.api.bodies``.)
- **Request heads** (``max_request_header_bytes``, ``request_head_timeout_seconds``):
  :class:`RequestBounds` answers 431 to a larger head; uvicorn's h11 parser refuses one that is
  still incomplete past that size, and :class:`ProblemH11Protocol` makes its answer a problem
  document too (431, or 400 for a head that is not HTTP), and answers 408 to a head that is
  still incomplete after the timeout (uvicorn has none). All before routing: logged, not
  audited.
- **Requests in flight** (``max_requests_in_flight``): :class:`InFlight` lets one token, and
  one partner, run that many requests at once; more are refused with 503 and ``Retry-After``
  (:class:`service.errors.BusyError`), so that one caller's slow or many requests never take
  the capacity of another. Per process, like the rates.

Refusals are :class:`service.errors.RateLimitedError` (429, ``Retry-After``),
:class:`service.errors.BusyError` (503, ``Retry-After``) or
:class:`service.errors.RequestTimeoutError` (408) problem documents. A rate or in-flight refusal
is audited (as ``request.refused``) once per burst: further refusals of the same key
before it is allowed a request again are counted in the metrics only, so that a flood of
requests cannot become a flood of audit writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar

import anyio
import h11
from sqlmodel import Session, col, func, select
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.errors import BusyError, RateLimitedError, RequestTimeoutError
from service.models import Artifact
from service.node import Node
from service.settings import Settings

__all__ = [
    "MAX_BUCKETS",
    "InFlight",
    "Limits",
    "ProblemH11Protocol",
    "RateLimiter",
    "RequestBounds",
    "check_volume",
    "volume_cap",
    "volume_used",
]

log = logging.getLogger("entente.limits")

MAX_BUCKETS = 10_000  # keys remembered by one rate limiter


@dataclass
class _Bucket:
    tokens: float
    updated: float  # monotonic seconds
    refused: int = 0  # refusals since the last allowed request


class RateLimiter:
    """Token buckets keyed by caller. Thread-safe; ``clock`` is monotonic seconds."""

    def __init__(
        self,
        per_minute: int,
        *,
        max_buckets: int = MAX_BUCKETS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_minute < 1:
            raise ValueError("a rate limit allows at least one request per minute")
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0  # tokens per second
        self._max = max_buckets
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> None:
        """Spend one request for ``key``, or raise :class:`RateLimitedError`."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.pop(key, None)
            if bucket is None:
                bucket = _Bucket(self.capacity, now)
            else:
                elapsed = max(0.0, now - bucket.updated)
                bucket.tokens = min(self.capacity, bucket.tokens + elapsed * self.rate)
                bucket.updated = now
            self._buckets[key] = bucket  # most recently used last
            while len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                bucket.refused = 0
                return
            bucket.refused += 1
            first = bucket.refused == 1
            wait = math.ceil((1.0 - bucket.tokens) / self.rate)
        raise RateLimitedError(
            f"too many requests for {key}: the limit is {int(self.capacity)} per minute "
            f"(ENTENTE_RATE_LIMIT_PER_MINUTE); retry after {wait} s",
            reason="rate",
            retry_after=max(1, wait),
            audited=not first,  # one audit event per burst; the metrics count every refusal
        )


class InFlight:
    """Requests running at once per caller, at most ``per_key`` each. Thread-safe.

    :meth:`enter` raises :class:`BusyError` (503, ``Retry-After``) when the caller already has
    ``per_key`` requests running; ``audited`` is False on the first refusal of a burst only
    (until the caller is let in again), like the rate limiter's.
    """

    def __init__(self, per_key: int, *, retry_after: int = 1) -> None:
        if per_key < 1:
            raise ValueError("a caller may run at least one request at a time")
        self.per_key = per_key
        self.retry_after = retry_after
        self._running: dict[str, int] = {}
        self._refused: dict[str, int] = {}
        self._lock = threading.Lock()

    def running(self, key: str) -> int:
        return self._running.get(key, 0)

    def enter(self, key: str) -> None:
        with self._lock:
            running = self._running.get(key, 0)
            if running < self.per_key:
                self._running[key] = running + 1
                self._refused.pop(key, None)
                return
            refused = self._refused[key] = self._refused.get(key, 0) + 1
            if len(self._refused) > MAX_BUCKETS:  # forget the oldest bursts
                self._refused.pop(next(iter(self._refused)))
        raise BusyError(
            f"{key} already has {self.per_key} requests running "
            f"(ENTENTE_MAX_REQUESTS_IN_FLIGHT); retry after {self.retry_after} s",
            reason="in-flight",
            retry_after=self.retry_after,
            audited=refused > 1,
        )

    def leave(self, key: str) -> None:
        with self._lock:
            running = self._running.get(key, 0) - 1
            if running > 0:
                self._running[key] = running
            else:
                self._running.pop(key, None)


class Limits:
    """The rate and concurrency limiters of one app (built once in the app factory)."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic):
        self.tokens = RateLimiter(settings.rate_limit_per_minute, clock=clock)
        self.partners = RateLimiter(settings.rate_limit_per_minute, clock=clock)
        self.in_flight = InFlight(settings.max_requests_in_flight)

    @staticmethod
    def of(app_state: Any) -> Limits:
        limits = getattr(app_state, "limits", None)
        if not isinstance(limits, Limits):  # pragma: no cover - wiring error
            raise TypeError("app.state.limits is not set: build the app with create_app")
        return limits

    def token(self, node: Node, token_id: str) -> None:
        _counted(node, self.tokens, f"token:{token_id}")

    def partner(self, node: Node, partner: str) -> None:
        _counted(node, self.partners, f"partner:{partner}")

    @contextlib.asynccontextmanager
    async def running(
        self, node: Node, key: str, *, actor: str, method: str, path: str
    ) -> AsyncIterator[None]:
        """Hold one of ``key``'s in-flight slots while the request runs (``token:<id>`` or
        ``partner:<node id>``); the first refusal of a burst is audited here, since the
        problem handler audits no 5xx answer."""
        try:
            self.in_flight.enter(key)
        except BusyError as exc:
            node.metrics.refusals.labels(exc.kind).inc()
            if not exc.audited:
                await anyio.to_thread.run_sync(_audit_busy, node, exc, actor, method, path)
                exc.audited = True
            raise
        try:
            yield
        finally:
            self.in_flight.leave(key)


def _audit_busy(node: Node, exc: BusyError, actor: str, method: str, path: str) -> None:
    from service.audit.log import record

    partner = actor.removeprefix("partner:") if actor.startswith("partner:") else None
    with node.db.session() as session:
        record(
            session,
            kind="request.refused",
            actor=actor,
            partner=partner,
            decision="deny",
            rule=exc.kind,
            detail={"method": method, "path": path[:300], "status": exc.status,
                    "detail": exc.message[:300]},
            now=node.now(),
        )  # fmt: skip


def _counted(node: Node, limiter: RateLimiter, key: str) -> None:
    try:
        limiter.take(key)
    except RateLimitedError as exc:
        if exc.audited:  # not audited by the problem handler, so counted here
            node.metrics.refusals.labels(exc.kind).inc()
        raise


# --- volume --------------------------------------------------------------------------------------


def _day_start(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def volume_cap(settings: Settings, partner: str) -> int:
    return settings.volume_limits_by_partner.get(partner, settings.volume_limit_bytes_per_day)


def volume_used(session: Session, partner: str, *, now: datetime) -> int:
    """Ciphertext bytes received from ``partner`` since 00:00 UTC (``now``'s day)."""
    total = session.exec(
        select(func.coalesce(func.sum(Artifact.ciphertext_size), 0)).where(
            Artifact.direction == "received",
            Artifact.sender == partner,
            col(Artifact.recorded_at) >= _day_start(now),
        )
    ).one()
    return int(total)


def check_volume(node: Node, partner: str, incoming: int | None) -> int:
    """Refuse a delivery of ``incoming`` bytes (None: unknown) that would pass the partner's
    daily cap; return the bytes left today."""
    now = node.now()
    cap = volume_cap(node.settings, partner)
    with node.db.session() as session:
        used = volume_used(session, partner, now=now)
    left = cap - used
    if left <= 0 or (incoming is not None and incoming > left):
        tomorrow = _day_start(now) + timedelta(days=1)
        raise RateLimitedError(
            f"{partner} has delivered {used} of its {cap} bytes for today (UTC); this delivery "
            f"of {incoming if incoming is not None else 'unknown'} bytes would pass the cap",
            reason="volume",
            limit=cap,
            used=used,
            retry_after=max(1, math.ceil((tomorrow - now).total_seconds())),
        )
    return left


# --- request bodies ------------------------------------------------------------------------------

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]
ASGIApp = Callable[[Scope, Receive, Send], Any]


def _head_size(scope: Scope) -> int:
    """Bytes of the request head as sent (request line and header fields, CRLFs included)."""
    line = len(scope["method"]) + len(scope.get("raw_path") or b"") + 12
    query = scope.get("query_string") or b""
    return (
        line
        + (len(query) + 1 if query else 0)
        + sum(len(k) + len(v) + 4 for k, v in scope.get("headers", ()))
    )


def _problem_bytes(status: int, kind: str, title: str, detail: str) -> bytes:
    doc = {"type": f"urn:entente:problem:{kind}", "title": title, "status": status}
    return json.dumps({**doc, "detail": detail}).encode()


class RequestBounds:
    """ASGI middleware bounding what a request may cost before and while the app reads it.

    - A head (request line and headers) over ``max_head_bytes`` is answered 431 at once. uvicorn's
      h11 limit alone does not hold: it only applies to a head still incomplete after a read, so
      a large head arriving in one read would pass it.
    - A body that sends nothing for ``idle_seconds``, or less than ``min_rate`` bytes per second
      over a window of ``window_seconds`` spent waiting for it, ends in a 408 problem document,
      raised where the app reads the body, so it is handled and audited like any refusal, and a
      partial upload is cleaned up by the code that was reading it. Only time spent waiting for
      the client counts: a body the app is slow to consume is not the client's fault.
    - A client that goes away mid-request is an ordinary end, logged at info (no traceback).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_head_bytes: int,
        idle_seconds: float,
        min_rate: int = 0,
        window_seconds: float = 10.0,
    ) -> None:
        self.app = app
        self.max_head_bytes = max_head_bytes
        self.idle_seconds = idle_seconds
        self.min_rate = min_rate
        self.window_seconds = window_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _head_size(scope) > self.max_head_bytes:
            detail = (
                f"the request head is larger than {self.max_head_bytes} bytes "
                "(ENTENTE_MAX_REQUEST_HEADER_BYTES)"
            )
            body = _problem_bytes(
                431, "headers-too-large", "Request header fields too large", detail
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": 431,
                    "headers": [
                        (b"content-type", b"application/problem+json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        try:
            await self.app(scope, _BoundedBody(self, receive), send)
        except ClientDisconnect:  # an ordinary end: whoever read the body cleaned up
            log.info("the client disconnected during %s %s", scope["method"], scope.get("path", ""))


class _BoundedBody:
    """One request's ``receive``, timing the waits for its body (see :class:`RequestBounds`)."""

    def __init__(self, bounds: RequestBounds, receive: Receive) -> None:
        self.bounds = bounds
        self.receive = receive
        self.done = False
        self.need = bounds.min_rate * bounds.window_seconds  # bytes per window
        self.waited = 0.0  # seconds spent waiting in this window
        self.got = 0  # bytes received in this window

    async def __call__(self) -> Message:
        if self.done:  # the body is over: waiting for a disconnect may take forever
            message: Message = await self.receive()
            return message
        bounds = self.bounds
        budget = bounds.idle_seconds
        if self.need:
            budget = min(budget, max(0.0, bounds.window_seconds - self.waited))
        started = time.monotonic()
        with anyio.move_on_after(budget) as waited:
            message = await self.receive()
        if waited.cancelled_caught:
            if budget >= bounds.idle_seconds:
                raise RequestTimeoutError(
                    f"the request body sent nothing for {bounds.idle_seconds:g} s "
                    "(ENTENTE_REQUEST_BODY_IDLE_SECONDS)"
                )
            raise RequestTimeoutError(
                f"the request body sent {self.got} bytes in {bounds.window_seconds:g} s, "
                f"under the minimum of {bounds.min_rate} bytes per second "
                "(ENTENTE_REQUEST_BODY_MIN_RATE)",
                reason="min-rate",
            )
        if message.get("type") == "http.request":
            self.waited += time.monotonic() - started
            self.got += len(message.get("body", b""))
            if self.got >= self.need:  # this window's due is paid: a new window starts
                self.waited, self.got = 0.0, 0
            if not message.get("more_body", False):
                self.done = True
        return message


class ProblemH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, answering a request head it refuses with a problem document:
    431 when it is larger than ``h11_max_incomplete_event_size`` (``max_request_header_bytes``),
    400 when it is malformed, and 408 when it is still incomplete ``request_head_timeout_seconds``
    after the connection opened or the previous answer was sent (uvicorn bounds a head's size
    but not its time: a client trickling a head would hold its connection for ever).
    (uvicorn's own answer is a plain-text 400 in the first two cases.)"""

    head_timeout_seconds: ClassVar[float | None] = None  # from the settings, on first use
    _head_timer: asyncio.TimerHandle | None = None

    @classmethod
    def _head_timeout(cls) -> float:
        if cls.head_timeout_seconds is None:
            try:
                cls.head_timeout_seconds = Settings.load().request_head_timeout_seconds
            except Exception:  # invalid settings are reported by `serve` itself
                cls.head_timeout_seconds = Settings.model_fields[
                    "request_head_timeout_seconds"
                ].default
        return float(cls.head_timeout_seconds or 10.0)

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(self._head_timeout(), self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the head is in (or the connection failed)
            self._disarm_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.trailing_data[0]:  # part of a head came, not all of it: say why
            detail = (
                f"the request head did not arrive within {self._head_timeout():g} s "
                "(ENTENTE_REQUEST_HEAD_TIMEOUT_SECONDS)"
            )
            body = _problem_bytes(408, "request-timeout", "Request timeout", detail)
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/problem+json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body
            )
            log.info("closed a connection whose request head was still incomplete")
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        limit = self.config.h11_max_incomplete_event_size or 0
        if limit and len(self.conn.trailing_data[0]) > limit:
            status, kind, title = 431, "headers-too-large", "Request header fields too large"
            detail = (
                f"the request head is larger than {limit} bytes (ENTENTE_MAX_REQUEST_HEADER_BYTES)"
            )
        else:
            status, kind, title = 400, "bad-request", "Bad request"
            detail = "the request head is not valid HTTP/1.1"
        body = _problem_bytes(status, kind, title, detail)
        headers = [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(status_code=status, headers=headers),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event))
        self.transport.close()
