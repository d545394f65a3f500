"""HTTP layer: thin Flask blueprints and the one place errors are rendered."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from sts import logs
from sts.config import Settings
from sts.errors import OAuthError, ServerError
from sts.forking import renew_after_fork
from sts.services import Services

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from sts.api.token import TokenEndpoint

log = logging.getLogger("sts.api")
access_log = logging.getLogger("sts.access")

# A caller's own request id is echoed only if it is short and plain; otherwise we make one.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class _RequestIds:
    """32 hex digits, unique per process and start: a random prefix and a counter. Cheaper
    than uuid4 on every request; made anew in a forked process so workers never collide."""

    def __init__(self) -> None:
        self._after_fork()
        renew_after_fork(self)

    def _after_fork(self) -> None:
        self.prefix = secrets.token_hex(10)
        self.counter = itertools.count(1)

    def new(self) -> str:
        return f"{self.prefix}{next(self.counter):012x}"


new_request_id = _RequestIds().new


def request_id_from(incoming: str | None) -> str:
    """A caller's own ``X-Request-Id`` when it is short and plain, else a new one."""
    return incoming if incoming and REQUEST_ID.fullmatch(incoming) else new_request_id()


def log_request(  # noqa: PLR0917 - the fields of one log line
    request_id: str, method: str, path: str, status: int, started: float, fields: dict[str, Any]
) -> None:
    """The one access log line of a request; probes that succeed are logged at DEBUG only."""
    level = logging.DEBUG if path in QUIET_PATHS and status == 200 else logging.INFO
    if access_log.isEnabledFor(level):
        logs.write_line(
            access_log,
            level,
            "request",
            {
                "request_id": request_id,
                "method": method,
                "path": path,
                "status": status,
                "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                # Which worker process answered: several share one port under sts serve.
                "pid": os.getpid(),
                **fields,
            },
        )


NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
JSON_HEADERS = [("Content-Type", "application/json"), *NO_STORE.items()]

# An answer as the WSGI layer sends it: status, headers, body.
Answer = tuple[int, list[tuple[str, str]], bytes]


def error_answer(error: OAuthError) -> Answer:
    """RFC 6749 section 5.2 error body; the description is fixed text, never caller input.

    The one renderer of OAuth errors, for the WSGI fast path and Flask alike.
    """
    body = json.dumps(error.to_dict(), separators=(",", ":")).encode()
    return error.status, [*JSON_HEADERS, *error.headers.items()], body


def json_response(
    body: object, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    response = Response(
        json.dumps(body, separators=(",", ":")), status=status, mimetype="application/json"
    )
    response.headers.update(NO_STORE)
    if headers:
        response.headers.update(headers)
    return response


def render_error(error: OAuthError) -> Response:
    """:func:`error_answer` as a Flask response."""
    status, headers, body = error_answer(error)
    return Response(body, status=status, headers=headers)


class ServiceApp:
    """The HTTP service as one WSGI application: exactly ``/token`` goes to the token endpoint
    (:mod:`sts.api.token`), every other path to Flask. ``sts serve`` takes the two apart
    (:mod:`sts.rsgi`); a WSGI server calls this."""

    def __init__(self, flask: Flask, token: TokenEndpoint, services: Services) -> None:
        self.flask = flask
        self.token = token
        self.services = services
        self.extensions = flask.extensions

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        # A WSGI server that forks after building the app starts each worker's refreshers here,
        # on its first request (cheap once started).
        self.services.start()
        if environ.get("PATH_INFO") == "/token":
            return self.token(environ, start_response)
        return self.flask.wsgi_app(environ, start_response)

    def routes(self) -> set[tuple[str, str]]:
        """Every ``(path, method)`` served, in werkzeug's rule syntax."""
        served = {
            (rule.rule, method)
            for rule in self.flask.url_map.iter_rules()
            if rule.endpoint != "static"
            for method in rule.methods or ()
        }
        return served | {("/token", "POST"), ("/token", "OPTIONS")}


def build_app(settings: Settings | None = None, services: Services | None = None) -> ServiceApp:
    from sts.api import broker, health, metrics, openapi
    from sts.api.token import TokenEndpoint

    if services is None:
        settings = settings or Settings.from_env()
        services = Services.build(settings)
    logs.configure(services.settings.log_format)

    app = Flask("sts")
    app.extensions["sts"] = services
    # /token is not Flask's (ServiceApp): no rule names it, so werkzeug's slash merging can
    # never route "//token" to it.
    app.register_blueprint(health.bp)
    app.register_blueprint(broker.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(openapi.bp)

    @app.before_request
    def _begin() -> None:
        g.started = time.perf_counter()
        g.request_id = request_id_from(request.headers.get("X-Request-Id"))
        g.log_fields = {}

    @app.after_request
    def _finish(response: Response) -> Response:
        request_id = g.get("request_id") or new_request_id()
        response.headers["X-Request-Id"] = request_id
        started = g.get("started", time.perf_counter())
        fields = g.get("log_fields", {})
        # The path as sent ("//token" included): PEP 3333's latin-1 form back to its text.
        sent = request.environ.get("PATH_INFO", "")
        path = sent.encode("latin-1").decode("utf-8", "surrogateescape")
        log_request(request_id, request.method, path, response.status_code, started, fields)
        return response

    @app.errorhandler(OAuthError)
    def _oauth_error(error: OAuthError) -> Response:
        return render_error(error)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.code or 0, "invalid_request")
        # Keep werkzeug's own headers but its HTML type: a 405 must carry Allow (RFC 9110 15.5.6).
        kept = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
        return json_response(
            {"error": code, "error_description": (error.name or "error").lower()},
            error.code or 400,
            kept,
        )

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        log.error("unhandled error", exc_info=error)
        fields = g.get("log_fields")
        if fields is not None:
            fields.update(outcome="server_error", cause=type(error).__name__)
        return render_error(ServerError())

    # No refresher starts here: the process that builds the app may fork its workers next
    # (gunicorn --preload), and a thread running at a fork can leave a lock held in the child
    # for ever. Each serving process starts its own: sts.rsgi when its worker starts, a WSGI
    # server on the first request (ServiceApp.__call__).
    return ServiceApp(app, TokenEndpoint(services), services)


def services_of(app: Flask | ServiceApp) -> Services:
    services: Services = app.extensions["sts"]
    return services
