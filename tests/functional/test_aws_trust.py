"""Trust policies as AWS evaluates them, through the dev AWS emulator's IAM checks (aws_iam).

Why pass-through trust must pin ``sub`` (docs/security.md): any Zuplo deployment can mint a token
for any audience and call AssumeRoleWithWebIdentity itself, without zuplo-sts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

from sts.dev.aws_emulator import AwsEmulator
from sts.dev.aws_iam import provider_url
from sts.dev.issuer import DevIssuer
from tests.conftest import AUDIENCE
from tests.functional.conftest import ROLE

OURS = "atcl_ours0000000000000000"
THEIRS = "atcl_someone0else0000000"


def trust(issuer: DevIssuer, *, pin_sub: str | None) -> dict[str, Any]:
    host_path = provider_url(issuer.url)
    conditions = {f"{host_path}:aud": AUDIENCE}
    if pin_sub is not None:
        conditions[f"{host_path}:sub"] = pin_sub
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Federated": f"arn:aws:iam::123456789012:oidc-provider/{host_path}"},
                "Action": "sts:AssumeRoleWithWebIdentity",
                "Condition": {"StringEquals": conditions},
            }
        ],
    }


@pytest.fixture
def iam(aws: AwsEmulator, issuer: DevIssuer) -> Iterator[AwsEmulator]:
    aws.iam.add_oidc_provider(issuer.url, [AUDIENCE])
    yield aws
    aws.iam.clear()


def assume_directly(aws: AwsEmulator, token: str) -> str:
    """What anyone holding a Zuplo token can do without zuplo-sts: call AWS STS themselves."""
    client = boto3.client(
        "sts",
        endpoint_url=aws.endpoint_url,
        region_name="us-east-1",
        config=Config(signature_version=UNSIGNED),
    )
    try:
        client.assume_role_with_web_identity(
            RoleArn=ROLE, RoleSessionName="direct", WebIdentityToken=token
        )
    except ClientError as exc:
        return str(exc.response["Error"]["Code"])
    return "issued"


def test_an_audience_only_trust_admits_any_zuplo_deployment_that_calls_aws_itself(
    iam: AwsEmulator, issuer: DevIssuer
) -> None:
    iam.iam.set_trust_policy(ROLE, trust(issuer, pin_sub=None))
    stranger = issuer.mint(audience=AUDIENCE, sub=THEIRS, account="another-customer")
    assert assume_directly(iam, stranger) == "issued"


def test_a_sub_pinned_trust_admits_only_that_deployment(
    iam: AwsEmulator, issuer: DevIssuer
) -> None:
    iam.iam.set_trust_policy(ROLE, trust(issuer, pin_sub=OURS))
    assert assume_directly(iam, issuer.mint(audience=AUDIENCE, sub=OURS)) == "issued"
    stranger = issuer.mint(audience=AUDIENCE, sub=THEIRS, account="another-customer")
    assert assume_directly(iam, stranger) == "AccessDenied"


def test_the_service_passes_on_the_refusal_of_a_pinned_trust(iam: AwsEmulator, stack: Any) -> None:
    iam.iam.set_trust_policy(ROLE, trust(stack.issuer, pin_sub=OURS))
    ours = stack.post(stack.token(sub=OURS))
    assert ours.status_code == 200, ours.text
    other = stack.post(stack.token(sub=THEIRS))
    assert other.status_code == 400
    assert other.json()["error"] == "invalid_target"
    assert other.json()["error_description"].startswith("aws: AccessDenied")
    assert [call.action for call in stack.aws_requests()] == [
        "AssumeRoleWithWebIdentity",
        "AssumeRoleWithWebIdentity",
    ]
