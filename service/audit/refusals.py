"""Accounting for refused requests: every refusal is on record, and strangers cannot flood it.

:class:`RefusalLedger` is the one object, built by the app factory (``app.state.refusals``),
through which routes, dependencies and the problem handler audit a refusal
(:func:`audit_refusal`):

- A refusal of an *authenticated* caller (a valid token or a partner's valid signature) is one
  audit entry, written at once, as before.
- A refusal of an *anonymous* request (no valid token, no valid federation signature: anyone on
  the network can send those) is accounted per **source** (client address; an IPv6 address by
  its /64, which one host holds whole) and **window** (``refusal_audit_window_seconds``): the
  first of a window is an entry written at once (so a probe shows up immediately); the others
  are counted in memory, and one entry of the same kind, ``rule`` ``"summary"``, records their
  count, reasons and paths when the window has ended (on the next refusal, on the app's
  periodic flush, or at shutdown). At most ``refusal_audit_sources`` sources are tracked per
  window; refusals from any further source share one ``overflow`` bucket, still counted. So a
  flood adds at most about two entries per tracked source and kind per window, whatever its
  rate, and memory stays bounded.

The counts are per process (like the rate limits in ``service.limits``): a node run as N
processes writes up to N summaries per source and window. Counts of a window not yet flushed
are lost if the process is killed (a clean shutdown flushes them); the metrics
(``entente_refusals``) count every refusal as it happens.

**When the database does not answer.** A request refused because the database did not answer
in time (SQLite's write lock held elsewhere past the busy timeout, a PostgreSQL server gone) is
not written then, which would wait as long again and fail the same way: :meth:`refused_later`
keeps it in memory (at most :data:`DEFERRED_MAX`; any more are counted) and the next flush writes
them once the database answers, the count of any beyond the kept ones as one summary. A refusal
(or summary) refused for another reason whose own write meets a database that does not answer
(:data:`service.db.DATABASE_UNAVAILABLE`) is kept the same way, as it would have been written.

**Audited once.** A refusal the domain audits itself (in its own transaction, or with the rule,
clause and partner only the domain knows) is marked with :func:`mark_audited`; the problem
handlers ask :func:`already_audited` and write nothing more for it. The marks live in a
per-request registry (a :class:`weakref.WeakSet` of the exception objects, in a context
variable) that :class:`RefusalScope`, an ASGI middleware the problem handlers are installed
with, opens for each request; the request's threads and greenlets see it through the context
they copy. Outside a request (the pull loops, the CLI) there is no registry: marking is a
no-op there, and nothing reads it, since no problem handler runs.

This module does not decide what is refused, nor authenticate anyone.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import threading
import weakref
from collections import Counter
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from service.audit.log import record
from service.db import DATABASE_UNAVAILABLE, say_unavailable

if TYPE_CHECKING:
    from starlette.requests import Request

    from service.node import Node

__all__ = [
    "ANONYMOUS",
    "OVERFLOW",
    "RefusalLedger",
    "RefusalScope",
    "already_audited",
    "audit_refusal",
    "mark_audited",
    "source_of",
]

log = logging.getLogger("entente.audit")

ANONYMOUS = "anonymous"
OVERFLOW = "overflow"  # the source of refusals from sources beyond the tracked ones
SUMMARY_RULE = "summary"
MAX_KEYS = 16  # distinct reasons (and paths) named in one summary; the rest count as "other"
DEFERRED_MAX = 1_000  # refusals kept in memory while the database does not answer


def source_of(request: Request) -> str:
    """The client address a refusal is accounted to (an IPv6 address by its /64)."""
    host = request.client.host if request.client is not None else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:64] or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _bump(counter: Counter[str], key: str) -> None:
    if key in counter or len(counter) < MAX_KEYS:
        counter[key] += 1
    else:
        counter["other"] += 1


@dataclass(frozen=True)
class _Deferred:
    kind: str
    actor: str
    partner: str | None
    decision: str | None
    rule: str | None
    detail: dict[str, Any]
    at: datetime


@dataclass
class _Bucket:
    kind: str
    source: str
    window: int  # start of the window, seconds since the epoch
    rule: str | None
    count: int = 0  # refusals after the first, not yet recorded
    reasons: Counter[str] = field(default_factory=Counter)
    paths: Counter[str] = field(default_factory=Counter)


class RefusalLedger:
    """Audits refusals: authenticated ones at once, anonymous ones summarised per source."""

    def __init__(self, node: Node, *, window_seconds: int, max_sources: int) -> None:
        if window_seconds < 1 or max_sources < 1:
            raise ValueError("a refusal ledger needs a window and room for one source")
        self.node = node
        self.window_seconds = window_seconds
        self.max_sources = max_sources
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._sources: set[str] = set()
        self._window = 0
        self._deferred: list[_Deferred] = []
        self._beyond = 0  # deferred refusals past DEFERRED_MAX, counted only

    @classmethod
    def for_node(cls, node: Node) -> RefusalLedger:
        s = node.settings
        return cls(
            node, window_seconds=s.refusal_audit_window_seconds, max_sources=s.refusal_audit_sources
        )

    @classmethod
    def of(cls, state: Any, node: Node) -> RefusalLedger:
        """The app's ledger (one built on the spot for an app wired without one)."""
        ledger = getattr(state, "refusals", None)
        if not isinstance(ledger, RefusalLedger):
            ledger = cls.for_node(node)
            state.refusals = ledger
        return ledger

    def refused(
        self,
        request: Request,
        *,
        kind: str,
        actor: str,
        reason: str,
        detail: dict[str, Any],
        partner: str | None = None,
        decision: str | None = "deny",
        rule: str | None = None,
    ) -> None:
        """Account one refusal (blocking: the database may be written; run it in a thread)."""
        if actor != ANONYMOUS:
            self.write(kind=kind, actor=actor, partner=partner, decision=decision, rule=rule,
                       detail=detail)  # fmt: skip
            return
        now = self.node.now()
        window = math.floor(now.timestamp() / self.window_seconds) * self.window_seconds
        source = source_of(request)
        with self._lock:
            due = self._close_before(window)
            if source not in self._sources and len(self._sources) >= self.max_sources:
                source = OVERFLOW
            key = (kind, source)
            bucket = self._buckets.get(key)
            first = bucket is None
            if bucket is None:
                self._buckets[key] = _Bucket(kind, source, window, rule)
                self._sources.add(source)
            else:
                bucket.count += 1
                _bump(bucket.reasons, reason[:100])
                _bump(bucket.paths, request.url.path[:100])
        self._write_summaries(due)
        if first:
            self.write(kind=kind, actor=actor, partner=partner, decision=decision, rule=rule,
                       detail=detail)  # fmt: skip

    def refused_later(
        self,
        *,
        kind: str,
        actor: str,
        reason: str,
        detail: dict[str, Any],
        partner: str | None = None,
        rule: str | None = None,
    ) -> None:
        """Account a refusal whose reason is the database itself: kept in memory until a flush
        finds the database answering (never blocks on it)."""
        self._keep(
            _Deferred(kind, actor, partner, "deny", rule, {**detail, "reason": reason},
                      self.node.now())
        )  # fmt: skip

    def _keep(self, entry: _Deferred) -> None:
        """Keep ``entry`` for the next flush, or only count it past :data:`DEFERRED_MAX`."""
        with self._lock:
            if len(self._deferred) < DEFERRED_MAX:
                self._deferred.append(entry)
            else:
                self._beyond += 1

    def flush(self, *, force: bool = False) -> int:
        """Record the summaries of ended windows (every window with ``force``: at shutdown),
        then the refusals kept while the database did not answer; returns how many entries
        were written. Blocking."""
        if force:
            with self._lock:
                due = list(self._buckets.values())
                self._buckets.clear()
                self._sources.clear()
        else:
            window = math.floor(self.node.now().timestamp() / self.window_seconds)
            with self._lock:
                due = self._close_before(window * self.window_seconds)
        # Summaries first: one the database does not take joins the kept refusals, tried again
        # just after (and, at shutdown, reported with them if it still fails).
        written = self._write_summaries(due)
        return written + self._write_deferred(last=force)

    def _write_deferred(self, *, last: bool = False) -> int:
        """Write the kept refusals in one transaction; if the database still does not answer,
        keep them for the next flush (``last``: there is none, the process is stopping)."""
        with self._lock:
            kept, beyond = self._deferred, self._beyond
            self._deferred, self._beyond = [], 0
        if not kept and not beyond:
            return 0
        try:
            with self.node.db.session() as session:
                for d in kept:
                    record(session, kind=d.kind, actor=d.actor, partner=d.partner,
                           decision=d.decision, rule=d.rule,
                           detail={**d.detail, "refused_at": d.at.isoformat()},
                           now=self.node.now())  # fmt: skip
                if beyond:
                    record(session, kind="request.refused", actor=ANONYMOUS, decision="deny",
                           rule=SUMMARY_RULE, now=self.node.now(),
                           detail={"count": beyond, "reason": "database unavailable",
                                   "note": "refusals while the database did not answer, beyond "
                                           f"the {DEFERRED_MAX} kept one by one"})  # fmt: skip
        except Exception:
            if last:
                log.error(
                    "the database does not answer at shutdown: %d refusal(s) not audited "
                    "(the entente_refusals metric counted them)",
                    len(kept) + beyond,
                )
                return 0
            log.warning("the database still does not answer: %d refusal(s) kept", len(kept))
            with self._lock:
                room = DEFERRED_MAX - len(self._deferred)
                self._beyond += beyond + max(0, len(kept) - room)
                self._deferred = kept[:room] + self._deferred
            return 0
        return len(kept) + (1 if beyond else 0)

    async def flush_periodically(self) -> None:
        """Record ended windows' summaries as each window ends (runs for the app's lifetime)."""
        while True:
            now = self.node.now().timestamp()
            await asyncio.sleep(self.window_seconds - now % self.window_seconds + 0.5)
            await asyncio.to_thread(self.flush)

    def _close_before(self, window: int) -> list[_Bucket]:
        """Under the lock: take the buckets of windows before ``window``."""
        if window <= self._window:
            return []
        self._window = window
        due = list(self._buckets.values())
        self._buckets.clear()
        self._sources.clear()
        return due

    def _write_summaries(self, buckets: list[_Bucket]) -> int:
        written = 0
        for b in buckets:
            if b.count == 0:
                continue  # its one refusal is on record already
            start = datetime.fromtimestamp(b.window, UTC)
            summary = {
                "source": b.source,
                "count": b.count,
                "window_start": start.isoformat(),
                "window_seconds": self.window_seconds,
                "reasons": dict(b.reasons),
                "paths": dict(b.paths),
                "note": "refusals after the first from this source in this window",
            }
            if self.write(kind=b.kind, actor=ANONYMOUS, rule=SUMMARY_RULE, detail=summary):
                written += 1
        return written

    def write(
        self,
        *,
        kind: str,
        actor: str,
        detail: dict[str, Any],
        partner: str | None = None,
        decision: str | None = "deny",
        rule: str | None = None,
    ) -> bool:
        """Record one refusal now (blocking); whether it was written. If the database does not
        answer, the entry is kept, as it is, for the next flush (the refusal stands either
        way)."""
        now = self.node.now()
        try:
            with self.node.db.session() as session:
                record(session, kind=kind, actor=actor, partner=partner, decision=decision,
                       rule=rule, detail=detail, now=now)  # fmt: skip
        except DATABASE_UNAVAILABLE as exc:
            say_unavailable(log, exc, "auditing a refusal", then="kept for the next flush")
            self._keep(_Deferred(kind, actor, partner, decision, rule, detail, now))
            return False
        except Exception:
            log.exception("could not audit a refusal")
            return False
        return True


