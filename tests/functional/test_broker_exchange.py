"""Broker-mode exchanges over HTTP (docs/reference.md sections 4 and 8): the clouds receive a
token the service signs, and verify it as they would, through the service's own discovery
document and JWKS on 127.0.0.1 (the dev AWS emulator's IAM checks, the GCP emulator).

The trust policies are the deploy template's (deploy/aws/mapping-role.yaml), rendered as IAM
receives them.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
import requests
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError
from cfnlint.decode import decode_str
from click.testing import CliRunner

from sts.broker.mint import AWS_TAGS_CLAIM, TAG_KEYS, TAG_REFUSAL
from sts.cli import cli
from sts.dev.aws_emulator import AwsEmulator
from sts.dev.gcp_emulator import GcpEmulator
from tests.conftest import AUDIENCE
from tests.functional.conftest import Stack
from tests.functional.serving import free_port
from tests.functional.test_deploy_broker import TEMPLATE, rendered_trust

PINNED = "arn:aws:iam::123456789012:role/zuplo-orders-api"
ABAC = "arn:aws:iam::123456789012:role/zuplo-projects"
OPEN = "arn:aws:iam::123456789012:role/zuplo-no-tags"
GCP_WIP = (
    "//iam.googleapis.com/projects/123456789/locations/global/"
    "workloadIdentityPools/zuplo-sts/providers/broker"
)
GCP_SA = "broker-reader@demo-project.iam.gserviceaccount.com"

MAPPINGS = f"""
mappings:
  - name: orders-prod
    account: my-account
    project: my-project
    environment_type: production
    aws:
      role_arn: {PINNED}
  - name: orders-preview
    account: my-account
    project: my-project
    environment_type: preview
    aws:
      role_arn: {PINNED}
  - name: projects-mine
    account: my-account
    project: "*"
    deployment: "abac-*"
    aws:
      role_arn: {ABAC}
  - name: projects-theirs
    account: other-account
    project: "*"
    aws:
      role_arn: {ABAC}
  - name: untagged
    account: my-account
    project: untagged
    aws:
      role_arn: {OPEN}
      session_tags: false
  - name: untagged-abac
    account: my-account
    project: untagged-abac
    aws:
      role_arn: {ABAC}
      session_tags: false
  - name: passed-through
    account: my-account
    project: passed-through
    aws:
      role_arn: {OPEN}
      token: zuplo
  - name: analytics-broker
    account: gcp-account
    project: analytics
    gcp:
      workload_identity_provider: {GCP_WIP}
      service_account: {GCP_SA}
  - name: federated-broker
    account: gcp-account
    project: federated
    gcp:
      workload_identity_provider: {GCP_WIP}
"""


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return decoded


def header_of(token: str) -> dict[str, Any]:
    head = token.split(".", maxsplit=1)[0]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    return decoded


def open_trust(provider_arn: str, host_path: str) -> dict[str, Any]:
    """Broker issuer, its audience and nothing else: no sts:TagSession either."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Federated": provider_arn},
                "Action": "sts:AssumeRoleWithWebIdentity",
                "Condition": {"StringEquals": {f"{host_path}:aud": "sts.amazonaws.com"}},
            }
        ],
    }


@dataclass
class Broker:
    stack: Stack
    issuer: str
    database_url: str
    kek: str

    def keys(self, *args: str) -> str:
        result = CliRunner().invoke(
            cli,
            ["keys", *args],
            env={
                "STS_DATABASE_URL": self.database_url,
                "STS_BROKER_ISSUER": self.issuer,
                "STS_KEY_ENCRYPTION_KEY": self.kek,
                "STS_ALLOW_HTTP_LOOPBACK": "true",
            },
        )
        assert result.exit_code == 0, result.output
        return result.stdout


