"""The GCP emulator checks what Google checks; and Google's own client accepts it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import google.auth.identity_pool
import google.auth.transport.requests
import pytest
import requests

from sts.dev.gcp_emulator import GcpEmulator
from sts.dev.issuer import DevIssuer, SigningKey
from tests.conftest import AUDIENCE
from tests.unit.providers.conftest import SERVICE_ACCOUNT, WIF_PROVIDER

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT = "urn:ietf:params:oauth:token-type:jwt"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"
CLOUD = "https://www.googleapis.com/auth/cloud-platform"


def exchange(emulator: GcpEmulator, token: str, **overrides: Any) -> requests.Response:
    form: dict[str, Any] = {
        "grant_type": GRANT,
        "subject_token": token,
        "subject_token_type": JWT,
        "audience": WIF_PROVIDER,
        "requested_token_type": ACCESS,
        "scope": CLOUD,
    }
    form.update(overrides)
    form = {k: v for k, v in form.items() if v is not None}
    return requests.post(emulator.sts_url, data=form, timeout=5)


def generate(
    emulator: GcpEmulator, bearer: str, body: Any, email: str = SERVICE_ACCOUNT
) -> requests.Response:
    url = f"{emulator.iam_url}/v1/projects/-/serviceAccounts/{email}:generateAccessToken"
    return requests.post(url, json=body, headers={"Authorization": f"Bearer {bearer}"}, timeout=5)


def test_valid_exchange_has_googles_shape(gcp_emulator: GcpEmulator, subject_token: str) -> None:
    response = exchange(gcp_emulator, subject_token)
    assert response.status_code == 200
    body = response.json()
    assert body["access_token"].startswith("ya29.")
    assert body["issued_token_type"] == ACCESS
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3599


def test_id_token_subject_type_is_accepted(gcp_emulator: GcpEmulator, subject_token: str) -> None:
    response = exchange(
        gcp_emulator, subject_token, subject_token_type="urn:ietf:params:oauth:token-type:id_token"
    )
    assert response.status_code == 200


def other_issuer_token(issuer: DevIssuer) -> str:
    """Same kid and claims, signed by a key the issuer's JWKS does not hold."""
    impostor = SigningKey.generate(kid=issuer.key.kid, bits=1024)
    return issuer.mint(audience=AUDIENCE, key=impostor)


STS_REJECTIONS: list[tuple[str, Any, str]] = [
    ("bad grant type", {"grant_type": "client_credentials"}, "unsupported_grant_type"),
    ("no requested token type", {"requested_token_type": None}, "invalid_request"),
    ("wrong requested token type", {"requested_token_type": JWT}, "invalid_request"),
    ("bad subject token type", {"subject_token_type": ACCESS}, "invalid_request"),
    ("https audience", {"audience": "https:" + WIF_PROVIDER}, "invalid_request"),
    (
        "project id not number",
        {"audience": WIF_PROVIDER.replace("123456789", "my-proj")},
        "invalid_request",
    ),
    (
        "audience not registered",
        {"audience": WIF_PROVIDER.replace("zuplo/providers/zuplo", "zuplo/providers/other")},
        "invalid_target",
    ),
    ("no scope", {"scope": None}, "invalid_scope"),
    ("no subject token", {"subject_token": None}, "invalid_request"),
]


@pytest.mark.parametrize(
    ("case", "overrides", "error"), STS_REJECTIONS, ids=[c[0] for c in STS_REJECTIONS]
)
def test_sts_request_checks(
    gcp_emulator: GcpEmulator, subject_token: str, case: str, overrides: Any, error: str
) -> None:
    response = exchange(gcp_emulator, subject_token, **overrides)
    assert response.status_code == 400
    assert response.json()["error"] == error
    assert "error_description" in response.json()
    assert gcp_emulator.issued == []


def _tampered(issuer: DevIssuer) -> str:
    header, _, signature = issuer.mint(audience=AUDIENCE).split(".")
    other_payload = issuer.mint(audience=AUDIENCE, sub="someone-else").split(".")[1]
    return f"{header}.{other_payload}.{signature}"


def _expired(issuer: DevIssuer) -> str:
    now = int(time.time())
    return issuer.mint(audience=AUDIENCE, iat=now - 7200, exp=now - 3600)


