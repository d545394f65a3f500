"""Per-provider metrics name the selected mapping's provider, whatever the outcome: a GCP or
Azure exchange that the cloud refuses or fails (faults injected into the emulators), or that the
service refuses after selecting the mapping (a scope the mapping does not allow), is counted under
``gcp`` or ``azure`` on ``/metrics`` of a real ``sts serve``; ``provider="none"`` is only for
requests refused before any mapping was selected."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from sts.dev.entra_emulator import EntraEmulator
from sts.dev.gcp_emulator import GcpEmulator
from sts.dev.issuer import DevIssuer
from tests.conftest import AUDIENCE
from tests.functional.conftest import GRANT, ID_TOKEN, seed
from tests.functional.serving import run_sts, serve_env, sts_serve_within

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "9b2a4c1e-3f5d-4e6a-8b7c-0d1e2f3a4b5c"
WIP = (
    "//iam.googleapis.com/projects/123456789/locations/global/"
    "workloadIdentityPools/zuplo-pool/providers/labels"
)

# Pass-through mappings: each emulator answers the injected fault before any check of its own,
# so neither needs to trust anything.
MAPPINGS = f"""
mappings:
  - name: labels-gcp
    account: labels
    project: gcp
    gcp:
      workload_identity_provider: {WIP}
  - name: labels-azure
    account: labels
    project: azure
    azure:
      tenant_id: {TENANT}
      client_id: {CLIENT}
      token: zuplo
"""

BIGQUERY = "https://www.googleapis.com/auth/bigquery"
VAULT = "https://vault.azure.net/.default"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def gcp_faults() -> Iterator[GcpEmulator]:
    with GcpEmulator() as emulator:
        yield emulator


@pytest.fixture(scope="module")
def entra_faults() -> Iterator[EntraEmulator]:
    with EntraEmulator() as emulator:
        yield emulator


@pytest.fixture
def served(
    tmp_path: Path, issuer: DevIssuer, gcp_faults: GcpEmulator, entra_faults: EntraEmulator
) -> Iterator[str]:
    env = serve_env(
        f"sqlite:///{tmp_path / 'labels.db'}",
        issuer,
        gcp=gcp_faults,
        STS_AZURE_AUTHORITY_URL=entra_faults.authority_url,
    )
    seed(env["STS_DATABASE_URL"], MAPPINGS).dispose()
    # In force from the server's first mapping load, which readiness waits for.
    revoked = run_sts(
        "revoke",
        "add",
        "--account",
        "labels",
        "--deployment",
        "revoked",
        "--reason",
        "test",
        env=env,
    )
    assert revoked.returncode == 0, revoked.stderr
    with sts_serve_within(env, tmp_path / "serve.log", "--workers", "1") as url:
        yield url


def samples(url: str) -> Samples:
    response = requests.get(url + "/metrics", timeout=10)
    assert response.status_code == 200
    found: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def post(
    url: str, issuer: DevIssuer, project: str, deployment: str, **fields: str
) -> requests.Response:
    token = issuer.mint(audience=AUDIENCE, account="labels", project=project, deployment=deployment)
    data = {"grant_type": GRANT, "subject_token_type": ID_TOKEN, "subject_token": token, **fields}
    return requests.post(url + "/token", data=data, timeout=30)


def test_gcp_and_azure_refusals_carry_the_selected_mappings_provider(
    served: str, issuer: DevIssuer, gcp_faults: GcpEmulator, entra_faults: EntraEmulator
) -> None:
    before = samples(served)

    gcp_faults.fail_next(400, {"error": "invalid_grant"}, path="/v1/token")
    refused = post(served, issuer, "gcp", "gcp-refused")
    assert refused.status_code == 400, refused.text
    assert refused.json()["error_description"].startswith("gcp: invalid_grant")
    # Remembered for 10 s (docs/reference.md section 10): answered again without a call,
    # and counted under the same provider.
    again = post(served, issuer, "gcp", "gcp-refused")
    assert again.json() == refused.json()
    gcp_faults.fail_next(503, {"error": "unavailable"}, path="/v1/token")
    failed = post(served, issuer, "gcp", "gcp-unavailable")
    assert failed.status_code == 503, failed.text

    entra_faults.fail_next(400, error="invalid_client", aadsts=700213)
    denied = post(served, issuer, "azure", "azure-refused")
    assert denied.status_code == 400, denied.text
    assert denied.json()["error_description"].startswith("azure: AADSTS700213")
    entra_faults.fail_next(503)
    down = post(served, issuer, "azure", "azure-unavailable")
    assert down.status_code == 503, down.text

    # Refused by the service itself after selecting the mapping: a scope the mapping does not
    # allow, a revoked identity.
    for project, scope in (("gcp", BIGQUERY), ("azure", VAULT)):
        refused_scope = post(served, issuer, project, f"{project}-scope", scope=scope)
        assert refused_scope.status_code == 400, refused_scope.text
        assert refused_scope.json()["error"] == "invalid_scope"
    for project in ("gcp", "azure"):
        cut_off = post(served, issuer, project, "revoked")
        assert cut_off.json()["error_description"] == "identity revoked", cut_off.text
    # Refused before any mapping was selected: no provider to name.
    unbound = post(served, issuer, "nobody", "unbound")
    assert unbound.json()["error"] == "unauthorized_client"

    after = samples(served)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    exchanges = "sts_exchanges_total"
    assert delta(exchanges, outcome="invalid_target", provider="gcp", cache="none") == 2
    assert delta(exchanges, outcome="temporarily_unavailable", provider="gcp", cache="none") == 1
    assert delta(exchanges, outcome="invalid_target", provider="azure", cache="none") == 1
    assert delta(exchanges, outcome="temporarily_unavailable", provider="azure", cache="none") == 1
    assert delta(exchanges, outcome="invalid_scope", provider="gcp", cache="none") == 1
    assert delta(exchanges, outcome="invalid_scope", provider="azure", cache="none") == 1
    assert delta(exchanges, outcome="unauthorized_client", provider="gcp", cache="none") == 1
    assert delta(exchanges, outcome="unauthorized_client", provider="azure", cache="none") == 1
    assert delta(exchanges, outcome="unauthorized_client", provider="none", cache="none") == 1
    for outcome in ("invalid_target", "temporarily_unavailable", "invalid_scope"):
        assert delta(exchanges, outcome=outcome, provider="none", cache="none") == 0
    # Refusals are timed too, under cache "none", by the same provider.
    assert delta("sts_exchange_duration_seconds_count", provider="gcp", cache="none") == 5
    assert delta("sts_exchange_duration_seconds_count", provider="azure", cache="none") == 4
    assert delta("sts_exchange_duration_seconds_count", provider="none", cache="none") == 1
    # One cloud call each (the repeat was answered from memory), under its provider.
    upstream = "sts_upstream_calls_total"
    assert delta(upstream, provider="gcp", result="invalid_target") == 1
    assert delta(upstream, provider="gcp", result="temporarily_unavailable") == 1
    assert delta(upstream, provider="azure", result="invalid_target") == 1
    assert delta(upstream, provider="azure", result="temporarily_unavailable") == 1
    assert delta("sts_upstream_duration_seconds_count", provider="gcp") == 2
    assert delta("sts_upstream_duration_seconds_count", provider="azure") == 2
