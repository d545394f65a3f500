"""AzureProvider against a canned HTTP server on 127.0.0.1: every shape of Entra answer,
well-formed or not, becomes the contract's error (docs/reference.md section 9), and the request
is the client credentials grant with the assertion. The Entra emulator's own checks are
exercised end to end in tests/functional/test_azure.py."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest

from sts.config import Settings
from sts.errors import InvalidTarget, OAuthError, TemporarilyUnavailable
from sts.identity.principal import Principal
from sts.mappings.spec import AwsTarget, AzureTarget, MappingSpec
from sts.protocol import AZURE_BROKER_AUDIENCE, CLIENT_ASSERTION_TYPE
from sts.providers.azure import ERRORS, AzureProvider, aadsts_number

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "9b2a4c1e-3f5d-4e6a-8b7c-0d1e2f3a4b5c"
ASSERTION = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJtYXBwaW5nOmJpbGxpbmcifQ.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"
MAPPING = MappingSpec(
    name="billing-azure",
    account="acc",
    project="proj",
    azure=AzureTarget(tenant_id=TENANT, client_id=CLIENT),
)
PRINCIPAL = Principal(
    issuer="https://issuer.test",
    sub="sub",
    account="acc",
    project="proj",
    deployment="dep",
    environment_type="production",
    audiences=frozenset({"aud"}),
)


@dataclass
class Canned:
    """Answers every POST with ``status``, ``headers`` and ``body``; records the forms."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0
    forms: list[tuple[str, dict[str, list[str]]]] = field(default_factory=list)
    url: str = ""


