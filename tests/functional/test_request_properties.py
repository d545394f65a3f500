"""Properties of ``POST /token`` request parsing over real HTTP (docs/reference.md section 2,
RFC 8693 section 2.1).

Random form and JSON bodies (the real field names mixed with junk, random and repeated values,
non-string JSON values), random content types and random bytes never produce a 5xx; every answer
is JSON carrying ``error`` (or a 200), always with ``Cache-Control: no-store``; and a 200 happens
only when the one valid subject token was sent as ``subject_token``.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sts.dev.aws_emulator import AwsEmulator
from sts.dev.gcp_emulator import GcpEmulator
from sts.dev.issuer import DevIssuer
from tests.conftest import AUDIENCE
from tests.functional.conftest import (
    GRANT,
    ID_TOKEN,
    ROLE,
    Stack,
    running_stack,
)

JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
FORM = "application/x-www-form-urlencoded"
ERRORS = frozenset(
    {
        "invalid_request",
        "unsupported_grant_type",
        "unauthorized_client",
        "invalid_target",
        "invalid_scope",
        "temporarily_unavailable",
    }
)
PROPERTY = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def request_stack(
    issuer: DevIssuer,
    aws: AwsEmulator,
    gcp: GcpEmulator,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    url = f"sqlite:///{tmp_path_factory.mktemp('requests') / 'sts.db'}"
    with running_stack(issuer, aws, gcp, url) as stack:
        yield stack


@pytest.fixture(scope="module")
def valid_token(issuer: DevIssuer) -> str:
    """The one token that can succeed: the orders-prod identity, valid for ten hours."""
    return issuer.mint(audience=AUDIENCE)


VALID = "<the valid token>"  # placeholder a strategy draws; replaced by the real token
REAL_NAMES = [
    "grant_type",
    "subject_token",
    "subject_token_type",
    "audience",
    "resource",
    "scope",
    "requested_token_type",
    "actor_token",
    "actor_token_type",
]
JUNK_NAMES = ["client_id", "client_secret", "Subject_Token", "subject_token ", "", "\u00e9"]
PRINTABLE = st.text(alphabet=string.printable, max_size=30)
ANY_TEXT = st.text(max_size=30)


def mostly(value: str, other: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """``value`` four times in five, so the deep paths behind the first checks get exercised."""
    return st.sampled_from([True, True, True, True, False]).flatmap(
        lambda keep: st.just(value) if keep else other
    )


VALUES: dict[str, st.SearchStrategy[str]] = {
    "grant_type": mostly(GRANT, st.sampled_from(["client_credentials", ""]) | ANY_TEXT),
    "subject_token": mostly(VALID, st.sampled_from([VALID + "x", " " + VALID, ""]) | ANY_TEXT),
    "subject_token_type": mostly(
        ID_TOKEN, st.sampled_from([JWT_TYPE, ID_TOKEN.upper(), ""]) | ANY_TEXT
    ),
    "audience": st.sampled_from(["orders-prod", "orders-preview", "analytics-gcp", ""]) | ANY_TEXT,
    "resource": st.sampled_from([ROLE, "arn:aws:iam::1:role/x", ""]) | ANY_TEXT,
    "scope": st.sampled_from(["", "https://www.googleapis.com/auth/cloud-platform"]) | ANY_TEXT,
    "requested_token_type": st.sampled_from(
        [
            "urn:zuplo-sts:token-type:aws-credentials",
            "urn:ietf:params:oauth:token-type:access_token",
        ]
    )
    | ANY_TEXT,
}


@st.composite
def form_pairs(draw: st.DrawFn) -> list[tuple[str, str]]:
    """Mostly the real fields with plausible values, plus junk, repeats and omissions."""
    pairs: list[tuple[str, str]] = []
    for name in ("grant_type", "subject_token", "subject_token_type"):
        if draw(st.integers(0, 9)):  # usually present
            pairs.append((name, draw(VALUES[name])))
    extra = st.sampled_from(REAL_NAMES + JUNK_NAMES) | PRINTABLE
    for name in draw(st.lists(extra, max_size=3)):
        pairs.append((name, draw(VALUES.get(name, ANY_TEXT))))
    return draw(st.permutations(pairs))


JSON_VALUES = st.none() | st.booleans() | st.integers() | st.lists(st.text(max_size=5), max_size=2)


def substitute(value: str, token: str) -> str:
    return value.replace(VALID, token)


def sent_the_valid_token(pairs: list[tuple[str, Any]], token: str) -> bool:
    return any(name == "subject_token" and value == token for name, value in pairs)


def check(response: requests.Response, could_succeed: bool) -> None:
    assert response.status_code < 500, response.text
    assert response.headers.get("Cache-Control") == "no-store"
    body = response.json()
    assert isinstance(body, dict)
    if response.status_code == 200:
        assert could_succeed, "a request without the valid subject_token was exchanged"
        assert body["mapping"] in ("orders-prod", "orders-preview")
        return
    assert response.status_code in (400, 503), response.status_code
    assert body.get("error") in ERRORS, body
    assert isinstance(body.get("error_description"), str)


def post(stack: Stack, body: bytes, content_type: str | None) -> requests.Response:
    headers = {} if content_type is None else {"Content-Type": content_type}
    return requests.post(stack.url + "/token", data=body, headers=headers, timeout=30)


FORM_TYPES = st.sampled_from(
    [FORM, FORM + "; charset=UTF-8", FORM.upper(), FORM + ";charset=latin-1"]
)
JSON_TYPES = st.sampled_from(["application/json", "application/json; charset=utf-8"])
OTHER_TYPES = st.sampled_from(
    ["text/plain", "multipart/form-data; boundary=x", "application/jwt", "", "*/*"]
) | st.text(alphabet=string.ascii_letters + string.digits + "/;=+-. ", max_size=40).map(str.strip)


@PROPERTY
@given(pairs=form_pairs(), content_type=mostly(FORM, FORM_TYPES | JSON_TYPES | OTHER_TYPES))
def test_random_form_bodies(
    pairs: list[tuple[str, str]], content_type: str, request_stack: Stack, valid_token: str
) -> None:
    pairs = [(n, substitute(v, valid_token)) for n, v in pairs]
    response = post(request_stack, urlencode(pairs).encode(), content_type)
    check(response, sent_the_valid_token(pairs, valid_token))


@PROPERTY
@given(
    pairs=form_pairs(),
    non_strings=st.dictionaries(st.sampled_from(REAL_NAMES[3:]), JSON_VALUES, max_size=1)
    | st.dictionaries(st.sampled_from(REAL_NAMES), JSON_VALUES, max_size=2),
    content_type=mostly("application/json", JSON_TYPES | FORM_TYPES | OTHER_TYPES),
    wrap=mostly("object", st.sampled_from(["array", "string", "garbage"])),
)
def test_random_json_bodies(
    pairs: list[tuple[str, str]],
    non_strings: dict[str, Any],
    content_type: str,
    wrap: str,
    request_stack: Stack,
    valid_token: str,
) -> None:
    members: list[tuple[str, Any]] = [(n, substitute(v, valid_token)) for n, v in pairs]
    members += list(non_strings.items())
    # Written by hand so that repeated member names reach the server as sent.
    text = "{" + ",".join(f"{json.dumps(n)}:{json.dumps(v)}" for n, v in members) + "}"
    if wrap == "array":
        text = f"[{text}]"
    elif wrap == "string":
        text = json.dumps(text)
    elif wrap == "garbage":
        text += "}"
    response = post(request_stack, text.encode(), content_type)
    check(response, wrap == "object" and sent_the_valid_token(members, valid_token))


@settings(PROPERTY, max_examples=100)
@given(body=st.binary(max_size=600), content_type=st.none() | FORM_TYPES | JSON_TYPES | OTHER_TYPES)
def test_random_bytes(body: bytes, content_type: str | None, request_stack: Stack) -> None:
    check(post(request_stack, body, content_type), could_succeed=False)


def test_the_valid_token_is_exchanged(request_stack: Stack, valid_token: str) -> None:
    """The oracle's one success case is reachable, so the properties above are not vacuous."""
    response = request_stack.post(valid_token)
    assert response.status_code == 200, response.text
    assert response.json()["mapping"] == "orders-prod"


