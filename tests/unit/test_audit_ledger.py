"""The ledger (docs/reference.md section 12) on real SQLite and PostgreSQL: every upstream call is
one row, written ``pending`` before the call and completed in place after it; what a lost write
leaves; and the filters ``sts audit list`` and ``sts revoke`` read the rows with."""

from __future__ import annotations

import logging
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from sts.audit import PENDING, AuditRecorder, IssuanceRecord, PendingCall
from sts.db import Database
from sts.db.models import IssuanceEvent
from sts.errors import InvalidTarget, TemporarilyUnavailable
from sts.mappings.spec import AzureTarget, MappingSpec
from sts.metrics import AUDIT_LATE_WRITES, AUDIT_WRITE_FAILURES
from sts.providers.base import Credentials
from tests.unit.test_audit import (
    AWS_CREDENTIALS,
    AWS_MAPPING,
    GCP_CREDENTIALS,
    GCP_MAPPING,
    PRINCIPAL,
    ROLE,
    SA,
)

#: The write time-out while a test holds the database: each held write costs this much.
BOUND = 0.3
#: How long anything that takes milliseconds may take before the test calls it stuck; also the
#: write time-out of writes that must succeed, so a loaded machine never logs them as lost.
NOT_STUCK = 30.0
AZURE_MAPPING = MappingSpec(
    name="graph-azure",
    account="my-account",
    project="my-project",
    azure=AzureTarget(
        tenant_id="11111111-2222-3333-4444-555555555555",
        client_id="66666666-7777-8888-9999-000000000000",
    ),
)
AZURE_CREDENTIALS = Credentials(
    provider="azure", access_token="eyJ0eXAiAZURETOKEN", expires_at=1_900_000_000.0
)


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def events(self) -> list[dict[str, Any]]:
        return [r.event for r in self.records if getattr(r, "event", None)]  # type: ignore[attr-defined]


@pytest.fixture
def audit_log() -> Iterator[Collect]:
    handler = Collect()
    logger = logging.getLogger("sts.audit")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    db.upgrade()
    yield db
    db.dispose()


@pytest.fixture
def recorder(database: Database) -> AuditRecorder:
    return AuditRecorder(database, write_timeout=NOT_STUCK)


def rows(database: Database) -> list[dict[str, Any]]:
    with database.engine.connect() as conn:
        result = conn.execute(sa.select(IssuanceEvent.__table__).order_by(IssuanceEvent.id))
        return [dict(row._mapping) for row in result]


