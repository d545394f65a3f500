"""A process forked after the database was used (a pre-forking server's worker) opens its own
connections: a pooled connection of the parent's is never checked out in the child (SQLAlchemy,
"Using Connection Pools with Multiprocessing or os.fork()")."""

from __future__ import annotations

import sqlalchemy as sa

from sts.db import Database
from tests.forking import in_child


def _backend_id(conn: sa.Connection) -> object:
    """What identifies the server session behind ``conn``: PostgreSQL's backend process id,
    or for SQLite the driver's connection object itself."""
    if conn.dialect.name == "postgresql":
        return conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
    return id(conn.connection.dbapi_connection)


def test_a_forked_child_never_uses_the_parents_pooled_connection(database_url: str) -> None:
    database = Database(database_url)
    try:
        with database.engine.connect() as conn:
            parent = _backend_id(conn)
        assert database.engine.pool.checkedin() == 1  # pooled, ready for the next checkout

        def check() -> bool:
            with database.engine.connect() as conn:
                child = _backend_id(conn)
                conn.exec_driver_sql("SELECT 1")
            return child != parent

        assert in_child(check) == 0
        # The parent's own pooled connection still works: the child did not close it.
        with database.engine.connect() as conn:
            assert _backend_id(conn) == parent
            assert conn.exec_driver_sql("SELECT 1").scalar_one() == 1
    finally:
        database.dispose()
