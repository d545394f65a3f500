"""SQLAlchemy models of the mapping tables (README "Mappings").

``role_mappings`` holds the validated mappings; ``mapping_revision`` is a one-row counter bumped in
the same transaction as every mapping change, so a reader learns whether anything changed with one
cheap query; ``mapping_changes`` is the operator's history: what each apply/remove changed, by
whom, when, from where.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from sts.db.models import Base, utcnow


class RoleMapping(Base):
    """One mapping (docs/reference.md section 4); ``options`` is its provider part."""

    __tablename__ = "role_mappings"
    __table_args__ = (
        sa.CheckConstraint("provider IN ('aws', 'gcp', 'azure')", name="provider"),
        sa.CheckConstraint(
            "environment_type IN ('production', 'preview', 'development', '*')",
            name="environment_type",
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(63), unique=True)
    description: Mapped[str] = mapped_column(sa.String(1024), default="")
    account: Mapped[str] = mapped_column(sa.String(255), index=True)
    project: Mapped[str] = mapped_column(sa.String(255))
    deployment: Mapped[str] = mapped_column(sa.String(255))
    environment_type: Mapped[str] = mapped_column(sa.String(16))
    provider: Mapped[str] = mapped_column(sa.String(8))
    # The role ARN, the service-account email or, without one, the workload identity provider.
    target: Mapped[str] = mapped_column(sa.String(2048))
    options: Mapped[dict[str, Any]]
    enabled: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class MappingRevision(Base):
    """The single row (``id = 1``) whose ``revision`` changes with every mapping change."""

    __tablename__ = "mapping_revision"
    __table_args__ = (sa.CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    revision: Mapped[int]


class MappingChange(Base):
    """One history entry: a mapping created, updated or deleted, with both documents."""

    __tablename__ = "mapping_changes"
    __table_args__ = (
        sa.CheckConstraint("action IN ('create', 'update', 'delete')", name="action"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(sa.String(255))
    # "cli", or "alembic:<revision>" for mappings kept in a team's own migration history.
    source: Mapped[str] = mapped_column(sa.String(255), index=True)
    action: Mapped[str] = mapped_column(sa.String(8))
    name: Mapped[str] = mapped_column(sa.String(63), index=True)
    before: Mapped[dict[str, Any] | None]
    after: Mapped[dict[str, Any] | None]
    # The mapping_revision value this change produced.
    revision: Mapped[int]
