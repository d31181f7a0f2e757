"""audit rollbacks: witnesses holding a newer checkpoint of this log than the log itself

A node restored from an older snapshot (``entente restore``) must not extend its log over
sizes its witnesses already cosigned. ``audit_rollbacks`` holds, per witness, either
``unconfirmed`` (not heard from since the restore) or ``behind`` (it served a checkpoint signed
by this log's key above the log's head, kept as evidence); while any row exists the sequencer
signs no checkpoint (``service/audit/rollback.py``).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-12 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from service.models import UTCDateTime

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_rollbacks",
        sa.Column("witness", sa.String(length=63), primary_key=True),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("local_size", sa.BigInteger(), nullable=False),
        sa.Column("held_size", sa.BigInteger(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("detected_at", UTCDateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_rollbacks")
