"""The server process of ``sts serve`` and what each of its workers does first.

``sts serve`` (:mod:`sts.serve`, the command's side: settings, database, port) replaces itself
with ``python -m sts.workers HOST PORT WORKERS THREADS``: a fresh interpreter that runs granian,
which forks the workers. Each worker imports :mod:`sts.rsgi`, which builds the application.
Nothing here imports click or the application.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from sts import logs
from sts.config import Settings

if TYPE_CHECKING:
    from sts.mappings.watch import MappingsFile

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
    watcher = watch_mappings_file(settings)
    os.register_at_fork(after_in_child=_in_each_worker(_prctl()))
    try:
        server.serve()
    finally:
        if watcher is not None:
            watcher.stop()
    return 0


def watch_mappings_file(settings: Settings) -> MappingsFile | None:
    """With ``STS_MAPPINGS_FILE``: apply the file once, before any worker serves, then look at
    it on a thread of this server process (one per replica, whatever the number of workers, so
    a mistake is logged once). :mod:`sts.mappings.watch`."""
    if settings.mappings_file is None:
        return None
    from sts.db import Database
    from sts.mappings.watch import MappingsFile

    watcher = MappingsFile(settings.mappings_file, Database(settings.database_url))
    watcher.check()
    watcher.start()
    return watcher


def main(argv: list[str]) -> int:
    host, port, workers, threads = argv[:4]
    try:
        return serve_forever(host, int(port), int(workers), int(threads))
    finally:
        if "--owned-metrics-dir" in argv[4:]:
            shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
