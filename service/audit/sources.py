"""Where ``entente audit verify`` reads a log from: a node's ``/audit/v1`` API, or its database.

Both implement :class:`service.audit.verify.LogSource`. Neither is trusted: the verifier
recomputes every leaf hash and checks every root against signed checkpoints. Failures to read
become one error, :class:`AuditSourceError`, with a message fit for one line on a terminal.
"""

from __future__ import annotations

import base64
import binascii
import json
import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from crypto import strict_json
from crypto.note import NoteVerifier
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
from service.models import AuditEntry

__all__ = ["DatabaseSource", "HttpSource", "ask_witness"]

_PAGE = 500  # checkpoints per request or query
_ENTRY_CHUNK = 20_000  # entries per query
_MAX_LINE = 1 << 20  # bytes in one exported entry line


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


class HttpSource:
    """A node's log read through its ``/audit/v1`` API with an auditor token."""

    def __init__(self, client: httpx.Client) -> None:
        self._client = client

    def _get(self, path: str, **params: Any) -> httpx.Response:
        try:
            response = self._client.get(
                path, params={k: v for k, v in params.items() if v is not None}
            )
        except httpx.HTTPError as exc:
            raise AuditSourceError(f"cannot reach the node: {type(exc).__name__}: {exc}") from None
        _raise_for(response)
        return response

    def get_json(self, path: str, **params: Any) -> Any:
        response = self._get(path, **params)
        try:
            return strict_json.loads(response.content)
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
            except (KeyError, TypeError, ValueError):
                raise AuditSourceError("the node's checkpoint list is malformed") from None
            for size, note in notes:
                if upto is not None and size > upto:
                    return
                yield note
            if nxt is None or not notes:
                return
            after = notes[-1][0]

    def entries(self, start: int | None, end: int) -> Iterator[Mapping[str, Any]]:
        params = {"start": start or 0, "size": end}
        try:
            with self._client.stream("GET", "/audit/v1/export", params=params) as response:
                if response.status_code != 200:
                    response.read()
                    _raise_for(response)
                buffer = b""
                for chunk in response.iter_bytes():
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    if len(buffer) > _MAX_LINE:
                        raise AuditSourceError("an exported entry line is too long")
                    for line in lines:
                        yield _parse_line(line)
                if buffer.strip():
                    raise AuditSourceError("the export ended in the middle of a line")
        except httpx.HTTPError as exc:
            raise AuditSourceError(f"the export failed: {type(exc).__name__}: {exc}") from None

    def consistency_proof(self, old: int, new: int) -> list[bytes]:
        data = self.get_json("/audit/v1/proof/consistency", old=old, new=new)
        try:
            return [base64.b64decode(h, validate=True) for h in data["proof"]]
        except (KeyError, TypeError, binascii.Error):
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
            except (KeyError, TypeError, AttributeError):
                raise AuditSourceError("the node's entry list is malformed") from None
            out.extend(page)
            if nxt is None or not page:
                return out
            after = int(page[-1]["seq"])
        raise AuditSourceError("the node lists too many key rotations")


def _parse_line(line: bytes) -> Mapping[str, Any]:
    try:
        obj = strict_json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise AuditSourceError("an exported entry is not a JSON object") from None
    if not isinstance(obj, dict):
        raise AuditSourceError("an exported entry is not a JSON object")
    return obj


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    detail = response.reason_phrase
    try:
        problem = response.json()
        if isinstance(problem, dict) and isinstance(problem.get("detail"), str):
            detail = problem["detail"]
    except ValueError:
        pass
    raise AuditSourceError(
        f"{response.request.method} {response.request.url.path} answered "
        f"{response.status_code}: {detail[:300]}"
    )


WITNESS_TIMEOUT = httpx.Timeout(10.0, connect=5.0)  # seconds to ask one witness
_MAX_NOTE = 1 << 17  # bytes of a checkpoint a witness serves


def ask_witness(
    verifier: NoteVerifier,
    url: str | None,
    origin: str,
    *,
    client: httpx.Client | None = None,
) -> WitnessView:
    """Ask a witness (the node at ``url``) for the latest checkpoint it cosigned for ``origin``
    (``GET /witness/v1/checkpoint``). Nothing it answers is trusted: the verifier checks the
    log's signature and the witness's cosignature. A witness that cannot be asked is reported
    as such (``WitnessView.error``), not as a failure of the log."""
    if not url or not url.startswith(("http://", "https://")):
        return WitnessView(verifier, None, "its URL is unknown")
    http = client or httpx.Client(timeout=WITNESS_TIMEOUT)
    try:
        response = http.get(url.rstrip("/") + "/witness/v1/checkpoint", params={"origin": origin})
    except httpx.HTTPError as exc:
        return WitnessView(verifier, None, f"unreachable ({type(exc).__name__})")
    finally:
        if client is None:
            http.close()
    if response.status_code == 404:
        return WitnessView(verifier, None, "it holds no checkpoint of this log")
    if response.status_code != 200 or len(response.content) > _MAX_NOTE:
        return WitnessView(verifier, None, f"it answered {response.status_code}")
    return WitnessView(verifier, response.content)
