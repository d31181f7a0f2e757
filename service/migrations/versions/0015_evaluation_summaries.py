"""evaluation summaries: an artifact's original file name and an evaluation log's summary

``artifacts.filename`` is the plaintext's original file name as its signed manifest gives it
(a download keeps it). ``artifacts.evaluation`` is the manifest's ``evaluation`` summary (JSON,
``service.evaluations.EvaluationSummary``) when it passes that schema, and ``eval_task`` and
``eval_model`` its task and model, indexed for ``GET /v1/artifacts?task=&model=``. Rows stored
before this revision have none of them.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 12:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("artifacts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("filename", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("evaluation", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("eval_task", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("eval_model", sa.String(length=200), nullable=True))
        batch_op.create_index(batch_op.f("ix_artifacts_eval_task"), ["eval_task"], unique=False)
        batch_op.create_index(batch_op.f("ix_artifacts_eval_model"), ["eval_model"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("artifacts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_artifacts_eval_model"))
        batch_op.drop_index(batch_op.f("ix_artifacts_eval_task"))
        batch_op.drop_column("eval_model")
        batch_op.drop_column("eval_task")
        batch_op.drop_column("evaluation")
        batch_op.drop_column("filename")
