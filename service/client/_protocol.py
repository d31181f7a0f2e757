"""The client's requests and answers without I/O: what :class:`~service.client.Client` and
:class:`~service.client.AsyncClient` both send and how both read what comes back.

Here: the ``metadata`` of a share and its streamed multipart body (head and tail around the
file's bytes), reading an answer or a refusal (:func:`check`, :func:`problem_error`), which
answers a share retries and how long it pauses (:class:`RetryPlan`), the server-sent events of
``GET /v1/events`` (:class:`SseDecoder`) and the name a download is saved under. The two clients
only move bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, TypedDict

import httpx

from crypto import strict_json
from service.client.errors import (
    NodeUnreachableError,
    ProblemError,
    UnexpectedAnswerError,
)
from service.client.models import Artifact, Event, Page, PendingApproval, Retry, Shared
from service.errors import UsageError
from service.evaluations import (
    DEFAULT_PURPOSES,
    DEFAULT_TOPICS,
    EvaluationSummary,
    default_title,
)
from service.files import disposition_filename, is_base_name

CHUNK_BYTES = 1 << 20  # read and sent at a time
RETRY_STATUSES = (502, 503, 504)  # a load balancer's, or the node's own "busy" and "blob store"
IN_FLIGHT = "urn:entente:problem:idempotency-key-in-flight"
RETRY_BASE_SECONDS = 0.5  # the first pause; each next one doubles, up to the cap
RETRY_MAX_SECONDS = 8.0
EVENTS_RETRYABLE = frozenset({429, 502, 503, 504})
EVENTS_PAUSE_SECONDS = 1.0  # after a stream ended normally (a quarter); doubled after failures
EVENTS_PAUSE_MAX_SECONDS = 16.0
EVENTS_READ_TIMEOUT_SECONDS = 60.0  # longer than the node's heartbeat: a silent stream is dead
EVENT_NAMES = frozenset({"arrived", "revoked", "deleted"})
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)

Source = str | os.PathLike[str] | IO[bytes]
OnProgress = Callable[[int, int | None], None]  # (bytes so far in this attempt, total or None)
OnRetry = Callable[[Retry], None]


def base_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"the node's URL must start with http:// or https://, not {url[:80]!r}")
    return url.rstrip("/")


def tlp_label(text: str) -> str:
    """``amber``, ``TLP:amber``, ``Amber+Strict`` -> the TLP 2.0 label (``TLP:AMBER``); anything
    else goes to the node as written, which refuses it with its own message."""
    word = text.strip().upper()
    return word if word.startswith("TLP:") else f"TLP:{word}"


def iso_time(value: datetime | str | None, name: str) -> str | None:
    """An aware time (or its ISO 8601 text) as the node reads it."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise UsageError(
                f"{name} must be an ISO 8601 time, e.g. 2027-01-01T00:00:00Z"
            ) from None
    if value.tzinfo is None:
        raise UsageError(f"{name} needs a time zone, e.g. 2027-01-01T00:00:00Z")
    return value.isoformat()


def share_metadata(
    filename: str | None,
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
) -> dict[str, Any]:
    """The ``metadata`` part of a share: what leaves this machine unencrypted (in the signed
    manifest). An evaluation log's summary gives the title, topics and purposes the publisher
    left out."""
    if evaluation is not None:
        title = title or default_title(evaluation)
        topics = topics or list(DEFAULT_TOPICS)
        purposes = purposes or list(DEFAULT_PURPOSES)
    if not (title or filename):
        raise UsageError("a share of a stream without a file name needs a title")
    if isinstance(to, str):
        to = [to]
    meta: dict[str, Any] = {
        "title": title or filename,
        "tlp": tlp_label(tlp),
        "topics": list(topics or []),
        "purposes": list(purposes or []),
        "partners": list(to),
        "embargo_until": iso_time(embargo_until, "embargo_until"),
        "expires_at": iso_time(expires_at, "expires_at"),
        "onward_approved": list(onward_approved or []),
        "filename": filename,
    }
    if evaluation is not None:
        meta["evaluation"] = evaluation.model_dump(mode="json")
    return meta


