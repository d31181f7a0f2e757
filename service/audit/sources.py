"""Where ``entente audit verify`` reads a log from: a node's ``/audit/v1`` API, or its database.

Both implement :class:`service.audit.verify.LogSource`. Neither is trusted: the verifier
recomputes every leaf hash and checks every root against signed checkpoints. Failures to read
become one error, :class:`AuditSourceError`, with a message fit for one line on a terminal.

A node being audited may be hostile, and so may a witness at a URL it names, so every answer
read over HTTP here (and by ``entente audit``) is bounded: read as it comes off the wire, never
inflated (a content encoding is refused: a few KiB of zstd can inflate to gigabytes), up to a
cap for its kind (:func:`fetch`), within a deadline (:data:`ANSWER_SECONDS`,
:data:`WITNESS_SECONDS`) and at a minimum rate (:func:`body_chunks`); an export stream must stop
after the entries asked for. What is not bounded here: the time a node takes to send its head
(each read waits at most the client's read timeout, but a head trickled a byte at a time within
it is only bounded by the HTTP parser's head limit), and the number of checkpoints a node lists
(the verifier keeps them all).
"""

from __future__ import annotations

import base64
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from crypto import strict_json
from crypto.note import MAX_NOTE_BYTES, NoteVerifier
from service.audit.checkpoints import list_checkpoints
from service.audit.entries import entry_columns, row_mapping, row_object, select_entry_rows
from service.audit.errors import AuditSourceError
from service.audit.hashing import hash_sqlite_range, sqlite_quotes_like_python
from service.audit.leaves import (
    PARALLEL_MIN,
    ROW_CHUNK,
    HashRange,
    LeafBatch,
    batches_from_rows,
    hash_range,
    parallel_batches,
    worker_count,
)
from service.audit.models import AuditCheckpoint
from service.audit.rotations import ROTATION_KIND
from service.audit.tree import consistency_proof
from service.audit.verify import WitnessView
from service.db import Database
from service.federation.paced import paced
from service.models import AuditEntry

__all__ = [
    "ANSWER_SECONDS",
    "IDENTITY",
    "MAX_ANSWER_BYTES",
    "MAX_PROBLEM_BYTES",
    "MIN_RATE",
    "RATE_WINDOW_SECONDS",
    "WITNESS_SECONDS",
    "DatabaseSource",
    "HttpSource",
    "ask_witness",
    "body_chunks",
    "fetch",
    "problem_detail",
    "read_capped",
]

_PAGE = 500  # checkpoints per request or query
_ENTRY_CHUNK = 20_000  # entries per query
_MAX_LINE = 1 << 20  # bytes in one exported entry line

MAX_ANSWER_BYTES = strict_json.DEFAULT_LIMITS.max_bytes  # bytes of one JSON answer (a page)
MAX_PROBLEM_BYTES = 1 << 16  # bytes of an error answer read for its problem detail
ANSWER_SECONDS = 120.0  # seconds one answer may take, from its request to its last byte
WITNESS_SECONDS = 20.0  # the same for a witness's answer (asked one after the other)
MIN_RATE = 1024  # bytes per second a body must average over each window below
RATE_WINDOW_SECONDS = 10.0  # seconds spent waiting for a body, per window
IDENTITY = {"Accept-Encoding": "identity"}  # answers as sent: nothing to inflate


_entries = AuditEntry.__table__  # type: ignore[attr-defined]
_checkpoints = AuditCheckpoint.__table__  # type: ignore[attr-defined]


