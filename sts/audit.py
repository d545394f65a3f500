"""Issuance events: one ``issuance_events`` row per upstream credential call.

The exchange calls :class:`AuditRecorder` from inside the single-flight upstream call, before it
answers, so every credential a caller could have received (and every upstream refusal) has its
row even if the process dies right after responding; cache hits write nothing. A row carries the
SHA-256 of the issued secret, never the secret: a leaked AWS session token or GCP access token can
be hashed and looked up, and the table holds nothing anyone could use (the audit-event design of
octo-sts, which logs a digest of the token it minted).

Outcomes:

- ``issued``: credentials came back.
- ``<OAuth error code>:<provider code>``: the call failed, e.g. ``invalid_target:AccessDenied``,
  ``invalid_request:ExpiredTokenException``, ``temporarily_unavailable:Throttling``. Temporary
  failures are recorded too, so operators see upstream trouble next to what it affected.
  The provider code is the error's ``provider_code`` field (:mod:`sts.errors`), never read
  back from its description. An OAuth error without one is its bare error code; any other
  exception (a bug) is ``server_error:<exception type>``.

A write that fails never fails the exchange and is never lost silently: the event goes to the
``sts.audit`` logger as one WARNING line with every field, and
``sts_audit_write_failures_total`` counts it.

A database that accepts and then stalls must not hold the answer either. Every INSERT runs on
one writer thread per process (so events are written in the order they happened); the caller
waits at most :data:`AUDIT_WRITE_TIMEOUT_SECONDS` for it, then logs the event as above and
answers. The write is then *abandoned*, and the choice made about a late completion is that it
never makes a second record silently:

- a write still queued, or whose INSERT returns after the abandonment, is rolled back: the
  WARNING line is the event's only record;
- only a COMMIT already sent when the caller gave up can still land; that row is then a
  duplicate of the WARNING line, and the writer says so with a second WARNING line and
  ``sts_audit_late_writes_total``.

At most :data:`AUDIT_MAX_PENDING` writes wait for the writer; past that an event is logged at once
instead of queued, so a stalled database costs bounded memory.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from sts.db import Database
from sts.db.models import IssuanceEvent, utcnow
from sts.errors import OAuthError
from sts.identity.principal import Principal
from sts.mappings.spec import MappingSpec
from sts.metrics import AUDIT_LATE_WRITES, AUDIT_WRITE_FAILURES
from sts.providers.base import Credentials

log = logging.getLogger("sts.audit")

ISSUED = "issued"
DEFAULT_LIMIT = 100
#: Rows deleted per transaction by :meth:`AuditRecorder.prune`, so no lock is held for long.
PRUNE_BATCH = 5000
#: Seconds an exchange waits for its audit INSERT before logging the event instead.
AUDIT_WRITE_TIMEOUT_SECONDS = 2.0
#: Writes that may wait for the writer thread; more are logged at once.
AUDIT_MAX_PENDING = 1000


@dataclass(frozen=True, slots=True)
class IssuanceRecord:
    """One issuance event, as written and as read back."""

    created_at: datetime
    issuer: str
    sub: str
    account: str
    project: str
    deployment: str
    environment_type: str
    mapping: str
    provider: str
    target: str
    outcome: str
    provider_request_id: str | None = None
    expires_at: datetime | None = None
    credential_sha256: str | None = None
    scopes: str | None = None
    id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: timestamps as ISO 8601 UTC with ``Z``."""
        doc = asdict(self)
        for name in ("created_at", "expires_at"):
            value = doc[name]
            if value is not None:
                doc[name] = value.astimezone(UTC).isoformat().replace("+00:00", "Z")
        return {"id": doc.pop("id"), **doc}

    def row(self) -> dict[str, Any]:
        """Column values for the INSERT (no ``id``: the database assigns it)."""
        values = asdict(self)
        del values["id"]
        return values


def credential_sha256(credentials: Credentials) -> str:
    """Hex SHA-256 of the secret a caller presents: the AWS SessionToken or GCP access token."""
    return hashlib.sha256(credentials.access_token.encode()).hexdigest()


def outcome_of(error: BaseException) -> str:
    """The outcome value for a failed upstream call (module docstring)."""
    if not isinstance(error, OAuthError):
        return f"server_error:{type(error).__name__}"
    return f"{error.error}:{error.provider_code}" if error.provider_code else error.error


