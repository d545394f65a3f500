"""A fresh database (SQLite file or PostgreSQL schema) with the generated mappings applied."""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator

import sqlalchemy as sa

from harness.constants import POSTGRES_URL
from sts.db import Database
from sts.mappings import store
from sts.mappings.spec import MappingSpec


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    schema = "bench_" + secrets.token_hex(6)
    admin = sa.create_engine(POSTGRES_URL)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def load_mappings(url: str, specs: list[MappingSpec]) -> float:
    """Migrate and apply ``specs`` in one transaction; returns the apply's seconds."""
    database = Database(url)
    try:
        database.upgrade()
        started = time.perf_counter()
        store.apply(database, specs, actor="bench", source="bench/run.py")
        return time.perf_counter() - started
    finally:
        database.dispose()
