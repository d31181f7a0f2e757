"""The audit transparency log: entry encoding, sequencing, the stored Merkle tree, proofs and
checkpoints.

Actions write :class:`~service.models.AuditEntry` rows with ``seq`` NULL in their own
transaction (:func:`service.audit.record`). The *sequencer* (:func:`sequence`, run by one
background worker per replica) then, in ONE transaction serialised by the ``audit_log_head`` row
lock (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite has a single writer):

1. takes the unsequenced entries in id order (at most :data:`SEQUENCE_BATCH_MAX`),
2. gives them the next log indexes (``seq``),
3. hashes each entry's canonical encoding (:func:`encode_leaf`) as an RFC 6962 leaf, appends it
   to the tree and stores every perfect subtree it completes in ``audit_merkle_nodes``,
4. updates the head (size, root) and signs a C2SP checkpoint with the node's Ed25519 key.

So every sequenced entry is covered by a signed checkpoint the moment it is visible, and several
replicas sharing one PostgreSQL build one log. Proofs read at most ``2 * log2(n)`` stored nodes,
fetched in one query. Hashing, proofs and notes are ``crypto.merkle`` and ``crypto.note``.

This module does not talk to partners (``service.witness``) and does not verify a log
(``service.audit_verify``): a verifier must recompute everything from the entries.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from json.encoder import encode_basestring
from typing import TYPE_CHECKING, Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlmodel import Session

from crypto import merkle
from crypto.errors import MalformedError
from crypto.note import (
    Checkpoint,
    Note,
    NoteSigner,
    parse_note,
    parse_signature_lines,
    sign_checkpoint,
)
from service.audit_models import (
    AuditCheckpoint,
    AuditCosignature,
    AuditLogHead,
    AuditMerkleNode,
)
from service.errors import EntenteError, InvalidInputError, NotFoundError
from service.models import AuditEntry

if TYPE_CHECKING:
    from service.node import Node
    from service.workers import Workers

__all__ = [
    "ENTRY_FIELDS",
    "LOG_ORIGIN_PREFIX",
    "SEQUENCE_BATCH_MAX",
    "WITNESS_NAME_PREFIX",
    "LogInconsistentError",
    "SequenceResult",
    "StoredCheckpoint",
    "checkpoint_with_cosignatures",
    "consistency_proof",
    "created_text",
    "encode_leaf",
    "encode_row",
    "entry_object",
    "format_time",
    "get_checkpoint",
    "inclusion_proof",
    "latest_checkpoint",
    "list_checkpoints",
    "log_origin",
    "log_signer",
    "node_id_from_origin",
    "register_audit_workers",
    "row_mapping",
    "run_sequencer",
    "select_entry_rows",
    "sequence",
    "stored_root",
    "witness_name",
]

log = logging.getLogger("entente.audit")

SEQUENCE_BATCH_MAX = 10_000  # entries per sequencing transaction (and so per checkpoint)
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


class LogInconsistentError(EntenteError):
    """The stored tree does not match its head or the entries: the log refuses to extend it."""

    kind = "audit-log-inconsistent"
    status = 503
    title = "Audit log inconsistent"


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
    """The node's Ed25519 key as the signer of its log's checkpoints."""
    return NoteSigner(log_origin(node.node_id), node.keys.signing)


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


# ---------------------------------------------------------------------------------------------
# The stored tree

_nodes = AuditMerkleNode.__table__  # type: ignore[attr-defined]
_head = AuditLogHead.__table__  # type: ignore[attr-defined]
_entries = AuditEntry.__table__  # type: ignore[attr-defined]
_checkpoints = AuditCheckpoint.__table__  # type: ignore[attr-defined]
_cosignatures = AuditCosignature.__table__  # type: ignore[attr-defined]


def _node_key(start: int, end: int) -> tuple[int, int]:
    width = end - start
    if width <= 0 or width & (width - 1) or start % width:
        raise MalformedError("not a perfect, aligned subtree")
    level = width.bit_length() - 1
    return level, start >> level


def _fetch_nodes(session: Session, keys: Iterable[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
    """The stored nodes ``(level, idx)`` in one indexed query (plain driver SQL: building and
    compiling an expression costs more than the lookups themselves)."""
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    conn = session.connection()
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    where = " OR ".join([f"(level = {mark} AND idx = {mark})"] * len(wanted))
    params = tuple(v for key in wanted for v in key)
    rows = conn.exec_driver_sql(
        f"SELECT level, idx, hash FROM audit_merkle_nodes WHERE {where}",  # noqa: S608 - markers only
        params,
    ).all()
    found = {(int(r[0]), int(r[1])): bytes(r[2]) for r in rows}
    if len(found) != len(wanted):
        raise LogInconsistentError("the stored Merkle tree is missing nodes")
    return found


class _Recorder:
    """A HashSource that only records which perfect subtrees a proof needs."""

    _dummy: ClassVar[bytes] = bytes(merkle.HASH_SIZE)

    def __init__(self) -> None:
        self.keys: list[tuple[int, int]] = []

    def __call__(self, start: int, end: int, /) -> bytes:
        self.keys.append(_node_key(start, end))
        return self._dummy


class _Fetched:
    def __init__(self, nodes: Mapping[tuple[int, int], bytes]) -> None:
        self._nodes = nodes

    def __call__(self, start: int, end: int, /) -> bytes:
        return self._nodes[_node_key(start, end)]


def _with_store(
    session: Session, compute: Callable[[merkle.HashSource], list[bytes]]
) -> list[bytes]:
    """Run a proof computation twice: once to learn the nodes, once over them (one query)."""
    recorder = _Recorder()
    compute(recorder)
    return compute(_Fetched(_fetch_nodes(session, recorder.keys)))


def _head_size(session: Session) -> int:
    size = (
        session.connection()
        .exec_driver_sql("SELECT size FROM audit_log_head WHERE id = 1")
        .scalar_one_or_none()
    )
    if size is None:
        raise LogInconsistentError("the audit log head is missing; is the database migrated?")
    return int(size)


def inclusion_proof(session: Session, *, index: int, size: int) -> list[bytes]:
    """The RFC 6962 inclusion proof of leaf ``index`` in the stored tree of ``size`` leaves."""
    if not 0 <= index < size:
        raise InvalidInputError(f"seq {index} is not in a tree of {size} entries")
    if size > _head_size(session):
        raise InvalidInputError(f"the log has fewer than {size} entries")
    return _with_store(session, lambda src: merkle.inclusion_proof(index, size, src))


def consistency_proof(session: Session, *, old: int, new: int) -> list[bytes]:
    """The RFC 6962 consistency proof from the stored tree of ``old`` leaves to ``new`` leaves."""
    if not 0 < old <= new:
        raise InvalidInputError("a consistency proof needs 0 < old <= new")
    if new > _head_size(session):
        raise InvalidInputError(f"the log has fewer than {new} entries")
    return _with_store(session, lambda src: merkle.consistency_proof(old, new, src))


def stored_root(session: Session, size: int) -> bytes:
    """The root of the first ``size`` leaves of the stored tree."""
    if size == 0:
        return merkle.EMPTY_ROOT
    result = _with_store(session, lambda src: [merkle.subtree_root(0, size, src)])
    return result[0]


def stored_leaf_hashes(session: Session, seqs: Iterable[int]) -> dict[int, bytes]:
    """The stored leaf hashes of the given log indexes (untrusted: a hint for people)."""
    wanted = sorted(set(seqs))
    if not wanted:
        return {}
    rows = session.execute(
        sa.select(_nodes.c.idx, _nodes.c.hash).where(_nodes.c.level == 0, _nodes.c.idx.in_(wanted))
    )
    return {int(r[0]): bytes(r[1]) for r in rows}


def _frontier(session: Session, size: int) -> list[bytes]:
    """The compact range of ``[0, size)``: one perfect subtree per set bit, largest first."""
    keys: list[tuple[int, int]] = []
    start = 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            keys.append((level, start >> level))
            start += 1 << level
    nodes = _fetch_nodes(session, keys)
    return [nodes[k] for k in keys]


# ---------------------------------------------------------------------------------------------
# Sequencing


@dataclass(frozen=True)
class SequenceResult:
    sequenced: int  # entries given a seq in this round
    size: int  # the tree size afterwards
    root: bytes
    checkpoint_signed: bool

    @property
    def more(self) -> bool:
        """Whether the batch was full, so more entries may be waiting."""
        return self.sequenced >= SEQUENCE_BATCH_MAX


def _collect(into: list[tuple[int, int, bytes]]) -> Callable[[int, int, bytes], None]:
    def visit(level: int, idx: int, h: bytes) -> None:
        into.append((level, idx, h))

    return visit


def _lock_head(session: Session) -> None:
    """Serialise sequencers: PostgreSQL row lock; on SQLite a write takes the database lock."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.select(_head.c.id).where(_head.c.id == 1).with_for_update())
    else:
        # pysqlite begins the transaction at the first write: make it the first statement, so
        # everything read afterwards is read under the single-writer lock.
        session.execute(sa.update(_head).where(_head.c.id == 1).values(id=1))


