"""The Entra ID emulator (sts.dev.entra_emulator) over real HTTP, with assertions minted by a
DevIssuer serving its discovery document and JWKS on loopback."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from sts.dev.entra_emulator import (
    AZURE_EXCHANGE_AUDIENCE,
    CLIENT_ASSERTION_TYPE,
    DEFAULT_RESOURCES,
    NBF_SKEW_SECONDS,
    EntraEmulator,
    IssuedToken,
)
from sts.dev.issuer import DevIssuer, SigningKey, b64url
from sts.dev.serving import free_port

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
OTHER_TENANT = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
CLIENT = "9b2a4c1e-3f5d-4e6a-8b7c-0d1e2f3a4b5c"
OTHER_CLIENT = "11111111-2222-4333-8444-555555555555"
BARE_CLIENT = "66666666-7777-4888-9999-000000000000"  # in TENANT, with no credentials
# Fixed, not random: parametrized ids must be the same in every pytest-xdist worker.
UNKNOWN_TENANT = "d5b4c3a2-1f0e-4d9c-8b7a-6f5e4d3c2b1a"
UNKNOWN_CLIENT = "c0ffee00-1234-4abc-8def-0123456789ab"
SUBJECT = "mapping:billing-azure"
SCOPE = "https://management.azure.com/.default"
LIFETIME = 1234
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ")


@pytest.fixture(scope="module")
def idp() -> Iterator[DevIssuer]:
    """This module's own issuer: some tests break or rotate issuers, never the session one."""
    with DevIssuer() as dev:
        yield dev


@pytest.fixture(scope="module")
def stranger() -> SigningKey:
    """A key the issuer never published."""
    return SigningKey.generate()


@pytest.fixture
def entra(idp: DevIssuer) -> Iterator[EntraEmulator]:
    with EntraEmulator(token_lifetime=LIFETIME) as emulator:
        emulator.add_tenant(TENANT)
        emulator.add_application(TENANT, CLIENT)
        emulator.add_federated_credential(TENANT, CLIENT, issuer=idp.url, subject=SUBJECT)
        emulator.add_application(TENANT, BARE_CLIENT)
        emulator.add_tenant(OTHER_TENANT)
        emulator.add_application(OTHER_TENANT, OTHER_CLIENT)
        yield emulator


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.trust_env = False  # loopback only; no proxy from the environment
        yield session


def assertion(idp: DevIssuer, **overrides: Any) -> str:
    """A token as zuplo-sts presents it to Entra: ``aud`` the exchange audience, short-lived."""
    claims = idp.claims(AZURE_EXCHANGE_AUDIENCE, lifetime=300, sub=SUBJECT)
    claims.update(overrides)
    return idp.mint({k: v for k, v in claims.items() if v is not None})


def form(token: str, **overrides: str | None) -> dict[str, str]:
    fields: dict[str, str | None] = {
        "client_id": CLIENT,
        "scope": SCOPE,
        "grant_type": "client_credentials",
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_assertion": token,
    }
    fields.update(overrides)
    return {k: v for k, v in fields.items() if v is not None}


def exchange(
    http: requests.Session,
    entra: EntraEmulator,
    token: str,
    *,
    tenant: str = TENANT,
    **overrides: str | None,
) -> requests.Response:
    return http.post(entra.token_url(tenant), data=form(token, **overrides), timeout=10)


