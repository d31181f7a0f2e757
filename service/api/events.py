"""``GET /v1/events``: notice of arrivals, as server-sent events (text/event-stream).

A reader or a pipeline learns that a partner's artifact arrived, or that a received one was
revoked or deleted, without polling the listing. Each event's ``id`` is its cursor
(``service.artifacts.events``: the audit log index of the entry that recorded it, plus one),
so a client resumes with ``Last-Event-ID`` (or ``?after=``) after a dropped connection, a node
restart or a switch of replica, and sees every event once. Without a cursor the stream starts at
the present; ``after=0`` replays every arrival from the start of the log.

The stream is bounded: a token may hold ``events_max_streams_per_token`` streams open (429
beyond), a quiet stream sends a comment every ``events_heartbeat_seconds``, and a stream ends
after ``events_max_stream_seconds`` (with an ``end`` event carrying the cursor to resume from).
The database is read every ``events_poll_seconds`` in a short session of its own, so an open
stream holds no connection, and every replica serves the same events (no pub/sub). An event's
data is the artifact's entry as ``GET /v1/artifacts/{id}`` returns it; never content.

With ``?wait=SECONDS`` the route is a long poll instead: one JSON answer, ``{"events": [...],
"cursor": N}``, as soon as there is an event above the cursor or after the wait (at most
``events_max_wait_seconds``); the next call passes ``after=N``.

This module does not push events anywhere: webhooks to local receivers are
``service.webhooks``, which reads the same events.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from service.api.deps import require_roles
from service.artifacts import events as arrivals
from service.artifacts import listing
from service.errors import AuthError, InvalidInputError, RateLimitedError
from service.models import Token
from service.node import Node
from service.schemas import artifact_out
from service.tokens import Principal, Role
from service.web import NodeDep

__all__ = ["StreamSlots", "router"]

router = APIRouter(prefix="/v1", tags=["events"])

Anyone = Annotated[
    Principal, Depends(require_roles(Role.PUBLISHER, Role.READER, Role.AUDITOR, Role.ADMIN))
]
PARAMETERS = frozenset({"after", "wait"})
MAX_CURSOR = 2**62  # a log index no node reaches
RETRY_MILLISECONDS = 1000  # the reconnection delay the stream asks of its client (SSE retry:)
PROBLEM = {"application/problem+json": {"schema": {"type": "object"}}}


class StreamSlots:
    """Event streams open per token in this process, at most ``per_token`` each. Thread-safe."""

    def __init__(self, per_token: int) -> None:
        self.per_token = per_token
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, token_id: str) -> None:
        with self._lock:
            count = self._open.get(token_id, 0)
            if count < self.per_token:
                self._open[token_id] = count + 1
                return
        raise RateLimitedError(
            f"this token already has {self.per_token} event streams open "
            "(ENTENTE_EVENTS_MAX_STREAMS_PER_TOKEN); close one first",
            reason="event-streams",
            retry_after=5,
        )

    def give_back(self, token_id: str) -> None:
        with self._lock:
            count = self._open.get(token_id, 0) - 1
            if count > 0:
                self._open[token_id] = count
            else:
                self._open.pop(token_id, None)

    def open(self, token_id: str) -> int:
        return self._open.get(token_id, 0)

    @staticmethod
    def of(app_state: Any) -> StreamSlots:
        slots = getattr(app_state, "event_streams", None)
        if not isinstance(slots, StreamSlots):  # pragma: no cover - wiring error
            raise TypeError("app.state.event_streams is not set: build the app with create_app")
        return slots


class _EventStream(StreamingResponse):
    """A streaming answer that runs ``on_close`` once it ends, however it ends (finished,
    client gone, cancelled), and closes its iterator."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
        self._on_close = on_close
        self._content = content

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
            aclose = getattr(self._content, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()


def _cursor(text: str | None, name: str) -> int | None:
    if text is None:
        return None
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 19 or int(text) > MAX_CURSOR:
        raise InvalidInputError(f"{name} must be an event id this node sent (a whole number)")
    return int(text)


def _frame(*, event: str, ident: int, data: str) -> bytes:
    return f"id: {ident}\nevent: {event}\ndata: {data}\n\n".encode()


def _head(node: Node) -> int:
    with node.db.session() as session:
        return arrivals.log_size(session)


Poll = tuple[list[tuple[int, str, str]], int] | None


def _read(node: Node, cursor: int, token_id: str) -> Poll:
    """One poll, in a session of its own: the events above ``cursor`` (each its id, name and
    the artifact's entry as JSON) and the cursor after them; None once the caller's token is
    revoked (a stream outlived its token's revocation by up to its lifetime)."""
    with node.db.session() as session:
        token = session.get(Token, token_id)
        if token is None or token.revoked_at is not None:
            return None
        batch = arrivals.events_after(session, cursor, limit=node.settings.events_batch)
        found = [
            (
                ev.cursor,
                ev.name,
                artifact_out(
                    ev.artifact,
                    full=True,
                    deliveries=listing.deliveries_for(session, ev.artifact.id),
                ).model_dump_json(),
            )
            for ev in batch.events
        ]
    return found, batch.cursor


async def _events(
    node: Node, start: int, token_id: str, *, clock: Callable[[], float] = time.monotonic
) -> AsyncIterator[bytes]:
    settings = node.settings
    began = last_sent = clock()
    cursor = start
    yield f"retry: {RETRY_MILLISECONDS}\n".encode() + _frame(
        event="ready", ident=cursor, data=json.dumps({"cursor": cursor})
    )
    reason = "the stream's lifetime ended: reconnect from its id"
    while True:
        polled = await run_in_threadpool(_read, node, cursor, token_id)
        if polled is None:
            reason = "the token was revoked"
            break
        found, cursor = polled
        for ident, name, data in found:
            yield _frame(event=name, ident=ident, data=data)
        now = clock()
        if found:
            last_sent = now
        if now - began >= settings.events_max_stream_seconds:
            break
        if len(found) >= settings.events_batch:
            continue  # more are waiting
        if now - last_sent >= settings.events_heartbeat_seconds:
            yield b": keep-alive\n\n"
            last_sent = now
        await anyio.sleep(
            min(settings.events_poll_seconds, settings.events_max_stream_seconds - (now - began))
        )
    end = {"cursor": cursor, "reason": reason}
    yield _frame(event="end", ident=cursor, data=json.dumps(end))


async def _long_poll(
    node: Node,
    start: int,
    wait: float,
    token_id: str,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """The events above ``start``, waiting up to ``wait`` seconds for the first of them."""
    deadline = clock() + wait
    cursor = start
    while True:
        polled = await run_in_threadpool(_read, node, cursor, token_id)
        if polled is None:
            raise AuthError("the token was revoked", reason="revoked")
        found, cursor = polled
        left = deadline - clock()
        if found or left <= 0:
            break
        await anyio.sleep(min(node.settings.events_poll_seconds, left))
    events = [
        {"id": ident, "event": name, "artifact": json.loads(data)} for ident, name, data in found
    ]
    return {"events": events, "cursor": cursor}


@router.get(
    "/events",
    summary="Notice of arrivals: received artifacts, revocations and deletions, as server-sent "
    "events, resumable from an event id",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {
                "text/event-stream": {},
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "events": {"type": "array", "items": {"type": "object"}},
                            "cursor": {"type": "integer"},
                        },
                    }
                },
            },
            "description": "An event stream; with ?wait=, one JSON page of events (long poll)",
        },
        **{
            code: {"description": "Problem document (RFC 9457)", "content": PROBLEM}
            for code in (401, 403, 422, 429)
        },
    },
)
async def events(
    request: Request,
    node: NodeDep,
    principal: Anyone,
    after: Annotated[
        str | None,
        Query(max_length=20, description="Start after this event id (0: from the start)"),
    ] = None,
    wait: Annotated[
        float | None,
        Query(
            ge=0,
            le=3600,
            description="Long poll: answer one JSON page of events, waiting up to this many "
            "seconds (at most ENTENTE_EVENTS_MAX_WAIT_SECONDS) for the first",
        ),
    ] = None,
    last_event_id: Annotated[
        str | None, Header(alias="Last-Event-ID", max_length=20, include_in_schema=True)
    ] = None,
) -> Response:
    unknown = sorted(set(request.query_params) - PARAMETERS)
    if unknown:
        raise InvalidInputError(
            f"unknown query parameter {unknown[0][:40]!r}: the event stream takes "
            f"{', '.join(sorted(PARAMETERS))}"
        )
    start = _cursor(after, "after")
    if start is None:
        start = _cursor(last_event_id, "Last-Event-ID")
    if start is None:
        start = await run_in_threadpool(_head, node)
    slots = StreamSlots.of(request.app.state)
    slots.take(principal.token_id)
    if wait is not None:
        try:
            wait = min(wait, node.settings.events_max_wait_seconds)
            page = await _long_poll(node, start, wait, principal.token_id)
        finally:
            slots.give_back(principal.token_id)
        return JSONResponse(page, headers={"Cache-Control": "no-store"})
    return _EventStream(
        _events(node, start, principal.token_id), lambda: slots.give_back(principal.token_id)
    )
