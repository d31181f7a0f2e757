"""The canonical encoding of an audit log entry: the bytes whose RFC 6962 leaf hash is in the
tree (docs/audit-log.md, "Entry encoding"), and the statement that reads entry rows.

:func:`encode_leaf` is the specification; :func:`encode_row` is the same bytes from a database
row, without building a dict. This module imports nothing heavier than the standard library and
``crypto.errors``: the verifier's hashing workers start from it (``service.audit.hashing``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from json.encoder import encode_basestring
from typing import Any

from crypto.errors import MalformedError

__all__ = [
    "ENTRY_FIELDS",
    "LEAF_VERSION",
    "ROW_SQL",
    "created_text",
    "encode_leaf",
    "encode_row",
    "entry_rows_sql",
    "format_time",
]

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


@functools.cache
def _sqlite_datetime() -> Callable[[Any], Any] | None:
    """SQLAlchemy's parser of SQLite's stored times: imported only for a time not in the
    form SQLite keeps (the fast path below needs no SQLAlchemy, so hashing workers start fast)."""
    from sqlalchemy.dialects import sqlite as sqlite_dialect

    processor: Callable[[Any], Any] | None = sqlite_dialect.DATETIME().result_processor(  # type: ignore[no-untyped-call]
        sqlite_dialect.dialect(), None
    )
    return processor


def created_text(value: datetime | str) -> str:
    """``created_at`` as encoded in a leaf, from a datetime or from SQLite's stored text.

    SQLite keeps ``YYYY-MM-DD HH:MM:SS.ffffff`` (UTC); that text is rewritten directly, anything
    else is parsed as SQLAlchemy parses it. Either way the result is :func:`format_time` of the
    stored instant, so the sequencer and every verifier agree.
    """
    if isinstance(value, str):
        if _SQLITE_TIME.fullmatch(value):
            return f"{value[:10]}T{value[11:]}Z"
        parse = _sqlite_datetime()
        if parse is None:  # pragma: no cover - SQLAlchemy always has one
            raise MalformedError("cannot parse a stored time")
        try:
            parsed = parse(value)
        except (TypeError, ValueError):
            parsed = None
        if not isinstance(parsed, datetime):
            raise MalformedError(f"a stored time is malformed: {value[:40]!r}")
        return format_time(parsed.replace(tzinfo=UTC))
    if not isinstance(value, datetime):  # a number, a BLOB: written past the node
        raise MalformedError(f"a stored time is not a time: {type(value).__name__}")
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


# The columns of an entry row, in the order :func:`encode_row` reads them.
ROW_SQL = (
    "SELECT id, seq, created_at, kind, actor, partner, artifact_id, digest, decision, rule, "
    "clause, detail FROM audit_entries"
)


def entry_rows_sql(
    paramstyle: str,
    *,
    seq_from: int | None,
    seq_after: int | None,
    seq_below: int | None,
    unsequenced: bool,
    limit: int,
) -> tuple[str, tuple[int, ...]]:
    """The statement reading entry rows (the columns of :data:`ROW_SQL`, in order) and its
    parameters, for a driver's ``paramstyle`` (``qmark``: SQLite; else ``%s``)."""
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
    return f"{ROW_SQL} WHERE {' AND '.join(where)} ORDER BY {order} LIMIT {mark}", tuple(params)
