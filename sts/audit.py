"""Issuance events: one ``issuance_events`` row per upstream credential call (the ledger).

The exchange calls :class:`AuditRecorder` from inside the single-flight upstream call. Before the
call it writes the row with outcome ``pending`` (:meth:`AuditRecorder.record_pending`: identity,
mapping, target, scopes, time and, for AWS, the role session name the call asks for); after the
call, before it answers, it completes that same row (:meth:`AuditRecorder.record_issued`,
:meth:`AuditRecorder.record_refused`). So every credential a caller could have received (and
every upstream refusal) has its row even if the process dies right after responding, and a
process killed while the cloud answers leaves the ``pending`` row: credentials may have been
issued that nobody received. Cache hits write nothing. A row carries the SHA-256 of the issued
secret, never the secret: a leaked AWS session token or GCP access token can be hashed and looked
up, and the table holds nothing anyone could use (the audit-event design of octo-sts, which logs
a digest of the token it minted). For AWS it also carries the ``AccessKeyId`` (an identifier, not
a secret: CloudTrail records it with every call the credentials make) and the role session name.

Outcomes:

- ``pending``: the call was made, or was about to be, and its result was never recorded (the
  process died, or the completion was logged instead: see below). Kept until pruned.
- ``issued``: credentials came back.
- ``<OAuth error code>:<provider code>``: the call failed, e.g. ``invalid_target:AccessDenied``,
  ``invalid_request:ExpiredTokenException``, ``temporarily_unavailable:Throttling``. Temporary
  failures are recorded too, so operators see upstream trouble next to what it affected.
  The provider code is the error's ``provider_code`` field (:mod:`sts.errors`), never read
  back from its description. An OAuth error without one is its bare error code; any other
  exception (a bug) is ``server_error:<exception type>``.

A write that fails never fails the exchange and is never lost silently: the event goes to the
``sts.audit`` logger as one WARNING line with every field but the ``AccessKeyId`` (no part of a
credential is ever logged; the line's provider request id finds the key in CloudTrail), and
``sts_audit_write_failures_total`` counts it. The pending write and the completion are two
writes: each one lost is its own line. A completion whose pending row is not in the database
(its write was lost, or the row was pruned meanwhile) inserts the whole row instead.

A database that accepts and then stalls must not hold the answer either. Every write runs on
one writer thread per process (so events are written in the order they happened, and a
completion always runs after its pending write has finished, one way or the other); the caller
waits at most :data:`AUDIT_WRITE_TIMEOUT_SECONDS` for it, then logs the event as above and
goes on. The write is then *abandoned*, and the choice made about a late completion is that it
never makes a second record silently:

- a write still queued, or whose INSERT returns after the abandonment, is rolled back: the
  WARNING line is the event's only record;
- only a COMMIT already sent when the caller gave up can still land; that row is then a
  duplicate of the WARNING line, and the writer says so with a second WARNING line and
  ``sts_audit_late_writes_total``. A pending row that lands late is still the one its
  completion updates: there is never a second row for one call.

At most :data:`AUDIT_MAX_PENDING` writes wait for the writer; past that an event is logged at once
instead of queued, so a stalled database costs bounded memory.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any, NamedTuple

import sqlalchemy as sa

from sts.db import Database
from sts.db.models import IssuanceEvent, utcnow
from sts.errors import OAuthError
from sts.forking import renew_after_fork
from sts.identity.principal import Principal
from sts.mappings.spec import MappingSpec
from sts.metrics import AUDIT_LATE_WRITES, AUDIT_WRITE_FAILURES
from sts.providers.base import Credentials

log = logging.getLogger("sts.audit")

PENDING = "pending"
ISSUED = "issued"
DEFAULT_LIMIT = 100
#: Rows deleted per transaction by :meth:`AuditRecorder.prune`, so no lock is held for long.
PRUNE_BATCH = 5000
#: Seconds an exchange waits for each audit write before logging the event instead.
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
    #: AWS only: the issued credentials' AccessKeyId and the role session name of the call.
    access_key_id: str | None = None
    session_name: str | None = None
    #: GCP ID tokens only: the audience asked for.
    audience: str | None = None
    id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, every field: timestamps as RFC 3339 UTC with ``Z``."""
        doc = asdict(self)
        for name in ("created_at", "expires_at"):
            value = doc[name]
            if value is not None:
                doc[name] = value.astimezone(UTC).isoformat().replace("+00:00", "Z")
        return {"id": doc.pop("id"), **doc}

    def log_dict(self) -> dict[str, Any]:
        """What a WARNING line carries: :meth:`to_dict` without the AccessKeyId."""
        doc = self.to_dict()
        del doc["access_key_id"]
        return doc

    def row(self) -> dict[str, Any]:
        """Column values for the INSERT (no ``id``: the database assigns it)."""
        values = asdict(self)
        del values["id"]
        return values

    def completion(self) -> dict[str, Any]:
        """Column values that complete a ``pending`` row (the rest was written before the call)."""
        return {name: getattr(self, name) for name in _COMPLETED}


