"""Allow the azure provider in role_mappings and issuance_events (docs/reference.md section 9).

Revision ID: e7a2c4d9b1f3
Revises: c3b1e0d5a9f4
Create Date: 2026-12-02 00:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "e7a2c4d9b1f3"
down_revision: str | Sequence[str] | None = "c3b1e0d5a9f4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("role_mappings", "issuance_events")


def _provider_check(allowed: str) -> None:
    for table in TABLES:
        # Batch mode: SQLite cannot alter a constraint, so the table is copied with the new one.
        with op.batch_alter_table(table, recreate="auto") as batch:
            batch.drop_constraint(op.f(f"ck_{table}_provider"), type_="check")
            batch.create_check_constraint("provider", f"provider IN ({allowed})")


def upgrade() -> None:
    _provider_check("'aws', 'gcp', 'azure'")


def downgrade() -> None:
    # Refused by the database while azure rows exist: remove those mappings first.
    _provider_check("'aws', 'gcp'")
