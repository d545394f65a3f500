"""Google-signed ID tokens (docs/reference.md, "GCP ID tokens"): the GCP emulator's
``generateIdToken`` and certificate endpoints, verified with google-auth as a Cloud Run backend
would; and :meth:`GcpProvider.issue` with ``audience`` through real google-auth against it."""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import logging
import time
from typing import Any

import google.auth.transport.requests
import google.oauth2.id_token
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from sts.config import Settings
from sts.dev.gcp_emulator import GOOGLE_ISSUER, GcpEmulator
from sts.dev.issuer import DevIssuer
from sts.errors import InvalidTarget, OAuthError, TemporarilyUnavailable
from sts.identity.principal import Principal
from sts.mappings.spec import GcpTarget, MappingSpec
from sts.providers.base import ACCESS_TOKEN, ID_TOKEN, Credentials
from sts.providers.gcp import GcpProvider
from tests.conftest import AUDIENCE
from tests.unit.providers.conftest import SERVICE_ACCOUNT, WIF_PROVIDER

CLOUD = "https://www.googleapis.com/auth/cloud-platform"
IAM_SCOPE = "https://www.googleapis.com/auth/iam"
ORDERS = "https://orders-abc123-uc.a.run.app"
BILLING = "https://billing-abc123-uc.a.run.app"
GENERATE_ID_TOKEN = f"/v1/projects/-/serviceAccounts/{SERVICE_ACCOUNT}:generateIdToken"
GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TYPE = "urn:ietf:params:oauth:token-type:access_token"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, payload, _ = token.split(".")
    pad = "=" * (-len(payload) % 4)
    return (
        json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))),
        json.loads(base64.urlsafe_b64decode(payload + pad)),
    )


def fake_jwt(claims: dict[str, Any]) -> str:
    """An unsigned token of Google's shape: the provider reads, never verifies, the payload."""
    header = b64(json.dumps({"alg": "RS256", "kid": "k", "typ": "JWT"}).encode())
    return f"{header}.{b64(json.dumps(claims).encode())}.{b64(b'signature-bytes-' * 8)}"


def verify(token: str, emulator: GcpEmulator, audience: str) -> Any:
    """What a Cloud Run backend does with the token (google-auth, the emulator's certs)."""
    return google.oauth2.id_token.verify_token(
        token,
        google.auth.transport.requests.Request(),
        audience=audience,
        certs_url=emulator.certs_url,
    )


# -- the emulator ------------------------------------------------------------------------


def exchange(emulator: GcpEmulator, token: str, scope: str = CLOUD) -> str:
    form = {
        "grant_type": GRANT,
        "subject_token": token,
        "subject_token_type": JWT_TYPE,
        "audience": WIF_PROVIDER,
        "requested_token_type": ACCESS_TYPE,
        "scope": scope,
    }
    answer = requests.post(emulator.sts_url, data=form, timeout=5)
    assert answer.status_code == 200, answer.text
    federated: str = answer.json()["access_token"]
    return federated


@pytest.fixture
def federated(gcp_emulator: GcpEmulator, subject_token: str) -> str:
    return exchange(gcp_emulator, subject_token)


def generate_id_token(
    emulator: GcpEmulator,
    bearer: str,
    body: Any,
    email: str = SERVICE_ACCOUNT,
    *,
    raw: bytes | None = None,
    content_type: str = "application/json",
) -> requests.Response:
    url = f"{emulator.iam_url}/v1/projects/-/serviceAccounts/{email}:generateIdToken"
    data = raw if raw is not None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {bearer}", "Content-Type": content_type}
    return requests.post(url, data=data, headers=headers, timeout=5)


