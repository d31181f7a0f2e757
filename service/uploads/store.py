"""The uploads' rows and segments: creating, appending, reopening, finishing, discarding and
expiring an upload (``service.uploads``, whose docstring says what an upload is). Reading a
stored body back is ``service.uploads.reading``."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from crypto import age
from service.blob_journal import IN_FLIGHT, deletion_rows
from service.errors import (
    EntenteError,
    NotFoundError,
    RateLimitedError,
    TooLargeError,
    UploadCompletedError,
    UploadLengthInconsistentError,
    UploadOffsetMismatchError,
)
from service.models import Token, Upload, UploadSegment
from service.node import Node
from service.tokens import Principal

__all__ = [
    "READ_BYTES",
    "SEGMENTS",
    "UPLOADS",
    "UploadState",
    "append",
    "create",
    "discard",
    "finish",
    "label",
    "purge_expired",
    "reopen",
    "state",
]

log = logging.getLogger("entente.uploads")

UPLOADS: sa.Table = Upload.__table__  # type: ignore[attr-defined]
SEGMENTS: sa.Table = UploadSegment.__table__  # type: ignore[attr-defined]
TOKENS: sa.Table = Token.__table__  # type: ignore[attr-defined]
ID_PREFIX = "upl_"
READ_BYTES = 1 << 20  # bytes of a segment read from the store at a time


@dataclass(frozen=True)
class UploadState:
    """What a client may know of an upload: its offset, announced length, and limits."""

    id: str
    content_type: str
    received: int  # bytes stored: the offset of the next append
    length: int | None  # bytes of the whole body, when announced
    complete: bool
    expires_at: datetime

    @classmethod
    def of(cls, m: Mapping[str, Any]) -> UploadState:
        return cls(m["id"], m["content_type"], m["received"], m["length"], bool(m["complete"]),
                   m["expires_at"])  # fmt: skip


def _not_found() -> NotFoundError:
    return NotFoundError("no such upload (or it expired, or another token created it)")


def _offsets(*, expected: int | None, provided: int) -> dict[str, Any]:
    """The members of the draft's mismatching-upload-offset problem."""
    return {"expected-offset": expected, "provided-offset": provided}


def create(
    node: Node, *, principal: Principal, content_type: str, length: int | None, max_size: int
) -> UploadState:
    """A new empty upload of ``principal``; refused past ``max_open_uploads`` or ``max_size``."""
    settings = node.settings
    if length is not None and length > max_size:
        raise TooLargeError(f"the upload is larger than the limit of {max_size} bytes")
    now = node.now()
    upload_id = ID_PREFIX + secrets.token_hex(16)
    expires = now + timedelta(seconds=settings.upload_expiry_seconds)
    values = {
        "id": upload_id, "principal": principal.token_id, "content_type": content_type,
        "received": 0, "length": length, "complete": False, "created_at": now,
        "expires_at": expires,
    }  # fmt: skip
    with node.db.engine.begin() as conn:
        # One creation at a time per token (its row locked; on SQLite the write lock taken
        # before the count): concurrent creations would otherwise all count the same uploads.
        conn.execute(
            sa.update(TOKENS).where(TOKENS.c.id == principal.token_id).values(id=TOKENS.c.id)
        )
        open_count = conn.execute(
            sa.select(sa.func.count())
            .select_from(UPLOADS)
            .where(
                UPLOADS.c.principal == principal.token_id,
                UPLOADS.c.expires_at > now,
                sa.or_(  # still open, or complete and still holding its bytes
                    UPLOADS.c.complete == sa.false(),
                    sa.exists().where(SEGMENTS.c.upload_id == UPLOADS.c.id),
                ),
            )
        ).scalar_one()
        if open_count >= settings.max_open_uploads:
            raise RateLimitedError(
                f"this token has {open_count} uploads open, the most it may have "
                "(ENTENTE_MAX_OPEN_UPLOADS): complete or cancel one first"
            )
        conn.execute(sa.insert(UPLOADS).values(**values))
    return UploadState(upload_id, content_type, 0, length, False, expires)


