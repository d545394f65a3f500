"""``POST /token``: the RFC 8693 token exchange endpoint (docs/reference.md section 2).

Parses the form or JSON body into an :class:`sts.exchange.TokenRequest`, hands it to the
exchanger and renders the RFC 8693 section 2.2.1 response. Parsing is strict about what the
contract names and ignores unknown parameters (RFC 6749 section 3.2).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections.abc import Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from sts.api import (
    JSON_HEADERS,
    NO_STORE,
    Answer,
    error_answer,
    log_request,
    request_id_from,
)
from sts.errors import InvalidRequest, OAuthError, ServerError, UnsupportedGrantType
from sts.exchange import Exchanged, TokenRequest
from sts.metrics import EXCHANGES, answered
from sts.protocol import ACCESS_TOKEN_TYPE, AWS_CREDENTIALS_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT_TYPE

# Re-exported (the "as" form) for modules that still import it from here.
from sts.protocol import SUBJECT_TOKEN_TYPES as SUBJECT_TOKEN_TYPES  # noqa: PLC0414
from sts.providers.base import Credentials
from sts.services import Services

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger("sts.api")

MAX_BODY_BYTES = 64 * 1024
MAX_FORM_FIELDS = 64
GRANT_TYPE = TOKEN_EXCHANGE_GRANT_TYPE
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


def _content_length(environ: WSGIEnvironment) -> int | None:
    raw = environ.get("CONTENT_LENGTH")
    if not raw:
        return None
    try:
        length = int(raw)
    except ValueError:
        raise InvalidRequest("malformed request body") from None
    if length < 0:
        raise InvalidRequest("malformed request body")
    return length


def _read_body(environ: WSGIEnvironment) -> bytes:
    """The request body, at most 64 KiB, read straight from the server's input stream."""
    stream = environ["wsgi.input"]
    length = _content_length(environ)
    if length is not None:
        if length > MAX_BODY_BYTES:
            raise InvalidRequest("request body too large")
        body: bytes = stream.read(length) if length else b""
        if len(body) != length:
            raise InvalidRequest("malformed request body")
        return body
    chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    if not environ.get("wsgi.input_terminated") and not chunked:
        # No length and nothing says a body follows (RFC 9112 section 6.3): no body. A chunked
        # body is read even when the server does not flag its stream as terminated: the
        # server de-chunks it and ends the stream with the last chunk (PEP 3333).
        return b""
    body = stream.read(MAX_BODY_BYTES + 1)
    if len(body) > MAX_BODY_BYTES:
        raise InvalidRequest("request body too large")
    return body


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
        raise InvalidRequest("malformed request body") from None
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
#: ``subject_token_type`` URNs (``urn%3Aietf%3A...``) with every request.
_MEMO_CHARS = 128
_form_decode_short = functools.lru_cache(maxsize=256)(_unquote_plus)


class _Members(list[tuple[str, Any]]):
    """A JSON object's members in order, so repeated names can be seen."""


def _parse_json(body: bytes) -> dict[str, str]:
    try:
        doc = json.loads(body.decode("utf-8"), object_pairs_hook=_Members)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidRequest("malformed request body") from None
    if not isinstance(doc, _Members):
        raise InvalidRequest("malformed request body")
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


def parse_token_request(environ: WSGIEnvironment) -> TokenRequest:
    """Validate the HTTP request into a :class:`TokenRequest` (RFC 8693 section 2.1)."""
    mimetype = environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
    if mimetype not in (FORM, JSON):
        raise InvalidRequest("content type must be application/x-www-form-urlencoded or json")
    body = _read_body(environ)
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