def assert_refused(response: requests.Response, status: int, error: str, code: int) -> str:
    """Entra's error body, every field; returns the message after ``AADSTS<n>: ``."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    body = response.json()
    assert set(body) == {
        "error",
        "error_description",
        "error_codes",
        "timestamp",
        "trace_id",
        "correlation_id",
        "error_uri",
    }
    assert body["error"] == error
    assert body["error_codes"] == [code]
    description = body["error_description"]
    assert description.startswith(f"AADSTS{code}: ")
    trace, correlation = uuid.UUID(body["trace_id"]), uuid.UUID(body["correlation_id"])
    assert trace != correlation
    assert f"\r\nTrace ID: {trace}\r\nCorrelation ID: {correlation}\r\n" in description
    assert TIMESTAMP.fullmatch(body["timestamp"])
    assert description.endswith(f"\r\nTimestamp: {body['timestamp']}")
    assert body["error_uri"].endswith(f"/error?code={code}")
    message: str = description.removeprefix(f"AADSTS{code}: ").split("\r\n")[0]
    return message


# -- success ---------------------------------------------------------------------------------


def test_a_federated_assertion_gets_an_access_token(
    http: requests.Session, entra: EntraEmulator, idp: DevIssuer
) -> None:
    token = assertion(idp)
    first = exchange(http, entra, token)
    second = exchange(http, entra, token)

    assert first.status_code == 200, first.text
    assert first.headers["Content-Type"] == "application/json; charset=utf-8"
    assert "no-store" in first.headers["Cache-Control"]
    body = first.json()
    assert set(body) == {"token_type", "expires_in", "ext_expires_in", "access_token"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == body["ext_expires_in"] == LIFETIME
    access_token = body["access_token"]
    assert isinstance(access_token, str)
    assert len(access_token) >= 40
    assert access_token not in token
    assert second.json()["access_token"] != access_token

    assert entra.issued[0] == IssuedToken(TENANT, CLIENT, SCOPE, access_token, LIFETIME, SUBJECT)
    assert len(entra.issued) == 2
    assert access_token not in repr(entra.issued[0])


def test_every_request_is_recorded_refused_or_not(
    http: requests.Session, entra: EntraEmulator, idp: DevIssuer
) -> None:
    exchange(http, entra, assertion(idp))
    exchange(http, entra, assertion(idp), client_id=OTHER_CLIENT)
    http.get(f"{entra.authority_url}/{TENANT}/v2.0/.well-known/openid-configuration", timeout=10)

    assert [(r.method, r.path) for r in entra.requests] == [
        ("POST", f"/{TENANT}/oauth2/v2.0/token"),
        ("POST", f"/{TENANT}/oauth2/v2.0/token"),
        ("GET", f"/{TENANT}/v2.0/.well-known/openid-configuration"),
    ]
    refused = entra.requests[1]
    assert refused.body["client_id"] == OTHER_CLIENT
    assert refused.body["grant_type"] == "client_credentials"
    assert refused.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert b"client_assertion=" in refused.raw
    assert len(entra.issued) == 1


def test_the_assertion_may_carry_several_audiences(
    http: requests.Session, entra: EntraEmulator, idp: DevIssuer
) -> None:
    token = assertion(idp, aud=["https://sts.example.test", AZURE_EXCHANGE_AUDIENCE])
    assert exchange(http, entra, token).status_code == 200


def test_the_credential_is_chosen_by_issuer_and_subject(
    http: requests.Session, entra: EntraEmulator, idp: DevIssuer
) -> None:
    entra.add_federated_credential(TENANT, CLIENT, issuer=idp.url, subject="mapping:second")
    response = exchange(http, entra, assertion(idp, sub="mapping:second"))
    assert response.status_code == 200, response.text
    assert entra.issued[0].subject == "mapping:second"


def test_the_arm_resource_may_be_written_with_a_trailing_slash(
    http: requests.Session, entra: EntraEmulator, idp: DevIssuer
) -> None:
    response = exchange(http, entra, assertion(idp), scope="https://management.azure.com//.default")
    assert response.status_code == 200, response.text


def test_a_caller_client_request_id_becomes_the_correlation_id(
    http: requests.Session, entra: EntraEmulator, idp: DevIssuer
) -> None:
    correlation = str(uuid.uuid4())
    response = http.post(
        entra.token_url(TENANT),
        data=form(assertion(idp), client_id=OTHER_CLIENT),
        headers={"client-request-id": correlation},
        timeout=10,
    )
    assert_refused(response, 400, "unauthorized_client", 700016)
    assert response.json()["correlation_id"] == correlation


def test_concurrent_exchanges_are_all_answered_and_recorded(
    http: requests.Session, entra: EntraEmulator, idp: DevIssuer
) -> None:
    token = assertion(idp)

    def one(_: int) -> int:
        with requests.Session() as session:
            session.trust_env = False
            return exchange(session, entra, token).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(one, range(16)))
    assert statuses == [200] * 16
    assert len(entra.requests) == 16
    assert len({issued.access_token for issued in entra.issued}) == 16


# -- keys: discovery, an explicit JWKS URL, rotation, an unreachable issuer ------------------


def test_keys_are_found_through_the_issuers_discovery_document(
    http: requests.Session, entra: EntraEmulator, idp: DevIssuer, stranger: SigningKey
) -> None:
    before = idp.fetches
    assert exchange(http, entra, assertion(idp)).status_code == 200
    assert idp.fetches == before + 1
    # ... and they are the ones that decide: the same claims signed by another key fail.
    forged = idp.mint(idp.claims(AZURE_EXCHANGE_AUDIENCE, sub=SUBJECT), key=stranger)
    assert_refused(exchange(http, entra, forged), 401, "invalid_client", 700027)


def test_an_explicit_jwks_url_is_used_instead_of_discovery(
    http: requests.Session, idp: DevIssuer, stranger: SigningKey
) -> None:
    # Nothing listens at this issuer: discovery would fail, the explicit key set must serve.
    nowhere = f"http://127.0.0.1:{free_port()}/issuer"
    with EntraEmulator() as entra:
        entra.add_tenant(TENANT)
        entra.add_application(TENANT, CLIENT)
        entra.add_federated_credential(
            TENANT, CLIENT, issuer=nowhere, subject=SUBJECT, jwks_url=idp.jwks_url
        )
        before = idp.fetches
        ok = exchange(http, entra, assertion(idp, iss=nowhere))
        assert ok.status_code == 200, ok.text
        assert idp.fetches == before + 1
        forged = idp.mint(
            idp.claims(AZURE_EXCHANGE_AUDIENCE, sub=SUBJECT, iss=nowhere), key=stranger
        )
        assert_refused(exchange(http, entra, forged), 401, "invalid_client", 700027)


class Discovery:
    """An issuer whose discovery document names a key set elsewhere (not at the usual path)."""

    def __init__(self, jwks_uri: str) -> None:
        self.hits = 0
        served = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/tenant-x/.well-known/openid-configuration":
                    self.send_error(404)
                    return
                served.hits += 1
                data = json.dumps({"issuer": served.url, "jwks_uri": jwks_uri}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/tenant-x"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_jwks_uri_is_read_from_discovery_not_guessed(
    http: requests.Session, idp: DevIssuer
) -> None:
    discovery = Discovery(idp.jwks_url)
    try:
        with EntraEmulator() as entra:
            entra.add_tenant(TENANT)
            entra.add_application(TENANT, CLIENT)
            entra.add_federated_credential(TENANT, CLIENT, issuer=discovery.url, subject=SUBJECT)
            before = idp.fetches
            response = exchange(http, entra, assertion(idp, iss=discovery.url))
            assert response.status_code == 200, response.text
            assert (discovery.hits, idp.fetches) == (1, before + 1)
    finally:
        discovery.close()


def test_a_rotated_key_is_trusted_at_once(http: requests.Session) -> None:
    with DevIssuer() as rotating, EntraEmulator() as entra:
        entra.add_tenant(TENANT)
        entra.add_application(TENANT, CLIENT)
        entra.add_federated_credential(TENANT, CLIENT, issuer=rotating.url, subject=SUBJECT)
        old = assertion(rotating)
        assert exchange(http, entra, old).status_code == 200
        rotating.rotate(keep_old=False)
        assert exchange(http, entra, assertion(rotating)).status_code == 200
        assert_refused(exchange(http, entra, old), 401, "invalid_client", 700027)


def test_an_unreachable_issuer_is_an_oidc_endpoint_failure(
    http: requests.Session, idp: DevIssuer
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/issuer"
    with EntraEmulator() as entra:
        entra.add_tenant(TENANT)
        entra.add_application(TENANT, CLIENT)
        entra.add_federated_credential(TENANT, CLIENT, issuer=nowhere, subject=SUBJECT)
        started = time.monotonic()
        response = exchange(http, entra, assertion(idp, iss=nowhere))
        assert_refused(response, 400, "invalid_request", 50166)
        assert time.monotonic() - started < 5


def test_a_broken_key_set_is_an_oidc_endpoint_failure(http: requests.Session) -> None:
    with DevIssuer() as broken, EntraEmulator() as entra:
        entra.add_tenant(TENANT)
        entra.add_application(TENANT, CLIENT)
        entra.add_federated_credential(TENANT, CLIENT, issuer=broken.url, subject=SUBJECT)
        broken.jwks_status = 500
        assert_refused(exchange(http, entra, assertion(broken)), 400, "invalid_request", 50166)
        broken.jwks_status, broken.jwks_body = 200, b"not json"
        assert_refused(exchange(http, entra, assertion(broken)), 400, "invalid_request", 50166)


def test_a_slow_key_set_times_out_briefly(http: requests.Session) -> None:
    with DevIssuer() as slow, EntraEmulator() as entra:
        entra.add_tenant(TENANT)
        entra.add_application(TENANT, CLIENT)
        entra.add_federated_credential(TENANT, CLIENT, issuer=slow.url, subject=SUBJECT)
        slow.jwks_delay = 4.0
        started = time.monotonic()
        response = exchange(http, entra, assertion(slow))
        assert time.monotonic() - started < 3.5
        assert_refused(response, 400, "invalid_request", 50166)


def test_discovery_naming_another_issuer_is_not_trusted(
    http: requests.Session, idp: DevIssuer
) -> None:
    # The issuer's discovery document says ``idp.url``, not ``idp.url + "/"``.
    with EntraEmulator() as entra:
        entra.add_tenant(TENANT)
        entra.add_application(TENANT, CLIENT)
        entra.add_federated_credential(TENANT, CLIENT, issuer=idp.url + "/", subject=SUBJECT)
        response = exchange(http, entra, assertion(idp, iss=idp.url + "/"))
        assert_refused(response, 400, "invalid_request", 50166)


# -- refusals, one per check -----------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A token request broken one way, and Entra's answer to it."""

    name: str
    request: Callable[[requests.Session, EntraEmulator, DevIssuer, SigningKey], requests.Response]
    status: int
    error: str
    code: int
    mentions: str = ""  # text the message must contain (what Entra echoes)


