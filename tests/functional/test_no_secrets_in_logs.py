"""No token, credential, secret key or session token in a log line or an error body.

One run drives the service through everything the suite exercises: AWS and GCP exchanges and
their cached repeats, refusals, upstream errors and upstreams that echo the token back, invalid
tokens, malformed bodies, a database outage (so the audit event falls back to the log) and the
Redis tier with its encryption key, on SQLite and on PostgreSQL (only that case needs the
PostgreSQL server). Every log record is captured, at the levels the service configures
(``sts.logs.configure``), on the ``sts`` logger (which does not propagate) and on the root logger
(werkzeug's access log, libraries); then the text is searched for every secret.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from sqlalchemy.engine import make_url

from sts.dev.aws_emulator import AwsEmulator
from sts.dev.gcp_emulator import GcpEmulator
from sts.dev.issuer import DevIssuer, SigningKey
from sts.logs import JsonFormatter, TextFormatter
from tests.conftest import AUDIENCE
from tests.functional.conftest import GRANT, ID_TOKEN, Stack, seed
from tests.functional.serving import serve_env, sts_serve
from tests.functional.test_faults_database import TcpProxy, through

IAM = "/v1/projects/"
MIN_NEEDLE = 16
"""Shorter strings are not searched for: they could occur in a log line by chance."""
WINDOW = 24
"""Longer secrets are searched for by every run of this many characters, so an echo of part of
a secret (an upstream message cut short, a truncated log cause) is found too."""


def encodings(secret: str) -> set[str]:
    """The secret as it is and hex-encoded: a secret logged as hex (the form of the audit
    event's digest) must be found too, and a plain search for it would never match hex."""
    return {secret, secret.encode().hex()}


def leaked(needles: set[str], text: str) -> list[str]:
    """The needles of which ``text`` holds the whole or any :data:`WINDOW` characters."""
    windows = {text[i : i + WINDOW] for i in range(len(text) - WINDOW + 1)}
    found = []
    for needle in needles:
        if needle in text or any(
            needle[i : i + WINDOW] in windows for i in range(len(needle) - WINDOW + 1)
        ):
            found.append(needle[:WINDOW] + "...")
    return sorted(found)


class Capture(logging.Handler):
    """Keeps every record as the service's JSON and text lines, plus every attribute's repr."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.lines: list[tuple[str, str]] = []
        self._guard = threading.Lock()
        self._formats = (JsonFormatter(), TextFormatter(), logging.Formatter())

    def emit(self, record: logging.LogRecord) -> None:
        texts = [formatter.format(record) for formatter in self._formats]
        texts.append(repr(record.__dict__))
        with self._guard:
            self.lines.append((record.name, "\n".join(texts)))

    def text(self) -> str:
        with self._guard:
            return "\n".join(text for _, text in self.lines)

    def names(self) -> set[str]:
        with self._guard:
            return {name for name, _ in self.lines}


@contextmanager
def capturing() -> Iterator[Capture]:
    capture = Capture()
    loggers = [logging.getLogger(), logging.getLogger("sts")]
    for logger in loggers:
        logger.addHandler(capture)
    try:
        yield capture
    finally:
        for logger in loggers:
            logger.removeHandler(capture)


class Run:
    """Sends requests and remembers every secret it sent or received, and every error body."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.secrets: list[str] = []
        self.error_bodies: list[str] = []

    def sent(self, token: str) -> str:
        self.secrets.append(token)
        # The payload and the signature are what make a token; each alone must not leak either.
        self.secrets.extend(token.split(".")[1:])
        return token

    def check(self, response: requests.Response, status: int) -> requests.Response:
        assert response.status_code == status, response.text
        if status == 200:
            body = response.json()
            self.secrets.append(body["access_token"])
            creds = body.get("aws_credentials")
            if creds is not None:
                self.secrets += [creds["AccessKeyId"], creds["SecretAccessKey"]]
        else:
            self.error_bodies.append(response.text)
        return response

    def post(self, token: str, status: int, **fields: str) -> requests.Response:
        return self.check(self.stack.post(self.sent(token), **fields), status)

    def raw(self, token: str, body: str, content_type: str, status: int = 400) -> None:
        self.sent(token)
        self.check(self.stack.raw(body, content_type), status)

    def token(self, **claims: Any) -> str:
        return self.stack.token(**claims)


def exchanges(run: Run) -> None:
    """The suite's exchanges, happy and not."""
    stack = run.stack
    gcp_claims = {"account": "gcp-account", "project": "analytics"}

    # Happy paths, each twice (the repeat is served from the caches).
    for _ in range(2):
        aws_token = run.token(deployment="logs-aws")
        run.post(aws_token, 200)
        run.post(aws_token, 200)
    gcp_token = run.token(deployment="logs-gcp", **gcp_claims)
    run.post(gcp_token, 200)
    run.post(gcp_token, 200, scope="https://www.googleapis.com/auth/bigquery")
    run.post(run.token(account="gcp-account", project="federated", deployment="logs-wif"), 200)
    json_token = run.sent(run.token(deployment="logs-json"))
    body = {"grant_type": GRANT, "subject_token": json_token, "subject_token_type": ID_TOKEN}
    run.check(stack.raw(json.dumps(body), "application/json; charset=UTF-8"), 200)

    # Refusals by the service itself.
    run.post(run.token(account="nobody", deployment="logs-unbound"), 400)
    run.post(run.token(deployment="logs-target"), 400, audience="no-such-mapping")
    run.post(run.token(deployment="logs-scope"), 400, scope="https://example.test/scope")
    run.post(run.token(deployment="logs-rtt"), 400, requested_token_type="urn:example:nope")

    # Upstream refusals and failures, including upstreams that echo the token back.
    token = run.token(deployment="logs-aws-denied")
    _, payload, signature = token.split(".")
    echo = f"token {token} payload {payload} signature {signature}"
    stack.aws.fail_next(403, "AccessDenied", echo)
    run.post(token, 400)
    token = run.token(deployment="logs-aws-expired")
    stack.aws.fail_next(400, "ExpiredTokenException", f"expired: {token.split('.')[2]}")
    run.post(token, 400)
    token = run.token(deployment="logs-aws-5xx")
    stack.aws.fail_next(503, "ServiceUnavailable", f"down {token}", times=3, sender=False)
    run.post(token, 503)
    token = run.token(deployment="logs-aws-garbage")
    stack.aws.fail_next(200, body=f"<oops>{token}</oo".encode())
    run.post(token, 503)

    token = run.token(deployment="logs-gcp-denied", **gcp_claims)
    _, payload, signature = token.split(".")
    description = f"bad token {token} / {payload} / {signature}"
    stack.gcp.fail_next(400, {"error": "invalid_grant", "error_description": description})
    run.post(token, 400)
    token = run.token(deployment="logs-gcp-garbage", **gcp_claims)
    stack.gcp.fail_next(200, f"not json {token.split('.')[2]}", path="/v1/token")
    run.post(token, 503)
    token = run.token(deployment="logs-iam-denied", **gcp_claims)
    signature = token.split(".")[2]
    stack.gcp.fail_next(
        403,
        {"error": {"code": 403, "status": "PERMISSION_DENIED", "message": f"no: {signature}"}},
        path=IAM,
    )
    run.post(token, 400)
    token = run.token(deployment="logs-iam-500", **gcp_claims)
    stack.gcp.fail_next(500, f"<html>{token}</html>", path=IAM)
    run.post(token, 503)

    # Invalid subject tokens.
    issuer = stack.issuer
    run.post(run.token(deployment="logs-expired", iat=1_600_000_000, exp=1_600_000_600), 400)
    run.post(issuer.mint(audience="https://other.example", deployment="logs-aud"), 400)
    stranger = SigningKey(issuer.key.kid, SigningKey.generate().private_key)
    run.post(issuer.mint(audience=AUDIENCE, key=stranger, deployment="logs-forged"), 400)
    forged_kid = {"alg": "RS256", "kid": "atky_" + secrets.token_urlsafe(12)}
    run.post(issuer.mint(audience=AUDIENCE, header=forged_kid, deployment="logs-kid"), 400)
    hs = base64.urlsafe_b64encode(b'{"alg":"HS256","kid":"x"}').rstrip(b"=").decode()
    run.post(hs + "." + token.split(".", 1)[1], 400)
    run.post(token.replace(".", "..", 1), 400)
    run.post("eyJ" + secrets.token_urlsafe(20_000), 400)

    # Malformed bodies that carry a token.
    token = run.token(deployment="logs-malformed")
    form = f"grant_type={GRANT}&subject_token_type={ID_TOKEN}&subject_token={token}"
    run.raw(token, form + f"&subject_token={token}", "application/x-www-form-urlencoded")
    run.raw(token, form, "text/plain")
    run.raw(token, json.dumps({"subject_token": [token], "grant_type": GRANT}), "application/json")
    run.raw(token, '{"subject_token": "' + token, "application/json")
    run.raw(token, form + "&actor_token=" + token, "application/x-www-form-urlencoded")
    run.raw(token, form.replace(GRANT, "password"), "application/x-www-form-urlencoded")


def database_goes_away(database_url: str, proxy: TcpProxy) -> None:
    """PostgreSQL: the connection is cut. SQLite: the events table is dropped under the service."""
    if database_url.startswith("sqlite"):
        with sqlite3.connect(make_url(database_url).database or "") as conn:
            conn.execute("DROP TABLE issuance_events")
    else:
        proxy.stop()


def test_no_secret_reaches_a_log_line_or_an_error_body(
    stack_factory: Any, database_url: str
) -> None:
    key = secrets.token_bytes(32)
    proxy = TcpProxy().start()
    try:
        on_postgres = not database_url.startswith("sqlite")
        stack: Stack = stack_factory(
            database_url=through(proxy, database_url) if on_postgres else database_url,
            redis_url="redis://127.0.0.1:6379/0",
            cache_encryption_key=key,
        )
        issued_before = len(stack.gcp.issued)
        run = Run(stack)
        with capturing() as capture:
            # The capture itself works: a canary on each path it claims to watch.
            logging.getLogger("sts.canary").warning("canary-sts-%s", "0b5e55ed")
            logging.getLogger("werkzeug").warning("canary-werkzeug-0b5e55ed")
            try:
                exchanges(run)
                # The database goes away: audit events fall back to the log, with their fields.
                database_goes_away(database_url, proxy)
                run.post(run.token(deployment="logs-aws-db-down"), 200)
                run.post(
                    run.token(account="gcp-account", project="analytics", deployment="logs-g-db"),
                    200,
                )
            finally:
                stack.aws.clear()
                stack.gcp.clear()
        issued = stack.gcp.issued[issued_before:]
    finally:
        proxy.stop()

    text = capture.text()
    assert "canary-sts-0b5e55ed" in text
    assert "canary-werkzeug-0b5e55ed" in text
    names = capture.names()
    assert {"werkzeug", "sts.access", "sts.audit"} <= names, names
    # The database outage made the audit event fall back to the log, with its fields.
    assert "logs-aws-db-down" in text

    key_forms = [
        base64.urlsafe_b64encode(key).decode(),
        base64.urlsafe_b64encode(key).decode().rstrip("="),
        base64.b64encode(key).decode(),
        key.hex(),
        repr(key)[2:-1],
    ]
    needles = {
        form
        for s in [*run.secrets, *issued, *key_forms]
        for form in encodings(s)
        if len(form) >= MIN_NEEDLE
    }
    assert len(run.secrets) > 100
    assert not leaked(needles, text), "secrets in the log"
    for body in run.error_bodies:
        assert not leaked(needles, body), body

    # werkzeug's access log is the request line: no bodies, no form fields.
    access = [line for name, line in capture.lines if name == "werkzeug" and "POST" in line]
    assert access
    for line in access:
        assert "subject_token" not in line
        assert "grant_type" not in line


def test_production_server_log_holds_no_request_body_or_secret(
    tmp_path: Path, issuer: DevIssuer, aws: AwsEmulator, gcp: GcpEmulator
) -> None:
    """``sts serve`` (granian, our JSON log on stderr): no request line with a body, no secret."""
    database_url = f"sqlite:///{tmp_path / 'serve.db'}"
    seed(database_url).dispose()
    env = serve_env(database_url, issuer, aws, gcp)
    log_path = tmp_path / "serve.log"
    with sts_serve(env, log_path, "--workers", "1") as url:
        # Only the HTTP half of a Stack: the services live in the server process.
        run = Run(Stack(url, issuer, aws, gcp, None, 0, 0))  # type: ignore[arg-type]
        token = run.token(deployment="granian-logs")
        run.post(token, 200)
        run.post(token, 200)
        denied = run.token(deployment="granian-denied")
        aws.fail_next(403, "AccessDenied", f"echo {denied} {denied.split('.')[2]}")
        try:
            run.post(denied, 400)
        finally:
            aws.clear()
        run.post(run.token(deployment="granian-expired", iat=1_600_000_000, exp=1_600_000_600), 400)
        form = f"grant_type={GRANT}&subject_token_type={ID_TOKEN}&subject_token={token}"
        run.raw(token, form + f"&subject_token={token}", "application/x-www-form-urlencoded")

    text = log_path.read_text()
    assert '"logger":"sts.access"' in text  # the log was written, in JSON
    assert "POST /token" not in text  # no request line: granian's access log is off
    assert "subject_token=" not in text  # no request body
    needles = {form for s in run.secrets for form in encodings(s) if len(form) >= MIN_NEEDLE}
    assert not leaked(needles, text), text
