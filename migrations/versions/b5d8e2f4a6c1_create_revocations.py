"""Create revocations and revocation_revision (docs/reference.md section 11).

Revision ID: b5d8e2f4a6c1
Revises: e7a2c4d9b1f3
Create Date: 2026-12-06 00:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "b5d8e2f4a6c1"
down_revision: str | Sequence[str] | None = "e7a2c4d9b1f3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model types: a migration must not change when the models do.
JSONDocument = sa.JSON().with_variant(JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "revocations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("account", sa.Text(), nullable=True),
        sa.Column("project", sa.Text(), nullable=True),
        sa.Column("deployment", sa.Text(), nullable=True),
        sa.Column("environment_type", sa.String(16), nullable=True),
        sa.Column("sub", sa.Text(), nullable=True),
        sa.Column("mapping", sa.String(63), nullable=True),
        sa.Column("issued_before", Timestamp, nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("aws_policies", JSONDocument, nullable=False),
        sa.Column("lifted_at", Timestamp, nullable=True),
        sa.Column("lifted_by", sa.String(255), nullable=True),
        sa.CheckConstraint(
            "account IS NOT NULL OR sub IS NOT NULL OR mapping IS NOT NULL",
            name=op.f("ck_revocations_selector"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_revocations")),
    )
    op.create_index(op.f("ix_revocations_lifted_at"), "revocations", ["lifted_at"])
    revision_table = op.create_table(
        "revocation_revision",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_revocation_revision_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_revocation_revision")),
    )
    op.bulk_insert(revision_table, [{"id": 1, "revision": 0}])


def downgrade() -> None:
    op.drop_table("revocation_revision")
    op.drop_index(op.f("ix_revocations_lifted_at"), table_name="revocations")
    op.drop_table("revocations")
