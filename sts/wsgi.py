"""WSGI entry point for production servers: ``sts.wsgi:app``.

Settings come from the environment; the server process validated them before starting workers.
"""

import atexit
import os

from sts import create_app

app = create_app()

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    from prometheus_client import multiprocess

    # Live-mode gauges of a worker that exited must not count any more.
    atexit.register(multiprocess.mark_process_dead, os.getpid())
