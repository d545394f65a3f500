"""``sts serve``: granian in WSGI mode with several worker processes.

granian was chosen over gunicorn by measurement (docs/benchmarks.md). Settings are validated
here, in the parent, so a bad value stops start-up before any worker exists; each worker then
imports :mod:`sts.wsgi`, which builds the app and starts its background refreshers.
"""

from __future__ import annotations

import logging

import click

from sts import logs
from sts.config import Settings
from sts.mappings.store import Database

log = logging.getLogger("sts.serve")


def prepare_database(settings: Settings) -> None:
    """Migrate an SQLite database on first start; other databases are migrated by operators."""
    database = Database(settings.database_url)
    try:
        if database.url.get_backend_name() == "sqlite":
            database.upgrade()
    finally:
        database.dispose()


def run(settings: Settings, *, host: str, port: int, workers: int, threads: int) -> int:
    from granian import Granian
    from granian.constants import Interfaces

    logs.configure(settings.log_format)
    try:
        prepare_database(settings)
    except Exception as exc:
        click.echo(f"error: database: {type(exc).__name__}: cannot prepare the database", err=True)
        return 1
    log.info("starting", extra={"host": host, "port": port, "workers": workers})
    server = Granian(
        "sts.wsgi:app",
        address=host,
        port=port,
        interface=Interfaces.WSGI,
        workers=workers,
        blocking_threads=threads,
        log_access=False,
        respawn_failed_workers=True,
    )
    server.serve()
    return 0