#: The columns a completion sets: everything only known after the call.
_COMPLETED = (
    "outcome",
    "provider_request_id",
    "expires_at",
    "credential_sha256",
    "scopes",
    "access_key_id",
    "session_name",
)


class Caller(NamedTuple):
    """An identity the audit trail records, and the mapping it was sent upstream with."""

    account: str
    project: str
    deployment: str
    environment_type: str
    mapping: str


class Holder(NamedTuple):
    """Someone the audit trail shows obtaining credentials (or, ``pending``, maybe obtaining
    them) through ``mapping``; ``last`` is the latest such call."""

    account: str
    project: str
    deployment: str
    environment_type: str
    sub: str
    mapping: str
    outcome: str
    last: datetime


#: Values per IN list in :meth:`AuditRecorder.holders`.
HOLDERS_BATCH = 500


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


def _session_name(principal: Principal, mapping: MappingSpec) -> str | None:
    """The role session name of an AWS mapping's call for ``principal``; None for other clouds."""
    if mapping.provider != "aws":
        return None
    # The provider's own rule, so the row names what AWS (and CloudTrail) saw; imported here so
    # that reading the trail (sts audit) does not load boto3.
    from sts.providers.aws import session_name

    return session_name(principal.deployment)


def _base(
    principal: Principal,
    mapping: MappingSpec,
    pending: PendingCall | None = None,
    audience: str | None = None,
) -> dict[str, Any]:
    started = pending.record if pending is not None else None
    return {
        "audience": audience,
        # A completed row keeps the time of its pending row: when the call was made.
        "created_at": started.created_at if started is not None else utcnow(),
        "issuer": principal.issuer,
        "sub": principal.sub,
        "account": principal.account,
        "project": principal.project,
        "deployment": principal.deployment,
        "environment_type": principal.environment_type,
        "mapping": mapping.name,
        "provider": mapping.provider,
        "target": mapping.targets[0],
        "session_name": _session_name(principal, mapping),
    }


def _reason(exc: BaseException) -> str:
    """Exception type and the first line of the driver's message (not SQL or parameters)."""
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    first = lines[0][:200] if lines else ""
    return f"{type(cause).__name__}: {first}" if first else type(cause).__name__


def _aware(name: str, moment: datetime | None) -> None:
    if moment is not None and moment.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware")


class _Write:
    """One write handed to the writer thread; ``lock`` orders abandonment against commit.

    ``completes`` is the pending write a completion completes; ``row_id`` is set by the writer
    once the row is committed (late included), so a completion that runs after it finds it.
    """

    __slots__ = (
        "abandoned",
        "committing",
        "completes",
        "done",
        "error",
        "lock",
        "record",
        "row_id",
    )

    def __init__(self, record: IssuanceRecord, completes: _Write | None = None) -> None:
        self.record = record
        self.completes = completes
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.abandoned = False
        self.committing = False
        self.row_id: int | None = None

    def logged(self) -> IssuanceRecord:
        """The record as a WARNING line shows it: with the id of the row it completes, if any."""
        row_id = self.row_id
        if row_id is None and self.completes is not None:
            row_id = self.completes.row_id
        return replace(self.record, id=row_id) if row_id is not None else self.record


