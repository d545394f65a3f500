"""GCP ID tokens for Cloud Run, Cloud Functions and IAP backends (docs/reference.md section 14),
over HTTP on SQLite and PostgreSQL, with and without Redis: the exchange and its answer, a token
a backend verifies with google-auth against the emulator's published certificates, caching per
audience, the audit row, and every refusal with no cloud call."""

from __future__ import annotations

import base64
import secrets
from typing import Any

import google.auth.transport.requests
import pytest
import requests
from google.oauth2 import id_token

from sts.audit import AuditRecorder
from sts.db import Database
from tests.conftest import AUDIENCE
from tests.functional.conftest import DEFAULT_MAPPINGS, GRANT, SA, WIP, Stack
from tests.functional.serving import run_sts, serve_env, sts_serve

ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
RUN = "https://orders-abc123-uc.a.run.app"
RUN_OTHER = "https://billing-abc123-uc.a.run.app"
REDIS_URL = "redis://127.0.0.1:6379/0"
DOCUMENT = (
    DEFAULT_MAPPINGS
    + f"""
  - name: invoker-one
    account: run-account
    project: one
    gcp:
      workload_identity_provider: {WIP}
      service_account: {SA}
      id_token_audiences: [{RUN}]
  - name: invoker-two
    account: run-account
    project: two
    gcp:
      workload_identity_provider: {WIP}
      service_account: {SA}
      id_token_audiences: [{RUN}, {RUN_OTHER}]
"""
)


@pytest.fixture(params=["no-redis", "redis"])
def run_stack(request: pytest.FixtureRequest, stack_factory: Any, database_url: str) -> Stack:
    extra: dict[str, Any] = {}
    if request.param == "redis":
        extra = {"redis_url": REDIS_URL, "cache_encryption_key": secrets.token_bytes(32)}
    stack: Stack = stack_factory(DOCUMENT, database_url=database_url, **extra)
    return stack


def ask(stack: Stack, project: str, **fields: str) -> requests.Response:
    token = stack.token(account="run-account", project=project)
    return stack.post(token, requested_token_type=ID_TOKEN, **fields)


def id_token_calls(stack: Stack) -> list[Any]:
    return [r for r in stack.gcp_requests() if r.path.endswith(":generateIdToken")]


def test_an_id_token_for_a_cloud_run_url_verifies_with_google_auth(run_stack: Stack) -> None:
    response = ask(run_stack, "one", resource=RUN)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["issued_token_type"] == ID_TOKEN
    assert body["token_type"] == "N_A"
    assert body["mapping"] == "invoker-one"
    assert "scope" not in body
    assert 3000 < body["expires_in"] <= 3600
    claims = id_token.verify_token(
        body["access_token"],
        google.auth.transport.requests.Request(),
        audience=RUN,
        certs_url=run_stack.gcp.certs_url,
    )
    assert claims["email"] == SA
    (call,) = id_token_calls(run_stack)
    assert call.body == {"audience": RUN, "includeEmail": True}
    with pytest.raises(ValueError, match="audience"):
        id_token.verify_token(
            body["access_token"],
            google.auth.transport.requests.Request(),
            audience=RUN_OTHER,
            certs_url=run_stack.gcp.certs_url,
        )


def test_one_call_per_audience_and_the_audit_row_names_it(run_stack: Stack) -> None:
    first = ask(run_stack, "two", resource=RUN)
    assert first.status_code == 200, first.text
    again = ask(run_stack, "two", resource=RUN)
    assert again.json()["access_token"] == first.json()["access_token"]
    other = ask(run_stack, "two", resource=RUN_OTHER)
    assert other.status_code == 200, other.text
    assert other.json()["access_token"] != first.json()["access_token"]
    assert [call.body["audience"] for call in id_token_calls(run_stack)] == [RUN, RUN_OTHER]
    # An access token of the same mapping is another credential altogether.
    access = run_stack.post(run_stack.token(account="run-account", project="two"))
    assert access.status_code == 200, access.text
    assert access.json()["issued_token_type"] != ID_TOKEN

    database = Database(run_stack.services.settings.database_url)
    try:
        rows = AuditRecorder(database).query(mapping="invoker-two", limit=None)
    finally:
        database.dispose()
    audiences = sorted(row.audience or "" for row in rows if row.outcome == "issued")
    assert audiences == sorted(["", RUN, RUN_OTHER])  # the access token's row has none


