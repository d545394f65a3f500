"""Create issuance_events: one row per upstream credential issuance, refusal or failure.

Revision ID: a75b81056757
Revises: 4c5e7cca9f12
Create Date: 2026-11-30 00:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a75b81056757"
down_revision: str | Sequence[str] | None = "4c5e7cca9f12"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model types: a migration must not change when the models do.
Timestamp = sa.DateTime(timezone=True)
EventId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "issuance_events",
        sa.Column("id", EventId, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("issuer", sa.Text(), nullable=False),
        sa.Column("sub", sa.Text(), nullable=False),
        sa.Column("account", sa.Text(), nullable=False),
        sa.Column("project", sa.Text(), nullable=False),
        sa.Column("deployment", sa.Text(), nullable=False),
        sa.Column("environment_type", sa.String(16), nullable=False),
        sa.Column("mapping", sa.String(63), nullable=False),
        sa.Column("provider", sa.String(8), nullable=False),
        sa.Column("target", sa.String(2048), nullable=False),
        sa.Column("outcome", sa.String(128), nullable=False),
        sa.Column("provider_request_id", sa.String(256), nullable=True),
        sa.Column("expires_at", Timestamp, nullable=True),
        sa.Column("credential_sha256", sa.String(64), nullable=True),
        sa.Column("scopes", sa.Text(), nullable=True),
        sa.CheckConstraint("provider IN ('aws', 'gcp')", name=op.f("ck_issuance_events_provider")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_issuance_events")),
    )
    op.create_index(op.f("ix_issuance_events_created_at"), "issuance_events", ["created_at"])
    op.create_index(op.f("ix_issuance_events_mapping"), "issuance_events", ["mapping"])


def downgrade() -> None:
    op.drop_index(op.f("ix_issuance_events_mapping"), table_name="issuance_events")
    op.drop_index(op.f("ix_issuance_events_created_at"), table_name="issuance_events")
    op.drop_table("issuance_events")
