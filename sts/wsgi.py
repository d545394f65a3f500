"""WSGI entry point for production servers: ``sts.wsgi:app``.

Settings come from the environment; the server process validated them before starting workers.
"""

import atexit
import gc
import os

from sts import create_app

app = create_app()

# Everything built so far lives as long as the worker: keep it out of the collector's scans so
# a full collection under load does not walk it (shorter pauses, better tail latency).
gc.collect()
gc.freeze()

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    from prometheus_client import multiprocess

    # Live-mode gauges of a worker that exited must not count any more.
    atexit.register(multiprocess.mark_process_dead, os.getpid())