def chunked_post(url: str, body: bytes, chunk: int = 7) -> tuple[int, dict[str, str], bytes]:
    """POST /token with ``Transfer-Encoding: chunked`` and no Content-Length, as a client that
    streams its body sends it (RFC 9112 section 7.1); header names come back in lower case."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        conn.putrequest("POST", "/token")
        conn.putheader("Content-Type", FORM)
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        for start in range(0, len(body), chunk):
            piece = body[start : start + chunk]
            conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        conn.send(b"0\r\n\r\n")
        response = conn.getresponse()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return response.status, headers, response.read()
    finally:
        conn.close()


def test_chunked_body_is_read(request_stack: Stack, valid_token: str) -> None:
    body = urlencode(
        {"grant_type": GRANT, "subject_token": valid_token, "subject_token_type": ID_TOKEN}
    ).encode()
    status, headers, answer = chunked_post(request_stack.url, body)
    assert status == 200, answer
    assert json.loads(answer)["mapping"] in ("orders-prod", "orders-preview")
    assert headers["cache-control"] == "no-store"


def test_chunked_body_over_64_kib_is_refused(request_stack: Stack, valid_token: str) -> None:
    body = urlencode(
        {
            "grant_type": GRANT,
            "subject_token": valid_token,
            "subject_token_type": ID_TOKEN,
            "padding": "x" * 70_000,
        }
    ).encode()
    status, _, answer = chunked_post(request_stack.url, body, chunk=8192)
    assert status == 400
    assert json.loads(answer) == {
        "error": "invalid_request",
        "error_description": "request body too large",
    }


def test_options_on_token_lists_the_methods_and_is_not_stored(request_stack: Stack) -> None:
    response = requests.options(request_stack.url + "/token", timeout=10)
    assert response.status_code == 200
    assert {m.strip() for m in response.headers["Allow"].split(",")} == {"POST", "OPTIONS"}
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"
    assert response.headers["X-Request-Id"]
    assert response.content == b""


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE", "PATCH", "TRACE"])
def test_other_methods_on_token_are_405_with_allow_and_not_stored(
    request_stack: Stack, method: str
) -> None:
    response = requests.request(method, request_stack.url + "/token", timeout=10)
    assert response.status_code == 405
    assert {m.strip() for m in response.headers["Allow"].split(",")} == {"POST", "OPTIONS"}
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"
    assert response.headers["Content-Type"] == "application/json"
    if method != "HEAD":
        assert response.json() == {
            "error": "method_not_allowed",
            "error_description": "method not allowed",
        }