@pytest.fixture
def broker(
    stack_factory: Any,
    database_url: str,
    aws: AwsEmulator,
    gcp: GcpEmulator,
) -> Iterator[Broker]:
    """The service in broker mode, its issuer its own URL; AWS and GCP trust only that issuer."""
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    raw = secrets.token_bytes(32)
    kek = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    provider = aws.iam.add_oidc_provider(issuer, ["sts.amazonaws.com"])
    decoded, errors = decode_str(TEMPLATE.read_text())
    assert not errors
    assert decoded is not None
    values = {
        "ProviderArn": provider.arn,
        "IssuerHostPath": provider.url,
        "MappingName": "orders-prod",
        "ZuploAccount": "my-account",
    }
    aws.iam.set_trust_policy(PINNED, rendered_trust(dict(decoded), "PinnedRole", values))
    aws.iam.set_trust_policy(ABAC, rendered_trust(dict(decoded), "AbacRole", values))
    aws.iam.set_trust_policy(OPEN, open_trust(provider.arn, provider.url))
    # As deploy/terraform/modules/gcp sets it up: the broker issuer, Google's default audience, keys
    # through discovery.
    gcp.add_provider(GCP_WIP, issuer, None, [])
    gcp.allow_service_account(GCP_SA, GCP_WIP)
    stack = stack_factory(
        document=MAPPINGS,
        database_url=database_url,
        port=port,
        broker_issuer=issuer,
        key_encryption_key=raw,
    )
    try:
        yield Broker(stack, issuer, database_url, kek)
    finally:
        aws.iam.clear()


def test_aws_receives_a_broker_token_its_trust_verifies_through_the_discovery(
    broker: Broker,
) -> None:
    stack = broker.stack
    zuplo_token = stack.token(environment_type="production")
    answer = stack.post(zuplo_token)
    assert answer.status_code == 200, answer.text
    assert answer.json()["mapping"] == "orders-prod"
    (call,) = stack.aws_requests()
    presented = call.web_identity_token
    assert presented is not None
    assert presented != zuplo_token
    header, claims = header_of(presented), claims_of(presented)
    served = requests.get(broker.issuer + "/.well-known/jwks.json", timeout=10).json()
    assert header == {"alg": "RS256", "kid": header["kid"], "typ": "JWT"}
    assert header["kid"] in {key["kid"] for key in served["keys"]}
    assert claims["iss"] == broker.issuer
    assert claims["sub"] == "mapping:orders-prod"
    assert claims["aud"] == "sts.amazonaws.com"
    assert 0 < claims["exp"] - claims["iat"] <= 300
    assert abs(claims["iat"] - time.time()) < 30
    assert len(claims["jti"]) >= 16
    assert claims["zuplo_sub"] == "atcl_8GLgIDYRw38Jqg0tHR8tiZfh"
    assert claims[AWS_TAGS_CLAIM] == {
        "principal_tags": {
            "zuplo-account": ["my-account"],
            "zuplo-project": ["my-project"],
            "zuplo-deployment": ["copper-bedbug-main-53c4947"],
            "zuplo-environment-type": ["production"],
            "zuplo-mapping": ["orders-prod"],
        },
        "transitive_tag_keys": list(TAG_KEYS),
    }
    # Nothing else of the Zuplo token, its audience above all.
    assert set(claims) == {
        "iss",
        "sub",
        "aud",
        "iat",
        "exp",
        "jti",
        "account",
        "project",
        "deployment",
        "environment_type",
        "zuplo_sub",
        AWS_TAGS_CLAIM,
    }
    assert AUDIENCE not in json.dumps(claims)


def test_credentials_are_cached_and_each_upstream_call_gets_a_fresh_jti(broker: Broker) -> None:
    stack = broker.stack
    token = stack.token()
    for _ in range(3):
        assert stack.post(token).status_code == 200
    assert len(stack.aws_requests()) == 1
    # Another deployment: another identity, another upstream call, another broker token.
    assert stack.post(stack.token(deployment="other-deployment")).status_code == 200
    first, second = (call.web_identity_token for call in stack.aws_requests())
    assert first is not None
    assert second is not None
    assert claims_of(first)["jti"] != claims_of(second)["jti"]
    assert claims_of(second)[AWS_TAGS_CLAIM]["principal_tags"]["zuplo-deployment"] == [
        "other-deployment"
    ]


