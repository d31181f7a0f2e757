"""Bounds on what a request may cost before and while the app reads it (ASGI middleware and
uvicorn's h11 protocol), all before routing.

- **Request bodies** (``request_body_idle_seconds``, ``request_body_min_rate`` over windows of
  ``request_body_rate_window_seconds``): :class:`RequestBounds` answers 408 when a body sends
  nothing for that long, or trickles: less than the minimum rate over a window of time spent
  waiting for it. (A body is read on the event loop and holds no thread while it waits:
  ``service.api.bodies``.)
- **Request heads** (``max_request_header_bytes``, ``request_head_timeout_seconds``):
  :class:`RequestBounds` answers 431 to a larger head, counted (``entente_refusals``), logged
  and audited as an anonymous refusal (``service.audit.refusals``: summarised per source, so a
  flood of them adds a bounded number of entries). uvicorn's h11 parser refuses a head that is
  still incomplete past that size, and :class:`ProblemH11Protocol` makes its answer a problem
  document too (431, or 400 for a head that is not HTTP), and answers 408 to a head that is
  still incomplete after the timeout (uvicorn has none): those three come before any request
  reaches the app, and are logged only.

Refusals are problem documents (:class:`service.errors.RequestTimeoutError` for 408). This module
does not limit rates, requests in flight or volume (``service.limits``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any, ClassVar

import anyio
import h11
from starlette.requests import ClientDisconnect, Request
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.api.problems import problem_type
from service.audit.refusals import ANONYMOUS, audit_refusal, source_of
from service.errors import RequestTimeoutError
from service.settings import Settings

__all__ = ["ProblemH11Protocol", "RequestBounds"]

log = logging.getLogger("entente.limits")

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
    doc = {"type": problem_type(kind), "title": title, "status": status}
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
      the client counts: a body the app is slow to consume is not the client's fault. Once the
      answer has started, no refusal can be sent any more: the bounds stop (a streaming answer
      reads ``receive`` only to learn of a disconnect, and may stream on).
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
            await anyio.to_thread.run_sync(_account_oversized_head, scope, detail)
            return
        bounded = _BoundedBody(self, receive)
        try:
            await self.app(scope, bounded, bounded.watch(send))
        except ClientDisconnect:  # an ordinary end: whoever read the body cleaned up
            log.info("the client disconnected during %s %s", scope["method"], scope.get("path", ""))


def _account_oversized_head(scope: Scope, detail: str) -> None:
    """Count, log and audit a 431 answered here (blocking: the audit log may be written)."""
    request = Request(scope)
    log.info("refused a request head over the limit from %s", source_of(request))
    node = getattr(getattr(scope.get("app"), "state", None), "node", None)
    if node is None:  # an app wired without a node (a unit test of the middleware)
        return
    node.metrics.refusals.labels("headers-too-large").inc()
    audit_refusal(
        request,
        node,
        kind="request.refused",
        actor=ANONYMOUS,  # refused before any token or signature was looked at
        reason="431 headers-too-large",
        rule="headers-too-large",
        detail={
            "method": request.method,
            "path": request.url.path[:300],
            "status": 431,
            "detail": detail,
        },
    )


class _BoundedBody:
    """One request's ``receive``, timing the waits for its body (see :class:`RequestBounds`)."""

    def __init__(self, bounds: RequestBounds, receive: Receive) -> None:
        self.bounds = bounds
        self.receive = receive
        self.done = False  # the body is over
        self.answered = False  # the answer has started: a refusal could not be sent any more
        self.need = bounds.min_rate * bounds.window_seconds  # bytes per window
        self.waited = 0.0  # seconds spent waiting in this window
        self.got = 0  # bytes received in this window

    def watch(self, send: Send) -> Send:
        """``send``, noting when the answer starts."""

        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.answered = True
            await send(message)

        return watched

    def unbounded(self) -> bool:
        """Whether there is nothing left to bound (then waiting for a disconnect, which a
        streaming answer does as it streams, may take forever)."""
        return self.done or self.answered

    async def __call__(self) -> Message:
        if self.unbounded():
            message: Message = await self.receive()
            return message
        bounds = self.bounds
        budget = bounds.idle_seconds
        if self.need:
            budget = min(budget, max(0.0, bounds.window_seconds - self.waited))
        started = time.monotonic()
        with anyio.move_on_after(budget) as waited:
            message = await self.receive()
        if waited.cancelled_caught and self.unbounded():  # the answer started while it waited
            message = await self.receive()
        elif waited.cancelled_caught:
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
        log.info("refused a request head (%d %s): %s", status, kind, detail)
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