def test_generate_id_token_has_googles_shape(gcp_emulator: GcpEmulator, federated: str) -> None:
    before = int(time.time())
    response = generate_id_token(
        gcp_emulator, federated, {"audience": ORDERS, "includeEmail": True}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"token"}
    header, claims = unverified(body["token"])
    assert header == {"alg": "RS256", "kid": gcp_emulator.kid, "typ": "JWT"}
    assert set(claims) == {"iss", "aud", "azp", "sub", "email", "email_verified", "iat", "exp"}
    assert claims["iss"] == GOOGLE_ISSUER == "https://accounts.google.com"
    assert claims["aud"] == ORDERS
    assert claims["sub"] == claims["azp"]
    assert claims["sub"].isdigit()
    assert len(claims["sub"]) == 21
    assert claims["sub"] == gcp_emulator.service_account_id(SERVICE_ACCOUNT)
    assert claims["sub"] != gcp_emulator.service_account_id("other@x.iam.gserviceaccount.com")
    assert claims["email"] == SERVICE_ACCOUNT
    assert claims["email_verified"] is True
    assert before <= claims["iat"] <= time.time()
    assert claims["exp"] == claims["iat"] + 3600
    assert gcp_emulator.issued[-1] == body["token"]


def test_google_auth_verifies_it_against_the_emulators_certificates(
    gcp_emulator: GcpEmulator, federated: str
) -> None:
    token = generate_id_token(
        gcp_emulator, federated, {"audience": ORDERS, "includeEmail": True}
    ).json()["token"]
    claims = verify(token, gcp_emulator, ORDERS)
    assert claims["email"] == SERVICE_ACCOUNT
    assert claims["aud"] == ORDERS
    with pytest.raises(ValueError, match="audience"):
        verify(token, gcp_emulator, BILLING)
    # A token signed by anyone else does not verify.
    forged = token.rsplit(".", 1)[0] + "." + b64(b"\x00" * 256)
    with pytest.raises(ValueError, match="signature"):
        verify(forged, gcp_emulator, ORDERS)


def test_without_include_email_there_is_no_email(gcp_emulator: GcpEmulator, federated: str) -> None:
    for body in ({"audience": ORDERS}, {"audience": ORDERS, "includeEmail": False}):
        response = generate_id_token(gcp_emulator, federated, body)
        assert response.status_code == 200, response.text
        _, claims = unverified(response.json()["token"])
        assert "email" not in claims
        assert "email_verified" not in claims
        assert claims["aud"] == ORDERS


def test_certificates_are_published_as_google_publishes_them(gcp_emulator: GcpEmulator) -> None:
    assert gcp_emulator.certs_url == gcp_emulator.base_url + "/oauth2/v1/certs"
    assert gcp_emulator.jwks_url == gcp_emulator.base_url + "/oauth2/v3/certs"
    pem = requests.get(gcp_emulator.certs_url, timeout=5)
    assert pem.status_code == 200
    assert pem.headers["Content-Type"].startswith("application/json")
    ((kid, certificate),) = pem.json().items()
    cert = x509.load_pem_x509_certificate(certificate.encode())
    key = cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    assert kid == gcp_emulator.kid
    jwks = requests.get(gcp_emulator.jwks_url, timeout=5)
    assert jwks.status_code == 200
    (jwk,) = jwks.json()["keys"]
    assert jwk["kid"] == kid
    assert (jwk["kty"], jwk["alg"], jwk["use"]) == ("RSA", "RS256", "sig")
    numbers = key.public_numbers()
    pad = "=" * (-len(jwk["n"]) % 4)
    assert int.from_bytes(base64.urlsafe_b64decode(jwk["n"] + pad), "big") == numbers.n
    assert int.from_bytes(base64.urlsafe_b64decode(jwk["e"] + "=="), "big") == numbers.e
    assert [r.path for r in gcp_emulator.requests] == ["/oauth2/v1/certs", "/oauth2/v3/certs"]
    assert all(r.method == "GET" for r in gcp_emulator.requests)
    # Only GET reads them; only POST reaches the API methods.
    assert requests.post(gcp_emulator.certs_url, timeout=5).status_code == 405
    assert requests.get(gcp_emulator.sts_url, timeout=5).status_code == 405


ID_TOKEN_REJECTIONS: list[tuple[str, Any, int]] = [
    ("no audience", {"includeEmail": True}, 400),
    ("empty audience", {"audience": ""}, 400),
    ("audience not a string", {"audience": [ORDERS]}, 400),
    ("audience null", {"audience": None}, 400),
    ("includeEmail a string", {"audience": ORDERS, "includeEmail": "true"}, 400),
    ("includeEmail a number", {"audience": ORDERS, "includeEmail": 1}, 400),
    ("unknown field", {"audience": ORDERS, "scope": [CLOUD]}, 400),
    ("lifetime is not a field", {"audience": ORDERS, "lifetime": "600s"}, 400),
    ("not an object", [ORDERS], 400),
]


