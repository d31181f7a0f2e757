"""Abuse limits: request rates and requests in flight per bearer token and per partner, a daily
delivery volume per partner, and a bound on the replay (nonce) cache. Timeouts and sizes of
request heads and bodies are ASGI middleware: ``service.api.bounds``.

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
- **Requests in flight** (``max_requests_in_flight``): :class:`InFlight` lets one token, and
  one partner, run that many requests at once; more are refused with 503 and ``Retry-After``
  (:class:`service.errors.BusyError`), so that one caller's slow or many requests never take
  the capacity of another. Per process, like the rates.

Refusals are :class:`service.errors.RateLimitedError` (429, ``Retry-After``) or
:class:`service.errors.BusyError` (503, ``Retry-After``) problem documents. A rate or in-flight
refusal is audited (as ``request.refused``) once per burst: further refusals of the same key
before it is allowed a request again are raised ``quiet`` and counted in the metrics only, so
that a flood of requests cannot become a flood of audit writes.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import anyio
from sqlmodel import Session, col, func, select

from service.audit.refusals import mark_audited
from service.errors import BusyError, RateLimitedError
from service.models import Artifact
from service.node import Node
from service.settings import Settings

__all__ = [
    "MAX_BUCKETS",
    "InFlight",
    "Limits",
    "RateLimiter",
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
            quiet=not first,  # one audit event per burst; the metrics count every refusal
        )


class InFlight:
    """Requests running at once per caller, at most ``per_key`` each. Thread-safe.

    :meth:`enter` raises :class:`BusyError` (503, ``Retry-After``) when the caller already has
    ``per_key`` requests running; every refusal of a burst but the first (until the caller is
    let in again) is ``quiet``, like the rate limiter's.
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
            quiet=refused > 1,
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
            if not exc.quiet:
                await anyio.to_thread.run_sync(_audit_busy, node, exc, actor, method, path)
                mark_audited(exc)
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
        if exc.quiet:  # not audited by the problem handler, so counted here
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