def _hs256(issuer: DevIssuer) -> str:
    return issuer.sign(
        json.dumps({"alg": "HS256", "kid": issuer.key.kid}).encode(),
        json.dumps(issuer.claims(audience=AUDIENCE)).encode(),
    )


TOKEN_CASES: dict[str, Callable[[DevIssuer], str]] = {
    "bad signature": other_issuer_token,
    "tampered payload": _tampered,
    "wrong aud": lambda issuer: issuer.mint(audience="https://other.example"),
    "wrong iss": lambda issuer: issuer.mint(audience=AUDIENCE, iss="https://evil.example"),
    "expired": _expired,
    "HS256": _hs256,
    "unknown kid": lambda issuer: issuer.mint(
        audience=AUDIENCE, key=SigningKey.generate(kid="nope", bits=1024)
    ),
    "not a jwt": lambda issuer: "not-a-jwt",
}


@pytest.mark.parametrize("case", list(TOKEN_CASES))
def test_subject_token_checks(gcp_emulator: GcpEmulator, issuer: DevIssuer, case: str) -> None:
    response = exchange(gcp_emulator, TOKEN_CASES[case](issuer))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    assert gcp_emulator.issued == []


def test_form_body_is_required(gcp_emulator: GcpEmulator, subject_token: str) -> None:
    response = requests.post(
        gcp_emulator.sts_url,
        json={"grant_type": GRANT, "subject_token": subject_token},
        timeout=5,
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


def test_requests_are_recorded(gcp_emulator: GcpEmulator, subject_token: str) -> None:
    exchange(gcp_emulator, subject_token)
    [call] = gcp_emulator.requests
    assert call.method == "POST"
    assert call.path == "/v1/token"
    assert call.body["subject_token"] == subject_token
    assert call.headers["Content-Type"] == "application/x-www-form-urlencoded"


def test_fail_next_counts_down_and_filters_by_path(
    gcp_emulator: GcpEmulator, subject_token: str
) -> None:
    gcp_emulator.fail_next(503, {"error": "x"}, times=2, path="/v1/projects/")
    assert exchange(gcp_emulator, subject_token).status_code == 200
    federated = exchange(gcp_emulator, subject_token, scope=CLOUD).json()["access_token"]
    body = {"scope": [CLOUD], "lifetime": "600s"}
    assert generate(gcp_emulator, federated, body).status_code == 503
    assert generate(gcp_emulator, federated, body).status_code == 503
    assert generate(gcp_emulator, federated, body).status_code == 200


@pytest.fixture
def federated(gcp_emulator: GcpEmulator, subject_token: str) -> str:
    token: str = exchange(gcp_emulator, subject_token).json()["access_token"]
    return token


def test_generate_access_token_has_googles_shape(gcp_emulator: GcpEmulator, federated: str) -> None:
    response = generate(gcp_emulator, federated, {"scope": [CLOUD], "lifetime": "1200s"})
    assert response.status_code == 200
    body = response.json()
    assert body["accessToken"].startswith("ya29.")
    expire = time.mktime(time.strptime(body["expireTime"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert abs(expire - (time.time() + 1200)) < 5


IAM_REJECTIONS: list[tuple[str, Any, int, str]] = [
    ("lifetime zero", {"scope": [CLOUD], "lifetime": "0s"}, 400, "INVALID_ARGUMENT"),
    ("lifetime too long", {"scope": [CLOUD], "lifetime": "43201s"}, 400, "INVALID_ARGUMENT"),
    ("lifetime not seconds", {"scope": [CLOUD], "lifetime": "1h"}, 400, "INVALID_ARGUMENT"),
    ("no scope", {"lifetime": "600s"}, 400, "INVALID_ARGUMENT"),
    ("empty scope", {"scope": [], "lifetime": "600s"}, 400, "INVALID_ARGUMENT"),
    ("scope string", {"scope": CLOUD, "lifetime": "600s"}, 400, "INVALID_ARGUMENT"),
]


@pytest.mark.parametrize(
    ("case", "body", "status", "state"), IAM_REJECTIONS, ids=[c[0] for c in IAM_REJECTIONS]
)
def test_generate_access_token_checks(
    gcp_emulator: GcpEmulator, federated: str, case: str, body: Any, status: int, state: str
) -> None:
    response = generate(gcp_emulator, federated, body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == status
    assert error["status"] == state
    assert error["message"]


def test_generate_needs_an_issued_token(gcp_emulator: GcpEmulator) -> None:
    response = generate(gcp_emulator, "ya29.made-up", {"scope": [CLOUD]})
    assert response.status_code == 401
    assert response.json()["error"]["status"] == "UNAUTHENTICATED"


def test_generate_needs_a_binding(gcp_emulator: GcpEmulator, federated: str) -> None:
    response = generate(
        gcp_emulator, federated, {"scope": [CLOUD]}, email="other@x.iam.gserviceaccount.com"
    )
    assert response.status_code == 403
    assert response.json()["error"]["status"] == "PERMISSION_DENIED"


@pytest.mark.parametrize(
    ("scope", "status"),
    [
        ("https://www.googleapis.com/auth/devstorage.read_only", 403),
        ("https://www.googleapis.com/auth/iam", 200),
        ("https://www.googleapis.com/auth/cloud-platform", 200),
        (
            "https://www.googleapis.com/auth/devstorage.read_only https://www.googleapis.com/auth/iam",
            200,
        ),
    ],
)
def test_generate_needs_a_federated_token_with_the_iam_or_cloud_platform_scope(
    gcp_emulator: GcpEmulator, subject_token: str, scope: str, status: int
) -> None:
    """As Google does: IAM Credentials takes a token with the iam or cloud-platform scope."""
    federated = exchange(gcp_emulator, subject_token, scope=scope).json()["access_token"]
    response = generate(gcp_emulator, federated, {"scope": [CLOUD]})
    assert response.status_code == status, response.text
    if status == 403:
        assert response.json()["error"]["status"] == "PERMISSION_DENIED"
    else:
        assert response.json()["accessToken"] == gcp_emulator.issued[-1]


def test_expired_federated_token_is_rejected(issuer: DevIssuer, subject_token: str) -> None:
    with GcpEmulator(token_lifetime=0) as emulator:  # expired as soon as issued
        emulator.add_provider(WIF_PROVIDER, issuer.url, issuer.jwks_url, [AUDIENCE])
        emulator.allow_service_account(SERVICE_ACCOUNT, WIF_PROVIDER)
        token = exchange(emulator, subject_token).json()["access_token"]
        assert generate(emulator, token, {"scope": [CLOUD]}).status_code == 401


def test_default_allowed_audience_is_the_provider_url(issuer: DevIssuer) -> None:
    with GcpEmulator() as emulator:
        emulator.add_provider(WIF_PROVIDER, issuer.url, issuer.jwks_url, [])
        default = "https:" + WIF_PROVIDER
        assert exchange(emulator, issuer.mint(audience=default)).status_code == 200
        assert exchange(emulator, issuer.mint(audience=AUDIENCE)).status_code == 400


def test_add_provider_checks_the_name(issuer: DevIssuer) -> None:
    with pytest.raises(ValueError, match="workload identity provider"):
        GcpEmulator().add_provider("projects/1/providers/x", issuer.url, issuer.jwks_url, [])


def test_google_auth_external_account_works_against_it(
    gcp_emulator: GcpEmulator, subject_token: str, tmp_path: Path
) -> None:
    """Google's own client, as a gateway would configure it, gets an impersonated token."""
    token_file = tmp_path / "token"
    token_file.write_text(subject_token)
    info = {
        "type": "external_account",
        "audience": WIF_PROVIDER,
        "subject_token_type": JWT,
        "token_url": gcp_emulator.sts_url,
        "credential_source": {"file": str(token_file)},
        "service_account_impersonation_url": (
            f"{gcp_emulator.iam_url}/v1/projects/-/serviceAccounts/"
            f"{SERVICE_ACCOUNT}:generateAccessToken"
        ),
    }
    credentials = google.auth.identity_pool.Credentials.from_info(info, scopes=[CLOUD])
    credentials.refresh(google.auth.transport.requests.Request())
    assert credentials.token == gcp_emulator.issued[-1]
    assert [r.path for r in gcp_emulator.requests] == [
        "/v1/token",
        f"/v1/projects/-/serviceAccounts/{SERVICE_ACCOUNT}:generateAccessToken",
    ]
