"""RSGI entry point for granian: ``sts.rsgi:app`` (docs/reference.md section 10).

Granian's WSGI interface hands a request to a blocking thread as soon as its headers arrive, and
the thread then reads the body: a client that sends ``Content-Length: 60000`` and withholds the
body holds that thread for as long as it likes, and a handful of such clients stall a worker,
``/healthz`` included. Here the body is read on the worker's event loop, where waiting costs
nothing, within :data:`BODY_TIMEOUT_SECONDS` of the headers (else 408 and the connection is
closed), and at most 64 KiB of it (the limit ``POST /token`` enforces). Only a request whose body
is complete reaches a request thread, which runs the WSGI application (:mod:`sts.wsgi`).

A ``POST /token`` that needs no wait (its token verified or its key held, the mapping index
loaded, credentials in this process's cache) is answered on the loop by the same code
(``TokenEndpoint.respond``, same answers, headers and access line): no thread hop, and no
contention with requests that wait on a cloud. Everything else runs on a request thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sts.api import log_request, request_id_from
from sts.api.token import MAX_BODY_BYTES, TokenEndpoint
from sts.serve import THREADS_VARIABLE, die_with_parent

#: Seconds a request body may take to arrive after its headers.
BODY_TIMEOUT_SECONDS = 10.0
#: How often the late bodies are looked for: a request is refused at most this much later.
SWEEP_SECONDS = 0.5

_TIMEOUT_BODY = json.dumps(
    {"error": "invalid_request", "error_description": "request body not received in time"},
    separators=(",", ":"),
).encode()
_TRUNCATED_BODY = json.dumps(
    {"error": "invalid_request", "error_description": "malformed request body"},
    separators=(",", ":"),
).encode()
_CLOSE_HEADERS = [
    ("content-type", "application/json"),
    ("cache-control", "no-store"),
    ("connection", "close"),
]


_ERROR_BODY = json.dumps(
    {"error": "server_error", "error_description": "internal error"}, separators=(",", ":")
).encode()
_ERROR_HEADERS = [("content-type", "application/json"), ("cache-control", "no-store")]

log = logging.getLogger("sts.rsgi")


class _Response:
    """What the WSGI application passed to ``start_response``."""

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


class BodyDeadlines:
    """The requests whose body is being read, and when each must have arrived by.

    One sweep every :data:`SWEEP_SECONDS` cancels the late ones, where ``asyncio.timeout``
    would schedule and cancel a timer per request: almost every body arrives with its
    headers, and the timer cost more than the read.
    """

    def __init__(self) -> None:
        self._reading: dict[asyncio.Task[Any], float] = {}
        self._late: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is None:
            self._loop = loop
            loop.call_later(SWEEP_SECONDS, self._sweep)

    async def read(self, protocol: Any, headers: Any) -> bytes:
        """The body (:func:`_read_body`); TimeoutError when it is late."""
        task = asyncio.current_task()
        loop = self._loop
        if task is None or loop is None:  # not granian's loop (a test's): a timer of its own
            async with asyncio.timeout(BODY_TIMEOUT_SECONDS):
                return await _read_body(protocol, headers)
        self._reading[task] = loop.time() + BODY_TIMEOUT_SECONDS
        try:
            return await _read_body(protocol, headers)
        except asyncio.CancelledError:
            if task not in self._late:
                raise  # cancelled by someone else (the worker stopping)
            self._late.discard(task)
            task.uncancel()
            raise TimeoutError from None
        finally:
            del self._reading[task]

    def _sweep(self) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        for task, deadline in list(self._reading.items()):
            if deadline <= now and task not in self._late:
                self._late.add(task)
                task.cancel()
        loop.call_later(SWEEP_SECONDS, self._sweep)


class RsgiBridge:
    """Runs a WSGI application behind granian's RSGI interface, bodies read on the loop."""

    def __init__(self, wsgi_app: Any, threads: int) -> None:
        self._wsgi = wsgi_app
        # The /token middleware, whose cached answers need no thread (sts.api.token).
        inner = getattr(wsgi_app, "wsgi_app", None)
        self._token: TokenEndpoint | None = inner if isinstance(inner, TokenEndpoint) else None
        self._threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deadlines = BodyDeadlines()

    # -- the RSGI protocol ----------------------------------------------------------------------

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="sts-request")
        self._deadlines.start(loop)
        if self._token is not None:
            # The refreshers (mapping index, key sets, broker keys) start with the worker, not
            # with its first request: that request would wait for the first load.
            self._token.services.start()

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=False)

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        if scope.proto != "http":
            return  # no websockets: granian closes the connection
        headers = scope.headers
        started = time.perf_counter()
        try:
            body = await self._deadlines.read(protocol, headers)
        except TimeoutError:
            _refuse(
                scope, protocol, started, 408, _TIMEOUT_BODY, "request body not received in time"
            )
            return
        except Exception:
            # The connection ended inside the body (shorter than declared): what POST /token
            # answers for a truncated body, and the connection closed.
            _refuse(scope, protocol, started, 400, _TRUNCATED_BODY, "malformed request body")
            return
        environ = _environ(scope, headers, body)
        token = self._token
        if token is not None and scope.method == "POST" and environ["PATH_INFO"] == "/token":
            # The cached path, on the loop: no thread hop, no wait (a miss returns None).
            token.services.start()
            answer = token.respond(environ, may_wait=False, request_body=body)
            if answer is not None:
                with contextlib.suppress(Exception):
                    protocol.response_bytes(*answer)
                return
            environ["wsgi.input"] = io.BytesIO(body)
        loop = self._loop or asyncio.get_running_loop()
        if self._pool is None:
            self.__rsgi_init__(loop)
        assert self._pool is not None
        try:
            status, response_headers, content = await loop.run_in_executor(
                self._pool, self._call, environ
            )
        except Exception:
            # The application answers every error itself; this is a bug below it.
            log.error("unhandled error", exc_info=True)
            status, response_headers, content = 500, list(_ERROR_HEADERS), _ERROR_BODY
        # A client that went away has nobody left to answer.
        with contextlib.suppress(Exception):
            protocol.response_bytes(status, response_headers, content)

    # -- the WSGI side --------------------------------------------------------------------------

    def _call(self, environ: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
        response = _Response()
        result: Iterable[bytes] = self._wsgi(environ, response.start_response)
        try:
            content = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return response.status, response.headers, content


def _refuse(  # noqa: PLR0917 - one refusal's parts
    scope: Any, protocol: Any, started: float, status: int, body: bytes, reason: str
) -> None:
    """Answer a request whose body never arrived whole, close its connection, and log it like
    every other request (so a flood of withheld bodies shows in the access log)."""
    request_id = request_id_from(scope.headers.get("x-request-id"))
    headers = [*_CLOSE_HEADERS, ("x-request-id", request_id)]
    with contextlib.suppress(Exception):  # the client may be gone already
        protocol.response_bytes(status, headers, body)
    fields = {"outcome": "invalid_request", "reason": reason}
    log_request(request_id, scope.method, scope.path, status, started, fields)


async def _read_body(protocol: Any, headers: Any) -> bytes:
    """The body, at most ``MAX_BODY_BYTES + 1`` bytes of it: enough for the application to
    refuse a larger one, never more in memory. A declared length over the limit is not read."""
    declared = headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            return b""  # the application answers "malformed request body"
        if length > MAX_BODY_BYTES:
            return b""
        # At most the declared length arrives (the HTTP layer stops there): one read.
        body: bytes = await protocol() if length else b""
        return body
    if "chunked" not in headers.get("transfer-encoding", "").lower():
        return b""
    chunks: list[bytes] = []
    size = 0
    async for chunk in protocol:
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            break
    return b"".join(chunks)


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
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    declared = headers.get("content-length")
    if declared is None:
        # A chunked body was read to its end (or to the limit): the stream ends there.
        environ["wsgi.input_terminated"] = True
    for name, value in headers.items():
        key = name.upper().replace("-", "_")
        if key == "CONTENT_TYPE":
            environ["CONTENT_TYPE"] = value
        elif key == "CONTENT_LENGTH":
            environ["CONTENT_LENGTH"] = value
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
    its parts (a test of :class:`BodyDeadlines`) builds no application and starts no thread."""
    if name == "app":
        built = _build()
        globals()["app"] = built
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
