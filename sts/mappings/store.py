"""The mapping store: one :class:`Database` object shared by the CLI, the service and the tests.

Applying a document (``sts mappings apply``) is a diff against the stored mappings written in the
caller's one transaction: the changed rows, one ``mapping_changes`` history row per change, and a
single bump of ``mapping_revision`` (docs/architecture.md; the revision is what the service's
in-memory index polls). A dry run computes the same diff and writes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from sts.db import Database
from sts.db.models import utcnow
from sts.mappings.document import spec_from_dict
from sts.mappings.models import MappingChange, MappingRevision, RoleMapping
from sts.mappings.spec import MappingSpec


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
                f"{change.path} {show_value(change.before)} -> {show_value(change.after)}"
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


def show_value(value: Any) -> str:
    """A value as the diff and the history print it: one line."""
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
        if key in ("aws", "gcp", "azure") and isinstance(value, dict):
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


def row_values(spec: MappingSpec) -> dict[str, Any]:
    options = spec.target.to_document()
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


SPEC_COLUMNS = (
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
    rows = conn.execute(sa.select(*SPEC_COLUMNS).order_by(RoleMapping.name))
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

    A ``token`` is stored as written, an unset one unset (the service resolves it with its own
    ``STS_BROKER_ISSUER``; reference section 13).
    """
    wanted: dict[str, MappingSpec] = {}
    for spec in specs:
        if spec.name in wanted:
            raise ValueError("duplicate mapping names")
        wanted[spec.name] = spec
    conn = _connection(bind)
    revision = read_revision(conn) if dry_run else _lock_revision(conn)
    diff = Diff(revision=revision, dry_run=dry_run)
    # The stored rows are read in batches and compared as they come: an unchanged mapping
    # costs a comparison of its columns, and only the rows that change are kept (memory in
    # proportion to the change, not to the table). What is left of ``wanted`` is new.
    # On the statement: Connection.execution_options would stream every later statement too.
    rows = conn.execute(sa.select(*SPEC_COLUMNS).execution_options(yield_per=_BATCH))
    for row in rows:
        given = wanted.pop(row.name, None)
        if given is None:
            if prune:
                diff.deleted.append(spec_from_row(row))
            else:
                diff.kept.append(row.name)
            continue
        if _same_as_row(given, row):
            diff.unchanged.append(given.name)
            continue
        current = spec_from_row(row)
        if current == given:
            diff.unchanged.append(given.name)
        else:
            diff.updated.append(Update(current, given, field_changes(current, given)))
    diff.created.extend(sorted(wanted.values(), key=lambda spec: spec.name))
    diff.updated.sort(key=lambda update: update.after.name)
    diff.deleted.sort(key=lambda spec: spec.name)
    diff.unchanged.sort()
    diff.kept.sort()

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


def _same_as_row(spec: MappingSpec, row: sa.Row[Any]) -> bool:
    """Whether the stored row already holds ``spec``: the columns compared as written, the
    provider part as a document (the quick test before a full comparison)."""
    values = row_values(spec)
    return all(getattr(row, key) == values[key] for key in _COMPARED)


_COMPARED = (
    "description",
    "account",
    "project",
    "deployment",
    "environment_type",
    "enabled",
    "provider",
    "options",
)


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
                .values(**row_values(after), updated_at=now)
            )
    created = [after for action, _, _, after in changes if action == "create" and after is not None]
    for start in range(0, len(created), _BATCH):
        rows = [
            {**row_values(spec), "created_at": now, "updated_at": now}
            for spec in created[start : start + _BATCH]
        ]
        conn.execute(sa.insert(RoleMapping), rows)
    # The rows of each statement are built for it alone: never every change's documents at once.
    for start in range(0, len(changes), _BATCH):
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
            for action, name, before, after in changes[start : start + _BATCH]
        ]
        conn.execute(sa.insert(MappingChange), history)


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
    row = conn.execute(sa.select(*SPEC_COLUMNS).where(RoleMapping.name == name)).one_or_none()
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


# -- the mapping operations on a Database (CLI, service, tests) ------------------------------


def revision(database: Database) -> int:
    """The mapping revision: one indexed single-row SELECT, cheap enough to poll."""
    with database.engine.connect() as conn:
        return read_revision(conn)


def load(database: Database) -> tuple[int, list[MappingSpec]]:
    """The revision and every mapping (disabled ones too), read in one consistent snapshot."""
    with database.snapshot() as conn:
        return read_revision(conn), list(_stored(conn).values())


def apply(
    database: Database,
    specs: Iterable[MappingSpec],
    *,
    prune: bool = False,
    dry_run: bool = False,
    actor: str,
    source: str,
) -> Diff:
    """:func:`apply_specs` in a transaction of its own."""
    with database.engine.begin() as conn:
        return apply_specs(
            conn,
            specs,
            prune=prune,
            dry_run=dry_run,
            actor=actor,
            source=source,
        )


def remove(database: Database, name: str, *, actor: str, source: str) -> bool:
    """Delete one mapping (with its history row and a revision bump); False if unknown."""
    with database.engine.begin() as conn:
        return remove_spec(conn, name, actor=actor, source=source)
