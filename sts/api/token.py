"""``POST /token``: everything HTTP about the token exchange, in one place (docs/reference.md
sections 2 and 10).

- **The body**: read on the worker's event loop within :data:`BODY_TIMEOUT_SECONDS` of the
  headers (:class:`BodyDeadlines`, for every path: :mod:`sts.rsgi`), or from ``wsgi.input``
  under a WSGI server; at most :data:`MAX_BODY_BYTES`.
- **The request**: the form or JSON body into an :class:`sts.exchange.TokenRequest` (strict about
  what the contract names, unknown parameters ignored: RFC 6749 section 3.2).
- **The exchange**: :meth:`sts.exchange.Exchanger.prepare` on the loop, then
  :meth:`~sts.exchange.Exchanger.obtain_async`; only an upstream call (or a key set or mapping
  index still to load) goes to a request thread, carrying the same selection.
- **The answer**: every success and error rendered here (errors by
  :func:`sts.api.error_answer`), the request id set, the exchange counted and the one access
  line written.

Flask serves every other path and never sees ``/token``.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import time
from collections.abc import Coroutine, Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote

from sts.api import JSON_HEADERS, NO_STORE, Answer, error_answer, log_request, request_id_from
from sts.errors import (
    BodyTimeout,
    InvalidRequest,
    MethodNotAllowed,
    OAuthError,
    ServerError,
    UnsupportedGrantType,
)
from sts.exchange import Exchanged, OnThread, Selection, TokenRequest, Unfinished
from sts.metrics import answered
from sts.protocol import (
    ACCESS_TOKEN_TYPE,
    AWS_CREDENTIALS_TOKEN_TYPE,
    ID_TOKEN_TYPE,
    TOKEN_EXCHANGE_GRANT_TYPE,
)

# Re-exported (the "as" form) for modules that still import it from here.
from sts.protocol import SUBJECT_TOKEN_TYPES as SUBJECT_TOKEN_TYPES  # noqa: PLC0414
from sts.providers.base import ID_TOKEN, Credentials
from sts.services import Services

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

log = logging.getLogger("sts.api")

T = TypeVar("T")

PATH = "/token"
MAX_BODY_BYTES = 64 * 1024
#: Seconds a request body may take to arrive after its headers.
BODY_TIMEOUT_SECONDS = 10.0
#: How often the late bodies are looked for: a request is refused at most this much later.
SWEEP_SECONDS = 0.5
MAX_FORM_FIELDS = 64
GRANT_TYPE = TOKEN_EXCHANGE_GRANT_TYPE
ALLOWED_METHODS = "POST, OPTIONS"
# The parameters we act on; any other parameter is ignored, even when repeated.
FIELDS = frozenset(
    {
        "grant_type",
        "subject_token",
        "subject_token_type",
        "audience",
        "resource",
        "scope",
        "requested_token_type",
        "actor_token",
        "actor_token_type",
    }
)
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"

TOO_LARGE = "request body too large"
MALFORMED = "malformed request body"


# -- the body -------------------------------------------------------------------------------------


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
        """The body (:func:`read_body`); :class:`BodyTimeout` when it is late, and
        :class:`InvalidRequest` when it is too large or the connection ends inside it."""
        task = asyncio.current_task()
        loop = self._loop
        if task is None or loop is None:  # not granian's loop (a test's): a timer of its own
            try:
                async with asyncio.timeout(BODY_TIMEOUT_SECONDS):
                    return await read_body(protocol, headers)
            except TimeoutError:
                raise BodyTimeout() from None
        self._reading[task] = loop.time() + BODY_TIMEOUT_SECONDS
        try:
            return await read_body(protocol, headers)
        except asyncio.CancelledError:
            if task not in self._late:
                raise  # cancelled by someone else (the worker stopping)
            self._late.discard(task)
            task.uncancel()
            raise BodyTimeout() from None
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


def _declared_length(declared: str | None) -> int | None:
    """``Content-Length`` as a number (None: not sent); a bad one or one over the limit is
    refused before anything is read."""
    if declared is None or declared == "":
        return None
    try:
        length = int(declared)
    except ValueError:
        raise InvalidRequest(MALFORMED) from None
    if length < 0:
        raise InvalidRequest(MALFORMED)
    if length > MAX_BODY_BYTES:
        raise InvalidRequest(TOO_LARGE)
    return length


async def read_body(protocol: Any, headers: Any) -> bytes:
    """The body from granian's RSGI protocol, never more than ``MAX_BODY_BYTES + 1`` bytes of
    it in memory. No length and no chunked encoding: no body (RFC 9112 section 6.3)."""
    length = _declared_length(headers.get("content-length"))
    try:
        if length is not None:
            # At most the declared length arrives (the HTTP layer stops there): one read.
            body: bytes = await protocol() if length else b""
            if len(body) != length:
                raise InvalidRequest(MALFORMED)
            return body
        if "chunked" not in headers.get("transfer-encoding", "").lower():
            return b""
        chunks: list[bytes] = []
        size = 0
        async for chunk in protocol:
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise InvalidRequest(TOO_LARGE)
        return b"".join(chunks)
    except (OAuthError, asyncio.CancelledError):
        raise
    except Exception:
        # The connection ended inside the body (shorter than declared).
        raise InvalidRequest(MALFORMED) from None


def read_wsgi_body(environ: WSGIEnvironment) -> bytes:
    """The body from a WSGI server's input stream, by the same rules as :func:`read_body`."""
    stream = environ["wsgi.input"]
    length = _declared_length(environ.get("CONTENT_LENGTH"))
    if length is not None:
        body: bytes = stream.read(length) if length else b""
        if len(body) != length:
            raise InvalidRequest(MALFORMED)
        return body
    chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    if not environ.get("wsgi.input_terminated") and not chunked:
        return b""
    # A chunked body is read even when the server does not flag its stream as terminated: the
    # server de-chunks it and ends the stream with the last chunk (PEP 3333).
    body = stream.read(MAX_BODY_BYTES + 1)
    if len(body) > MAX_BODY_BYTES:
        raise InvalidRequest(TOO_LARGE)
    return body


