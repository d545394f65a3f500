"""``sts serve`` on a database that is not ready (README "Operating it"): it starts, says in one
warning what to do, and ``/readyz`` gives the same reason until the database is usable; then it
becomes ready by itself. Real processes on PostgreSQL."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests
from click.testing import CliRunner

from sts.cli import cli
from sts.dev.issuer import DevIssuer
from tests.conftest import POSTGRES_URL
from tests.functional.serving import serve_env, sts_serve


@contextmanager
def serving(database_url: str, issuer: DevIssuer, log: Path) -> Iterator[str]:
    """One worker on ``database_url``, yielded once it is alive (not ready: that is the test)."""
    env = serve_env(database_url, issuer)
    with sts_serve(env, log, "--workers", "1", ready="/healthz") as url:
        yield url


def messages(log: Path) -> str:
    """The log's messages, decoded (every line is one JSON object)."""
    return "\n".join(json.loads(line)["msg"] for line in log.read_text().splitlines())


def readiness(url: str) -> tuple[int, str]:
    answer = requests.get(url + "/readyz", timeout=5)
    return answer.status_code, answer.json().get("reason", "")


#: Words of a 503 that only says the first look at the database has not ended yet (a loaded
#: machine): not yet the reason the test waits for.
NOT_YET = "not loaded yet"


def wait_for(url: str, status: int, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while True:
        code, reason = readiness(url)
        if code == status and NOT_YET not in reason:
            return reason
        assert time.monotonic() < deadline, (code, reason)
        time.sleep(0.2)


def test_an_unmigrated_database_says_run_sts_db_upgrade_then_becomes_ready(
    postgres_url: str, issuer: DevIssuer, tmp_path: Path
) -> None:
    log = tmp_path / "serve.log"
    with serving(postgres_url, issuer, log) as url:
        reason = wait_for(url, 503)
        assert reason == "database not migrated: run sts db upgrade"
        assert "run sts db upgrade (/readyz answers 503 until then)" in messages(log)
        assert "mapping refresh failed: database not migrated: run sts db upgrade" in messages(log)
        assert "ProgrammingError" not in log.read_text()
        upgraded = CliRunner(env={"STS_DATABASE_URL": postgres_url}).invoke(cli, ["db", "upgrade"])
        assert upgraded.exit_code == 0, upgraded.output
        wait_for(url, 200)


def test_a_database_that_does_not_exist_is_named(issuer: DevIssuer, tmp_path: Path) -> None:
    missing = POSTGRES_URL.rsplit("/", 1)[0] + "/no_such_database_here"
    log = tmp_path / "serve.log"
    with serving(missing, issuer, log) as url:
        reason = wait_for(url, 503)
        assert reason.startswith("database unavailable: ")
        assert 'database "no_such_database_here" does not exist' in reason
        assert 'database "no_such_database_here" does not exist' in messages(log)
