"""sts.errors: codes, statuses, safe descriptions, and the facts an error carries as fields."""

from __future__ import annotations

import json

import pytest

from sts.api import error_answer
from sts.errors import (
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    OAuthError,
    ServerError,
    TemporarilyUnavailable,
    UnauthorizedClient,
    UnsupportedGrantType,
)


@pytest.mark.parametrize(
    ("error", "code", "status"),
    [
        (InvalidRequest(), "invalid_request", 400),
        (UnsupportedGrantType(), "unsupported_grant_type", 400),
        (UnauthorizedClient(), "unauthorized_client", 400),
        (InvalidTarget(), "invalid_target", 400),
        (InvalidScope(), "invalid_scope", 400),
        (TemporarilyUnavailable(), "temporarily_unavailable", 503),
        (ServerError(), "server_error", 500),
    ],
)
def test_codes_and_statuses_of_rfc_6749_section_5_2(
    error: OAuthError, code: str, status: int
) -> None:
    assert (error.error, error.status) == (code, status)


def test_unsupported_grant_type_names_the_one_grant() -> None:
    assert UnsupportedGrantType().description == (
        "grant_type must be urn:ietf:params:oauth:grant-type:token-exchange"
    )


def test_a_server_error_answer_is_fixed_and_holds_no_cause() -> None:
    status, headers, body = error_answer(ServerError(cause="RuntimeError: boom with secret"))
    assert status == 500
    assert json.loads(body) == {"error": "server_error", "error_description": "internal error"}
    assert ("Cache-Control", "no-store") in headers
    assert b"boom" not in body
    assert all(name != "Retry-After" for name, _ in headers)


def test_facts_are_fields_and_never_change_the_description() -> None:
    error = InvalidTarget(
        "aws: AccessDenied - the role does not trust this identity",
        provider="aws",
        provider_code="AccessDenied",
        upstream_request_id="c6104cbe-af31-11e0-8154-cbc7ccf896c7",
        cause="log only",
    )
    assert error.provider == "aws"
    assert error.provider_code == "AccessDenied"
    assert error.upstream_request_id == "c6104cbe-af31-11e0-8154-cbc7ccf896c7"
    assert error.retry_after is None
    assert error.headers == {}
    assert error.to_dict() == {
        "error": "invalid_target",
        "error_description": "aws: AccessDenied - the role does not trust this identity",
    }


@pytest.mark.parametrize(("given", "sent"), [(None, "5"), (17, "17"), (0, "1"), (-3, "1")])
def test_retry_after_is_a_typed_field_rendered_as_the_header(given: int | None, sent: str) -> None:
    error = TemporarilyUnavailable(retry_after=given, provider="gcp", provider_code="UNAVAILABLE")
    assert error.retry_after == int(sent)
    assert error.headers == {"Retry-After": sent}
    status, headers, _ = error_answer(error)
    assert status == 503
    assert ("Retry-After", sent) in headers
