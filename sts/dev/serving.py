"""The start/stop plumbing the local emulators share: a socket server on a daemon thread."""

from __future__ import annotations

import socketserver
import sys
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self


@dataclass
class Fault:
    """An answer an emulator gives instead of its real one, ``times`` times."""

    status: int
    body: bytes
    headers: dict[str, str]
    times: int
    path: str | None = None  # only requests whose path starts with this; None: any


class FaultQueue:
    """Injected faults, consumed in order by the requests they apply to (thread-safe)."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(self, path: str = "") -> Fault | None:
        with self._lock:
            for index, fault in enumerate(self._faults):
                if fault.path is None or path.startswith(fault.path):
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.pop(index)
                    return fault
        return None


def ignore_disconnects(server: socketserver.BaseServer) -> None:
    """Make ``server`` drop a request whose client went away (reset, closed before reading the
    answer) without printing a traceback; any other failure is still reported."""
    report = server.handle_error

    def handle_error(request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        report(request, client_address)

    server.handle_error = handle_error  # type: ignore[method-assign]


class BackgroundServer:
    """``start()`` builds the server and calls :meth:`_serve`; ``stop()`` or ``with`` ends it."""

    _thread: threading.Thread | None = None

    def start(self) -> Self:
        raise NotImplementedError

    def _serve(self, server: socketserver.BaseServer) -> None:
        ignore_disconnects(server)
        # A short poll interval: stop() returns in a twentieth of a second, not half of one.
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def _running(self) -> socketserver.BaseServer | None:
        raise NotImplementedError

    def _forget(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        server = self._running()
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._thread = None
        self._forget()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