def sequence(
    session: Session,
    *,
    signer: NoteSigner,
    now: datetime,
    batch_max: int = SEQUENCE_BATCH_MAX,
) -> SequenceResult:
    """Sequence up to ``batch_max`` pending entries and sign a checkpoint (in the caller's
    transaction, which must commit for any of it to count)."""
    pending = session.execute(
        sa.select(_entries.c.id).where(_entries.c.seq.is_(None)).limit(1)
    ).first()
    has_checkpoint = session.execute(sa.select(_checkpoints.c.size).limit(1)).first()
    if pending is None and has_checkpoint is not None:
        size = _head_size(session)
        return SequenceResult(0, size, b"", checkpoint_signed=False)

    _lock_head(session)
    head = session.execute(sa.select(_head.c.size, _head.c.root).where(_head.c.id == 1)).one()
    size, root = int(head[0]), bytes(head[1])
    rows = select_entry_rows(session, unsequenced=True, limit=batch_max)
    latest = session.execute(sa.select(sa.func.max(_checkpoints.c.size))).scalar_one_or_none()
    if not rows and latest == size:
        return SequenceResult(0, size, root, checkpoint_signed=False)

    tree = merkle.CompactRange(size, _frontier(session, size))
    if tree.root() != root:
        raise LogInconsistentError(
            f"the stored Merkle tree does not match the log head (size {size}); "
            "refusing to extend it: run `entente audit verify --home`"
        )
    if rows:
        clash = session.execute(
            sa.select(_entries.c.id, _entries.c.seq).where(_entries.c.seq >= size).limit(1)
        ).first()
        if clash is not None:
            raise LogInconsistentError(
                f"entry id {clash[0]} has seq {clash[1]} beyond the log head ({size}): "
                "the audit table was modified outside the sequencer"
            )
    nodes: list[tuple[int, int, bytes]] = []
    visit = _collect(nodes)
    updates: list[tuple[int, int]] = []
    for i, row in enumerate(rows):
        seq = size + i
        tree.append(merkle.leaf_hash(encode_row(row, seq)), visit)
        updates.append((seq, row[0]))
    if updates:
        # Plain driver executemany: SQLAlchemy's per-row parameter processing would cost more
        # than the writes themselves.
        conn = session.connection()
        mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        conn.exec_driver_sql(
            f"UPDATE audit_entries SET seq = {mark} WHERE id = {mark}",  # noqa: S608 - markers only
            updates,
        )
        conn.exec_driver_sql(
            f"INSERT INTO audit_merkle_nodes (level, idx, hash) VALUES ({mark}, {mark}, {mark})",  # noqa: S608
            nodes,
        )
    new_size, new_root = tree.size, tree.root()
    session.execute(
        sa.update(_head).where(_head.c.id == 1).values(size=new_size, root=new_root, updated_at=now)
    )
    checkpoint = Checkpoint(signer.name, new_size, new_root)
    note = sign_checkpoint(checkpoint, signer=signer)
    session.execute(
        sa.insert(_checkpoints).values(
            size=new_size,
            root=new_root,
            origin=signer.name,
            key_fingerprint=signer.verifier.key.fingerprint,
            note=note.decode("utf-8"),
            created_at=now,
        )
    )
    return SequenceResult(len(rows), new_size, new_root, checkpoint_signed=True)


