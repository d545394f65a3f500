"""``sts db`` and ``sts mappings`` (CONTRACT section 6).

Exit codes: 0 success; 1 the operation failed (database unreachable or not migrated, unknown
mapping name); 2 bad usage, a bad mapping file or bad configuration, reported as one line naming
what is wrong, with nothing written.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn, TypeVar

import click
import sqlalchemy as sa
from alembic.util.exc import CommandError

from sts.config import ConfigError, Settings
from sts.mappings.document import MappingFileError, dump_json, parse_document
from sts.mappings.spec import MappingSpec
from sts.mappings.store import Database, NotMigratedError

SOURCE = "cli"
T = TypeVar("T")


def _exit(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _reason(exc: BaseException) -> str:
    """First line of the driver's message: SQLAlchemy's own text adds SQL and parameters."""
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(cause).__name__


@contextmanager
def _database() -> Iterator[Database]:
    """The configured database, answering; exits 2 on bad configuration, 1 if unreachable."""
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        _exit(str(exc), 2)
    try:
        database = Database(settings.database_url)
    except (sa.exc.ArgumentError, ImportError):
        _exit("STS_DATABASE_URL: unsupported database URL or driver not installed", 2)
    try:
        try:
            database.ping()
        except sa.exc.SQLAlchemyError as exc:
            _exit(f"database unreachable: {_reason(exc)}", 1)
        yield database
    finally:
        database.dispose()


def _guard(action: Callable[[], T]) -> T:
    """Run one database operation; its failure is one line and exit 1, never a stack trace."""
    try:
        return action()
    except NotMigratedError as exc:
        _exit(str(exc), 1)
    except sa.exc.SQLAlchemyError as exc:
        _exit(f"database error: {_reason(exc)}", 1)
    except CommandError as exc:
        _exit(f"migration failed: {_reason(exc)}", 1)
    except MappingFileError as exc:
        # Only a stored row can fail here (files are parsed before the database is touched).
        _exit(f"stored mapping invalid: {exc}", 1)


def _actor() -> str:
    return os.environ.get("USER") or SOURCE


@click.group("db")
def db() -> None:
    """Database schema migrations (Alembic) on STS_DATABASE_URL."""


_VERSIONS = click.option(
    "--versions",
    "versions",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, dir_okay=True),
    help="Extra Alembic versions directory (your own revisions, e.g. mappings); repeatable.",
)


@db.command("upgrade")
@_VERSIONS
def db_upgrade(versions: tuple[str, ...]) -> None:
    """Apply all pending migrations (zuplo-sts's own, and yours from --versions)."""
    with _database() as database:
        before = _guard(database.current)
        _guard(lambda: database.upgrade("heads", version_locations=versions))
        after = _guard(database.current)
    if before == after:
        click.echo(f"database already at {after} (head)")
    else:
        click.echo(f"database upgraded from {before or 'empty'} to {after} (head)")


@db.command("downgrade")
@click.argument("revision")
@_VERSIONS
def db_downgrade(revision: str, versions: tuple[str, ...]) -> None:
    """Migrate down to REVISION (for example to undo one of your own mapping revisions)."""
    with _database() as database:
        before = _guard(database.current)
        _guard(lambda: database.downgrade(revision, version_locations=versions))
        after = _guard(database.current)
    click.echo(f"database downgraded from {before or 'empty'} to {after or 'empty'}")


@db.command("current")
def db_current() -> None:
    """Print the database's migration revision."""
    with _database() as database:
        current = _guard(database.current)
        head = _guard(database.head)
    if current is None:
        click.echo("none (not migrated: run sts db upgrade)")
    elif current == head:
        click.echo(f"{current} (head)")
    else:
        click.echo(f"{current} (head is {head}: run sts db upgrade)")


@click.group("mappings")
def mappings() -> None:
    """Role mappings: apply a file, list, remove."""


def _read(file: str) -> tuple[str, str]:
    """The file's text and the name errors use; exits 2 if it cannot be read."""
    if file == "-":
        raw = sys.stdin.buffer.read()
        source = "<stdin>"
    else:
        source = file
        try:
            with open(file, "rb") as handle:
                raw = handle.read()
        except OSError as exc:
            _exit(f"{file}: cannot read: {exc.strerror or type(exc).__name__}", 2)
    try:
        return raw.decode("utf-8-sig"), source
    except UnicodeDecodeError:
        _exit(f"{source}: not UTF-8 text", 2)


@mappings.command("apply")
@click.argument("file", metavar="FILE")
@click.option("--dry-run", is_flag=True, help="Print the diff; write nothing.")
@click.option("--prune", is_flag=True, help="Delete stored mappings that FILE does not name.")
def mappings_apply(file: str, dry_run: bool, prune: bool) -> None:
    """Make the stored mappings match FILE (YAML or JSON; - for stdin), in one transaction."""
    text, source = _read(file)
    try:
        specs = parse_document(text, source)
    except MappingFileError as exc:
        _exit(str(exc), 2)
    with _database() as database:
        _guard(database.require_current)
        diff = _guard(
            lambda: database.apply(
                specs, prune=prune, dry_run=dry_run, actor=_actor(), source=SOURCE
            )
        )
    click.echo(diff.render())
    if dry_run:
        click.echo("(dry run: nothing written)")


@mappings.command("list")
@click.option("--json", "as_json", is_flag=True, help="The file format, as a JSON array.")
def mappings_list(as_json: bool) -> None:
    """List the stored mappings (disabled ones too)."""
    with _database() as database:
        _guard(database.require_current)
        _, specs = _guard(database.load)
    if as_json:
        click.echo(dump_json(specs))
    elif not specs:
        click.echo("no mappings")
    else:
        click.echo(render_table(specs))


def render_table(specs: list[MappingSpec]) -> str:
    header = ("NAME", "ENABLED", "ACCOUNT", "PROJECT", "DEPLOYMENT", "ENVIRONMENT", "TARGET")
    rows = [header] + [
        (
            spec.name,
            "yes" if spec.enabled else "no",
            spec.account,
            spec.project,
            spec.deployment,
            spec.environment_type,
            f"{spec.provider} {spec.targets[0]}",
        )
        for spec in specs
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header) - 1)]
    return "\n".join(
        "  ".join(
            [*(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)), row[-1]]
        )
        for row in rows
    )


@mappings.command("remove")
@click.argument("name")
def mappings_remove(name: str) -> None:
    """Remove one mapping (exit 1 if there is none by that name)."""
    with _database() as database:
        _guard(database.require_current)
        removed = _guard(lambda: database.remove(name, actor=_actor(), source=SOURCE))
    if not removed:
        _exit(f"no mapping named {name!r}", 1)
    click.echo(f"- delete {name}")
