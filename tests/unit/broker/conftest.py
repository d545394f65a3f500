"""Fixtures for the broker: a migrated database, a key-encryption key, a clock the test moves."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from sts.db import Database

START = 1_900_000_000.0  # 2030-03-17, a fixed moment so timings read as offsets from it


class Clock:
    """Seconds since the epoch, moved only by the test."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def kek() -> bytes:
    return secrets.token_bytes(32)


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    db.upgrade()
    yield db
    db.dispose()


def jwk_public_key(jwk: dict[str, str]) -> rsa.RSAPublicKey:
    """The RSA public key a verifier builds from a published JWK (RFC 7518 section 6.3.1)."""

    def number(member: str) -> int:
        text = jwk[member]
        return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")

    return rsa.RSAPublicNumbers(number("e"), number("n")).public_key()
