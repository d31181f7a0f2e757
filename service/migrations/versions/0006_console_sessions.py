"""console_sessions: console sign-ins recorded server-side, so that signing out ends them

Issue 15 (L5): the console's signed cookie alone could not be withdrawn; a copy of it kept
working after sign-out until it expired. Each sign-in now writes a row here and sign-out ends it
(see ``service/console/_session_store.py``). Existing cookies have no row and are refused, so
everyone signs in once more after the upgrade.

Revision ID: 0006_console_sessions
Revises: 0005
Create Date: 2026-12-04 21:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from service.models import UTCDateTime

revision: str = "0006_console_sessions"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "console_sessions",
        sa.Column("id", sa.String(length=32), primary_key=True),
        sa.Column("token_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("ended_at", UTCDateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_console_sessions_token_id", "console_sessions", ["token_id"])


def downgrade() -> None:
    op.drop_index("ix_console_sessions_token_id", table_name="console_sessions")
    op.drop_table("console_sessions")