def utc(moment: datetime) -> datetime:
    """A timestamp as read back raw (SQLite hands back naive UTC values)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@contextmanager
def writes_held(database: Database) -> Iterator[None]:
    """No INSERT into issuance_events can finish until the block ends (the database holds it:
    a table lock on PostgreSQL, another connection's write transaction on SQLite)."""
    url = database.engine.url
    if url.get_backend_name() == "sqlite":
        holder = sqlite3.connect(make_url(str(url)).database or "", isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            yield
            holder.execute("ROLLBACK")
        finally:
            holder.close()
    else:
        with database.engine.connect() as blocker:
            blocker.execute(sa.text("LOCK TABLE issuance_events IN ACCESS EXCLUSIVE MODE"))
            yield
            blocker.rollback()


def wait_until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + NOT_STUCK
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


# -- one row per upstream call ------------------------------------------------------------------


def test_pending_row_is_written_first_then_completed_in_place_as_issued(
    recorder: AuditRecorder, database: Database
) -> None:
    before = datetime.now(UTC)
    pending = recorder.record_pending(PRINCIPAL, AWS_MAPPING)
    assert isinstance(pending, PendingCall)
    [row] = rows(database)
    assert row["outcome"] == PENDING == "pending"
    assert before - timedelta(seconds=1) <= utc(row["created_at"]) <= datetime.now(UTC)
    assert (row["issuer"], row["sub"]) == (PRINCIPAL.issuer, PRINCIPAL.sub)
    assert (row["account"], row["project"], row["deployment"], row["environment_type"]) == (
        "my-account",
        "my-project",
        "copper-main",
        "production",
    )
    assert (row["mapping"], row["provider"], row["target"]) == ("orders-prod", "aws", ROLE)
    # The session name is known before the call: it is what the call asks AWS for.
    assert row["session_name"] == "copper-main"
    for unknown in ("expires_at", "credential_sha256", "access_key_id", "provider_request_id"):
        assert row[unknown] is None, unknown

    recorder.record_issued(PRINCIPAL, AWS_MAPPING, AWS_CREDENTIALS, pending=pending)
    [done] = rows(database)
    assert done["id"] == row["id"]
    assert done["created_at"] == row["created_at"]  # when the call was made
    assert done["outcome"] == "issued"
    assert utc(done["expires_at"]) == datetime.fromtimestamp(1_900_000_000, UTC)
    assert done["access_key_id"] == "ASIAEXAMPLEKEYID"
    assert done["session_name"] == "copper-main"
    assert done["provider_request_id"] == "c6104cbe-af31-11e0-8154-cbc7ccf896c7"
    assert done["credential_sha256"] is not None
    assert done["sub"] == PRINCIPAL.sub


def test_pending_row_is_completed_in_place_as_refused(
    recorder: AuditRecorder, database: Database
) -> None:
    pending = recorder.record_pending(PRINCIPAL, AWS_MAPPING, scopes=("s1", "s2"))
    [row] = rows(database)
    assert row["scopes"] == "s1 s2"
    error = InvalidTarget(
        "aws: AccessDenied - refused",
        provider="aws",
        provider_code="AccessDenied",
        upstream_request_id="0a1b2c3d-4e5f",
    )
    recorder.record_refused(PRINCIPAL, AWS_MAPPING, error, scopes=("s1", "s2"), pending=pending)
    [done] = rows(database)
    assert done["id"] == row["id"]
    assert done["outcome"] == "invalid_target:AccessDenied"
    assert done["provider_request_id"] == "0a1b2c3d-4e5f"
    assert done["expires_at"] is None
    assert done["access_key_id"] is None
    assert done["scopes"] == "s1 s2"


def test_each_call_completes_its_own_row(recorder: AuditRecorder, database: Database) -> None:
    """Two calls in flight at once (two identities): each completion finds its own row."""
    first = recorder.record_pending(PRINCIPAL, AWS_MAPPING)
    other = replace(PRINCIPAL, deployment="other-deploy")
    second = recorder.record_pending(other, AWS_MAPPING)
    recorder.record_refused(other, AWS_MAPPING, TemporarilyUnavailable(), pending=second)
    recorder.record_issued(PRINCIPAL, AWS_MAPPING, AWS_CREDENTIALS, pending=first)
    assert [(r["deployment"], r["outcome"]) for r in rows(database)] == [
        ("copper-main", "issued"),
        ("other-deploy", "temporarily_unavailable"),
    ]


@pytest.mark.parametrize(
    ("deployment", "session"),
    [
        ("feature/x y", "feature-x-y"),
        ("x", "x-"),
        ("d" * 80, "d" * 64),
    ],
)
def test_session_name_is_the_one_sent_to_aws(
    recorder: AuditRecorder, database: Database, deployment: str, session: str
) -> None:
    principal = replace(PRINCIPAL, deployment=deployment)
    pending = recorder.record_pending(principal, AWS_MAPPING)
    recorder.record_issued(principal, AWS_MAPPING, AWS_CREDENTIALS, pending=pending)
    [row] = rows(database)
    assert row["session_name"] == session


@pytest.mark.parametrize(
    ("mapping", "credentials"),
    [(GCP_MAPPING, GCP_CREDENTIALS), (AZURE_MAPPING, AZURE_CREDENTIALS)],
)
def test_other_clouds_have_no_aws_fields(
    recorder: AuditRecorder, database: Database, mapping: MappingSpec, credentials: Credentials
) -> None:
    pending = recorder.record_pending(PRINCIPAL, mapping)
    recorder.record_issued(PRINCIPAL, mapping, credentials, pending=pending)
    [row] = rows(database)
    assert row["outcome"] == "issued"
    assert row["access_key_id"] is None
    assert row["session_name"] is None
    assert row["provider"] == mapping.provider


def test_without_a_pending_row_the_whole_row_is_inserted(
    recorder: AuditRecorder, database: Database
) -> None:
    """A call recorded only after it was made (the broker's refusals: no cloud call) is one row."""
    recorder.record_issued(PRINCIPAL, AWS_MAPPING, AWS_CREDENTIALS)
    recorder.record_refused(PRINCIPAL, AWS_MAPPING, InvalidTarget("refused"))
    issued, refused = rows(database)
    assert (issued["outcome"], issued["access_key_id"]) == ("issued", "ASIAEXAMPLEKEYID")
    assert issued["session_name"] == "copper-main"
    assert refused["outcome"] == "invalid_target"


def test_a_pending_row_pruned_before_its_completion_is_written_whole(
    recorder: AuditRecorder, database: Database
) -> None:
    pending = recorder.record_pending(PRINCIPAL, AWS_MAPPING)
    assert recorder.prune(datetime.now(UTC) + timedelta(seconds=1)) == 1
    recorder.record_issued(PRINCIPAL, AWS_MAPPING, AWS_CREDENTIALS, pending=pending)
    [row] = rows(database)
    assert (row["outcome"], row["access_key_id"]) == ("issued", "ASIAEXAMPLEKEYID")


# -- lost writes ---------------------------------------------------------------------------------


def test_a_lost_pending_write_is_logged_and_the_completion_writes_the_whole_row(
    database: Database, audit_log: Collect
) -> None:
    recorder = AuditRecorder(database, write_timeout=BOUND)
    failures = AUDIT_WRITE_FAILURES._value.get()
    with writes_held(database):
        started = time.monotonic()
        pending = recorder.record_pending(PRINCIPAL, AWS_MAPPING)
        assert BOUND <= time.monotonic() - started < BOUND + NOT_STUCK
    # The call was recorded before it was made, in the log, since the database did not take it.
    [logged] = audit_log.events()
    assert logged["outcome"] == "pending"
    assert logged["deployment"] == "copper-main"
    assert logged["session_name"] == "copper-main"
    assert AUDIT_WRITE_FAILURES._value.get() == failures + 1

    recorder.write_timeout = NOT_STUCK
    recorder.record_issued(PRINCIPAL, AWS_MAPPING, AWS_CREDENTIALS, pending=pending)
    [row] = rows(database)
    assert row["outcome"] == "issued"
    assert row["access_key_id"] == "ASIAEXAMPLEKEYID"
    # The row says when the call was made: the time the pending line logged.
    assert utc(row["created_at"]).isoformat().replace("+00:00", "Z") == logged["created_at"]
    assert len(audit_log.events()) == 1
    assert AUDIT_WRITE_FAILURES._value.get() == failures + 1


def test_both_writes_lost_are_two_lines_the_second_with_every_field(
    database_url: str, audit_log: Collect
) -> None:
    unmigrated = Database(database_url)  # no issuance_events table: every write fails
    failures = AUDIT_WRITE_FAILURES._value.get()
    try:
        recorder = AuditRecorder(unmigrated)
        pending = recorder.record_pending(PRINCIPAL, AWS_MAPPING)
        recorder.record_issued(PRINCIPAL, AWS_MAPPING, AWS_CREDENTIALS, pending=pending)
    finally:
        unmigrated.dispose()
    first, second = audit_log.events()
    assert first["outcome"] == "pending"
    assert second["outcome"] == "issued"
    assert second["created_at"] == first["created_at"]
    assert second["expires_at"] == "2030-03-17T17:46:40Z"
    assert second["session_name"] == "copper-main"
    assert second["credential_sha256"] is not None
    assert second["provider_request_id"] == "c6104cbe-af31-11e0-8154-cbc7ccf896c7"
    # Log lines hold no credential part at all: the AccessKeyId stays in the database, and the
    # provider request id finds it in CloudTrail.
    assert "access_key_id" not in second
    text = "".join(r.getMessage() + repr(r.__dict__) for r in audit_log.records)
    assert "ASIAEXAMPLEKEYID" not in text
    assert AUDIT_WRITE_FAILURES._value.get() == failures + 2


@pytest.mark.postgres
def test_a_pending_row_committed_late_is_completed_not_duplicated(
    postgres_url: str, audit_log: Collect
) -> None:
    """The pending write's COMMIT lands after the caller gave up on it: the completion, made by
    the same writer after it, updates that row; it never adds a second one."""
    database = Database(postgres_url)
    database.upgrade()
    key = secrets.randbelow(2**62)
    try:
        with database.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "CREATE FUNCTION hold_commit() RETURNS trigger LANGUAGE plpgsql AS "
                    f"$$ BEGIN PERFORM pg_advisory_xact_lock({key}); RETURN NULL; END $$"
                )
            )
            conn.execute(
                sa.text(
                    "CREATE CONSTRAINT TRIGGER hold_commit AFTER INSERT ON issuance_events "
                    "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION hold_commit()"
                )
            )
        recorder = AuditRecorder(database, write_timeout=BOUND)
        late = AUDIT_LATE_WRITES._value.get()
        with database.engine.connect() as blocker:
            blocker.execute(sa.text(f"SELECT pg_advisory_lock({key})"))
            pending = recorder.record_pending(PRINCIPAL, AWS_MAPPING)
            assert rows(database) == []
            blocker.execute(sa.text(f"SELECT pg_advisory_unlock({key})"))
            blocker.commit()
        wait_until(lambda: AUDIT_LATE_WRITES._value.get() == late + 1, "late commit unreported")
        [row] = rows(database)
        assert row["outcome"] == "pending"
        recorder.write_timeout = NOT_STUCK
        recorder.record_issued(PRINCIPAL, AWS_MAPPING, AWS_CREDENTIALS, pending=pending)
        [done] = rows(database)
        assert (done["id"], done["outcome"]) == (row["id"], "issued")
        assert done["access_key_id"] == "ASIAEXAMPLEKEYID"
    finally:
        database.dispose()


