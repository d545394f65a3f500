"""POST /token through real HTTP: happy paths on AWS and GCP, and every row of the error table."""

from __future__ import annotations

import json
import re
import threading
import time
from typing import Any

import pytest
import requests

from sts.dev.issuer import DevIssuer, SigningKey
from tests.conftest import AUDIENCE
from tests.functional.conftest import (
    GRANT,
    ID_TOKEN,
    ROLE,
    ROLE_PREVIEW,
    SA,
    WIP,
    WIP_OTHER,
    Stack,
)

AWS_TYPE = "urn:zuplo-sts:token-type:aws-credentials"
ACCESS_TYPE = "urn:ietf:params:oauth:token-type:access_token"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"


def assert_no_store(response: requests.Response) -> None:
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"
    assert response.headers["Content-Type"].startswith("application/json")


def assert_error(
    response: requests.Response, status: int, error: str, token: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert_no_store(response)
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "error_description"}
    assert body["error"] == error
    assert isinstance(body["error_description"], str)
    assert body["error_description"]
    if token is not None:
        assert token not in response.text
        for part in token.split("."):
            assert len(part) < 8 or part not in response.text
    if status == 503:
        assert int(response.headers["Retry-After"]) >= 1
    return body


# -- happy paths ---------------------------------------------------------------------------------