def state(node: Node, upload_id: str, *, principal: Principal) -> UploadState:
    """The upload ``upload_id`` of ``principal``; NotFoundError for anyone else's, or none."""
    with node.db.engine.connect() as conn:
        row = conn.execute(
            sa.select(UPLOADS).where(
                UPLOADS.c.id == upload_id,
                UPLOADS.c.principal == principal.token_id,
                UPLOADS.c.expires_at > node.now(),
            )
        ).first()
    if row is None:
        raise _not_found()
    return UploadState.of(dict(row._mapping))


class _Received:
    """An append's body as a reader for ``age.encrypt``: counted, bounded, and ended early (its
    bytes so far kept) when the client interrupts it with one of ``interruptions``."""

    def __init__(
        self,
        pull: Callable[[], bytes],
        room: int,
        interruptions: tuple[type[BaseException], ...],
        too_large: EntenteError,
    ) -> None:
        self._pull = pull
        self._room = room
        self._interruptions = interruptions
        self._too_large = too_large
        self._held = b""
        self.size = 0
        self.interrupted: BaseException | None = None

    def read(self, n: int = -1, /) -> bytes:
        if not self._held and self.interrupted is None:
            try:
                self._held = self._pull()
            except self._interruptions as exc:
                self.interrupted = exc
        data = self._held if n < 0 else self._held[:n]
        self._held = self._held[len(data) :]
        self.size += len(data)
        if self.size > self._room:
            raise self._too_large
        return data


def append(
    node: Node,
    upload_id: str,
    *,
    principal: Principal,
    offset: int,
    pull: Callable[[], bytes],
    complete: bool,
    max_size: int,
    interruptions: tuple[type[BaseException], ...] = (),
) -> UploadState:
    """Append the body ``pull`` gives at ``offset`` (which must be the bytes stored), and with
    ``complete`` mark it the last append. An interruption in ``interruptions`` keeps the bytes
    received, then is raised again."""
    found = state(node, upload_id, principal=principal)
    if found.complete:
        raise UploadCompletedError(f"the upload {upload_id} is complete: nothing more is taken")
    if offset != found.received:
        raise UploadOffsetMismatchError(
            f"the append starts at byte {offset}, the upload has {found.received} bytes: "
            "resume from its offset (HEAD)",
            **_offsets(expected=found.received, provided=offset),
        )
    limit = max_size if found.length is None else min(found.length, max_size)
    why: EntenteError = (
        TooLargeError(f"the upload is larger than the limit of {max_size} bytes")
        if limit == max_size
        else UploadLengthInconsistentError(
            f"the upload is longer than its Upload-Length ({found.length} bytes)"
        )
    )
    body = _Received(pull, limit - offset, interruptions, why)
    digest = _write_segment(node, body, label(upload_id, offset))
    if complete and body.interrupted is None and found.length not in (None, offset + body.size):
        if digest is not None:
            node.blobs.delete(digest)
        raise UploadLengthInconsistentError(
            f"the upload ends at byte {offset + body.size}, not at its Upload-Length "
            f"({found.length} bytes)"
        )
    done = complete and body.interrupted is None
    now = node.now()
    expires = now + timedelta(seconds=node.settings.upload_expiry_seconds)
    try:
        with node.db.engine.begin() as conn:
            moved = conn.execute(
                sa.update(UPLOADS)
                .where(UPLOADS.c.id == upload_id, UPLOADS.c.received == offset,
                       UPLOADS.c.complete == sa.false(), UPLOADS.c.expires_at > now)
                .values(received=offset + body.size, complete=done, expires_at=expires)
            )  # fmt: skip
            if moved.rowcount != 1:
                raise UploadOffsetMismatchError(
                    "another append to this upload came first: resume from its offset (HEAD)",
                    **_offsets(expected=None, provided=offset),
                )
            if digest is not None:
                conn.execute(sa.insert(SEGMENTS).values(
                    upload_id=upload_id, start=offset, size=body.size, digest=digest))  # fmt: skip
                conn.execute(sa.delete(IN_FLIGHT).where(IN_FLIGHT.c.digest == digest))
    except BaseException:
        if digest is not None:
            node.blobs.delete(digest)
        raise
    outcome = "interrupted" if body.interrupted is not None else "last" if done else "appended"
    node.metrics.upload_appends.labels(outcome).inc()
    node.metrics.upload_bytes.inc(body.size)
    if body.interrupted is not None:
        log.info("upload %s: an append was interrupted after %d bytes", upload_id, body.size)
        raise body.interrupted
    return UploadState(upload_id, found.content_type, offset + body.size, found.length, done,
                       expires)  # fmt: skip