# -- reading -------------------------------------------------------------------------------------


def event(label: str, age: timedelta, **fields: Any) -> IssuanceRecord:
    """A row created ``age`` ago, labelled by its provider_request_id."""
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "created_at": now - age,
        "issuer": PRINCIPAL.issuer,
        "sub": "sub-a",
        "account": "acct-a",
        "project": "proj-a",
        "deployment": "dep-a",
        "environment_type": "production",
        "mapping": "orders-prod",
        "provider": "aws",
        "target": ROLE,
        "outcome": "issued",
        "provider_request_id": label,
    }
    values.update(fields)
    if values["outcome"] == "issued" and "expires_at" not in fields:
        values["expires_at"] = now - age + timedelta(hours=1)
    return IssuanceRecord(**values)


@pytest.fixture
def seeded(database: Database) -> AuditRecorder:
    now = datetime.now(UTC)
    records = [
        event("valid", timedelta(minutes=10), access_key_id="ASIAVALID", session_name="dep-a"),
        event("expired", timedelta(hours=3), expires_at=now - timedelta(hours=2)),
        event("pending-old", timedelta(days=5), outcome="pending", expires_at=None),
        event("pending-new", timedelta(minutes=1), outcome="pending", sub="sub-b"),
        event("denied", timedelta(hours=1), outcome="invalid_target:AccessDenied"),
        event("bare", timedelta(hours=2), outcome="invalid_target"),
        event("throttled", timedelta(minutes=30), outcome="temporarily_unavailable:Throttling"),
        event("other-acct", timedelta(minutes=5), account="acct-b", project="proj-b"),
        event("other-dep", timedelta(minutes=20), deployment="dep-b", environment_type="preview"),
        event(
            "gcp",
            timedelta(minutes=40),
            mapping="analytics-gcp",
            provider="gcp",
            target=SA,
            project="proj-b",
        ),
    ]
    with database.engine.begin() as conn:
        for record in records:
            conn.execute(sa.insert(IssuanceEvent).values(**record.row()))
    return AuditRecorder(database)