def test_aws_exchange_returns_credential_process_document(stack: Stack) -> None:
    token = stack.token(deployment="orders-api-main-53c4947")
    response = stack.post(token)
    assert response.status_code == 200, response.text
    assert_no_store(response)
    body = response.json()
    assert body["issued_token_type"] == AWS_TYPE
    assert body["token_type"] == "N_A"
    assert body["mapping"] == "orders-prod"
    assert 3500 < body["expires_in"] <= 3600
    creds = body["aws_credentials"]
    assert set(creds) == {"Version", "AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"}
    assert creds["Version"] == 1
    assert creds["SessionToken"] == body["access_token"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", creds["Expiration"])

    (sent,) = stack.aws_requests()
    assert sent.action == "AssumeRoleWithWebIdentity"
    assert sent.role_arn == ROLE
    assert sent.role_session_name == "orders-api-main-53c4947"
    assert sent.web_identity_token == token
    assert sent.duration_seconds == 3600
    assert sent.policy is None


def test_aws_session_policy_and_duration_are_sent(stack: Stack) -> None:
    response = stack.post(stack.token(environment_type="preview", deployment="pr/42 ünïcode"))
    assert response.status_code == 200, response.text
    assert response.json()["mapping"] == "orders-preview"
    (sent,) = stack.aws_requests()
    assert sent.role_arn == ROLE_PREVIEW
    assert sent.duration_seconds == 900
    assert sent.policy is not None
    assert json.loads(sent.policy)["Statement"][0]["Action"] == "s3:GetObject"
    assert sent.role_session_name == "pr-42--n-code"


def test_json_body_with_charset_is_accepted(stack: Stack) -> None:
    body = json.dumps(
        {
            "grant_type": GRANT,
            "subject_token": stack.token(),
            "subject_token_type": JWT_TYPE,
            "client_id": "ignored",
            "extra": {"nested": ["ignored"]},
        }
    )
    response = stack.raw(body, "application/json; charset=UTF-8")
    assert response.status_code == 200, response.text
    assert response.json()["mapping"] == "orders-prod"


def test_unknown_form_fields_are_ignored_even_when_repeated(stack: Stack) -> None:
    body = (
        f"grant_type={GRANT}&subject_token={stack.token()}&subject_token_type={ID_TOKEN}"
        "&client_id=a&client_id=b&audience="
    )
    response = stack.raw(body, "application/x-www-form-urlencoded")
    assert response.status_code == 200, response.text


def test_gcp_exchange_with_service_account(stack: Stack) -> None:
    token = stack.token(account="gcp-account", project="analytics")
    response = stack.post(token)
    assert response.status_code == 200, response.text
    assert_no_store(response)
    body = response.json()
    assert body["issued_token_type"] == ACCESS_TYPE
    assert body["token_type"] == "Bearer"
    assert body["mapping"] == "analytics-gcp"
    assert body["access_token"].startswith("ya29.")
    assert 1700 < body["expires_in"] <= 1800
    assert set(body["scope"].split()) == {
        "https://www.googleapis.com/auth/cloud-platform",
        "https://www.googleapis.com/auth/bigquery",
    }
    sts_call, iam_call = stack.gcp_requests()
    assert sts_call.body["audience"] == WIP
    assert sts_call.body["grant_type"] == GRANT
    assert sts_call.body["subject_token"] == token
    assert SA in iam_call.path
    assert iam_call.body["lifetime"] == "1800s"


def test_gcp_scope_subset_and_audience_by_provider_name(stack: Stack) -> None:
    token = stack.token(account="gcp-account", project="analytics")
    response = stack.post(token, audience=WIP, scope="https://www.googleapis.com/auth/bigquery")
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "https://www.googleapis.com/auth/bigquery"


def test_gcp_without_service_account_allows_and_requests_the_iam_scope(stack: Stack) -> None:
    """google-auth asks for the IAM scope before it impersonates a service account itself, so a
    mapping without one allows it though it lists only cloud-platform; it is what Google's STS
    is asked for and what the answer says was granted."""
    iam = "https://www.googleapis.com/auth/iam"
    token = stack.token(account="gcp-account", project="federated")
    response = stack.post(token, scope=iam, resource=WIP_OTHER)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mapping"] == "federated-gcp"
    assert body["scope"] == iam
    (sts_call,) = stack.gcp_requests()
    assert sts_call.path == "/v1/token"
    assert sts_call.body["scope"] == iam
    # No impersonation: the federated token itself is the answer.
    assert body["access_token"] == stack.gcp.issued[-1]


def test_requested_token_type_matching_the_mapping_is_fine(stack: Stack) -> None:
    response = stack.post(requested_token_type=AWS_TYPE)
    assert response.status_code == 200, response.text


# -- caching -------------------------------------------------------------------------------------


def test_repeat_exchange_reuses_credentials(stack: Stack) -> None:
    token = stack.token()
    first = stack.post(token).json()
    time.sleep(1.1)
    second = stack.post(token).json()
    assert second["aws_credentials"] == first["aws_credentials"]
    assert second["expires_in"] < first["expires_in"]
    assert len(stack.aws_requests()) == 1


def test_different_deployments_get_separate_credentials(stack: Stack) -> None:
    a = stack.post(stack.token(deployment="a")).json()
    b = stack.post(stack.token(deployment="b")).json()
    assert a["access_token"] != b["access_token"]
    assert len(stack.aws_requests()) == 2


def test_concurrent_requests_make_one_upstream_call(stack: Stack) -> None:
    token = stack.token(deployment="burst")
    stack.aws.delay = 0.5
    try:
        results: list[int] = []

        def call() -> None:
            results.append(stack.post(token).status_code)

        threads = [threading.Thread(target=call) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        stack.aws.delay = 0
    assert results == [200] * 10
    assert len(stack.aws_requests()) == 1


# -- the error table -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        pytest.param("x", "text/plain", id="wrong-content-type"),
        pytest.param("{}", "application/xml", id="xml"),
        pytest.param("{not json", "application/json", id="malformed-json"),
        pytest.param("[1, 2]", "application/json", id="json-array"),
        pytest.param('{"grant_type": 5}', "application/json", id="json-non-string"),
        pytest.param(b"grant_type=\xff", "application/x-www-form-urlencoded", id="form-bytes"),
        pytest.param("grant_type=%ff", "application/x-www-form-urlencoded", id="form-bad-utf8"),
        pytest.param("", "application/x-www-form-urlencoded", id="empty"),
    ],
)
def test_malformed_requests(stack: Stack, body: str | bytes, content_type: str) -> None:
    assert_error(stack.raw(body, content_type), 400, "invalid_request")
    assert stack.aws_requests() == []


def test_missing_content_type(stack: Stack) -> None:
    response = requests.post(stack.url + "/token", data=b"grant_type=x", timeout=10)
    assert_error(response, 400, "invalid_request")


@pytest.mark.parametrize("field", ["grant_type", "subject_token", "subject_token_type"])
def test_missing_required_field(stack: Stack, field: str) -> None:
    data = {"grant_type": GRANT, "subject_token": stack.token(), "subject_token_type": ID_TOKEN}
    del data[field]
    response = requests.post(stack.url + "/token", data=data, timeout=10)
    assert_error(response, 400, "invalid_request")


@pytest.mark.parametrize("field", ["subject_token", "audience", "grant_type", "scope"])
def test_repeated_field_in_form(stack: Stack, field: str) -> None:
    token = stack.token()
    body = f"grant_type={GRANT}&subject_token={token}&subject_token_type={ID_TOKEN}"
    body += f"&{field}=orders-prod&{field}=orders-prod"
    assert_error(
        stack.raw(body, "application/x-www-form-urlencoded"), 400, "invalid_request", token
    )


def test_repeated_field_in_json(stack: Stack) -> None:
    token = stack.token()
    body = (
        f'{{"grant_type": "{GRANT}", "subject_token": "{token}", '
        f'"subject_token_type": "{ID_TOKEN}", "subject_token_type": "{ID_TOKEN}"}}'
    )
    assert_error(stack.raw(body, "application/json"), 400, "invalid_request", token)


