"""witness_evidence: one row per distinct conflicting checkpoint (origin, size, root)

A partner re-sending the same conflicting checkpoint stored a new row (with the whole request)
each time. Duplicates already stored are dropped, keeping the first received.

Revision ID: 0007
Revises: 0006_console_sessions
Create Date: 2026-12-04 21:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006_console_sessions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        sa.text(
            "DELETE FROM witness_evidence WHERE id NOT IN ("
            "SELECT MIN(id) FROM witness_evidence GROUP BY origin, size, root)"
        )
    )
    with op.batch_alter_table("witness_evidence", schema=None) as batch_op:
        batch_op.create_unique_constraint(
            "uq_witness_evidence_checkpoint", ["origin", "size", "root"]
        )


def downgrade() -> None:
    with op.batch_alter_table("witness_evidence", schema=None) as batch_op:
        batch_op.drop_constraint("uq_witness_evidence_checkpoint", type_="unique")
