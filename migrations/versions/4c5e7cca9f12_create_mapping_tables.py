"""Create the mapping tables: role_mappings, mapping_revision (one row, 0), mapping_changes.

Revision ID: 4c5e7cca9f12
Revises:
Create Date: 2026-11-29 00:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "4c5e7cca9f12"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model types: a migration must not change when the models do.
JSONDocument = sa.JSON().with_variant(JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "role_mappings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("description", sa.String(1024), nullable=False),
        sa.Column("account", sa.String(255), nullable=False),
        sa.Column("project", sa.String(255), nullable=False),
        sa.Column("deployment", sa.String(255), nullable=False),
        sa.Column("environment_type", sa.String(16), nullable=False),
        sa.Column("provider", sa.String(8), nullable=False),
        sa.Column("target", sa.String(2048), nullable=False),
        sa.Column("options", JSONDocument, nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.CheckConstraint(
            "environment_type IN ('production', 'preview', 'development', '*')",
            name=op.f("ck_role_mappings_environment_type"),
        ),
        sa.CheckConstraint("provider IN ('aws', 'gcp')", name=op.f("ck_role_mappings_provider")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_role_mappings")),
        sa.UniqueConstraint("name", name=op.f("uq_role_mappings_name")),
    )
    op.create_index(op.f("ix_role_mappings_account"), "role_mappings", ["account"])

    revision_table = op.create_table(
        "mapping_revision",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_mapping_revision_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mapping_revision")),
    )
    op.bulk_insert(revision_table, [{"id": 1, "revision": 0}])

    op.create_table(
        "mapping_changes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("changed_at", Timestamp, nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("source", sa.String(255), nullable=False),
        sa.Column("action", sa.String(8), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("before", JSONDocument, nullable=True),
        sa.Column("after", JSONDocument, nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.CheckConstraint(
            "action IN ('create', 'update', 'delete')", name=op.f("ck_mapping_changes_action")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mapping_changes")),
    )
    op.create_index(op.f("ix_mapping_changes_name"), "mapping_changes", ["name"])
    op.create_index(op.f("ix_mapping_changes_source"), "mapping_changes", ["source"])


def downgrade() -> None:
    op.drop_index(op.f("ix_mapping_changes_source"), table_name="mapping_changes")
    op.drop_index(op.f("ix_mapping_changes_name"), table_name="mapping_changes")
    op.drop_table("mapping_changes")
    op.drop_table("mapping_revision")
    op.drop_index(op.f("ix_role_mappings_account"), table_name="role_mappings")
    op.drop_table("role_mappings")