def _request_id(error: BaseException) -> str | None:
    """The upstream's id for the failed call, as the provider recorded it on the error."""
    return error.upstream_request_id if isinstance(error, OAuthError) else None


def _scopes(scopes: Sequence[str]) -> str | None:
    return " ".join(scopes) or None


def _base(principal: Principal, mapping: MappingSpec) -> dict[str, Any]:
    return {
        "created_at": utcnow(),
        "issuer": principal.issuer,
        "sub": principal.sub,
        "account": principal.account,
        "project": principal.project,
        "deployment": principal.deployment,
        "environment_type": principal.environment_type,
        "mapping": mapping.name,
        "provider": mapping.provider,
        "target": mapping.targets[0],
    }


def _reason(exc: BaseException) -> str:
    """Exception type and the first line of the driver's message (not SQL or parameters)."""
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    first = lines[0][:200] if lines else ""
    return f"{type(cause).__name__}: {first}" if first else type(cause).__name__


class _Write:
    """One INSERT handed to the writer thread; ``lock`` orders abandonment against commit."""

    __slots__ = ("abandoned", "committing", "done", "error", "lock", "record")

    def __init__(self, record: IssuanceRecord) -> None:
        self.record = record
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.abandoned = False
        self.committing = False


class AuditRecorder:
    """Writes and reads ``issuance_events`` through the shared :class:`Database`."""

    def __init__(
        self,
        database: Database,
        *,
        prune_batch: int = PRUNE_BATCH,
        write_timeout: float = AUDIT_WRITE_TIMEOUT_SECONDS,
        max_pending: int = AUDIT_MAX_PENDING,
    ) -> None:
        self.database = database
        self.prune_batch = prune_batch
        self.write_timeout = write_timeout
        self.max_pending = max_pending
        self._queue: deque[_Write] = deque()
        self._wake = threading.Condition(threading.Lock())
        self._writer_pid = 0

    # -- writing (the exchange path) -------------------------------------------------------

    @property
    def pending(self) -> int:
        """Writes waiting for the writer thread (the one it is running excluded)."""
        return len(self._queue)

    def record_issued(
        self,
        principal: Principal,
        mapping: MappingSpec,
        credentials: Credentials,
        *,
        scopes: Sequence[str] = (),
    ) -> None:
        """Record credentials just issued upstream; never raises."""
        try:
            record = IssuanceRecord(
                **_base(principal, mapping),
                outcome=ISSUED,
                provider_request_id=credentials.request_id,
                expires_at=datetime.fromtimestamp(credentials.expires_at, UTC),
                credential_sha256=credential_sha256(credentials),
                scopes=credentials.scope or _scopes(scopes),
            )
        except Exception as exc:  # the exchange must not fail for its audit row
            self._lost(None, exc)
            return
        self._write(record)

    def record_refused(
        self,
        principal: Principal,
        mapping: MappingSpec,
        error: BaseException,
        *,
        scopes: Sequence[str] = (),
    ) -> None:
        """Record an upstream call that failed (refusal or temporary failure); never raises."""
        try:
            record = IssuanceRecord(
                **_base(principal, mapping),
                outcome=outcome_of(error),
                provider_request_id=_request_id(error),
                scopes=_scopes(scopes),
            )
        except Exception as exc:
            self._lost(None, exc)
            return
        self._write(record)

    def _write(self, record: IssuanceRecord) -> None:
        """Hand the INSERT to the writer and wait for it at most ``write_timeout`` seconds."""
        write = _Write(record)
        with self._wake:
            if len(self._queue) >= self.max_pending:
                overloaded = True
            else:
                overloaded = False
                self._queue.append(write)
                self._ensure_writer()
                self._wake.notify()
        if overloaded:
            self._lost(record, TimeoutError(f"{self.max_pending} audit writes already waiting"))
            return
        write.done.wait(self.write_timeout)
        with write.lock:
            if not write.done.is_set():
                write.abandoned = True
        if write.abandoned:
            self._lost(
                record, TimeoutError(f"database did not answer within {self.write_timeout:g} s")
            )
        elif write.error is not None:
            self._lost(record, write.error)

    def _ensure_writer(self) -> None:
        # Per process (called with ``_wake`` held): a forked worker has no thread of its parent's.
        pid = os.getpid()
        if self._writer_pid != pid:
            self._writer_pid = pid
            threading.Thread(target=self._run_writer, name="sts-audit", daemon=True).start()

    def _run_writer(self) -> None:
        pid = os.getpid()
        while True:
            with self._wake:
                while not self._queue:
                    self._wake.wait()
                if self._writer_pid != pid:  # pragma: no cover - a fork replaced this writer
                    return
                write = self._queue.popleft()
            self._insert(write)

    def _insert(self, write: _Write) -> None:
        # One INSERT in its own short transaction: nothing else is locked while the caller waits.
        try:
            with write.lock:
                if write.abandoned:
                    return  # already logged by the caller; writing it now would duplicate it
            with self.database.engine.connect() as conn:
                transaction = conn.begin()
                conn.execute(sa.insert(IssuanceEvent).values(**write.record.row()))
                with write.lock:
                    if write.abandoned:
                        transaction.rollback()
                        return
                    write.committing = True
                transaction.commit()
            with write.lock:
                late = write.abandoned
            if late:
                AUDIT_LATE_WRITES.inc()
                log.warning(
                    "issuance event written after it was logged as not written; "
                    "the earlier line is a duplicate of this row",
                    extra={"event": write.record.to_dict()},
                )
        except Exception as exc:
            write.error = exc
        finally:
            with write.lock:
                write.done.set()

    @staticmethod
    def _lost(record: IssuanceRecord | None, exc: BaseException) -> None:
        AUDIT_WRITE_FAILURES.inc()
        log.warning(
            "issuance event not written to the database (%s); logged here instead",
            _reason(exc),
            extra={"event": record.to_dict() if record is not None else None},
        )

    # -- reading and retention (the CLI) ---------------------------------------------------

    def query(
        self,
        since: datetime | None = None,
        mapping: str | None = None,
        limit: int = DEFAULT_LIMIT,
    ) -> list[IssuanceRecord]:
        """Events newest first, optionally from ``since`` on and for one mapping."""
        if limit < 1:
            raise ValueError("limit must be positive")
        statement = sa.select(IssuanceEvent)
        if since is not None:
            statement = statement.where(IssuanceEvent.created_at >= since)
        if mapping is not None:
            statement = statement.where(IssuanceEvent.mapping == mapping)
        statement = statement.order_by(
            IssuanceEvent.created_at.desc(), IssuanceEvent.id.desc()
        ).limit(limit)
        with self.database.session() as session:
            return [
                IssuanceRecord(
                    id=event.id,
                    created_at=event.created_at,
                    issuer=event.issuer,
                    sub=event.sub,
                    account=event.account,
                    project=event.project,
                    deployment=event.deployment,
                    environment_type=event.environment_type,
                    mapping=event.mapping,
                    provider=event.provider,
                    target=event.target,
                    outcome=event.outcome,
                    provider_request_id=event.provider_request_id,
                    expires_at=event.expires_at,
                    credential_sha256=event.credential_sha256,
                    scopes=event.scopes,
                )
                for event in session.scalars(statement)
            ]

    def prune(self, older_than: datetime, *, dry_run: bool = False) -> int:
        """Delete events created before ``older_than``; returns how many (would be) deleted.

        Deletes in batches of ``prune_batch`` rows, each its own transaction, so a large backlog
        never holds a long lock against the exchanges writing new rows.
        """
        if older_than.tzinfo is None:
            raise ValueError("older_than must be timezone-aware")
        old = IssuanceEvent.created_at < older_than
        if dry_run:
            with self.database.engine.connect() as conn:
                count = conn.execute(sa.select(sa.func.count()).where(old)).scalar_one()
                return int(count)
        total = 0
        while True:
            batch = sa.select(IssuanceEvent.id).where(old).order_by(IssuanceEvent.id)
            with self.database.engine.begin() as conn:
                deleted = conn.execute(
                    sa.delete(IssuanceEvent).where(
                        IssuanceEvent.id.in_(batch.limit(self.prune_batch).scalar_subquery())
                    )
                ).rowcount
            total += deleted
            if deleted < self.prune_batch:
                return total
