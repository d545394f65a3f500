"""GET /openapi.json: a valid OpenAPI 3.1 document that says what the running app really does."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import jsonschema_rs
import pytest
import requests
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from sts import create_app
from sts.api import error_answer
from sts.api.openapi import DOCUMENT
from sts.dev.aws_emulator import AwsEmulator
from sts.dev.gcp_emulator import GcpEmulator
from sts.dev.issuer import DevIssuer
from sts.errors import ServerError
from tests.conftest import AUDIENCE
from tests.functional.conftest import SA, Stack, running_stack

IMPLICIT_METHODS = {"HEAD", "OPTIONS"}


@pytest.fixture(scope="module")
def shared(
    issuer: DevIssuer, aws: AwsEmulator, gcp: GcpEmulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """One service for the tests here that do not change it."""
    url = f"sqlite:///{tmp_path_factory.mktemp('openapi') / 'sts.db'}"
    with running_stack(issuer, aws, gcp, url) as stack:
        yield stack


def fetch_document(stack: Stack) -> dict[str, Any]:
    response = requests.get(stack.url + "/openapi.json", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Cache-Control"] == "public, max-age=3600"
    document: dict[str, Any] = response.json()
    return document


def resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def all_refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        refs = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return refs + [ref for value in node.values() for ref in all_refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in all_refs(value)]
    return []


def schema_validator(document: dict[str, Any], schema: dict[str, Any]) -> Any:
    """A JSON Schema 2020-12 validator whose ``#/components/...`` refs resolve in ``document``."""
    root = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": document["components"],
        **schema,
    }
    return jsonschema_rs.validator_for(root)


def assert_conforms(
    document: dict[str, Any], path: str, method: str, response: requests.Response
) -> None:
    """The response's status, media type, headers and body are as the document says."""
    operation = document["paths"][path][method.lower()]
    responses = operation["responses"]
    assert str(response.status_code) in responses, (path, method, response.status_code)
    described = resolve(document, responses[str(response.status_code)])
    for name, reference in described.get("headers", {}).items():
        header = resolve(document, reference)
        value = response.headers.get(name)
        if value is None:
            assert not header.get("required"), f"{name} missing on {response.status_code}"
            continue
        typed: Any = int(value) if header["schema"].get("type") == "integer" else value
        errors = list(schema_validator(document, header["schema"]).iter_errors(typed))
        assert not errors, (name, value, [e.message for e in errors])
    received = response.headers["Content-Type"].split(";")[0].strip()
    assert received in described["content"], (received, list(described["content"]))
    body: Any = response.json() if received == "application/json" else response.text
    schema = described["content"][received]["schema"]
    errors = list(schema_validator(document, schema).iter_errors(body))
    assert not errors, [e.message for e in errors]


# -- the document itself ------------------------------------------------------------------------


def test_document_is_valid_openapi_3_1(shared: Stack) -> None:
    document = fetch_document(shared)
    assert document["openapi"].startswith("3.1.")
    OPENAPI_31_VALIDATOR.validate(document)
    # The meta-schema does not follow $refs; every one must point somewhere in the document.
    for ref in all_refs(document):
        assert resolve(document, {"$ref": ref}), ref


def test_served_document_is_the_built_one(shared: Stack) -> None:
    assert fetch_document(shared) == json.loads(json.dumps(DOCUMENT))


def test_validator_rejects_a_broken_document() -> None:
    broken = json.loads(json.dumps(DOCUMENT))
    broken["paths"]["/token"]["post"]["responses"]["200"]["content"] = "application/json"
    assert not OPENAPI_31_VALIDATOR.is_valid(broken)


