"""A local AWS STS endpoint for tests, ``sts demo`` and ``sts dev``: moto's server app behind a
recorder and IAM's web-identity checks.

moto answers ``AssumeRoleWithWebIdentity`` but checks neither the web identity token, nor
``DurationSeconds`` bounds, nor the session name, and it knows no roles: it serves any. So every
request is recorded as an :class:`StsCall` for tests to assert on, faults (an AWS error document,
a delay, a broken body) can be injected ahead of moto, and IAM's checks
(:class:`sts.dev.aws_iam.IamTrust`) come before moto: for every role with ``strict=True`` (the
demo and the sandbox: an account whose only roles are those registered), else for the roles
given a trust policy.

Only moto's WSGI application is used, served over real HTTP on 127.0.0.1; moto's in-process
mocks (``mock_aws``) are never started, so a boto3 client in the same process still talks HTTP.
Never imported by the service path.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from io import BytesIO
from typing import Any
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from sts.dev.aws_iam import IamTrust
from sts.dev.serving import BackgroundServer, Fault, FaultQueue

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


@dataclass(frozen=True)
class StsCall:
    """One request the emulator received, with the AssumeRoleWithWebIdentity fields pulled out."""

    method: str
    path: str
    headers: dict[str, str]
    params: dict[str, str]

    @property
    def action(self) -> str | None:
        return self.params.get("Action")

    @property
    def role_arn(self) -> str | None:
        return self.params.get("RoleArn")

    @property
    def role_session_name(self) -> str | None:
        return self.params.get("RoleSessionName")

    @property
    def web_identity_token(self) -> str | None:
        return self.params.get("WebIdentityToken")

    @property
    def duration_seconds(self) -> int | None:
        raw = self.params.get("DurationSeconds")
        return int(raw) if raw is not None else None

    @property
    def policy(self) -> str | None:
        return self.params.get("Policy")


def error_document(
    code: str, message: str, *, sender: bool = True, request_id: str | None = None
) -> bytes:
    """An AWS Query-protocol error response body, as STS sends it (a random ``RequestId``)."""
    kind = "Sender" if sender else "Receiver"
    return (
        '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
        f"<Error><Type>{kind}</Type><Code>{escape(code)}</Code>"
        f"<Message>{escape(message)}</Message></Error>"
        f"<RequestId>{escape(request_id or secrets.token_hex(16))}</RequestId></ErrorResponse>"
    ).encode()


def _token_audiences(token: str) -> list[str]:
    """The ``aud`` of a compact JWT (RFC 7519 section 4.1.3), unverified; [] if unreadable."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error):
        return []
    aud = claims.get("aud") if isinstance(claims, dict) else None
    if isinstance(aud, str):
        return [aud]
    return [a for a in aud if isinstance(a, str)] if isinstance(aud, list) else []


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class AwsEmulator(BackgroundServer):
    """moto's STS on 127.0.0.1 with a request record and fault knobs; start/stop or ``with``.

    ``requests`` holds every request received. ``fail_next`` makes the next requests answer an
    AWS error instead of reaching moto; ``delay`` holds every answer back that many seconds;
    ``require_audience`` makes a role check the web identity token's ``aud``, as IAM does
    against the OIDC provider's client ID list; ``iam`` (:class:`sts.dev.aws_iam.IamTrust`)
    checks web identity tokens as IAM does, for the roles it is given a trust policy.

    ``strict``: ``iam`` holds the account's only OIDC providers and roles. Every
    ``AssumeRoleWithWebIdentity`` is checked as IAM checks it, and a role it was not given is
    refused (403 ``AccessDenied``) instead of being served by moto. Without it, roles with no
    trust policy in ``iam`` are moto's: any token gets credentials for them.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, strict: bool = False) -> None:
        super().__init__(host, port)
        self.delay = 0.0
        self.requests: list[StsCall] = []
        self._faults = FaultQueue()
        self._audiences: dict[str, frozenset[str]] = {}
        # IAM OIDC providers and role trust policies; see ``strict`` for the roles without one.
        self.iam = IamTrust(strict=strict)
        self._lock = threading.Lock()

    @property
    def endpoint_url(self) -> str:
        return self.url

    def fail_next(
        self,
        status: int,
        code: str = "",
        message: str = "injected fault",
        *,
        times: int = 1,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        sender: bool = True,
        request_id: str | None = None,
    ) -> None:
        """Answer the next ``times`` requests with ``status`` and an AWS error document.

        ``body`` replaces the document (for malformed answers, even with status 200);
        ``request_id`` is the document's ``RequestId`` (random when not given).
        """
        payload = (
            body
            if body is not None
            else error_document(code, message, sender=sender, request_id=request_id)
        )
        self._faults.add(Fault(status, payload, dict(headers or {}), times))

    def require_audience(self, role_arn: str, audiences: Iterable[str] | None) -> None:
        """``AssumeRoleWithWebIdentity`` for ``role_arn`` answers ``InvalidIdentityToken`` unless
        the token's ``aud`` names one of ``audiences`` (None: no check, moto's default).

        moto checks no token at all; IAM compares ``aud`` with the OIDC provider's client IDs.
        The token's signature is not checked here: the service verified it already.
        """
        with self._lock:
            if audiences is None:
                self._audiences.pop(role_arn, None)
            else:
                self._audiences[role_arn] = frozenset(audiences)

    def clear(self) -> None:
        """Forget recorded requests, pending faults and audience rules; reset ``delay``."""
        with self._lock:
            self.requests.clear()
            self._faults.clear()
            self._audiences.clear()
            self.iam.clear()
            self.delay = 0.0

    def _trust_refusal(self, call: StsCall) -> Callable[[StartResponse], Iterable[bytes]] | None:
        """IAM's web-identity checks (:mod:`sts.dev.aws_iam`) for the roles ``iam`` governs."""
        if call.action != "AssumeRoleWithWebIdentity" or not self.iam.governs(call.role_arn):
            return None
        assert call.role_arn is not None
        refusal = self.iam.check(call.role_arn, call.web_identity_token or "")
        if refusal is None:
            return None
        body = error_document(refusal.code, refusal.message)

        def answer(start_response: StartResponse) -> Iterable[bytes]:
            start_response(
                f"{refusal.status} Refused",
                [("Content-Type", "text/xml"), ("Content-Length", str(len(body)))],
            )
            return [body]

        return answer

    def _audience_refused(self, call: StsCall) -> bool:
        with self._lock:
            allowed = self._audiences.get(call.role_arn or "")
        if allowed is None or call.action != "AssumeRoleWithWebIdentity":
            return False
        return allowed.isdisjoint(_token_audiences(call.web_identity_token or ""))

    def _middleware(self, app: WsgiApp) -> WsgiApp:
        def record(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
            headers = {
                key[5:].replace("_", "-").title(): str(value)
                for key, value in environ.items()
                if key.startswith("HTTP_")
            }
            if environ.get("CONTENT_TYPE"):
                headers["Content-Type"] = environ["CONTENT_TYPE"]
            call = StsCall(
                method=environ["REQUEST_METHOD"],
                path=environ.get("PATH_INFO", ""),
                headers=headers,
                params=dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)),
            )
            with self._lock:
                self.requests.append(call)
            if self.delay:
                time.sleep(self.delay)
            fault = self._faults.take()
            if fault is not None:
                start_response(
                    f"{fault.status} Injected",
                    [
                        ("Content-Type", "text/xml"),
                        ("Content-Length", str(len(fault.body))),
                        *fault.headers.items(),
                    ],
                )
                return [fault.body]
            refused = self._trust_refusal(call)
            if refused is not None:
                return refused(start_response)
            if self._audience_refused(call):
                refusal = error_document("InvalidIdentityToken", "Incorrect token audience")
                start_response(
                    "400 Bad Request",
                    [("Content-Type", "text/xml"), ("Content-Length", str(len(refusal)))],
                )
                return [refusal]
            return app(environ, start_response)

        return record

    def _build(self) -> BaseWSGIServer:
        # Imported here so that merely importing this module never loads moto.
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            create_backend_app,
        )

        app = self._middleware(DomainDispatcherApplication(create_backend_app))
        return make_server(self.host, self.port, app, threaded=True, request_handler=_QuietHandler)
