"""HTTP layer: thin Flask blueprints and the one place errors are rendered."""

from __future__ import annotations

import json
import logging

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from sts.config import Settings
from sts.errors import OAuthError, ServerError
from sts.services import Services

log = logging.getLogger("sts.api")

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


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
    """RFC 6749 section 5.2 error body; the description is fixed text, never caller input."""
    return json_response(error.to_dict(), error.status, error.headers)


def build_app(settings: Settings | None = None, services: Services | None = None) -> Flask:
    from sts import logs
    from sts.api import health, metrics, token

    if services is None:
        settings = settings or Settings.from_env()
        services = Services.build(settings)
    logs.configure(services.settings.log_format)

    app = Flask("sts")
    app.extensions["sts"] = services
    app.register_blueprint(token.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(metrics.bp)

    @app.errorhandler(OAuthError)
    def _oauth_error(error: OAuthError) -> Response:
        return render_error(error)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.code or 0, "invalid_request")
        return json_response(
            {"error": code, "error_description": (error.name or "error").lower()},
            error.code or 400,
        )

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        log.error("unhandled error", extra={"exc_type": type(error).__name__})
        return render_error(ServerError())

    services.start()
    return app


def services_of(app: Flask) -> Services:
    services: Services = app.extensions["sts"]
    return services
