"""The revocation rules (docs/reference.md section 11): who a revocation refuses, and the AWS deny
documents, each evaluated against a covered and an uncovered session with the IAM condition logic
the AWS emulator's trust check uses (``sts.iam_policy``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sts.iam_policy import denied
from sts.identity.principal import Principal
from sts.mappings.document import parse_document
from sts.mappings.spec import MappingSpec
from sts.revocations import (
    RevocationIndex,
    RevocationSpec,
    aws_policy,
    can_cover,
    session_context,
)

ROLE = "arn:aws:iam::123456789012:role/orders-api"
DOCUMENT = f"""
mappings:
  - name: tagged
    account: acme
    project: shop
    aws: {{role_arn: "{ROLE}", token: broker}}
  - name: untagged
    account: acme
    project: shop
    deployment: "main-*"
    aws: {{role_arn: "{ROLE}", token: zuplo}}
  - name: no-tags-broker
    account: acme
    project: "*"
    aws: {{role_arn: "{ROLE}", token: broker, session_tags: false}}
  - name: other-account
    account: globex
    project: shop
    aws: {{role_arn: "{ROLE}"}}
"""
MAPPINGS = {spec.name: spec for spec in parse_document(DOCUMENT, "t.yaml")}
AT = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
BEFORE, AFTER = (AT - timedelta(minutes=5)).timestamp(), (AT + timedelta(minutes=5)).timestamp()


def principal(deployment: str = "main-1", **overrides: str) -> Principal:
    values = {
        "issuer": "https://issuer.test",
        "sub": f"sub-{deployment}",
        "account": "acme",
        "project": "shop",
        "deployment": deployment,
        "environment_type": "production",
    }
    values.update(overrides)
    return Principal(audiences=frozenset({"aud"}), issued_at=BEFORE, **values)  # type: ignore[arg-type]


def identity(mapping: str, deployment: str = "main-1", **overrides: str) -> dict[str, str]:
    p = principal(deployment, **overrides)
    return {
        "account": p.account,
        "project": p.project,
        "deployment": p.deployment,
        "environment_type": p.environment_type,
        "sub": p.sub,
        "mapping": mapping,
    }


def session_denied(
    selectors: dict[str, str], mapping: MappingSpec, who: dict[str, str], issued_at: float
) -> bool:
    policy = aws_policy(7, selectors, AT, mapping, broker_mode=False)
    return denied(policy.document, "s3:GetObject", session_context(mapping, who, issued_at, False))


def test_session_tags_deny_exactly_the_covered_sessions_issued_before() -> None:
    tagged = MAPPINGS["tagged"]
    selectors = {"account": "acme", "deployment": "main-1"}
    policy = aws_policy(7, selectors, AT, tagged, broker_mode=False)
    assert policy.matched_by == "session tags"
    condition = policy.document["Statement"][0]["Condition"]
    assert condition["StringEquals"] == {
        "aws:PrincipalTag/zuplo-account": "acme",
        "aws:PrincipalTag/zuplo-deployment": "main-1",
    }
    assert condition["DateLessThan"] == {"aws:TokenIssueTime": "2026-12-06T12:00:00Z"}
    assert session_denied(selectors, tagged, identity("tagged"), BEFORE)
    assert not session_denied(selectors, tagged, identity("tagged"), AFTER)
    assert not session_denied(selectors, tagged, identity("tagged", "main-2"), BEFORE)


def test_the_session_name_when_no_tags_are_sent_and_a_deployment_is_named() -> None:
    untagged = MAPPINGS["untagged"]
    selectors = {"account": "acme", "deployment": "main/1"}
    policy = aws_policy(7, selectors, AT, untagged, broker_mode=False)
    assert policy.matched_by == "session name"
    assert policy.document["Statement"][0]["Condition"]["StringLike"] == {"aws:userid": "*:main-1"}
    assert session_denied(selectors, untagged, identity("untagged", "main/1"), BEFORE)
    assert not session_denied(selectors, untagged, identity("untagged", "main-2"), BEFORE)
    assert not session_denied(selectors, untagged, identity("untagged", "main/1"), AFTER)


def test_issue_time_alone_covers_every_session_of_the_role_and_says_so() -> None:
    no_tags = MAPPINGS["no-tags-broker"]
    selectors = {"account": "acme"}
    policy = aws_policy(7, selectors, AT, no_tags, broker_mode=False)
    assert policy.matched_by == "issue time"
    assert set(policy.document["Statement"][0]["Condition"]) == {"DateLessThan"}
    assert session_denied(selectors, no_tags, identity("no-tags-broker", "anyone"), BEFORE)
    assert not session_denied(selectors, no_tags, identity("no-tags-broker", "anyone"), AFTER)


def test_an_unset_token_sends_tags_only_in_broker_mode() -> None:
    mapping = MAPPINGS["other-account"]
    selectors = {"account": "globex", "deployment": "d"}
    assert aws_policy(1, selectors, AT, mapping, broker_mode=True).matched_by == "session tags"
    assert aws_policy(1, selectors, AT, mapping, broker_mode=False).matched_by == "session name"


@pytest.mark.parametrize(
    ("selectors", "mapping", "covers"),
    [
        ({"account": "acme"}, "tagged", True),
        ({"account": "globex"}, "tagged", False),
        ({"mapping": "tagged"}, "untagged", False),
        ({"account": "acme", "deployment": "main-7"}, "untagged", True),
        ({"account": "acme", "deployment": "feature-7"}, "untagged", False),
        ({"account": "acme", "project": "other"}, "no-tags-broker", True),
        ({"account": "acme", "project": "other"}, "tagged", False),
        ({"sub": "s"}, "other-account", True),
    ],
)
def test_which_mappings_a_revocation_can_cover(
    selectors: dict[str, str], mapping: str, covers: bool
) -> None:
    assert can_cover(selectors, MAPPINGS[mapping]) is covers


def revocation(
    *selectors: tuple[str, str], issued_before: datetime | None = None
) -> RevocationSpec:
    return RevocationSpec(1, selectors, issued_before, "r", "a", AT)


def test_the_index_refuses_exact_matches_only() -> None:
    index = RevocationIndex([revocation(("account", "acme"), ("deployment", "main-1"))])
    assert index.refusing(principal("main-1"), "tagged") is not None
    assert index.refusing(principal("main-2"), "tagged") is None
    assert index.refusing(principal("main-1", account="globex"), "tagged") is None
    assert RevocationIndex().refusing(principal(), "tagged") is None


def test_issued_before_refuses_older_tokens_only() -> None:
    cut = datetime.fromtimestamp(BEFORE + 60, UTC)
    index = RevocationIndex([revocation(("sub", "sub-main-1"), issued_before=cut)])
    old = principal("main-1")
    new = Principal(**{**{f: getattr(old, f) for f in old.__slots__}, "issued_at": BEFORE + 120})  # type: ignore[arg-type]
    assert index.refusing(old, "tagged") is not None
    assert index.refusing(new, "tagged") is None


def test_a_lifted_revocation_still_guards_credentials_issued_before_it() -> None:
    spec = RevocationSpec(
        3,
        (("mapping", "untagged"),),
        None,
        "r",
        "a",
        AT,
        aws_policies=(aws_policy(3, {"mapping": "untagged"}, AT, MAPPINGS["untagged"], False),),
        lifted_at=AT + timedelta(minutes=1),
    )
    index = RevocationIndex([], [spec])
    assert index.refusing(principal(), "untagged") is None  # lifted: served again
    untagged, tagged = MAPPINGS["untagged"], MAPPINGS["tagged"]
    assert index.denies(untagged, identity("untagged"), BEFORE) is spec
    assert index.denies(untagged, identity("untagged"), AFTER) is None
    # Another mapping of the same role: the printed policy denies every session of the role
    # issued before it (issue time alone), so those credentials are never served either.
    assert index.denies(tagged, identity("tagged"), BEFORE) is spec
    assert index.denies(tagged, identity("tagged"), AFTER) is None


def test_every_shape_of_revocation_is_found_among_a_thousand() -> None:
    """One look-up per shape (which selectors a revocation names): each is found exactly."""
    others = [revocation(("account", f"a{n}"), ("deployment", f"d{n}")) for n in range(1000)]
    mapping_only = RevocationSpec(2, (("mapping", "untagged"),), None, "r", "a", AT)
    account_and_mapping = RevocationSpec(
        3, (("account", "acme"), ("mapping", "tagged")), None, "r", "a", AT
    )
    by_project = RevocationSpec(4, (("project", "shop"), ("sub", "sub-x")), None, "r", "a", AT)
    index = RevocationIndex([*others, mapping_only, account_and_mapping, by_project])
    assert index.refusing(principal(), "untagged") is mapping_only
    assert index.refusing(principal(), "tagged") is account_and_mapping
    assert index.refusing(principal(account="globex"), "tagged") is None
    assert index.refusing(principal("x"), "no-tags-broker") is by_project
    assert index.refusing(principal("x", project="other"), "no-tags-broker") is None
    assert index.refusing(principal("d7", account="a7"), "any") is others[7]
    assert index.refusing(principal("d7", account="a8"), "any") is None
