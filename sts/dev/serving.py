"""The start/stop plumbing the local emulators and the dev issuer share (:class:`BackgroundServer`:
an HTTP server on loopback, on a daemon thread), and ``sts serve`` as a child process for the
demo and the benchmarks."""

from __future__ import annotations

import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import click
import requests


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


#: What an emulator's request handler returns: status, body, headers.
Reply = tuple[int, bytes, dict[str, str]]


def dispatching_server(
    host: str, port: int, handle: Callable[[str, str, dict[str, str], bytes], Reply]
) -> ThreadingHTTPServer:
    """An HTTP/1.1 server whose every GET and POST is ``handle(method, path, headers, body)``
    (header names in Title-Case, the body read whole by its Content-Length)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = 0
            raw = self.rfile.read(length) if length > 0 else b""
            headers = {name.title(): value for name, value in self.headers.items()}
            status, body, reply_headers = handle(self.command, self.path, headers, raw)
            try:
                self.send_response(status)
                for name, value in reply_headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                # The client gave up (a timeout test); nothing left to tell it.
                self.close_connection = True

        def do_POST(self) -> None:
            self._serve()

        def do_GET(self) -> None:
            self._serve()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


class BackgroundServer:
    """A server of the local emulators: on ``host`` (127.0.0.1 unless told) and ``port`` (0: a
    free one), answering on a daemon thread.

    ``start()`` (or ``with``) binds and serves; ``stop()`` shuts it down and closes its socket
    (again: nothing). :attr:`url` is ``http://host:port`` with the port bound; after ``stop()`` it
    still names that address, where connections are now refused (an outage). A subclass says
    what answers in :meth:`_build`.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._server: socketserver.TCPServer | None = None
        self._thread: threading.Thread | None = None
        self._bound: int | None = None

    def _build(self) -> socketserver.TCPServer:
        """A server bound to ``self.host`` and ``self.port``, not serving yet."""
        raise NotImplementedError

    @property
    def url(self) -> str:
        if self._bound is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return f"http://{self.host}:{self._bound}"

    def start(self) -> Self:
        """Bind and serve (a started server is left as it is)."""
        if self._server is not None:
            return self
        server = self._build()
        ignore_disconnects(server)
        self._server = server
        self._bound = server.server_address[1]
        # A short poll interval: stop() returns in a twentieth of a second, not half of one.
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def sts_serve_process(env: dict[str, str], port: int, log_path: Path) -> Iterator[str]:
    """``sts serve --port PORT --workers 1`` with its output in ``log_path``: yields its URL
    once ``/readyz`` answers 200 (at most 60 s), stops it on the way out."""
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "sts", "serve", "--port", str(port), "--workers", "1"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
                    raise click.ClickException("sts serve exited early:\n" + "\n".join(tail))
                try:
                    if requests.get(url + "/readyz", timeout=1).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    raise click.ClickException("sts serve did not become ready in 60 s")
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
