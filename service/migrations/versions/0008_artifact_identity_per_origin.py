"""artifacts: identity scoped to the origin, (id, origin); references carry the origin

An artifact id named one artifact per node, whoever its origin: a co-recipient that learned an
id could store its own content at a third node under it first, and the origin's delivery and
revocation were then refused there. The primary key becomes (id, origin), and the references
to an artifact name its origin too: ``outbox.artifact_origin`` and ``artifacts.upstream_from``.
Existing rows are filled from the artifacts they refer to (ids were unique before, so the
match is exact).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 21:00:00.000000
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _primary_key(columns: list[str]) -> None:
    if op.get_bind().dialect.name == "sqlite":  # the table is rebuilt with the new key
        with warnings.catch_warnings():
            # SQLAlchemy notes that the new key replaces the reflected one: that is the point.
            warnings.filterwarnings("ignore", "Table '_alembic_tmp_artifacts' specifies columns")
            with op.batch_alter_table("artifacts", recreate="always") as batch_op:
                batch_op.create_primary_key("pk_artifacts", columns)
    else:
        inspector = sa.inspect(op.get_bind())
        name = inspector.get_pk_constraint("artifacts").get("name") or "artifacts_pkey"
        op.drop_constraint(name, "artifacts", type_="primary")
        op.create_primary_key("pk_artifacts", "artifacts", columns)


def upgrade() -> None:
    with op.batch_alter_table("artifacts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("upstream_from", sa.String(length=63), nullable=True))
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("artifact_origin", sa.String(length=63), nullable=True))
    # Fill the new references from what they refer to (ids are still unique here).
    op.execute(
        "UPDATE artifacts SET upstream_from = (SELECT up.origin FROM artifacts AS up "
        "WHERE up.id = artifacts.upstream_id) WHERE upstream_id IS NOT NULL"
    )
    op.execute(
        "UPDATE outbox SET artifact_origin = (SELECT a.origin FROM artifacts AS a "
        "WHERE a.id = outbox.artifact_id) WHERE kind <> 'descriptor'"
    )
    _primary_key(["id", "origin"])


def downgrade() -> None:
    # Only possible while no id is held from two origins (the old key would refuse them).
    _primary_key(["id"])
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("artifact_origin")
    with op.batch_alter_table("artifacts", schema=None) as batch_op:
        batch_op.drop_column("upstream_from")
