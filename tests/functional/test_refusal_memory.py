"""A cloud's refusal is remembered for 10 s per credential key (docs/reference.md section 10):
one broken mapping cannot spend the shared cloud quota or grow the audit table."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from sts.audit import AuditRecorder
from sts.dev.aws_emulator import AwsEmulator
from sts.dev.issuer import DevIssuer
from sts.mappings.document import parse_document
from sts.mappings.store import apply_specs
from tests.conftest import AUDIENCE
from tests.functional.conftest import DEFAULT_MAPPINGS, ROLE, Stack
from tests.functional.test_aws_trust import OURS, trust


@pytest.fixture
def refusing(aws: AwsEmulator, issuer: DevIssuer) -> Iterator[AwsEmulator]:
    """ROLE trusts one other deployment only: AWS refuses everyone else with AccessDenied."""
    aws.iam.add_oidc_provider(issuer.url, [AUDIENCE])
    aws.iam.set_trust_policy(ROLE, trust(issuer, pin_sub=OURS))
    yield aws
    aws.iam.clear()


def audit_rows(stack: Stack, mapping: str) -> int:
    time.sleep(0.3)  # the audit writer thread
    return len(AuditRecorder(stack.services.database).query(mapping=mapping, limit=1000))


def test_twenty_repeats_of_a_refused_key_make_one_cloud_call_and_one_audit_row(
    refusing: AwsEmulator, stack: Stack
) -> None:
    token = stack.token()
    answers = [stack.post(token) for _ in range(20)]
    assert {answer.status_code for answer in answers} == {400}
    assert {answer.json()["error_description"] for answer in answers} == {
        answers[0].json()["error_description"]
    }
    assert answers[0].json()["error_description"].startswith("aws: AccessDenied")
    assert len(stack.aws_requests()) == 1
    assert audit_rows(stack, "orders-prod") == 1
    # Another token of the same identity is the same key: remembered too.
    assert stack.post(stack.token()).status_code == 400
    assert len(stack.aws_requests()) == 1
    # Another identity is another key: asked at once.
    assert stack.post(stack.token(deployment="another")).status_code == 400
    assert len(stack.aws_requests()) == 2


def test_after_ten_seconds_the_cloud_is_asked_again(refusing: AwsEmulator, stack: Stack) -> None:
    token = stack.token()
    assert stack.post(token).status_code == 400
    refusing.iam.clear()  # the role is fixed; the service still remembers for 10 s
    assert stack.post(token).status_code == 400
    assert len(stack.aws_requests()) == 1
    deadline = time.monotonic() + 12
    while stack.post(token).status_code != 200:
        assert time.monotonic() < deadline, "still refused from memory after 10 s"
        time.sleep(0.5)
    assert len(stack.aws_requests()) == 2
    assert time.monotonic() > deadline - 12 + 9  # not before the 10 s were (nearly) over


def test_a_mapping_change_makes_a_new_key_at_once(refusing: AwsEmulator, stack: Stack) -> None:
    token = stack.token()
    assert stack.post(token).status_code == 400
    edited = DEFAULT_MAPPINGS.replace("duration_seconds: 3600", "duration_seconds: 1800", 1)
    assert edited != DEFAULT_MAPPINGS
    refusing.iam.clear()
    with stack.services.database.session() as session:
        apply_specs(
            session,
            parse_document(edited),
            prune=True,
            dry_run=False,
            actor="test",
            source="test",
        )
    deadline = time.monotonic() + 5
    while (answer := stack.post(token)).status_code != 200:
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.2)
    assert len(stack.aws_requests()) == 2


def test_503s_are_never_remembered(stack: Stack) -> None:
    token = stack.token()
    stack.aws.fail_next(503, "ServiceUnavailable", sender=False, times=3)
    try:
        assert stack.post(token).status_code == 503
    finally:
        stack.aws.clear()
    assert stack.post(token).status_code == 200


def test_the_services_own_refusal_costs_no_call_and_is_not_remembered(
    stack_factory: Any,
) -> None:
    """A broker mapping on a service without an issuer: 500 each time, never a cloud call."""
    stack = stack_factory(
        document=DEFAULT_MAPPINGS.replace(
            "duration_seconds: 3600", "duration_seconds: 3600\n      token: broker", 1
        )
    )
    assert [stack.post(stack.token()).status_code for _ in range(3)] == [500] * 3
    assert stack.aws_requests() == []
