"""Shared fixtures: a live development issuer, a clean SQLite or PostgreSQL database per test."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from sts.dev.issuer import DevIssuer

POSTGRES_URL = os.environ.get(
    "STS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
AUDIENCE = "https://sts.example.test"


@pytest.fixture(scope="session")
def issuer() -> Iterator[DevIssuer]:
    """A Zuplo-like issuer serving its JWKS on 127.0.0.1 for the whole session."""
    with DevIssuer() as dev:
        yield dev


def _postgres_schema_url() -> Iterator[str]:
    import sqlalchemy as sa

    schema = "t_" + secrets.token_hex(6)
    admin = sa.create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind: an SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'sts.db'}"
    else:
        yield from _postgres_schema_url()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL schema, for tests that run on PostgreSQL only."""
    yield from _postgres_schema_url()