def _iso8601(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def render_exchanged(result: Exchanged, now: float) -> dict[str, Any]:
    """RFC 8693 section 2.2.1 response; ``expires_in`` is what is left at ``now``."""
    creds = result.credentials
    expires_in = max(0, int(creds.expires_at - now))
    if creds.provider == "aws":
        return {
            "access_token": creds.access_token,
            "issued_token_type": AWS_CREDENTIALS_TOKEN_TYPE,
            "token_type": "N_A",
            "expires_in": expires_in,
            "mapping": result.mapping.name,
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
        "expires_in": expires_in,
    }
    if creds.scope:
        body["scope"] = creds.scope
    body["mapping"] = result.mapping.name
    return body


class _BodyCache:
    """Rendered response bodies split around ``expires_in``: a repeat answer is one string join.

    Keyed by mapping name and the (immutable, hashable) credentials; bounded by clearing.
    """

    _MARK = -7_777_777

    def __init__(self, max_entries: int = 10_000) -> None:
        self._parts: dict[tuple[str, Credentials], tuple[str, str]] = {}
        self._max = max_entries

    def render(self, result: Exchanged, now: float) -> str:
        key = (result.mapping.name, result.credentials)
        parts = self._parts.get(key)
        if parts is None:
            doc = render_exchanged(result, now)
            doc["expires_in"] = self._MARK
            head, _, tail = json.dumps(doc, separators=(",", ":")).partition(str(self._MARK))
            parts = (head, tail)
            if len(self._parts) >= self._max:
                self._parts.clear()
            self._parts[key] = parts
        expires_in = max(0, int(result.credentials.expires_at - now))
        return f"{parts[0]}{expires_in}{parts[1]}"


_bodies = _BodyCache()


def request_digest(environ: WSGIEnvironment, body: bytes | None) -> tuple[str, bytes] | None:
    """What a repeat of this request is known by (:class:`sts.exchange.Repeats`): its content
    type and the SHA-256 of its body, the two things its parsing depends on. None unless the
    server read the body whole, as long as declared (``body``)."""
    if body is None or environ.get("CONTENT_LENGTH") != str(len(body)):
        return None
    return environ.get("CONTENT_TYPE", ""), hashlib.sha256(body).digest()


def token_answer(
    services: Services,
    environ: WSGIEnvironment,
    fields: dict[str, Any],
    *,
    may_wait: bool = True,
    request_body: bytes | None = None,
) -> Answer | None:
    """``POST /token``: RFC 8693 section 2.1 request in, section 2.2.1 response out.

    Plain WSGI (no Flask objects): the hot path of every gateway request. ``fields`` collects
    what the access log line says about the outcome. With ``may_wait`` false (the event loop,
    :mod:`sts.rsgi`) only what needs no wait is answered; None means "answer it on a thread".
    There a request whose body the server read (``request_body``), answered before, is
    answered again from what was made of it then (:meth:`sts.exchange.Exchanger.repeat`).
    """
    started = time.perf_counter()
    exchanger = services.exchanger
    try:
        if may_wait:
            result = exchanger.exchange(parse_token_request(environ))
        else:
            digest = request_digest(environ, request_body)
            cached = None if digest is None else exchanger.repeat(digest)
            if cached is None:
                request = parse_token_request(environ)
                cached = exchanger.exchange_cached(request, repeat_as=digest)
                if cached is None:
                    return None
            result = cached
    except OAuthError as error:
        EXCHANGES.labels(error.error, "none", "none").inc()
        fields.update(outcome=error.error, reason=error.description, cause=error.cause)
        return error_answer(error)
    body = _bodies.render(result, time.time()).encode()
    cache = "hit" if result.cache_hit else "miss"
    provider = result.mapping.provider
    counted, timed = answered("ok", provider, cache)
    counted.inc()
    timed.observe(time.perf_counter() - started)
    fields.update(
        outcome="ok",
        mapping=result.mapping.name,
        provider=provider,
        deployment=result.principal.deployment,
        cache_hit=result.cache_hit,
    )
    return 200, list(JSON_HEADERS), body


ALLOWED_METHODS = "POST, OPTIONS"


def other_method_answer(method: str) -> Answer:
    """``/token`` asked with a method other than POST: OPTIONS lists the methods (RFC 9110
    section 9.3.7), anything else is 405 with ``Allow`` (section 15.5.6); never stored."""
    allow = ("Allow", ALLOWED_METHODS)
    if method == "OPTIONS":
        return 200, [*NO_STORE.items(), allow], b""
    body = json.dumps(
        {"error": "method_not_allowed", "error_description": "method not allowed"},
        separators=(",", ":"),
    ).encode()
    return 405, [*JSON_HEADERS, allow], body


class TokenEndpoint:
    """WSGI middleware that answers every request for ``/token`` itself (the only path to it:
    Flask has no view for it) and passes everything else on.

    Flask's request context, hooks and response objects cost more than the whole exchange on
    the cached path; this does the same work (request id, one access log line, the answer)
    with the environ alone.
    """

    def __init__(self, app: WSGIApplication, services: Services) -> None:
        self.app = app
        self.services = services

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        # A process forked after the app was built starts its own refreshers here.
        self.services.start()
        if environ.get("PATH_INFO") != "/token":
            return self.app(environ, start_response)
        answer = self.respond(environ)
        assert answer is not None
        status, headers, body = answer
        start_response(f"{status} {HTTPStatus(status).phrase}", headers)
        # RFC 9110 section 9.3.2: HEAD gets the headers GET would, and no content.
        return [b""] if environ.get("REQUEST_METHOD") == "HEAD" else [body]

    def respond(
        self,
        environ: WSGIEnvironment,
        *,
        may_wait: bool = True,
        request_body: bytes | None = None,
    ) -> Answer | None:
        """The whole answer to one ``/token`` request (headers complete, access line logged).

        With ``may_wait`` false, a ``POST`` that would wait (a cache miss, a key set to fetch)
        is not answered: None, and nothing logged or counted (:mod:`sts.rsgi` then runs the
        request on a thread). ``request_body``: the body as the server read it (the same bytes
        as ``wsgi.input``), by which a repeated request is known.
        """
        started = time.perf_counter()
        method = environ.get("REQUEST_METHOD", "")
        fields: dict[str, Any] = {}
        try:
            if method == "POST":
                answer = token_answer(
                    self.services, environ, fields, may_wait=may_wait, request_body=request_body
                )
                if answer is None:
                    return None
                status, headers, body = answer
            else:
                status, headers, body = other_method_answer(method)
        except Exception as exc:
            # A bug or an outside failure no layer below turned into an OAuthError: the
            # traceback is logged (redacted by sts.logs) and the 500 counted like any outcome.
            log.error("unhandled error", exc_info=True)
            EXCHANGES.labels(ServerError.error, "none", "none").inc()
            fields.update(outcome="server_error", cause=type(exc).__name__)
            status, headers, body = error_answer(ServerError())
        request_id = request_id_from(environ.get("HTTP_X_REQUEST_ID"))
        headers.append(("Content-Length", str(len(body))))
        headers.append(("X-Request-Id", request_id))
        log_request(request_id, method, "/token", status, started, fields)
        return status, headers, body
