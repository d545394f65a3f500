"""The mapping store: one :class:`Database` object shared by the CLI, the service and the tests.

Applying a document (``sts mappings apply``) is a diff against the stored mappings written in the
caller's one transaction: the changed rows, one ``mapping_changes`` history row per change, and a
single bump of ``mapping_revision`` (DESIGN "Mappings"; the revision is what the service's
in-memory index polls). A dry run computes the same diff and writes nothing.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.orm import Session, sessionmaker

from sts.mappings.document import spec_from_dict
from sts.mappings.models import MappingChange, MappingRevision, RoleMapping, utcnow
from sts.mappings.spec import MappingSpec

POSTGRES_CONNECT_TIMEOUT_SECONDS = 5
SQLITE_BUSY_TIMEOUT_SECONDS = 30


class NotMigratedError(RuntimeError):
    """The schema is missing or behind the code: ``sts db upgrade`` has not been run."""

    def __init__(self, current: str | None, head: str | None) -> None:
        super().__init__(
            f"database not migrated (at {current or 'no revision'}, code needs {head}): "
            "run sts db upgrade"
        )
        self.current = current
        self.head = head


def migrations_dir() -> Path:
    """The Alembic scripts: shipped as ``sts._migrations``; repo-root ``migrations/`` in a checkout.

    The source checkout wins when present, so an editable install uses the files being edited.
    """
    checkout = Path(__file__).resolve().parents[2] / "migrations"
    if (checkout / "env.py").is_file():
        return checkout
    spec = importlib.util.find_spec("sts._migrations")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the migrations are not installed with the sts package")
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass(frozen=True)
class FieldChange:
    """One changed field of an updated mapping; ``path`` is dotted (``aws.duration_seconds``)."""

    path: str
    before: Any
    after: Any


@dataclass(frozen=True)
class Update:
    before: MappingSpec
    after: MappingSpec
    changes: tuple[FieldChange, ...]


@dataclass
class Diff:
    """What an apply did (or, in a dry run, would do)."""

    created: list[MappingSpec] = field(default_factory=list)
    updated: list[Update] = field(default_factory=list)
    deleted: list[MappingSpec] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    # Stored mappings absent from the document, left alone because prune was off.
    kept: list[str] = field(default_factory=list)
    # mapping_revision after the apply (unchanged when nothing changed or in a dry run).
    revision: int = 0
    dry_run: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.deleted)

    def render(self) -> str:
        """The diff as the CLI prints it, one line per change, ``no changes`` when none."""
        lines = [
            f"+ create {spec.name} ({spec.provider} {spec.targets[0]})" for spec in self.created
        ]
        for update in self.updated:
            fields = ", ".join(
                f"{change.path} {_show(change.before)} -> {_show(change.after)}"
                for change in update.changes
            )
            lines.append(f"~ update {update.after.name}: {fields}")
        lines.extend(f"- delete {spec.name}" for spec in self.deleted)
        if not lines:
            lines.append("no changes")
        if self.kept:
            lines.append(
                f"({len(self.kept)} stored mapping(s) not in the file kept; --prune deletes them)"
            )
        return "\n".join(lines)


def _show(value: Any) -> str:
    if value is None:
        return "(unset)"
    # Bare when unambiguous; JSON-quoted when empty or holding spaces, so a change stays one line.
    if isinstance(value, str) and value.isprintable() and value and value.split() == [value]:
        return value
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


def _flatten(document: dict[str, Any]) -> dict[str, Any]:
    """File form to dotted leaves; a session policy and a scope list are single values."""
    flat: dict[str, Any] = {}
    for key, value in document.items():
        if key in ("aws", "gcp") and isinstance(value, dict):
            flat.update({f"{key}.{inner}": item for inner, item in value.items()})
        else:
            flat[key] = value
    return flat


def field_changes(before: MappingSpec, after: MappingSpec) -> tuple[FieldChange, ...]:
    old, new = _flatten(before.to_document()), _flatten(after.to_document())
    paths = list(old) + [path for path in new if path not in old]
    return tuple(
        FieldChange(path, old.get(path), new.get(path))
        for path in paths
        if old.get(path) != new.get(path)
    )


def _row_values(spec: MappingSpec) -> dict[str, Any]:
    options = spec.aws.to_document() if spec.aws is not None else None
    if spec.gcp is not None:
        options = spec.gcp.to_document()
    return {
        "name": spec.name,
        "description": spec.description,
        "account": spec.account,
        "project": spec.project,
        "deployment": spec.deployment,
        "environment_type": spec.environment_type,
        "provider": spec.provider,
        "target": spec.targets[0],
        "options": options,
        "enabled": spec.enabled,
    }


_SPEC_COLUMNS = (
    RoleMapping.name,
    RoleMapping.description,
    RoleMapping.account,
    RoleMapping.project,
    RoleMapping.deployment,
    RoleMapping.environment_type,
    RoleMapping.enabled,
    RoleMapping.provider,
    RoleMapping.options,
)


def spec_from_row(row: sa.Row[Any]) -> MappingSpec:
    """A stored mapping, re-validated by the same rules as the file (a bad row is an error)."""
    document: dict[str, Any] = {
        "name": row.name,
        "description": row.description,
        "account": row.account,
        "project": row.project,
        "deployment": row.deployment,
        "environment_type": row.environment_type,
        "enabled": row.enabled,
        row.provider: row.options,
    }
    return spec_from_dict(document, f"role_mappings[{row.name}]")


def _connection(bind: Connection | Session) -> Connection:
    return bind.connection() if isinstance(bind, Session) else bind


def _lock_revision(conn: Connection) -> int:
    """Take the revision row's write lock, then read it: concurrent writers queue here.

    PostgreSQL holds the row lock to commit and later statements see everything committed before
    it; on SQLite the write starts the database write lock (waiting up to the busy timeout).
    """
    touched = conn.execute(
        sa.update(MappingRevision)
        .where(MappingRevision.id == 1)
        .values(revision=MappingRevision.revision)
    )
    if touched.rowcount != 1:
        raise RuntimeError("mapping_revision row missing: run sts db upgrade")
    return read_revision(conn)


def read_revision(bind: Connection | Session) -> int:
    conn = _connection(bind)
    return conn.execute(
        sa.select(MappingRevision.revision).where(MappingRevision.id == 1)
    ).scalar_one()


def _stored(conn: Connection) -> dict[str, MappingSpec]:
    rows = conn.execute(sa.select(*_SPEC_COLUMNS).order_by(RoleMapping.name))
    return {row.name: spec_from_row(row) for row in rows}


def _bump(conn: Connection, revision: int) -> None:
    conn.execute(
        sa.update(MappingRevision).where(MappingRevision.id == 1).values(revision=revision)
    )


def apply_specs(
    bind: Connection | Session,
    specs: Iterable[MappingSpec],
    *,
    prune: bool,
    dry_run: bool,
    actor: str,
    source: str,
) -> Diff:
    """Make the stored mappings match ``specs`` inside the caller's transaction.

    Mappings named in ``specs`` are created or updated; with ``prune``, stored mappings not named
    are deleted. Every change gets a history row; the revision is bumped once, and only if
    something changed. With ``dry_run`` nothing is written. The caller commits or rolls back, so
    a failure anywhere leaves the database as it was.
    """
    wanted = list(specs)
    names = [spec.name for spec in wanted]
    if len(set(names)) != len(names):
        raise ValueError("duplicate mapping names")
    conn = _connection(bind)
    revision = read_revision(conn) if dry_run else _lock_revision(conn)
    stored = _stored(conn)

    diff = Diff(revision=revision, dry_run=dry_run)
    for spec in sorted(wanted, key=lambda spec: spec.name):
        current = stored.get(spec.name)
        if current is None:
            diff.created.append(spec)
        elif current == spec:
            diff.unchanged.append(spec.name)
        else:
            diff.updated.append(Update(current, spec, field_changes(current, spec)))
    named = set(names)
    absent = [spec for name, spec in stored.items() if name not in named]
    if prune:
        diff.deleted.extend(absent)
    else:
        diff.kept.extend(spec.name for spec in absent)

    if dry_run or not diff.changed:
        return diff
    diff.revision = revision + 1
    changes: list[tuple[str, str, MappingSpec | None, MappingSpec | None]] = [
        *(("delete", spec.name, spec, None) for spec in diff.deleted),
        *(("update", item.after.name, item.before, item.after) for item in diff.updated),
        *(("create", spec.name, None, spec) for spec in diff.created),
    ]
    _record_many(conn, changes, revision=diff.revision, actor=actor, source=source)
    _bump(conn, diff.revision)
    return diff


_BATCH = 500


def _record_many(
    conn: Connection,
    changes: list[tuple[str, str, MappingSpec | None, MappingSpec | None]],
    *,
    revision: int,
    actor: str,
    source: str,
) -> None:
    """Write changes to ``role_mappings`` and their history rows to ``mapping_changes``.

    Multi-row statements in batches, so a 100,000-mapping file applies in seconds.
    """
    now = utcnow()
    deleted = [name for action, name, _, _ in changes if action == "delete"]
    for start in range(0, len(deleted), _BATCH):
        batch = deleted[start : start + _BATCH]
        conn.execute(sa.delete(RoleMapping).where(RoleMapping.name.in_(batch)))
    for action, name, _, after in changes:
        if action == "update":
            assert after is not None
            conn.execute(
                sa.update(RoleMapping)
                .where(RoleMapping.name == name)
                .values(**_row_values(after), updated_at=now)
            )
    created = [
        {**_row_values(after), "created_at": now, "updated_at": now}
        for action, _, _, after in changes
        if action == "create" and after is not None
    ]
    for start in range(0, len(created), _BATCH):
        conn.execute(sa.insert(RoleMapping), created[start : start + _BATCH])
    history = [
        {
            "changed_at": now,
            "actor": actor,
            "source": source,
            "action": action,
            "name": name,
            "before": before.to_document() if before is not None else None,
            "after": after.to_document() if after is not None else None,
            "revision": revision,
        }
        for action, name, before, after in changes
    ]
    for start in range(0, len(history), _BATCH):
        conn.execute(sa.insert(MappingChange), history[start : start + _BATCH])


def set_mapping(
    bind: Connection | Session,
    name: str,
    spec: MappingSpec | None,
    *,
    revision: int,
    actor: str,
    source: str,
) -> bool:
    """Put one mapping into the given state (``None``: absent) at ``revision``; True if it changed.

    The building block of :func:`remove_spec` and of reverting Alembic-managed mappings. The
    caller holds the revision lock and bumps the revision.
    """
    conn = _connection(bind)
    current = _stored_one(conn, name)
    if current == spec:
        return False
    action = "create" if current is None else "delete" if spec is None else "update"
    _record_many(
        conn, [(action, name, current, spec)], revision=revision, actor=actor, source=source
    )
    return True


def _stored_one(conn: Connection, name: str) -> MappingSpec | None:
    row = conn.execute(sa.select(*_SPEC_COLUMNS).where(RoleMapping.name == name)).one_or_none()
    return spec_from_row(row) if row is not None else None


def remove_spec(bind: Connection | Session, name: str, *, actor: str, source: str) -> bool:
    """Delete one mapping in the caller's transaction; False if there is none by that name."""
    conn = _connection(bind)
    revision = _lock_revision(conn) + 1
    if not set_mapping(conn, name, None, revision=revision, actor=actor, source=source):
        return False
    _bump(conn, revision)
    return True