@dataclass(frozen=True)
class Upload:
    """A share's streamed ``multipart/form-data`` body: ``head``, the file's bytes, ``tail``;
    ``headers`` carry its length (when the size is known) and the one ``Idempotency-Key`` every
    attempt sends."""

    head: bytes
    tail: bytes
    headers: dict[str, str]
    size: int | None


def upload(meta: Mapping[str, Any], size: int | None, *, idempotency_key: str | None) -> Upload:
    """The body of a share under ``idempotency_key`` (a fresh UUID when None). The multipart
    boundary is derived from the key, so that the same share sent again with the same key (by a
    retry, or by a caller who kept the key) is byte for byte the same request."""
    key = idempotency_key or str(uuid.uuid4())
    if any(not 0x20 <= ord(c) <= 0x7E or c in '"\\' for c in key):
        raise UsageError("an idempotency key is printable ASCII without quotes or backslashes")
    boundary = f"entente-{hashlib.sha256(key.encode()).hexdigest()[:24]}"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="metadata"\r\n'
        f"Content-Type: application/json\r\n\r\n{json.dumps(meta)}\r\n"
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="upload"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    headers = {
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "Idempotency-Key": f'"{key}"',  # an RFC 8941 sf-string: one per share, for its retries
    }
    if size is not None:
        headers["Content-Length"] = str(len(head) + size + len(tail))
    return Upload(head, tail, headers, size)


@dataclass(frozen=True)
class Skip:
    """What a body sent from byte ``offset`` leaves out of the head, the file and the tail."""

    head: int
    file: int
    tail: int

    @classmethod
    def at(cls, offset: int, upload: Upload, size: int | None) -> Skip:
        if offset and size is None:
            raise UsageError("a body sent from an offset needs a source of known size")
        head = min(offset, len(upload.head))
        file = min(offset - head, size or 0)
        return cls(head, file, offset - head - file)


@dataclass
class Opened:
    """A share's source: a file (opened for each attempt) or a stream (rewound for each attempt
    when it can seek; sent once when it cannot)."""

    path: Path | None
    stream: IO[bytes] | None
    filename: str | None
    size: int | None
    start: int = 0

    @property
    def rewindable(self) -> bool:
        return self.path is not None or self.size is not None


def open_source(source: Source, filename: str | None) -> Opened:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None
        if not path.is_file():
            raise UsageError(f"cannot read {path}: not a file")
        return Opened(path, None, filename or path.name, size)
    name = getattr(source, "name", None)
    filename = filename or (Path(name).name if isinstance(name, str) and name else None)
    try:
        start = source.tell()
        size = source.seek(0, os.SEEK_END) - start
        source.seek(start)
    except (OSError, ValueError, AttributeError):
        return Opened(None, source, filename, None)
    return Opened(None, source, filename, size, start)


def read_json(response: httpx.Response) -> Any:
    try:
        return strict_json.loads(response.content)
    except ValueError:
        raise UnexpectedAnswerError(
            f"the node answered {response.status_code} with a body that is not JSON"
        ) from None


def problem_error(status: int, reason: str, body: bytes) -> ProblemError:
    """The one exception of a refusal: ``body`` read as a problem document when it is one."""
    try:
        problem = strict_json.loads(body)
    except ValueError:
        problem = {}
    return ProblemError(status, problem if isinstance(problem, dict) else {}, reason=reason)


def check(response: httpx.Response) -> None:
    """Raise :class:`ProblemError` for a refusal (its body must have been read)."""
    if response.status_code >= 400:
        raise problem_error(response.status_code, response.reason_phrase, response.content)


def unreachable(exc: httpx.HTTPError, what: str = "cannot reach the node") -> NodeUnreachableError:
    return NodeUnreachableError(f"{what}: {str(exc) or type(exc).__name__}")


