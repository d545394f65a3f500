"""The AWS emulator's web-identity checks (sts.dev.aws_iam), with a real OIDC issuer on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from sts.dev.aws_iam import IamTrust, Refusal
from sts.dev.issuer import SigningKey
from tests.oidc import TAGS, Issuer, mint

ROLE = "arn:aws:iam::123456789012:role/abac"


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    served = Issuer()
    yield served
    served.close()


def abac_policy(provider_arn: str, provider: str, *, tag_session: bool = True) -> dict[str, Any]:
    actions = ["sts:AssumeRoleWithWebIdentity"] + (["sts:TagSession"] if tag_session else [])
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Federated": provider_arn},
                "Action": actions,
                "Condition": {
                    "StringEquals": {
                        f"{provider}:aud": "sts.amazonaws.com",
                        "aws:RequestTag/zuplo-account": "acme",
                    },
                    "StringLike": {f"{provider}:sub": "mapping:*"},
                },
            }
        ],
    }


@pytest.fixture
def trust(issuer: Issuer) -> IamTrust:
    trust = IamTrust()
    provider = trust.add_oidc_provider(issuer.url, ["sts.amazonaws.com"])
    trust.set_trust_policy(ROLE, abac_policy(provider.arn, provider.url))
    return trust


def code(refusal: Refusal | None) -> str | None:
    return None if refusal is None else refusal.code


def test_a_token_that_meets_the_policy_is_accepted(trust: IamTrust, issuer: Issuer) -> None:
    assert trust.check(ROLE, issuer.mint()) is None


def test_roles_without_a_trust_policy_are_left_to_moto(trust: IamTrust, issuer: Issuer) -> None:
    other = "arn:aws:iam::123456789012:role/other"
    assert not trust.governs(other)
    assert trust.check(other, "not even a token") is None


@pytest.fixture
def strict(issuer: Issuer) -> IamTrust:
    """An account whose IAM holds only what was registered (the sandbox's emulator)."""
    trust = IamTrust(strict=True)
    provider = trust.add_oidc_provider(issuer.url, ["sts.amazonaws.com"])
    trust.set_trust_policy(ROLE, abac_policy(provider.arn, provider.url))
    return trust


def test_a_strict_account_governs_every_role(strict: IamTrust) -> None:
    assert strict.governs("arn:aws:iam::123456789012:role/other")
    assert strict.governs(ROLE)
    assert not strict.governs(None)  # no RoleArn: moto's own validation error


def test_a_strict_account_refuses_roles_it_does_not_know(strict: IamTrust, issuer: Issuer) -> None:
    """The token is checked first (its issuer, signature, claims), then the role: an unknown role
    is the same AccessDenied as a trust policy that does not match (AWS does not say which)."""
    other = "arn:aws:iam::123456789012:role/other"
    assert strict.check(other, issuer.mint()) == Refusal(
        403, "AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity"
    )
    assert code(strict.check(other, "not even a token")) == "InvalidIdentityToken"
    assert code(strict.check(other, mint("https://elsewhere.example", issuer.key))) == (
        "InvalidIdentityToken"
    )
    assert strict.check(ROLE, issuer.mint()) is None


def test_clearing_a_strict_account_leaves_it_strict(strict: IamTrust, issuer: Issuer) -> None:
    strict.clear()
    assert strict.strict
    assert code(strict.check(ROLE, issuer.mint())) == "InvalidIdentityToken"  # no provider now


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"aud": "https://sts.example.test"}, "InvalidIdentityToken"),
        ({"aud": ["x", "y"]}, "InvalidIdentityToken"),
        ({"exp": int(time.time()) - 10}, "ExpiredTokenException"),
        ({"iat": int(time.time()) + 3600}, "InvalidIdentityToken"),
        ({"nbf": int(time.time()) + 3600}, "InvalidIdentityToken"),
        ({"sub": "deployment:orders"}, "AccessDenied"),
        ({"iss": "https://elsewhere.example"}, "InvalidIdentityToken"),
        (
            {TAGS: {"principal_tags": {"zuplo-account": ["other"]}, "transitive_tag_keys": []}},
            "AccessDenied",
        ),
        ({TAGS: None}, "AccessDenied"),  # the policy checks aws:RequestTag/zuplo-account
    ],
)
def test_claims_and_conditions_are_checked(
    trust: IamTrust, issuer: Issuer, overrides: dict[str, Any], expected: str
) -> None:
    assert code(trust.check(ROLE, issuer.mint(**overrides))) == expected