def post_raw(
    body: bytes | str, content_type: str = "application/x-www-form-urlencoded"
) -> Callable[[requests.Session, EntraEmulator, DevIssuer, SigningKey], requests.Response]:
    def request(
        http: requests.Session, entra: EntraEmulator, idp: DevIssuer, key: SigningKey
    ) -> requests.Response:
        return http.post(
            entra.token_url(TENANT), data=body, headers={"Content-Type": content_type}, timeout=10
        )

    return request


def with_form(
    tenant: str = TENANT, **overrides: str | None
) -> Callable[[requests.Session, EntraEmulator, DevIssuer, SigningKey], requests.Response]:
    def request(
        http: requests.Session, entra: EntraEmulator, idp: DevIssuer, key: SigningKey
    ) -> requests.Response:
        return exchange(http, entra, assertion(idp), tenant=tenant, **overrides)

    return request


def without(
    name: str,
) -> Callable[[requests.Session, EntraEmulator, DevIssuer, SigningKey], requests.Response]:
    def request(
        http: requests.Session, entra: EntraEmulator, idp: DevIssuer, key: SigningKey
    ) -> requests.Response:
        fields = form(assertion(idp))
        del fields[name]
        return http.post(entra.token_url(TENANT), data=fields, timeout=10)

    return request


