"""The audit log's sequencer: gives unsequenced entries their log indexes, appends their leaves
to the stored tree and signs a checkpoint, in ONE transaction.

Actions write :class:`~service.models.AuditEntry` rows with ``seq`` NULL in their own
transaction (:func:`service.audit.log.record`). The *sequencer* (:func:`sequence`, run by one
background worker per replica) then, in ONE transaction serialised by the ``audit_log_head`` row
lock (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite has a single writer):

1. takes the unsequenced entries in id order (at most :data:`SEQUENCE_BATCH_MAX`),
2. gives them the next log indexes (``seq``),
3. hashes each entry's canonical encoding (:func:`~service.audit.entries.encode_leaf`) as an
   RFC 6962 leaf, appends it to the tree and stores every perfect subtree it completes in
   ``audit_merkle_nodes``,
4. updates the head (size, root) and signs a C2SP checkpoint with the node's Ed25519 key.

So every sequenced entry is covered by a signed checkpoint the moment it is visible, and several
replicas sharing one PostgreSQL build one log.

This module does not talk to partners (``service.audit.submission``) and does not verify a log
(``service.audit.verify``): a verifier must recompute everything from the entries.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlmodel import Session

from crypto import merkle
from crypto.note import (
    Checkpoint,
    NoteSigner,
    sign_checkpoint,
)
from service.audit.entries import (
    SEQUENCE_BATCH_MAX,
    encode_row,
    log_signer,
    select_entry_rows,
)
from service.audit.errors import LogInconsistentError, LogRolledBackError
from service.audit.models import AuditCheckpoint, AuditLogHead, AuditRollback
from service.audit.tree import _frontier, _head_size
from service.models import AuditEntry

if TYPE_CHECKING:
    from service.node import Node


__all__ = ["SequenceResult", "run_sequencer", "sequence"]

_checkpoints = AuditCheckpoint.__table__  # type: ignore[attr-defined]
_entries = AuditEntry.__table__  # type: ignore[attr-defined]
_head = AuditLogHead.__table__  # type: ignore[attr-defined]
_rollbacks = AuditRollback.__table__  # type: ignore[attr-defined]

log = logging.getLogger("entente.audit")

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
    held = session.execute(
        sa.select(_rollbacks.c.witness, _rollbacks.c.state, _rollbacks.c.held_size).limit(1)
    ).first()
    if held is not None:
        # service.audit.rollback: a witness holds more of this log than it has (or has not been
        # heard from since a restore); any checkpoint signed now would fork the log.
        witness, state, held_size = held
        raise LogRolledBackError(
            f"witness {witness} holds size {held_size} of this log, which has {size} entries"
            if state == "behind"
            else f"witness {witness} has not confirmed this log since it was restored",
        )

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
    own retirement, or the log could never be verified past it (``service.audit.rotations``)."""
    try:
        facts = json.loads((node.home.path / "node.json").read_text())
    except (OSError, ValueError):
        return False  # no readable home facts: nothing says the key changed
    current = facts.get("fingerprint") if isinstance(facts, dict) else None
    return isinstance(current, str) and current != node.keys.signing.fingerprint  # rotated as one


_said: dict[str, float] = {}  # message: when it was last logged (monotonic seconds)


def _say_rolled_back(message: str, *, every: float = 60.0) -> None:
    """Log why nothing is signed: at once, then at most once a minute (each round would)."""
    now = time.monotonic()
    if now - _said.get(message, -every) >= every:
        _said[message] = now
        log.error(
            "audit log: signing no checkpoint: %s; entries wait, unsequenced (docs/backup.md: "
            "a restore from an older snapshot)",
            message,
        )


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
    try:
        with node.db.session() as session:
            result = sequence(session, signer=signer, now=node.now())
    except LogRolledBackError as exc:
        _say_rolled_back(exc.message)
        return SequenceResult(0, 0, b"", checkpoint_signed=False)
    if result.sequenced:
        log.info("audit log: sequenced %d entries, size %d", result.sequenced, result.size)
    return result
