"""Hashing entry rows into leaves, as the verifier's worker processes do it; lean imports.

:func:`hash_rows` recomputes each leaf from a row's columns with the specification's encoder
(``service.audit.encoding``). On SQLite a worker reads and hashes its range of seqs itself
(:func:`hash_sqlite_range`, plain ``sqlite3``: a worker starts in a few tens of milliseconds,
not the second SQLAlchemy and the ORM models take), and may let SQLite build each leaf:

**SQLite's own encoding of a leaf** (:data:`LEAF_SQL`): the same fixed keys, each string value
through SQLite's ``json_quote``, ``created_at`` rewritten from the one form SQLite stores, the
integers as SQLite writes them. It is used only when :func:`sqlite_quotes_like_python` has shown,
for the SQLite library in this process, that ``json_quote`` escapes every Unicode scalar value
exactly as the specification's ``encode_basestring`` does: both map each character on its own,
so agreeing on every character is agreeing on every string, and the leaf is byte for byte the
one the specification gives. A row it cannot build that way (a time in another form, a value of
another type) sends the whole chunk back to :func:`hash_rows`, which names the problem as it
always has. What is trusted does not change: a wrong leaf can only fail to match the signed
tree, and a leaf that matches is the JSON encoding of the columns as stored.

The verifier's orchestration (worker pool, order, memory) is ``service.audit.leaves``.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any
from urllib.parse import quote

from crypto import merkle
from crypto.errors import MalformedError
from service.audit.encoding import encode_row, entry_rows_sql

__all__ = [
    "LEAF_SQL",
    "LeafBatch",
    "Problem",
    "hash_rows",
    "hash_sqlite_range",
    "int_id",
    "missing",
    "sqlite_quotes_like_python",
]


@dataclass(frozen=True)
class Problem:
    message: str
    seq: int | None = None
    entry_id: int | None = None


@dataclass(frozen=True)
class LeafBatch:
    start: int  # the seq of leaves[0]
    leaves: list[bytes]
    problem: Problem | None = None  # met right after these leaves; nothing follows


def int_id(value: Any) -> int | None:
    """An entry's id as a :class:`Problem` carries it: an integer, else None (a served or
    stored value of another type is only quoted in the problem's text)."""
    return value if type(value) is int else None


def missing(expected: int, seq: Any, entry_id: Any, last_id: Any) -> Problem:
    """The problem of a row whose ``seq`` is not the ``expected`` one."""
    if type(seq) is not int:
        return Problem(
            f"an entry after seq {expected - 1} (id {entry_id}) has no valid seq",
            entry_id=int_id(entry_id),
        )
    if seq > expected:
        gap = f"seq {expected}" if seq == expected + 1 else f"seq {expected} to {seq - 1}"
        after = f"the entry after id {last_id}" if last_id is not None else "the next entry"
        return Problem(
            f"entry {gap} is missing (deleted?): {after} is seq {seq} (id {entry_id})",
            seq=expected,
        )
    return Problem(
        f"entry seq {seq} (id {entry_id}) is out of place: expected seq {expected}",
        seq=seq,
        entry_id=int_id(entry_id),
    )


def hash_rows(rows: Sequence[Any], expected: int, last_id: Any = None) -> LeafBatch:
    """One batch from entry rows (the columns of ``service.audit.encoding.ROW_SQL``) that
    should carry seqs ``expected, expected + 1, ...``."""
    leaves: list[bytes] = []
    append, leaf_hash = leaves.append, merkle.leaf_hash
    first = expected
    for row in rows:
        seq = row[1]
        if seq != expected:
            return LeafBatch(first, leaves, missing(expected, seq, row[0], last_id))
        try:
            append(leaf_hash(encode_row(row)))
        except MalformedError as exc:
            problem = Problem(
                f"entry seq {seq} (id {row[0]}) is malformed: {exc}", seq, int_id(row[0])
            )
            return LeafBatch(first, leaves, problem)
        expected += 1
        last_id = row[0]
    return LeafBatch(first, leaves)


# --- SQLite building each leaf ----------------------------------------------------------------