def with_token(
    make: Callable[[DevIssuer, SigningKey], str],
) -> Callable[[requests.Session, EntraEmulator, DevIssuer, SigningKey], requests.Response]:
    def request(
        http: requests.Session, entra: EntraEmulator, idp: DevIssuer, key: SigningKey
    ) -> requests.Response:
        return exchange(http, entra, make(idp, key))

    return request


def raw_jws(idp: DevIssuer, header: dict[str, Any], **claims: Any) -> str:
    payload = idp.claims(AZURE_EXCHANGE_AUDIENCE, sub=SUBJECT)
    payload.update(claims)
    return idp.sign(json.dumps(header).encode(), json.dumps(payload).encode())


def tampered(idp: DevIssuer, key: SigningKey) -> str:
    """A genuine signature over other claims: the payload swapped after signing."""
    header, _, signature = assertion(idp).split(".")
    other = b64url(json.dumps(idp.claims(AZURE_EXCHANGE_AUDIENCE, sub=SUBJECT, x=1)).encode())
    return f"{header}.{other}.{signature}"


NOW = int(time.time())
CASES = [
    Case("unknown tenant", with_form(tenant=UNKNOWN_TENANT), 400, "invalid_request", 90002),
    Case(
        "tenant not a GUID",
        with_form(tenant="contoso.onmicrosoft.com"),
        400,
        "invalid_request",
        90002,
        "contoso.onmicrosoft.com",
    ),
    Case(
        "JSON body",
        post_raw(json.dumps({"grant_type": "client_credentials"}), "application/json"),
        400,
        "invalid_request",
        900144,
        "'grant_type'",
    ),
    Case("body not UTF-8", post_raw(b"grant_type=\xff\xfe"), 400, "invalid_request", 90014),
    Case("body not a form", post_raw(b"grant_type&&="), 400, "invalid_request", 90014),
    Case(
        "repeated parameter",
        post_raw(f"grant_type=client_credentials&scope={SCOPE}&scope={SCOPE}"),
        400,
        "invalid_request",
        9000411,
        "'scope' is duplicated",
    ),
    *[
        Case(
            f"missing {name}",
            without(name),
            400,
            "invalid_request",
            900144,
            f"following parameter: '{name}'",
        )
        for name in (
            "client_id",
            "grant_type",
            "scope",
            "client_assertion_type",
            "client_assertion",
        )
    ],
    Case(
        "empty client_id",
        with_form(client_id=""),
        400,
        "invalid_request",
        900144,
        "'client_id'",
    ),
    Case(
        "password grant",
        with_form(grant_type="password"),
        400,
        "unsupported_grant_type",
        70003,
        "'password'",
    ),
    Case(
        "token exchange grant",
        with_form(grant_type="urn:ietf:params:oauth:grant-type:token-exchange"),
        400,
        "unsupported_grant_type",
        70003,
    ),
    Case(
        "SAML assertion type",
        with_form(client_assertion_type="urn:ietf:params:oauth:client-assertion-type:saml2-bearer"),
        400,
        "invalid_request",
        90011,
    ),
    Case(
        "unknown client",
        with_form(client_id=UNKNOWN_CLIENT),
        400,
        "unauthorized_client",
        700016,
    ),
    Case(
        "client of another tenant",
        with_form(client_id=OTHER_CLIENT),
        400,
        "unauthorized_client",
        700016,
        OTHER_CLIENT,
    ),
    Case(
        "client of this tenant asked of another",
        with_form(tenant=OTHER_TENANT),
        400,
        "unauthorized_client",
        700016,
        f"'{CLIENT}' was not found in the directory '{OTHER_TENANT}'",
    ),
    Case(
        "client id not a GUID",
        with_form(client_id="billing-app"),
        400,
        "unauthorized_client",
        700016,
    ),
    Case(
        "scope without /.default",
        with_form(scope="https://management.azure.com/user_impersonation"),
        400,
        "invalid_scope",
        1002012,
        "user_impersonation",
    ),
    Case(
        "bare resource as scope",
        with_form(scope="https://management.azure.com"),
        400,
        "invalid_scope",
        1002012,
    ),
    Case(
        "two scopes",
        with_form(scope=f"{SCOPE} https://graph.microsoft.com/.default"),
        400,
        "invalid_scope",
        70011,
    ),
    Case(
        "the same scope twice",
        with_form(scope=f"{SCOPE} {SCOPE}"),
        400,
        "invalid_scope",
        70011,
    ),
    Case(
        "unknown resource",
        with_form(scope="https://elsewhere.example/.default"),
        400,
        "invalid_resource",
        500011,
        f"https://elsewhere.example was not found in the tenant named {TENANT}",
    ),
    Case(
        "empty resource",
        with_form(scope="/.default"),
        400,
        "invalid_resource",
        500011,
    ),
    Case(
        "assertion not a JWT",
        with_form(client_assertion="not-a-jwt"),
        401,
        "invalid_client",
        50027,
    ),
    Case(
        "assertion with four parts",
        with_token(lambda idp, key: assertion(idp) + ".x"),
        401,
        "invalid_client",
        50027,
    ),
    Case(
        "assertion not base64url",
        with_token(lambda idp, key: "e30.e30!.sig"),
        401,
        "invalid_client",
        50027,
    ),
    Case(
        "alg HS256",
        with_token(lambda idp, key: raw_jws(idp, {"alg": "HS256", "kid": idp.key.kid})),
        401,
        "invalid_client",
        50027,
    ),
    Case(
        "alg none",
        with_token(lambda idp, key: raw_jws(idp, {"alg": "none", "kid": idp.key.kid})),
        401,
        "invalid_client",
        50027,
    ),
    Case(
        "no kid",
        with_token(lambda idp, key: raw_jws(idp, {"alg": "RS256", "typ": "JWT"})),
        401,
        "invalid_client",
        50027,
    ),
    Case(
        "unknown issuer",
        with_token(lambda idp, key: assertion(idp, iss="https://token.actions.example")),
        401,
        "invalid_client",
        700211,
        "issuer 'https://token.actions.example'",
    ),
    Case(
        "no issuer",
        with_token(lambda idp, key: assertion(idp, iss=None)),
        401,
        "invalid_client",
        700211,
    ),
    Case(
        "an app of the tenant that trusts no one",
        with_form(client_id=BARE_CLIENT),
        401,
        "invalid_client",
        700211,
    ),
    Case(
        "wrong subject",
        with_token(lambda idp, key: assertion(idp, sub="mapping:other")),
        401,
        "invalid_client",
        700213,
        "subject 'mapping:other'",
    ),
    Case(
        "wrong audience",
        with_token(lambda idp, key: assertion(idp, aud="https://sts.example.test")),
        401,
        "invalid_client",
        700212,
        "audience 'https://sts.example.test'",
    ),
    Case(
        "no audience",
        with_token(lambda idp, key: assertion(idp, aud=None)),
        401,
        "invalid_client",
        700212,
    ),
    Case(
        "signed by another key under the issuer's kid",
        with_token(
            lambda idp, key: idp.mint(
                idp.claims(AZURE_EXCHANGE_AUDIENCE, sub=SUBJECT),
                header={"alg": "RS256", "typ": "JWT", "kid": idp.key.kid},
                key=key,
            )
        ),
        401,
        "invalid_client",
        700027,
        "did not match",
    ),
    Case(
        "signed by an unpublished key",
        with_token(
            lambda idp, key: idp.mint(idp.claims(AZURE_EXCHANGE_AUDIENCE, sub=SUBJECT), key=key)
        ),
        401,
        "invalid_client",
        700027,
        "The key was not found",
    ),
    Case("payload swapped after signing", with_token(tampered), 401, "invalid_client", 700027),
    Case(
        "empty signature",
        with_token(lambda idp, key: assertion(idp).rsplit(".", 1)[0] + "."),
        401,
        "invalid_client",
        700027,
    ),
    Case(
        "expired",
        with_token(lambda idp, key: assertion(idp, exp=int(time.time()) - 5)),
        401,
        "invalid_client",
        700024,
    ),
    Case(
        "expiring this second",
        with_token(lambda idp, key: assertion(idp, exp=int(time.time()))),
        401,
        "invalid_client",
        700024,
    ),
    Case(
        "no exp",
        with_token(lambda idp, key: assertion(idp, exp=None)),
        401,
        "invalid_client",
        700024,
    ),
    Case(
        "exp not a number",
        with_token(lambda idp, key: assertion(idp, exp=str(int(time.time()) + 300))),
        401,
        "invalid_client",
        700024,
    ),
    Case(
        "not valid yet",
        with_token(lambda idp, key: assertion(idp, nbf=int(time.time()) + NBF_SKEW_SECONDS + 30)),
        401,
        "invalid_client",
        700024,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_each_check_refuses_with_entras_answer(
    case: Case,
    http: requests.Session,
    entra: EntraEmulator,
    idp: DevIssuer,
    stranger: SigningKey,
) -> None:
    message = assert_refused(
        case.request(http, entra, idp, stranger), case.status, case.error, case.code
    )
    assert case.mentions in message
    assert entra.issued == []
    assert len(entra.requests) == 1


def test_a_small_clock_skew_in_nbf_is_allowed(
    http: requests.Session, entra: EntraEmulator, idp: DevIssuer
) -> None:
    token = assertion(idp, nbf=int(time.time()) + NBF_SKEW_SECONDS - 30)
    assert exchange(http, entra, token).status_code == 200


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        # The tenant is checked before the body.
        (with_form(tenant=UNKNOWN_TENANT, grant_type=None), 90002),
        # A missing parameter before a wrong grant type.
        (with_form(grant_type="password", client_id=None), 900144),
        # The grant type before the assertion type, before the client, before the scope.
        (with_form(grant_type="password", client_assertion_type="x"), 70003),
        (with_form(client_assertion_type="x", client_id=OTHER_CLIENT), 90011),
        (with_form(client_id=OTHER_CLIENT, scope="openid"), 700016),
        (with_form(scope="openid", client_assertion="not-a-jwt"), 1002012),
        # The claims pick a credential before the signature is checked ...
        (
            with_token(
                lambda idp, key: idp.mint(
                    idp.claims(AZURE_EXCHANGE_AUDIENCE, sub="mapping:other"), key=key
                )
            ),
            700213,
        ),
        # ... and the signature is checked before the validity period.
        (
            with_token(
                lambda idp, key: idp.mint(
                    idp.claims(AZURE_EXCHANGE_AUDIENCE, sub=SUBJECT, exp=NOW - 600), key=key
                )
            ),
            700027,
        ),
    ],
    ids=[
        "tenant-first",
        "missing-before-grant",
        "grant-before-assertion-type",
        "assertion-type-before-client",
        "client-before-scope",
        "scope-before-assertion",
        "claims-before-signature",
        "signature-before-time",
    ],
)
def test_checks_run_in_entras_order(
    request_: Callable[[requests.Session, EntraEmulator, DevIssuer, SigningKey], requests.Response],
    code: int,
    http: requests.Session,
    entra: EntraEmulator,
    idp: DevIssuer,
    stranger: SigningKey,
) -> None:
    body = request_(http, entra, idp, stranger).json()
    assert body["error_codes"] == [code], body["error_description"]