def labels(records: list[IssuanceRecord]) -> list[str | None]:
    return [record.provider_request_id for record in records]


def test_query_newest_first_with_every_field(seeded: AuditRecorder) -> None:
    everything = seeded.query()
    assert labels(everything) == [
        "pending-new",
        "other-acct",
        "valid",
        "other-dep",
        "throttled",
        "gcp",
        "denied",
        "bare",
        "expired",
        "pending-old",
    ]
    valid = everything[2]
    assert (valid.access_key_id, valid.session_name) == ("ASIAVALID", "dep-a")
    document = valid.to_dict()
    assert next(iter(document)) == "id"
    assert document["access_key_id"] == "ASIAVALID"
    assert document["session_name"] == "dep-a"
    assert document["expires_at"].endswith("Z")
    assert labels(seeded.query(limit=2)) == ["pending-new", "other-acct"]
    assert len(seeded.query(limit=None)) == 10
    with pytest.raises(ValueError, match="limit"):
        seeded.query(limit=0)


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"account": "acct-b"}, {"other-acct"}),
        ({"project": "proj-b"}, {"other-acct", "gcp"}),
        ({"deployment": "dep-b"}, {"other-dep"}),
        ({"environment_type": "preview"}, {"other-dep"}),
        ({"sub": "sub-b"}, {"pending-new"}),
        ({"mapping": "analytics-gcp"}, {"gcp"}),
        ({"outcome": "pending"}, {"pending-new", "pending-old"}),
        ({"outcome": "invalid_target:AccessDenied"}, {"denied"}),
        # An OAuth error code alone covers every provider code recorded with it.
        ({"outcome": "invalid_target"}, {"denied", "bare"}),
        ({"outcome": "temporarily_unavailable"}, {"throttled"}),
        # Exact values, never patterns: "_" and "%" match only themselves.
        ({"outcome": "invalid_targe_"}, set()),
        ({"outcome": "%"}, set()),
        ({"outcome": "invalid"}, set()),
        ({"account": "acct-%"}, set()),
        (
            {"account": "acct-a", "project": "proj-a", "deployment": "dep-a", "sub": "sub-b"},
            {"pending-new"},
        ),
        ({"account": "acct-b", "mapping": "analytics-gcp"}, set()),
    ],
)
def test_query_filters_are_exact_and_combine(
    seeded: AuditRecorder, filters: dict[str, Any], expected: set[str]
) -> None:
    assert set(labels(seeded.query(**filters))) == expected


