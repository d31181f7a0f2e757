"""Abuse limits: request rates per bearer token and per partner, a daily delivery volume per
partner, a bound on the replay (nonce) cache, and an idle timeout on request bodies.

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
- **Request bodies** (``request_body_idle_seconds``): :class:`RequestBounds` answers 408 when
  a body sends nothing for that long (a stalled upload holding a worker; a body trickling a byte
  at a time is not caught, nor is a request head sent slowly: uvicorn bounds a head's size but
  not its time, so a node exposed to the internet belongs behind a reverse proxy that does).
- **Request heads** (``max_request_header_bytes``): :class:`RequestBounds` answers 431 to a
  larger head; uvicorn's h11 parser refuses one that is still incomplete past that size, and
  :class:`ProblemH11Protocol` makes its answer a problem document too (431, or 400 for a head
  that is not HTTP) instead of plain text. Both happen before routing: logged, not audited.

Refusals are :class:`service.errors.RateLimitedError` (429, ``Retry-After``) or
:class:`service.errors.RequestTimeoutError` (408) problem documents. A refusal is audited (as
``request.refused``, by the problem handler) once per burst: further refusals of the same key
before it is allowed a request again are counted in the metrics only, so that a flood of
requests cannot become a flood of audit writes.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import anyio
import h11
from sqlmodel import Session, col, func, select
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.errors import RateLimitedError, RequestTimeoutError
from service.models import Artifact
from service.node import Node
from service.settings import Settings

__all__ = [
    "MAX_BUCKETS",
    "Limits",
    "ProblemH11Protocol",
    "RateLimiter",
    "RequestBounds",
    "check_volume",
    "volume_cap",
    "volume_used",
]

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


class Limits:
    """The rate limiters of one app (built once in the app factory)."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic):
        self.tokens = RateLimiter(settings.rate_limit_per_minute, clock=clock)
        self.partners = RateLimiter(settings.rate_limit_per_minute, clock=clock)

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
    - A body that sends nothing for ``idle_seconds`` ends in a 408 problem document, raised where
      the app reads the body, so it is handled and audited like any refusal, and a partial
      upload is cleaned up by the code that was reading it.
    """

    def __init__(self, app: ASGIApp, *, max_head_bytes: int, idle_seconds: float) -> None:
        self.app = app
        self.max_head_bytes = max_head_bytes
        self.idle_seconds = idle_seconds

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
        done = False

        async def bounded_receive() -> Message:
            nonlocal done
            if done:  # the body is over: waiting for a disconnect may take forever
                message: Message = await receive()
                return message
            with anyio.move_on_after(self.idle_seconds) as waited:
                message = await receive()
            if waited.cancelled_caught:
                raise RequestTimeoutError(
                    f"the request body sent nothing for {self.idle_seconds:g} s "
                    "(ENTENTE_REQUEST_BODY_IDLE_SECONDS)"
                )
            if message.get("type") == "http.request" and not message.get("more_body", False):
                done = True
            return message

        await self.app(scope, bounded_receive, send)


class ProblemH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, answering a request head it refuses with a problem document:
    431 when it is larger than ``h11_max_incomplete_event_size`` (``max_request_header_bytes``),
    400 when it is malformed. (uvicorn's own answer is a plain-text 400 either way.)"""

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
