"""artifacts: an index for listing newest first (recorded_at, id)

``GET /v1/artifacts`` orders by (recorded_at, id) descending and pages on them; without an index
every page read and sorted the whole table (19 ms per request at 4,000 artifacts, growing with
the table).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 09:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_artifacts_listing", "artifacts", ["recorded_at", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_artifacts_listing", table_name="artifacts")