class PendingCall:
    """The ``pending`` row of one upstream call, as :meth:`AuditRecorder.record_pending` wrote it
    (or tried to); what :meth:`AuditRecorder.record_issued` and ``record_refused`` complete."""

    __slots__ = ("_write", "record")

    def __init__(self, record: IssuanceRecord | None, write: _Write | None) -> None:
        self.record = record
        self._write = write

    @property
    def row_id(self) -> int | None:
        """The row's id once it is written (None before, and if its write was lost)."""
        return self._write.row_id if self._write is not None else None


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
        self._writer_started = False
        renew_after_fork(self)

    # -- writing (the exchange path) -------------------------------------------------------

    @property
    def pending(self) -> int:
        """Writes waiting for the writer thread (the one it is running excluded)."""
        return len(self._queue)

    def record_pending(
        self,
        principal: Principal,
        mapping: MappingSpec,
        *,
        scopes: Sequence[str] = (),
        audience: str | None = None,
    ) -> PendingCall:
        """Record an upstream call about to be made, as a ``pending`` row; never raises.

        Called right before the call; what it returns goes to :meth:`record_issued` or
        :meth:`record_refused`, which complete that same row.
        """
        try:
            record = IssuanceRecord(
                **_base(principal, mapping, None, audience),
                outcome=PENDING,
                scopes=_scopes(scopes),
            )
        except Exception as exc:  # the exchange must not fail for its audit row
            self._lost(None, exc)
            return PendingCall(None, None)
        return PendingCall(record, self._write(record))

    def record_issued(
        self,
        principal: Principal,
        mapping: MappingSpec,
        credentials: Credentials,
        *,
        scopes: Sequence[str] = (),
        audience: str | None = None,
        pending: PendingCall | None = None,
    ) -> None:
        """Record credentials just issued upstream, completing ``pending``'s row (or writing the
        whole row without one); never raises."""
        try:
            record = IssuanceRecord(
                **_base(principal, mapping, pending, audience),
                outcome=ISSUED,
                provider_request_id=credentials.request_id,
                expires_at=datetime.fromtimestamp(credentials.expires_at, UTC),
                credential_sha256=credential_sha256(credentials),
                scopes=credentials.scope or _scopes(scopes),
                access_key_id=credentials.aws_access_key_id,
            )
        except Exception as exc:
            self._lost(None, exc)
            return
        self._write(record, pending)

    def record_refused(
        self,
        principal: Principal,
        mapping: MappingSpec,
        error: BaseException,
        *,
        scopes: Sequence[str] = (),
        audience: str | None = None,
        pending: PendingCall | None = None,
    ) -> None:
        """Record an upstream call that failed (refusal or temporary failure), completing
        ``pending``'s row (or writing the whole row without one); never raises."""
        try:
            record = IssuanceRecord(
                **_base(principal, mapping, pending, audience),
                outcome=outcome_of(error),
                provider_request_id=_request_id(error),
                scopes=_scopes(scopes),
            )
        except Exception as exc:
            self._lost(None, exc)
            return
        self._write(record, pending)

    def _write(self, record: IssuanceRecord, pending: PendingCall | None = None) -> _Write | None:
        """Hand the write to the writer and wait for it at most ``write_timeout`` seconds.

        Returns the write (its ``row_id`` is set once the row is committed, even late), or None
        when it was never queued.
        """
        write = _Write(record, pending._write if pending is not None else None)
        with self._wake:
            if len(self._queue) >= self.max_pending:
                overloaded = True
            else:
                overloaded = False
                self._queue.append(write)
                self._ensure_writer()
                self._wake.notify()
        if overloaded:
            self._lost(
                write.logged(), TimeoutError(f"{self.max_pending} audit writes already waiting")
            )
            return None
        write.done.wait(self.write_timeout)
        with write.lock:
            if not write.done.is_set():
                write.abandoned = True
        if write.abandoned:
            self._lost(
                write.logged(),
                TimeoutError(f"database did not answer within {self.write_timeout:g} s"),
            )
        elif write.error is not None:
            self._lost(write.logged(), write.error)
        return write

    def _ensure_writer(self) -> None:
        # Called with ``_wake`` held; started on first use in each process (_after_fork).
        if not self._writer_started:
            self._writer_started = True
            threading.Thread(target=self._run_writer, name="sts-audit", daemon=True).start()

    def _after_fork(self) -> None:
        # The parent's writer thread does not exist here, and its condition's lock may have been
        # held at the fork; the parent's queued writes are the parent's to make.
        self._wake = threading.Condition(threading.Lock())
        self._queue = deque()
        self._writer_started = False

    def _run_writer(self) -> None:
        while True:
            with self._wake:
                while not self._queue:
                    self._wake.wait()
                write = self._queue.popleft()
            self._apply(write)

    def _apply(self, write: _Write) -> None:
        # One statement (two when a completion finds no pending row) in its own short
        # transaction: nothing else is locked while the caller waits.
        try:
            with write.lock:
                if write.abandoned:
                    return  # already logged by the caller; writing it now would duplicate it
            with self.database.engine.connect() as conn:
                transaction = conn.begin()
                row_id = self._store(conn, write)
                with write.lock:
                    if write.abandoned:
                        transaction.rollback()
                        return
                    write.committing = True
                transaction.commit()
            write.row_id = row_id
            with write.lock:
                late = write.abandoned
            if late:
                AUDIT_LATE_WRITES.inc()
                log.warning(
                    "issuance event written after it was logged as not written; "
                    "the earlier line is a duplicate of this row",
                    extra={"event": write.logged().log_dict()},
                )
        except Exception as exc:
            write.error = exc
        finally:
            with write.lock:
                write.done.set()

    @staticmethod
    def _store(conn: sa.Connection, write: _Write) -> int:
        """Complete the pending row, or (none, or it is gone) insert the whole row; its id."""
        # On the writer thread, after the pending write has finished: its row_id is final.
        completes = write.completes
        if completes is not None and completes.row_id is not None:
            updated = conn.execute(
                sa.update(IssuanceEvent)
                .where(IssuanceEvent.id == completes.row_id, IssuanceEvent.outcome == PENDING)
                .values(**write.record.completion())
            ).rowcount
            if updated:
                return completes.row_id
        key = conn.execute(
            sa.insert(IssuanceEvent).values(**write.record.row())
        ).inserted_primary_key
        if key is None:  # pragma: no cover - every supported backend returns it
            raise RuntimeError("the database returned no id for the new row")
        return int(key[0])

    @staticmethod
    def _lost(record: IssuanceRecord | None, exc: BaseException) -> None:
        AUDIT_WRITE_FAILURES.inc()
        log.warning(
            "issuance event not written to the database (%s); logged here instead",
            _reason(exc),
            extra={"event": record.log_dict() if record is not None else None},
        )

    # -- reading and retention (the CLI) ---------------------------------------------------

    def query(
        self,
        *,
        account: str | None = None,
        project: str | None = None,
        deployment: str | None = None,
        environment_type: str | None = None,
        sub: str | None = None,
        mapping: str | None = None,
        outcome: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        valid_at: datetime | None = None,
        limit: int | None = DEFAULT_LIMIT,
    ) -> list[IssuanceRecord]:
        """Events newest first, at most ``limit`` (None: all), every given filter combined.

        The identity and mapping filters are exact values. ``outcome`` is an exact outcome, or
        an OAuth error code alone (``invalid_target``), which covers every provider code recorded
        with it. ``since`` is inclusive and ``until`` exclusive, on the time the call was made.
        ``valid_at`` keeps the credentials that may still be valid then: ``issued`` rows whose
        ``expires_at`` is later, and every ``pending`` row (its credentials may have been issued;
        its ``expires_at`` is None, unknown). Timestamps must be timezone-aware.
        """
        if limit is not None and limit < 1:
            raise ValueError("limit must be positive")
        _aware("since", since)
        _aware("until", until)
        _aware("valid_at", valid_at)
        statement = sa.select(IssuanceEvent)
        exact = (
            (IssuanceEvent.account, account),
            (IssuanceEvent.project, project),
            (IssuanceEvent.deployment, deployment),
            (IssuanceEvent.environment_type, environment_type),
            (IssuanceEvent.sub, sub),
            (IssuanceEvent.mapping, mapping),
        )
        for column, value in exact:
            if value is not None:
                statement = statement.where(column == value)
        if outcome is not None:
            prefix = outcome + ":"
            # substr, not LIKE: no wildcard, and case-sensitive on every backend.
            statement = statement.where(
                sa.or_(
                    IssuanceEvent.outcome == outcome,
                    sa.func.substr(IssuanceEvent.outcome, 1, len(prefix)) == prefix,
                )
            )
        if since is not None:
            statement = statement.where(IssuanceEvent.created_at >= since)
        if until is not None:
            statement = statement.where(IssuanceEvent.created_at < until)
        if valid_at is not None:
            statement = statement.where(
                sa.or_(
                    IssuanceEvent.outcome == PENDING,
                    sa.and_(IssuanceEvent.outcome == ISSUED, IssuanceEvent.expires_at > valid_at),
                )
            )
        statement = statement.order_by(IssuanceEvent.created_at.desc(), IssuanceEvent.id.desc())
        if limit is not None:
            statement = statement.limit(limit)
        with self.database.session() as session:
            return [_record(event) for event in session.scalars(statement)]

    def callers(self, *, since: datetime, until: datetime | None = None) -> list[Caller]:
        """Every distinct identity and mapping of the events from ``since`` (inclusive) to
        ``until`` (exclusive), whatever their outcome: what ``sts mappings plan`` replays.

        Refused and ``pending`` calls count: each was a caller that selection sent upstream.
        """
        _aware("since", since)
        _aware("until", until)
        columns = (
            IssuanceEvent.account,
            IssuanceEvent.project,
            IssuanceEvent.deployment,
            IssuanceEvent.environment_type,
            IssuanceEvent.mapping,
        )
        statement = sa.select(*columns).where(IssuanceEvent.created_at >= since).distinct()
        if until is not None:
            statement = statement.where(IssuanceEvent.created_at < until)
        with self.database.engine.connect() as conn:
            return [Caller(*row) for row in conn.execute(statement)]

    def holders(
        self,
        *,
        since: datetime,
        targets: Sequence[str] = (),
        mappings: Sequence[str] = (),
    ) -> list[Holder]:
        """Who obtained credentials (``issued``), or may have (``pending``), from ``since`` on,
        for any of ``targets`` (the recorded target: role ARN, service account, client id or
        workload identity provider) or through any of ``mappings``: one :class:`Holder` per
        identity, sub, mapping and outcome, with the latest time. ``sts mappings who-can``.
        """
        _aware("since", since)
        found: dict[tuple[Any, ...], Holder] = {}
        columns = (
            IssuanceEvent.account,
            IssuanceEvent.project,
            IssuanceEvent.deployment,
            IssuanceEvent.environment_type,
            IssuanceEvent.sub,
            IssuanceEvent.mapping,
            IssuanceEvent.outcome,
        )
        # In batches: an IN list of thousands of values exceeds some backends' parameter limits
        # (a provider name can be shared by thousands of mappings).
        batches = [
            (IssuanceEvent.target, list(targets[start : start + HOLDERS_BATCH]))
            for start in range(0, len(targets), HOLDERS_BATCH)
        ] + [
            (IssuanceEvent.mapping, list(mappings[start : start + HOLDERS_BATCH]))
            for start in range(0, len(mappings), HOLDERS_BATCH)
        ]
        with self.database.engine.connect() as conn:
            for column, values in batches:
                statement = (
                    sa.select(*columns, sa.func.max(IssuanceEvent.created_at))
                    .where(
                        IssuanceEvent.created_at >= since,
                        IssuanceEvent.outcome.in_((ISSUED, PENDING)),
                        column.in_(values),
                    )
                    .group_by(*columns)
                )
                for row in conn.execute(statement):
                    # Found by its target and by its mapping, a row is one row: the latest wins.
                    holder = Holder(*row)
                    known = found.get(holder[:-1])
                    if known is None or holder.last > known.last:
                        found[holder[:-1]] = holder
        return sorted(found.values())

    def prune(self, older_than: datetime, *, dry_run: bool = False) -> int:
        """Delete events created before ``older_than``, whatever their outcome (``pending``
        included); returns how many (would be) deleted.

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


def _record(event: IssuanceEvent) -> IssuanceRecord:
    return IssuanceRecord(
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
        access_key_id=event.access_key_id,
        session_name=event.session_name,
        audience=event.audience,
    )
