"""audit transparency log: head, Merkle nodes, checkpoints, cosignatures, witness state

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 09:00:00.000000
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

import service.models


revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_EMPTY_ROOT = hashlib.sha256(b"").digest()  # RFC 9162 2.1.1: MTH({}) = HASH()


def upgrade() -> None:
    head = op.create_table(
        "audit_log_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("root", sa.LargeBinary(length=32), nullable=False),
        sa.Column("updated_at", service.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(
        head, [{"id": 1, "size": 0, "root": _EMPTY_ROOT, "updated_at": datetime.now(UTC)}]
    )
    op.create_table(
        "audit_merkle_nodes",
        sa.Column("level", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("idx", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.LargeBinary(length=32), nullable=False),
        sa.PrimaryKeyConstraint("level", "idx"),
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("root", sa.LargeBinary(length=32), nullable=False),
        sa.Column("origin", sa.String(length=200), nullable=False),
        sa.Column("key_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("created_at", service.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("size"),
    )
    with op.batch_alter_table("audit_checkpoints", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_audit_checkpoints_created_at"), ["created_at"], unique=False
        )
    op.create_table(
        "audit_cosignatures",
        sa.Column("checkpoint_size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("witness", sa.String(length=63), nullable=False),
        sa.Column("line", sa.String(length=400), nullable=False),
        sa.Column("timestamp", sa.BigInteger(), nullable=False),
        sa.Column("received_at", service.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("checkpoint_size", "witness"),
    )
    op.create_table(
        "audit_witness_submissions",
        sa.Column("partner", sa.String(length=63), nullable=False),
        sa.Column("cosigned_size", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=1000), nullable=True),
        sa.Column("next_attempt_at", service.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", service.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("partner"),
    )
    op.create_table(
        "witness_logs",
        sa.Column("origin", sa.String(length=200), nullable=False),
        sa.Column("partner", sa.String(length=63), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("root", sa.LargeBinary(length=32), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("cosigned_at", service.models.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("origin"),
    )
    with op.batch_alter_table("witness_logs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_witness_logs_partner"), ["partner"], unique=False)
    op.create_table(
        "witness_evidence",
        sa.Column("id", _BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("origin", sa.String(length=200), nullable=False),
        sa.Column("partner", sa.String(length=63), nullable=False),
        sa.Column("received_at", service.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("old_size", sa.BigInteger(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("root", sa.LargeBinary(length=32), nullable=False),
        sa.Column("request", sa.LargeBinary(), nullable=False),
        sa.Column("cosigned_size", sa.BigInteger(), nullable=False),
        sa.Column("cosigned_root", sa.LargeBinary(length=32), nullable=False),
        sa.Column("cosigned_note", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("witness_evidence", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_witness_evidence_origin"), ["origin"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_witness_evidence_partner"), ["partner"], unique=False
        )
    with op.batch_alter_table("audit_entries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_audit_entries_unsequenced",
            ["id"],
            unique=False,
            sqlite_where=sa.text("seq IS NULL"),
            postgresql_where=sa.text("seq IS NULL"),
        )
        batch_op.create_index("ix_audit_entries_actor", ["actor"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("audit_entries", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_entries_actor")
        batch_op.drop_index("ix_audit_entries_unsequenced")
    with op.batch_alter_table("witness_evidence", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_witness_evidence_partner"))
        batch_op.drop_index(batch_op.f("ix_witness_evidence_origin"))
    op.drop_table("witness_evidence")
    with op.batch_alter_table("witness_logs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_witness_logs_partner"))
    op.drop_table("witness_logs")
    op.drop_table("audit_witness_submissions")
    op.drop_table("audit_cosignatures")
    with op.batch_alter_table("audit_checkpoints", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_checkpoints_created_at"))
    op.drop_table("audit_checkpoints")
    op.drop_table("audit_merkle_nodes")
    op.drop_table("audit_log_head")