def problem_type(response: httpx.Response) -> str | None:
    if not response.headers.get("content-type", "").startswith("application/problem+json"):
        return None
    try:
        kind = strict_json.loads(response.content).get("type")
    except (ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


class RetryPlan:
    """When a share tries again: after a lost connection, a 502/503/504 and a 409 for a key still
    in flight, at most ``retries`` times, with doubling, jittered pauses. Only for a request that
    carries an ``Idempotency-Key`` (every attempt the same request): a retry cannot act twice."""

    def __init__(
        self, retries: int, on_retry: OnRetry | None, rng: random.Random | None = None
    ) -> None:
        self.retries = retries
        self.on_retry = on_retry
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self.number = 0  # attempts made so far

    def after_error(self, exc: httpx.TransportError, *, rewindable: bool = True) -> float:
        """The pause before the next attempt; :class:`NodeUnreachableError` when none is left."""
        self.number += 1
        if self.number > self.retries or not rewindable:
            raise NodeUnreachableError(
                f"cannot reach the node ({self.number} attempts): {str(exc) or type(exc).__name__}"
            )
        detail = str(exc)[:120] or "no detail"
        return self._next(f"the connection was lost ({type(exc).__name__}: {detail})")

    def after_answer(self, response: httpx.Response) -> float | None:
        """The pause before the next attempt, or None: ``response`` is the answer."""
        self.number += 1
        retryable = response.status_code in RETRY_STATUSES or (
            response.status_code == 409 and problem_type(response) == IN_FLIGHT
        )
        if not retryable or self.number > self.retries:
            return None
        why = f"the node answered {response.status_code}"
        if response.status_code == 409:
            why += " (it is still carrying out an earlier attempt)"
        return self._next(why)

    def after_conflict(self, why: str) -> float | None:
        """The pause before trying again after ``why`` (a resumable upload's offset moved);
        None when no attempt is left."""
        self.number += 1
        return None if self.number > self.retries else self._next(why)

    def _next(self, why: str) -> float:
        pause: float = min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2.0 ** (self.number - 1))
        pause *= 0.75 + self.rng.random() / 2
        if self.on_retry is not None:
            self.on_retry(Retry(why, pause, self.number + 1, self.retries + 1))
        return pause


def shared(response: httpx.Response) -> Shared:
    """A share's answer: 201 (shared) or 202 (waiting for a second approver)."""
    check(response)
    raw = read_json(response)
    replayed = response.headers.get("idempotent-replayed") == "true"
    if response.status_code == 202:
        return Shared("pending", None, PendingApproval.from_json(raw), replayed, raw)
    return Shared("shared", Artifact.from_json(raw), None, replayed, raw)


class Filters(TypedDict, total=False):
    """What a listing keeps (``Client.list(..., title="cyber", since=...)``): every filter
    given must match. ``since`` and ``until`` bound when this node recorded the artifact."""

    partner: str  # the origin, the sender or one of the recipients
    tlp: str
    topic: str
    purpose: str
    task: str  # an evaluation log's task (exact name)
    model: str  # an evaluation log's model (exact name)
    title: str  # text in the title, any case
    since: datetime | str  # recorded at or after (a time with a zone)
    until: datetime | str  # recorded before


def list_params(
    direction: str | None, filters: Filters, *, limit: int | None, cursor: str | None
) -> dict[str, Any]:
    given: dict[str, Any] = {"direction": direction, **filters, "limit": limit, "cursor": cursor}
    for bound in ("since", "until"):
        when = given.get(bound)
        if isinstance(when, datetime):
            if when.tzinfo is None:
                raise UsageError(f"{bound} needs a time zone (a naive time is ambiguous)")
            given[bound] = when.isoformat()
    return {name: value for name, value in given.items() if value is not None}


def page(response: httpx.Response) -> Page:
    check(response)
    raw = read_json(response)
    if not isinstance(raw, dict) or not isinstance(raw.get("items"), list):
        raise UnexpectedAnswerError("the node's listing has no items")
    cursor = raw.get("next_cursor")
    return Page(
        tuple(Artifact.from_json(a) for a in raw["items"]),
        cursor if isinstance(cursor, str) and cursor else None,
    )


def artifact(response: httpx.Response) -> Artifact:
    check(response)
    return Artifact.from_json(read_json(response))


@dataclass(frozen=True)
class SseEvent:
    event: str
    data: str
    id: str | None


