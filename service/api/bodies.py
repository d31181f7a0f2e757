"""Request bodies: read only once the caller is known, within the route's limit, on the loop.

No route declares a FastAPI body parameter: FastAPI reads and parses a declared body *before*
it resolves a route's dependencies, so before the bearer token or the partner's signature has
been checked (``tests/hardening/test_h1_body_before_identity.py`` walks every route to keep it
so). A route reads its body itself, after its authentication dependency, with one of these:

- :func:`read_body`: the whole body, up to ``limit`` bytes. A ``Content-Length`` above the limit
  is refused (413) before a byte is read; a body without one is refused as soon as it passes it.
- :func:`read_json`: :func:`read_body`, then ``crypto.strict_json`` (depth, length, number and
  duplicate-key limits), then the route's pydantic model.
- :class:`ThreadedBody`: a large body (an upload, a delivery) for code that consumes it on a
  worker thread. Bytes are read on the event loop, a block at a time, and the thread is taken
  only once the first block has arrived, from a pool of its own (``body_worker_threads``), so
  that slow or stalled bodies never hold the threads every other route runs on.

Timeouts (idle, minimum rate) are not here: :class:`service.limits.RequestBounds` applies them to
every body, whoever reads it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
from fastapi import Request
from pydantic import BaseModel, ValidationError

from crypto import strict_json
from service.errors import InvalidInputError, TooLargeError

__all__ = [
    "ThreadedBody",
    "body_limiter",
    "declared_length",
    "json_body",
    "read_body",
    "read_json",
    "refuse_declared",
]

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


def declared_length(request: Request) -> int | None:
    """The request's ``Content-Length``, or None when it has none (or a malformed one, which
    the HTTP server has refused already)."""
    value = request.headers.get("content-length")
    return int(value) if value is not None and value.isdigit() else None


def refuse_declared(request: Request, limit: int, what: str) -> None:
    declared = declared_length(request)
    if declared is not None and declared > limit:
        raise TooLargeError(f"{what} is larger than {limit} bytes")


async def read_body(request: Request, *, limit: int, what: str = "the request body") -> bytes:
    """The whole body, refused (413) once it is known to pass ``limit`` bytes."""
    refuse_declared(request, limit, what)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLargeError(f"{what} is larger than {limit} bytes")
    return bytes(body)


async def read_json(
    request: Request, model: type[M], *, limit: int, what: str = "the request body"
) -> M:
    """The body as ``model``: bounded, strictly parsed JSON, then validated."""
    raw = await read_body(request, limit=limit, what=what)
    try:
        strict_json.loads(raw)
    except strict_json.StrictJSONError as exc:
        raise InvalidInputError(f"{what} is not valid JSON: {exc.msg}") from None
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise InvalidInputError(f"{where}: {err['msg']}", field=where) from None


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` describing a JSON body of ``model`` (read by :func:`read_json`)."""
    schema = model.model_json_schema()
    if "$defs" in schema:  # pragma: no cover - a model with nested models needs components
        raise TypeError(f"{model.__name__}: inline a body schema without $defs")
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def body_limiter(request: Request) -> anyio.CapacityLimiter:
    """The app's pool of body threads (``body_worker_threads``), made on first use."""
    state = request.app.state
    limiter = getattr(state, "body_limiter", None)
    if limiter is None:
        limiter = anyio.CapacityLimiter(state.node.settings.body_worker_threads)
        state.body_limiter = limiter
    if not isinstance(limiter, anyio.CapacityLimiter):  # pragma: no cover - wiring error
        raise TypeError("app.state.body_limiter is not a CapacityLimiter")
    return limiter


class ThreadedBody:
    """A request body read on the event loop and consumed by :meth:`run`'s worker thread.

    The thread's ``pull()`` returns chunks already read; when none is left it asks the loop for
    the next block (``block`` bytes, or the rest of the body), so the thread hops to the loop
    once per block rather than once per chunk.
    """

    def __init__(self, request: Request, *, block: int) -> None:
        self._request = request
        self._chunks: AsyncIterator[bytes] = request.stream().__aiter__()
        self._block = max(1, block)
        self._held: deque[bytes] = deque()
        self._ended = False

    async def _read_block(self) -> list[bytes]:
        out: list[bytes] = []
        size = 0
        while size < self._block and not self._ended:
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                self._ended = True
                break
            if chunk:
                out.append(chunk)
                size += len(chunk)
        return out

    def pull(self) -> bytes:
        """The next chunk of the body, b"" at its end (on the worker thread)."""
        if not self._held and not self._ended:
            self._held.extend(anyio.from_thread.run(self._read_block))
        return self._held.popleft() if self._held else b""

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Read the first block here, then run ``fn(*args)`` on a body thread."""
        self._held.extend(await self._read_block())
        return await anyio.to_thread.run_sync(fn, *args, limiter=body_limiter(self._request))