def test_body_over_64_kib(stack: Stack) -> None:
    token = stack.token()
    body = f"grant_type={GRANT}&subject_token={token}&subject_token_type={ID_TOKEN}&pad="
    body += "a" * (64 * 1024)
    assert_error(stack.raw(body, "application/x-www-form-urlencoded"), 400, "invalid_request")


def test_unsupported_grant_type(stack: Stack) -> None:
    response = stack.post(grant_type="client_credentials")
    assert_error(response, 400, "unsupported_grant_type")


@pytest.mark.parametrize(
    "fields",
    [
        {"subject_token_type": "urn:ietf:params:oauth:token-type:access_token"},
        {"subject_token_type": "id_token"},
        {"actor_token": "something", "actor_token_type": ID_TOKEN},
    ],
)
def test_bad_token_type_or_actor_token(stack: Stack, fields: dict[str, str]) -> None:
    assert_error(stack.post(**fields), 400, "invalid_request")


def test_invalid_subject_tokens(stack: Stack, issuer: DevIssuer) -> None:
    now = int(time.time())
    stranger = SigningKey.generate(kid=issuer.key.kid)
    cases = {
        "garbage": "not-a-token",
        "expired": issuer.mint(audience=AUDIENCE, exp=now - 3600, iat=now - 7200),
        "wrong-audience": issuer.mint(audience="https://other.example"),
        "untrusted-issuer": issuer.mint(audience=AUDIENCE, iss="https://evil.example/issuer"),
        "foreign-key": issuer.mint(audience=AUDIENCE, key=stranger),
        "missing-claim": issuer.mint(audience=AUDIENCE, drop=("deployment",)),
        "bad-environment": issuer.mint(audience=AUDIENCE, environment_type="staging"),
        "not-yet-valid": issuer.mint(audience=AUDIENCE, nbf=now + 3600),
    }
    descriptions = set()
    for name, token in cases.items():
        body = assert_error(stack.post(token), 400, "invalid_request", token)
        descriptions.add(body["error_description"])
        assert len(body["error_description"]) < 80, name
    assert len(descriptions) >= 6
    assert stack.aws_requests() == []


def test_no_mapping_binds_the_caller(stack: Stack) -> None:
    assert_error(stack.post(stack.token(account="someone-else")), 400, "unauthorized_client")
    assert_error(stack.post(stack.token(project="disabled-project")), 400, "unauthorized_client")


def test_named_target_not_bound_gives_one_answer(stack: Stack) -> None:
    token = stack.token()
    answers = [
        stack.post(token, audience="no-such-mapping"),
        stack.post(token, audience="analytics-gcp"),  # exists, bound to another account
        stack.post(token, audience="disabled-one"),
        stack.post(token, resource="arn:aws:iam::123456789012:role/nope"),
        stack.post(token, resource=SA),
        stack.post(token, audience="orders-prod", resource=ROLE_PREVIEW),
        stack.post(stack.token(account="nobody"), audience="orders-prod"),
    ]
    bodies = [assert_error(a, 400, "invalid_target") for a in answers]
    assert len({b["error_description"] for b in bodies}) == 1
    assert stack.aws_requests() == []


def test_tie_needs_a_choice(stack_factory: Any) -> None:
    document = f"""
mappings:
  - name: one
    account: my-account
    project: my-project
    deployment: "copper-*"
    aws: {{role_arn: "{ROLE}"}}
  - name: two
    account: my-account
    project: my-project
    deployment: "*-53c4947"
    aws: {{role_arn: "{ROLE_PREVIEW}"}}
"""
    stack = stack_factory(document)
    assert_error(stack.post(), 400, "invalid_target")
    assert stack.post(audience="two").json()["mapping"] == "two"
    assert stack.post(resource=ROLE).json()["mapping"] == "one"


def test_requested_token_type_the_mapping_cannot_issue(stack: Stack) -> None:
    assert_error(stack.post(requested_token_type=ACCESS_TYPE), 400, "invalid_target")


def test_scope_rules(stack: Stack) -> None:
    assert_error(stack.post(scope="openid"), 400, "invalid_scope")
    gcp_token = stack.token(account="gcp-account", project="analytics")
    assert_error(
        stack.post(gcp_token, scope="https://www.googleapis.com/auth/iam"), 400, "invalid_scope"
    )
    assert stack.post(scope="").status_code == 200


