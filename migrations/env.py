"""Alembic environment for the zuplo-sts tables.

The database comes from, in order: a connection handed over by the caller
(``config.attributes["connection"]``, as :class:`sts.db.Database` does), the
``sqlalchemy.url`` option, then ``STS_DATABASE_URL`` (default ``sqlite:///sts.db``), so
``alembic upgrade head`` from the repository root and ``sts db upgrade`` reach the same database.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from sts.config import DEFAULT_DATABASE_URL
from sts.db import Database
from sts.db.models import all_tables

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = all_tables()


def _url() -> str:
    return (
        config.get_main_option("sqlalchemy.url")
        or os.environ.get("STS_DATABASE_URL", "").strip()
        or DEFAULT_DATABASE_URL
    )


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    """``alembic upgrade head --sql``: print the SQL instead of running it."""
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    # Database sets up SQLite the way the service uses it (real BEGIN, WAL, busy timeout).
    database = Database(_url())
    try:
        with database.engine.connect() as connection:
            _run(connection)
    finally:
        database.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