def test_the_token_endpoint_takes_only_post(http: requests.Session, entra: EntraEmulator) -> None:
    response = http.get(entra.token_url(TENANT), timeout=10)
    assert_refused(response, 400, "invalid_request", 900561)


# -- faults and delay ------------------------------------------------------------------------


def test_fail_next_429_sends_retry_after_then_recovers(
    http: requests.Session, entra: EntraEmulator, idp: DevIssuer
) -> None:
    entra.fail_next(429, retry_after=7)
    throttled = exchange(http, entra, assertion(idp))
    assert_refused(throttled, 429, "temporarily_unavailable", 90055)
    assert throttled.headers["Retry-After"] == "7"
    recovered = exchange(http, entra, assertion(idp))
    assert recovered.status_code == 200
    assert "Retry-After" not in recovered.headers
    assert len(entra.issued) == 1


def test_fail_next_503_comes_before_any_check_for_count_requests(
    http: requests.Session, entra: EntraEmulator, idp: DevIssuer
) -> None:
    entra.fail_next(503, error="temporarily_unavailable", aadsts=90033, count=2)
    # Discovery is not a token request: it takes no fault.
    discovery = f"{entra.authority_url}/{TENANT}/v2.0/.well-known/openid-configuration"
    assert http.get(discovery, timeout=10).status_code == 200
    # Even an unknown tenant gets the fault: it comes first.
    unknown = exchange(http, entra, assertion(idp), tenant=UNKNOWN_TENANT)
    assert_refused(unknown, 503, "temporarily_unavailable", 90033)
    assert "Retry-After" not in unknown.headers
    assert_refused(exchange(http, entra, assertion(idp)), 503, "temporarily_unavailable", 90033)
    assert exchange(http, entra, assertion(idp)).status_code == 200


