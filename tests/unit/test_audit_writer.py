"""The audit write is bounded: a PostgreSQL that holds the INSERT or the COMMIT holds no caller.

The database is held by PostgreSQL itself (a table lock, an advisory lock taken by a deferred
trigger at COMMIT), so the recorder talks to a real server that simply does not answer in time.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest
import sqlalchemy as sa

from sts.audit import AuditRecorder
from sts.db import Database
from sts.db.models import IssuanceEvent
from sts.metrics import AUDIT_LATE_WRITES, AUDIT_WRITE_FAILURES
from tests.unit.test_audit import AWS_CREDENTIALS, AWS_MAPPING, PRINCIPAL

pytestmark = pytest.mark.postgres

#: The write time-out while the database is held: each held write costs the test this much.
BOUND = 0.3
#: The write time-out once the database answers again, and how long anything that takes
#: milliseconds may take before the test calls it stuck: the writes that must succeed then get
#: a bound no loaded machine reaches, so none of them can be logged as lost.
NOT_STUCK = 30.0


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def deployments(self) -> list[str]:
        return [r.event["deployment"] for r in self.records if getattr(r, "event", None)]  # type: ignore[attr-defined]


@pytest.fixture
def audit_log() -> Iterator[Collect]:
    handler = Collect()
    logger = logging.getLogger("sts.audit")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture
def database(postgres_url: str) -> Iterator[Database]:
    db = Database(postgres_url)
    db.upgrade()
    yield db
    db.dispose()


def record(recorder: AuditRecorder, deployment: str) -> float:
    """Record one issuance for ``deployment``; returns how long the caller was held."""
    started = time.monotonic()
    recorder.record_issued(replace(PRINCIPAL, deployment=deployment), AWS_MAPPING, AWS_CREDENTIALS)
    return time.monotonic() - started


def rows(database: Database, deployment: str) -> int:
    with database.engine.connect() as conn:
        count = conn.execute(
            sa.select(sa.func.count()).where(IssuanceEvent.deployment == deployment)
        ).scalar_one()
    return int(count)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = NOT_STUCK) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_insert_held_past_the_bound_is_logged_once_and_never_written_late(
    database: Database, audit_log: Collect
) -> None:
    recorder = AuditRecorder(database, write_timeout=BOUND)
    failures = AUDIT_WRITE_FAILURES._value.get()
    late = AUDIT_LATE_WRITES._value.get()
    with database.engine.connect() as blocker:
        blocker.execute(sa.text("LOCK TABLE issuance_events IN ACCESS EXCLUSIVE MODE"))
        # The first INSERT waits for the lock; the second waits behind it in the queue. Each
        # caller waits its bound, and is then let go (the upper bound only says "not stuck").
        assert BOUND <= record(recorder, "held-insert") < BOUND + NOT_STUCK
        assert BOUND <= record(recorder, "queued-behind") < BOUND + NOT_STUCK
        blocker.rollback()
    recorder.write_timeout = NOT_STUCK
    assert record(recorder, "after-release") < NOT_STUCK
    assert rows(database, "after-release") == 1
    # One writer, in order: both earlier writes finished before this one, neither wrote a row.
    assert rows(database, "held-insert") == 0
    assert rows(database, "queued-behind") == 0
    assert audit_log.deployments() == ["held-insert", "queued-behind"]
    assert f"did not answer within {BOUND:g} s" in audit_log.records[0].getMessage()
    assert AUDIT_WRITE_FAILURES._value.get() == failures + 2
    assert AUDIT_LATE_WRITES._value.get() == late


def test_commit_that_lands_after_the_bound_is_reported_as_a_duplicate(
    database: Database, audit_log: Collect
) -> None:
    key = secrets.randbelow(2**62)
    with database.engine.begin() as conn:
        # At COMMIT, every new row waits for an advisory lock the test holds.
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
        assert BOUND <= record(recorder, "held-commit") < BOUND + NOT_STUCK
        assert rows(database, "held-commit") == 0
        blocker.execute(sa.text(f"SELECT pg_advisory_unlock({key})"))
        blocker.commit()
    wait_until(lambda: AUDIT_LATE_WRITES._value.get() == late + 1, "late commit not reported")
    assert rows(database, "held-commit") == 1
    messages = [r.getMessage() for r in audit_log.records]
    assert len(messages) == 2
    assert "logged here instead" in messages[0]
    assert "the earlier line is a duplicate of this row" in messages[1]
    assert audit_log.deployments() == ["held-commit", "held-commit"]


def test_writes_past_the_pending_limit_are_logged_at_once(
    database: Database, audit_log: Collect
) -> None:
    recorder = AuditRecorder(database, write_timeout=BOUND, max_pending=1)
    with database.engine.connect() as blocker:
        blocker.execute(sa.text("LOCK TABLE issuance_events IN ACCESS EXCLUSIVE MODE"))
        record(recorder, "on-the-writer")
        record(recorder, "in-the-queue")
        assert recorder.pending == 1
        # Logged at once: a write that waited would wait the whole time-out, now NOT_STUCK.
        recorder.write_timeout = NOT_STUCK
        assert record(recorder, "over-the-limit") < NOT_STUCK / 2
        blocker.rollback()
    wait_until(lambda: recorder.pending == 0, "the writer never drained its queue")
    assert record(recorder, "after-release") < NOT_STUCK
    assert rows(database, "after-release") == 1
    assert audit_log.deployments() == ["on-the-writer", "in-the-queue", "over-the-limit"]
    assert "1 audit writes already waiting" in audit_log.records[2].getMessage()