class DatabaseSource:
    """A node's log read straight from its database (``entente audit verify --home``)."""

    def __init__(
        self,
        db: Database,
        *,
        workers: int | None = None,
        parallel_min: int = PARALLEL_MIN,  # entries below which one process hashes them all
        chunk: int = ROW_CHUNK,  # entries per worker task
    ) -> None:
        self._db = db
        self._workers = workers
        self._parallel_min = parallel_min
        self._chunk = chunk

    def checkpoints(self, upto: int | None) -> Iterator[bytes]:
        after: int | None = None
        while True:
            try:
                with self._db.session() as session:
                    page = list_checkpoints(session, after=after, limit=_PAGE, upto=upto)
            except SQLAlchemyError as exc:
                raise AuditSourceError(f"cannot read checkpoints: {exc}") from None
            for cp in page:
                yield cp.note
            if len(page) < _PAGE:
                return
            after = page[-1].size

    def entries(self, start: int | None, end: int) -> Iterator[Mapping[str, Any]]:
        cursor: int | None = None
        while True:
            try:
                with self._db.engine.connect() as conn:
                    rows = select_entry_rows(
                        conn,
                        seq_from=start if cursor is None else None,
                        seq_after=cursor,
                        seq_below=end,
                        limit=_ENTRY_CHUNK,
                    )
            except SQLAlchemyError as exc:
                raise AuditSourceError(f"cannot read entries: {exc}") from None
            yield from map(row_mapping, rows)
            if len(rows) < _ENTRY_CHUNK:
                return
            cursor = int(rows[-1][1])

    def leaf_batches(self, size: int) -> Iterator[LeafBatch]:
        """The verifier's leaf hashes of seqs ``0 .. size - 1``, computed from the rows in worker
        processes for a large log (``workers``: default one per CPU)."""
        workers = self._workers if self._workers is not None else worker_count()
        try:
            if workers > 1 and size >= self._parallel_min:
                yield from parallel_batches(
                    *self._hash_range(), size, workers=workers, chunk=self._chunk
                )
            else:
                yield from batches_from_rows(self._db.engine.connect, size)
        except (SQLAlchemyError, sqlite3.Error) as exc:  # sqlite3's: from a hashing worker
            raise AuditSourceError(f"cannot read entries: {exc}") from None

    def _hash_range(self) -> tuple[HashRange, tuple[Any, ...]]:
        """What each worker runs: on SQLite, plain ``sqlite3`` on the file, letting SQLite build
        each leaf if its JSON quoting is the specification's; else SQLAlchemy on the URL."""
        url = self._db.engine.url
        if self._db.is_sqlite and url.database and Path(url.database).is_file():
            return hash_sqlite_range, (url.database, sqlite_quotes_like_python())
        return hash_range, (url.render_as_string(hide_password=False),)

    def consistency_proof(self, old: int, new: int) -> list[bytes]:
        with self._db.session() as session:
            return consistency_proof(session, old=old, new=new)

    def rotations(self) -> list[Mapping[str, Any]]:
        """The sequenced ``key.rotated`` entries (the log's key history), in seq order."""
        query = (
            sa.select(*entry_columns())
            .where(_entries.c.kind == ROTATION_KIND, _entries.c.seq.is_not(None))
            .order_by(_entries.c.seq)
        )
        try:
            with self._db.engine.connect() as conn:
                return [row_object(row) for row in conn.execute(query)]
        except SQLAlchemyError as exc:
            raise AuditSourceError(f"cannot read entries: {exc}") from None

    def uncovered(self, size: int) -> tuple[int, int] | None:
        # One statement, one snapshot: the latest checkpoint and the entries beyond it, so that
        # a node sequencing while we read is not mistaken for a tampered table.
        latest = sa.select(sa.func.coalesce(sa.func.max(_checkpoints.c.size), 0)).scalar_subquery()
        query = (
            sa.select(_entries.c.id, _entries.c.seq)
            .where(_entries.c.seq >= latest)
            .order_by(_entries.c.seq)
            .limit(1)
        )
        with self._db.engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else (int(row[1]), int(row[0]))


def _what(response: httpx.Response) -> str:
    return f"{response.request.method} {response.request.url.path}"


def body_chunks(response: httpx.Response) -> Iterator[bytes]:
    """The body of ``response`` as it comes off the wire, never inflated (an answer in a content
    encoding is refused), ended with :class:`AuditSourceError` once a window of
    :data:`RATE_WINDOW_SECONDS` spent waiting for it brought less than :data:`MIN_RATE` bytes
    a second (the rule of ``service.federation.paced`` for a partner's answers)."""
    coding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if coding not in ("", "identity"):
        raise AuditSourceError(
            f"{_what(response)} answered in the {coding[:40]!r} content encoding, which was "
            "not asked for"
        )
    # A response made in memory (a test's transport) was read whole when it was made.
    chunks = iter((response.content,)) if response.is_stream_consumed else response.iter_raw()

    def too_slow(got: int, waited: float) -> Exception:
        return AuditSourceError(
            f"{_what(response)} sent {got} bytes in {waited:.1f} s, under the minimum of "
            f"{MIN_RATE} bytes per second"
        )

    # MIN_RATE and RATE_WINDOW_SECONDS read when called: tests shorten them.
    yield from paced(
        chunks, min_rate=MIN_RATE, window_seconds=RATE_WINDOW_SECONDS, too_slow=too_slow
    )


