"""The audit log's entries: the log's names (checkpoint origin, witness key name), entry objects,
and reading entry rows. Rows are read in seq order, in chunks, each in its own short transaction.

Their canonical encoding (the leaf a verifier recomputes) is ``service.audit.encoding``, whose
names are also importable from here.

This module does not hash, sequence or sign (``service.audit.sequencer``) and does not verify
(``service.audit.verify``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlmodel import Session

from crypto.note import NoteSigner
from service.audit.encoding import (
    ENTRY_FIELDS,
    LEAF_VERSION,
    created_text,
    encode_leaf,
    encode_row,
    entry_rows_sql,
    format_time,
)
from service.models import AuditEntry

if TYPE_CHECKING:
    from service.node import Node


__all__ = [
    "ENTRY_FIELDS",
    "LEAF_VERSION",
    "LOG_ORIGIN_PREFIX",
    "SEQUENCE_BATCH_MAX",
    "WITNESS_NAME_PREFIX",
    "created_text",
    "encode_leaf",
    "encode_row",
    "entry_object",
    "entry_rows_sql",
    "format_time",
    "log_origin",
    "log_signer",
    "node_id_from_origin",
    "row_mapping",
    "select_entry_rows",
    "witness_name",
]


# Entries per sequencing transaction (and so per checkpoint). A round holds SQLite's one write
# lock from its start to its commit, so every other writer waits for it: 2,000 entries hold it
# about 47 ms where 10,000 held it 190 ms (a 20,000-entry backlog in the same 0.37 s either way).
SEQUENCE_BATCH_MAX = 2_000
LOG_ORIGIN_PREFIX = "entente.dev/audit/"  # + node id: the checkpoint origin and log key name
WITNESS_NAME_PREFIX = "entente.dev/witness/"  # + node id: the cosigner key name


def log_origin(node_id: str) -> str:
    """The checkpoint origin of ``node_id``'s log (also the name of its log key)."""
    return f"{LOG_ORIGIN_PREFIX}{node_id}"


def witness_name(node_id: str) -> str:
    """The cosigner name ``node_id`` uses as a witness (tlog-cosignature key name)."""
    return f"{WITNESS_NAME_PREFIX}{node_id}"


def node_id_from_origin(origin: str) -> str | None:
    if not origin.startswith(LOG_ORIGIN_PREFIX):
        return None
    node_id = origin[len(LOG_ORIGIN_PREFIX) :]
    return node_id or None


def log_signer(node: Node) -> NoteSigner:
    """The signer of the node's log's checkpoints: its checkpoint key, which signs nothing else
    (C2SP signed-note), or, on a home made before there was one, its signing key."""
    return NoteSigner(log_origin(node.node_id), node.keys.log_key)


def select_entry_rows(
    session_or_conn: Session | sa.Connection,
    *,
    seq_from: int | None = None,
    seq_after: int | None = None,
    seq_below: int | None = None,
    unsequenced: bool = False,
    limit: int,
) -> list[Any]:
    """Entry rows in the order of :func:`entry_columns`, read with plain driver SQL (the
    per-row cost of result processing would dominate), ``created_at`` as the driver returns it
    (SQLite: the stored text; PostgreSQL: a datetime): feed them to :func:`encode_row` or
    :func:`row_mapping`. Sequenced rows come in seq order, unsequenced ones in id order."""
    conn = session_or_conn.connection() if isinstance(session_or_conn, Session) else session_or_conn
    sql, params = entry_rows_sql(
        conn.dialect.paramstyle,
        seq_from=seq_from,
        seq_after=seq_after,
        seq_below=seq_below,
        unsequenced=unsequenced,
        limit=limit,
    )
    return list(conn.exec_driver_sql(sql, params).all())


def fetch_entry_rows(
    engine: sa.Engine,
    *,
    seq_from: int | None = None,
    seq_after: int | None = None,
    seq_below: int | None = None,
    limit: int,
) -> list[tuple[Any, ...]]:
    """:func:`select_entry_rows` of sequenced rows as the driver's own tuples, on a pooled
    connection used directly: for reading a whole log, where SQLAlchemy's result rows cost
    more per entry than hashing it (the verifier's workers)."""
    sql, params = entry_rows_sql(
        engine.dialect.paramstyle,
        seq_from=seq_from,
        seq_after=seq_after,
        seq_below=seq_below,
        unsequenced=False,
        limit=limit,
    )
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        try:
            cursor.execute(sql, params)
            rows = [tuple(row) for row in cursor.fetchall()]
        finally:
            cursor.close()
        raw.rollback()
    finally:
        raw.close()
    return rows


def row_mapping(row: Sequence[Any]) -> dict[str, Any]:
    """The entry object of a :func:`select_entry_rows` row."""
    return {
        "actor": row[4],
        "artifact_id": row[6],
        "clause": row[10],
        "created_at": created_text(row[2]),
        "decision": row[8],
        "detail": row[11],
        "digest": row[7],
        "id": row[0],
        "kind": row[3],
        "partner": row[5],
        "rule": row[9],
        "seq": row[1],
        "v": LEAF_VERSION,
    }


def entry_object(
    *,
    seq: int,
    id: int,
    created_at: datetime,
    kind: str,
    actor: str,
    partner: str | None,
    artifact_id: str | None,
    digest: str | None,
    decision: str | None,
    rule: str | None,
    clause: str | None,
    detail: str,
) -> dict[str, Any]:
    """The entry as the JSON object that :func:`encode_leaf` encodes (and the API serves)."""
    return {
        "actor": actor,
        "artifact_id": artifact_id,
        "clause": clause,
        "created_at": format_time(created_at),
        "decision": decision,
        "detail": detail,
        "digest": digest,
        "id": id,
        "kind": kind,
        "partner": partner,
        "rule": rule,
        "seq": seq,
        "v": LEAF_VERSION,
    }


_ENTRY_COLUMN_NAMES = (
    "id",
    "seq",
    "created_at",
    "kind",
    "actor",
    "partner",
    "artifact_id",
    "digest",
    "decision",
    "rule",
    "clause",
    "detail",
)
_ENTRY_COLUMNS: tuple[Any, ...] = tuple(
    AuditEntry.__table__.c[name]  # type: ignore[attr-defined]
    for name in _ENTRY_COLUMN_NAMES
)


def entry_columns() -> tuple[Any, ...]:
    """The columns :func:`row_object` reads, in order."""
    return _ENTRY_COLUMNS


def row_object(row: Any, *, seq: int | None = None) -> dict[str, Any]:
    """An entry object from a row of :func:`entry_columns` (``seq`` overrides the stored one)."""
    return entry_object(
        seq=row[1] if seq is None else seq,
        id=row[0],
        created_at=row[2],
        kind=row[3],
        actor=row[4],
        partner=row[5],
        artifact_id=row[6],
        digest=row[7],
        decision=row[8],
        rule=row[9],
        clause=row[10],
        detail=row[11],
    )


def iter_entries(
    session_factory: Callable[[], Any], *, after: int | None, size: int, chunk: int = 5000
) -> Iterator[dict[str, Any]]:
    """Every sequenced entry with ``after < seq < size``, in seq order, read in chunks (each in
    its own short transaction, so a long export never holds a database snapshot open)."""
    cursor = -1 if after is None else after
    while cursor + 1 < size:
        with session_factory() as session:
            rows = select_entry_rows(session, seq_after=cursor, seq_below=size, limit=chunk)
        if not rows:
            return
        yield from map(row_mapping, rows)
        cursor = int(rows[-1][1])