def test_concurrent_identical_requests_sign_once_and_call_aws_once(
    broker: Broker, aws: AwsEmulator
) -> None:
    """Single-flight is unchanged in broker mode: one broker token per upstream call."""
    stack = broker.stack
    token = stack.token(deployment="single-flight")
    aws.delay = 0.5  # every concurrent request arrives while the first call is in flight
    try:
        with ThreadPoolExecutor(10) as pool:
            answers = list(pool.map(lambda _: stack.post(token), range(10)))
    finally:
        aws.delay = 0
    assert [answer.status_code for answer in answers] == [200] * 10
    assert len({answer.json()["access_token"] for answer in answers}) == 1
    assert len(stack.aws_requests()) == 1


def test_the_pinned_role_refuses_another_mappings_broker_token(broker: Broker) -> None:
    """orders-preview also names the pinned role: AWS refuses, its sub names another mapping."""
    answer = broker.stack.post(broker.stack.token(environment_type="preview"))
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_target"
    assert answer.json()["error_description"].startswith("aws: AccessDenied")


def test_a_zuplo_token_presented_directly_to_aws_is_refused(
    broker: Broker, aws: AwsEmulator
) -> None:
    """What pass-through allowed (test_aws_trust.py) no longer works: AWS trusts only the broker."""
    client = boto3.client(
        "sts",
        endpoint_url=aws.endpoint_url,
        region_name="us-east-1",
        config=Config(signature_version=UNSIGNED),
    )
    with pytest.raises(ClientError) as refused:
        client.assume_role_with_web_identity(
            RoleArn=PINNED, RoleSessionName="direct", WebIdentityToken=broker.stack.token()
        )
    assert refused.value.response["Error"]["Code"] == "InvalidIdentityToken"


def test_one_abac_role_serves_every_project_of_its_account_by_session_tags(
    broker: Broker,
) -> None:
    stack = broker.stack
    for project in ("billing", "orders"):
        answer = stack.post(stack.token(project=project, deployment=f"abac-{project}"))
        assert answer.status_code == 200, answer.text
        assert answer.json()["mapping"] == "projects-mine"
    tags = [
        claims_of(call.web_identity_token or "")[AWS_TAGS_CLAIM]["principal_tags"]
        for call in stack.aws_requests()
    ]
    assert [t["zuplo-project"] for t in tags] == [["billing"], ["orders"]]
    # Another account mapped to the same role: its tags do not satisfy the trust policy.
    other = stack.post(stack.token(account="other-account", project="billing"))
    assert other.status_code == 400
    assert other.json()["error_description"].startswith("aws: AccessDenied")


def test_session_tags_false_sends_no_tags(broker: Broker) -> None:
    stack = broker.stack
    answer = stack.post(stack.token(project="untagged"))
    assert answer.status_code == 200, answer.text
    (call,) = stack.aws_requests()
    claims = claims_of(call.web_identity_token or "")
    assert AWS_TAGS_CLAIM not in claims
    assert claims["sub"] == "mapping:untagged"
    # The ABAC role needs the tags: without them AWS refuses.
    refused = stack.post(stack.token(project="untagged-abac"))
    assert refused.status_code == 400
    assert refused.json()["error_description"].startswith("aws: AccessDenied")


def test_a_claim_aws_cannot_carry_as_a_tag_is_refused_before_any_call(broker: Broker) -> None:
    stack = broker.stack
    for deployment in ("abac-caf\u00e9", "abac-" + "x" * 300, "abac-a#b"):
        answer = stack.post(stack.token(project="orders", deployment=deployment))
        assert answer.status_code == 400, deployment
        assert answer.json() == {"error": "invalid_target", "error_description": TAG_REFUSAL}
    assert stack.aws_requests() == []
    # Without session tags the same value is no tag, and goes through.
    answer = stack.post(stack.token(project="untagged", deployment="caf\u00e9"))
    assert answer.status_code == 200, answer.text