def read_capped(
    response: httpx.Response, max_bytes: int, *, seconds: float | None = None, since: float = 0.0
) -> bytes | None:
    """The body of ``response`` (:func:`body_chunks`), or None once it passes ``max_bytes``
    (read no further); with ``seconds``, :class:`AuditSourceError` if it is still arriving that
    many seconds after ``since`` (``time.monotonic()``)."""
    body = bytearray()
    for chunk in body_chunks(response):
        if seconds is not None and time.monotonic() - since > seconds:
            raise AuditSourceError(f"{_what(response)} took longer than {seconds:g} s")
        body += chunk
        if len(body) > max_bytes:
            return None
    return bytes(body)


def fetch(
    client: httpx.Client,
    url: str,
    *,
    max_bytes: int,
    params: Mapping[str, Any] | None = None,
    seconds: float | None = None,
) -> tuple[httpx.Response, bytes | None]:
    """GET ``url`` and its body, None past ``max_bytes`` (an error answer is read up to
    :data:`MAX_PROBLEM_BYTES` only), read within ``seconds`` of the request (default
    :data:`ANSWER_SECONDS`) as :func:`read_capped` does. A transport failure is left to the
    caller (``httpx.HTTPError``)."""
    seconds = ANSWER_SECONDS if seconds is None else seconds
    since = time.monotonic()
    with client.stream("GET", url, params=params, headers=IDENTITY) as response:
        cap = max_bytes if response.status_code < 400 else min(max_bytes, MAX_PROBLEM_BYTES)
        return response, read_capped(response, cap, seconds=seconds, since=since)


def problem_detail(response: httpx.Response, body: bytes | None) -> str:
    """What an error answer says: its problem document's ``detail``, else its reason phrase;
    at most 300 characters, unsanitised (the CLI prints it as outside text)."""
    detail = response.reason_phrase
    try:
        problem = None if body is None else strict_json.loads(body)
    except ValueError:  # strict_json's errors, a document too deep among them
        problem = None
    if isinstance(problem, dict) and isinstance(problem.get("detail"), str):
        detail = problem["detail"]
    return detail[:300]


class HttpSource:
    """A node's log read through its ``/audit/v1`` API with an auditor token."""

    def __init__(self, client: httpx.Client) -> None:
        self._client = client

    def get(self, path: str, *, max_bytes: int = MAX_ANSWER_BYTES, **params: Any) -> bytes:
        """The body of the answer to GET ``path`` with query ``params`` (bounded:
        :func:`fetch`), if it is not an error and has at most ``max_bytes`` bytes; else
        :class:`AuditSourceError`."""
        query = {k: v for k, v in params.items() if v is not None}
        try:
            response, body = fetch(self._client, path, max_bytes=max_bytes, params=query)
        except httpx.HTTPError as exc:
            raise AuditSourceError(f"cannot reach the node: {type(exc).__name__}: {exc}") from None
        _raise_for(response, body)
        if body is None:
            raise AuditSourceError(f"GET {path}: the answer is larger than {max_bytes} bytes")
        return body

    def get_json(self, path: str, **params: Any) -> Any:
        body = self.get(path, **params)
        try:
            return strict_json.loads(body)
        except ValueError:
            raise AuditSourceError(f"{path} did not answer JSON") from None

    def checkpoints(self, upto: int | None) -> Iterator[bytes]:
        after: int | None = None
        while True:
            data = self.get_json("/audit/v1/checkpoints", after=after, limit=_PAGE)
            try:
                page = data["checkpoints"]
                nxt = data["next"]
                notes = [(int(cp["size"]), str(cp["note"]).encode("utf-8")) for cp in page]
            except (KeyError, TypeError, ValueError, OverflowError):
                raise AuditSourceError("the node's checkpoint list is malformed") from None
            for size, note in notes:
                if upto is not None and size > upto:
                    return
                yield note
            if nxt is None or not notes:
                return
            after = notes[-1][0]

    def entries(self, start: int | None, end: int) -> Iterator[Mapping[str, Any]]:
        first = start or 0
        params = {"start": first, "size": end}
        try:
            with self._client.stream(
                "GET", "/audit/v1/export", params=params, headers=IDENTITY
            ) as response:
                if response.status_code != 200:
                    raise _refusal(response, read_capped(response, MAX_PROBLEM_BYTES))
                yield from _entry_lines(body_chunks(response), max(end - first, 0))
        except httpx.HTTPError as exc:
            raise AuditSourceError(f"the export failed: {type(exc).__name__}: {exc}") from None

    def consistency_proof(self, old: int, new: int) -> list[bytes]:
        data = self.get_json("/audit/v1/proof/consistency", old=old, new=new)
        try:
            return [base64.b64decode(h, validate=True) for h in data["proof"]]
        except (KeyError, TypeError, ValueError):  # binascii.Error is a ValueError
            raise AuditSourceError("the node's consistency proof is malformed") from None

    def uncovered(self, size: int) -> tuple[int, int] | None:
        return None  # the API only serves what checkpoints cover

    def rotations(self) -> list[Mapping[str, Any]]:
        """The sequenced ``key.rotated`` entries (the log's key history), in seq order."""
        out: list[Mapping[str, Any]] = []
        after: int | None = None
        for _page in range(1000):
            data = self.get_json("/audit/v1/entries", kind=ROTATION_KIND, after=after)
            try:
                page = [{k: v for k, v in e.items() if k != "leaf_hash"} for e in data["entries"]]
                nxt = data["next"]
                after = int(page[-1]["seq"]) if page else None
            except (KeyError, TypeError, AttributeError, ValueError, OverflowError):
                raise AuditSourceError("the node's entry list is malformed") from None
            out.extend(page)
            if nxt is None or not page:
                return out
        raise AuditSourceError("the node lists too many key rotations")


