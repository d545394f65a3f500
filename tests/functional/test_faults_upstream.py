"""AWS and GCP upstream faults through real HTTP (docs/reference.md section 2, the error table).

Throttling, 5xx, refused connections, timeouts and malformed answers must each be a 503
``temporarily_unavailable`` with ``Retry-After`` (or the contract's 400 for a refusal), never a
500, and never take longer than the provider's timeouts. The provider refusals already covered
in ``test_token.py`` are not repeated here.

The service runs as ``Services.build`` makes it, with the production timeouts and retries
(docs/operations.md: AWS calls are tried 3 times with botocore's standard jittered back-off, at
most 1 s + 2 s; every read times out after 5 s; GCP calls are tried once). Faults are injected
in the emulators for as many attempts as the service makes, so the bounds below are the
production ones; the two read-timeout cases cost their full 5 s per attempt.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import requests

from sts.dev.aws_emulator import AwsEmulator
from sts.dev.gcp_emulator import GcpEmulator
from sts.dev.issuer import DevIssuer
from tests.conftest import AUDIENCE
from tests.functional.conftest import Stack, running_stack
from tests.functional.test_token import assert_error

#: Attempts per AWS call, and the longest botocore's standard back-off waits between them.
AWS_ATTEMPTS = 3
AWS_BACKOFF = 1.0 + 2.0
#: The providers' read timeout (docs/operations.md).
READ_TIMEOUT = 5.0
#: HTTP, emulator and verification overhead on a loaded test machine (the bounds below say
#: "bounded by the retry budget, not stuck"; what was tried is asserted from the emulators).
SLACK = 5.0
#: Longest a failing exchange may take when no attempt waits for a timeout.
BOUND = AWS_BACKOFF + SLACK
MARKER = "upstream-detail-7f3a"
"""Put in injected upstream bodies: it must never reach the caller."""

AWS_OK = (
    '<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
    "<AssumeRoleWithWebIdentityResult>"
    "<Credentials><AccessKeyId>ASIAFAULTTEST0000001</AccessKeyId>"
    "<SecretAccessKey>fault-test-secret-key</SecretAccessKey>"
    "<SessionToken>fault-test-session-token</SessionToken>"
    "<Expiration>{expiration}</Expiration></Credentials>"
    "<SubjectFromWebIdentityToken>" + MARKER + "</SubjectFromWebIdentityToken>"
    "</AssumeRoleWithWebIdentityResult>"
    "<ResponseMetadata><RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId>"
    "</ResponseMetadata></AssumeRoleWithWebIdentityResponse>"
)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections for the whole test: bound, never listening,
    and held, so that nothing started meanwhile (a server of this test, of another process)
    can be given the port and answer instead."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        yield port


@pytest.fixture(scope="module")
def shared_stack(
    issuer: DevIssuer, aws: AwsEmulator, gcp: GcpEmulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """One service for the whole module: each case uses its own deployment name, so no case
    sees another's cached credentials."""
    url = f"sqlite:///{tmp_path_factory.mktemp('upstream') / 'sts.db'}"
    with running_stack(issuer, aws, gcp, url) as stack:
        yield stack


@pytest.fixture
def stack(shared_stack: Stack) -> Iterator[Stack]:
    stack = replace(
        shared_stack,
        aws_seen=len(shared_stack.aws.requests),
        gcp_seen=len(shared_stack.gcp.requests),
    )
    try:
        yield stack
    finally:
        stack.aws.clear()
        stack.gcp.clear()


def exchange(stack: Stack, **claims: Any) -> tuple[float, str, requests.Response]:
    token = stack.token(**claims)
    started = time.monotonic()
    response = stack.post(token)
    return time.monotonic() - started, token, response


def assert_unavailable(
    elapsed: float, token: str, response: requests.Response, prefix: str, bound: float = BOUND
) -> dict[str, Any]:
    body = assert_error(response, 503, "temporarily_unavailable", token)
    assert body["error_description"].startswith(prefix), body
    assert MARKER not in response.text
    assert elapsed < bound, elapsed
    return body


def gcp_claims(case: str, project: str = "analytics") -> dict[str, str]:
    return {"account": "gcp-account", "project": project, "deployment": f"fault-{case}"}


