"""Request bodies: read only once the caller is known, within the route's limit, on the loop.

No route declares a FastAPI body parameter: FastAPI reads and parses a declared body *before*
it resolves a route's dependencies, so before the bearer token or the partner's signature has
been checked (``tests/hardening/test_h1_body_before_identity.py`` walks every route to keep it
so). A route reads its body itself, after its authentication dependency, with one of these:

- :func:`read_body`: the whole body, up to ``limit`` bytes. A ``Content-Length`` above the limit
  is refused (413) before a byte is read; a body without one is refused as soon as it passes it.
- :func:`read_json`: :func:`read_body`, then ``crypto.strict_json`` (depth, length, number and
  duplicate-key limits), then the route's pydantic model.
- :class:`StreamedBody`: a large body (an upload, a delivery) for synchronous code that consumes
  it as it arrives. Bytes are read on the event loop, a block at a time; the code runs in a
  greenlet on a few hub threads of its own (``body_worker_threads``) and gives its thread back
  whenever it waits for the next block, so a waiting connection never holds a thread, and
  slow bodies never touch the threads every other route runs on.

Timeouts (idle, minimum rate) are not here: :class:`service.api.bounds.RequestBounds` applies
them to every body, whoever reads it.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import anyio
import greenlet  # type: ignore[import-untyped]  # (no stubs; used in _Hub and StreamedBody)
from fastapi import Request
from pydantic import BaseModel, ValidationError

from crypto import strict_json
from service.errors import InvalidInputError, TooLargeError

__all__ = [
    "StreamedBody",
    "body_limiter",
    "declared_length",
    "json_body",
    "parse_json",
    "read_body",
    "read_json",
    "refuse_declared",
]

log = logging.getLogger("entente.bodies")

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
    return parse_json(await read_body(request, limit=limit, what=what), model, what=what)


def parse_json(raw: bytes, model: type[M], *, what: str = "the request body") -> M:
    """``raw`` as ``model``: strictly parsed JSON (``crypto.strict_json``), then validated."""
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
    """The app's threads for body work that needs no more network input (a batch already read
    whole), ``body_worker_threads`` of them, apart from the threads every other route runs on."""
    state = request.app.state
    limiter = getattr(state, "body_limiter", None)
    if limiter is None:
        limiter = anyio.CapacityLimiter(state.node.settings.body_worker_threads)
        state.body_limiter = limiter
    if not isinstance(limiter, anyio.CapacityLimiter):  # pragma: no cover - wiring error
        raise TypeError("app.state.body_limiter is not a CapacityLimiter")
    return limiter


class _Hub:
    """One thread that runs body greenlets, one at a time, each until it needs more of its
    body (then it gives the thread back) or ends. Steps come from the event loop."""

    def __init__(self, name: str) -> None:
        self._steps: queue.SimpleQueue[Callable[[], object]] = queue.SimpleQueue()
        self.bodies = 0  # greenlets assigned to this hub (read on the loop only)
        self.greenlet: greenlet.greenlet | None = None
        started = threading.Event()

        def run() -> None:
            self.greenlet = greenlet.getcurrent()
            started.set()
            while True:
                step = self._steps.get()
                try:
                    step()
                except BaseException:  # pragma: no cover - a step reports its own errors
                    log.exception("a body step failed outside its greenlet")

        threading.Thread(target=run, name=name, daemon=True).start()
        started.wait()

    def submit(self, step: Callable[[], object]) -> None:
        self._steps.put(step)


_HUBS: dict[int, list[_Hub]] = {}  # per pool size: the process's hub threads
_HUBS_LOCK = threading.Lock()


def _hubs(count: int) -> list[_Hub]:
    with _HUBS_LOCK:
        hubs = _HUBS.get(count)
        if hubs is None:
            hubs = _HUBS[count] = [_Hub(f"entente-body-{i}") for i in range(count)]
        return hubs


class StreamedBody:
    """A request body read on the event loop and consumed, a block at a time, by synchronous
    code (sealing an upload, checking a delivery) that never waits for the network on a thread.

    :meth:`run` calls ``fn`` in a greenlet on one of the process's ``body_worker_threads`` hub
    threads. When ``fn``'s :meth:`pull` finds no data left, the greenlet asks the event loop for
    the next block (``block`` bytes, or the rest of the body) and switches back to its hub,
    whose thread then runs other bodies' blocks; once the block has arrived the greenlet is
    resumed on that same thread. A body that trickles or stalls therefore holds a suspended
    greenlet (its stack and buffers) but no thread, however many of them there are; its time is
    bounded by :class:`service.api.bounds.RequestBounds` (idle and minimum-rate timeouts), which
    raise, like a client disconnect, inside ``fn`` at its ``pull()``, so that ``fn`` cleans up.
    """

    def __init__(self, request: Request, *, block: int) -> None:
        self._request = request
        self._chunks: AsyncIterator[bytes] = request.stream().__aiter__()
        self._block = max(1, block)
        self._held: deque[bytes] = deque()
        self._ended = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hub: _Hub | None = None
        self._greenlet: greenlet.greenlet | None = None
        self._fetching: asyncio.Task[None] | None = None
        self._parked = False  # the greenlet waits for a block
        self._cancelled = False  # run() was cancelled: no more blocks will be read

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

    async def _fetch(self) -> None:
        """On the loop: read the next block, then resume the greenlet with it (or the error)."""
        hub, glet = self._hub, self._greenlet
        if hub is None or glet is None:  # pragma: no cover - only called from pull()
            return
        try:
            block = await self._read_block()
        except BaseException as exc:
            hub.submit(functools.partial(glet.throw, exc))
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        hub.submit(functools.partial(glet.switch, block))

    def _start_fetch(self) -> None:
        if self._cancelled:  # the request is over: end the greenlet where it waits
            if self._hub is not None and self._greenlet is not None:
                self._hub.submit(functools.partial(self._greenlet.throw, asyncio.CancelledError))
            return
        if self._loop is not None:
            self._fetching = self._loop.create_task(self._fetch())

    def pull(self) -> bytes:
        """The next chunk of the body, b"" at its end (called by ``fn``, in its greenlet)."""
        if not self._held and not self._ended:
            hub, loop = self._hub, self._loop
            if hub is None or hub.greenlet is None or loop is None:
                raise RuntimeError("StreamedBody.pull() is for the function run() calls")
            self._parked = True
            loop.call_soon_threadsafe(self._start_fetch)
            try:
                block = hub.greenlet.switch()  # the thread goes back to the hub until resumed
            finally:
                self._parked = False
            self._held.extend(block)
        return self._held.popleft() if self._held else b""

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Read the first block here, then run ``fn(*args)`` in a greenlet on a hub thread."""
        self._held.extend(await self._read_block())
        loop = self._loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()
        hubs = _hubs(self._request.app.state.node.settings.body_worker_threads)
        hub = self._hub = min(hubs, key=lambda h: h.bodies)
        hub.bodies += 1
        context = contextvars.copy_context()

        def settle(result: T | None, error: BaseException | None) -> None:
            if done.done():
                return
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(result)  # type: ignore[arg-type]

        def body() -> None:
            try:
                result = fn(*args)
            except BaseException as exc:
                loop.call_soon_threadsafe(settle, None, exc)
            else:
                loop.call_soon_threadsafe(settle, result, None)

        def start() -> None:
            glet = self._greenlet = greenlet.greenlet(body, parent=hub.greenlet)
            glet.gr_context = context
            glet.switch()

        hub.submit(start)
        try:
            return await done
        except asyncio.CancelledError:
            # The request was cancelled (server shutdown): end the greenlet where it waits, now
            # or when it next asks for a block, so that ``fn`` cleans up.
            self._cancelled = True
            if self._fetching is not None:
                self._fetching.cancel()
            raise
        finally:
            hub.bodies -= 1