@pytest.mark.parametrize(
    ("code", "status", "error", "prefix"),
    [
        ("AccessDenied", 403, "invalid_target", "aws: AccessDenied"),
        ("InvalidIdentityToken", 400, "invalid_target", "aws: InvalidIdentityToken"),
        ("IDPRejectedClaim", 403, "invalid_target", "aws: IDPRejectedClaim"),
        ("MalformedPolicyDocument", 400, "invalid_target", "aws: MalformedPolicyDocument"),
        ("PackedPolicyTooLarge", 400, "invalid_target", "aws: PackedPolicyTooLarge"),
        ("ValidationError", 400, "invalid_target", "aws: ValidationError"),
        ("ExpiredTokenException", 400, "invalid_request", "aws: ExpiredTokenException"),
        ("Throttling", 400, "temporarily_unavailable", "aws: Throttling"),
        ("IDPCommunicationError", 400, "temporarily_unavailable", "aws: IDPCommunicationError"),
        ("InternalFailure", 500, "temporarily_unavailable", "aws: "),
    ],
)
def test_aws_refusals_map_to_the_contract(
    stack: Stack, code: str, status: int, error: str, prefix: str
) -> None:
    stack.aws.fail_next(status, code, times=5)
    try:
        token = stack.token(deployment=f"refused-{code}")
        response = stack.post(token)
    finally:
        stack.aws.clear()
    body = assert_error(response, 503 if error == "temporarily_unavailable" else 400, error, token)
    assert body["error_description"].startswith(prefix)


@pytest.mark.parametrize(
    ("status", "payload", "error", "prefix"),
    [
        (
            400,
            {"error": "invalid_grant", "error_description": "x"},
            "invalid_target",
            "gcp: invalid_grant",
        ),
        (
            400,
            {"error": "invalid_target", "error_description": "x"},
            "invalid_target",
            "gcp: invalid_target",
        ),
        (429, {"error": "rate_limited"}, "temporarily_unavailable", "gcp: "),
        (503, {"error": "unavailable"}, "temporarily_unavailable", "gcp: "),
    ],
)
def test_gcp_refusals_map_to_the_contract(
    stack: Stack, status: int, payload: dict[str, str], error: str, prefix: str
) -> None:
    stack.gcp.fail_next(status, payload, times=5)
    try:
        token = stack.token(account="gcp-account", project="analytics", deployment=f"g{status}")
        response = stack.post(token)
    finally:
        stack.gcp.clear()
    body = assert_error(response, 503 if status >= 429 else 400, error, token)
    assert body["error_description"].startswith(prefix)


def test_gcp_permission_denied_on_impersonation(stack_factory: Any) -> None:
    document = f"""
mappings:
  - name: not-allowed
    account: my-account
    project: my-project
    gcp:
      workload_identity_provider: {WIP}
      service_account: stranger@demo-project.iam.gserviceaccount.com
"""
    stack = stack_factory(document)
    body = assert_error(stack.post(), 400, "invalid_target")
    assert body["error_description"].startswith("gcp: PERMISSION_DENIED")


def test_jwks_unreachable_with_nothing_cached(stack_factory: Any) -> None:
    with DevIssuer() as broken:
        broken.jwks_status = 500
        stack = stack_factory(wait=False, trusted_issuers=(broken.url,))
        token = broken.mint(audience=AUDIENCE)
        assert_error(stack.post(token), 503, "temporarily_unavailable", token)
        ready = requests.get(stack.url + "/readyz", timeout=10)
        assert ready.status_code == 503
        assert ready.json()["reason"]


def test_get_is_not_allowed(stack: Stack) -> None:
    response = requests.get(stack.url + "/token", timeout=10)
    assert response.status_code == 405
    assert response.headers["Cache-Control"] == "no-store"


# -- health --------------------------------------------------------------------------------------


def test_health_and_readiness(stack: Stack) -> None:
    assert requests.get(stack.url + "/healthz", timeout=10).status_code == 200
    ready = requests.get(stack.url + "/readyz", timeout=10)
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


@pytest.mark.postgres
def test_exchange_on_postgres(stack_factory: Any, postgres_url: str) -> None:
    stack = stack_factory(database_url=postgres_url)
    response = stack.post()
    assert response.status_code == 200, response.text
    assert response.json()["mapping"] == "orders-prod"


def test_repeat_token_does_no_rsa_verification(stack: Stack) -> None:
    token = stack.token(deployment="rsa-count")
    assert stack.post(token).status_code == 200
    checks = stack.services.verifier.signature_checks
    for _ in range(5):
        assert stack.post(token).status_code == 200
    assert stack.services.verifier.signature_checks == checks
    assert stack.post(stack.token(deployment="rsa-count-2")).status_code == 200
    assert stack.services.verifier.signature_checks == checks + 1
