"""deploy/azure (Terraform): the federated identity credential admits exactly the broker tokens
of its one mapping: issuer STS_BROKER_ISSUER, subject mapping:<name>, audience
api://AzureADTokenExchange (docs/reference.md section 9). The rendered credential is what the
Entra emulator is given in tests/functional/test_azure.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import hcl2

from sts.mappings.document import AZURE_KEYS, GUID_PATTERN
from sts.protocol import AZURE_BROKER_AUDIENCE
from tests.functional.test_deploy import blocks, unquote

AZURE = Path(__file__).resolve().parents[2] / "deploy" / "azure"
CREDENTIAL = "azuread_application_federated_identity_credential.one_mapping"


def hcl_blocks(name: str, kind: str) -> dict[str, dict[str, Any]]:
    with (AZURE / name).open() as handle:
        return blocks(hcl2.load(handle), kind)


def render(template: str, values: dict[str, str]) -> str:
    """A Terraform string with ``${var.x}`` interpolations filled in (no other expressions)."""

    def one(match: re.Match[str]) -> str:
        return values[match.group(1)]

    text = re.sub(r"\$\{var\.([a-z_]+)\}", one, unquote(template))
    assert "${" not in text, text
    return text


def rendered_credential(broker_issuer: str, mapping_name: str) -> dict[str, Any]:
    """The federated credential as Entra receives it from ``terraform apply``."""
    body = hcl_blocks("main.tf", "resource")[CREDENTIAL]
    values = {"broker_issuer": broker_issuer, "mapping_name": mapping_name}
    return {
        "issuer": render(body["issuer"], values),
        "subject": render(body["subject"], values),
        "audiences": [render(audience, values) for audience in body["audiences"]],
    }


def test_the_credential_names_the_broker_issuer_one_mapping_and_entras_audience() -> None:
    credential = rendered_credential("https://sts.example.com", "billing-azure")
    assert credential == {
        "issuer": "https://sts.example.com",
        "subject": "mapping:billing-azure",
        "audiences": [AZURE_BROKER_AUDIENCE],
    }
    body = hcl_blocks("main.tf", "resource")[CREDENTIAL]
    assert body["application_id"] == "${azuread_application.zuplo_sts.id}"
    # The broker issuer has no default: a copy of the example cannot trust someone else's.
    assert "default" not in hcl_blocks("variables.tf", "variable")["broker_issuer"]


def test_the_role_goes_to_the_apps_service_principal() -> None:
    resources = hcl_blocks("main.tf", "resource")
    role = resources["azurerm_role_assignment.one_mapping"]
    assert role["principal_id"] == "${azuread_service_principal.zuplo_sts.object_id}"
    principal = resources["azuread_service_principal.zuplo_sts"]
    assert principal["client_id"] == "${azuread_application.zuplo_sts.client_id}"


def test_variables_declared_and_used() -> None:
    text = "".join((AZURE / name).read_text() for name in ("main.tf", "outputs.tf"))
    used = set(re.findall(r"\bvar\.([a-z_][a-z0-9_]*)", text))
    assert used == set(hcl_blocks("variables.tf", "variable"))


def test_the_validations_agree_with_the_mapping_file() -> None:
    variables = hcl_blocks("variables.tf", "variable")

    def regex_of(name: str) -> re.Pattern[str]:
        (validation,) = variables[name]["validation"]
        found = re.search(r'regex\("(.+?)", var\.', validation["condition"])
        assert found is not None
        return re.compile(found.group(1).replace("\\\\", "\\"))

    tenant = regex_of("tenant_id")
    for value in ("72f988bf-86f1-41af-91ab-2d7cd011db47", "72f988bf-86f1-41af-91ab-2d7cd011db4"):
        assert bool(tenant.search(value)) == bool(GUID_PATTERN.fullmatch(value))
    name = regex_of("mapping_name")
    assert name.search("billing-azure")
    assert not name.search("Billing")
    issuer = regex_of("broker_issuer")
    assert issuer.search("https://sts.example.com")
    assert not issuer.search("https://sts.example.com/")
    assert not issuer.search("http://sts.example.com")


def test_the_mapping_snippet_is_an_azure_mapping() -> None:
    snippet = unquote(hcl_blocks("outputs.tf", "output")["mapping_snippet"]["value"])
    azure = re.search(r"azure = \{(.*?)\}", snippet)
    assert azure is not None
    keys = set(re.findall(r"([a-z_]+) =", azure.group(1)))
    assert keys <= set(AZURE_KEYS)
    assert {"tenant_id", "client_id", "token"} <= keys
    assert 'token = "broker"' in azure.group(1)