def _key_retired(node: Node) -> bool:
    """Whether the home's key was rotated since this process loaded its key (``entente keys
    rotate`` run while the node was up): a retired key must not sign checkpoints covering its
    own retirement, or the log could never be verified past it (``service.audit_rotations``)."""
    try:
        facts = json.loads((node.home.path / "node.json").read_text())
    except (OSError, ValueError):
        return False  # no readable home facts: nothing says the key changed
    current = facts.get("fingerprint") if isinstance(facts, dict) else None
    return isinstance(current, str) and current != node.keys.signing.fingerprint


def run_sequencer(node: Node) -> SequenceResult:
    """One sequencing round for ``node`` in its own transaction (blocking: run it in a thread).

    Signs nothing once the node's key has been rotated under it: entries wait, unsequenced,
    until the node restarts with its new key."""
    if _key_retired(node):
        log.error(
            "audit log: the node's key was rotated while it ran; restart `entente serve` to "
            "sign checkpoints with the new key (entries wait until then)"
        )
        return SequenceResult(0, 0, b"", checkpoint_signed=False)
    signer = log_signer(node)
    with node.db.session() as session:
        result = sequence(session, signer=signer, now=node.now())
    if result.sequenced:
        log.info("audit log: sequenced %d entries, size %d", result.sequenced, result.size)
    return result


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


# ---------------------------------------------------------------------------------------------
# Workers


def register_audit_workers(workers: Workers, node: Node, **options: Any) -> Any:
    """Add the sequencer and the checkpoint submission to ``workers``.

    Each new checkpoint is submitted to every pinned partner's witness through
    ``options["witness_transport"]`` (a :class:`service.witness.WitnessTransport`; default: the
    RFC 9421-signed :class:`service.witness.SignedWitnessTransport`). Returns the transport, for
    the caller to close (``aclose``, when it has one) once the workers have stopped.
    """
    interval = node.settings.checkpoint_interval_seconds

    async def sequencer_step() -> float:
        result = await asyncio.to_thread(run_sequencer, node)
        return 0.0 if result.more else interval

    workers.add("audit-sequencer", sequencer_step)

    from service.witness import SignedWitnessTransport, submission_step

    transport = options.get("witness_transport") or SignedWitnessTransport(node)
    workers.add("audit-witness-submit", submission_step(node, transport))
    return transport
