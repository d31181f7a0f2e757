"""Tables of the audit transparency log and of the witness (SQLModel; migration 0003).

Log side (this node's own log over ``audit_entries``):

* ``audit_log_head``: one row (id 1): the size and root of the sequenced tree. It is also the
  lock the sequencer takes, so that several replicas sharing one database build ONE log.
* ``audit_merkle_nodes``: every perfect, aligned subtree hash, keyed ``(level, idx)``; level 0
  holds the leaf hashes. Written once, never changed; inclusion and consistency proofs read at
  most ``2 * log2(n)`` of them.
* ``audit_checkpoints``: one signed checkpoint (C2SP signed note) per sequenced tree size.
* ``audit_cosignatures``: the partners' cosignature lines on those checkpoints.
* ``audit_witness_submissions``: per partner, the tree size its witness last cosigned for us.
* ``audit_rollbacks``: witnesses that hold a checkpoint of this log newer than the log itself
  (a restore from an older snapshot), with the checkpoint as evidence, and witnesses not heard
  from since a restore (migration 0014); while any row exists the sequencer signs nothing
  (``service.audit.rollback``).

Witness side (this node cosigning its partners' logs):

* ``witness_logs``: per partner log (origin), the latest checkpoint this node cosigned.
* ``witness_evidence``: refused submissions that contradict a cosigned checkpoint, kept whole
  (the signed checkpoint and its proof) as evidence of a log that was rewritten (the first 16
  of a log).

Nothing here is trusted by a verifier: ``entente audit verify`` recomputes leaf hashes from the
entries and checks them against signed checkpoints. The stored nodes only make proofs cheap.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from service.models import AuditEntry, UTCDateTime

__all__ = [
    "AuditCheckpoint",
    "AuditCosignature",
    "AuditLogHead",
    "AuditMerkleNode",
    "AuditRollback",
    "AuditWitnessSubmission",
    "WitnessEvidence",
    "WitnessLog",
]

_BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# Indexes on audit_entries (a table of migration 0001) that the log needs: the sequencer finds
# unsequenced entries through a partial index, and auditors filter by actor.
_entries = AuditEntry.__table__  # type: ignore[attr-defined]
sa.Index(
    "ix_audit_entries_unsequenced",
    _entries.c.id,
    sqlite_where=_entries.c.seq.is_(None),
    postgresql_where=_entries.c.seq.is_(None),
)
sa.Index("ix_audit_entries_actor", _entries.c.actor)


class AuditLogHead(SQLModel, table=True):
    """The sequenced tree: size and root. Exactly one row, id 1, created by the migration."""

    __tablename__ = "audit_log_head"

    id: int = Field(default=1, primary_key=True)
    size: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False))
    root: bytes = Field(sa_column=sa.Column(sa.LargeBinary(32), nullable=False))
    updated_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))


class AuditMerkleNode(SQLModel, table=True):
    """The hash of the perfect subtree of ``2**level`` leaves starting at leaf ``idx << level``."""

    __tablename__ = "audit_merkle_nodes"

    level: int = Field(sa_column=sa.Column(sa.SmallInteger, primary_key=True, autoincrement=False))
    idx: int = Field(sa_column=sa.Column(sa.BigInteger, primary_key=True, autoincrement=False))
    hash: bytes = Field(sa_column=sa.Column(sa.LargeBinary(32), nullable=False))


class AuditCheckpoint(SQLModel, table=True):
    """A checkpoint of this node's log, as signed by the node (a C2SP signed note)."""

    __tablename__ = "audit_checkpoints"

    size: int = Field(sa_column=sa.Column(sa.BigInteger, primary_key=True, autoincrement=False))
    root: bytes = Field(sa_column=sa.Column(sa.LargeBinary(32), nullable=False))
    origin: str = Field(max_length=200)
    key_fingerprint: str = Field(max_length=64)  # the log key that signed it
    note: str = Field(sa_column=sa.Column(sa.Text, nullable=False))  # text + the log's signature
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False, index=True))


class AuditCosignature(SQLModel, table=True):
    """A partner witness's cosignature line (tlog-cosignature v1) on one of our checkpoints."""

    __tablename__ = "audit_cosignatures"

    checkpoint_size: int = Field(
        sa_column=sa.Column(sa.BigInteger, primary_key=True, autoincrement=False)
    )
    witness: str = Field(primary_key=True, max_length=63)  # the partner's node id
    line: str = Field(max_length=400)  # "— <name> <base64>\n"
    timestamp: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))  # POSIX seconds
    received_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))


class AuditWitnessSubmission(SQLModel, table=True):
    """Submitting our checkpoints to one partner's witness: what it holds, when to try again."""

    __tablename__ = "audit_witness_submissions"

    partner: str = Field(primary_key=True, max_length=63)
    cosigned_size: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False))
    attempts: int = Field(default=0)
    last_error: str | None = Field(default=None, max_length=1000)
    next_attempt_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    updated_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))


class AuditRollback(SQLModel, table=True):
    """A witness whose view of this log stops the sequencer (``service.audit.rollback``).

    ``state`` is ``unconfirmed`` (written by ``entente restore``: not heard from since the
    restore, so the restored log may be behind it) or ``behind`` (it served a checkpoint of this
    log signed by the log's own key at a size above the log's head, or with another root at a
    size the log has: ``note`` holds it, as it was served)."""

    __tablename__ = "audit_rollbacks"

    witness: str = Field(primary_key=True, max_length=63)  # the partner's node id
    state: str = Field(max_length=12)  # unconfirmed | behind
    local_size: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    held_size: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger))
    note: str | None = Field(default=None, sa_column=sa.Column(sa.Text))  # the served checkpoint
    detected_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))


class WitnessLog(SQLModel, table=True):
    """As a witness: the latest checkpoint this node cosigned for a partner's log."""

    __tablename__ = "witness_logs"

    origin: str = Field(primary_key=True, max_length=200)
    partner: str = Field(max_length=63, index=True)
    size: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False))
    root: bytes = Field(sa_column=sa.Column(sa.LargeBinary(32), nullable=False))
    note: str | None = Field(default=None, sa_column=sa.Column(sa.Text))  # as submitted
    cosigned_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime()))


class WitnessEvidence(SQLModel, table=True):
    """As a witness: a signed checkpoint refused because it contradicts one already cosigned.

    Kept once per distinct conflicting checkpoint (origin, size, root), for the first
    ``witness.EVIDENCE_PER_LOG`` of a log: a partner re-sending its fork, or signing fork after
    fork, adds nothing more (each refusal is still an audit event)."""

    __tablename__ = "witness_evidence"
    __table_args__ = (
        sa.UniqueConstraint("origin", "size", "root", name="uq_witness_evidence_checkpoint"),
    )

    id: int | None = Field(
        default=None, sa_column=sa.Column(_BIGINT_PK, primary_key=True, autoincrement=True)
    )
    origin: str = Field(max_length=200, index=True)
    partner: str = Field(max_length=63, index=True)
    received_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    reason: str = Field(max_length=500)
    old_size: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    size: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    root: bytes = Field(sa_column=sa.Column(sa.LargeBinary(32), nullable=False))
    request: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))  # whole body
    cosigned_size: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    cosigned_root: bytes = Field(sa_column=sa.Column(sa.LargeBinary(32), nullable=False))
    cosigned_note: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