def test_token_zuplo_passes_the_zuplo_token_through_on_a_broker_service(broker: Broker) -> None:
    stack = broker.stack
    zuplo_token = stack.token(project="passed-through")
    # The open role trusts only the broker issuer: AWS refuses the Zuplo token.
    answer = stack.post(zuplo_token)
    assert answer.status_code == 400
    assert answer.json()["error_description"].startswith("aws: InvalidIdentityToken")
    (call,) = stack.aws_requests()
    assert call.web_identity_token == zuplo_token


def test_a_key_rotated_now_signs_the_next_upstream_call(broker: Broker) -> None:
    stack = broker.stack
    assert stack.post(stack.token()).status_code == 200
    before = header_of(stack.aws_requests()[0].web_identity_token or "")["kid"]
    broker.keys("rotate", "--now")
    deadline = time.monotonic() + 10
    while True:
        answer = stack.post(stack.token(deployment=f"d{time.monotonic_ns()}"))
        assert answer.status_code == 200, answer.text
        kid = header_of(stack.aws_requests()[-1].web_identity_token or "")["kid"]
        if kid != before:
            break
        assert time.monotonic() < deadline, "the rotated key did not sign within 10 s"
        time.sleep(0.5)


def test_gcp_receives_a_broker_token_for_the_providers_default_audience(
    broker: Broker, gcp: GcpEmulator
) -> None:
    stack = broker.stack
    zuplo_token = stack.token(account="gcp-account", project="analytics")
    answer = stack.post(zuplo_token)
    assert answer.status_code == 200, answer.text
    assert answer.json()["mapping"] == "analytics-broker"
    exchange, generate = stack.gcp_requests()
    presented = exchange.body["subject_token"]
    assert presented != zuplo_token
    claims = claims_of(presented)
    assert claims["aud"] == "https:" + GCP_WIP
    assert claims["sub"] == "mapping:analytics-broker"
    assert claims["iss"] == broker.issuer
    assert AWS_TAGS_CLAIM not in claims
    assert exchange.body["audience"] == GCP_WIP
    assert generate.path.endswith(f"{GCP_SA}:generateAccessToken")
    # Cached: one exchange per identity.
    assert stack.post(zuplo_token).status_code == 200
    assert len(stack.gcp_requests()) == 2


def test_gcp_refuses_a_zuplo_token_for_the_broker_provider(
    broker: Broker, gcp: GcpEmulator
) -> None:
    answer = requests.post(
        gcp.sts_url,
        data={
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "audience": GCP_WIP,
            "scope": "https://www.googleapis.com/auth/cloud-platform",
            "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "subject_token": broker.stack.issuer.mint(audience="https:" + GCP_WIP),
        },
        timeout=10,
    )
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_grant"


def test_broker_mapping_on_a_service_without_issuer_is_500_logged_with_its_name(
    stack_factory: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    document = MAPPINGS.replace(
        f"      role_arn: {PINNED}\n  - name: orders-preview",
        f"      role_arn: {PINNED}\n      token: broker\n  - name: orders-preview",
    )
    assert document != MAPPINGS
    stack = stack_factory(document=document)
    capfd.readouterr()
    answer = stack.post(stack.token())
    assert answer.status_code == 500
    assert answer.json() == {"error": "server_error", "error_description": "internal error"}
    assert stack.aws_requests() == []
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line]
    errors = [line for line in lines if line["level"] == "error"]
    assert [line["mapping"] for line in errors] == ["orders-prod"], lines
    assert "STS_BROKER_ISSUER" in errors[0]["msg"]
    # The same service's mappings without a token field pass the Zuplo token through.
    token = stack.token(project="untagged")
    passed = stack.post(token)
    assert passed.status_code == 200, passed.text
    assert [call.web_identity_token for call in stack.aws_requests()] == [token]