def test_query_time_window_since_inclusive_until_exclusive(seeded: AuditRecorder) -> None:
    [valid] = seeded.query(account="acct-a", outcome="issued", since=None, limit=1)
    assert valid.provider_request_id == "valid"
    moment = valid.created_at
    assert "valid" in labels(seeded.query(since=moment))
    assert "valid" not in labels(seeded.query(until=moment))
    assert labels(seeded.query(since=moment, until=moment + timedelta(microseconds=1))) == ["valid"]
    now = datetime.now(UTC)
    assert set(labels(seeded.query(since=now - timedelta(hours=1, minutes=30)))) == {
        "pending-new",
        "other-acct",
        "valid",
        "other-dep",
        "throttled",
        "gcp",
        "denied",
    }
    assert set(labels(seeded.query(until=now - timedelta(hours=1, minutes=30)))) == {
        "bare",
        "expired",
        "pending-old",
    }


def test_valid_at_is_unexpired_issued_rows_and_every_pending_row(seeded: AuditRecorder) -> None:
    now = datetime.now(UTC)
    assert set(labels(seeded.query(valid_at=now))) == {
        "valid",
        "other-acct",
        "other-dep",
        "gcp",
        "pending-new",
        "pending-old",  # five days old, yet it may have been issued: kept until pruned
    }
    # Three hours on, the credentials of an hour have expired; the pending rows remain.
    later = now + timedelta(hours=3)
    assert set(labels(seeded.query(valid_at=later))) == {"pending-new", "pending-old"}
    # What sts revoke asks: the latest expiry among an identity's credentials still valid.
    found = seeded.query(account="acct-a", deployment="dep-a", valid_at=now, limit=None)
    assert set(labels(found)) == {"valid", "pending-new", "pending-old", "gcp"}
    assert max(r.expires_at for r in found if r.expires_at) == next(
        r.expires_at for r in found if r.provider_request_id == "valid"
    )