def test_every_route_is_described_and_every_description_is_a_route(shared: Stack) -> None:
    app = create_app(services=shared.services)
    served = {
        (re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", path), method)
        for path, method in app.routes()
        if method not in IMPLICIT_METHODS
    }
    described = {
        (path, method.upper())
        for path, item in fetch_document(shared)["paths"].items()
        for method in item
        if method in {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
    }
    assert served == described
    assert ("/token", "POST") in served


def test_token_request_fields_match_the_contract() -> None:
    for name in ("TokenRequestForm", "TokenRequestJson"):
        schema = DOCUMENT["components"]["schemas"][name]
        assert schema["required"] == ["grant_type", "subject_token", "subject_token_type"]
        assert schema["additionalProperties"] is True
        props = schema["properties"]
        assert props["grant_type"]["enum"] == ["urn:ietf:params:oauth:grant-type:token-exchange"]
        assert set(props["subject_token_type"]["enum"]) == {
            "urn:ietf:params:oauth:token-type:id_token",
            "urn:ietf:params:oauth:token-type:jwt",
        }
        assert {"audience", "resource", "scope", "requested_token_type"} <= set(props)
    content = DOCUMENT["paths"]["/token"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/x-www-form-urlencoded", "application/json"}


def test_every_contract_error_is_documented() -> None:
    responses = DOCUMENT["paths"]["/token"]["post"]["responses"]
    assert set(responses) == {"200", "400", "405", "500", "503"}
    errors = DOCUMENT["components"]["schemas"]
    assert errors["TokenError"]["properties"]["error"]["enum"] == [
        "invalid_request",
        "unsupported_grant_type",
        "unauthorized_client",
        "invalid_target",
        "invalid_scope",
    ]
    assert errors["TemporarilyUnavailable"]["properties"]["error"]["enum"] == [
        "temporarily_unavailable"
    ]
    assert errors["ServerError"]["properties"]["error"]["enum"] == ["server_error"]
    unavailable = DOCUMENT["components"]["responses"]["TemporarilyUnavailable"]
    assert "Retry-After" in unavailable["headers"]
    for status, described in responses.items():
        headers = resolve(DOCUMENT, described)["headers"]
        assert {"Cache-Control", "Pragma"} <= set(headers), status


# -- real responses against the document ---------------------------------------------------------


def test_schemas_reject_what_the_contract_forbids(shared: Stack) -> None:
    """The response schemas are strict enough to catch a leaked field or a wrong error code."""
    document = fetch_document(shared)
    response = shared.post(shared.token(deployment="openapi-negative"))
    assert response.status_code == 200
    body = response.json()
    tokens = schema_validator(document, {"$ref": "#/components/schemas/TokenResponse"})
    assert tokens.is_valid(body)
    assert not tokens.is_valid({**body, "debug": "x"})
    assert not tokens.is_valid({k: v for k, v in body.items() if k != "mapping"})
    assert not tokens.is_valid({**body, "scope": "openid"})
    errors = schema_validator(document, {"$ref": "#/components/schemas/TokenError"})
    assert errors.is_valid({"error": "invalid_target", "error_description": "x"})
    assert not errors.is_valid({"error": "server_error", "error_description": "x"})
    assert not errors.is_valid({"error": "invalid_target", "error_description": "x", "trace": ""})


@pytest.mark.parametrize(
    ("claims", "fields", "status", "error"),
    [
        pytest.param({"deployment": "openapi-aws"}, {}, 200, None, id="aws"),
        pytest.param(
            {"account": "gcp-account", "project": "analytics", "deployment": "openapi-gcp"},
            {"scope": "https://www.googleapis.com/auth/bigquery"},
            200,
            None,
            id="gcp",
        ),
        pytest.param(
            {"account": "gcp-account", "project": "federated", "deployment": "openapi-fed"},
            {},
            200,
            None,
            id="gcp-federated",
        ),
        pytest.param({}, {"subject_token": "not.a.jwt"}, 400, "invalid_request", id="bad-token"),
        pytest.param({}, {"grant_type": "password"}, 400, "unsupported_grant_type", id="grant"),
        pytest.param({"account": "nobody"}, {}, 400, "unauthorized_client", id="unbound"),
        pytest.param({}, {"audience": "no-such-mapping"}, 400, "invalid_target", id="target"),
        pytest.param({}, {"scope": "openid"}, 400, "invalid_scope", id="scope"),
    ],
)
def test_token_responses_conform(
    shared: Stack, claims: dict[str, str], fields: dict[str, str], status: int, error: str | None
) -> None:
    document = fetch_document(shared)
    token = fields.pop("subject_token", None) or shared.token(**claims)
    response = shared.post(token, **fields)
    assert response.status_code == status, response.text
    if error is not None:
        assert response.json()["error"] == error
    assert_conforms(document, "/token", "POST", response)


def test_json_body_response_conforms(shared: Stack) -> None:
    document = fetch_document(shared)
    body = {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": shared.token(account="gcp-account", project="analytics"),
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "resource": SA,
        "client_id": ["ignored"],
    }
    response = shared.raw(json.dumps(body), "application/json")
    assert response.status_code == 200, response.text
    assert_conforms(document, "/token", "POST", response)


def test_upstream_failure_503_conforms(shared: Stack) -> None:
    document = fetch_document(shared)
    shared.aws.fail_next(500, "InternalFailure", times=5)
    try:
        response = shared.post(shared.token(deployment="openapi-503"))
    finally:
        shared.aws.clear()
    assert response.status_code == 503
    assert_conforms(document, "/token", "POST", response)


def test_server_error_answer_conforms(shared: Stack) -> None:
    """The 500 as the one renderer makes it, for the WSGI path and Flask alike.

    No request from outside reaches it today: the providers classify every upstream answer
    (test_faults_upstream.py), so the answer is rendered here without replacing any part of
    the service; the X-Request-Id the endpoint adds to every answer is added likewise.
    """
    document = fetch_document(shared)
    status, headers, body = error_answer(ServerError(cause="RuntimeError: boom"))
    response = requests.Response()
    response.status_code = status
    response.headers.update({**dict(headers), "X-Request-Id": "0123456789abcdef0123456789abcdef"})
    response._content = body
    assert response.json() == {"error": "server_error", "error_description": "internal error"}
    assert_conforms(document, "/token", "POST", response)


def test_other_method_on_token_is_405_with_allow(shared: Stack) -> None:
    document = fetch_document(shared)
    for method in ("GET", "PUT", "DELETE"):
        response = requests.request(method, shared.url + "/token", timeout=10)
        assert response.status_code == 405
        assert {m.strip() for m in response.headers["Allow"].split(",")} == {"POST", "OPTIONS"}
        assert_conforms(document, "/token", "POST", response)


def test_unknown_path_is_the_documented_404(shared: Stack) -> None:
    document = fetch_document(shared)
    response = requests.get(shared.url + "/nope", timeout=10)
    assert response.status_code == 404
    schema = document["components"]["responses"]["NotFound"]["content"]["application/json"]
    assert schema_validator(document, schema["schema"]).is_valid(response.json())


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/openapi.json"])
def test_probe_responses_conform(shared: Stack, path: str) -> None:
    document = fetch_document(shared)
    response = requests.get(shared.url + path, timeout=10)
    assert response.status_code == 200
    assert_conforms(document, path, "GET", response)


def test_not_ready_conforms(stack_factory: Any) -> None:
    with DevIssuer() as broken:
        broken.jwks_status = 500
        stack = stack_factory(wait=False, trusted_issuers=(broken.url,))
        document = fetch_document(stack)
        ready = requests.get(stack.url + "/readyz", timeout=10)
        assert ready.status_code == 503
        assert_conforms(document, "/readyz", "GET", ready)
        token = broken.mint(audience=AUDIENCE)
        response = stack.post(token)
        assert response.status_code == 503
        assert_conforms(document, "/token", "POST", response)
