"""RSGI entry point for granian: ``sts.rsgi:app`` (docs/reference.md section 10).

One request, on the worker's event loop:

1. its body is read (:class:`sts.api.token.BodyDeadlines`: within 10 s of the headers, at most
   64 KiB), so that only complete requests ever reach a thread;
2. exactly ``/token`` goes to :meth:`sts.api.token.TokenEndpoint.answer`, which answers on the
   loop and sends only upstream calls to a request thread (``--threads``); a request waiting
   for another request's upstream call holds no thread;
3. every other path (probes, metrics, the OpenAPI and broker documents, 404s) goes to Flask on
   a pool of its own, so probes never queue behind exchanges.

A keep-alive connection is closed after :data:`KEEPALIVE_REQUESTS` requests or
:data:`KEEPALIVE_SECONDS` seconds (as nginx's ``keepalive_requests`` and ``keepalive_time`` do),
so that clients reconnect and spread over the workers again, a restarted one included.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sts.api import Answer, ServiceApp, error_answer
from sts.api.token import PATH, BodyDeadlines
from sts.errors import OAuthError, ServerError
from sts.workers import THREADS_VARIABLE, die_with_parent

T = TypeVar("T")

#: Threads per worker for Flask's paths (probes, metrics, documents): apart from the request
#: threads, so that no exchange waiting on a cloud delays them.
CONTROL_THREADS = 2
#: A keep-alive connection is closed after this many requests ...
KEEPALIVE_REQUESTS = 1000
#: ... or after this many seconds, whichever comes first.
KEEPALIVE_SECONDS = 20.0
#: Connections tracked at most; past it the table starts again (the bound only gets looser).
KEEPALIVE_TRACKED = 65536

log = logging.getLogger("sts.rsgi")


class _Response:
    """What a WSGI application passed to ``start_response``."""

    __slots__ = ("headers", "status")

    def __init__(self) -> None:
        self.status = 500
        self.headers: list[tuple[str, str]] = []

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: Any = None,  # noqa: ARG002 - PEP 3333 signature
    ) -> Any:
        self.status = int(status.split(" ", 1)[0])
        self.headers = headers
        return None


class KeepAlive:
    """Requests and age of each open connection (by the client's address and port)."""

    def __init__(
        self,
        requests: int = KEEPALIVE_REQUESTS,
        seconds: float = KEEPALIVE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._requests = requests
        self._seconds = seconds
        self._clock = clock
        self._seen: dict[str, list[float]] = {}

    def spent(self, client: str) -> bool:
        """Count one request of ``client``'s connection; True when it should be closed after
        this answer. A new connection from the same address and port starts again (a reused
        port at worst gets its connection closed early)."""
        now = self._clock()
        seen = self._seen.get(client)
        if seen is None:
            if len(self._seen) >= KEEPALIVE_TRACKED:
                self._seen.clear()
            self._seen[client] = [1.0, now]
            return self._requests <= 1
        seen[0] += 1
        if seen[0] >= self._requests or now - seen[1] >= self._seconds:
            del self._seen[client]
            return True
        return False


class RsgiBridge:
    """The service behind granian's RSGI interface (module docstring)."""

    def __init__(self, app: ServiceApp, threads: int) -> None:
        self._flask = app.flask.wsgi_app
        self._token = app.token
        self._services = app.services
        self._threads = threads
        self._requests: ThreadPoolExecutor | None = None
        self._control: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deadlines = BodyDeadlines()
        self._keepalive = KeepAlive()

    # -- the RSGI protocol ----------------------------------------------------------------------

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._requests = ThreadPoolExecutor(self._threads, thread_name_prefix="sts-request")
        self._control = ThreadPoolExecutor(CONTROL_THREADS, thread_name_prefix="sts-control")
        self._deadlines.start(loop)
        # The refreshers (mapping index, key sets, broker keys) start with the worker, not
        # with its first request: that request would wait for the first load.
        self._services.start()

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        for pool in (self._requests, self._control):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=False)

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        if scope.proto != "http":
            return  # no websockets: granian closes the connection
        if self._loop is None:
            self.__rsgi_init__(asyncio.get_running_loop())
        started = time.perf_counter()
        headers = scope.headers
        method = scope.method
        close = self._keepalive.spent(scope.client)
        try:
            body = await self._deadlines.read(protocol, headers)
        except OAuthError as refused:
            status, response_headers, content = self._token.refuse(
                method, scope.path, headers.get("x-request-id"), refused, started
            )
            _send(protocol, status, response_headers, content)
            return
        if scope.path == PATH:
            status, response_headers, content = await self._token.answer(
                method,
                headers.get("content-type", ""),
                headers.get("x-request-id"),
                body,
                self._on_thread,
            )
        else:
            status, response_headers, content = await self._flask_answer(scope, headers, body)
        if close:
            response_headers.append(("Connection", "close"))
        if method == "HEAD":
            content = b""
        _send(protocol, status, response_headers, content)

    async def _on_thread(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` on one of the worker's request threads."""
        assert self._loop is not None
        return await self._loop.run_in_executor(self._requests, function, *args)

    async def _flask_answer(self, scope: Any, headers: Any, body: bytes) -> Answer:
        assert self._loop is not None
        environ = _environ(scope, headers, body)
        try:
            return await self._loop.run_in_executor(self._control, self._call_flask, environ)
        except Exception:
            # Flask answers every error itself; this is a bug below it.
            log.error("unhandled error", exc_info=True)
            return error_answer(ServerError())

    def _call_flask(self, environ: dict[str, Any]) -> Answer:
        response = _Response()
        result: Iterable[bytes] = self._flask(environ, response.start_response)
        try:
            content = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return response.status, list(response.headers), content


def _send(protocol: Any, status: int, headers: list[tuple[str, str]], content: bytes) -> None:
    # A client that went away has nobody left to answer.
    with contextlib.suppress(Exception):
        protocol.response_bytes(status, headers, content)


def _environ(scope: Any, headers: Any, body: bytes) -> dict[str, Any]:
    """PEP 3333 environ for one request, as granian's WSGI interface builds it."""
    server_host, _, server_port = scope.server.rpartition(":")
    client_host, _, client_port = scope.client.rpartition(":")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope.method,
        "SCRIPT_NAME": "",
        # PEP 3333: the path as bytes, decoded as latin-1.
        "PATH_INFO": scope.path.encode("utf-8", "surrogateescape").decode("latin-1"),
        "QUERY_STRING": scope.query_string,
        "SERVER_NAME": server_host,
        "SERVER_PORT": server_port,
        "SERVER_PROTOCOL": f"HTTP/{scope.http_version}",
        "REMOTE_ADDR": client_host,
        "REMOTE_PORT": client_port,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.scheme,
        "wsgi.input": io.BytesIO(body),
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for name, value in headers.items():
        key = name.upper().replace("-", "_")
        if key == "CONTENT_TYPE":
            environ["CONTENT_TYPE"] = value
        elif key == "CONTENT_LENGTH":
            environ["CONTENT_LENGTH"] = str(len(body))
        else:
            key = "HTTP_" + key
            environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


def _build() -> RsgiBridge:
    die_with_parent()
    from sts.wsgi import app as wsgi_app

    return RsgiBridge(wsgi_app, int(os.environ.get(THREADS_VARIABLE, "4")))


def __getattr__(name: str) -> Any:
    """``app``, built when granian (in a worker) first asks for it: importing this module for
    its parts (a test of :class:`KeepAlive`) builds no application and starts no thread."""
    if name == "app":
        built = _build()
        globals()["app"] = built
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