def test_a_key_the_issuer_does_not_publish_is_refused(trust: IamTrust, issuer: Issuer) -> None:
    stranger = SigningKey.generate(kid=issuer.key.kid)
    refusal = trust.check(ROLE, issuer.mint(key=stranger))
    assert refusal == Refusal(400, "InvalidIdentityToken", "Incorrect token signature")


def test_tags_need_sts_tag_session(issuer: Issuer) -> None:
    trust = IamTrust()
    provider = trust.add_oidc_provider(issuer.url, ["sts.amazonaws.com"])
    trust.set_trust_policy(ROLE, abac_policy(provider.arn, provider.url, tag_session=False))
    assert trust.check(ROLE, issuer.mint()) == Refusal(
        403, "AccessDenied", "Not authorized to perform sts:TagSession"
    )


def _tags(principal: dict[str, Any], transitive: list[str] | None = None) -> dict[str, Any]:
    return {TAGS: {"principal_tags": principal, "transitive_tag_keys": transitive or []}}


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        (_tags({"zuplo-account": ["acme"], "k": ["v" * 256]}), None),
        (_tags({"zuplo-account": ["acme"], "k": ["v" * 257]}), "InvalidIdentityToken"),
        (_tags({"zuplo-account": ["acme"], "k" * 129: ["v"]}), "InvalidIdentityToken"),
        (_tags({"zuplo-account": ["acme"], "k": ["a\nb"]}), "InvalidIdentityToken"),
        (_tags({"zuplo-account": ["acme"], "k": ["semi;colon"]}), "InvalidIdentityToken"),
        (_tags({"zuplo-account": ["acme"], "aws:k": ["v"]}), "InvalidIdentityToken"),
        (_tags({"zuplo-account": ["acme"], "K": ["v"], "k": ["v"]}), "InvalidIdentityToken"),
        (_tags({"zuplo-account": ["acme", "two"]}), "InvalidIdentityToken"),
        (_tags({"zuplo-account": ["acme"]}, ["zuplo-project"]), "InvalidIdentityToken"),
        (
            _tags({"zuplo-account": ["acme"], **{f"t{i}": ["v"] for i in range(50)}}),
            "PackedPolicyTooLarge",
        ),
        (_tags({"zuplo-account": ["acme"], **{f"t{i}": ["v"] for i in range(49)}}), None),
        (_tags({"zuplo-account": ["acme"], "k": ["a b_.:/=+-@Ü9"]}), None),
    ],
)
def test_session_tag_format_is_aws_s(
    trust: IamTrust, issuer: Issuer, tags: dict[str, Any], expected: str | None
) -> None:
    assert code(trust.check(ROLE, issuer.mint(**tags))) == expected


def test_a_matching_deny_wins(issuer: Issuer) -> None:
    trust = IamTrust()
    provider = trust.add_oidc_provider(issuer.url, ["sts.amazonaws.com"])
    policy = abac_policy(provider.arn, provider.url)
    policy["Statement"].append(
        {
            "Effect": "Deny",
            "Principal": {"Federated": provider.arn},
            "Action": "sts:*",
            "Condition": {"StringEquals": {"aws:RequestTag/zuplo-project": "orders"}},
        }
    )
    trust.set_trust_policy(ROLE, policy)
    assert code(trust.check(ROLE, issuer.mint())) == "AccessDenied"


def test_an_unreachable_issuer_is_an_idp_communication_error() -> None:
    trust = IamTrust()
    trust.add_oidc_provider("http://127.0.0.1:1", ["sts.amazonaws.com"])
    trust.set_trust_policy(ROLE, {"Statement": []})
    token = mint("http://127.0.0.1:1", SigningKey.generate())
    assert code(trust.check(ROLE, token)) == "IDPCommunicationError"
