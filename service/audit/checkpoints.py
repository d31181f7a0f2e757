"""The audit log's stored checkpoints, with the cosignatures partners' witnesses returned.

This module does not sign checkpoints (``service.audit.sequencer``) nor collect cosignatures
(``service.audit.submission``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from crypto.note import (
    Note,
    parse_note,
    parse_signature_lines,
)
from service.audit.models import AuditCheckpoint, AuditCosignature
from service.errors import NotFoundError

__all__ = [
    "StoredCheckpoint",
    "checkpoint_with_cosignatures",
    "get_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
]

_checkpoints = AuditCheckpoint.__table__  # type: ignore[attr-defined]
_cosignatures = AuditCosignature.__table__  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------
# Checkpoints


@dataclass(frozen=True)
class StoredCheckpoint:
    size: int
    root: bytes
    note: bytes  # the log's signed note, with every stored cosignature appended
    created_at: datetime
    cosigners: tuple[str, ...]  # partner node ids whose cosignature is attached


def checkpoint_with_cosignatures(note: str, lines: Iterable[str]) -> bytes:
    """Append cosignature lines to a signed note (C2SP: they are more signature lines)."""
    block = "".join(lines)
    parsed = parse_note(note.encode("utf-8"))
    if not block:
        return parsed.to_bytes()
    extra = parse_signature_lines(block)
    return Note(parsed.text, parsed.signatures + extra).to_bytes()


def _stored(session: Session, rows: Sequence[Any]) -> list[StoredCheckpoint]:
    sizes = [int(r[0]) for r in rows]
    cosigs: dict[int, list[tuple[str, str]]] = {}
    if sizes:
        for size, witness, line in session.execute(
            sa.select(
                _cosignatures.c.checkpoint_size, _cosignatures.c.witness, _cosignatures.c.line
            )
            .where(_cosignatures.c.checkpoint_size.in_(sizes))
            .order_by(_cosignatures.c.witness)
        ):
            cosigs.setdefault(int(size), []).append((witness, line))
    out = []
    for size, root, note, created_at in rows:
        mine = cosigs.get(int(size), [])
        out.append(
            StoredCheckpoint(
                size=int(size),
                root=bytes(root),
                note=checkpoint_with_cosignatures(note, (line for _w, line in mine)),
                created_at=created_at,
                cosigners=tuple(w for w, _l in mine),
            )
        )
    return out


_CP_COLUMNS = (
    _checkpoints.c.size,
    _checkpoints.c.root,
    _checkpoints.c.note,
    _checkpoints.c.created_at,
)


def latest_checkpoint(session: Session, *, min_cosignatures: int = 0) -> StoredCheckpoint:
    """The newest checkpoint (with at least ``min_cosignatures`` cosignatures)."""
    query = sa.select(*_CP_COLUMNS).order_by(_checkpoints.c.size.desc()).limit(1)
    if min_cosignatures > 0:
        counted = (
            sa.select(_cosignatures.c.checkpoint_size)
            .group_by(_cosignatures.c.checkpoint_size)
            .having(sa.func.count() >= min_cosignatures)
        )
        query = query.where(_checkpoints.c.size.in_(counted))
    rows = session.execute(query).all()
    if not rows:
        raise NotFoundError(
            "no checkpoint yet"
            if min_cosignatures == 0
            else f"no checkpoint has {min_cosignatures} cosignature(s) yet"
        )
    return _stored(session, rows)[0]


def get_checkpoint(session: Session, size: int) -> StoredCheckpoint:
    rows = session.execute(sa.select(*_CP_COLUMNS).where(_checkpoints.c.size == size)).all()
    if not rows:
        raise NotFoundError(f"no checkpoint of size {size}")
    return _stored(session, rows)[0]


def list_checkpoints(
    session: Session, *, after: int | None, limit: int, upto: int | None = None
) -> list[StoredCheckpoint]:
    """Checkpoints in size order, after size ``after`` (exclusive), up to ``upto`` (inclusive)."""
    query = sa.select(*_CP_COLUMNS).order_by(_checkpoints.c.size).limit(limit)
    if after is not None:
        query = query.where(_checkpoints.c.size > after)
    if upto is not None:
        query = query.where(_checkpoints.c.size <= upto)
    return _stored(session, session.execute(query).all())
