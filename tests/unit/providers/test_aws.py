"""AwsProvider through real boto3 against moto's STS server (the AwsEmulator)."""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from sts.config import Settings
from sts.dev.aws_emulator import AwsEmulator
from sts.errors import InvalidRequest, InvalidTarget, OAuthError, TemporarilyUnavailable
from sts.identity.principal import Principal
from sts.mappings.spec import AwsTarget, MappingSpec
from sts.providers.aws import AwsProvider, session_name

ROLE_ARN = "arn:aws:iam::123456789012:role/orders-api"
POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::o/*"}],
}


def mapping(duration: int = 3600, policy: dict[str, Any] | None = None) -> MappingSpec:
    return MappingSpec(
        name="orders-prod",
        account="my-account",
        project="my-project",
        aws=AwsTarget(role_arn=ROLE_ARN, duration_seconds=duration, session_policy=policy),
    )


@functools.cache
def provider(endpoint_url: str, **kwargs: Any) -> AwsProvider:
    """One provider per configuration (a boto3 client takes a while to build); one attempt."""
    kwargs.setdefault("max_attempts", 1)
    return AwsProvider(Settings(aws_endpoint_url=endpoint_url), **kwargs)


def assert_nothing_leaks(error: OAuthError, *secrets: str) -> None:
    for text in (error.description, error.cause or "", str(error)):
        for secret in secrets:
            assert secret not in text
            # Not even the signature part of a JWT.
            assert secret.rsplit(".", 1)[-1] not in text


def test_issue_assumes_the_role_with_the_token(
    aws_emulator: AwsEmulator, principal: Principal, subject_token: str
) -> None:
    before = time.time()
    creds = provider(aws_emulator.endpoint_url).issue(
        principal, mapping(duration=900), subject_token, ()
    )

    [call] = aws_emulator.requests
    assert call.action == "AssumeRoleWithWebIdentity"
    assert call.role_arn == ROLE_ARN
    assert call.web_identity_token == subject_token
    assert call.role_session_name == session_name(principal.deployment)
    assert call.duration_seconds == 900
    assert call.policy is None
    assert "Policy" not in call.params
    assert "Authorization" not in call.headers  # unsigned: the service holds no AWS keys

    assert creds.provider == "aws"
    assert creds.aws_access_key_id
    assert creds.aws_access_key_id.startswith("ASIA")
    assert creds.aws_secret_access_key
    assert creds.access_token  # the SessionToken
    assert before + 900 - 5 <= creds.expires_at <= time.time() + 900 + 5
    assert creds.request_id
    assert creds.access_token not in repr(creds)
    assert creds.aws_secret_access_key not in repr(creds)


def test_issued_credentials_work_in_an_aws_sdk(
    aws_emulator: AwsEmulator, principal: Principal, subject_token: str
) -> None:
    """The triple is what a credential_process document carries; boto3 signs with it."""
    creds = provider(aws_emulator.endpoint_url).issue(principal, mapping(), subject_token, ())
    session = boto3.session.Session(
        aws_access_key_id=creds.aws_access_key_id,
        aws_secret_access_key=creds.aws_secret_access_key,
        aws_session_token=creds.access_token,
    )
    client = session.client("sts", region_name="us-east-1", endpoint_url=aws_emulator.endpoint_url)
    identity = client.get_caller_identity()
    assert identity["Arn"] == (
        f"arn:aws:sts::123456789012:assumed-role/orders-api/{session_name(principal.deployment)}"
    )
    assert aws_emulator.requests[-1].headers["Authorization"].startswith("AWS4-HMAC-SHA256")


def test_session_policy_is_sent_compact_when_set(
    aws_emulator: AwsEmulator, principal: Principal, subject_token: str
) -> None:
    provider(aws_emulator.endpoint_url).issue(principal, mapping(policy=POLICY), subject_token, ())
    [call] = aws_emulator.requests
    assert call.policy == json.dumps(POLICY, separators=(",", ":"))
    assert json.loads(call.policy or "") == POLICY


@pytest.mark.parametrize(
    ("deployment", "sent"),
    [("main", "main"), ("x", "x-"), ("dép/loy", "d-p-loy"), ("z" * 80, "z" * 64)],
)
def test_session_name_on_the_wire(
    aws_emulator: AwsEmulator, principal: Principal, subject_token: str, deployment: str, sent: str
) -> None:
    p = Principal(
        principal.issuer,
        principal.sub,
        principal.account,
        principal.project,
        deployment,
        principal.environment_type,
        principal.audiences,
    )
    provider(aws_emulator.endpoint_url).issue(p, mapping(), subject_token, ())
    assert aws_emulator.requests[-1].role_session_name == sent


def test_no_local_aws_configuration_is_consulted(
    aws_emulator: AwsEmulator,
    principal: Principal,
    subject_token: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    closed_port: int,
) -> None:
    garbage = tmp_path / "garbage"
    garbage.write_text("[[[ not an ini file\n")
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    monkeypatch.setenv("AWS_DEFAULT_PROFILE", "no-such-profile")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(garbage))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(garbage))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEEXAMPLE00")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-used")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", f"http://127.0.0.1:{closed_port}")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_USE_FIPS_ENDPOINT", "true")

    fresh = AwsProvider(Settings(aws_endpoint_url=aws_emulator.endpoint_url))
    fresh.issue(principal, mapping(), subject_token, ())
    [call] = aws_emulator.requests
    assert "Authorization" not in call.headers

    # Without an override, the regional endpoint of the configured region: not the env's.
    regional = AwsProvider(Settings(aws_region="eu-central-1"))
    assert regional.endpoint_url == "https://sts.eu-central-1.amazonaws.com"


def test_standard_retry_mode_retries_a_transient_5xx(
    aws_emulator: AwsEmulator, principal: Principal, subject_token: str
) -> None:
    aws_emulator.fail_next(503, "ServiceUnavailable", sender=False)
    creds = provider(aws_emulator.endpoint_url, max_attempts=3).issue(
        principal, mapping(), subject_token, ()
    )
    assert creds.aws_access_key_id
    assert len(aws_emulator.requests) == 2


REQUEST_ID = "5f1d6a0e-0c1b-4a57-9d1e-6f0a2b3c4d5e"

REFUSALS = [
    ("AccessDenied", 403, "AccessDenied"),
    ("AccessDeniedException", 403, "AccessDenied"),
    ("InvalidIdentityToken", 400, "InvalidIdentityToken"),
    ("InvalidIdentityTokenException", 400, "InvalidIdentityToken"),
    ("IDPRejectedClaim", 403, "IDPRejectedClaim"),
    ("MalformedPolicyDocument", 400, "MalformedPolicyDocument"),
    ("MalformedPolicyDocumentException", 400, "MalformedPolicyDocument"),
    ("PackedPolicyTooLarge", 400, "PackedPolicyTooLarge"),
    ("PackedPolicyTooLargeException", 400, "PackedPolicyTooLarge"),
    ("ValidationError", 400, "ValidationError"),
    ("RegionDisabledException", 403, "RegionDisabledException"),
    ("SomethingNew", 400, "SomethingNew"),
    ("Odd<Code> \u00e9!", 400, "OddCode"),
]


@pytest.mark.parametrize(("code", "status", "named"), REFUSALS)
def test_refusals_are_invalid_target_carrying_provider_code_and_request_id(
    aws_emulator: AwsEmulator,
    principal: Principal,
    subject_token: str,
    code: str,
    status: int,
    named: str,
) -> None:
    aws_emulator.fail_next(status, code, message=f"echo {subject_token}", request_id=REQUEST_ID)
    with pytest.raises(InvalidTarget) as caught:
        provider(aws_emulator.endpoint_url).issue(principal, mapping(), subject_token, ())
    prefix = f"aws: {named} - "
    assert caught.value.description.startswith(prefix)
    assert len(caught.value.description) > len(prefix)  # a fixed phrase follows
    assert caught.value.error == "invalid_target"
    assert caught.value.status == 400
    assert (caught.value.provider, caught.value.provider_code) == ("aws", named)
    assert caught.value.upstream_request_id == REQUEST_ID
    assert caught.value.retry_after is None
    assert caught.value.headers == {}
    assert_nothing_leaks(caught.value, subject_token)


def test_an_unusable_request_id_is_not_kept(
    aws_emulator: AwsEmulator, principal: Principal, subject_token: str
) -> None:
    aws_emulator.fail_next(403, "AccessDenied", request_id="not an id; " + "x" * 200)
    with pytest.raises(InvalidTarget) as caught:
        provider(aws_emulator.endpoint_url).issue(principal, mapping(), subject_token, ())
    assert caught.value.provider_code == "AccessDenied"
    assert caught.value.upstream_request_id is None


@pytest.mark.parametrize("code", ["ExpiredTokenException", "ExpiredToken"])
def test_expired_token_is_invalid_request(
    aws_emulator: AwsEmulator, principal: Principal, subject_token: str, code: str
) -> None:
    aws_emulator.fail_next(400, code, message="Token expired", request_id=REQUEST_ID)
    with pytest.raises(InvalidRequest) as caught:
        provider(aws_emulator.endpoint_url).issue(principal, mapping(), subject_token, ())
    assert caught.value.description.startswith("aws: ExpiredTokenException - ")
    assert caught.value.error == "invalid_request"
    assert (caught.value.provider, caught.value.provider_code) == ("aws", "ExpiredTokenException")
    assert caught.value.upstream_request_id == REQUEST_ID


TRANSIENT = [
    ("Throttling", 400, "Throttling", 5),
    ("ThrottlingException", 400, "Throttling", 5),
    ("RequestLimitExceeded", 400, "Throttling", 5),
    ("IDPCommunicationError", 400, "IDPCommunicationError", 2),
    ("InternalFailure", 500, "ServiceUnavailable", 2),
    ("ServiceUnavailable", 503, "ServiceUnavailable", 2),
    ("AnythingAtAll", 502, "ServiceUnavailable", 2),
]


@pytest.mark.parametrize(("code", "status", "named", "retry_after"), TRANSIENT)
def test_transient_failures_are_temporarily_unavailable_with_typed_retry_after(
    aws_emulator: AwsEmulator,
    principal: Principal,
    subject_token: str,
    code: str,
    status: int,
    named: str,
    retry_after: int,
) -> None:
    aws_emulator.fail_next(status, code, sender=status < 500, request_id=REQUEST_ID)
    with pytest.raises(TemporarilyUnavailable) as caught:
        provider(aws_emulator.endpoint_url).issue(principal, mapping(), subject_token, ())
    assert caught.value.description.startswith(f"aws: {named} - ")
    assert caught.value.status == 503
    assert (caught.value.provider, caught.value.provider_code) == ("aws", named)
    assert caught.value.upstream_request_id == REQUEST_ID
    assert caught.value.retry_after == retry_after
    assert caught.value.headers == {"Retry-After": str(retry_after)}
    assert_nothing_leaks(caught.value, subject_token)


MALFORMED_OK = (
    b'<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
    b"<AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResult>"
    b"<ResponseMetadata><RequestId>r-1</RequestId></ResponseMetadata>"
    b"</AssumeRoleWithWebIdentityResponse>"
)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, b"<not xml"),
        (200, b""),
        (200, MALFORMED_OK),
        (500, b"<html>proxy error</html>"),
    ],
)
def test_malformed_answers_are_temporarily_unavailable(
    aws_emulator: AwsEmulator, principal: Principal, subject_token: str, status: int, body: bytes
) -> None:
    aws_emulator.fail_next(status, body=body)
    with pytest.raises(TemporarilyUnavailable) as caught:
        provider(aws_emulator.endpoint_url).issue(principal, mapping(), subject_token, ())
    assert caught.value.description.startswith("aws: ")


def test_read_timeout_is_bounded(
    aws_emulator: AwsEmulator, principal: Principal, subject_token: str
) -> None:
    aws_emulator.delay = 2.0
    started = time.monotonic()
    with pytest.raises(TemporarilyUnavailable) as caught:
        provider(aws_emulator.endpoint_url, read_timeout=0.3).issue(
            principal, mapping(), subject_token, ()
        )
    assert time.monotonic() - started < 1.5
    assert caught.value.description.startswith("aws: ReadTimeout - ")
    assert (caught.value.provider, caught.value.provider_code) == ("aws", "ReadTimeout")
    assert caught.value.upstream_request_id is None


def test_connection_refused_is_temporarily_unavailable(
    principal: Principal, subject_token: str, closed_port: int
) -> None:
    started = time.monotonic()
    with pytest.raises(TemporarilyUnavailable) as caught:
        provider(f"http://127.0.0.1:{closed_port}").issue(principal, mapping(), subject_token, ())
    assert time.monotonic() - started < 2
    assert caught.value.description.startswith("aws: EndpointConnectionError - ")


def test_logs_name_the_failure_but_hold_no_token(
    aws_emulator: AwsEmulator,
    principal: Principal,
    subject_token: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    aws_emulator.fail_next(400, "InvalidIdentityToken", message=f"bad token {subject_token}")
    with caplog.at_level(logging.DEBUG), pytest.raises(InvalidTarget):
        provider(aws_emulator.endpoint_url).issue(principal, mapping(), subject_token, ())
    # Only our own loggers: botocore's DEBUG output carries request bodies, so the service's
    # logging setup must keep botocore above DEBUG.
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("sts."))
    assert "InvalidIdentityToken" in text
    assert subject_token.rsplit(".", 1)[-1] not in text
    assert subject_token.split(".")[1] not in text


def test_mapping_without_aws_target_is_a_programming_error(
    aws_emulator: AwsEmulator, principal: Principal, subject_token: str
) -> None:
    from sts.mappings.spec import GcpTarget

    gcp = MappingSpec(
        name="g", account="a", project="p", gcp=GcpTarget(workload_identity_provider="x")
    )
    with pytest.raises(ValueError, match="no aws target"):
        provider(aws_emulator.endpoint_url).issue(principal, gcp, subject_token, ())
    assert aws_emulator.requests == []
