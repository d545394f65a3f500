"""Azure exchanges over HTTP (docs/reference.md section 9) against the Entra emulator
(sts.dev.entra_emulator), which checks the client assertion as Entra does: a federated
credential of the app matching issuer, subject and audience, the RS256 signature through the
issuer's discovery document (the service's own, on 127.0.0.1, in broker mode), the time range
and the scope. SQLite and PostgreSQL alike (``database_url``)."""

from __future__ import annotations

import base64
import json
import logging
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from click.testing import CliRunner

from sts.cli import cli
from sts.db import Database
from sts.db.models import IssuanceEvent
from sts.dev.entra_emulator import EntraEmulator
from sts.metrics import EXCHANGES
from sts.protocol import ACCESS_TOKEN_TYPE, AWS_CREDENTIALS_TOKEN_TYPE, CLIENT_ASSERTION_TYPE
from tests.conftest import AUDIENCE
from tests.functional.conftest import Stack, seed
from tests.functional.serving import free_port
from tests.functional.test_deploy_azure import rendered_credential

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
BILLING = "9b2a4c1e-3f5d-4e6a-8b7c-0d1e2f3a4b5c"
VAULT = "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f"
UNREGISTERED = "00000000-1111-4222-8333-444444444444"
OTHER_SUBJECT = "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9"
WRONG_AUDIENCE = "6f7a8b9c-0d1e-4f2a-b3c4-d5e6f7a8b9c0"
PASSED = "7a8b9c0d-1e2f-4a3b-c4d5-e6f7a8b9c0d1"
TERRAFORM = "8b9c0d1e-2f3a-4b4c-95d6-f7a8b9c0d1e2"
TERRAFORM_OTHER = "9c0d1e2f-3a4b-4c5d-a6e7-a8b9c0d1e2f3"
ARM = "https://management.azure.com/.default"

MAPPINGS = f"""
mappings:
  - name: billing-azure
    account: my-account
    project: my-project
    azure:
      tenant_id: {TENANT}
      client_id: {BILLING}
  - name: vault-azure
    account: my-account
    project: vault
    azure:
      tenant_id: {TENANT}
      client_id: {VAULT}
      scopes: [https://vault.azure.net/.default]
  - name: nowhere-azure
    account: my-account
    project: nowhere
    azure:
      tenant_id: {TENANT}
      client_id: {UNREGISTERED}
  - name: subject-azure
    account: my-account
    project: subject
    azure:
      tenant_id: {TENANT}
      client_id: {OTHER_SUBJECT}
  - name: audience-azure
    account: my-account
    project: audience
    azure:
      tenant_id: {TENANT}
      client_id: {WRONG_AUDIENCE}
  - name: unknown-resource
    account: my-account
    project: resource
    azure:
      tenant_id: {TENANT}
      client_id: {BILLING}
      scopes: [https://unknown.example.com/.default]
  - name: terraform-azure
    account: my-account
    project: terraform
    azure:
      tenant_id: {TENANT}
      client_id: {TERRAFORM}
  - name: terraform-other
    account: my-account
    project: terraform-other
    azure:
      tenant_id: {TENANT}
      client_id: {TERRAFORM_OTHER}
  - name: passed-azure
    account: my-account
    project: passed
    azure:
      tenant_id: {TENANT}
      client_id: {PASSED}
      token: zuplo
"""


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return decoded


@pytest.fixture(scope="session")
def entra() -> Iterator[EntraEmulator]:
    with EntraEmulator() as emulator:
        yield emulator


@dataclass
class Azure:
    stack: Stack
    entra: EntraEmulator
    issuer: str
    seen: int

    def calls(self) -> list[Any]:
        """Token requests Entra received during this test."""
        return [
            request
            for request in self.entra.requests[self.seen :]
            if request.path.endswith("/oauth2/v2.0/token")
        ]

    def post(self, project: str, **fields: str) -> requests.Response:
        return self.stack.post(self.stack.token(project=project), **fields)


def trust(entra: EntraEmulator, issuer: str) -> None:
    """The tenant, its apps and their federated credentials for the broker ``issuer``."""
    entra.tenants.pop(TENANT, None)
    entra.add_tenant(TENANT)
    for client in (BILLING, VAULT, OTHER_SUBJECT, WRONG_AUDIENCE, PASSED):
        entra.add_application(TENANT, client)
    for client, mapping in (
        (BILLING, "billing-azure"),
        (BILLING, "unknown-resource"),
        (VAULT, "vault-azure"),
        (OTHER_SUBJECT, "someone-else"),
    ):
        entra.add_federated_credential(TENANT, client, issuer=issuer, subject=f"mapping:{mapping}")
    entra.add_federated_credential(
        TENANT,
        WRONG_AUDIENCE,
        issuer=issuer,
        subject="mapping:audience-azure",
        audience="api://SomethingElse",
    )


