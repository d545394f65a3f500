"""``sts serve``, the command's side: settings, the database, the broker's keys and the port
are checked here, so a bad value stops start-up before any worker exists; then this process
becomes the server process (:mod:`sts.workers`: granian, which forks the workers, each of
which imports :mod:`sts.rsgi`). granian was chosen over gunicorn by measurement
(docs/benchmarks.md). This process never builds the application: threads started before
granian forks its workers would leave locks held in the children.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
import tempfile

import click

from sts import logs
from sts.config import ConfigError, Settings
from sts.db import Database, describe_failure

log = logging.getLogger("sts.serve")


def prepare_database(settings: Settings) -> None:
    """Migrate an SQLite database on first start; other databases are migrated by operators,
    and one that is not (or cannot be reached) is named in a warning."""
    database = Database(settings.database_url)
    try:
        if database.url.get_backend_name() == "sqlite":
            database.upgrade()
            return
        try:
            database.require_current()
        except Exception as exc:
            # The server starts anyway (a migration Job may be on its way); /readyz says the
            # same until the database is usable.
            log.warning("%s (/readyz answers 503 until then)", describe_failure(exc))
    finally:
        database.dispose()


def check_broker(settings: Settings) -> int:
    """Open the broker's keys once, before any worker exists; 0, or the exit code and one line.

    A key-encryption key that cannot open the stored keys, or an unusable KMS key, is bad
    configuration (exit 2, naming the variable); a damaged stored key is exit 1. A database or
    KMS that does not answer is not checked here: the workers retry, and ``/readyz`` says why.
    """
    from sts.broker.keys import StoredKeyError
    from sts.broker.service import check_at_start_up

    try:
        check_at_start_up(settings)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    except StoredKeyError as exc:
        click.echo(f"error: {exc}", err=True)
        return 1
    except Exception as exc:
        log.warning("broker keys not checked at start-up: %s", type(exc).__name__)
    return 0


def port_taken(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (another server has it), or None.

    granian listens with ``SO_REUSEPORT``, so a second server on the same port would start and
    the kernel would share the connections between two configurations. A plain bind here
    (``SO_REUSEADDR`` only, so connections of a previous run in TIME_WAIT do not count) fails
    while any other socket listens there.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "the port is in use (is another sts serve running?)"
            return exc.strerror or type(exc).__name__
    return None


def metrics_directory() -> str:
    """Where worker processes write their metrics; must be set before prometheus_client loads.

    An operator's ``PROMETHEUS_MULTIPROC_DIR`` is used (and emptied: it holds the previous
    run's values); otherwise a fresh temporary directory.
    """
    configured = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if configured:
        os.makedirs(configured, exist_ok=True)
        for name in os.listdir(configured):
            if name.endswith(".db"):
                os.unlink(os.path.join(configured, name))
        return configured
    directory = tempfile.mkdtemp(prefix="sts-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    return directory


def run(settings: Settings, *, host: str, port: int, workers: int, threads: int) -> int:
    """Prepare the database, then replace this process with a clean server process.

    The CLI process has imported much of the package; metrics must be created only after
    ``PROMETHEUS_MULTIPROC_DIR`` is set, so the server starts from a fresh interpreter (same
    PID, so signals from a supervisor reach it directly).

    The configuration is checked whole first (the broker's key store included): a bad value is
    one line and exit 2 before the database is touched, with no warning about it before.
    """
    try:
        settings.require_serving()
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    logs.configure(settings.log_format)
    try:
        prepare_database(settings)
    except Exception as exc:
        click.echo(f"error: database: {type(exc).__name__}: cannot prepare the database", err=True)
        return 1
    if settings.broker_issuer is not None:
        code = check_broker(settings)
        if code:
            return code
    taken = port_taken(host, port)
    if taken is not None:
        click.echo(f"error: cannot listen on {host}:{port}: {taken}", err=True)
        return 1
    owned = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    metrics_directory()
    argv = [sys.executable, "-m", "sts.workers", host, str(port), str(workers), str(threads)]
    if owned:
        argv.append("--owned-metrics-dir")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)  # noqa: S606 - our own interpreter and module
    return 1  # not reached: execv replaces the process or raises
