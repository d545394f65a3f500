"""The broker-mode mapping fields through ``sts mappings`` (docs/reference.md sections 4 and 6):
``aws.token``, ``gcp.token``, ``aws.session_tags``; their defaults in ``list --json``, the round
trip, and the pass-through warning of ``apply``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from sts.cli import cli
from sts.db import Database
from sts.mappings import store
from sts.mappings.document import parse_document
from sts.mappings.models import RoleMapping
from tests.functional.test_mappings_cli import assert_refused

ROLE = "arn:aws:iam::123456789012:role/orders-api"
WIP = (
    "//iam.googleapis.com/projects/123456789/locations/global/"
    "workloadIdentityPools/zuplo/providers/zuplo"
)
ISSUER = "https://sts.example.com"
DOCUMENT = f"""\
mappings:
  - name: orders-prod
    account: my-account
    project: my-project
    aws:
      role_arn: {ROLE}
  - name: orders-off
    account: my-account
    project: off
    enabled: false
    aws:
      role_arn: {ROLE}
  - name: analytics-gcp
    account: my-account
    project: analytics
    gcp:
      workload_identity_provider: {WIP}
"""


@pytest.fixture
def database(database_url: str) -> Any:
    db = Database(database_url)
    db.upgrade()
    yield db
    db.dispose()


@pytest.fixture
def run(database_url: str) -> Any:
    def invoke(*args: str, broker: bool = False) -> Result:
        env = {"STS_DATABASE_URL": database_url, "USER": "alice", "STS_BROKER_ISSUER": None}
        if broker:
            # No key-encryption key: mapping commands never open the signing keys.
            env.update(STS_BROKER_ISSUER=ISSUER, STS_KEY_ENCRYPTION_KEY=None)
        return CliRunner().invoke(cli, list(args), env=env)

    return invoke


def write(tmp_path: Path, text: str, name: str = "mappings.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def stored_options(database: Database) -> dict[str, dict[str, Any]]:
    with database.engine.connect() as conn:
        rows = conn.execute(sa.select(RoleMapping.name, RoleMapping.options))
        return {row.name: row.options for row in rows}


def listed(run: Any, *, broker: bool) -> list[dict[str, Any]]:
    result = run("mappings", "list", "--json", broker=broker)
    assert result.exit_code == 0, result.output
    entries: list[dict[str, Any]] = json.loads(result.stdout)
    return entries


@pytest.mark.parametrize(
    ("by", "where", "problem"),
    [
        ("      token: Broker", "7: mappings[0].aws.token", "must be broker or zuplo"),
        ("      token: true", "7: mappings[0].aws.token", "must be broker or zuplo"),
        ("      token: 1", "7: mappings[0].aws.token", "must be broker or zuplo"),
        ("      token: [broker]", "7: mappings[0].aws.token", "must be broker or zuplo"),
        ('      token: "broker "', "7: mappings[0].aws.token", "must be broker or zuplo"),
        ("      session_tags: yes-please", "7: mappings[0].aws.session_tags", "true or false"),
        ('      session_tags: "true"', "7: mappings[0].aws.session_tags", "true or false"),
        ("      session_tags: 1", "7: mappings[0].aws.session_tags", "true or false"),
    ],
)
def test_bad_token_fields_exit_2_with_the_line(
    database: Database, run: Any, tmp_path: Path, by: str, where: str, problem: str
) -> None:
    text = DOCUMENT.replace(f"role_arn: {ROLE}\n", f"role_arn: {ROLE}\n{by}\n", 1)
    assert_refused(run, database, write(tmp_path, text), where, problem)


def test_gcp_token_is_checked_and_session_tags_is_aws_only(
    database: Database, run: Any, tmp_path: Path
) -> None:
    bad = DOCUMENT.replace(f"{WIP}\n", f"{WIP}\n      token: both\n")
    result = run("mappings", "apply", write(tmp_path, bad))
    assert result.exit_code == 2
    assert ":18: mappings[2].gcp.token: must be broker or zuplo" in result.stderr
    tags = DOCUMENT.replace(f"{WIP}\n", f"{WIP}\n      session_tags: false\n")
    result = run("mappings", "apply", write(tmp_path, tags))
    assert result.exit_code == 2
    assert ":18: mappings[2].gcp.session_tags: unknown key" in result.stderr
    assert store.load(database) == (0, [])


@pytest.mark.parametrize("broker", [False, True])
def test_list_json_shows_the_token_as_stored_and_takes_it_back_unchanged(
    database: Database, run: Any, tmp_path: Path, broker: bool
) -> None:
    """Reference section 13: the CLI never resolves the default from its own shell. The same
    rows list the same with and without STS_BROKER_ISSUER, an unset token absent."""
    assert run("mappings", "apply", write(tmp_path, DOCUMENT), broker=broker).exit_code == 0
    listing = listed(run, broker=broker)
    assert listing == listed(run, broker=not broker)
    entries = {entry["name"]: entry for entry in listing}
    assert "token" not in entries["orders-prod"]["aws"]
    assert "token" not in entries["analytics-gcp"]["gcp"]
    assert entries["orders-prod"]["aws"]["session_tags"] is True
    assert all("token" not in options for options in stored_options(database).values())

    path = write(tmp_path, json.dumps(listing), "listed.json")
    for shell in (broker, not broker):
        again = run("mappings", "apply", "--prune", path, broker=shell)
        assert again.exit_code == 0, again.output
        assert again.stdout.strip() == "no changes"
    assert store.revision(database) == 1
    assert all("token" not in options for options in stored_options(database).values())


@pytest.mark.parametrize("broker", [False, True])
def test_an_explicit_token_is_stored_listed_and_changed_as_written(
    database: Database, run: Any, tmp_path: Path, broker: bool
) -> None:
    text = DOCUMENT.replace(f"role_arn: {ROLE}\n", f"role_arn: {ROLE}\n      token: zuplo\n", 1)
    assert run("mappings", "apply", write(tmp_path, text), broker=broker).exit_code == 0
    assert stored_options(database)["orders-prod"]["token"] == "zuplo"
    entries = {entry["name"]: entry for entry in listed(run, broker=not broker)}
    assert entries["orders-prod"]["aws"]["token"] == "zuplo"
    assert "token" not in entries["analytics-gcp"]["gcp"]
    unchanged = run("mappings", "apply", write(tmp_path, text), broker=not broker)
    assert unchanged.stdout.strip() == "no changes"

    # Leaving the field out gives the mapping back to the service's default.
    result = run("mappings", "apply", write(tmp_path, DOCUMENT), broker=broker)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "~ update orders-prod: aws.token zuplo -> (unset)"
    assert "token" not in stored_options(database)["orders-prod"]

    # An explicit token is a change over an unset one, whatever the shell's default would be:
    # it pins the mapping, whichever mode the service runs in.
    pinned = DOCUMENT.replace(f"{WIP}\n", f"{WIP}\n      token: broker\n")
    result = run("mappings", "apply", write(tmp_path, pinned), broker=broker)
    assert result.stdout.strip() == "~ update analytics-gcp: gcp.token (unset) -> broker"
    assert stored_options(database)["analytics-gcp"]["token"] == "broker"


def test_session_tags_false_is_stored_and_shown_in_the_diff(
    database: Database, run: Any, tmp_path: Path
) -> None:
    assert run("mappings", "apply", write(tmp_path, DOCUMENT)).exit_code == 0
    off = DOCUMENT.replace(
        f"role_arn: {ROLE}\n", f"role_arn: {ROLE}\n      session_tags: false\n", 1
    )
    result = run("mappings", "apply", write(tmp_path, off))
    assert result.stdout.strip() == "~ update orders-prod: aws.session_tags true -> false"
    assert stored_options(database)["orders-prod"]["session_tags"] is False
    entries = {entry["name"]: entry for entry in listed(run, broker=False)}
    assert entries["orders-prod"]["aws"]["session_tags"] is False


def warnings(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("warning:")]


@pytest.mark.parametrize("broker", [False, True])
def test_apply_names_both_outcomes_of_an_unset_aws_token_whatever_its_shell(
    database: Database, run: Any, tmp_path: Path, broker: bool
) -> None:
    result = run("mappings", "apply", write(tmp_path, DOCUMENT), broker=broker)
    assert result.exit_code == 0, result.output
    (warning,) = warnings(result)
    assert warning.startswith("warning: mapping orders-prod ")
    assert "broker" in warning
    assert "pass-through" in warning or "passes the Zuplo token through" in warning
    assert "STS_BROKER_ISSUER" in warning
    # The same words from either shell: the CLI does not know the service's mode.
    other = run("mappings", "apply", write(tmp_path, DOCUMENT), broker=not broker)
    assert warnings(other) == [warning]
    assert len(store.load(database)[1]) == 3
    # A dry run says the same.
    dry = run("mappings", "apply", "--dry-run", write(tmp_path, DOCUMENT), broker=broker)
    assert warnings(dry) == [warning]


def test_apply_warns_of_an_explicit_pass_through_as_such(
    database: Database, run: Any, tmp_path: Path
) -> None:
    text = DOCUMENT.replace(f"role_arn: {ROLE}\n", f"role_arn: {ROLE}\n      token: zuplo\n")
    result = run("mappings", "apply", write(tmp_path, text), broker=True)
    assert result.exit_code == 0
    (warning,) = warnings(result)
    assert "mapping orders-prod " in warning
    assert "aws.token is zuplo" in warning
    # The disabled mapping (also zuplo now) is not warned about; a GCP mapping never is.
    assert "orders-off" not in result.stderr
    explicit = text.replace("      token: zuplo\n", "      token: broker\n")
    assert warnings(run("mappings", "apply", write(tmp_path, explicit))) == []


def test_the_token_is_part_of_the_fingerprint() -> None:
    (spec,) = parse_document(DOCUMENT.split("  - name: orders-off", maxsplit=1)[0])
    broker, zuplo = spec.with_default_token(True), spec.with_default_token(False)
    assert broker.fingerprint != zuplo.fingerprint
    assert broker.with_token("zuplo") == zuplo
    assert spec.with_default_token(True).token == "broker"
    assert zuplo.with_default_token(True).token == "zuplo"