def audit_refusal(
    request: Request,
    node: Node,
    *,
    kind: str,
    actor: str,
    reason: str,
    detail: dict[str, Any],
    partner: str | None = None,
    decision: str | None = "deny",
    rule: str | None = None,
) -> None:
    """Audit a refusal through the app's :class:`RefusalLedger` (blocking: run it in a thread)."""
    RefusalLedger.of(request.app.state, node).refused(
        request,
        kind=kind,
        actor=actor,
        reason=reason,
        detail=detail,
        partner=partner,
        decision=decision,
        rule=rule,
    )


# --- audited once: the per-request registry of refusals already on record ----------------------

_E = TypeVar("_E", bound=BaseException)
_AUDITED: ContextVar[weakref.WeakSet[BaseException] | None] = ContextVar(
    "entente_audited_refusals", default=None
)


def mark_audited(exc: _E) -> _E:
    """Record that ``exc``'s refusal is in the audit log already (a no-op outside a request);
    returns ``exc``, so that a raiser writes ``raise mark_audited(SomeError(...))``."""
    marks = _AUDITED.get()
    if marks is not None:
        marks.add(exc)
    return exc


def already_audited(exc: BaseException) -> bool:
    """Whether ``exc`` was marked with :func:`mark_audited` during this request."""
    marks = _AUDITED.get()
    return marks is not None and exc in marks


class RefusalScope:
    """ASGI middleware: opens each HTTP request's registry of refusals already audited."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = _AUDITED.set(weakref.WeakSet())
        try:
            await self.app(scope, receive, send)
        finally:
            _AUDITED.reset(token)
