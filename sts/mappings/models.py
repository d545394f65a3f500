"""SQLAlchemy models of the mapping tables (DESIGN "Mappings").

``role_mappings`` holds the validated mappings; ``mapping_revision`` is a one-row counter bumped in
the same transaction as every mapping change, so a reader learns whether anything changed with one
cheap query; ``mapping_changes`` is the operator's history: what each apply/remove changed, by
whom, when, from where. The Alembic revisions in ``migrations/`` create exactly these tables (a
test checks the autogenerate diff is empty).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Deterministic constraint names, so migrations can refer to them on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONDocument = sa.JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every backend.

    SQLite has no time zone type and hands back naive values; they were written as UTC, so they
    are read back as UTC. Naive values are refused on the way in: their zone is a guess.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:  # noqa: ARG002
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: timestamps must be timezone-aware")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:  # noqa: ARG002
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSONDocument, datetime: UTCDateTime()}  # noqa: RUF012


class RoleMapping(Base):
    """One mapping (CONTRACT section 4); ``options`` is its provider part of the document."""

    __tablename__ = "role_mappings"
    __table_args__ = (
        sa.CheckConstraint("provider IN ('aws', 'gcp')", name="provider"),
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


# SQLite makes only an INTEGER PRIMARY KEY an auto-incrementing rowid alias.
EventId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class IssuanceEvent(Base):
    """One upstream credential call: an issuance, a refusal or a temporary failure (sts.audit).

    Written once per upstream call, never per request: cache hits write nothing. The claim
    columns are unbounded text because they come from the caller's (verified) token.
    ``credential_sha256`` is the hex SHA-256 of the issued secret (AWS SessionToken, GCP access
    token), so a leaked credential can be traced to its row; the credential itself is never stored.
    """

    __tablename__ = "issuance_events"
    __table_args__ = (sa.CheckConstraint("provider IN ('aws', 'gcp')", name="provider"),)

    id: Mapped[int] = mapped_column(EventId, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    issuer: Mapped[str] = mapped_column(sa.Text())
    sub: Mapped[str] = mapped_column(sa.Text())
    account: Mapped[str] = mapped_column(sa.Text())
    project: Mapped[str] = mapped_column(sa.Text())
    deployment: Mapped[str] = mapped_column(sa.Text())
    environment_type: Mapped[str] = mapped_column(sa.String(16))
    mapping: Mapped[str] = mapped_column(sa.String(63), index=True)
    provider: Mapped[str] = mapped_column(sa.String(8))
    # The role ARN, the service-account email or, without one, the workload identity provider.
    target: Mapped[str] = mapped_column(sa.String(2048))
    # "issued", or "<OAuth error code>:<provider code>" (sts.audit documents the values).
    outcome: Mapped[str] = mapped_column(sa.String(128))
    provider_request_id: Mapped[str | None] = mapped_column(sa.String(256))
    expires_at: Mapped[datetime | None]
    credential_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    scopes: Mapped[str | None] = mapped_column(sa.Text())
