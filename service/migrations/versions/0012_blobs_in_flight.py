"""blobs in flight: a journal of blobs being placed or deleted, so the sweep need not walk the store

A row is committed before a blob appears under its content address in the blob store (the
folder or an S3-compatible object store) and removed in the transaction of the row that refers
to the blob, or once the blob is deleted (``service/blob_journal.py``). The start-up sweep
(``service/artifacts/sweep.py``) checks only the rows older than its grace period.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 22:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from service.models import UTCDateTime

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "blobs_in_flight",
        sa.Column("id", _BIGINT_PK, primary_key=True, autoincrement=True),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("since", UTCDateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_blobs_in_flight_digest", "blobs_in_flight", ["digest"])
    op.create_index("ix_blobs_in_flight_since", "blobs_in_flight", ["since"])


def downgrade() -> None:
    op.drop_index("ix_blobs_in_flight_since", table_name="blobs_in_flight")
    op.drop_index("ix_blobs_in_flight_digest", table_name="blobs_in_flight")
    op.drop_table("blobs_in_flight")
