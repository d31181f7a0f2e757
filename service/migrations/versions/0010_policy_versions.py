"""policy versions: the active MOU policy set lives in the database, shared by every replica

``policy_versions`` holds one row per committed version of the active set (a reload, or a node's
first start), numbered upwards from 1; ``policy_version_files`` the policy files of each version
(their bytes, as loaded and validated, and SHA-256). Every replica decides on the highest version
(``service/policy_store.py``). Nothing is backfilled: the first start after this revision
publishes the home's policy folder as version 1.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 00:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import service.models

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "policy_versions",
        sa.Column("version", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", service.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("version"),
    )
    op.create_table(
        "policy_version_files",
        sa.Column("version", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["version"], ["policy_versions.version"]),
        sa.PrimaryKeyConstraint("version", "name"),
    )


def downgrade() -> None:
    op.drop_table("policy_version_files")
    op.drop_table("policy_versions")
