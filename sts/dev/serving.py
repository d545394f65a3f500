"""The start/stop plumbing the local emulators share: a socket server on a daemon thread."""

from __future__ import annotations

import socketserver
import threading
from types import TracebackType
from typing import Self


class BackgroundServer:
    """``start()`` builds the server and calls :meth:`_serve`; ``stop()`` or ``with`` ends it."""

    _thread: threading.Thread | None = None

    def start(self) -> Self:
        raise NotImplementedError

    def _serve(self, server: socketserver.BaseServer) -> None:
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
