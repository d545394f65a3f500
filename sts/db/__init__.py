"""The database: one :class:`Database` object shared by the CLI, the service and the tests.

Engine, sessions and the Alembic glue live here; what is stored lives with its owner
(:mod:`sts.mappings.store`, :mod:`sts.audit`) and the tables in :mod:`sts.db.models`.

A URL that no installed driver can open is a configuration error
(:class:`sts.config.ConfigError` naming ``STS_DATABASE_URL``), raised when the object is built:
every command then exits 2 with one line (README, "Configuration").
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, sessionmaker

from sts.config import ConfigError, parse_database_url
from sts.forking import renew_after_fork

POSTGRES_CONNECT_TIMEOUT_SECONDS = 5
SQLITE_BUSY_TIMEOUT_SECONDS = 30
#: The PostgreSQL advisory lock key that migrations hold (any fixed number; "zsts" in ASCII).
MIGRATION_LOCK = 0x7A737473


class MigrationRefused(ValueError):
    """A migration the operator asked for that would damage the history or the service's own
    schema (docs/reference.md section 13): bad input, refused before anything is written."""


class NotMigratedError(RuntimeError):
    """The schema is missing or behind the code: ``sts db upgrade`` has not been run."""

    def __init__(self, current: str | None, head: str | None) -> None:
        super().__init__(
            f"database not migrated (at {current or 'no revision'}, code needs {head}): "
            "run sts db upgrade"
        )
        self.current = current
        self.head = head


def driver_reason(exc: BaseException) -> str:
    """First line of the driver's message (``database "x" does not exist``): SQLAlchemy's own
    text adds the SQL and its parameters. Never a password: the drivers do not print them."""
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(cause).__name__


def describe_failure(exc: BaseException) -> str:
    """One line for ``/readyz`` and the log: what is wrong with the database and what to do."""
    if isinstance(exc, NotMigratedError):
        return str(exc)
    if isinstance(exc, sa.exc.DBAPIError):
        reason = driver_reason(exc)
        # A missing table (PostgreSQL's UndefinedTable, SQLite's "no such table"): the schema
        # was never migrated.
        if type(exc.orig).__name__ == "UndefinedTable" or reason.startswith("no such table"):
            return "database not migrated: run sts db upgrade"
        return f"database unavailable: {reason}"
    return f"database unavailable: {type(exc).__name__}"


def migrations_dir() -> Path:
    """The Alembic scripts, found as the ``sts._migrations`` package.

    An editable install maps that package to the checkout's ``migrations/``; an installed wheel
    carries them inside the package. Nothing is looked up by relative path, so another project's
    ``migrations/`` next to an installed package is never picked up.
    """
    spec = importlib.util.find_spec("sts._migrations")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the migrations are not installed with the sts package")
    return Path(next(iter(spec.submodule_search_locations)))


class Database:
    """An engine, sessions and migrations; safe to share between threads.

    SQLite gets a busy timeout, WAL (concurrent readers while a writer commits), foreign keys and
    real transactions: pysqlite's own ``BEGIN`` handling is switched off and SQLAlchemy's begin
    emits it, so reads inside a transaction share one snapshot and DDL is transactional
    (SQLAlchemy docs, "Serializable isolation / Savepoints / Transactional DDL" for pysqlite).
    """

    def __init__(self, url: str) -> None:
        self.url = parse_database_url(url)
        options: dict[str, Any] = {"pool_pre_ping": True}
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        if self.is_sqlite:
            options["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_SECONDS}
        elif (
            self.url.get_backend_name() == "postgresql" and "connect_timeout" not in self.url.query
        ):
            # A database host that stops answering must not hold a request for the OS's TCP
            # time-out (minutes): fail within seconds, and let /readyz say why.
            options["connect_args"] = {"connect_timeout": POSTGRES_CONNECT_TIMEOUT_SECONDS}
        try:
            self.engine = sa.create_engine(self.url, **options)
        except (sa.exc.ArgumentError, ImportError) as exc:
            # The dialect exists but its driver is not installed (or refuses these options).
            raise ConfigError(
                "STS_DATABASE_URL", f"cannot open with the installed drivers ({type(exc).__name__})"
            ) from None
        if self.is_sqlite:
            in_memory = self.url.database in (None, "", ":memory:") or "memory" in str(
                self.url.query.get("mode", "")
            )
            _configure_sqlite(self.engine, wal=not in_memory)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        renew_after_fork(self)

    # -- connections ----------------------------------------------------------------------

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on an exception."""
        with self._sessions.begin() as session:
            yield session

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """A read transaction that sees one consistent state, whatever commits meanwhile."""
        conn = self.engine.connect()
        try:
            if not self.is_sqlite:
                # READ COMMITTED (PostgreSQL's default) takes a new snapshot per statement.
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn
        finally:
            conn.close()

    def ping(self) -> None:
        """Raise if the database does not answer (``/readyz``)."""
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()

    def _after_fork(self) -> None:
        # The pooled connections are the parent's (their sockets and driver state are shared
        # with it): the child forgets them without closing them, and opens its own (SQLAlchemy,
        # "Using Connection Pools with Multiprocessing or os.fork()").
        self.engine.dispose(close=False)

    # -- migrations -----------------------------------------------------------------------

    def alembic_config(self, version_locations: Sequence[str | Path] = ()) -> Config:
        """A programmatic Alembic config on the shipped migrations (no alembic.ini needed).

        ``version_locations`` adds directories of further revisions, such as a team's own
        revisions that call :func:`sts.mappings.migration.apply_mappings`.
        """
        config = Config()
        location = migrations_dir()
        config.set_main_option("script_location", str(location))
        config.set_main_option("path_separator", "os")
        if version_locations:
            paths = [str(location / "versions"), *(str(path) for path in version_locations)]
            config.set_main_option("version_locations", os.pathsep.join(paths))
        # ConfigParser interpolation: a literal % in a URL (search_path%3D...) must be doubled.
        url = self.url.render_as_string(hide_password=False).replace("%", "%%")
        config.set_main_option("sqlalchemy.url", url)
        return config

    def upgrade(
        self, revision: str = "head", *, version_locations: Sequence[str | Path] = ()
    ) -> None:
        """Run Alembic upgrades to ``revision`` in one transaction, after
        :meth:`check_history` accepted the extra ``version_locations``."""
        if version_locations:
            self.check_history(version_locations)
        config = self.alembic_config(version_locations)
        with self.engine.begin() as conn:
            self._migration_lock(conn)
            config.attributes["connection"] = conn
            command.upgrade(config, revision)

    def _migration_lock(self, conn: Connection) -> None:
        """PostgreSQL: one migration at a time (every replica's init container may run
        ``sts db upgrade`` at once); the others wait here, then find the schema at head. The
        lock is the transaction's: released at its commit or rollback. (SQLite's write lock
        serialises migrations already.)"""
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})

    def downgrade(
        self,
        revision: str,
        *,
        version_locations: Sequence[str | Path] = (),
        undo_service_schema: bool = False,
    ) -> None:
        """Run Alembic downgrades to ``revision`` (``"base"``: drop all) in one transaction.

        A target that would undo one of zuplo-sts's own revisions (their tables hold the audit
        trail, the signing keys and the mappings) raises :class:`MigrationRefused` unless
        ``undo_service_schema``: the usual downgrade undoes a team's own revisions only."""
        undone = self.service_revisions_undone(revision, version_locations)
        if undone and not undo_service_schema:
            raise MigrationRefused(
                f"downgrade to {revision} would undo zuplo-sts's own revisions "
                f"({', '.join(undone)}) and drop the tables that hold the audit trail, the "
                "signing keys and the revocations; pass --undo-service-schema to do that"
            )
        config = self.alembic_config(version_locations)
        with self.engine.begin() as conn:
            self._migration_lock(conn)
            config.attributes["connection"] = conn
            command.downgrade(config, revision)

    def _own_revisions(self) -> ScriptDirectory:
        return ScriptDirectory.from_config(self.alembic_config())

    def check_history(self, version_locations: Sequence[str | Path]) -> None:
        """Refuse extra revisions that would fork the history or hang off anything but
        zuplo-sts's head (docs/reference.md section 13), before anything is written.

        The whole history must have one head, and every extra revision must descend from
        zuplo-sts's own head; one already applied to this database is accepted as it is (it
        was checked against the head of its day: a merge revision joins it to a newer head).
        """
        own = self._own_revisions()
        own_head = own.get_current_head()
        known = {script.revision for script in own.walk_revisions()}
        try:
            full = ScriptDirectory.from_config(self.alembic_config(version_locations))
            heads = full.get_heads()
            extra = [script for script in full.walk_revisions() if script.revision not in known]
        except CommandError as exc:
            raise MigrationRefused(f"--versions: {driver_reason(exc)}") from None
        if len(heads) > 1:
            raise MigrationRefused(
                f"--versions: the history would have {len(heads)} heads "
                f"({', '.join(sorted(heads))}); the first revision of your own must have "
                f"down_revision = {own_head!r}, zuplo-sts's head"
            )
        applied = set((self.current() or "").split(",")) - {""}
        applied_ancestry = _ancestry(full, applied) if applied else set()
        for script in extra:
            if script.revision in applied_ancestry:
                continue
            if own_head not in _ancestry(full, {script.revision}):
                raise MigrationRefused(
                    f"--versions: revision {script.revision} does not descend from zuplo-sts's "
                    f"head {own_head}: set the down_revision of your first revision to it"
                )

    def service_revisions_undone(
        self, target: str, version_locations: Sequence[str | Path] = ()
    ) -> list[str]:
        """zuplo-sts's own revisions that a downgrade to ``target`` would undo, newest first.

        ``target`` is a revision id (or a unique prefix of one) or ``base``; a relative target
        (``-1``) is refused, since what it means depends on which heads are applied."""
        if target.startswith(("-", "+")) or "@" in target or target in {"head", "heads"}:
            raise MigrationRefused(f"downgrade target {target!r}: name a revision id or base")
        full = ScriptDirectory.from_config(self.alembic_config(version_locations))
        if target == "base":
            kept: set[str] = set()
        else:
            try:
                found = full.get_revisions(target)
            except CommandError as exc:
                raise MigrationRefused(f"downgrade target: {driver_reason(exc)}") from None
            kept = _ancestry(full, {script.revision for script in found if script is not None})
        applied = set((self.current() or "").split(",")) - {""}
        undone = _ancestry(full, applied) - kept
        own = [script.revision for script in self._own_revisions().walk_revisions()]
        return [revision for revision in own if revision in undone]

    def current(self) -> str | None:
        """The database's Alembic revision (several heads: comma-separated); None: unmigrated."""
        with self.engine.connect() as conn:
            heads = MigrationContext.configure(conn).get_current_heads()
        return ",".join(sorted(heads)) if heads else None

    def head(self) -> str | None:
        """The newest revision the shipped migrations define."""
        return ScriptDirectory.from_config(self.alembic_config()).get_current_head()

    def require_current(self) -> None:
        """Raise :class:`NotMigratedError` unless the schema includes the shipped head."""
        current, head = self.current(), self.head()
        if current is None:
            raise NotMigratedError(current, head)
        script = ScriptDirectory.from_config(self.alembic_config())
        known = {revision.revision for revision in script.walk_revisions()}
        if head not in current.split(",") and not set(current.split(",")) - known:
            raise NotMigratedError(current, head)


def _ancestry(script: ScriptDirectory, revisions: set[str]) -> set[str]:
    """``revisions`` and every revision they descend from (``down_revision`` and
    ``depends_on``), walked in ``script``. An id ``script`` does not know is kept as it is."""
    seen: set[str] = set()
    todo = list(revisions)
    while todo:
        revision = todo.pop()
        if revision in seen:
            continue
        seen.add(revision)
        try:
            found = script.get_revision(revision)
        except CommandError:
            continue
        if found is None:
            continue
        for parents in (found.down_revision, found.dependencies):
            todo.extend((parents,) if isinstance(parents, str) else parents or ())
    return seen


def _configure_sqlite(engine: sa.Engine, *, wal: bool) -> None:
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_SECONDS * 1000}")
            if wal:
                cursor.execute("PRAGMA journal_mode = WAL")
                cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN")