class SseDecoder:
    """Events of a text/event-stream, one line at a time (WHATWG HTML, 9.2.6): comments
    skipped, data lines joined; :meth:`line` returns an event when a blank line ends one."""

    def __init__(self) -> None:
        self._event: str = "message"
        self._id: str | None = None
        self._data: list[str] = []

    def line(self, raw: str) -> SseEvent | None:
        line = raw.rstrip("\r\n")
        if not line:
            found = SseEvent(self._event, "\n".join(self._data), self._id) if self._data else None
            self._event, self._id, self._data = "message", None, []
            return found
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        return None


def event(found: SseEvent) -> Event | None:
    """An arrival, revocation or deletion; None for what a caller need not see (a stream's
    ``end``)."""
    if found.event not in EVENT_NAMES or found.id is None:
        return None
    try:
        raw = json.loads(found.data)
    except ValueError:
        raise UnexpectedAnswerError(f"event {found.id} carries no JSON") from None
    return Event(found.event, found.id, Artifact.from_json(raw), raw)


def events_headers(last: str | None) -> dict[str, str]:
    headers = {"Accept": "text/event-stream"}
    if last is not None:
        headers["Last-Event-ID"] = last
    return headers


EVENTS_TIMEOUT = httpx.Timeout(10.0, read=EVENTS_READ_TIMEOUT_SECONDS)


def reconnect_notice(exc: BaseException, last: str | None, pause: float) -> str:
    where = f"from event {last} " if last is not None else ""
    return f"connection lost ({str(exc) or type(exc).__name__}); reconnecting {where}in {pause:g} s"


class RetryableAnswer(Exception):
    """The event stream's node is busy (429, 502-504): reconnect after a pause."""


def events_answer(response: httpx.Response) -> None:
    """Raise :class:`RetryableAnswer` for a busy node; the caller reads the refusal otherwise."""
    if response.status_code in EVENTS_RETRYABLE:
        raise RetryableAnswer(f"the node answered {response.status_code}")


def download_target(dest: Path | None, served: str | None, artifact_id: str) -> Path:
    """Where a download goes: ``dest``, or the name it was shared under (the node's
    ``Content-Disposition``) in ``dest`` when that is a folder, else in the current folder."""
    if dest is not None and not dest.is_dir():
        return dest
    fallback = f"{artifact_id}.bin"
    name = served or (fallback if is_base_name(fallback) else "artifact.bin")
    return (dest or Path()) / name


def content_length(response: httpx.Response) -> int | None:
    try:
        return int(response.headers.get("content-length", "0")) or None
    except ValueError:
        return None


def check_digest(expected: str | None, actual: str) -> None:
    if expected and expected.lower() != actual:
        raise UnexpectedAnswerError(
            f"the downloaded content's SHA-256 {actual} is not the node's {expected}"
        )


class Received:
    """Counts and hashes a download's bytes as they come; :meth:`verify` compares the SHA-256
    with the one the node sent (``Digest-SHA256``) once the last byte is in."""

    def __init__(self, response: httpx.Response, on_progress: OnProgress | None) -> None:
        self.total = content_length(response)
        self.expected = response.headers.get("digest-sha256")
        self.filename = disposition_filename(response.headers.get("content-disposition"))
        self.size = 0
        self._digest = hashlib.sha256()
        self._on_progress = on_progress
        if on_progress is not None:
            on_progress(0, self.total)

    def add(self, chunk: bytes) -> bytes:
        self._digest.update(chunk)
        self.size += len(chunk)
        if self._on_progress is not None:
            self._on_progress(self.size, self.total)
        return chunk

    def verify(self) -> str:
        actual = self._digest.hexdigest()
        if self.total is not None and self.size != self.total:
            raise UnexpectedAnswerError(
                f"the download ended after {self.size} of {self.total} bytes"
            )
        check_digest(self.expected, actual)
        return actual


def parse_sse(lines: Iterable[str]) -> Iterator[SseEvent]:
    """The events of a whole text/event-stream, given line by line."""
    decoder = SseDecoder()
    for line in lines:
        found = decoder.line(line)
        if found is not None:
            yield found