def test_fail_next_500(http: requests.Session, entra: EntraEmulator, idp: DevIssuer) -> None:
    entra.fail_next(500, error="server_error", aadsts=50000)
    assert_refused(exchange(http, entra, assertion(idp)), 500, "server_error", 50000)


def test_delay_holds_every_answer_back(
    http: requests.Session, entra: EntraEmulator, idp: DevIssuer
) -> None:
    token = assertion(idp)
    started = time.monotonic()
    assert exchange(http, entra, token).status_code == 200
    quick = time.monotonic() - started

    entra.delay = 0.4
    started = time.monotonic()
    assert exchange(http, entra, token).status_code == 200
    assert http.get(f"{entra.authority_url}/nowhere", timeout=10).status_code == 404
    slow = time.monotonic() - started
    assert 0.8 <= slow < 0.8 + quick * 2 + 1.5
    with pytest.raises(requests.Timeout):
        http.post(entra.token_url(TENANT), data=form(token), timeout=0.1)


def test_clear_forgets_requests_issued_faults_and_delay(
    http: requests.Session, entra: EntraEmulator, idp: DevIssuer
) -> None:
    exchange(http, entra, assertion(idp))
    entra.fail_next(503)
    entra.delay = 5.0
    entra.clear()
    assert (entra.requests, entra.issued, entra.delay) == ([], [], 0.0)
    # The trust stays; the fault is gone.
    assert exchange(http, entra, assertion(idp)).status_code == 200


