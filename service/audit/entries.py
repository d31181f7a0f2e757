"""The audit log's entries: their canonical encoding (the leaf a verifier recomputes), the
log's names (checkpoint origin, witness key name), and reading entry rows.

:func:`encode_leaf` is the specification ``docs/audit-log.md`` describes; :func:`encode_row`
is the same bytes from a database row, without building a dict. Rows are read in seq order, in
chunks, each in its own short transaction.

This module does not hash, sequence or sign (``service.audit.sequencer``) and does not verify
(``service.audit.verify``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from json.encoder import encode_basestring
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlmodel import Session

from crypto.errors import MalformedError
from crypto.note import (
    NoteSigner,
)
from service.models import AuditEntry

if TYPE_CHECKING:
    from service.node import Node


__all__ = [
    "ENTRY_FIELDS",
    "LOG_ORIGIN_PREFIX",
    "SEQUENCE_BATCH_MAX",
    "WITNESS_NAME_PREFIX",
    "created_text",
    "encode_leaf",
    "encode_row",
    "entry_object",
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
LEAF_VERSION = 1

# The keys of an entry's canonical encoding, in their (sorted) order.
ENTRY_FIELDS = (
    "actor",
    "artifact_id",
    "clause",
    "created_at",
    "decision",
    "detail",
    "digest",
    "id",
    "kind",
    "partner",
    "rule",
    "seq",
    "v",
)


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


# ---------------------------------------------------------------------------------------------
# The entry encoding (docs/audit-log.md, "Entry encoding")


def format_time(value: datetime) -> str:
    """RFC 3339 UTC with exactly six fractional digits: ``2026-11-27T09:00:00.000000Z``."""
    if value.tzinfo is None:
        raise ValueError("naive datetime in an audit entry")
    return value.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def _encode(
    actor: str,
    artifact_id: str | None,
    clause: str | None,
    created_at: str,
    decision: str | None,
    detail: str,
    digest: str | None,
    ident: int,
    kind: str,
    partner: str | None,
    rule: str | None,
    seq: int,
) -> bytes:
    if type(seq) is not int or type(ident) is not int or seq < 0 or ident < 0:
        raise MalformedError("an entry's seq and id are non-negative integers")
    q = encode_basestring
    try:
        text = (
            f'{{"actor":{q(actor)},'
            f'"artifact_id":{"null" if artifact_id is None else q(artifact_id)},'
            f'"clause":{"null" if clause is None else q(clause)},'
            f'"created_at":{q(created_at)},'
            f'"decision":{"null" if decision is None else q(decision)},'
            f'"detail":{q(detail)},'
            f'"digest":{"null" if digest is None else q(digest)},'
            f'"id":{ident},"kind":{q(kind)},'
            f'"partner":{"null" if partner is None else q(partner)},'
            f'"rule":{"null" if rule is None else q(rule)},"seq":{seq},"v":1}}'
        )
    except TypeError:
        raise MalformedError("an entry field has the wrong type") from None
    return text.encode("utf-8")


def encode_leaf(entry: Mapping[str, Any]) -> bytes:
    """The canonical encoding of one log entry: the bytes whose RFC 6962 leaf hash is in the tree.

    A JSON object with exactly the keys :data:`ENTRY_FIELDS`, sorted, no whitespace, strings
    escaped as JSON requires (``"``, ``\\``, and U+0000..U+001F only), UTF-8: the same bytes as
    RFC 8785 (JCS) and as Python's ``json.dumps(obj, sort_keys=True, separators=(",", ":"),
    ensure_ascii=False)`` for these value types. ``detail`` is the stored JSON text, as a string.
    """
    try:
        if entry["v"] != LEAF_VERSION:
            raise MalformedError(f"unknown entry version {entry['v']!r}")
        return _encode(
            entry["actor"],
            entry["artifact_id"],
            entry["clause"],
            entry["created_at"],
            entry["decision"],
            entry["detail"],
            entry["digest"],
            entry["id"],
            entry["kind"],
            entry["partner"],
            entry["rule"],
            entry["seq"],
        )
    except KeyError as exc:
        raise MalformedError(f"an entry has no {exc.args[0]!r}") from None


_SQLITE_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}")
_sqlite_datetime = sqlite_dialect.DATETIME().result_processor(  # type: ignore[no-untyped-call]
    sqlite_dialect.dialect(), None
)


def created_text(value: datetime | str) -> str:
    """``created_at`` as encoded in a leaf, from a datetime or from SQLite's stored text.

    SQLite keeps ``YYYY-MM-DD HH:MM:SS.ffffff`` (UTC); that text is rewritten directly, anything
    else is parsed as SQLAlchemy parses it. Either way the result is :func:`format_time` of the
    stored instant, so the sequencer and every verifier agree.
    """
    if isinstance(value, str):
        if _SQLITE_TIME.fullmatch(value):
            return f"{value[:10]}T{value[11:]}Z"
        if _sqlite_datetime is None:  # pragma: no cover - SQLAlchemy always has one
            raise MalformedError("cannot parse a stored time")
        try:
            parsed = _sqlite_datetime(value)
        except (TypeError, ValueError):
            parsed = None
        if not isinstance(parsed, datetime):
            raise MalformedError(f"a stored time is malformed: {value[:40]!r}")
        return format_time(parsed.replace(tzinfo=UTC))
    return format_time(value)


def encode_row(row: Sequence[Any], seq: int | None = None) -> bytes:
    """:func:`encode_leaf` of a row of :func:`select_entry_rows` (``seq`` overrides the row's)."""
    return _encode(
        row[4],
        row[6],
        row[10],
        created_text(row[2]),
        row[8],
        row[11],
        row[7],
        row[0],
        row[3],
        row[5],
        row[9],
        row[1] if seq is None else seq,
    )


_ROW_SQL = (
    "SELECT id, seq, created_at, kind, actor, partner, artifact_id, digest, decision, rule, "
    "clause, detail FROM audit_entries"
)


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
    sql, params = _entry_rows_sql(
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
    sql, params = _entry_rows_sql(
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


def _entry_rows_sql(
    paramstyle: str,
    *,
    seq_from: int | None,
    seq_after: int | None,
    seq_below: int | None,
    unsequenced: bool,
    limit: int,
) -> tuple[str, tuple[int, ...]]:
    mark = "?" if paramstyle == "qmark" else "%s"
    where: list[str] = []
    params: list[int] = []
    if unsequenced:
        where.append("seq IS NULL")
    else:
        where.append("seq IS NOT NULL")
    for clause, value in (
        (f"seq >= {mark}", seq_from),
        (f"seq > {mark}", seq_after),
        (f"seq < {mark}", seq_below),
    ):
        if value is not None:
            where.append(clause)
            params.append(value)
    order = "id" if unsequenced else "seq"
    params.append(limit)
    return f"{_ROW_SQL} WHERE {' AND '.join(where)} ORDER BY {order} LIMIT {mark}", tuple(params)


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