def broker_stack(
    stack_factory: Any,
    database_url: str,
    entra: EntraEmulator,
    issuer: str,
    port: int,
    **extra: Any,
) -> Stack:
    stack: Stack = stack_factory(
        document=MAPPINGS,
        database_url=database_url,
        port=port,
        broker_issuer=issuer,
        azure_authority_url=entra.authority_url,
        **{"key_encryption_key": secrets.token_bytes(32), **extra},
    )
    return stack


@pytest.fixture
def azure(stack_factory: Any, database_url: str, entra: EntraEmulator) -> Azure:
    """The service in broker mode; the Entra tenant trusts its issuer for the mappings above,
    and the Zuplo issuer for the pass-through one."""
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    trust(entra, issuer)
    stack = broker_stack(stack_factory, database_url, entra, issuer, port)
    # The pass-through mapping: the Zuplo token as the assertion, its own issuer and audience.
    entra.add_federated_credential(
        TENANT,
        PASSED,
        issuer=stack.issuer.url,
        subject=stack.issuer.claims()["sub"],
        audience=AUDIENCE,
    )
    return Azure(stack, entra, issuer, len(entra.requests))


def test_entra_receives_a_broker_token_and_the_caller_an_access_token(azure: Azure) -> None:
    answer = azure.post("my-project")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    (call,) = azure.calls()
    issued = azure.entra.issued[-1]
    assert body["access_token"] == issued.access_token
    assert body["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert body["token_type"] == "Bearer"
    assert body["scope"] == ARM
    assert body["mapping"] == "billing-azure"
    assert 3500 < body["expires_in"] <= 3599
    assert set(body) == {
        "access_token",
        "issued_token_type",
        "token_type",
        "expires_in",
        "scope",
        "mapping",
    }
    assert answer.headers["Cache-Control"] == "no-store"
    # What Entra received: the client credentials grant with a broker token as the assertion.
    assert call.path == f"/{TENANT}/oauth2/v2.0/token"
    form = call.body
    assert form["client_id"] == BILLING
    assert form["grant_type"] == "client_credentials"
    assert form["client_assertion_type"] == CLIENT_ASSERTION_TYPE
    assert form["scope"] == ARM
    claims = claims_of(form["client_assertion"])
    assert claims["iss"] == azure.issuer
    assert claims["sub"] == "mapping:billing-azure"
    assert claims["aud"] == "api://AzureADTokenExchange"
    assert 0 < claims["exp"] - claims["iat"] <= 300
    assert claims["project"] == "my-project"
    # No AWS session tags, and nothing of the Zuplo token's audience.
    assert not any(name.startswith("https://aws.amazon.com") for name in claims)
    assert AUDIENCE not in json.dumps(claims)
    assert issued.subject == "mapping:billing-azure"


def test_credentials_are_cached_per_identity_and_concurrent_requests_call_once(
    azure: Azure,
) -> None:
    token = azure.stack.token(project="my-project")
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: azure.stack.post(token), range(10)))
    assert {answer.status_code for answer in answers} == {200}
    assert len({answer.json()["access_token"] for answer in answers}) == 1
    assert len(azure.calls()) == 1
    # A new token of the same identity: still cached.
    assert azure.post("my-project").status_code == 200
    assert len(azure.calls()) == 1
    # Another deployment is another identity: one more call.
    other = azure.stack.token(project="my-project", deployment="other-deployment")
    assert azure.stack.post(other).status_code == 200
    assert len(azure.calls()) == 2


def test_selection_by_resource_and_audience_and_the_scope_checks(azure: Azure) -> None:
    by_client = azure.post("vault", resource=VAULT)
    assert by_client.status_code == 200, by_client.text
    assert by_client.json()["mapping"] == "vault-azure"
    assert by_client.json()["scope"] == "https://vault.azure.net/.default"
    by_name = azure.post("vault", audience="vault-azure", scope="https://vault.azure.net/.default")
    assert by_name.status_code == 200
    assert by_name.json()["mapping"] == "vault-azure"
    typed = azure.post("vault", requested_token_type=ACCESS_TOKEN_TYPE)
    assert typed.status_code == 200
    assert len(azure.calls()) == 1
    for fields, error in (
        ({"scope": ARM}, "invalid_scope"),
        ({"scope": "https://vault.azure.net/.default " + ARM}, "invalid_scope"),
        ({"requested_token_type": AWS_CREDENTIALS_TOKEN_TYPE}, "invalid_target"),
        ({"resource": BILLING}, "invalid_target"),  # another mapping's client, not the caller's
    ):
        refused = azure.post("vault", **fields)
        assert refused.status_code == 400, fields
        assert refused.json()["error"] == error, fields
    assert len(azure.calls()) == 1