# -- AWS ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "prefix"),
    [
        pytest.param(503, None, "aws: ServiceUnavailable", id="503-aws-document"),
        pytest.param(
            502,
            b"<html><body>Bad Gateway " + MARKER.encode() + b"</body></html>",
            "aws: ",
            id="502-html",
        ),
        pytest.param(500, b"", "aws: ", id="500-empty"),
        pytest.param(429, b"Too Many Requests " + MARKER.encode(), "aws: ", id="429-text"),
        pytest.param(400, b"\x00\xff not xml " + MARKER.encode(), "aws: ", id="400-garbage"),
        pytest.param(200, b"", "aws: MalformedResponse", id="200-empty"),
        pytest.param(200, b'{"json": "' + MARKER.encode() + b'"}', "aws: ", id="200-json"),
        pytest.param(
            200,
            AWS_OK.format(expiration="2030-01-01T00:00:00Z")[:260].encode(),
            "aws: ",
            id="200-truncated",
        ),
        pytest.param(
            200,
            AWS_OK.format(expiration="2030-01-01T00:00:00Z")
            .replace("<SessionToken>fault-test-session-token</SessionToken>", "")
            .encode(),
            "aws: MalformedResponse",
            id="200-no-session-token",
        ),
        pytest.param(
            200,
            b'<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
            b"<AssumeRoleWithWebIdentityResult/></AssumeRoleWithWebIdentityResponse>",
            "aws: MalformedResponse",
            id="200-no-credentials",
        ),
        pytest.param(
            200, AWS_OK.format(expiration="next tuesday").encode(), "aws: ", id="200-bad-expiration"
        ),
        pytest.param(
            200,
            AWS_OK.format(expiration="2001-01-01T00:00:00Z").encode(),
            "aws: MalformedResponse",
            id="200-already-expired",
        ),
    ],
)
def test_aws_faults_are_temporarily_unavailable(
    stack: Stack, status: int, body: bytes | None, prefix: str, request: pytest.FixtureRequest
) -> None:
    # As many times as the service tries: a retried fault must fail every attempt.
    if body is None:
        stack.aws.fail_next(status, "ServiceUnavailable", MARKER, sender=False, times=AWS_ATTEMPTS)
    else:
        stack.aws.fail_next(status, body=body, times=AWS_ATTEMPTS)
    try:
        elapsed, token, response = exchange(stack, deployment=request.node.callspec.id)
    finally:
        stack.aws.clear()
    assert_unavailable(elapsed, token, response, prefix)
    # Nothing was cached: as soon as AWS answers again, so does the service.
    assert stack.post(token).status_code == 200


def test_aws_throttling_passes_retry_after(stack: Stack) -> None:
    stack.aws.fail_next(400, "ThrottlingException", "Rate exceeded", times=AWS_ATTEMPTS)
    try:
        elapsed, token, response = exchange(stack, deployment="throttled-exception")
    finally:
        stack.aws.clear()
    assert_unavailable(elapsed, token, response, "aws: Throttling")
    assert int(response.headers["Retry-After"]) >= 2


def test_aws_connection_refused_is_unavailable_within_the_retry_backoff(
    stack_factory: Any,
    closed_port: int,
) -> None:
    stack = stack_factory(aws_endpoint_url=f"http://127.0.0.1:{closed_port}")
    elapsed, token, response = exchange(stack, deployment="aws-refused")
    # A refused connection fails at once; only botocore's back-off between attempts remains.
    assert_unavailable(elapsed, token, response, "aws: EndpointConnectionError")


def test_aws_read_timeout_is_unavailable_after_three_timed_out_attempts(stack: Stack) -> None:
    stack.aws.delay = READ_TIMEOUT + 1.0
    try:
        elapsed, token, response = exchange(stack, deployment="aws-slow")
    finally:
        stack.aws.delay = 0.0
    bound = AWS_ATTEMPTS * READ_TIMEOUT + AWS_BACKOFF + SLACK
    assert_unavailable(elapsed, token, response, "aws: ReadTimeout", bound)
    assert elapsed >= READ_TIMEOUT
    assert len(stack.aws_requests()) == AWS_ATTEMPTS


