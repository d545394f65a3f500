"""Run a check in a forked child process, as a pre-forking server's worker would run."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable


def in_child(check: Callable[[], bool], timeout: float = 20) -> int:
    """Fork; the child runs ``check`` and exits 0 if it held, 1 if not, 2 on an exception.

    The parent polls for the child's exit with a deadline: a child stuck on a lock fails the
    test instead of hanging it.
    """
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, which never returns to pytest
        code = 2
        try:
            code = 0 if check() else 1
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("the forked child hung")