# -- discovery and other paths ---------------------------------------------------------------


def test_a_tenant_publishes_its_discovery_document(
    http: requests.Session, entra: EntraEmulator, idp: DevIssuer
) -> None:
    url = f"{entra.authority_url}/{TENANT}/v2.0/.well-known/openid-configuration"
    response = http.get(url, timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    document = response.json()
    assert document["issuer"] == f"{entra.authority_url}/{TENANT}/v2.0"
    assert document["token_endpoint"] == entra.token_url(TENANT)
    assert "private_key_jwt" in document["token_endpoint_auth_methods_supported"]
    keys = http.get(document["jwks_uri"], timeout=10)
    assert keys.json() == {"keys": []}
    # The endpoint it names is the one that answers.
    token = http.post(document["token_endpoint"], data=form(assertion(idp)), timeout=10)
    assert token.status_code == 200


@pytest.mark.parametrize("tenant", [UNKNOWN_TENANT, "contoso.onmicrosoft.com"])
def test_an_unknown_tenant_has_no_discovery_document(
    tenant: str, http: requests.Session, entra: EntraEmulator
) -> None:
    url = f"{entra.authority_url}/{tenant}/v2.0/.well-known/openid-configuration"
    message = assert_refused(http.get(url, timeout=10), 400, "invalid_tenant", 90002)
    assert f"'{tenant}'" in message


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("POST", f"/{TENANT}/oauth2/token"),  # the v1.0 endpoint
        ("POST", f"/{TENANT}/v2.0/.well-known/openid-configuration"),
        ("GET", f"/{TENANT}/oauth2/v2.0/token/extra"),
    ],
)
def test_anything_else_is_not_found(
    method: str, path: str, http: requests.Session, entra: EntraEmulator
) -> None:
    response = http.request(method, entra.authority_url + path, timeout=10)
    assert response.status_code == 404
    assert entra.requests[-1].path == path