# -- GCP: the STS step -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "prefix"),
    [
        pytest.param(500, "<html>" + MARKER + "</html>", "gcp: HTTP500", id="500-html"),
        pytest.param(502, "", "gcp: HTTP502", id="502-empty"),
        pytest.param(
            503,
            {"error": "temporarily_unavailable", "error_description": MARKER},
            "gcp: temporarily_unavailable",
            id="503-oauth",
        ),
        pytest.param(400, "not json " + MARKER, "gcp: MalformedResponse", id="400-garbage"),
        pytest.param(200, "not json " + MARKER, "gcp: MalformedResponse", id="200-garbage"),
        pytest.param(200, "", "gcp: MalformedResponse", id="200-empty"),
        pytest.param(200, [MARKER], "gcp: MalformedResponse", id="200-json-array"),
        pytest.param(
            200,
            {"token_type": "Bearer", "expires_in": 3599},
            "gcp: MalformedResponse",
            id="200-no-access-token",
        ),
        pytest.param(
            200,
            {"access_token": "ya29.x", "expires_in": "3599"},
            "gcp: MalformedResponse",
            id="200-expires-in-string",
        ),
        pytest.param(
            200,
            {"access_token": "ya29.x", "expires_in": 0},
            "gcp: MalformedResponse",
            id="200-expires-in-zero",
        ),
        pytest.param(
            200,
            {"access_token": "", "expires_in": 3599},
            "gcp: MalformedResponse",
            id="200-empty-access-token",
        ),
        pytest.param(200, '{"access_token": "ya29.', "gcp: MalformedResponse", id="200-truncated"),
        pytest.param(
            200,
            {"access_token": "ya29.x", "expires_in": 10**400},
            "gcp: MalformedResponse",
            id="200-expires-in-beyond-a-float",
        ),
        pytest.param(
            200,
            {"access_token": "ya29.x", "expires_in": 10**9},
            "gcp: MalformedResponse",
            id="200-expires-in-decades",
        ),
    ],
)
def test_gcp_sts_faults_are_temporarily_unavailable(
    stack: Stack, status: int, body: Any, prefix: str, request: pytest.FixtureRequest
) -> None:
    stack.gcp.fail_next(status, body, path="/v1/token")
    try:
        case = request.node.callspec.id
        elapsed, token, response = exchange(stack, **gcp_claims(f"sts-{case}"))
    finally:
        stack.gcp.clear()
    assert_unavailable(elapsed, token, response, prefix)


def test_gcp_sts_unknown_refusal_is_invalid_target(stack: Stack) -> None:
    stack.gcp.fail_next(403, {"error": "brand_new_refusal", "error_description": MARKER})
    try:
        token = stack.token(**gcp_claims("sts-unknown-refusal"))
        response = stack.post(token)
    finally:
        stack.gcp.clear()
    body = assert_error(response, 400, "invalid_target", token)
    assert body["error_description"].startswith("gcp: brand_new_refusal")
    assert MARKER not in response.text


def test_gcp_sts_throttling_passes_retry_after(stack: Stack) -> None:
    stack.gcp.fail_next(429, {"error": "rate_limited"}, headers={"Retry-After": "17"})
    try:
        elapsed, token, response = exchange(stack, **gcp_claims("sts-retry-after"))
    finally:
        stack.gcp.clear()
    assert_unavailable(elapsed, token, response, "gcp: ")
    assert response.headers["Retry-After"] == "17"


def test_gcp_sts_connection_refused(stack_factory: Any, closed_port: int) -> None:
    stack = stack_factory(gcp_sts_url=f"http://127.0.0.1:{closed_port}/v1/token")
    elapsed, token, response = exchange(stack, **gcp_claims("sts-refused", project="federated"))
    assert_unavailable(elapsed, token, response, "gcp: ConnectionError")


def test_gcp_read_timeout_is_unavailable_after_one_timed_out_attempt(stack: Stack) -> None:
    stack.gcp.delay = READ_TIMEOUT + 1.0
    try:
        elapsed, token, response = exchange(stack, **gcp_claims("sts-slow"))
    finally:
        stack.gcp.delay = 0.0
    assert_unavailable(elapsed, token, response, "gcp: ReadTimeout", READ_TIMEOUT + SLACK)
    assert elapsed >= READ_TIMEOUT
    assert len(stack.gcp_requests()) == 1  # tried once


# -- GCP: the IAM generateAccessToken step -----------------------------------------------------

IAM = "/v1/projects/"


def google_error(status: int, state: str) -> dict[str, Any]:
    return {"error": {"code": status, "message": MARKER, "status": state}}


