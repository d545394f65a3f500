"""Record AWS AccessKeyId and role session name on issuance_events (docs/reference.md section 12).

Rows written before this revision keep NULL in both. The ``pending`` outcome needs no schema
change (``outcome`` is free text).

Revision ID: c7e9f1a3b5d2
Revises: b5d8e2f4a6c1
Create Date: 2026-12-06 00:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c7e9f1a3b5d2"
down_revision: str | Sequence[str] | None = "b5d8e2f4a6c1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("issuance_events", sa.Column("access_key_id", sa.String(128), nullable=True))
    op.add_column("issuance_events", sa.Column("session_name", sa.String(64), nullable=True))
    op.add_column("issuance_events", sa.Column("audience", sa.String(2048), nullable=True))


def downgrade() -> None:
    # A plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35): neither column is indexed or
    # constrained, so the table is not rebuilt and its CHECK constraint stays as it is.
    op.drop_column("issuance_events", "audience")
    op.drop_column("issuance_events", "session_name")
    op.drop_column("issuance_events", "access_key_id")
