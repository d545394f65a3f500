"""GcpProvider through real google-auth against the GCP emulator trusting the dev issuer."""

from __future__ import annotations

import functools
import logging
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from sts.config import Settings
from sts.dev.gcp_emulator import GcpEmulator
from sts.dev.issuer import DevIssuer
from sts.errors import InvalidTarget, OAuthError, TemporarilyUnavailable
from sts.identity.principal import Principal
from sts.mappings.spec import GcpTarget, MappingSpec
from sts.providers.gcp import GcpProvider
from tests.unit.providers.conftest import SERVICE_ACCOUNT, WIF_PROVIDER

DEFAULT_GCP_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
IAM_SCOPE = "https://www.googleapis.com/auth/iam"

READ_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"


def mapping(
    service_account: str | None = None,
    scopes: tuple[str, ...] = (DEFAULT_GCP_SCOPE,),
    lifetime: int = 3600,
    provider_name: str = WIF_PROVIDER,
) -> MappingSpec:
    return MappingSpec(
        name="analytics-gcp",
        account="my-account",
        project="my-project",
        gcp=GcpTarget(
            workload_identity_provider=provider_name,
            service_account=service_account,
            scopes=scopes,
            lifetime_seconds=lifetime,
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


def assert_nothing_leaks(error: OAuthError, *secrets: str) -> None:
    for text in (error.description, error.cause or "", str(error)):
        for secret in secrets:
            assert secret not in text
            assert secret.rsplit(".", 1)[-1] not in text


def test_federated_token_without_service_account(
    gcp_emulator: GcpEmulator, principal: Principal, subject_token: str
) -> None:
    creds = provider(gcp_emulator).issue(principal, mapping(), subject_token, ())

    [call] = gcp_emulator.requests
    assert call.path == "/v1/token"
    assert call.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert call.body == {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": subject_token,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "audience": WIF_PROVIDER,
        "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "scope": DEFAULT_GCP_SCOPE,
    }
    assert creds.provider == "gcp"
    assert gcp_emulator.issued == [creds.access_token]
    assert creds.access_token in gcp_emulator.federated
    assert creds.scope == DEFAULT_GCP_SCOPE
    assert creds.aws_access_key_id is None
    assert abs(creds.expires_at - (time.time() + 3599)) < 5
    assert creds.access_token not in repr(creds)


def test_requested_scopes_replace_the_mappings(
    gcp_emulator: GcpEmulator, principal: Principal, subject_token: str
) -> None:
    m = mapping(scopes=(DEFAULT_GCP_SCOPE, READ_SCOPE))
    creds = provider(gcp_emulator).issue(principal, m, subject_token, (READ_SCOPE,))
    assert gcp_emulator.requests[0].body["scope"] == READ_SCOPE
    assert creds.scope == READ_SCOPE


def test_service_account_impersonation(
    gcp_emulator: GcpEmulator, principal: Principal, subject_token: str
) -> None:
    m = mapping(
        service_account=SERVICE_ACCOUNT, scopes=(DEFAULT_GCP_SCOPE, READ_SCOPE), lifetime=900
    )
    creds = provider(gcp_emulator).issue(principal, m, subject_token, ())

    sts_call, iam_call = gcp_emulator.requests
    # The federated token only needs to call IAM Credentials.
    assert sts_call.body["scope"] == IAM_SCOPE
    federated, impersonated = gcp_emulator.issued
    assert iam_call.path == (
        f"/v1/projects/-/serviceAccounts/{SERVICE_ACCOUNT}:generateAccessToken"
    )
    assert iam_call.headers["Authorization"] == f"Bearer {federated}"
    assert iam_call.body == {"scope": [DEFAULT_GCP_SCOPE, READ_SCOPE], "lifetime": "900s"}

    assert creds.access_token == impersonated
    assert creds.access_token != federated
    assert creds.scope == f"{DEFAULT_GCP_SCOPE} {READ_SCOPE}"
    assert abs(creds.expires_at - (time.time() + 900)) < 5


def test_fractional_expire_time_is_parsed(
    gcp_emulator: GcpEmulator, principal: Principal, subject_token: str
) -> None:
    gcp_emulator.fail_next(
        200,
        {"accessToken": "ya29.x", "expireTime": "2030-01-02T03:04:05.123456789Z"},
        path="/v1/projects/",
    )
    m = mapping(service_account=SERVICE_ACCOUNT)
    creds = provider(gcp_emulator).issue(principal, m, subject_token, ())
    assert creds.expires_at == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()


# -- refusals by the emulator itself ---------------------------------------------------


def test_service_account_not_bound_is_permission_denied(
    gcp_emulator: GcpEmulator, principal: Principal, subject_token: str
) -> None:
    m = mapping(service_account="other@my-gcp.iam.gserviceaccount.com")
    with pytest.raises(InvalidTarget) as caught:
        provider(gcp_emulator).issue(principal, m, subject_token, ())
    assert caught.value.description.startswith("gcp: PERMISSION_DENIED - ")
    [federated] = gcp_emulator.issued
    assert_nothing_leaks(caught.value, subject_token, federated)


def test_token_with_wrong_audience_is_invalid_grant(
    gcp_emulator: GcpEmulator, issuer: DevIssuer, principal: Principal
) -> None:
    token = issuer.mint(audience="https://someone-else.example")
    with pytest.raises(InvalidTarget) as caught:
        provider(gcp_emulator).issue(principal, mapping(), token, ())
    assert caught.value.description.startswith("gcp: invalid_grant - ")
    assert_nothing_leaks(caught.value, token)


def test_unregistered_provider_is_invalid_target(
    gcp_emulator: GcpEmulator, principal: Principal, subject_token: str
) -> None:
    other = WIF_PROVIDER.replace("providers/zuplo", "providers/unknown")
    with pytest.raises(InvalidTarget) as caught:
        provider(gcp_emulator).issue(principal, mapping(provider_name=other), subject_token, ())
    assert caught.value.description.startswith("gcp: invalid_target - ")


# -- the error table, row by row -------------------------------------------------------

STS_REFUSALS = [
    (400, "invalid_grant"),
    (400, "invalid_target"),
    (400, "unauthorized_client"),
    (400, "invalid_request"),
    (400, "invalid_scope"),
    (401, "invalid_client"),
    (400, "some_new_code"),
]


@pytest.mark.parametrize(("status", "code"), STS_REFUSALS)
def test_sts_refusals_are_invalid_target(
    gcp_emulator: GcpEmulator, principal: Principal, subject_token: str, status: int, code: str
) -> None:
    gcp_emulator.fail_next(status, {"error": code, "error_description": f"echo {subject_token}"})
    with pytest.raises(InvalidTarget) as caught:
        provider(gcp_emulator).issue(principal, mapping(), subject_token, ())
    prefix = f"gcp: {code} - "
    assert caught.value.description.startswith(prefix)
    assert len(caught.value.description) > len(prefix)
    assert "echo" not in caught.value.description
    assert (caught.value.provider, caught.value.provider_code) == ("gcp", code)
    assert caught.value.retry_after is None
    assert_nothing_leaks(caught.value, subject_token)


def test_unknown_code_is_sanitized(
    gcp_emulator: GcpEmulator, principal: Principal, subject_token: str
) -> None:
    gcp_emulator.fail_next(400, {"error": "<script>alert(1)</script> x"})
    with pytest.raises(InvalidTarget) as caught:
        provider(gcp_emulator).issue(principal, mapping(), subject_token, ())
    assert caught.value.description.startswith("gcp: scriptalert1script")


IAM_REFUSALS = [
    (403, "PERMISSION_DENIED"),
    (404, "NOT_FOUND"),
    (401, "UNAUTHENTICATED"),
    (400, "INVALID_ARGUMENT"),
    (400, "FAILED_PRECONDITION"),
]


@pytest.mark.parametrize(("status", "code"), IAM_REFUSALS)
def test_iam_refusals_are_invalid_target(
    gcp_emulator: GcpEmulator, principal: Principal, subject_token: str, status: int, code: str
) -> None:
    gcp_emulator.fail_next(
        status,
        {"error": {"code": status, "message": "no", "status": code}},
        path="/v1/projects/",
    )
    with pytest.raises(InvalidTarget) as caught:
        provider(gcp_emulator).issue(principal, mapping(SERVICE_ACCOUNT), subject_token, ())
    assert caught.value.description.startswith(f"gcp: {code} - ")
    assert (caught.value.provider, caught.value.provider_code) == ("gcp", code)


TRANSIENT = [
    # (path, status, body, headers, description prefix, retry_after)
    (None, 429, {"error": "rate_limited"}, {}, "gcp: rate_limited - ", 5),
    (None, 429, {"error": "rate_limited"}, {"Retry-After": "7"}, "gcp: rate_limited - ", 7),
    (None, 503, {"error": "temporarily_unavailable"}, {}, "gcp: temporarily_unavailable - ", 2),
    (None, 500, "<html>oops</html>", {}, "gcp: HTTP500 - ", 2),
    (None, 502, {"error": "invalid_grant"}, {}, "gcp: invalid_grant - ", 2),
    (None, 200, "not json", {}, "gcp: MalformedResponse - ", 2),
    (None, 200, {"access_token": "ya29.x"}, {}, "gcp: MalformedResponse - ", 2),
    (None, 200, {"access_token": "ya29.x", "expires_in": "3599"}, {}, "gcp: MalformedResponse", 2),
    (None, 200, ["a list"], {}, "gcp: MalformedResponse - ", 2),
    (None, 400, "<html>bad gateway config</html>", {}, "gcp: MalformedResponse - ", 2),
    (
        "/v1/projects/",
        429,
        {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED"}},
        {},
        "gcp: RESOURCE_EXHAUSTED - ",
        5,
    ),
    (
        "/v1/projects/",
        503,
        {"error": {"code": 503, "status": "UNAVAILABLE"}},
        {},
        "gcp: UNAVAILABLE - ",
        2,
    ),
    (
        "/v1/projects/",
        500,
        {"error": {"code": 500, "status": "INTERNAL"}},
        {},
        "gcp: INTERNAL - ",
        2,
    ),
    ("/v1/projects/", 200, {"accessToken": "ya29.x"}, {}, "gcp: MalformedResponse - ", 2),
    (
        "/v1/projects/",
        200,
        {"accessToken": "ya29.x", "expireTime": "tomorrow"},
        {},
        "gcp: MalformedResponse - ",
        2,
    ),
    ("/v1/projects/", 200, "{", {}, "gcp: MalformedResponse - ", 2),
]


@pytest.mark.parametrize(("path", "status", "body", "headers", "prefix", "retry_after"), TRANSIENT)
def test_transient_failures_are_temporarily_unavailable(
    gcp_emulator: GcpEmulator,
    principal: Principal,
    subject_token: str,
    path: str | None,
    status: int,
    body: Any,
    headers: dict[str, str],
    prefix: str,
    retry_after: int,
) -> None:
    gcp_emulator.fail_next(status, body, path=path, headers=headers)
    with pytest.raises(TemporarilyUnavailable) as caught:
        provider(gcp_emulator).issue(principal, mapping(SERVICE_ACCOUNT), subject_token, ())
    assert caught.value.description.startswith(prefix)
    assert caught.value.provider == "gcp"
    assert caught.value.provider_code == prefix.removeprefix("gcp: ").split(" ")[0]
    assert caught.value.retry_after == retry_after
    assert caught.value.headers == {"Retry-After": str(retry_after)}
    assert_nothing_leaks(caught.value, subject_token)


def test_read_timeout_is_bounded(
    gcp_emulator: GcpEmulator, principal: Principal, subject_token: str
) -> None:
    gcp_emulator.delay = 2.0
    started = time.monotonic()
    with pytest.raises(TemporarilyUnavailable) as caught:
        provider(gcp_emulator, read_timeout=0.3).issue(principal, mapping(), subject_token, ())
    assert time.monotonic() - started < 1.5
    assert caught.value.description.startswith("gcp: ReadTimeout - ")


def test_connection_refused_is_temporarily_unavailable(
    principal: Principal, subject_token: str, closed_port: int
) -> None:
    base = f"http://127.0.0.1:{closed_port}"
    started = time.monotonic()
    with pytest.raises(TemporarilyUnavailable) as caught:
        _provider(base + "/v1/token", base).issue(principal, mapping(), subject_token, ())
    assert time.monotonic() - started < 2
    assert caught.value.description.startswith("gcp: ConnectionError - ")


def test_logs_hold_no_token(
    gcp_emulator: GcpEmulator,
    principal: Principal,
    subject_token: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gcp_emulator.fail_next(400, {"error": "invalid_grant", "error_description": subject_token})
    with caplog.at_level(logging.DEBUG), pytest.raises(InvalidTarget):
        provider(gcp_emulator).issue(principal, mapping(), subject_token, ())
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "invalid_grant" in text
    assert subject_token.split(".")[1] not in text
    assert subject_token.rsplit(".", 1)[-1] not in text


def test_mapping_without_gcp_target_is_a_programming_error(
    gcp_emulator: GcpEmulator, principal: Principal, subject_token: str
) -> None:
    from sts.mappings.spec import AwsTarget

    aws = MappingSpec(name="a", account="a", project="p", aws=AwsTarget(role_arn="arn"))
    with pytest.raises(ValueError, match="no gcp target"):
        provider(gcp_emulator).issue(principal, aws, subject_token, ())
    assert gcp_emulator.requests == []