@pytest.mark.parametrize(
    ("status", "body", "prefix"),
    [
        pytest.param(
            429, google_error(429, "RESOURCE_EXHAUSTED"), "gcp: RESOURCE_EXHAUSTED", id="429"
        ),
        pytest.param(500, google_error(500, "INTERNAL"), "gcp: INTERNAL", id="500"),
        pytest.param(503, google_error(503, "UNAVAILABLE"), "gcp: UNAVAILABLE", id="503"),
        pytest.param(504, "<html>" + MARKER + "</html>", "gcp: HTTP504", id="504-html"),
        pytest.param(200, "not json " + MARKER, "gcp: MalformedResponse", id="200-garbage"),
        pytest.param(
            200, {"expireTime": "2030-01-01T00:00:00Z"}, "gcp: MalformedResponse", id="200-no-token"
        ),
        pytest.param(
            200, {"accessToken": "ya29.c.x"}, "gcp: MalformedResponse", id="200-no-expire"
        ),
        pytest.param(
            200,
            {"accessToken": "ya29.c.x", "expireTime": "tomorrow"},
            "gcp: MalformedResponse",
            id="200-bad-expire",
        ),
        pytest.param(
            200,
            {"accessToken": "ya29.c.x", "expireTime": 1893456000},
            "gcp: MalformedResponse",
            id="200-numeric-expire",
        ),
        pytest.param(
            200,
            {"accessToken": "ya29.c.x", "expireTime": "2030-02-30T00:00:00Z"},
            "gcp: MalformedResponse",
            id="200-impossible-date",
        ),
        pytest.param(
            200,
            {"accessToken": "ya29.c.x", "expireTime": "2001-01-01T00:00:00Z"},
            "gcp: MalformedResponse",
            id="200-already-expired",
        ),
        pytest.param(
            200,
            {"accessToken": 42, "expireTime": "2030-01-01T00:00:00Z"},
            "gcp: MalformedResponse",
            id="200-token-not-string",
        ),
        # json.loads raises RecursionError, not ValueError, on nesting this deep: it was a 500.
        pytest.param(200, b"[" * 100_000, "gcp: MalformedResponse", id="200-nested-too-deep"),
    ],
)
def test_gcp_iam_faults_are_temporarily_unavailable(
    stack: Stack, status: int, body: Any, prefix: str, request: pytest.FixtureRequest
) -> None:
    stack.gcp.fail_next(status, body, path=IAM)
    try:
        case = request.node.callspec.id
        elapsed, token, response = exchange(stack, **gcp_claims(f"iam-{case}"))
    finally:
        stack.gcp.clear()
    assert_unavailable(elapsed, token, response, prefix)


@pytest.mark.parametrize(
    ("status", "state"),
    [(403, "PERMISSION_DENIED"), (404, "NOT_FOUND"), (401, "UNAUTHENTICATED")],
)
def test_gcp_iam_refusals_are_invalid_target(stack: Stack, status: int, state: str) -> None:
    stack.gcp.fail_next(status, google_error(status, state), path=IAM)
    try:
        token = stack.token(**gcp_claims(f"iam-refused-{state}"))
        response = stack.post(token)
    finally:
        stack.gcp.clear()
    body = assert_error(response, 400, "invalid_target", token)
    assert body["error_description"].startswith(f"gcp: {state}")
    assert MARKER not in response.text


def test_gcp_iam_connection_refused(stack_factory: Any, closed_port: int) -> None:
    stack = stack_factory(gcp_iam_credentials_url=f"http://127.0.0.1:{closed_port}")
    elapsed, token, response = exchange(stack, **gcp_claims("iam-refused"))
    assert_unavailable(elapsed, token, response, "gcp: ConnectionError")
    # The STS step did succeed: the failure really was the IAM call.
    assert [r.path for r in stack.gcp_requests()] == ["/v1/token"]


def test_failures_are_not_cached(stack: Stack, issuer: DevIssuer) -> None:
    """After an upstream failure the same caller gets credentials as soon as upstream answers."""
    stack.gcp.fail_next(503, google_error(503, "UNAVAILABLE"), path=IAM)
    token = issuer.mint(audience=AUDIENCE, **gcp_claims("recovers"))
    try:
        assert stack.post(token).status_code == 503
    finally:
        stack.gcp.clear()
    response = stack.post(token)
    assert response.status_code == 200, response.text


def rfc3339_in(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + seconds))


def test_credentials_expiring_within_five_minutes_are_refused(stack: Stack) -> None:
    """docs/reference.md section 2: nothing with under 5 minutes left is handed out, even fresh."""
    soon = rfc3339_in(120)
    # A 200 is not retried: one fault, so the next one below is what AWS answers next.
    stack.aws.fail_next(200, body=AWS_OK.format(expiration=soon).encode())
    elapsed, token, response = exchange(stack, deployment="aws-expires-soon")
    assert_unavailable(elapsed, token, response, "aws: MalformedResponse")

    stack.gcp.fail_next(200, {"access_token": "ya29.x", "expires_in": 120}, path="/v1/token")
    elapsed, token, response = exchange(stack, **gcp_claims("sts-soon", project="federated"))
    assert_unavailable(elapsed, token, response, "gcp: MalformedResponse")

    stack.gcp.fail_next(200, {"accessToken": "ya29.c.x", "expireTime": soon}, path=IAM)
    elapsed, token, response = exchange(stack, **gcp_claims("iam-soon"))
    assert_unavailable(elapsed, token, response, "gcp: MalformedResponse")

    # Six minutes left is short, but usable.
    later = rfc3339_in(360)
    stack.aws.fail_next(200, body=AWS_OK.format(expiration=later).encode())
    response = stack.post(stack.token(deployment="aws-expires-later"))
    assert response.status_code == 200, response.text
    assert 300 <= response.json()["expires_in"] <= 360
