""":class:`Client`: a node's ``/v1`` API with a token, blocking (httpx.Client for the I/O; every
request and answer is built and read by :mod:`service.client._protocol`, shared with
:class:`~service.client.AsyncClient`)."""

from __future__ import annotations

import builtins
import contextlib
import errno
import os
import random
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, Unpack
from urllib.parse import quote

import httpx

from service.client import _protocol as p
from service.client import _resumable as r
from service.client.models import Artifact, Downloaded, Event, Page, Shared
from service.evaluations import EvaluationSummary
from service.files import atomic_write

__all__ = ["Client", "Content"]


class Content:
    """An artifact's plaintext as it streams (:meth:`Client.open`): iterate for its bytes; the
    last step checks their SHA-256 against the node's and raises
    :class:`~service.client.errors.UnexpectedAnswerError` when they differ."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._received = p.Received(response, None)
        self.filename = self._received.filename  # the name it was shared under
        self.size = self._received.total
        self.sha256 = self._received.expected

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._response.iter_bytes(p.CHUNK_BYTES):
                yield self._received.add(chunk)
        except httpx.HTTPError as exc:
            raise p.unreachable(exc, "the download failed") from None
        self._received.verify()


class Client:
    """A node's ``/v1`` API for one token: share, list, read, follow and revoke artifacts.

    ``url`` is the node's base URL; ``retries`` bounds the attempts of a share after a lost
    connection or a busy node (each with the share's one ``Idempotency-Key``, so the node shares
    it once); ``on_retry`` hears of each. ``transport`` replaces httpx's (a test's
    :class:`httpx.MockTransport`, an in-process app); ``sleep`` and ``rng`` are the pauses and
    their jitter. Use it as a context manager, or call :meth:`close`."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: httpx.Timeout | float = p.DEFAULT_TIMEOUT,
        retries: int = 4,
        transport: httpx.BaseTransport | None = None,
        on_retry: p.OnRetry | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.url = p.base_url(url)
        self.retries = retries
        self.on_retry = on_retry
        self._sleep = sleep
        self._rng = rng
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(
        self, method: str, path: str, params: dict[str, Any] | None = None
    ) -> httpx.Response:
        try:
            return self._http.request(method, path, params=params)
        except httpx.HTTPError as exc:
            raise p.unreachable(exc) from None

    def share(
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
        """Share a file (a path) or a binary stream with partners ``to``, streamed.

        The share's ``Idempotency-Key`` (``idempotency_key``, or a fresh UUID) goes with every
        attempt; a stream that cannot seek is sent once, without retries. With ``resumable``
        (a file or a stream that can seek), the body goes as a resumable upload: after a lost
        connection the node is asked what it holds and only the rest is sent again."""
        opened = p.open_source(source, filename)
        meta = p.share_metadata(
            opened.filename, to=to, tlp=tlp, title=title, topics=topics, purposes=purposes,
            embargo_until=embargo_until, expires_at=expires_at,
            onward_approved=onward_approved, evaluation=evaluation,
        )  # fmt: skip
        upload = p.upload(meta, opened.size, idempotency_key=idempotency_key)
        plan = p.RetryPlan(self.retries, on_retry or self.on_retry, self._rng)
        if resumable:
            return self._share_resumable(opened, upload, plan, on_progress)
        while True:
            body = _chunks(opened, upload, on_progress)
            try:
                response = self._http.post("/v1/artifacts", content=body, headers=upload.headers)
            except httpx.TransportError as exc:
                pause = plan.after_error(exc, rewindable=opened.rewindable)
            except httpx.HTTPError as exc:
                raise p.unreachable(exc) from None
            else:
                answered = plan.after_answer(response)
                if answered is None:
                    return p.shared(response)
                pause = answered
            self._sleep(pause)

    def _share_resumable(
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
                    response = self._http.post(path, content=b"", headers=headers)
                elif method == "HEAD":
                    response = self._http.head(path, headers=r.INTEROP)
                else:
                    body = _chunks(opened, upload, on_progress, state.offset or 0)
                    headers = r.append_headers(state.offset or 0, length)
                    response = self._http.patch(path, content=body, headers=headers)
            except httpx.TransportError as exc:
                pause = state.lost(exc)
            except httpx.HTTPError as exc:
                raise p.unreachable(exc) from None
            else:
                pause = state.answered(response)
            if pause:
                self._sleep(pause)
        return state.done

    def list(
        self,
        direction: Literal["received", "sent"] | None = "received",
        *,
        limit: int | None = 50,
        cursor: str | None = None,
        **filters: Unpack[p.Filters],
    ) -> Page:
        """One page of the artifacts shared with this node (``received``) or by it (``sent``),
        newest first, filtered by :class:`Filters` (partner, TLP, topic, purpose, evaluation
        task or model, words in the title, when it was recorded)."""
        params = p.list_params(direction, filters, limit=limit, cursor=cursor)
        return p.page(self._request("GET", "/v1/artifacts", params=params))

    def artifacts(
        self,
        direction: Literal["received", "sent"] | None = "received",
        *,
        page_size: int | None = 50,
        **filters: Unpack[p.Filters],
    ) -> Iterator[Artifact]:
        """Every artifact :meth:`list` would show, page after page."""
        cursor: str | None = None
        while True:
            found = self.list(direction, limit=page_size, cursor=cursor, **filters)
            yield from found.items
            if found.next_cursor is None:
                return
            cursor = found.next_cursor

    def artifact(self, artifact_id: str) -> Artifact:
        """One artifact's metadata, with its deliveries to partners (on the sharing node)."""
        return p.artifact(self._request("GET", f"/v1/artifacts/{quote(artifact_id, safe='')}"))

    def revoke(self, artifact_id: str, reason: str = "") -> Artifact:
        """Revoke an artifact this node shared: recipients delete it and acknowledge. Revoking
        twice is not an error (the node keeps the first time)."""
        path = f"/v1/artifacts/{quote(artifact_id, safe='')}/revoke"
        return p.artifact(self._request("POST", path, params={"reason": reason}))

    @contextlib.contextmanager
    def open(self, artifact_id: str) -> Iterator[Content]:
        """The artifact's plaintext as a stream of bytes (your read is audited)."""
        path = f"/v1/artifacts/{quote(artifact_id, safe='')}/content"
        try:
            with self._http.stream("GET", path) as response:
                if response.status_code >= 400:
                    response.read()
                    p.check(response)
                yield Content(response)
        except httpx.HTTPError as exc:
            raise p.unreachable(exc, "the download failed") from None

    def download(
        self,
        artifact_id: str,
        dest: str | os.PathLike[str] | IO[bytes] | None = None,
        *,
        overwrite: bool = False,
        on_progress: p.OnProgress | None = None,
    ) -> Downloaded:
        """Save the artifact's plaintext: to ``dest`` (a file, or a folder to save it in under
        the name it was shared with; default: that name in the current folder) through a
        temporary file renamed once every byte is in and its SHA-256 checks out, or into a
        binary file object. An existing file raises :class:`FileExistsError` unless
        ``overwrite``."""
        path = f"/v1/artifacts/{quote(artifact_id, safe='')}/content"
        try:
            with self._http.stream("GET", path) as response:
                if response.status_code >= 400:
                    response.read()
                    p.check(response)
                received = p.Received(response, on_progress)
                if dest is not None and not isinstance(dest, (str, os.PathLike)):
                    for chunk in response.iter_bytes(p.CHUNK_BYTES):
                        dest.write(received.add(chunk))
                    return Downloaded(None, received.size, received.verify(), received.filename)
                target = p.download_target(
                    Path(dest) if dest is not None else None, received.filename, artifact_id
                )
                if target.exists() and not overwrite:
                    raise FileExistsError(errno.EEXIST, "exists", str(target))
                with atomic_write(target, overwrite=overwrite) as out:
                    for chunk in response.iter_bytes(p.CHUNK_BYTES):
                        out.write(received.add(chunk))
                    sha256 = received.verify()  # before the rename: a bad copy is never kept
        except httpx.HTTPError as exc:
            raise p.unreachable(exc, "the download failed") from None
        return Downloaded(target, received.size, sha256, received.filename)

    def events(
        self,
        *,
        after: str | None = None,
        on_reconnect: Callable[[str], None] | None = None,
    ) -> Generator[Event]:
        """Each arrival, revocation or deletion as it comes (``GET /v1/events``), from now or
        after event ``after`` (``"0"``: every one so far), for as long as the caller iterates.

        A dropped connection, a stream that reached its lifetime, a busy node (429, 502-504) or
        a node that restarts is reconnected with the last event id seen, so no event is seen
        twice or missed; ``on_reconnect`` hears why. Any other refusal raises
        :class:`~service.client.errors.ProblemError`."""
        last = after
        pause = p.EVENTS_PAUSE_SECONDS
        while True:
            try:
                with self._http.stream(
                    "GET", "/v1/events", headers=p.events_headers(last), timeout=p.EVENTS_TIMEOUT
                ) as response:
                    p.events_answer(response)
                    if response.status_code >= 400:
                        response.read()
                        p.check(response)
                    pause = p.EVENTS_PAUSE_SECONDS
                    decoder = p.SseDecoder()
                    for line in response.iter_lines():
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
                self._sleep(pause)
                pause = min(pause * 2, p.EVENTS_PAUSE_MAX_SECONDS)
                continue
            self._sleep(p.EVENTS_PAUSE_SECONDS / 4)  # the stream reached its lifetime


def _chunks(
    opened: p.Opened, upload: p.Upload, on_progress: p.OnProgress | None, offset: int = 0
) -> Iterator[bytes]:
    """One attempt's body from byte ``offset`` (0: the head, the whole file, the tail; later
    offsets, for a resumable share, need a source of known size)."""
    skip = p.Skip.at(offset, upload, opened.size)
    if head := upload.head[skip.head :]:
        yield head
    done = skip.file
    if on_progress is not None:
        on_progress(done, opened.size)
    with (
        builtins.open(opened.path, "rb")
        if opened.path is not None
        else contextlib.nullcontext(opened.stream)
    ) as fh:
        assert fh is not None  # noqa: S101 - a path or a stream, by construction
        if opened.path is None and opened.size is not None:
            fh.seek(opened.start + skip.file)
        elif skip.file:
            fh.seek(skip.file)
        while chunk := fh.read(p.CHUNK_BYTES):
            done += len(chunk)
            if on_progress is not None:
                on_progress(done, opened.size)
            yield chunk
    yield upload.tail[skip.tail :]
