""":class:`AsyncClient`: :class:`~service.client.Client`'s methods as coroutines and async
iterators (httpx.AsyncClient for the I/O, files read and written in worker threads; every request
and answer is built and read by :mod:`service.client._protocol`, shared with the blocking
client). Runs under asyncio or trio (anyio)."""

from __future__ import annotations

import builtins
import contextlib
import errno
import os
import random
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, Unpack
from urllib.parse import quote

import anyio
import anyio.to_thread
import httpx

from service.client import _protocol as p
from service.client import _resumable as r
from service.client.models import Artifact, Downloaded, Event, Page, Shared
from service.evaluations import EvaluationSummary
from service.files import atomic_write

__all__ = ["AsyncClient", "AsyncContent"]


class AsyncContent:
    """An artifact's plaintext as it streams (:meth:`AsyncClient.open`): ``async for`` its
    bytes; the last step checks their SHA-256 against the node's."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._received = p.Received(response, None)
        self.filename = self._received.filename  # the name it was shared under
        self.size = self._received.total
        self.sha256 = self._received.expected

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_bytes(p.CHUNK_BYTES):
                yield self._received.add(chunk)
        except httpx.HTTPError as exc:
            raise p.unreachable(exc, "the download failed") from None
        self._received.verify()


class AsyncClient:
    """:class:`~service.client.Client`, async: the same arguments (``transport`` an
    :class:`httpx.AsyncBaseTransport`, ``sleep`` a coroutine function) and methods. Use it as an
    async context manager, or await :meth:`aclose`."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: httpx.Timeout | float = p.DEFAULT_TIMEOUT,
        retries: int = 4,
        transport: httpx.AsyncBaseTransport | None = None,
        on_retry: p.OnRetry | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.url = p.base_url(url)
        self.retries = retries
        self.on_retry = on_retry
        self._sleep = sleep
        self._rng = rng
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            transport=transport,
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(
        self, method: str, path: str, params: dict[str, Any] | None = None
    ) -> httpx.Response:
        try:
            return await self._http.request(method, path, params=params)
        except httpx.HTTPError as exc:
            raise p.unreachable(exc) from None

    async def share(
        self,
        source: p.Source,
        *,
        to: Sequence[str],
        tlp: str,
        title: str | None = None,
        topics: Sequence[str] | None = None,
        purposes: Sequence[str] | None = None,
        embargo_until: datetime | str | None = None,
        expires_at: datetime | str | None = None,
        onward_approved: Sequence[str] | None = None,
        evaluation: EvaluationSummary | None = None,
        filename: str | None = None,
        idempotency_key: str | None = None,
        on_progress: p.OnProgress | None = None,
        on_retry: p.OnRetry | None = None,
        resumable: bool = False,
    ) -> Shared:
        """:meth:`Client.share <service.client.Client.share>`."""
        opened = p.open_source(source, filename)
        meta = p.share_metadata(
            opened.filename, to=to, tlp=tlp, title=title, topics=topics, purposes=purposes,
            embargo_until=embargo_until, expires_at=expires_at,
            onward_approved=onward_approved, evaluation=evaluation,
        )  # fmt: skip
        upload = p.upload(meta, opened.size, idempotency_key=idempotency_key)
        plan = p.RetryPlan(self.retries, on_retry or self.on_retry, self._rng)
        if resumable:
            return await self._share_resumable(opened, upload, plan, on_progress)
        while True:
            body = _chunks(opened, upload, on_progress)
            try:
                response = await self._http.post(
                    "/v1/artifacts", content=body, headers=upload.headers
                )
            except httpx.TransportError as exc:
                pause = plan.after_error(exc, rewindable=opened.rewindable)
            except httpx.HTTPError as exc:
                raise p.unreachable(exc) from None
            else:
                answered = plan.after_answer(response)
                if answered is None:
                    return p.shared(response)
                pause = answered
            await self._sleep(pause)

    async def _share_resumable(
        self,
        opened: p.Opened,
        upload: p.Upload,
        plan: p.RetryPlan,
        on_progress: p.OnProgress | None,
    ) -> Shared:
        """A share as a resumable upload (``service.client._resumable``)."""
        length = r.body_length(opened, upload)
        state = r.Resumable(plan)
        while state.done is None:
            method, path = state.request()
            try:
                if method == "POST":
                    headers = r.creation_headers(upload, length)
                    response = await self._http.post(path, content=b"", headers=headers)
                elif method == "HEAD":
                    response = await self._http.head(path, headers=r.INTEROP)
                else:
                    body = _chunks(opened, upload, on_progress, state.offset or 0)
                    headers = r.append_headers(state.offset or 0, length)
                    response = await self._http.patch(path, content=body, headers=headers)
            except httpx.TransportError as exc:
                pause = state.lost(exc)
            except httpx.HTTPError as exc:
                raise p.unreachable(exc) from None
            else:
                pause = state.answered(response)
            if pause:
                await self._sleep(pause)
        return state.done

    async def list(
        self,
        direction: Literal["received", "sent"] | None = "received",
        *,
        limit: int | None = 50,
        cursor: str | None = None,
        **filters: Unpack[p.Filters],
    ) -> Page:
        """:meth:`Client.list <service.client.Client.list>`."""
        params = p.list_params(direction, filters, limit=limit, cursor=cursor)
        return p.page(await self._request("GET", "/v1/artifacts", params=params))

    async def artifacts(
        self,
        direction: Literal["received", "sent"] | None = "received",
        *,
        page_size: int | None = 50,
        **filters: Unpack[p.Filters],
    ) -> AsyncIterator[Artifact]:
        """Every artifact :meth:`list` would show, page after page."""
        cursor: str | None = None
        while True:
            found = await self.list(direction, limit=page_size, cursor=cursor, **filters)
            for item in found.items:
                yield item
            if found.next_cursor is None:
                return
            cursor = found.next_cursor

    async def artifact(self, artifact_id: str) -> Artifact:
        """:meth:`Client.artifact <service.client.Client.artifact>`."""
        path = f"/v1/artifacts/{quote(artifact_id, safe='')}"
        return p.artifact(await self._request("GET", path))

    async def revoke(self, artifact_id: str, reason: str = "") -> Artifact:
        """:meth:`Client.revoke <service.client.Client.revoke>`."""
        path = f"/v1/artifacts/{quote(artifact_id, safe='')}/revoke"
        return p.artifact(await self._request("POST", path, params={"reason": reason}))

    @contextlib.asynccontextmanager
    async def open(self, artifact_id: str) -> AsyncIterator[AsyncContent]:
        """The artifact's plaintext as an async stream of bytes (your read is audited)."""
        path = f"/v1/artifacts/{quote(artifact_id, safe='')}/content"
        try:
            async with self._http.stream("GET", path) as response:
                if response.status_code >= 400:
                    await response.aread()
                    p.check(response)
                yield AsyncContent(response)
        except httpx.HTTPError as exc:
            raise p.unreachable(exc, "the download failed") from None

    async def download(
        self,
        artifact_id: str,
        dest: str | os.PathLike[str] | IO[bytes] | None = None,
        *,
        overwrite: bool = False,
        on_progress: p.OnProgress | None = None,
    ) -> Downloaded:
        """:meth:`Client.download <service.client.Client.download>`."""
        path = f"/v1/artifacts/{quote(artifact_id, safe='')}/content"
        try:
            async with self._http.stream("GET", path) as response:
                if response.status_code >= 400:
                    await response.aread()
                    p.check(response)
                received = p.Received(response, on_progress)
                if dest is not None and not isinstance(dest, (str, os.PathLike)):
                    async for chunk in response.aiter_bytes(p.CHUNK_BYTES):
                        await anyio.to_thread.run_sync(dest.write, received.add(chunk))
                    return Downloaded(None, received.size, received.verify(), received.filename)
                target = p.download_target(
                    Path(dest) if dest is not None else None, received.filename, artifact_id
                )
                if target.exists() and not overwrite:
                    raise FileExistsError(errno.EEXIST, "exists", str(target))
                with atomic_write(target, overwrite=overwrite) as out:
                    async for chunk in response.aiter_bytes(p.CHUNK_BYTES):
                        await anyio.to_thread.run_sync(out.write, received.add(chunk))
                    sha256 = received.verify()  # before the rename: a bad copy is never kept
        except httpx.HTTPError as exc:
            raise p.unreachable(exc, "the download failed") from None
        return Downloaded(target, received.size, sha256, received.filename)

    async def events(
        self,
        *,
        after: str | None = None,
        on_reconnect: Callable[[str], None] | None = None,
    ) -> AsyncGenerator[Event]:
        """:meth:`Client.events <service.client.Client.events>`, as an async iterator."""
        last = after
        pause = p.EVENTS_PAUSE_SECONDS
        while True:
            try:
                async with self._http.stream(
                    "GET", "/v1/events", headers=p.events_headers(last), timeout=p.EVENTS_TIMEOUT
                ) as response:
                    p.events_answer(response)
                    if response.status_code >= 400:
                        await response.aread()
                        p.check(response)
                    pause = p.EVENTS_PAUSE_SECONDS
                    decoder = p.SseDecoder()
                    async for line in response.aiter_lines():
                        found = decoder.line(line)
                        if found is None:
                            continue
                        shown = p.event(found)
                        if shown is not None:
                            yield shown
                        if found.id is not None:
                            last = found.id
            except (httpx.HTTPError, p.RetryableAnswer) as exc:
                if on_reconnect is not None:
                    on_reconnect(p.reconnect_notice(exc, last, pause))
                await self._sleep(pause)
                pause = min(pause * 2, p.EVENTS_PAUSE_MAX_SECONDS)
                continue
            await self._sleep(p.EVENTS_PAUSE_SECONDS / 4)  # the stream reached its lifetime


