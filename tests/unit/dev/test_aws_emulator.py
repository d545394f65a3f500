"""The sandbox's AWS emulator (``sts demo``, ``sts dev``) answers ``AssumeRoleWithWebIdentity`` as
an AWS account holding only the sandbox's IAM set-up would: the broker issuer as its one OIDC
provider, the demo role with its pinned trust policy, and nothing else.

Driven from outside, as anyone on the machine could: boto3's STS client, unsigned, over HTTP to
the emulator that :func:`sts.dev.demo.start_world` started. The broker issuer here is a stand-in
(:class:`tests.oidc.Issuer`) at the URL the world was told to trust, so that the test can mint
the broker tokens zuplo-sts would present, right and wrong.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

from sts.dev.aws_emulator import AwsEmulator
from sts.dev.demo import ROLE_ARN, World, start_world
from sts.dev.issuer import SigningKey
from sts.dev.sandbox import DEV_AUDIENCE
from tests.oidc import TAGS, Issuer

UNKNOWN_ROLE = "arn:aws:iam::123456789012:role/nobody-made-this-role"


@pytest.fixture(scope="module")
def broker() -> Iterator[Issuer]:
    """The issuer the sandbox's clouds trust (in the sandbox: zuplo-sts's own URL)."""
    served = Issuer()
    yield served
    served.close()


@pytest.fixture(scope="module")
def stranger() -> Iterator[Issuer]:
    """Another broker-like issuer: same claims, same shape, not registered with IAM."""
    served = Issuer()
    yield served
    served.close()


@pytest.fixture(scope="module")
def world(broker: Issuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with ExitStack() as stack:
        yield start_world(
            stack,
            AwsEmulator,
            broker_issuer=broker.url,
            audience=DEV_AUDIENCE,
            workdir=tmp_path_factory.mktemp("world"),
        )


def broker_token(issuer: Issuer, key: SigningKey | None = None, **overrides: Any) -> str:
    """A token shaped like zuplo-sts's broker token for mapping orders-prod."""
    claims: dict[str, Any] = {
        "sub": "mapping:orders-prod",
        TAGS: {
            "principal_tags": {"zuplo-account": ["my-account"], "zuplo-mapping": ["orders-prod"]},
            "transitive_tag_keys": ["zuplo-account", "zuplo-mapping"],
        },
        **overrides,
    }
    return issuer.mint(key, **claims)


def assume(world: World, role_arn: str, token: str) -> dict[str, Any]:
    client = boto3.client(
        "sts",
        region_name="us-east-1",
        endpoint_url=world.aws.endpoint_url,
        aws_access_key_id="unused",
        aws_secret_access_key="unused",
        config=Config(signature_version=UNSIGNED, retries={"max_attempts": 1}),
    )
    answer: dict[str, Any] = client.assume_role_with_web_identity(
        RoleArn=role_arn, RoleSessionName="outsider", WebIdentityToken=token
    )
    return answer


def refusal(world: World, role_arn: str, token: str) -> tuple[int, str, str]:
    """HTTP status, AWS error code and message of a refused call (fails if it was served)."""
    with pytest.raises(ClientError) as refused:
        assume(world, role_arn, token)
    response = refused.value.response
    return (
        response["ResponseMetadata"]["HTTPStatusCode"],
        response["Error"]["Code"],
        response["Error"]["Message"],
    )


def test_the_right_broker_token_for_the_sandbox_role_is_served(
    world: World, broker: Issuer
) -> None:
    answer = assume(world, ROLE_ARN, broker_token(broker))
    assert answer["Credentials"]["AccessKeyId"]
    assert answer["AssumedRoleUser"]["Arn"].endswith(":assumed-role/orders-api/outsider")


def test_a_broker_token_from_another_issuer_is_refused(world: World, stranger: Issuer) -> None:
    status, code, message = refusal(world, ROLE_ARN, broker_token(stranger))
    assert (status, code) == (400, "InvalidIdentityToken")
    assert message == f"No OpenIDConnect provider found in your account for {stranger.url}"


def test_a_broker_token_from_another_issuer_for_an_unknown_role_is_refused(
    world: World, stranger: Issuer
) -> None:
    """The finding (issue 23 point 8): this one used to get credentials from moto."""
    status, code, _ = refusal(world, UNKNOWN_ROLE, broker_token(stranger))
    assert (status, code) == (400, "InvalidIdentityToken")


def test_an_unknown_role_is_refused_even_to_the_trusted_issuer(
    world: World, broker: Issuer
) -> None:
    """AWS does not say whether a role exists: an unknown role is AccessDenied, as a role whose
    trust policy does not match is."""
    assert refusal(world, UNKNOWN_ROLE, broker_token(broker)) == (
        403,
        "AccessDenied",
        "Not authorized to perform sts:AssumeRoleWithWebIdentity",
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"sub": "mapping:analytics-gcp"}, (403, "AccessDenied")),
        ({"sub": "atcl_8GLgIDYRw38Jqg0tHR8tiZfh"}, (403, "AccessDenied")),
        ({"aud": DEV_AUDIENCE}, (400, "InvalidIdentityToken")),
        (
            {
                TAGS: {
                    "principal_tags": {"zuplo-account": ["someone-else"]},
                    "transitive_tag_keys": [],
                }
            },
            (403, "AccessDenied"),
        ),
        ({TAGS: None}, (403, "AccessDenied")),  # the trust policy checks a session tag
    ],
    ids=["another-mapping", "a-zuplo-sub", "wrong-aud", "another-account-tag", "no-tags"],
)
def test_the_trust_policy_conditions_are_evaluated(
    world: World, broker: Issuer, overrides: dict[str, Any], expected: tuple[int, str]
) -> None:
    status, code, _ = refusal(world, ROLE_ARN, broker_token(broker, **overrides))
    assert (status, code) == expected


def test_a_key_the_trusted_issuer_does_not_publish_is_refused(world: World, broker: Issuer) -> None:
    forged = broker_token(broker, SigningKey.generate(kid=broker.key.kid))
    assert refusal(world, ROLE_ARN, forged)[:2] == (400, "InvalidIdentityToken")


def test_the_zuplo_token_itself_is_refused(world: World) -> None:
    """The sandbox's roles trust only the broker, never the Zuplo-like issuer's tokens."""
    token = world.issuer.mint(audience="sts.amazonaws.com", sub="mapping:orders-prod")
    assert refusal(world, ROLE_ARN, token)[:2] == (400, "InvalidIdentityToken")


def test_refused_calls_are_recorded_like_any_other(world: World, stranger: Issuer) -> None:
    before = len(world.aws.requests)
    refusal(world, UNKNOWN_ROLE, broker_token(stranger))
    (call,) = world.aws.requests[before:]
    assert call.action == "AssumeRoleWithWebIdentity"
    assert call.role_arn == UNKNOWN_ROLE


def test_the_database_url_is_absolute(world: World) -> None:
    """What the banner prints must work from any directory."""
    path = world.database_url.removeprefix("sqlite:///")
    assert Path(path).is_absolute()
    assert Path(path).is_file()