def label(upload_id: str, start: int) -> bytes:
    """The first line of a segment's plaintext: the upload and the offset it was written for."""
    return f"entente-upload-segment {upload_id} {start:020d}\n".encode("ascii")


class _Labelled:
    """``label``, then ``body``: the plaintext of a segment."""

    def __init__(self, label: bytes, body: _Received) -> None:
        self._label = label
        self._body = body

    def read(self, n: int = -1, /) -> bytes:
        if self._label:
            data = self._label if n < 0 else self._label[:n]
            self._label = self._label[len(data) :]
            return data
        return self._body.read(n)


def _write_segment(node: Node, body: _Received, label: bytes) -> str | None:
    """Encrypt ``label`` and ``body`` to this node's own identity into a new blob; its digest,
    or None when no byte of ``body`` came."""
    keys = node.keys
    recipient: age.Recipient = (
        keys.identity.recipient if keys.hybrid is None else keys.hybrid.recipient
    )
    writer = node.blobs.writer()
    try:
        age.encrypt(_Labelled(label, body), writer, [recipient])
    except BaseException:
        writer.abort()
        raise
    if body.size == 0:
        writer.abort()
        return None
    return writer.commit()


def reopen(node: Node, upload_id: str) -> None:
    """Take back an upload's last append mark (its bytes stay): the share it was to become
    failed on this side (the blob store or the database unavailable), and the client may send
    the last append again."""
    with node.db.engine.begin() as conn:
        conn.execute(sa.update(UPLOADS).where(UPLOADS.c.id == upload_id).values(complete=False))


def _drop_segments(conn: sa.Connection, upload_id: str) -> list[str]:
    """Delete an upload's segment rows, journaling their blobs for deletion in the same
    transaction (a crash before the store deletes them leaves rows for the sweep)."""
    digests = list(
        conn.execute(
            sa.select(SEGMENTS.c.digest).where(SEGMENTS.c.upload_id == upload_id)
        ).scalars()
    )
    conn.execute(sa.delete(SEGMENTS).where(SEGMENTS.c.upload_id == upload_id))
    if digests:
        conn.execute(sa.insert(IN_FLIGHT), deletion_rows(digests))
    return digests


def finish(node: Node, upload_id: str) -> None:
    """Delete the bytes of an upload whose share was carried out; the row stays, complete, until
    it expires, so that a client whose answer was lost learns from ``HEAD`` that it is done."""
    with node.db.engine.begin() as conn:
        digests = _drop_segments(conn, upload_id)
    for digest in digests:
        node.blobs.delete(digest)


def discard(node: Node, upload_id: str, *, principal: Principal | None = None) -> bool:
    """Delete an upload (``principal``'s only, when given) and its segments; False when there
    was none."""
    where = UPLOADS.c.id == upload_id
    if principal is not None:
        where = sa.and_(where, UPLOADS.c.principal == principal.token_id)
    with node.db.engine.begin() as conn:
        if not conn.execute(sa.delete(UPLOADS).where(where)).rowcount:
            return False
        digests = _drop_segments(conn, upload_id)
    for digest in digests:
        node.blobs.delete(digest)
    return True


def purge_expired(node: Node, *, now: datetime | None = None) -> int:
    """Discard the uploads whose time passed; how many."""
    cutoff = now or node.now()
    with node.db.engine.connect() as conn:
        due = list(
            conn.execute(sa.select(UPLOADS.c.id).where(UPLOADS.c.expires_at <= cutoff)).scalars()
        )
    removed = sum(discard(node, upload_id) for upload_id in due)
    if removed:
        log.info("swept %d expired upload(s)", removed)
    return removed