async def _chunks(
    opened: p.Opened, upload: p.Upload, on_progress: p.OnProgress | None, offset: int = 0
) -> AsyncIterator[bytes]:
    """One attempt's body from byte ``offset`` (0: the head, the whole file, read in a worker
    thread, the tail; later offsets, for a resumable share, need a source of known size)."""
    skip = p.Skip.at(offset, upload, opened.size)
    if head := upload.head[skip.head :]:
        yield head
    done = skip.file
    if on_progress is not None:
        on_progress(done, opened.size)
    if opened.path is not None:
        fh: IO[bytes] = await anyio.to_thread.run_sync(builtins.open, opened.path, "rb")
        closing: contextlib.AbstractContextManager[Any] = fh
        if skip.file:
            await anyio.to_thread.run_sync(fh.seek, skip.file)
    else:
        assert opened.stream is not None  # noqa: S101 - a path or a stream, by construction
        fh, closing = opened.stream, contextlib.nullcontext()
        if opened.size is not None:
            await anyio.to_thread.run_sync(fh.seek, opened.start + skip.file)
    with closing:
        while chunk := await anyio.to_thread.run_sync(fh.read, p.CHUNK_BYTES):
            done += len(chunk)
            if on_progress is not None:
                on_progress(done, opened.size)
            yield chunk
    yield upload.tail[skip.tail :]