# -- the request ----------------------------------------------------------------------------------


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for name, value in pairs:
        if name in seen and name in FIELDS:
            raise InvalidRequest(f"repeated parameter {name}")
        seen[name] = value
    return seen


def _parse_form(body: bytes) -> dict[str, str]:
    """``application/x-www-form-urlencoded``, read exactly as ``parse_qsl`` reads it with
    ``keep_blank_values`` and strict UTF-8, at most :data:`MAX_FORM_FIELDS` fields (one
    split, and only what is encoded is decoded: a JWT has nothing to decode)."""
    try:
        text = body.decode("ascii")
        if text.count("&") >= MAX_FORM_FIELDS:
            raise ValueError("too many fields")
        pairs = [
            (_form_decode(name), _form_decode(value))
            for name, _, value in (part.partition("=") for part in text.split("&") if part)
        ]
    except ValueError:  # UnicodeDecodeError included
        raise InvalidRequest(MALFORMED) from None
    return _reject_duplicates(pairs)


def _form_decode(text: str) -> str:
    if "%" in text or "+" in text:
        if len(text) <= _MEMO_CHARS:
            return _form_decode_short(text)
        return _unquote_plus(text)
    return text


def _unquote_plus(text: str) -> str:
    return unquote(text.replace("+", " "), encoding="utf-8", errors="strict")


#: Encoded values this short are decoded once: a gateway sends the same ``grant_type`` and
#: ``subject_token_type`` URNs (``urn%3Aietf%3A...``) with every request (docs/benchmarks.md,
#: third pass: 5 us a request).
_MEMO_CHARS = 128
_form_decode_short = functools.lru_cache(maxsize=256)(_unquote_plus)


class _Members(list[tuple[str, Any]]):
    """A JSON object's members in order, so repeated names can be seen."""


def _parse_json(body: bytes) -> dict[str, str]:
    try:
        doc = json.loads(body.decode("utf-8"), object_pairs_hook=_Members)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidRequest(MALFORMED) from None
    if not isinstance(doc, _Members):
        raise InvalidRequest(MALFORMED)
    fields = _reject_duplicates(doc)
    parsed: dict[str, str] = {}
    for name in FIELDS & fields.keys():
        value = fields[name]
        if value is None:
            continue
        if not isinstance(value, str):
            raise InvalidRequest(f"parameter {name} must be a string")
        parsed[name] = value
    return parsed


def media_type(content_type: str) -> str:
    """The media type, refused unless it is one the endpoint takes (parameters ignored)."""
    mimetype = content_type.partition(";")[0].strip().lower()
    if mimetype not in (FORM, JSON):
        raise InvalidRequest("content type must be application/x-www-form-urlencoded or json")
    return mimetype