def lock_revision(bind: Connection | Session) -> int:
    """The revision lock for multi-step writers (:mod:`sts.mappings.migration`)."""
    return _lock_revision(_connection(bind))


def bump_revision(bind: Connection | Session, revision: int) -> None:
    _bump(_connection(bind), revision)


class Database:
    """An engine plus the mapping operations; safe to share between threads.

    SQLite gets a busy timeout, WAL (concurrent readers while a writer commits), foreign keys and
    real transactions: pysqlite's own ``BEGIN`` handling is switched off and SQLAlchemy's begin
    emits it, so reads inside a transaction share one snapshot and DDL is transactional
    (SQLAlchemy docs, "Serializable isolation / Savepoints / Transactional DDL" for pysqlite).
    """

    def __init__(self, url: str) -> None:
        self.url = make_url(url)
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
        self.engine = sa.create_engine(self.url, **options)
        if self.is_sqlite:
            in_memory = self.url.database in (None, "", ":memory:") or "memory" in str(
                self.url.query.get("mode", "")
            )
            _configure_sqlite(self.engine, wal=not in_memory)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

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
        """Run Alembic upgrades to ``revision`` in one transaction."""
        config = self.alembic_config(version_locations)
        with self.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, revision)

    def downgrade(self, revision: str, *, version_locations: Sequence[str | Path] = ()) -> None:
        """Run Alembic downgrades to ``revision`` (``"base"``: drop all) in one transaction."""
        config = self.alembic_config(version_locations)
        with self.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, revision)

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

    # -- mappings -------------------------------------------------------------------------

    def revision(self) -> int:
        """The mapping revision: one indexed single-row SELECT, cheap enough to poll."""
        with self.engine.connect() as conn:
            return read_revision(conn)

    def load(self) -> tuple[int, list[MappingSpec]]:
        """The revision and every mapping (disabled ones too), read in one consistent snapshot."""
        with self.snapshot() as conn:
            revision = read_revision(conn)
            return revision, list(_stored(conn).values())

    def apply(
        self,
        specs: Iterable[MappingSpec],
        *,
        prune: bool = False,
        dry_run: bool = False,
        actor: str,
        source: str,
    ) -> Diff:
        """:func:`apply_specs` in a transaction of its own."""
        with self.engine.begin() as conn:
            return apply_specs(
                conn, specs, prune=prune, dry_run=dry_run, actor=actor, source=source
            )

    def remove(self, name: str, actor: str, source: str) -> bool:
        """Delete one mapping (with its history row and a revision bump); False if unknown."""
        with self.engine.begin() as conn:
            return remove_spec(conn, name, actor=actor, source=source)


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