def test_the_only_audience_may_be_left_out(run_stack: Stack) -> None:
    response = ask(run_stack, "one")
    assert response.status_code == 200, response.text
    assert id_token_calls(run_stack)[0].body["audience"] == RUN


@pytest.mark.parametrize(
    ("account", "project", "fields"),
    [
        pytest.param("run-account", "one", {"resource": RUN_OTHER}, id="audience-not-listed"),
        pytest.param("run-account", "two", {}, id="several-none-chosen"),
        pytest.param("my-account", "my-project", {}, id="aws-mapping"),
        pytest.param("gcp-account", "analytics", {}, id="gcp-without-audiences"),
    ],
)
def test_refusals_are_invalid_target_with_no_cloud_call(
    stack_factory: Any, account: str, project: str, fields: dict[str, str]
) -> None:
    stack: Stack = stack_factory(DOCUMENT)
    token = stack.token(account=account, project=project)
    response = stack.post(token, requested_token_type=ID_TOKEN, **fields)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_target"
    assert stack.gcp_requests() == []
    assert stack.aws_requests() == []


def test_redis_shares_one_id_token_across_replicas(stack_factory: Any, database_url: str) -> None:
    key = secrets.token_bytes(32)
    first: Stack = stack_factory(
        DOCUMENT, database_url=database_url, redis_url=REDIS_URL, cache_encryption_key=key
    )
    second: Stack = stack_factory(
        DOCUMENT, database_url=database_url, redis_url=REDIS_URL, cache_encryption_key=key
    )
    token = first.token(account="run-account", project="one")
    a = first.post(token, requested_token_type=ID_TOKEN, resource=RUN)
    b = second.post(token, requested_token_type=ID_TOKEN, resource=RUN)
    assert a.status_code == b.status_code == 200
    assert a.json()["access_token"] == b.json()["access_token"]
    assert len(id_token_calls(first)) == 1


@pytest.mark.parametrize("redis", [False, True], ids=["no-redis", "redis"])
def test_through_sts_serve(
    database_url: str, issuer: Any, aws: Any, gcp: Any, tmp_path: Any, redis: bool
) -> None:
    """The same flow through ``sts serve`` (two workers): one generateIdToken call whichever
    worker answers (with Redis across both; without it, at most one per worker)."""
    extra = {}
    if redis:
        key = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
        extra = {"STS_REDIS_URL": REDIS_URL, "STS_CACHE_ENCRYPTION_KEY": key}
    env = serve_env(database_url, issuer, aws, gcp, **extra)
    mappings = tmp_path / "mappings.yaml"
    mappings.write_text(DOCUMENT)
    assert run_sts("db", "upgrade", env=env).returncode == 0
    assert run_sts("mappings", "apply", str(mappings), env=env).returncode == 0
    token = issuer.mint(audience=AUDIENCE, account="run-account", project="one")
    data = {
        "grant_type": GRANT,
        "subject_token": token,
        "subject_token_type": ID_TOKEN,
        "requested_token_type": ID_TOKEN,
        "resource": RUN,
    }
    seen = len(gcp.requests)
    with sts_serve(env, tmp_path / "serve.log", "--workers", "2") as url:
        answers = [
            requests.post(url + "/token", data=data, timeout=30, headers={"Connection": "close"})
            for _ in range(8)
        ]
    assert {answer.status_code for answer in answers} == {200}, answers[0].text
    calls = [r for r in gcp.requests[seen:] if r.path.endswith(":generateIdToken")]
    assert 1 <= len(calls) <= (1 if redis else 2)
    claims = id_token.verify_token(
        answers[-1].json()["access_token"],
        google.auth.transport.requests.Request(),
        audience=RUN,
        certs_url=gcp.certs_url,
    )
    assert claims["aud"] == RUN