def test_without_broker_mode_an_unset_token_passes_the_zuplo_token_through(
    stack: Stack,
) -> None:
    token = stack.token()
    assert stack.post(token).status_code == 200
    (call,) = stack.aws_requests()
    assert call.web_identity_token == token


def test_kms_signed_broker_tokens_are_verified_by_aws_through_the_discovery(
    stack_factory: Any, aws: AwsEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With STS_SIGNING_KMS_KEY_IDS the service holds no private key: moto's KMS signs (real
    RSA), and IAM verifies the token against the public key the JWKS publishes."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    kms = boto3.client("kms", region_name="us-east-1", endpoint_url=aws.endpoint_url)
    arn = kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    provider = aws.iam.add_oidc_provider(issuer, ["sts.amazonaws.com"])
    aws.iam.set_trust_policy(OPEN, open_trust(provider.arn, provider.url))
    try:
        stack = stack_factory(
            document=MAPPINGS,
            port=port,
            broker_issuer=issuer,
            signing_kms_key_ids=(arn,),
            kms_endpoint_url=aws.endpoint_url,
        )
        answer = stack.post(stack.token(project="untagged"))
        assert answer.status_code == 200, answer.text
        # KMS is served by the same emulator: its Sign and GetPublicKey calls are there too.
        (call,) = [c for c in stack.aws_requests() if c.action == "AssumeRoleWithWebIdentity"]
        token = call.web_identity_token or ""
        served = requests.get(issuer + "/.well-known/jwks.json", timeout=10).json()["keys"]
        assert [key["kid"] for key in served] == [header_of(token)["kid"]]
        assert claims_of(token)["iss"] == issuer
        # The IAM check really verified the signature: a token signed by another key is refused.
        forged = token.rsplit(".", 1)[0] + "." + token.rsplit(".", 1)[1][::-1]
        assert aws.iam.check(OPEN, forged) is not None
        assert aws.iam.check(OPEN, token) is None

        # KMS throttling when a new identity needs a token: 503 with Retry-After, no STS call.
        seen = len(aws.requests)
        aws.fail_next(
            400,
            body=b'{"__type":"ThrottlingException","message":"Rate exceeded"}',
            headers={"Content-Type": "application/x-amz-json-1.1"},
            times=2,
        )
        throttled = stack.post(stack.token(project="untagged", deployment="another"))
        assert throttled.status_code == 503, throttled.text
        assert throttled.json()["error"] == "temporarily_unavailable"
        assert int(throttled.headers["Retry-After"]) > 0
        assert [c.action for c in aws.requests[seen:]] == [None, None]
        # The next attempt signs and goes through.
        again = stack.post(stack.token(project="untagged", deployment="another"))
        assert again.status_code == 200, again.text
    finally:
        aws.iam.clear()


def test_a_replica_signs_and_the_other_replicas_jwks_verifies(
    stack_factory: Any, aws: AwsEmulator, database_url: str
) -> None:
    """Two replicas on one database: AWS reads the JWKS from one, the other signs."""
    raw = secrets.token_bytes(32)
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    provider = aws.iam.add_oidc_provider(issuer, ["sts.amazonaws.com"])
    aws.iam.set_trust_policy(OPEN, open_trust(provider.arn, provider.url))
    try:
        common = {"broker_issuer": issuer, "key_encryption_key": raw, "database_url": database_url}
        publisher = stack_factory(document=MAPPINGS, port=port, **common)
        signer = stack_factory(document=MAPPINGS, **common)
        assert publisher.url == issuer
        assert signer.url != issuer
        answer = signer.post(signer.token(project="untagged"))
        assert answer.status_code == 200, answer.text
        (call,) = signer.aws_requests()
        kid = header_of(call.web_identity_token or "")["kid"]
        served = requests.get(issuer + "/.well-known/jwks.json", timeout=10).json()["keys"]
        assert kid in [key["kid"] for key in served]
    finally:
        aws.iam.clear()
