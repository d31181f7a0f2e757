"""an index of artifacts by the blob they hold

A blob is deleted only once no artifact row nor pending approval refers to it
(``service/artifacts/sweep.drop_unreferenced``: byte-identical ciphertexts share one address).
Without an index that question scanned the whole artifacts table, once per revocation, retention
deletion, failed receipt and batch of the start-up sweep: a retention round deleting many copies
of a large table did as many full scans.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-08 00:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_artifacts_blob", "artifacts", ["blob"])


def downgrade() -> None:
    op.drop_index("ix_artifacts_blob", table_name="artifacts")
