"""The declarative base, shared column types, and every table's model.

Every table is declared here, so ``Base.metadata`` (what Alembic compares against in
``migrations/env.py``) holds all of them as soon as this module is imported, and this module
imports nothing of the modules that use the tables (no import cycle): ``issuance_events``
(written by :mod:`sts.audit`), ``role_mappings``, ``mapping_revision`` and ``mapping_changes``
(re-exported by :mod:`sts.mappings.models`, used by :mod:`sts.mappings.store`) and
``signing_keys`` (re-exported by :mod:`sts.broker.models`, used by :mod:`sts.broker.keys`),
``revocations`` and ``revocation_revision`` (used by :mod:`sts.revocations`). The
Alembic revisions in ``migrations/`` create exactly these tables (a test checks the autogenerate
diff is empty).
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

    One row per upstream call, never per request: cache hits write nothing. It is written with
    outcome ``pending`` before the call and completed after it, so a process killed in between
    leaves it ``pending``. The claim columns are unbounded text because they come from the
    caller's (verified) token. ``credential_sha256`` is the hex SHA-256 of the issued secret (AWS
    SessionToken, GCP access token), so a leaked credential can be traced to its row; the
    credential itself is never stored. ``access_key_id`` (AWS, not a secret) and
    ``session_name`` (the role session name) are what CloudTrail records of the session.
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
    # "pending", "issued", or "<OAuth error code>:<provider code>" (sts.audit documents them).
    outcome: Mapped[str] = mapped_column(sa.String(128))
    provider_request_id: Mapped[str | None] = mapped_column(sa.String(256))
    expires_at: Mapped[datetime | None]
    credential_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    scopes: Mapped[str | None] = mapped_column(sa.Text())
    # AWS only (NULL otherwise, and in rows older than revision c7e9f1a3b5d2).
    access_key_id: Mapped[str | None] = mapped_column(sa.String(128))
    session_name: Mapped[str | None] = mapped_column(sa.String(64))
    # GCP ID tokens only: the audience the token was issued for (docs/reference.md section 14).
    audience: Mapped[str | None] = mapped_column(sa.String(2048))


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


class SigningKeyRow(Base):
    """One broker signing key: its public JWK in clear, its private key only sealed.

    A key's state is derived from its timestamps alone (:mod:`sts.broker.keys`), never from a
    mutable "current" flag, so every replica reading the same rows computes the same signing key
    and JWKS. ``generation`` numbers the keys in the order they were made; its unique constraint
    is what makes two replicas creating "the next key" at once end with one key, not two.

    ``sealed_private_key`` is ``nonce || AES-256-GCM(PKCS#8 DER)`` under ``STS_KEY_ENCRYPTION_KEY``
    with the kid as associated data (NIST SP 800-38D; 12-byte nonce), and NULL once the key is
    retired: a retired key can never sign again, so its private part is not kept.
    """

    __tablename__ = "signing_keys"

    # RFC 7638 thumbprint (base64url SHA-256: 43 characters).
    kid: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    generation: Mapped[int] = mapped_column(unique=True)
    public_jwk: Mapped[dict[str, Any]]
    sealed_private_key: Mapped[bytes | None] = mapped_column(sa.LargeBinary())
    created_at: Mapped[datetime]
    signs_from: Mapped[datetime]
    retired_at: Mapped[datetime | None]


class Revocation(Base):
    """One revocation (docs/reference.md section 11): the identities whose tokens are refused,
    by exact selectors combined with AND (NULL: any), optionally only tokens issued before
    ``issued_before``. Kept with its actor and reason after it is lifted (``lifted_at``)."""

    __tablename__ = "revocations"
    __table_args__ = (
        sa.CheckConstraint(
            "account IS NOT NULL OR sub IS NOT NULL OR mapping IS NOT NULL", name="selector"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    account: Mapped[str | None] = mapped_column(sa.Text())
    project: Mapped[str | None] = mapped_column(sa.Text())
    deployment: Mapped[str | None] = mapped_column(sa.Text())
    environment_type: Mapped[str | None] = mapped_column(sa.String(16))
    sub: Mapped[str | None] = mapped_column(sa.Text())
    mapping: Mapped[str | None] = mapped_column(sa.String(63))
    issued_before: Mapped[datetime | None]
    reason: Mapped[str] = mapped_column(sa.Text())
    actor: Mapped[str] = mapped_column(sa.String(255))
    # The AWS deny documents printed when it was added ([{role_arn, policy_name, document,
    # mapping}]): every replica holds its cached credentials against these same documents.
    aws_policies: Mapped[list[dict[str, Any]]] = mapped_column(JSONDocument)
    lifted_at: Mapped[datetime | None] = mapped_column(index=True)
    lifted_by: Mapped[str | None] = mapped_column(sa.String(255))


class RevocationRevision(Base):
    """The single row (``id = 1``) whose ``revision`` changes with every revocation added or
    lifted: what each replica's refresher compares before it reloads them."""

    __tablename__ = "revocation_revision"
    __table_args__ = (sa.CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    revision: Mapped[int]


def all_tables() -> sa.MetaData:
    """``Base.metadata``, every table registered (Alembic's target)."""
    return Base.metadata
