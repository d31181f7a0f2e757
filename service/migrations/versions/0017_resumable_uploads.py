"""resumable uploads: partial bodies of POST /v1/artifacts, stored encrypted until complete

A row per upload (``service/uploads.py``): its owner (a token), the multipart Content-Type of
the share it becomes, the bytes received so far, the announced length, whether the last append
came, and when it expires; a row per segment (the bytes one request added, an age file to the
node's own identity stored as a blob).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06 05:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from service.models import UTCDateTime

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "uploads",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("principal", sa.String(length=32), nullable=False),
        sa.Column("content_type", sa.String(length=300), nullable=False),
        sa.Column("received", sa.BigInteger(), nullable=False),
        sa.Column("length", sa.BigInteger(), nullable=True),
        sa.Column("complete", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_uploads_principal", "uploads", ["principal"])
    op.create_index("ix_uploads_expires_at", "uploads", ["expires_at"])
    op.create_table(
        "upload_segments",
        sa.Column("upload_id", sa.String(length=40), nullable=False),
        sa.Column("start", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("upload_id", "start"),
    )


def downgrade() -> None:
    op.drop_table("upload_segments")
    op.drop_index("ix_uploads_expires_at", table_name="uploads")
    op.drop_index("ix_uploads_principal", table_name="uploads")
    op.drop_table("uploads")
