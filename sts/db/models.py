"""The declarative base, shared column types, and every table's model.

Tables are declared next to their owners and registered here, so ``Base.metadata`` (what Alembic
compares against in ``migrations/env.py``) always holds all of them: ``role_mappings``,
``mapping_revision`` and ``mapping_changes`` (:mod:`sts.mappings.models`), ``issuance_events``
(below, written by :mod:`sts.audit`) and ``signing_keys`` (:mod:`sts.broker.models`). The Alembic
revisions in ``migrations/`` create exactly these tables (a test checks the autogenerate diff is
empty).
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
    __table_args__ = (sa.CheckConstraint("provider IN ('aws', 'gcp', 'azure')", name="provider"),)

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


def all_tables() -> sa.MetaData:
    """``Base.metadata`` with every owner's tables registered (Alembic's target)."""
    # Importing a models module registers its tables (the mapping tables, signing_keys).
    import sts.broker.models
    import sts.mappings.models  # noqa: F401

    return Base.metadata
