"""``STS_DATABASE_URL`` that cannot be used, for every command that uses the database (README,
"Configuration" and "Commands"): a URL no installed driver can open is bad configuration (exit 2,
one line naming the variable, nothing written); a database that does not answer is a failed
operation (exit 1, one line); ``sts serve`` starts on an unreachable database and ``/readyz``
says why.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from sts.dev.issuer import DevIssuer
from tests.conftest import AUDIENCE
from tests.functional.serving import free_port, run_sts, serve_env

UNKNOWN_DIALECT = "nosuchdb://x/y"
UNKNOWN_DRIVER = "mysql+nosuchdriver://u@127.0.0.1/db"
# The dialect ships with SQLAlchemy; its DBAPI (mysqlclient) is not installed here.
MISSING_DBAPI = "mysql://u@127.0.0.1/db"
UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:1/x?connect_timeout=2"

CLAIMS = json.dumps(
    {"account": "a", "project": "p", "deployment": "d", "environment_type": "production"}
)
MAPPING_FILE = """\
mappings:
  - name: orders
    account: a
    project: p
    aws: {role_arn: "arn:aws:iam::123456789012:role/orders"}
"""

COMMANDS = [
    ["serve", "--port", "1"],
    ["db", "upgrade"],
    ["db", "current"],
    ["db", "downgrade", "base"],
    ["mappings", "apply", "{file}"],
    ["mappings", "apply", "--dry-run", "{file}"],
    ["mappings", "list"],
    ["mappings", "remove", "orders"],
    ["explain", "--claims", CLAIMS],
    ["audit", "list"],
    ["audit", "prune"],
]


def sts_with_mappings(
    args: list[str], url: str, tmp_path: Path, issuer: DevIssuer
) -> subprocess.CompletedProcess[str]:
    mapping_file = tmp_path / "mappings.yaml"
    mapping_file.write_text(MAPPING_FILE)
    env = serve_env(url, issuer)
    return run_sts(
        *(arg.replace("{file}", str(mapping_file)) for arg in args), env=env, cwd=tmp_path
    )


def test_the_mysql_dbapi_is_really_absent() -> None:
    """The missing-driver case below relies on it."""
    assert importlib.util.find_spec("MySQLdb") is None


@pytest.mark.parametrize("url", [UNKNOWN_DIALECT, UNKNOWN_DRIVER, MISSING_DBAPI])
@pytest.mark.parametrize("args", COMMANDS, ids=lambda args: " ".join(args[:2]))
def test_url_no_driver_can_open_is_exit_2_one_line_naming_the_variable(
    args: list[str], url: str, tmp_path: Path, issuer: DevIssuer
) -> None:
    result = sts_with_mappings(args, url, tmp_path, issuer)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: STS_DATABASE_URL: ")
    assert result.stdout == ""
    # Nothing written: no SQLite file or anything else appears where the command ran.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mappings.yaml"]


@pytest.mark.parametrize("args", COMMANDS[1:], ids=lambda args: " ".join(args[:2]))
def test_unreachable_database_is_exit_1_one_line_without_traceback(
    args: list[str], tmp_path: Path, issuer: DevIssuer
) -> None:
    result = sts_with_mappings(args, UNREACHABLE, tmp_path, issuer)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: database unreachable: ")
    assert "Traceback" not in result.stderr + result.stdout


def test_explain_on_an_unmigrated_database_is_exit_1_one_line(
    tmp_path: Path, issuer: DevIssuer
) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    result = sts_with_mappings(["explain", "--claims", CLAIMS], url, tmp_path, issuer)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "sts db upgrade" in lines[0]
    assert "Traceback" not in result.stderr


def test_serve_on_an_unreachable_database_starts_and_readyz_says_why(
    tmp_path: Path, issuer: DevIssuer
) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STS_")}
    env.update(
        STS_DATABASE_URL=UNREACHABLE,
        STS_AUDIENCE=AUDIENCE,
        STS_TRUSTED_ISSUERS=issuer.url,
        STS_ALLOW_HTTP_LOOPBACK="true",
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sts", "serve", "--port", str(port), "--workers", "1"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, log.read_text()
                try:
                    ready = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
                    break
                except requests.ConnectionError:
                    assert time.monotonic() < deadline, log.read_text()
                    time.sleep(0.1)
            assert ready.status_code == 503
            assert "database" in ready.json()["reason"]
            assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
    assert "Traceback" not in log.read_text()


@pytest.mark.parametrize(
    "url", ["postgres://u@127.0.0.1/db", "postgresql+psycopg2://u@127.0.0.1/db"]
)
def test_postgres_urls_of_other_drivers_say_which_to_write(
    url: str, tmp_path: Path, issuer: DevIssuer
) -> None:
    result = sts_with_mappings(["mappings", "list"], url, tmp_path, issuer)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: STS_DATABASE_URL: ")
    assert line.endswith("write postgresql+psycopg://... (the driver zuplo-sts installs)")


READ_ONLY = [
    ["mappings", "list"],
    ["explain", "--claims", CLAIMS],
    ["audit", "list"],
]


@pytest.mark.parametrize("args", READ_ONLY, ids=lambda args: " ".join(args[:2]))
def test_read_only_commands_never_create_a_database(
    args: list[str], tmp_path: Path, issuer: DevIssuer
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STS_")}
    for unset in (True, False):  # the default ./sts.db, and a URL naming a missing file
        if not unset:
            env["STS_DATABASE_URL"] = f"sqlite:///{tmp_path / 'missing.db'}"
        result = run_sts(*args, env=env, cwd=tmp_path)
        assert result.returncode == 1, result.stderr
        (line,) = result.stderr.splitlines()
        assert "does not exist" in line
        assert "run sts db upgrade to create it" in line
        assert ("STS_DATABASE_URL is not set" in line) is unset
        assert list(tmp_path.iterdir()) == []
    current = run_sts("db", "current", env=env, cwd=tmp_path)
    assert (current.returncode, current.stdout) == (0, "none (not migrated: run sts db upgrade)\n")
    assert list(tmp_path.iterdir()) == []
    # A command that writes creates it, as before.
    created = sts_with_mappings(
        ["db", "upgrade"], f"sqlite:///{tmp_path / 'missing.db'}", tmp_path, issuer
    )
    assert created.returncode == 0, created.stderr
    assert (tmp_path / "missing.db").exists()
