"""schemathesis fuzzes the running service against its own OpenAPI document over real HTTP.

Every documented operation gets schema-driven positive and negative requests (schemathesis's
coverage and fuzzing phases, bounded and derandomized so the run is fast and repeatable), and
every undocumented method on each path. About half the positive /token cases carry a valid
subject token from the dev issuer, so success and the mapping errors are fuzzed too, not only
token rejections. Checks: no 5xx, status code, media type, headers and body as documented,
negative data rejected, 405 with Allow for undocumented methods, and Cache-Control: no-store on
every /token answer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
import requests
import schemathesis
from schemathesis import Case, CheckContext, GenerationMode, Response
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from sts.api.openapi import DOCUMENT
from sts.dev.aws_emulator import AwsEmulator
from sts.dev.gcp_emulator import GcpEmulator
from sts.dev.issuer import DevIssuer
from tests.conftest import AUDIENCE
from tests.functional.conftest import GRANT, ID_TOKEN, Stack, running_stack

MAX_EXAMPLES = 40
# Identities a valid token can carry: one per default mapping, plus one that no mapping binds.
IDENTITIES: tuple[dict[str, str], ...] = (
    {"account": "my-account", "project": "my-project", "environment_type": "production"},
    {"account": "my-account", "project": "my-project", "environment_type": "preview"},
    {"account": "gcp-account", "project": "analytics"},
    {"account": "gcp-account", "project": "federated"},
    {"account": "unbound", "project": "nowhere"},
)

# The app serves exactly this document (tests/functional/test_openapi.py and the test below
# check the bytes), so the operations are collected without a server; every generated request
# still goes over HTTP to the running service.
schema = schemathesis.openapi.from_dict(
    DOCUMENT,
    config=schemathesis.Config.from_dict(
        {
            "seed": 20260101,
            "generation": {
                "mode": "all",
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
            },
            "phases": {"stateful": {"enabled": False}},
        }
    ),
)


@pytest.fixture(scope="module")
def fuzz_stack(
    issuer: DevIssuer, aws: AwsEmulator, gcp: GcpEmulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """One service for the whole module: schemathesis makes a few hundred requests."""
    url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'sts.db'}"
    with running_stack(issuer, aws, gcp, url) as stack:
        yield stack


def with_valid_token(case: Case, stack: Stack) -> None:
    """Swap the generated subject token for a valid one in about half the positive cases.

    Which cases, and which identity the token carries, follow from the generated body, so a
    derandomized run sends the same requests every time. Negative cases keep their token: a
    valid one would turn some of them (an over-long token, say) into acceptable requests.
    """
    body = case.body
    if case.meta is None or case.meta.generation.mode is not GenerationMode.POSITIVE:
        return
    if not isinstance(body, dict) or not isinstance(body.get("subject_token"), str):
        return
    digest = hashlib.sha256(repr(sorted(body.items(), key=repr)).encode()).digest()
    if digest[0] % 2:
        return
    identity = IDENTITIES[digest[1] % len(IDENTITIES)]
    body["subject_token"] = stack.issuer.mint(
        audience=AUDIENCE, deployment=f"fuzz-{digest[2] % 4}", **identity
    )


def token_answers_are_not_stored(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """RFC 6749 section 5.1: every /token answer, success or error, is Cache-Control: no-store.

    OPTIONS is Flask's automatic answer (an Allow list, no body), and RFC 9110 section 9.3.7
    makes OPTIONS responses uncacheable anyway.
    """
    if case.path != "/token" or response.request.method == "OPTIONS":
        return None
    assert response.headers.get("cache-control") == ["no-store"], "Cache-Control is not no-store"
    assert response.headers.get("pragma") == ["no-cache"], "Pragma is not no-cache"
    return None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    unsupported_method,
    token_answers_are_not_stored,
]


@schema.parametrize()
def test_api_conforms_to_its_document(case: Case, fuzz_stack: Stack) -> None:
    with_valid_token(case, fuzz_stack)
    case.call_and_validate(base_url=fuzz_stack.url, checks=CHECKS, timeout=30)


def test_fuzzed_document_is_the_served_one(fuzz_stack: Stack) -> None:
    served = requests.get(fuzz_stack.url + "/openapi.json", timeout=10).json()
    assert served == schema.raw_schema


# -- the checks can fail -------------------------------------------------------------------------


def token_case() -> Case:
    body = {"grant_type": GRANT, "subject_token": "x", "subject_token_type": ID_TOKEN}
    return schema["/token"]["POST"].Case(body=body, media_type="application/json")


@pytest.mark.parametrize(
    ("path", "check"),
    [
        # A real answer without Cache-Control, as if /token had given it.
        ("/metrics", token_answers_are_not_stored),
        ("/metrics", content_type_conformance),
        # Real JSON answers that are not what the document says /token returns.
        ("/healthz", response_schema_conformance),
        ("/nope", status_code_conformance),
    ],
)
def test_checks_reject_wrong_token_answers(fuzz_stack: Stack, path: str, check: object) -> None:
    wrong = requests.get(fuzz_stack.url + path, timeout=10)
    with pytest.raises(FailureGroup):
        token_case().validate_response(wrong, checks=[check])  # type: ignore[list-item]


def test_checks_accept_a_right_token_answer(fuzz_stack: Stack) -> None:
    case = token_case()
    response = case.call(base_url=fuzz_stack.url)
    assert response.status_code == 400
    case.validate_response(response, checks=CHECKS)
