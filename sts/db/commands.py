"""``sts db``, and what every database command shares (docs/reference.md section 6).

Exit codes: 0 success; 1 the operation failed (database unreachable or not migrated); 2 bad
usage or bad configuration (an ``STS_DATABASE_URL`` no installed driver can open included),
reported as one line naming what is wrong, with nothing written.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn, TypeVar

import click
import sqlalchemy as sa
from alembic.util.exc import CommandError

from sts.config import ConfigError, Settings
from sts.db import Database, MigrationRefused, NotMigratedError, driver_reason
from sts.mappings.document import MappingFileError

SOURCE = "cli"
T = TypeVar("T")


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def cli_settings() -> Settings:
    """The configuration from the environment; a bad value is one line and exit 2."""
    try:
        return Settings.from_env()
    except ConfigError as exc:
        fail(str(exc), 2)


@contextmanager
def open_database(*, read_only: bool = False) -> Iterator[Database]:
    """The configured database, answering; exits 2 on bad configuration, 1 if unreachable.

    ``read_only`` (listing, explaining): an SQLite file that does not exist is exit 1, never
    created (SQLite creates a file on first connect; ``sts.db`` in the working directory is
    the default URL).
    """
    settings = cli_settings()
    if read_only:
        _require_existing_sqlite(settings.database_url)
    try:
        database = Database(settings.database_url)
    except ConfigError as exc:
        fail(str(exc), 2)
    try:
        try:
            database.ping()
        except sa.exc.SQLAlchemyError as exc:
            fail(f"database unreachable: {driver_reason(exc)}", 1)
        yield database
    finally:
        database.dispose()


def missing_sqlite_file(url: str) -> str | None:
    """The path of an SQLite database file that does not exist (connecting would create it),
    else None."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    path = parsed.database
    if parsed.get_backend_name() != "sqlite" or not path or path == ":memory:":
        return None
    if path.startswith("file:"):
        return None  # a URI filename (mode=ro and the like) says for itself what may happen
    return None if os.path.exists(path) else path


def _require_existing_sqlite(url: str) -> None:
    path = missing_sqlite_file(url)
    if path is not None:
        where = "" if "STS_DATABASE_URL" in os.environ else " (STS_DATABASE_URL is not set)"
        fail(f"database {path} does not exist{where}: run sts db upgrade to create it", 1)


def guard(action: Callable[[], T]) -> T:
    """Run one database operation; its failure is one line and exit 1, never a stack trace."""
    try:
        return action()
    except NotMigratedError as exc:
        fail(str(exc), 1)
    except MigrationRefused as exc:
        fail(str(exc), 2)
    except sa.exc.SQLAlchemyError as exc:
        fail(f"database error: {driver_reason(exc)}", 1)
    except CommandError as exc:
        fail(f"migration failed: {driver_reason(exc)}", 1)
    except MappingFileError as exc:
        # Only a stored row can fail here (files are parsed before the database is touched).
        fail(f"stored mapping invalid: {exc}", 1)


#: The variable a Job sets to name who changes mappings (``--actor`` wins over it).
ACTOR_VARIABLE = "STS_ACTOR"
MAX_ACTOR_CHARS = 255


def actor(given: str | None = None) -> str:
    """Who makes a change, for ``mapping_changes``: ``--actor``, else ``STS_ACTOR``, else the
    login name, else ``cli``. A given one that is empty, too long or holds control or format
    characters is exit 2."""
    for value, where in ((given, "--actor"), (os.environ.get(ACTOR_VARIABLE), ACTOR_VARIABLE)):
        if value is None:
            continue
        if not value.strip() or len(value) > MAX_ACTOR_CHARS or not value.isprintable():
            fail(f"{where}: must be 1..{MAX_ACTOR_CHARS} printable characters", 2)
        return value.strip()
    return os.environ.get("USER") or SOURCE


def source() -> str:
    """Where a change comes from: ``cli:<host>`` (the host the command ran on)."""
    host = socket.gethostname()
    return f"{SOURCE}:{host}" if host and host.isprintable() else SOURCE


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
    """Apply all pending migrations (zuplo-sts's own, and yours from --versions).

    Reads STS_DATABASE_URL."""
    with open_database() as database:
        before = guard(database.current)
        guard(lambda: database.upgrade("heads", version_locations=versions))
        after = guard(database.current)
    if before == after:
        click.echo(f"database already at {after} (head)")
    else:
        click.echo(f"database upgraded from {before or 'empty'} to {after} (head)")


@db.command("downgrade")
@click.argument("revision")
@_VERSIONS
@click.option(
    "--undo-service-schema",
    is_flag=True,
    help="Also undo zuplo-sts's own revisions: DROPS the audit trail, the signing keys, "
    "the revocations and the mappings.",
)
def db_downgrade(revision: str, versions: tuple[str, ...], undo_service_schema: bool) -> None:
    """Migrate down to REVISION (to undo one of your own mapping revisions).

    A REVISION below zuplo-sts's own head is refused unless --undo-service-schema is given:
    that drops the service's tables and everything in them. Reads STS_DATABASE_URL."""
    with open_database() as database:
        before = guard(database.current)
        guard(
            lambda: database.downgrade(
                revision, version_locations=versions, undo_service_schema=undo_service_schema
            )
        )
        after = guard(database.current)
    click.echo(f"database downgraded from {before or 'empty'} to {after or 'empty'}")


@db.command("current")
def db_current() -> None:
    """Print the database's migration revision.

    Reads STS_DATABASE_URL."""
    if missing_sqlite_file(cli_settings().database_url) is not None:
        # Not created by asking: an SQLite file that does not exist holds no revision yet.
        click.echo("none (not migrated: run sts db upgrade)")
        return
    with open_database() as database:
        current = guard(database.current)
        head = guard(database.head)
    if current is None:
        click.echo("none (not migrated: run sts db upgrade)")
    elif current == head:
        click.echo(f"{current} (head)")
    else:
        click.echo(f"{current} (head is {head}: run sts db upgrade)")