def parse_token_request(mimetype: str, body: bytes) -> TokenRequest:
    """The body of one media type into a :class:`TokenRequest` (RFC 8693 section 2.1)."""
    fields = _parse_form(body) if mimetype == FORM else _parse_json(body)
    # RFC 6749 section 3.1: a parameter sent without a value is treated as omitted.
    values = {name: fields[name] for name in FIELDS if fields.get(name)}

    grant_type = values.get("grant_type")
    if grant_type is None:
        raise InvalidRequest("missing grant_type")
    if grant_type != GRANT_TYPE:
        raise UnsupportedGrantType()
    subject_token = values.get("subject_token")
    if subject_token is None:
        raise InvalidRequest("missing subject_token")
    subject_token_type = values.get("subject_token_type")
    if subject_token_type is None:
        raise InvalidRequest("missing subject_token_type")
    if subject_token_type not in SUBJECT_TOKEN_TYPES:
        raise InvalidRequest("unsupported subject_token_type")
    if "actor_token" in values or "actor_token_type" in values:
        raise InvalidRequest("actor_token is not supported")
    return TokenRequest(
        subject_token=subject_token,
        audience=values.get("audience"),
        resource=values.get("resource"),
        scope=values.get("scope"),
        requested_token_type=values.get("requested_token_type"),
    )


# -- the answer -----------------------------------------------------------------------------------