# id, seq, and the leaf: the keys in order, each string through json_quote (null for NULL),
# created_at rewritten from YYYY-MM-DD HH:MM:SS.ffffff (the one form it may take here; another
# gives NULL), the integers as SQLite writes them; printf builds the leaf in one piece.
LEAF_SQL = """
SELECT id, seq,
  CASE WHEN typeof(created_at) = 'text' AND created_at GLOB (
    '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] '
    || '[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]')
  THEN CAST(printf(
    '{"actor":%s,"artifact_id":%s,"clause":%s,"created_at":"%sT%sZ","decision":%s,'
    || '"detail":%s,"digest":%s,"id":%d,"kind":%s,"partner":%s,"rule":%s,"seq":%d,"v":1}',
    json_quote(actor), json_quote(artifact_id), json_quote(clause),
    substr(created_at, 1, 10), substr(created_at, 12), json_quote(decision),
    json_quote(detail), json_quote(digest), id, json_quote(kind), json_quote(partner),
    json_quote(rule), seq
  ) AS BLOB) END
FROM audit_entries WHERE seq IS NOT NULL AND seq >= ? AND seq < ? ORDER BY seq LIMIT ?
"""

_SCALARS_PER_PROBE = 1 << 16
_FETCH_ROWS = 2048  # rows a worker takes from its cursor at a time


@functools.cache
def sqlite_quotes_like_python() -> bool:
    """Whether this process's SQLite library escapes every Unicode scalar value in
    ``json_quote`` exactly as ``encode_basestring`` does (each next to an ASCII letter; about
    0.2 s, once per process). False where it does not, or has no ``json_quote``."""
    conn = sqlite3.connect(":memory:")
    try:
        for start in range(0, 0x110000, _SCALARS_PER_PROBE):  # one probe at a time: small
            points = range(start, min(start + _SCALARS_PER_PROBE, 0x110000))
            text = "a".join(chr(c) for c in points if not 0xD800 <= c <= 0xDFFF)
            (quoted,) = conn.execute("SELECT json_quote(?)", (text,)).fetchone()
            if quoted != encode_basestring(text):
                return False
    except sqlite3.Error:
        return False
    finally:
        conn.close()
    return True


def _built_by_sqlite(cursor: sqlite3.Cursor, expected: int) -> tuple[bytes, int] | None:
    """The leaf hashes of the :data:`LEAF_SQL` rows ``cursor`` yields, which should carry seqs
    ``expected, ...``, concatenated, and how many rows; None at the first row that needs the
    specification's encoder to say what is wrong with it. Rows are taken a few thousand at a
    time: a worker's memory stays small, and is not given back and faulted in again."""
    out = bytearray()
    leaf_hash, count = merkle.leaf_hash, 0
    while rows := cursor.fetchmany(_FETCH_ROWS):
        for ident, seq, leaf in rows:
            if leaf is None or seq != expected or type(seq) is not int:
                return None
            if type(ident) is not int or ident < 0:
                return None
            out += leaf_hash(leaf)
            expected += 1
        count += len(rows)
    return bytes(out), count


_connections: dict[str, sqlite3.Connection] = {}  # a worker's own, by database file


def _connect(path: str) -> sqlite3.Connection:
    conn = _connections.get(path)
    if conn is None:
        # mode=rw: an absent file is an error, never a new empty database; query_only: this
        # connection cannot write whatever it is asked.
        conn = sqlite3.connect(f"file:{quote(path)}?mode=rw", uri=True, timeout=10.0)
        conn.execute("PRAGMA query_only = ON")
        conn = _connections.setdefault(path, conn)
    return conn


def hash_sqlite_range(
    path: str, built: bool, lo: int | None, hi: int, expected: int
) -> tuple[bytes, Problem | None, int]:
    """In a worker: the leaves of the rows with ``lo <= seq < hi`` (``lo`` None: every seq below
    ``hi``, so a negative one shows up) of the SQLite database at ``path``, concatenated; the
    problem met, if any; how many rows were read. ``built``: try :data:`LEAF_SQL` first."""
    conn = _connect(path)
    limit = hi - expected + 1
    try:
        if built:
            low = -(1 << 63) if lo is None else lo  # a negative seq shows up, and falls back
            try:
                built_leaves = _built_by_sqlite(conn.execute(LEAF_SQL, (low, hi, limit)), expected)
            except sqlite3.Error:  # a value SQLite's JSON refuses (a BLOB): said below
                built_leaves = None
            if built_leaves is not None:
                return built_leaves[0], None, built_leaves[1]
        sql, params = entry_rows_sql(
            "qmark", seq_from=lo, seq_after=None, seq_below=hi, unsequenced=False, limit=limit
        )
        rows = conn.execute(sql, params).fetchall()
    finally:
        conn.rollback()  # no read snapshot held between tasks
    batch = hash_rows(rows, expected)
    return b"".join(batch.leaves), batch.problem, len(rows)
