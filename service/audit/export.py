"""Writing export bundles (``service.audit.bundle``) from the node's database.

:func:`plan_export` checks an export's filter against the latest signed checkpoint (untrusted
input in, a typed plan or an :class:`InvalidInputError` out) and :func:`record_export` puts the
export on record; :func:`bundle_lines` then streams the bundle: the header, the matching entries
read in chunks (each chunk in its own short transaction, with its inclusion proofs against the
plan's checkpoint, so memory stays flat) and the trailer. The API (``GET /audit/v1/bundle``),
the console (``/ui/export``) and ``entente audit export --home`` all write through here.

This module does not verify bundles (``service.audit.bundle.verify_bundle``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from service.audit.bundle import MAX_KINDS, ExportFilter, entry_line, header_line, trailer_line
from service.audit.checkpoints import StoredCheckpoint, latest_checkpoint
from service.audit.entries import encode_leaf, entry_columns, format_time, log_origin, row_object
from service.audit.log import EVENT_KINDS, record
from service.audit.tree import inclusion_proof
from service.errors import InvalidInputError, NotFoundError
from service.models import AuditEntry

__all__ = ["ExportPlan", "bundle_lines", "plan_export", "record_export"]

_entries = AuditEntry.__table__  # type: ignore[attr-defined]
CHUNK = 500  # entries read (and proved) per transaction


@dataclass(frozen=True)
class ExportPlan:
    node_id: str
    checkpoint: StoredCheckpoint  # the latest when the export began: every proof is against it
    filter: ExportFilter


def _artifact(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if len(value) > 64 or not value.isprintable():
        raise InvalidInputError("artifact is an artifact id (at most 64 printable characters)")
    return value


def plan_export(
    session: Session,
    *,
    node_id: str,
    first: int | None,
    last: int | None,
    kinds: Sequence[str],
    artifact: str | None,
    max_entries: int,
) -> ExportPlan:
    """The export of entries ``first`` to ``last`` (both included; default: the whole log as of
    its latest checkpoint) of ``kinds`` (any when empty) about ``artifact``, proved against the
    latest checkpoint. A range must lie within that checkpoint and span at most
    ``max_entries`` entries."""
    wanted = sorted(set(kinds))
    unknown = [k for k in wanted if k not in EVENT_KINDS]
    if unknown:
        raise InvalidInputError(f"unknown event kind {unknown[0][:64]!r}")
    if len(wanted) > MAX_KINDS:
        raise InvalidInputError(f"at most {MAX_KINDS} kinds")
    about = _artifact(artifact)
    try:
        cp = latest_checkpoint(session)
    except NotFoundError:
        raise NotFoundError("the log has no signed checkpoint yet: nothing can be proved") from None
    if cp.size == 0:
        raise NotFoundError("the log's latest checkpoint is empty: nothing can be proved")
    start = 0 if first is None else first
    end = cp.size - 1 if last is None else last
    if start < 0 or end < 0:
        raise InvalidInputError("from and to are log indexes (whole numbers from 0)")
    if end >= cp.size:
        raise InvalidInputError(
            f"to is {end}, but the latest checkpoint covers entries 0 to {cp.size - 1}"
        )
    if start > end:
        raise InvalidInputError(f"from ({start}) is after to ({end})")
    if end - start + 1 > max_entries:
        raise InvalidInputError(
            f"an export spans at most {max_entries} entries of the log; "
            f"from {start} to {end} is {end - start + 1}: give a narrower from/to"
        )
    return ExportPlan(node_id, cp, ExportFilter(start, end, tuple(wanted), about))


def record_export(
    session: Session, plan: ExportPlan, *, actor: str, via: str, now: datetime
) -> None:
    """Put the export on record (``audit.exported``) in ``session``'s transaction."""
    record(
        session,
        kind="audit.exported",
        actor=actor,
        artifact_id=plan.filter.artifact,
        detail={
            "bundle": True,
            "filter": plan.filter.to_json(),
            "size": plan.checkpoint.size,
            "via": via,
        },
        now=now,
    )


def _query(flt: ExportFilter, after: int) -> Any:
    c = _entries.c
    query = sa.select(*entry_columns()).where(c.seq > after, c.seq <= flt.last)
    if flt.kinds:
        query = query.where(c.kind.in_(flt.kinds))
    if flt.artifact is not None:
        query = query.where(c.artifact_id == flt.artifact)
    return query.order_by(c.seq).limit(CHUNK)


def bundle_lines(
    session_factory: Callable[[], Any], plan: ExportPlan, *, now: datetime
) -> Iterator[bytes]:
    """The bundle of ``plan``, line by line (each line ends with a newline)."""
    cp, flt = plan.checkpoint, plan.filter
    yield header_line(
        node_id=plan.node_id, origin=log_origin(plan.node_id), checkpoint=cp.note,
        size=cp.size, root=cp.root, flt=flt, exported_at=format_time(now),
    )  # fmt: skip
    cursor, count = flt.first - 1, 0
    while True:
        with session_factory() as session:
            rows = session.execute(_query(flt, cursor)).all()
            lines = []
            for row in rows:
                entry = row_object(row)
                seq = int(entry["seq"])
                proof = inclusion_proof(session, index=seq, size=cp.size)
                lines.append(entry_line(seq=seq, leaf=encode_leaf(entry), proof=proof))
        yield from lines
        count += len(lines)
        if len(rows) < CHUNK:
            break
        cursor = int(rows[-1][1])
    yield trailer_line(count)