# -- configuration ---------------------------------------------------------------------------


def test_authority_url_needs_a_started_emulator() -> None:
    emulator = EntraEmulator()
    with pytest.raises(RuntimeError):
        _ = emulator.authority_url
    with emulator:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", emulator.authority_url)


def test_configuration_is_checked_as_entra_checks_it() -> None:
    entra = EntraEmulator()
    with pytest.raises(ValueError, match="GUID"):
        entra.add_tenant("contoso.onmicrosoft.com")
    with pytest.raises(ValueError, match="no tenant"):
        entra.add_application(TENANT, CLIENT)
    entra.add_tenant(TENANT, resources=("api://orders",))
    assert entra.tenants[TENANT].resources == ("api://orders",)
    assert DEFAULT_RESOURCES[0] == "https://management.azure.com"
    with pytest.raises(ValueError, match="GUID"):
        entra.add_application(TENANT, "billing-app")
    with pytest.raises(ValueError, match="no application"):
        entra.add_federated_credential(TENANT, CLIENT, issuer="https://i", subject="s")
    entra.add_application(TENANT, CLIENT)
    entra.add_federated_credential(TENANT, CLIENT, issuer="https://i", subject="s0")
    with pytest.raises(ValueError, match="exists"):
        entra.add_federated_credential(TENANT, CLIENT, issuer="https://i", subject="s0")
    for n in range(1, 20):
        entra.add_federated_credential(TENANT, CLIENT, issuer="https://i", subject=f"s{n}")
    with pytest.raises(ValueError, match="at most 20"):
        entra.add_federated_credential(TENANT, CLIENT, issuer="https://i", subject="s20")


def test_a_tenant_only_grants_its_own_resources(http: requests.Session, idp: DevIssuer) -> None:
    with EntraEmulator() as entra:
        entra.add_tenant(TENANT, resources=("api://orders",))
        entra.add_application(TENANT, CLIENT)
        entra.add_federated_credential(TENANT, CLIENT, issuer=idp.url, subject=SUBJECT)
        assert exchange(http, entra, assertion(idp), scope="api://orders/.default").ok
        refused = exchange(http, entra, assertion(idp))
        assert_refused(refused, 400, "invalid_resource", 500011)


def test_a_credential_with_its_own_audience(http: requests.Session, idp: DevIssuer) -> None:
    with EntraEmulator() as entra:
        entra.add_tenant(TENANT)
        entra.add_application(TENANT, CLIENT)
        entra.add_federated_credential(
            TENANT, CLIENT, issuer=idp.url, subject=SUBJECT, audience="https://sts.example.test"
        )
        assert exchange(http, entra, assertion(idp, aud="https://sts.example.test")).ok
        refused = exchange(http, entra, assertion(idp))
        assert_refused(refused, 401, "invalid_client", 700212)
