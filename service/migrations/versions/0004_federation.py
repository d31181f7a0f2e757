"""federation: onward-share lineage on artifacts, last successful pull per partner

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 12:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import service.models

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("artifacts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("upstream_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("upstream_origin", sa.String(length=63), nullable=True))
        batch_op.create_index(batch_op.f("ix_artifacts_upstream_id"), ["upstream_id"], unique=False)
    with op.batch_alter_table("pull_state", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("last_ok_at", service.models.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("pull_state", schema=None) as batch_op:
        batch_op.drop_column("last_ok_at")
    with op.batch_alter_table("artifacts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_artifacts_upstream_id"))
        batch_op.drop_column("upstream_origin")
        batch_op.drop_column("upstream_id")
