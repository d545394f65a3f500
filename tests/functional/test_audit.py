"""Issuance events through HTTP and ``sts audit`` on real SQLite and PostgreSQL databases."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from click.testing import CliRunner, Result
from prometheus_client.parser import text_string_to_metric_families

from sts.audit import IssuanceRecord
from sts.cli import cli
from sts.db import Database
from sts.db.models import IssuanceEvent
from sts.logs import JsonFormatter
from tests.functional.conftest import ROLE, SA, Stack

#: Attempts per AWS call (docs/operations.md: 3 attempts, botocore standard mode).
MAX_ATTEMPTS = 3
SCOPES = {
    "https://www.googleapis.com/auth/cloud-platform",
    "https://www.googleapis.com/auth/bigquery",
}


def events(database: Database) -> list[dict[str, Any]]:
    with database.engine.connect() as conn:
        result = conn.execute(sa.select(IssuanceEvent.__table__).order_by(IssuanceEvent.id))
        return [dict(row._mapping) for row in result]


def assert_no_secret(row: Any, *secrets: str) -> None:
    """No column holds a secret, as it is or in an encoding a column could store it in.

    The digest column is hex, so a secret written there hex- or base64-encoded instead of
    hashed must be caught too; a plain ``secret in repr(row)`` would miss it.
    """
    text = repr(row)
    for secret in secrets:
        raw = secret.encode()
        forms = {
            secret,
            raw.hex(),
            base64.b64encode(raw).decode().rstrip("="),
            base64.urlsafe_b64encode(raw).decode().rstrip("="),
        }
        for form in forms:
            assert form not in text


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def audit_log() -> Iterator[Collect]:
    handler = Collect()
    logger = logging.getLogger("sts.audit")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def write_failures(stack: Stack) -> float:
    text = requests.get(stack.url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "sts_audit_write_failures_total":
                return sample.value
    raise AssertionError("sts_audit_write_failures_total not exported")


# -- through HTTP --------------------------------------------------------------------------------


def test_aws_issuance_writes_one_row_and_cache_hits_write_none(
    stack_factory: Any, database_url: str
) -> None:
    stack: Stack = stack_factory(database_url=database_url)
    database = stack.services.database
    before = datetime.now(UTC)
    response = stack.post()
    assert response.status_code == 200, response.text
    creds = response.json()["aws_credentials"]

    [row] = events(database)
    assert row["created_at"] >= before - timedelta(seconds=1)
    assert row["issuer"] == stack.issuer.url
    assert row["sub"] == stack.issuer.claims()["sub"]
    assert (row["account"], row["project"], row["environment_type"]) == (
        "my-account",
        "my-project",
        "production",
    )
    assert row["deployment"] == "copper-bedbug-main-53c4947"
    assert (row["mapping"], row["provider"], row["target"]) == ("orders-prod", "aws", ROLE)
    assert row["outcome"] == "issued"
    assert row["provider_request_id"]
    # The credential_process document shows whole seconds; the row keeps AWS's precision.
    assert row["expires_at"].replace(microsecond=0) == datetime.fromisoformat(creds["Expiration"])
    assert row["credential_sha256"] == hashlib.sha256(creds["SessionToken"].encode()).hexdigest()
    assert row["scopes"] is None
    # The AccessKeyId is an identifier, not a secret (CloudTrail records it): the row keeps it.
    assert row["access_key_id"] == creds["AccessKeyId"]
    assert row["session_name"] == "copper-bedbug-main-53c4947"
    assert_no_secret(row, creds["SessionToken"], creds["SecretAccessKey"])

    # The same caller again, with the same and with a fresh token: served from the cache.
    assert stack.post().status_code == 200
    assert stack.post(stack.token()).status_code == 200
    assert len(stack.aws_requests()) == 1
    assert len(events(database)) == 1

    # And the operator reads it back with the CLI.
    result = run("audit", "list", "--json", url=database_url)
    assert result.exit_code == 0, result.output
    [listed] = json.loads(result.output)
    assert listed["credential_sha256"] == row["credential_sha256"]
    assert listed["outcome"] == "issued"
    assert listed["id"] == row["id"]


def test_refusal_row_has_the_provider_code_and_the_request_id_aws_sent(
    stack_factory: Any, database_url: str
) -> None:
    stack: Stack = stack_factory(database_url=database_url)
    stack.aws.fail_next(
        403,
        "AccessDenied",
        "Not authorized to perform sts:AssumeRoleWithWebIdentity",
        request_id="7d3c1a9e-0b5e-4c2f-8e41-2a6b9f0c1d3e",
    )
    response = stack.post()
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid_target",
        "error_description": "aws: AccessDenied - the role does not trust this identity",
    }

    [row] = events(stack.services.database)
    assert row["outcome"] == "invalid_target:AccessDenied"
    assert (row["mapping"], row["target"]) == ("orders-prod", ROLE)
    assert row["provider_request_id"] == "7d3c1a9e-0b5e-4c2f-8e41-2a6b9f0c1d3e"
    assert row["expires_at"] is None
    assert row["credential_sha256"] is None


def test_temporary_upstream_failure_is_recorded_as_temporarily_unavailable(
    stack: Stack,
) -> None:
    stack.aws.fail_next(
        503,
        "ServiceUnavailable",
        sender=False,
        times=MAX_ATTEMPTS,
        request_id="0e9d8c7b-6a5f-4e3d-2c1b-0a9f8e7d6c5b",
    )
    response = stack.post()
    assert response.status_code == 503
    [row] = events(stack.services.database)
    assert row["outcome"] == "temporarily_unavailable:ServiceUnavailable"
    assert row["provider_request_id"] == "0e9d8c7b-6a5f-4e3d-2c1b-0a9f8e7d6c5b"
    assert row["credential_sha256"] is None


def test_gcp_issuance_row(stack_factory: Any, database_url: str) -> None:
    stack: Stack = stack_factory(database_url=database_url)
    response = stack.post(stack.token(account="gcp-account", project="analytics"))
    assert response.status_code == 200, response.text
    access_token = response.json()["access_token"]

    [row] = events(stack.services.database)
    assert (row["mapping"], row["provider"], row["target"]) == ("analytics-gcp", "gcp", SA)
    assert row["outcome"] == "issued"
    assert (row["account"], row["project"]) == ("gcp-account", "analytics")
    assert row["credential_sha256"] == hashlib.sha256(access_token.encode()).hexdigest()
    assert set(row["scopes"].split()) == SCOPES
    assert row["expires_at"] > datetime.now(UTC) + timedelta(minutes=25)
    assert_no_secret(row, access_token)


def test_database_write_failure_still_answers_and_logs_the_event(
    stack: Stack, audit_log: Collect
) -> None:
    with stack.services.database.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE issuance_events"))
    counted = write_failures(stack)

    response = stack.post()
    assert response.status_code == 200, response.text
    creds = response.json()["aws_credentials"]

    # Two writes lost, two lines: the call before it was made, then its completion.
    assert write_failures(stack) == counted + 2
    pending, record = audit_log.records
    assert pending.levelno == record.levelno == logging.WARNING
    before = json.loads(JsonFormatter().format(pending))["event"]
    assert (before["outcome"], before["deployment"]) == ("pending", "copper-bedbug-main-53c4947")
    assert before["expires_at"] is None
    line = JsonFormatter().format(record)
    assert "\n" not in line
    logged = json.loads(line)
    assert logged["logger"] == "sts.audit"
    event = logged["event"]
    assert event["outcome"] == "issued"
    assert event["created_at"] == before["created_at"]
    assert event["session_name"] == "copper-bedbug-main-53c4947"
    assert event["mapping"] == "orders-prod"
    assert event["target"] == ROLE
    assert event["deployment"] == "copper-bedbug-main-53c4947"
    assert event["credential_sha256"] == hashlib.sha256(creds["SessionToken"].encode()).hexdigest()
    logged_expiry = datetime.fromisoformat(event["expires_at"]).replace(microsecond=0)
    assert logged_expiry == datetime.fromisoformat(creds["Expiration"])
    # No part of a credential in a log line, the AccessKeyId included (the request id finds it).
    assert_no_secret(line, creds["SessionToken"], creds["SecretAccessKey"], creds["AccessKeyId"])


# -- sts audit ---------------------------------------------------------------------------------


def run(*args: str, url: str, **env: str) -> Result:
    return CliRunner().invoke(cli, list(args), env={"STS_DATABASE_URL": url, **env})


@pytest.fixture
def seeded(database_url: str) -> str:
    """A migrated database with four events: 100 days, 3 days, 2 hours old, and now."""
    database = Database(database_url)
    database.upgrade()
    now = datetime.now(UTC)
    ages = [
        (timedelta(days=100), "orders-prod", "issued"),
        (timedelta(days=3), "orders-prod", "invalid_target:AccessDenied"),
        (timedelta(hours=2), "analytics-gcp", "issued"),
        (timedelta(0), "orders-prod", "issued"),
    ]
    with database.engine.begin() as conn:
        for age, mapping, outcome in ages:
            record = IssuanceRecord(
                created_at=now - age,
                issuer="https://issuer.example",
                sub="atcl_subject",
                account="my-account",
                project="my-project",
                deployment="copper-main",
                environment_type="production",
                mapping=mapping,
                provider="gcp" if mapping == "analytics-gcp" else "aws",
                target=SA if mapping == "analytics-gcp" else ROLE,
                outcome=outcome,
                expires_at=now - age + timedelta(hours=1) if outcome == "issued" else None,
                credential_sha256=hashlib.sha256(str(age).encode()).hexdigest()
                if outcome == "issued"
                else None,
            )
            conn.execute(sa.insert(IssuanceEvent).values(**record.row()))
    database.dispose()
    return database_url


def listed(url: str, *args: str) -> list[dict[str, Any]]:
    result = run("audit", "list", "--json", *args, url=url)
    assert result.exit_code == 0, result.output
    documents: list[dict[str, Any]] = json.loads(result.output)
    return documents


def test_list_table_json_since_mapping_limit(seeded: str) -> None:
    result = run("audit", "list", url=seeded)
    assert result.exit_code == 0, result.output
    header, *lines = result.output.splitlines()
    assert header.split() == [
        "TIME",
        "MAPPING",
        "OUTCOME",
        "IDENTITY",
        "SUB",
        "EXPIRES",
        "ACCESS_KEY",
        "SHA256",
        "TARGET",
    ]
    assert len(lines) == 4
    assert lines[0].split()[1:3] == ["orders-prod", "issued"]
    assert "invalid_target:AccessDenied" in lines[2]
    assert f"aws {ROLE}" in lines[0]
    assert "my-account/my-project/copper-main (production)" in lines[0]

    everything = listed(seeded)
    assert [event["mapping"] for event in everything] == [
        "orders-prod",
        "analytics-gcp",
        "orders-prod",
        "orders-prod",
    ]
    assert set(everything[0]) == {
        "id",
        "created_at",
        "issuer",
        "sub",
        "account",
        "project",
        "deployment",
        "environment_type",
        "mapping",
        "provider",
        "target",
        "outcome",
        "provider_request_id",
        "expires_at",
        "credential_sha256",
        "scopes",
        "access_key_id",
        "session_name",
        "audience",
    }
    assert everything[0]["created_at"].endswith("Z")

    assert len(listed(seeded, "--since", "24h")) == 2
    assert len(listed(seeded, "--since", "30m")) == 1
    assert len(listed(seeded, "--since", "7d")) == 3
    week_ago = (datetime.now(UTC) - timedelta(days=7)).isoformat()
    assert len(listed(seeded, "--since", week_ago)) == 3
    assert [e["outcome"] for e in listed(seeded, "--mapping", "analytics-gcp")] == ["issued"]
    assert len(listed(seeded, "--mapping", "orders-prod", "--since", "7d")) == 2
    assert len(listed(seeded, "--limit", "2")) == 2
    assert listed(seeded, "--mapping", "nothing") == []

    empty = run("audit", "list", "--mapping", "nothing", url=seeded)
    assert (empty.exit_code, empty.output) == (0, "no issuance events\n")


def test_prune_dry_run_then_prune(seeded: str) -> None:
    dry = run("audit", "prune", "--dry-run", url=seeded)
    assert dry.exit_code == 0, dry.output
    assert dry.output.startswith("would delete 1 issuance event(s) older than ")
    assert "nothing deleted" in dry.output
    assert len(listed(seeded)) == 4

    # The default cut-off is STS_AUDIT_RETENTION_DAYS.
    short = run("audit", "prune", "--dry-run", url=seeded, STS_AUDIT_RETENTION_DAYS="1")
    assert short.output.startswith("would delete 2 ")

    done = run("audit", "prune", url=seeded)
    assert done.exit_code == 0, done.output
    assert done.output.startswith("deleted 1 issuance event(s) older than ")
    assert len(listed(seeded)) == 3

    hour = run("audit", "prune", "--older-than", "1h", url=seeded)
    assert hour.output.startswith("deleted 2 ")
    assert len(listed(seeded)) == 1


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("list", "--since", "yesterday"), {}, "error: --since: expected a duration"),
        (("list", "--since", "0h"), {}, "error: --since: expected a duration"),
        (("prune", "--older-than", "2026-01-01"), {}, "error: --older-than: expected"),
        (("prune", "--older-than", "999999w"), {}, "error: --older-than: too far back"),
        (("prune",), {"STS_AUDIT_RETENTION_DAYS": "0"}, "error: STS_AUDIT_RETENTION_DAYS:"),
        (("list",), {"STS_LOG_FORMAT": "xml"}, "error: STS_LOG_FORMAT:"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_touches_nothing(
    seeded: str, args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    result = run("audit", *args, url=seeded, **env)
    assert result.exit_code == 2
    assert result.output.startswith(message)
    assert result.output.count("\n") == 1
    assert len(listed(seeded)) == 4


def test_bad_limit_is_usage_error(seeded: str) -> None:
    assert run("audit", "list", "--limit", "0", url=seeded).exit_code == 2


def test_not_migrated_exits_1_with_the_upgrade_hint(database_url: str) -> None:
    # An empty database that exists (a missing SQLite file is named as missing instead:
    # tests/functional/test_database_url.py).
    empty = Database(database_url)
    try:
        empty.ping()
    finally:
        empty.dispose()
    for args in (("list",), ("prune",), ("prune", "--dry-run")):
        result = run("audit", *args, url=database_url)
        assert result.exit_code == 1
        assert result.output.startswith("error: database not migrated")
        assert "run sts db upgrade" in result.output


def test_database_behind_the_audit_migration_counts_as_not_migrated(database_url: str) -> None:
    database = Database(database_url)
    try:
        database.upgrade("4c5e7cca9f12")
    finally:
        database.dispose()
    result = run("audit", "list", url=database_url)
    assert result.exit_code == 1
    assert "run sts db upgrade" in result.output


def test_unreachable_database_exits_1() -> None:
    started = time.monotonic()
    result = run("audit", "list", url="postgresql+psycopg://postgres@127.0.0.1:9/none")
    assert result.exit_code == 1
    assert result.output.startswith("error: database unreachable")
    assert time.monotonic() - started < 10