@pytest.mark.parametrize(
    ("project", "number", "phrase"),
    [
        ("subject", 700213, "no federated credential of the app matches the token's subject"),
        ("audience", 700212, "no federated credential of the app matches the token's audience"),
        ("nowhere", 700016, "the application was not found in the tenant"),
        ("resource", 500011, "the resource was not found in the tenant"),
    ],
)
def test_entra_refusals_are_invalid_target_with_the_aadsts_number(
    azure: Azure, project: str, number: int, phrase: str
) -> None:
    refused = azure.post(project)
    assert refused.status_code == 400, refused.text
    assert refused.json() == {
        "error": "invalid_target",
        "error_description": f"azure: AADSTS{number} - {phrase}",
    }
    assert "mapping:" not in refused.text  # Entra's text, which echoes the subject, stays out
    assert len(azure.calls()) == 1


def test_an_assertion_entra_finds_expired_is_refused_as_entra_says(azure: Azure) -> None:
    # Pass-through: a Zuplo token 30 s past exp is within the service's 60 s leeway, but
    # Entra allows none.
    now = int(time.time())
    stack = azure.stack
    token = stack.issuer.mint(audience=AUDIENCE, project="passed", iat=now - 600, exp=now - 30)
    refused = stack.post(token)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error_description"] == (
        "azure: AADSTS700024 - the client assertion is not within its valid time range"
    )
    (call,) = azure.calls()
    assert call.body["client_assertion"] == token  # the Zuplo token itself was presented
    # The refusal is remembered for the key (10 s, reference section 10): no second call.
    assert stack.post(stack.token(project="passed")).status_code == 400
    assert len(azure.calls()) == 1
    # A valid Zuplo token of another identity is accepted as the assertion.
    fresh = stack.post(stack.token(project="passed", deployment="fresh-deployment"))
    assert fresh.status_code == 200, fresh.text
    assert fresh.json()["mapping"] == "passed-azure"


@pytest.mark.parametrize(
    ("status", "retry_after", "expected_retry"),
    [(429, 7, "7"), (429, None, "5"), (500, None, "2"), (503, 3, "3")],
)
def test_throttling_and_server_errors_are_503_with_retry_after(
    azure: Azure, status: int, retry_after: int | None, expected_retry: str
) -> None:
    azure.entra.fail_next(status, retry_after=retry_after)
    answer = azure.post("my-project")
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"] == "temporarily_unavailable"
    assert answer.json()["error_description"].startswith("azure: ")
    assert answer.headers["Retry-After"] == expected_retry
    # Not remembered: the next request calls again and succeeds.
    assert azure.post("my-project").status_code == 200
    assert len(azure.calls()) == 2


def test_a_slow_entra_is_503_within_the_read_timeout(azure: Azure) -> None:
    azure.entra.delay = 6.0
    try:
        started = time.monotonic()
        answer = azure.post("my-project")
        took = time.monotonic() - started
    finally:
        azure.entra.delay = 0.0
    assert answer.status_code == 503
    assert answer.json()["error_description"] == "azure: ReadTimeout - Entra did not answer in time"
    assert 4.5 < took < 6.5


