"""sts.audit on real SQLite and PostgreSQL: rows written, read back, pruned; failures logged."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY

from sts.audit import AuditRecorder, IssuanceRecord, credential_sha256, outcome_of
from sts.audit_commands import parse_duration, parse_since
from sts.db import Database
from sts.db.models import IssuanceEvent
from sts.errors import (
    InvalidRequest,
    InvalidTarget,
    OAuthError,
    ServerError,
    TemporarilyUnavailable,
)
from sts.identity.principal import Principal
from sts.mappings.spec import AwsTarget, GcpTarget, MappingSpec
from sts.providers.base import Credentials

ROLE = "arn:aws:iam::123456789012:role/orders-api"
SA = "reader@demo.iam.gserviceaccount.com"
WIP = "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/z"
PRINCIPAL = Principal(
    issuer="https://issuer.example/iss",
    sub="atcl_subject",
    account="my-account",
    project="my-project",
    deployment="copper-main",
    environment_type="production",
    audiences=frozenset({"https://sts.example.test"}),
)
AWS_MAPPING = MappingSpec(
    name="orders-prod", account="my-account", project="my-project", aws=AwsTarget(ROLE)
)
GCP_MAPPING = MappingSpec(
    name="analytics-gcp",
    account="my-account",
    project="my-project",
    gcp=GcpTarget(WIP, service_account=SA),
)
AWS_CREDENTIALS = Credentials(
    provider="aws",
    access_token="FwoGZXIvYXdzSESSIONTOKEN",
    expires_at=1_900_000_000.0,
    aws_access_key_id="ASIAEXAMPLEKEYID",
    aws_secret_access_key="wJalrXUtnFEMI/SECRETKEY",
    request_id="c6104cbe-af31-11e0-8154-cbc7ccf896c7",
)
GCP_CREDENTIALS = Credentials(
    provider="gcp",
    access_token="ya29.ACCESSTOKEN",
    expires_at=1_900_000_000.0,
    scope="https://www.googleapis.com/auth/cloud-platform",
)
SECRETS = ("FwoGZXIvYXdzSESSIONTOKEN", "ASIAEXAMPLEKEYID", "wJalrXUtnFEMI/SECRETKEY", "ya29.ACCESS")
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    db.upgrade()
    yield db
    db.dispose()


@pytest.fixture
def recorder(database: Database) -> AuditRecorder:
    return AuditRecorder(database)


def rows(database: Database) -> list[dict[str, Any]]:
    with database.engine.connect() as conn:
        result = conn.execute(sa.select(IssuanceEvent.__table__).order_by(IssuanceEvent.id))
        return [dict(row._mapping) for row in result]


def insert_at(database: Database, *moments: datetime, mapping: str = "orders-prod") -> None:
    with database.engine.begin() as conn:
        for moment in moments:
            record = IssuanceRecord(
                created_at=moment,
                issuer=PRINCIPAL.issuer,
                sub=PRINCIPAL.sub,
                account=PRINCIPAL.account,
                project=PRINCIPAL.project,
                deployment=PRINCIPAL.deployment,
                environment_type=PRINCIPAL.environment_type,
                mapping=mapping,
                provider="aws",
                target=ROLE,
                outcome="issued",
            )
            conn.execute(sa.insert(IssuanceEvent).values(**record.row()))


def failures() -> float:
    return REGISTRY.get_sample_value("sts_audit_write_failures_total") or 0.0


# -- values -------------------------------------------------------------------------------------


def refusal(kind: type[OAuthError], code: str, phrase: str, **facts: Any) -> OAuthError:
    """An error as a provider raises it: the fixed description and the same facts as fields."""
    return kind(f"aws: {code} - {phrase}", provider="aws", provider_code=code, **facts)


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (refusal(InvalidTarget, "AccessDenied", "AWS refused"), "invalid_target:AccessDenied"),
        (
            refusal(InvalidRequest, "ExpiredTokenException", "the identity token has expired"),
            "invalid_request:ExpiredTokenException",
        ),
        (
            refusal(TemporarilyUnavailable, "Throttling", "retry later", retry_after=5),
            "temporarily_unavailable:Throttling",
        ),
        (
            InvalidTarget(
                "gcp: PERMISSION_DENIED - x", provider="gcp", provider_code="PERMISSION_DENIED"
            ),
            "invalid_target:PERMISSION_DENIED",
        ),
        (TemporarilyUnavailable(), "temporarily_unavailable"),
        (ServerError(), "server_error"),
        (RuntimeError("boom"), "server_error:RuntimeError"),
    ],
)
def test_outcome_values(error: BaseException, outcome: str) -> None:
    assert outcome_of(error) == outcome


def test_outcome_reads_the_provider_code_field_not_the_description() -> None:
    # A description shaped like a provider row, with no provider code field: no code.
    assert outcome_of(InvalidTarget("aws: AccessDenied - looks like a row")) == "invalid_target"
    # The field wins, whatever the description says.
    error = InvalidTarget("gcp: something else - phrase", provider="gcp", provider_code="NOT_FOUND")
    assert outcome_of(error) == "invalid_target:NOT_FOUND"


def test_credential_hash_is_sha256_of_the_presented_secret() -> None:
    assert (
        credential_sha256(AWS_CREDENTIALS)
        == hashlib.sha256(b"FwoGZXIvYXdzSESSIONTOKEN").hexdigest()
    )
    assert credential_sha256(GCP_CREDENTIALS) == hashlib.sha256(b"ya29.ACCESSTOKEN").hexdigest()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", timedelta(minutes=30)),
        ("24h", timedelta(hours=24)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        ("90s", timedelta(seconds=90)),
        (" 7d ", timedelta(days=7)),
        ("0h", None),
        ("-1h", None),
        ("7", None),
        ("h", None),
        ("1.5h", None),
        ("7D", None),
        ("7d1h", None),
        ("1234567d", None),
        ("", None),
    ],
)
def test_parse_duration(text: str, expected: timedelta | None) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24h", NOW - timedelta(hours=24)),
        ("2026-11-01T00:00:00Z", datetime(2026, 11, 1, tzinfo=UTC)),
        ("2026-11-01T02:00:00+02:00", datetime(2026, 11, 1, tzinfo=UTC)),
        ("2026-11-01", datetime(2026, 11, 1, tzinfo=UTC)),
        ("2026-11-01T05:30", datetime(2026, 11, 1, 5, 30, tzinfo=UTC)),
        ("999999w", None),
        ("yesterday", None),
        ("2026-13-01", None),
    ],
)
def test_parse_since(text: str, expected: datetime | None) -> None:
    assert parse_since(text, NOW) == expected


# -- writing ------------------------------------------------------------------------------------


def test_issued_row_has_every_field_and_no_secret(
    recorder: AuditRecorder, database: Database
) -> None:
    before = datetime.now(UTC)
    recorder.record_issued(PRINCIPAL, AWS_MAPPING, AWS_CREDENTIALS)
    [row] = rows(database)
    assert before - timedelta(seconds=1) <= row.pop("created_at").replace(tzinfo=UTC)
    assert row.pop("id") >= 1
    expires = row.pop("expires_at")
    assert expires.replace(tzinfo=UTC) == datetime.fromtimestamp(1_900_000_000, UTC)
    assert row == {
        "issuer": PRINCIPAL.issuer,
        "sub": PRINCIPAL.sub,
        "account": "my-account",
        "project": "my-project",
        "deployment": "copper-main",
        "environment_type": "production",
        "mapping": "orders-prod",
        "provider": "aws",
        "target": ROLE,
        "outcome": "issued",
        "provider_request_id": "c6104cbe-af31-11e0-8154-cbc7ccf896c7",
        "credential_sha256": hashlib.sha256(b"FwoGZXIvYXdzSESSIONTOKEN").hexdigest(),
        "scopes": None,
        # An identifier, not a secret: CloudTrail records it with every call the key makes.
        "access_key_id": "ASIAEXAMPLEKEYID",
        "session_name": "copper-main",
        "audience": None,
    }
    secrets = [secret for secret in SECRETS if secret != "ASIAEXAMPLEKEYID"]
    assert not any(secret in repr(row) for secret in secrets)


def test_gcp_row_names_the_service_account_and_scopes(
    recorder: AuditRecorder, database: Database
) -> None:
    recorder.record_issued(
        PRINCIPAL, GCP_MAPPING, GCP_CREDENTIALS, scopes=("https://www.googleapis.com/auth/x",)
    )
    [row] = rows(database)
    assert (row["provider"], row["target"], row["mapping"]) == ("gcp", SA, "analytics-gcp")
    # What Google granted wins over what was asked for.
    assert row["scopes"] == "https://www.googleapis.com/auth/cloud-platform"
    assert row["credential_sha256"] == hashlib.sha256(b"ya29.ACCESSTOKEN").hexdigest()
    assert row["provider_request_id"] is None
    assert (row["access_key_id"], row["session_name"]) == (None, None)


def test_refusal_row_takes_the_request_id_from_the_error_field(
    recorder: AuditRecorder, database: Database
) -> None:
    error = refusal(
        InvalidTarget,
        "AccessDenied",
        "AWS refused to let this identity assume the role",
        upstream_request_id="0a1b2c3d-4e5f",
        cause="AssumeRoleWithWebIdentity failed: mapping=orders-prod code=AccessDenied",
    )
    # A log cause that names a request id is not where the row's id comes from.
    unrelated = TemporarilyUnavailable(cause="request_id=ffffffff-0000 status=503")
    recorder.record_refused(PRINCIPAL, GCP_MAPPING, error, scopes=("s1", "s2"))
    recorder.record_refused(PRINCIPAL, AWS_MAPPING, unrelated)
    first, second = rows(database)
    assert first["outcome"] == "invalid_target:AccessDenied"
    assert first["provider_request_id"] == "0a1b2c3d-4e5f"
    assert first["scopes"] == "s1 s2"
    assert first["expires_at"] is None
    assert first["credential_sha256"] is None
    assert second["outcome"] == "temporarily_unavailable"
    assert second["provider_request_id"] is None


def test_write_failure_is_logged_and_counted_never_raised(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    unmigrated = Database(database_url)  # no issuance_events table: every INSERT fails
    try:
        counted = failures()
        with caplog.at_level(logging.WARNING, logger="sts.audit"):
            AuditRecorder(unmigrated).record_issued(PRINCIPAL, AWS_MAPPING, AWS_CREDENTIALS)
    finally:
        unmigrated.dispose()
    assert failures() == counted + 1
    [record] = [r for r in caplog.records if r.name == "sts.audit"]
    assert record.levelno == logging.WARNING
    event = record.__dict__["event"]
    assert event["outcome"] == "issued"
    assert event["mapping"] == "orders-prod"
    assert event["sub"] == PRINCIPAL.sub
    assert event["target"] == ROLE
    assert event["credential_sha256"] == credential_sha256(AWS_CREDENTIALS)
    assert event["expires_at"] == "2030-03-17T17:46:40Z"
    assert event["session_name"] == "copper-main"
    assert "access_key_id" not in event  # the log carries no part of a credential
    text = record.getMessage() + repr(record.__dict__)
    assert not any(secret in text for secret in SECRETS)


# -- reading and pruning -----------------------------------------------------------------------


def test_query_filters_orders_and_limits(recorder: AuditRecorder, database: Database) -> None:
    now = datetime.now(UTC)
    insert_at(database, now - timedelta(days=3), now - timedelta(hours=2), now)
    insert_at(database, now - timedelta(hours=1), mapping="analytics-gcp")

    newest_first = [record.created_at for record in recorder.query()]
    assert newest_first == sorted(newest_first, reverse=True)
    assert len(newest_first) == 4
    assert all(moment.tzinfo is not None for moment in newest_first)

    assert len(recorder.query(since=now - timedelta(days=1))) == 3
    assert [r.mapping for r in recorder.query(mapping="analytics-gcp")] == ["analytics-gcp"]
    assert len(recorder.query(since=now - timedelta(days=1), mapping="orders-prod")) == 2
    assert recorder.query(mapping="nothing") == []
    [latest] = recorder.query(limit=1)
    assert latest.created_at == now
    assert latest.id is not None
    with pytest.raises(ValueError, match="limit"):
        recorder.query(limit=0)


def test_prune_deletes_only_older_rows_in_batches(database: Database) -> None:
    now = datetime.now(UTC)
    insert_at(database, *(now - timedelta(days=100 + i) for i in range(12)))
    insert_at(database, now - timedelta(days=1), now)
    recorder = AuditRecorder(database, prune_batch=5)
    cutoff = now - timedelta(days=90)

    assert recorder.prune(cutoff, dry_run=True) == 12
    assert len(rows(database)) == 14

    commits: list[int] = []
    sa.event.listen(database.engine, "commit", lambda _conn: commits.append(1))
    assert recorder.prune(cutoff) == 12
    assert len(commits) == 3  # 5 + 5 + 2, each in its own short transaction
    assert len(rows(database)) == 2
    assert recorder.prune(cutoff) == 0
    with pytest.raises(ValueError, match="timezone-aware"):
        recorder.prune(datetime(2026, 1, 1))