@pytest.fixture(scope="module")
def server() -> Iterator[Canned]:
    canned = Canned()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            form = parse_qs(self.rfile.read(length).decode())
            canned.forms.append((self.path, form))
            if canned.delay:
                time.sleep(canned.delay)
            self.send_response(canned.status)
            for name, value in canned.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(canned.body)))
            self.end_headers()
            self.wfile.write(canned.body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    canned.url = f"http://127.0.0.1:{httpd.server_port}"
    yield canned
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def canned(server: Canned) -> Canned:
    server.status, server.headers, server.body, server.delay = 200, {}, b"", 0.0
    server.forms.clear()
    return server


def provider(url: str, **kwargs: Any) -> AzureProvider:
    return AzureProvider(
        Settings(allow_http_loopback=True, azure_authority_url=url + "/"), **kwargs
    )


def answer(canned: Canned, status: int, body: Any, **headers: str) -> None:
    canned.status = status
    canned.body = body if isinstance(body, bytes) else json.dumps(body).encode()
    canned.headers = {"Content-Type": "application/json; charset=utf-8", **headers}


def issue(canned: Canned, **kwargs: Any) -> Any:
    return provider(canned.url, **kwargs).issue(PRINCIPAL, MAPPING, ASSERTION, ())


def refusal(canned: Canned) -> OAuthError:
    with pytest.raises(OAuthError) as caught:
        issue(canned)
    error = caught.value
    for text in (error.description, str(error), error.cause or ""):
        assert ASSERTION not in text
        assert ASSERTION.split(".")[2] not in text
    return error


def entra_error(number: int, error: str = "invalid_client") -> dict[str, Any]:
    return {
        "error": error,
        "error_description": f"AADSTS{number}: No matching federated identity record found for "
        "presented assertion subject 'mapping:billing-azure'. Trace ID: 1",
        "error_codes": [number],
        "trace_id": "5f0c0d3e-1111-4222-8333-444444444444",
        "correlation_id": "6a1d1e4f-1111-4222-8333-444444444444",
    }


def test_the_request_is_the_client_credentials_grant_with_the_assertion(canned: Canned) -> None:
    answer(canned, 200, {"token_type": "Bearer", "expires_in": 3599, "access_token": "at-1"})
    started = time.time()
    credentials = issue(canned)
    assert credentials.provider == "azure"
    assert credentials.access_token == "at-1"
    assert credentials.scope == "https://management.azure.com/.default"
    assert started + 3598 <= credentials.expires_at <= time.time() + 3599
    ((path, form),) = canned.forms
    assert path == f"/{TENANT}/oauth2/v2.0/token"
    assert form == {
        "client_id": [CLIENT],
        "grant_type": ["client_credentials"],
        "client_assertion_type": [CLIENT_ASSERTION_TYPE],
        "client_assertion": [ASSERTION],
        "scope": ["https://management.azure.com/.default"],
    }


def test_the_broker_token_audience_is_entras_exchange_audience() -> None:
    azure = provider("https://login.microsoftonline.com")
    assert azure.broker_claims(MAPPING).audience == AZURE_BROKER_AUDIENCE
    assert not azure.broker_claims(MAPPING).session_tags
    other = MappingSpec(
        name="x", account="a", project="p", aws=AwsTarget("arn:aws:iam::123456789012:role/r")
    )
    with pytest.raises(ValueError, match="no azure target"):
        azure.broker_claims(other)
    with pytest.raises(ValueError, match="no azure target"):
        azure.issue(PRINCIPAL, other, ASSERTION, ())


@pytest.mark.parametrize("status", [400, 401])
@pytest.mark.parametrize("number", sorted(ERRORS))
def test_every_known_aadsts_number_is_its_fixed_phrase(
    canned: Canned, status: int, number: int
) -> None:
    answer(canned, status, entra_error(number))
    error = refusal(canned)
    assert isinstance(error, InvalidTarget)
    assert error.description == ERRORS[number].description
    assert error.description.startswith(f"azure: AADSTS{number} - ")
    assert "mapping:billing-azure" not in error.description  # Entra's echo stays out
    assert error.provider == "azure"
    assert error.provider_code == f"AADSTS{number}"
    assert error.upstream_request_id == "6a1d1e4f-1111-4222-8333-444444444444"


def test_the_number_comes_from_the_description_when_error_codes_are_missing(
    canned: Canned,
) -> None:
    answer(canned, 401, {"error": "invalid_client", "error_description": "AADSTS7000215: bad"})
    error = refusal(canned)
    assert error.description == "azure: AADSTS7000215 - Entra refused the exchange"


@pytest.mark.parametrize(
    ("body", "number"),
    [
        ({"error_codes": [700213], "error_description": "AADSTS1: x"}, 700213),
        ({"error_codes": [], "error_description": "AADSTS50027: x"}, 50027),
        ({"error_codes": ["700213"], "error_description": "AADSTS50027: x"}, 50027),
        ({"error_codes": [True]}, None),
        ({"error_codes": [10**12]}, None),
        ({"error_description": "Something AADSTS50027: later"}, None),
        ({"error_description": "AADSTS50027x"}, None),
        ({}, None),
        (None, None),
    ],
)
def test_aadsts_number(body: dict[str, Any] | None, number: int | None) -> None:
    assert aadsts_number(body) == number


@pytest.mark.parametrize(
    ("status", "headers", "retry_after", "code"),
    [
        (429, {"Retry-After": "30"}, 30, "AADSTS90055"),
        (429, {"Retry-After": "100000"}, 60, "AADSTS90055"),
        (429, {}, 5, "AADSTS90055"),
        (503, {}, 2, "AADSTS90055"),
        (500, {"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"}, 2, "AADSTS90055"),
    ],
)
def test_throttling_and_server_errors_are_temporarily_unavailable(
    canned: Canned, status: int, headers: dict[str, str], retry_after: int, code: str
) -> None:
    answer(canned, status, entra_error(90055, "temporarily_unavailable"), **headers)
    error = refusal(canned)
    assert isinstance(error, TemporarilyUnavailable)
    assert error.retry_after == retry_after
    assert error.description.startswith(f"azure: {code} - ")


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, b"<html>bad gateway</html>"),
        (400, {"error": "invalid_request"}),  # no AADSTS number: not Entra's shape
        (302, b""),
        (502, b"<html>proxy</html>"),
        (200, b"not json"),
        (200, {"token_type": "Bearer", "expires_in": 3599}),
        (200, {"access_token": "", "expires_in": 3599}),
        (200, {"access_token": "at", "expires_in": True}),
        (200, {"access_token": "at", "expires_in": 10**9}),
        (200, {"access_token": "at", "expires_in": 120}),  # under 5 minutes: unusable
        (200, {"access_token": "at", "expires_in": "soon"}),
        (200, [1, 2]),
    ],
)
def test_unusable_answers_are_temporarily_unavailable(
    canned: Canned, status: int, body: Any
) -> None:
    answer(
        canned, status, body, **({"Location": "https://elsewhere.test"} if status == 302 else {})
    )
    error = refusal(canned)
    assert isinstance(error, TemporarilyUnavailable)
    assert error.description.startswith("azure: ")


def test_expires_in_as_a_string_of_digits_is_taken(canned: Canned) -> None:
    answer(canned, 200, {"access_token": "at", "expires_in": "3599"})
    assert issue(canned).expires_at > time.time() + 3500


def test_a_read_timeout_is_bounded(canned: Canned) -> None:
    answer(canned, 200, {"access_token": "at", "expires_in": 3599})
    canned.delay = 2.0
    started = time.monotonic()
    with pytest.raises(TemporarilyUnavailable) as caught:
        issue(canned, read_timeout=0.5)
    assert time.monotonic() - started < 1.5
    assert caught.value.description == "azure: ReadTimeout - Entra did not answer in time"


def test_connection_refused_is_temporarily_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    azure = provider(f"http://127.0.0.1:{port}")
    with pytest.raises(TemporarilyUnavailable) as caught:
        azure.issue(PRINCIPAL, MAPPING, ASSERTION, ())
    assert caught.value.description == "azure: ConnectionError - could not connect to Entra"