def test_audit_rows_metrics_and_logs_without_a_secret(
    azure: Azure, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    counted = EXCHANGES.labels("ok", "azure", "miss")._value.get()
    with caplog.at_level(logging.DEBUG):
        ok = azure.post("my-project")
        refused = azure.post("subject")
    assert ok.status_code == 200
    assert refused.status_code == 400
    assert EXCHANGES.labels("ok", "azure", "miss")._value.get() == counted + 1
    assertions = [call.body["client_assertion"] for call in azure.calls()]
    secrets_seen = [ok.json()["access_token"], *assertions]
    for record in caplog.records:
        text = record.getMessage() + json.dumps(record.__dict__, default=str)
        for secret in secrets_seen:
            assert secret not in text
            for part in secret.split("."):
                assert len(part) < 16 or part not in text
    database = Database(database_url)
    try:
        with database.engine.connect() as conn:
            rows = conn.execute(
                sa.select(IssuanceEvent.mapping, IssuanceEvent.provider, IssuanceEvent.target,
                          IssuanceEvent.outcome, IssuanceEvent.scopes)
                .where(IssuanceEvent.provider == "azure")
                .order_by(IssuanceEvent.id)
            ).all()  # fmt: skip
    finally:
        database.dispose()
    assert [tuple(row) for row in rows] == [
        ("billing-azure", "azure", BILLING, "issued", ARM),
        ("subject-azure", "azure", OTHER_SUBJECT, "invalid_target:AADSTS700213", ARM),
    ]


def test_the_terraform_credential_admits_its_own_mapping_only(azure: Azure) -> None:
    """The Azure module's federated credential, rendered for terraform-azure and registered on two
    apps: the mapping it names gets a token, another mapping on the other app does not."""
    for client in (TERRAFORM, TERRAFORM_OTHER):
        azure.entra.add_application(TENANT, client)
        credential = rendered_credential(azure.issuer, "terraform-azure")
        (audience,) = credential["audiences"]
        azure.entra.add_federated_credential(
            TENANT,
            client,
            issuer=credential["issuer"],
            subject=credential["subject"],
            audience=audience,
        )
    admitted = azure.post("terraform")
    assert admitted.status_code == 200, admitted.text
    assert admitted.json()["mapping"] == "terraform-azure"
    refused = azure.post("terraform-other")
    assert refused.status_code == 400
    assert refused.json()["error_description"].startswith("azure: AADSTS700213 - ")


def test_two_replicas_on_one_redis_make_one_entra_call(
    stack_factory: Any, database_url: str, entra: EntraEmulator
) -> None:
    """Reuse and single-flight across processes, as for AWS and GCP: both replicas share the
    database (so the signing keys) and Redis; 12 concurrent requests over both, one call."""
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    trust(entra, issuer)
    shared = {
        "key_encryption_key": secrets.token_bytes(32),
        "redis_url": "redis://127.0.0.1:6379/0",
        "cache_encryption_key": secrets.token_bytes(32),
    }
    first = broker_stack(stack_factory, database_url, entra, issuer, port, **shared)
    second = broker_stack(stack_factory, database_url, entra, issuer, free_port(), **shared)
    seen = len(entra.requests)
    # A deployment no earlier run used: a cold key in the shared Redis.
    token = first.token(project="my-project", deployment=f"replicas-{secrets.token_hex(4)}")
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda i: (first if i % 2 else second).post(token), range(12)))
    assert {answer.status_code for answer in answers} == {200}, [a.text for a in answers]
    assert len({answer.json()["access_token"] for answer in answers}) == 1
    calls = [r for r in entra.requests[seen:] if r.path.endswith("/oauth2/v2.0/token")]
    assert len(calls) == 1


def test_explain_and_list_know_azure_mappings(database_url: str) -> None:
    seed(database_url, MAPPINGS).dispose()
    runner = CliRunner(env={"STS_DATABASE_URL": database_url})
    claims = {
        "account": "my-account",
        "project": "vault",
        "deployment": "d",
        "environment_type": "production",
    }
    explained = runner.invoke(cli, ["explain", "--claims", json.dumps(claims)])
    assert explained.exit_code == 0, explained.output
    assert explained.output.splitlines()[0] == "chosen: vault-azure"
    listed = runner.invoke(cli, ["mappings", "list"])
    assert f"azure {VAULT}" in listed.output
    as_json = runner.invoke(cli, ["mappings", "list", "--json"])
    vault = next(doc for doc in json.loads(as_json.output) if doc["name"] == "vault-azure")
    assert vault["azure"] == {
        "tenant_id": TENANT,
        "client_id": VAULT,
        "scopes": ["https://vault.azure.net/.default"],
        # No "token": listed as stored (unset), never as the CLI's shell would resolve it.
    }


@pytest.mark.parametrize(
    ("change", "line", "problem"),
    [
        ((TENANT, "72f988bf-86f1-41af-91ab"), 6, "tenant_id: must be a GUID"),
        ((BILLING, "billing-app"), 7, "client_id: must be a GUID"),
        ("      scopes: []\n", 8, "scopes: must be a list of one <resource>/.default scope"),
        ("      scopes: [https://management.azure.com]\n", 8, "must be a resource followed by"),
    ],
)
def test_bad_azure_values_are_exit_2_with_the_line_and_nothing_written(
    database_url: str, tmp_path: Any, change: Any, line: int, problem: str
) -> None:
    text = MAPPINGS.split("  - name: vault-azure", maxsplit=1)[
        0
    ]  # billing-azure only, azure: on line 5
    text = text.replace(*change) if isinstance(change, tuple) else text + change
    path = tmp_path / "mappings.yaml"
    path.write_text(text.removeprefix("\n"))
    runner = CliRunner(env={"STS_DATABASE_URL": database_url})
    assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
    result = runner.invoke(cli, ["mappings", "apply", str(path)])
    assert result.exit_code == 2, result.output
    (message,) = result.output.strip().splitlines()
    assert message.startswith(f"error: {path}:{line}: mappings[0].azure."), message
    assert problem in message
    listed = runner.invoke(cli, ["mappings", "list", "--json"])
    assert json.loads(listed.output) == []