def _iso8601(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _document(mapping: str, creds: Credentials) -> dict[str, Any]:
    """RFC 8693 section 2.2.1 response, all but ``expires_in`` (what time changes)."""
    if creds.token_type == ID_TOKEN:
        # A Google-signed ID token (docs/reference.md section 14): no OAuth token type.
        return {
            "access_token": creds.access_token,
            "issued_token_type": ID_TOKEN_TYPE,
            "token_type": "N_A",
            "mapping": mapping,
        }
    if creds.provider == "aws":
        return {
            "access_token": creds.access_token,
            "issued_token_type": AWS_CREDENTIALS_TOKEN_TYPE,
            "token_type": "N_A",
            "mapping": mapping,
            # Exactly the AWS SDK credential_process document.
            "aws_credentials": {
                "Version": 1,
                "AccessKeyId": creds.aws_access_key_id,
                "SecretAccessKey": creds.aws_secret_access_key,
                "SessionToken": creds.access_token,
                "Expiration": _iso8601(creds.expires_at),
            },
        }
    body: dict[str, Any] = {
        "access_token": creds.access_token,
        "issued_token_type": ACCESS_TOKEN_TYPE,
        "token_type": "Bearer",
    }
    if creds.scope:
        body["scope"] = creds.scope
    body["mapping"] = mapping
    return body


def render_exchanged(result: Exchanged, now: float) -> dict[str, Any]:
    """The whole response document; ``expires_in`` is what is left at ``now``."""
    creds = result.credentials
    return {
        **_document(result.selection.mapping.name, creds),
        "expires_in": max(0, int(creds.expires_at - now)),
    }


@functools.lru_cache(maxsize=4096)
def _rendered_head(mapping: str, creds: Credentials) -> str:
    """The JSON text of :func:`_document` without its closing brace: the same credentials are
    handed out for up to an hour, and only ``expires_in`` changes (docs/benchmarks.md)."""
    return json.dumps(_document(mapping, creds), separators=(",", ":"))[:-1]


def answer_body(result: Exchanged, now: float) -> bytes:
    """:func:`render_exchanged` as JSON text."""
    creds = result.credentials
    head = _rendered_head(result.selection.mapping.name, creds)
    return f'{head},"expires_in":{max(0, int(creds.expires_at - now))}}}'.encode()


def on_this_thread(function: Any, *args: Any) -> Coroutine[Any, Any, Any]:
    """:data:`sts.exchange.OnThread` for a caller already on a request thread (WSGI)."""

    async def run() -> Any:
        return function(*args)

    return run()


def run_to_end(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to its end on this thread. Under :func:`on_this_thread` and with
    ``on_loop=False`` nothing in :meth:`TokenEndpoint.answer` suspends: no event loop is
    needed (one per request would cost more than the exchange)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coroutine.close()
    raise RuntimeError("the token endpoint suspended on a WSGI request thread")


class TokenEndpoint:
    """``/token``: :meth:`answer` for an RSGI server (``sts serve``), and a WSGI application
    (:meth:`__call__`) that answers through it on the request thread."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.exchanger = services.exchanger

    async def answer(
        self,
        method: str,
        content_type: str,
        request_id: str | None,
        body: bytes,
        on_thread: OnThread[Any],
        *,
        on_loop: bool = True,
    ) -> Answer:
        """The whole answer to one ``/token`` request whose body was read (headers complete,
        exchange counted, access line written). Only an upstream call, or a key set or the
        mapping index still to load, runs on a thread (``on_thread``)."""
        started = time.perf_counter()
        fields: dict[str, Any] = {}
        selection: Selection | None = None
        try:
            if method != "POST":
                status, headers, content = _other_method(method)
            else:
                mimetype = media_type(content_type)
                parse = functools.partial(parse_token_request, mimetype, body)
                # What a repeat of this request is known by (sts.exchange.Repeats): the two
                # things its parsing depends on.
                digest = (mimetype, hashlib.sha256(body).digest())
                try:
                    selection = self.exchanger.prepare(parse, repeat_as=digest)
                except Unfinished as unfinished:
                    selection = await on_thread(unfinished.finish)
                result = await self.exchanger.obtain_async(selection, on_thread, on_loop=on_loop)
                status, headers, content = 200, list(JSON_HEADERS), answer_body(result, time.time())
                provider = selection.mapping.provider
                cache = "hit" if result.cache_hit else "miss"
                counted, timed = answered("ok", provider, cache)
                counted.inc()
                timed.observe(time.perf_counter() - started)
                fields.update(
                    outcome="ok",
                    mapping=selection.mapping.name,
                    provider=provider,
                    deployment=selection.principal.deployment,
                    cache_hit=result.cache_hit,
                )
        except OAuthError as error:
            # Counted under the selected mapping's provider whenever one was selected, whether
            # the cloud or the service itself refused.
            if selection is not None:
                provider = selection.mapping.provider
            else:
                provider = error.mapping_provider or error.provider or "none"
            counted, timed = answered(error.error, provider, "none")
            counted.inc()
            timed.observe(time.perf_counter() - started)
            fields.update(outcome=error.error, reason=error.description, cause=error.cause)
            status, headers, content = error_answer(error)
        except Exception as exc:
            # A bug or an outside failure no layer below turned into an OAuthError: the
            # traceback is logged (redacted by sts.logs) and the 500 counted like any outcome.
            log.error("unhandled error", exc_info=True)
            counted, timed = answered(ServerError.error, "none", "none")
            counted.inc()
            timed.observe(time.perf_counter() - started)
            fields.update(outcome="server_error", cause=type(exc).__name__)
            status, headers, content = error_answer(ServerError())
        return _sent(request_id, method, PATH, status, headers, content, started, fields)

    def refuse(
        self, method: str, path: str, request_id: str | None, error: OAuthError, started: float
    ) -> Answer:
        """A request (to any path) whose body never arrived whole: the error, the connection
        closed, and the access line like every other request's (a flood of withheld bodies
        shows in the log)."""
        status, headers, content = error_answer(error)
        headers.append(("Connection", "close"))
        fields = {"outcome": error.error, "reason": error.description}
        return _sent(request_id, method, path, status, headers, content, started, fields)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """The WSGI application for ``/token`` (under a WSGI server; ``sts serve`` calls
        :meth:`answer` on its event loop)."""
        started = time.perf_counter()
        method = environ.get("REQUEST_METHOD", "")
        request_id = environ.get("HTTP_X_REQUEST_ID")
        try:
            body = read_wsgi_body(environ) if method == "POST" else b""
        except OAuthError as error:
            answer = self.refuse(method, PATH, request_id, error, started)
        else:
            content_type = environ.get("CONTENT_TYPE", "")
            answer = run_to_end(
                self.answer(method, content_type, request_id, body, on_this_thread, on_loop=False)
            )
        status, headers, content = answer
        start_response(f"{status} {HTTPStatus(status).phrase}", headers)
        # RFC 9110 section 9.3.2: HEAD gets the headers GET would, and no content.
        return [b""] if method == "HEAD" else [content]


def _other_method(method: str) -> Answer:
    """``/token`` asked with a method other than POST: OPTIONS lists the methods (RFC 9110
    section 9.3.7), anything else is 405 with ``Allow`` (section 15.5.6); never stored."""
    if method == "OPTIONS":
        return 200, [*NO_STORE.items(), ("Allow", ALLOWED_METHODS)], b""
    return error_answer(MethodNotAllowed(ALLOWED_METHODS))


def _sent(  # noqa: PLR0917 - one answer's parts
    request_id: str | None,
    method: str,
    path: str,
    status: int,
    headers: list[tuple[str, str]],
    content: bytes,
    started: float,
    fields: dict[str, Any],
) -> Answer:
    """The answer with its length and request id, and its one access line written."""
    request_id = request_id_from(request_id)
    headers.append(("Content-Length", str(len(content))))
    headers.append(("X-Request-Id", request_id))
    log_request(request_id, method, path, status, started, fields)
    return status, headers, content
