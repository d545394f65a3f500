"""``sts serve``: granian with several worker processes, RSGI in front of the WSGI app.

granian was chosen over gunicorn by measurement (docs/benchmarks.md). Settings are validated
here, in the parent, so a bad value stops start-up before any worker exists; each worker then
imports :mod:`sts.rsgi` (and so :mod:`sts.wsgi`), which builds the app and starts its
background refreshers. This process never imports them: threads started before granian forks
its workers would leave locks held in the children.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable

import click

from sts import logs
from sts.config import ConfigError, Settings
from sts.db import Database, describe_failure

log = logging.getLogger("sts.serve")

#: Request threads per worker process (``--threads``), passed to the workers in the
#: environment, outside the ``STS_`` namespace of the configuration; read by :mod:`sts.rsgi`.
THREADS_VARIABLE = "_ZUPLO_STS_REQUEST_THREADS"


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` on Linux (looked up before any fork: no loader work in a child)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    return prctl


def die_with_parent(prctl: Callable[..., int] | None = None) -> None:
    """Linux: this worker gets SIGTERM when the server process that forked it dies, even by
    SIGKILL, so no orphan keeps the port with an old configuration. A worker whose parent is
    already gone stops at once."""
    if prctl is None:
        prctl = _prctl()
        if prctl is None:
            return
    parent = os.getppid()
    if prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        log.warning("could not ask to be stopped with the server process")
        return
    if os.getppid() != parent or parent == 1:
        os.kill(os.getpid(), signal.SIGTERM)


def _in_each_worker(prctl: Callable[..., int] | None) -> Callable[[], None]:
    """What a worker does first, in the fork itself (``os.register_at_fork``).

    SIGTERM goes back to its default action: the handler a worker inherits is the server
    process's own, which only flags the server object's copy, so a SIGTERM that reached a
    worker still starting (the server killed meanwhile) was lost and the worker lived on as an
    orphan on the port. granian's worker installs its own handling when it starts serving.
    Then :func:`die_with_parent`, from the first instant rather than once the application is
    imported."""

    def after_fork() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if prctl is not None:
            die_with_parent(prctl)

    return after_fork


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
    """
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
    argv = [sys.executable, "-m", "sts.serve", host, str(port), str(workers), str(threads)]
    if owned:
        argv.append("--owned-metrics-dir")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)  # noqa: S606 - our own interpreter and module
    return 1  # not reached: execv replaces the process or raises


#: The kernel's queue of connections not yet accepted (capped by net.core.somaxconn).
LISTEN_BACKLOG = 4096
#: Connections one worker serves at once. Idle and slow connections cost a few KiB each on the
#: event loop and are closed within 30 s (a silent one) or 10 s after their headers (a withheld
#: body), so a flood of them leaves room for real clients (docs/reference.md section 10).
CONNECTIONS_PER_WORKER = 16384


def serve_forever(host: str, port: int, workers: int, threads: int) -> int:
    """Run granian until it is told to stop (the body of the server process)."""
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces, Loops

    settings = Settings.from_env()
    logs.configure(settings.log_format)
    log.info("starting", extra={"host": host, "port": port, "workers": workers})
    # RSGI: bodies are read on the event loop with a deadline; the WSGI application runs on
    # ``threads`` request threads per worker (sts.rsgi).
    os.environ[THREADS_VARIABLE] = str(threads)
    server = Granian(
        "sts.rsgi:app",
        address=host,
        port=port,
        interface=Interfaces.RSGI,
        # Pinned: granian's "auto" would take rloop or uvloop whenever one happens to be
        # installed; neither measured outside the noise here (docs/benchmarks.md).
        loop=Loops.asyncio,
        http=HTTPModes.http1,
        websockets=False,
        backlog=LISTEN_BACKLOG,
        backpressure=CONNECTIONS_PER_WORKER,
        workers=workers,
        log_access=False,
        log_dictconfig=logs.granian_config(settings.log_format),
        respawn_failed_workers=True,
    )
    os.register_at_fork(after_in_child=_in_each_worker(_prctl()))
    server.serve()
    return 0


def main(argv: list[str]) -> int:
    host, port, workers, threads = argv[:4]
    try:
        return serve_forever(host, int(port), int(workers), int(threads))
    finally:
        if "--owned-metrics-dir" in argv[4:]:
            shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
