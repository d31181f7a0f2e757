"""approvals: actions waiting for a second approver (two-person control)

A share at a TLP label the operator names (``ENTENTE_TWO_PERSON_TLP``) and, when
``ENTENTE_TWO_PERSON_POLICY_RELOAD`` is set, a policy reload through the API wait here for a
second principal (``service/artifacts/approvals.py``). A pending share's ciphertext is already
sealed in the blob store (``blob``); no artifact row and no delivery exist until approval.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 00:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from service.models import UTCDateTime

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "approvals",
        sa.Column("id", sa.String(length=40), primary_key=True),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("requested_by", sa.String(length=32), nullable=False),
        sa.Column("requester_name", sa.String(length=200), nullable=False),
        sa.Column("requester", sa.String(length=300), nullable=False),
        sa.Column("requested_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("artifact_id", sa.String(length=64), nullable=True),
        sa.Column("blob", sa.String(length=64), nullable=True),
        sa.Column("decided_by", sa.String(length=300), nullable=True),
        sa.Column("decided_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.String(length=500), nullable=True),
    )
    op.create_index("ix_approvals_state", "approvals", ["state"])
    op.create_index("ix_approvals_blob", "approvals", ["blob"])


def downgrade() -> None:
    op.drop_index("ix_approvals_blob", table_name="approvals")
    op.drop_index("ix_approvals_state", table_name="approvals")
    op.drop_table("approvals")