@pytest.mark.parametrize(
    ("case", "body", "status"), ID_TOKEN_REJECTIONS, ids=[c[0] for c in ID_TOKEN_REJECTIONS]
)
def test_generate_id_token_checks_the_body(
    gcp_emulator: GcpEmulator, federated: str, case: str, body: Any, status: int
) -> None:
    response = generate_id_token(gcp_emulator, federated, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")
    assert error["message"]
    assert gcp_emulator.issued == [federated]


def test_generate_id_token_needs_json(gcp_emulator: GcpEmulator, federated: str) -> None:
    for raw, content_type in ((b"{", "application/json"), (b"audience=x", "text/plain")):
        response = generate_id_token(
            gcp_emulator, federated, None, raw=raw, content_type=content_type
        )
        assert response.status_code == 400
        assert response.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_generate_id_token_needs_an_issued_token_a_scope_and_a_binding(
    gcp_emulator: GcpEmulator, subject_token: str, federated: str
) -> None:
    body = {"audience": ORDERS, "includeEmail": True}
    unknown = generate_id_token(gcp_emulator, "ya29.made-up", body)
    assert (unknown.status_code, unknown.json()["error"]["status"]) == (401, "UNAUTHENTICATED")
    unbound = generate_id_token(
        gcp_emulator, federated, body, email="other@x.iam.gserviceaccount.com"
    )
    assert (unbound.status_code, unbound.json()["error"]["status"]) == (403, "PERMISSION_DENIED")
    assert "iam.serviceAccounts.getOpenIdToken" in unbound.json()["error"]["message"]
    narrow = exchange(gcp_emulator, subject_token, "https://www.googleapis.com/auth/devstorage")
    weak = generate_id_token(gcp_emulator, narrow, body)
    assert (weak.status_code, weak.json()["error"]["status"]) == (403, "PERMISSION_DENIED")
    for scope in (CLOUD, IAM_SCOPE):
        token = exchange(gcp_emulator, subject_token, scope)
        assert generate_id_token(gcp_emulator, token, body).status_code == 200


def test_generate_id_token_is_recorded_and_takes_faults(
    gcp_emulator: GcpEmulator, federated: str
) -> None:
    gcp_emulator.fail_next(503, {"error": {"code": 503, "status": "UNAVAILABLE"}})
    body = {"audience": ORDERS, "includeEmail": True}
    assert generate_id_token(gcp_emulator, federated, body).status_code == 503
    assert generate_id_token(gcp_emulator, federated, body).status_code == 200
    calls = [r for r in gcp_emulator.requests if r.path == GENERATE_ID_TOKEN]
    assert len(calls) == 2
    assert calls[-1].method == "POST"
    assert calls[-1].body == body
    assert calls[-1].headers["Authorization"] == f"Bearer {federated}"


def test_generate_id_token_lifetime_is_settable(issuer: DevIssuer, subject_token: str) -> None:
    with GcpEmulator() as emulator:
        emulator.add_provider(WIF_PROVIDER, issuer.url, issuer.jwks_url, [AUDIENCE])
        emulator.allow_service_account(SERVICE_ACCOUNT, WIF_PROVIDER)
        emulator.id_token_lifetime = 600
        token = generate_id_token(
            emulator, exchange(emulator, subject_token), {"audience": ORDERS}
        ).json()["token"]
        _, claims = unverified(token)
        assert claims["exp"] - claims["iat"] == 600
        # Each emulator signs with a key of its own.
        assert emulator.kid != GcpEmulator().kid


# -- the provider ------------------------------------------------------------------------


def mapping(
    audiences: tuple[str, ...] = (ORDERS,),
    service_account: str | None = SERVICE_ACCOUNT,
    scopes: tuple[str, ...] = (CLOUD,),
) -> MappingSpec:
    return MappingSpec(
        name="orders-run",
        account="my-account",
        project="my-project",
        gcp=GcpTarget(
            workload_identity_provider=WIF_PROVIDER,
            service_account=service_account,
            scopes=scopes,
            lifetime_seconds=900,
            id_token_audiences=audiences,
        ),
    )


@functools.cache
def _provider(sts_url: str, iam_url: str, **kwargs: Any) -> GcpProvider:
    settings = Settings(
        allow_http_loopback=True, gcp_sts_url=sts_url, gcp_iam_credentials_url=iam_url
    )
    return GcpProvider(settings, **kwargs)


def provider(emulator: GcpEmulator, **kwargs: Any) -> GcpProvider:
    return _provider(emulator.sts_url, emulator.iam_url, **kwargs)


def issue(
    emulator: GcpEmulator,
    principal: Principal,
    subject_token: str,
    audience: str | None = ORDERS,
    spec: MappingSpec | None = None,
    **kwargs: Any,
) -> Credentials:
    return provider(emulator, **kwargs).issue(
        principal, spec or mapping(), subject_token, (CLOUD,), audience=audience
    )


def assert_nothing_leaks(error: OAuthError, *secrets: str) -> None:
    for text in (error.description, error.cause or "", str(error)):
        for secret in secrets:
            assert secret not in text
            assert secret.rsplit(".", 1)[-1] not in text


def test_an_id_token_for_the_audience(
    gcp_emulator: GcpEmulator, principal: Principal, subject_token: str
) -> None:
    spec = mapping(audiences=(ORDERS, BILLING), scopes=("https://www.googleapis.com/auth/x",))
    creds = issue(gcp_emulator, principal, subject_token, BILLING, spec)

    sts_call, iam_call = gcp_emulator.requests
    assert sts_call.path == "/v1/token"
    assert sts_call.body == {
        "grant_type": GRANT,
        "subject_token": subject_token,
        "subject_token_type": JWT_TYPE,
        "audience": WIF_PROVIDER,
        "requested_token_type": ACCESS_TYPE,
        "scope": CLOUD,
    }
    federated, id_token = gcp_emulator.issued
    assert iam_call.method == "POST"
    assert iam_call.path == GENERATE_ID_TOKEN
    assert iam_call.headers["Authorization"] == f"Bearer {federated}"
    assert iam_call.headers["Content-Type"] == "application/json"
    assert iam_call.body == {"audience": BILLING, "includeEmail": True}

    assert creds.access_token == id_token
    assert creds.token_type == ID_TOKEN == "id_token"
    assert creds.provider == "gcp"
    assert creds.scope is None
    assert creds.aws_access_key_id is None
    _, claims = unverified(id_token)
    assert creds.expires_at == claims["exp"]
    assert id_token not in repr(creds)
    verified = verify(creds.access_token, gcp_emulator, BILLING)
    assert verified["email"] == SERVICE_ACCOUNT


def test_without_audience_an_access_token_as_before(
    gcp_emulator: GcpEmulator, principal: Principal, subject_token: str
) -> None:
    creds = issue(gcp_emulator, principal, subject_token, None)
    assert creds.token_type == ACCESS_TOKEN == "access_token"
    assert [r.path for r in gcp_emulator.requests][-1].endswith(":generateAccessToken")
    assert gcp_emulator.requests[0].body["scope"] == IAM_SCOPE
    assert creds.scope == CLOUD


def test_credentials_survive_the_plain_document_round_trip() -> None:
    creds = Credentials(provider="gcp", access_token="t", expires_at=1.5, token_type=ID_TOKEN)
    assert Credentials(**json.loads(json.dumps(dataclasses.asdict(creds)))) == creds
    older: dict[str, Any] = {
        "provider": "gcp",
        "access_token": "t",
        "expires_at": 1.5,
        "scope": "s",
    }
    assert Credentials(**older).token_type == ACCESS_TOKEN
    with pytest.raises(dataclasses.FrozenInstanceError):
        creds.token_type = ACCESS_TOKEN  # type: ignore[misc]


def test_the_expiry_is_the_tokens_exp_and_nothing_else(
    gcp_emulator: GcpEmulator, principal: Principal, subject_token: str
) -> None:
    exp = int(time.time()) + 1234
    token = fake_jwt({"aud": ORDERS, "exp": exp, "iat": exp - 3600})
    gcp_emulator.fail_next(
        200,
        {"token": token, "expireTime": "2030-01-01T00:00:00Z", "expires_in": 3600},
        path="/v1/projects/",
    )
    creds = issue(gcp_emulator, principal, subject_token)
    assert creds.access_token == token
    assert creds.expires_at == exp


def test_audience_must_be_one_of_the_mappings(
    gcp_emulator: GcpEmulator, principal: Principal, subject_token: str
) -> None:
    """The caller chose it with id_token_audience; anything else is a programming error."""
    for audience, spec in (
        (BILLING, mapping()),
        (ORDERS, mapping(audiences=())),
        (ORDERS, mapping(audiences=(), service_account=None)),
    ):
        with pytest.raises(ValueError, match="id_token_audiences"):
            issue(gcp_emulator, principal, subject_token, audience, spec)
    assert gcp_emulator.requests == []


def test_service_account_not_bound_is_permission_denied_as_for_access_tokens(
    gcp_emulator: GcpEmulator, principal: Principal, subject_token: str
) -> None:
    other = "other@my-gcp.iam.gserviceaccount.com"
    with pytest.raises(InvalidTarget) as for_id:
        issue(gcp_emulator, principal, subject_token, spec=mapping(service_account=other))
    with pytest.raises(InvalidTarget) as for_access:
        issue(gcp_emulator, principal, subject_token, None, mapping(service_account=other))
    assert for_id.value.description == for_access.value.description
    assert for_id.value.description.startswith("gcp: PERMISSION_DENIED - ")
    assert gcp_emulator.requests[1].path.endswith(":generateIdToken")
    assert_nothing_leaks(for_id.value, subject_token, *gcp_emulator.issued)


IAM_FAILURES = [
    # (status, body, headers, error class, description prefix, retry_after)
    (403, {"error": {"code": 403, "status": "PERMISSION_DENIED"}}, {}, InvalidTarget,
     "gcp: PERMISSION_DENIED - ", None),
    (404, {"error": {"code": 404, "status": "NOT_FOUND"}}, {}, InvalidTarget,
     "gcp: NOT_FOUND - ", None),
    (401, {"error": {"code": 401, "status": "UNAUTHENTICATED"}}, {}, InvalidTarget,
     "gcp: UNAUTHENTICATED - ", None),
    (400, {"error": {"code": 400, "status": "INVALID_ARGUMENT"}}, {}, InvalidTarget,
     "gcp: INVALID_ARGUMENT - ", None),
    (400, {"error": {"code": 400, "status": "FAILED_PRECONDITION"}}, {}, InvalidTarget,
     "gcp: FAILED_PRECONDITION - ", None),
    (429, {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED"}}, {}, TemporarilyUnavailable,
     "gcp: RESOURCE_EXHAUSTED - ", 5),
    (429, {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED"}}, {"Retry-After": "9"},
     TemporarilyUnavailable, "gcp: RESOURCE_EXHAUSTED - ", 9),
    (503, {"error": {"code": 503, "status": "UNAVAILABLE"}}, {}, TemporarilyUnavailable,
     "gcp: UNAVAILABLE - ", 2),
    (500, {"error": {"code": 500, "status": "INTERNAL"}}, {}, TemporarilyUnavailable,
     "gcp: INTERNAL - ", 2),
    (502, "<html>bad gateway</html>", {}, TemporarilyUnavailable, "gcp: HTTP502 - ", 2),
    (400, "<html>oops</html>", {}, TemporarilyUnavailable, "gcp: MalformedResponse - ", 2),
]  # fmt: skip


@pytest.mark.parametrize(("status", "body", "headers", "kind", "prefix", "retry"), IAM_FAILURES)
def test_iam_failures_map_exactly_as_for_generate_access_token(
    gcp_emulator: GcpEmulator,
    principal: Principal,
    subject_token: str,
    status: int,
    body: Any,
    headers: dict[str, str],
    kind: type[OAuthError],
    prefix: str,
    retry: int | None,
) -> None:
    errors = []
    for audience in (ORDERS, None):
        gcp_emulator.fail_next(status, body, path="/v1/projects/", headers=headers)
        with pytest.raises(kind) as caught:
            issue(gcp_emulator, principal, subject_token, audience)
        errors.append(caught.value)
    for_id, for_access = errors
    assert for_id.description.startswith(prefix)
    assert (for_id.description, for_id.error, for_id.retry_after, for_id.provider_code) == (
        for_access.description,
        for_access.error,
        for_access.retry_after,
        for_access.provider_code,
    )
    assert for_id.retry_after == retry
    assert gcp_emulator.requests[1].path == GENERATE_ID_TOKEN


def test_sts_refusal_stops_before_generate_id_token(
    gcp_emulator: GcpEmulator, principal: Principal, subject_token: str
) -> None:
    gcp_emulator.fail_next(400, {"error": "invalid_grant"}, path="/v1/token")
    with pytest.raises(InvalidTarget) as caught:
        issue(gcp_emulator, principal, subject_token)
    assert caught.value.description.startswith("gcp: invalid_grant - ")
    assert [r.path for r in gcp_emulator.requests] == ["/v1/token"]


def _now() -> int:
    return int(time.time())


MALFORMED: list[tuple[str, Any]] = [
    ("not json", "{"),
    ("a list", [1]),
    ("no token", {}),
    ("token not a string", {"token": 5}),
    ("empty token", {"token": ""}),
    ("two parts", {"token": "a.b"}),
    ("payload not base64url", {"token": "a.!!!.c"}),
    ("payload not json", {"token": f"a.{b64(b'{')}.c"}),
    ("payload a list", {"token": f"a.{b64(b'[1]')}.c"}),
    ("no exp", {"token": fake_jwt({"aud": ORDERS})}),
    ("exp a string", {"token": fake_jwt({"aud": ORDERS, "exp": "9999999999"})}),
    ("exp a boolean", {"token": fake_jwt({"aud": ORDERS, "exp": True})}),
    ("exp past", {"token": fake_jwt({"aud": ORDERS, "exp": _now() - 10})}),
    ("exp within 5 minutes", {"token": fake_jwt({"aud": ORDERS, "exp": _now() + 200})}),
    ("exp beyond 12 hours", {"token": fake_jwt({"aud": ORDERS, "exp": _now() + 50000})}),
    ("exp huge", {"token": fake_jwt({"aud": ORDERS, "exp": 10**400})}),
    ("another audience", {"token": fake_jwt({"aud": BILLING, "exp": _now() + 3600})}),
    ("no audience", {"token": fake_jwt({"exp": _now() + 3600})}),
]


@pytest.mark.parametrize(("case", "answer"), MALFORMED, ids=[c[0] for c in MALFORMED])
def test_unusable_answers_are_temporarily_unavailable(
    gcp_emulator: GcpEmulator,
    principal: Principal,
    subject_token: str,
    case: str,
    answer: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gcp_emulator.fail_next(200, answer, path="/v1/projects/")
    with caplog.at_level(logging.DEBUG), pytest.raises(TemporarilyUnavailable) as caught:
        issue(gcp_emulator, principal, subject_token)
    assert caught.value.description.startswith("gcp: MalformedResponse - ")
    assert caught.value.retry_after == 2
    token = answer.get("token") if isinstance(answer, dict) else None
    secrets = [subject_token, *gcp_emulator.issued]
    if isinstance(token, str) and token.count(".") == 2 and len(token) > 40:
        secrets.append(token)
        logged = "\n".join(r.getMessage() for r in caplog.records)
        assert token.split(".")[1] not in logged
    assert_nothing_leaks(caught.value, *secrets)


def test_timeouts_and_refused_connections_are_temporarily_unavailable(
    gcp_emulator: GcpEmulator, principal: Principal, subject_token: str, closed_port: int
) -> None:
    gcp_emulator.delay = 2.0
    started = time.monotonic()
    with pytest.raises(TemporarilyUnavailable) as caught:
        issue(gcp_emulator, principal, subject_token, read_timeout=0.3)
    assert time.monotonic() - started < 1.5
    assert caught.value.description.startswith("gcp: ReadTimeout - ")
    gcp_emulator.delay = 0.0
    base = f"http://127.0.0.1:{closed_port}"
    with pytest.raises(TemporarilyUnavailable) as caught:
        _provider(base + "/v1/token", base).issue(
            principal, mapping(), subject_token, (CLOUD,), audience=ORDERS
        )
    assert caught.value.description.startswith("gcp: ConnectionError - ")
