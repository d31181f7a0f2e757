"""post-quantum: how each artifact is sealed; partners' ML-DSA-65 and checkpoint keys

``artifacts.sealing`` records how an artifact's ciphertext is sealed (``post-quantum``: to hybrid
ML-KEM-768 + X25519 recipients only; ``classic``: X25519), as its signed manifest says, so that
listings, the console and read decisions need not parse manifests. Every artifact stored before
this revision was sealed to X25519: the column's default fills them as ``classic``.

``partners.mldsa_key`` and ``partner_keys.mldsa_key`` keep the ML-DSA-65 public key a partner
advertises beside each Ed25519 key (base64; absent for a partner that has none, whose Ed25519
signature alone is accepted); ``partners.checkpoint_key`` the Ed25519 key that signs only its
audit log's checkpoints (absent: the partner's signing key does).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 00:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("artifacts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("sealing", sa.String(length=16), nullable=False, server_default="classic")
        )
    with op.batch_alter_table("partners", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mldsa_key", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("checkpoint_key", sa.String(length=64), nullable=True))
    with op.batch_alter_table("partner_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mldsa_key", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("partner_keys", schema=None) as batch_op:
        batch_op.drop_column("mldsa_key")
    with op.batch_alter_table("partners", schema=None) as batch_op:
        batch_op.drop_column("checkpoint_key")
        batch_op.drop_column("mldsa_key")
    with op.batch_alter_table("artifacts", schema=None) as batch_op:
        batch_op.drop_column("sealing")
