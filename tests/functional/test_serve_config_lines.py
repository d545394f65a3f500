"""``sts serve`` with bad configuration: exit 2 and exactly one line on stderr naming the
variable, before the database is touched (docs/reference.md sections 5 and 6: "nothing
half-starts", "one clear line naming what is wrong, and nothing written")."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import AUDIENCE
from tests.functional.serving import free_port, run_sts

BROKER_ISSUER = "https://sts.example.com/broker"
KEK = base64.urlsafe_b64encode(bytes(range(32))).decode()


def base_env(database_url: str, **variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STS_")}
    env.update(STS_DATABASE_URL=database_url, STS_AUDIENCE=AUDIENCE, **variables)
    return env


def serve(env: dict[str, str]) -> list[str]:
    """``sts serve`` on a free port, expected to stop at once with exit 2: its stderr lines."""
    result = run_sts("serve", "--port", str(free_port()), "--workers", "1", env=env, timeout=60)
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    return lines


def tables(database_url: str) -> list[str]:
    engine = sa.create_engine(database_url)
    try:
        return sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "trusted",
    [
        BROKER_ISSUER,
        f"https://issuer.example.com,{BROKER_ISSUER}",
        BROKER_ISSUER + "/",
    ],
)
def test_the_broker_issuer_as_a_trusted_issuer_is_one_line_naming_both(
    tmp_path: Path, trusted: str
) -> None:
    database = tmp_path / "sts.db"
    env = base_env(
        f"sqlite:///{database}",
        STS_TRUSTED_ISSUERS=trusted,
        STS_BROKER_ISSUER=BROKER_ISSUER,
        STS_KEY_ENCRYPTION_KEY=KEK,
    )
    (line,) = serve(env)
    assert line.startswith("error: STS_TRUSTED_ISSUERS: ")
    assert "STS_BROKER_ISSUER" in line
    assert not database.exists()  # nothing written


def test_broker_mode_without_a_key_store_on_unmigrated_database_is_one_line(
    database_url: str,
) -> None:
    """Before the fix a fresh PostgreSQL database first got a "database not migrated" warning
    (and an SQLite one was migrated) before the configuration error."""
    env = base_env(database_url, STS_BROKER_ISSUER=BROKER_ISSUER)
    (line,) = serve(env)
    assert line.startswith("error: STS_KEY_ENCRYPTION_KEY: "), line
    assert "STS_BROKER_ISSUER" in line
    assert "migrated" not in line
    # Nothing written: SQLite is not migrated on first start either.
    assert tables(database_url) == []


def test_an_empty_key_encryption_key_is_the_same_one_line(tmp_path: Path) -> None:
    database = tmp_path / "sts.db"
    env = base_env(
        f"sqlite:///{database}", STS_BROKER_ISSUER=BROKER_ISSUER, STS_KEY_ENCRYPTION_KEY=" "
    )
    (line,) = serve(env)
    assert line.startswith("error: STS_KEY_ENCRYPTION_KEY: "), line
    assert not database.exists()
