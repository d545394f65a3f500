"""The ``signing_keys`` table: the broker's RSA keys when they live in the database.

A key's state is derived from its timestamps alone (:mod:`sts.broker.keys`), never from a mutable
"current" flag, so every replica reading the same rows computes the same signing key and JWKS.
``generation`` numbers the keys in the order they were made; its unique constraint is what makes
two replicas creating "the next key" at once end with one key, not two.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from sts.db.models import Base


class SigningKeyRow(Base):
    """One signing key: its public JWK in clear, its private key only sealed.

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