def _entry_lines(chunks: Iterable[bytes], count: int) -> Iterator[Mapping[str, Any]]:
    """The entries of an export stream, one JSON object a line, and no more than ``count``:
    each byte is looked at once (a long line arriving in small pieces is not copied again and
    again)."""
    pending = bytearray()
    done = 0
    for chunk in chunks:
        scan = len(pending)  # where a new line may start: the bytes before hold none
        pending += chunk
        begin = 0
        while (end := pending.find(b"\n", scan)) >= 0:
            if done == count:
                raise AuditSourceError(f"the export sent more than the {count} entries asked for")
            yield _parse_line(pending[begin:end])
            done += 1
            begin = scan = end + 1
        del pending[:begin]
        if len(pending) > _MAX_LINE:
            raise AuditSourceError("an exported entry line is too long")
    if pending.strip():
        raise AuditSourceError("the export ended in the middle of a line")


def _parse_line(line: bytes | bytearray) -> Mapping[str, Any]:
    try:
        obj = strict_json.loads(line)
    except ValueError:  # strict_json's errors (UnicodeDecodeError is one too)
        raise AuditSourceError("an exported entry is not a JSON object") from None
    if not isinstance(obj, dict):
        raise AuditSourceError("an exported entry is not a JSON object")
    return obj


def _refusal(response: httpx.Response, body: bytes | None) -> AuditSourceError:
    return AuditSourceError(
        f"{_what(response)} answered {response.status_code}: {problem_detail(response, body)}"
    )


def _raise_for(response: httpx.Response, body: bytes | None) -> None:
    if response.status_code >= 400:
        raise _refusal(response, body)


WITNESS_TIMEOUT = httpx.Timeout(10.0, connect=5.0)  # seconds per read from one witness


def ask_witness(
    verifier: NoteVerifier,
    url: str | None,
    origin: str,
    *,
    client: httpx.Client | None = None,
) -> WitnessView:
    """Ask a witness (the node at ``url``) for the latest checkpoint it cosigned for ``origin``
    (``GET /witness/v1/checkpoint``). Nothing it answers is trusted: the verifier checks the
    log's signature and the witness's cosignature, and the answer is read bounded (:func:`fetch`:
    a note's size, :data:`WITNESS_SECONDS`). A witness that cannot be asked is reported as such
    (``WitnessView.error``), not as a failure of the log."""
    if not url or not url.startswith(("http://", "https://")):
        return WitnessView(verifier, None, "its URL is unknown")
    http = client or httpx.Client(timeout=WITNESS_TIMEOUT)
    try:
        response, note = fetch(
            http,
            url.rstrip("/") + "/witness/v1/checkpoint",
            max_bytes=MAX_NOTE_BYTES,
            params={"origin": origin},
            seconds=WITNESS_SECONDS,
        )
    except httpx.HTTPError as exc:
        return WitnessView(verifier, None, f"unreachable ({type(exc).__name__})")
    except AuditSourceError as exc:
        return WitnessView(verifier, None, exc.message)
    finally:
        if client is None:
            http.close()
    if response.status_code == 404:
        return WitnessView(verifier, None, "it holds no checkpoint of this log")
    if response.status_code != 200:
        return WitnessView(verifier, None, f"it answered {response.status_code}")
    if note is None:
        return WitnessView(verifier, None, f"its answer is larger than {MAX_NOTE_BYTES} bytes")
    return WitnessView(verifier, note)
