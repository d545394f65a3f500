"""deploy/terraform/modules/azure: per mapping, an app whose one federated identity credential
admits exactly the broker tokens of that mapping: issuer STS_BROKER_ISSUER, subject
mapping:<name>, audience api://AzureADTokenExchange (docs/reference.md section 9). The rendered
credential is what the Entra emulator is given in tests/functional/test_azure.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import hcl2
import pytest

from sts.mappings.document import GUID_PATTERN, parse_document
from sts.protocol import AZURE_BROKER_AUDIENCE
from tests.functional.test_deploy import (
    MODULES,
    TerraformModule,
    TerraformRefused,
    needs_terraform,
    unquote,
    validation_regex,
)

AZURE = MODULES / "azure"
CREDENTIAL = "azuread_application_federated_identity_credential.mapping"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
SCOPE = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/billing-rg"


@pytest.fixture(scope="module")
def module() -> TerraformModule:
    return TerraformModule.load(AZURE)


def render(template: str, values: dict[str, str]) -> str:
    """A Terraform string with ``${var.x}`` and ``${each.key}`` filled in (nothing else)."""

    def one(match: re.Match[str]) -> str:
        return values[match.group(1)]

    text = re.sub(r"\$\{(var\.[a-z_]+|each\.key)\}", one, unquote(template))
    assert "${" not in text, text
    return text


def rendered_credential(broker_issuer: str, mapping_name: str) -> dict[str, Any]:
    """The federated credential of mapping ``mapping_name`` as Entra receives it from
    ``terraform apply`` (read with python-hcl2: no terraform command needed)."""
    with (AZURE / "main.tf").open() as handle:
        (body,) = [
            entry['"azuread_application_federated_identity_credential"']['"mapping"']
            for entry in hcl2.load(handle)["resource"]
            if '"azuread_application_federated_identity_credential"' in entry
        ]
    values = {"var.broker_issuer": broker_issuer, "each.key": mapping_name}
    return {
        "issuer": render(body["issuer"], values),
        "subject": render(body["subject"], values),
        "audiences": [render(audience, values) for audience in body["audiences"]],
    }


def inputs(**more: Any) -> dict[str, Any]:
    return {
        "tenant_id": TENANT,
        "broker_issuer": "https://sts.example.com",
        "mappings": [
            {
                "name": "billing-azure",
                "account": "my-account",
                "project": "billing",
                "roles": [{"scope": SCOPE, "role_definition_name": "Reader"}],
            },
            {
                "name": "vault-azure",
                "account": "my-account",
                "project": "vault",
                "application_name": "vault-reader",
                "scopes": ["https://vault.azure.net/.default"],
                "roles": [
                    {"scope": SCOPE, "role_definition_name": "Reader"},
                    {"scope": SCOPE, "role_definition_name": "Key Vault Secrets User"},
                ],
            },
        ],
        **more,
    }


def test_the_credential_names_the_broker_issuer_one_mapping_and_entras_audience(
    module: TerraformModule,
) -> None:
    credential = rendered_credential("https://sts.example.com", "billing-azure")
    assert credential == {
        "issuer": "https://sts.example.com",
        "subject": "mapping:billing-azure",
        "audiences": [AZURE_BROKER_AUDIENCE],
    }
    body = module.resources[CREDENTIAL]
    assert body["application_id"] == "${azuread_application.mapping[each.key].id}"
    # The broker issuer has no default: a copy of the example cannot trust someone else's.
    assert "default" not in module.variables["broker_issuer"]


@needs_terraform
def test_two_mappings_two_apps_each_trusting_its_own_mapping(
    module: TerraformModule, tmp_path: Path
) -> None:
    given = inputs()
    apps = module.instances("azuread_application.mapping", ["display_name"], given, tmp_path)
    assert apps == {
        "billing-azure": {"display_name": "zuplo-sts-billing-azure"},
        "vault-azure": {"display_name": "vault-reader"},
    }
    ids = module.evaluate(
        "{for name, app in azuread_application.mapping : name => app.id}", given, tmp_path
    )
    credentials = module.instances(
        CREDENTIAL, ["application_id", "issuer", "subject", "audiences"], given, tmp_path
    )
    assert credentials == {
        name: {
            "application_id": ids[name],
            "issuer": "https://sts.example.com",
            "subject": f"mapping:{name}",
            "audiences": [AZURE_BROKER_AUDIENCE],
        }
        for name in ("billing-azure", "vault-azure")
    }
    assert len(set(ids.values())) == 2
    # What test_azure.py registers on the Entra emulator is what Terraform renders.
    for name, credential in credentials.items():
        rendered = rendered_credential("https://sts.example.com", name)
        assert rendered == {k: credential[k] for k in ("issuer", "subject", "audiences")}


@needs_terraform
def test_each_mappings_roles_go_to_its_own_service_principal(
    module: TerraformModule, tmp_path: Path
) -> None:
    given = inputs()
    principals = module.instances(
        "azuread_service_principal.mapping", ["client_id"], given, tmp_path
    )
    client_ids = module.output("client_ids", given, tmp_path)
    assert principals == {name: {"client_id": cid} for name, cid in client_ids.items()}
    objects = module.evaluate(
        "{for name, p in azuread_service_principal.mapping : name => p.object_id}",
        given,
        tmp_path,
    )
    assignments = module.instances(
        "azurerm_role_assignment.mapping",
        ["scope", "role_definition_name", "principal_id"],
        given,
        tmp_path,
    )
    assert sorted(
        (a["principal_id"], a["role_definition_name"], a["scope"]) for a in assignments.values()
    ) == sorted(
        [
            (objects["billing-azure"], "Reader", SCOPE),
            (objects["vault-azure"], "Reader", SCOPE),
            (objects["vault-azure"], "Key Vault Secrets User", SCOPE),
        ]
    )

    specs = parse_document(module.output("mappings_document", given, tmp_path))
    assert {s.name: s.azure and (s.azure.tenant_id, s.azure.client_id) for s in specs} == {
        name: (TENANT, cid) for name, cid in client_ids.items()
    }
    assert {s.name: s.azure and s.azure.scopes for s in specs} == {
        "billing-azure": ("https://management.azure.com/.default",),
        "vault-azure": ("https://vault.azure.net/.default",),
    }
    assert {s.azure and s.azure.token for s in specs} == {"broker"}


def test_the_validations_agree_with_the_mapping_file(module: TerraformModule) -> None:
    tenant = validation_regex(module.variables["tenant_id"])
    for value in ("72f988bf-86f1-41af-91ab-2d7cd011db47", "72f988bf-86f1-41af-91ab-2d7cd011db4"):
        assert bool(tenant.search(value)) == bool(GUID_PATTERN.fullmatch(value))
    name = validation_regex(module.variables["mappings"])
    assert name.search("billing-azure")
    assert not name.search("Billing")
    issuer = validation_regex(module.variables["broker_issuer"])
    assert issuer.search("https://sts.example.com")
    assert not issuer.search("https://sts.example.com/")
    assert not issuer.search("http://sts.example.com")


@needs_terraform
def test_the_module_refuses_what_mappings_apply_refuses(
    module: TerraformModule, tmp_path: Path
) -> None:
    bad_scope = inputs()
    bad_scope["mappings"][1]["scopes"] = ["https://vault.azure.net"]
    with pytest.raises(TerraformRefused, match=r"followed by /\.default"):
        module.evaluate("var.mappings", bad_scope, tmp_path)
    twice = inputs()
    twice["mappings"][1]["name"] = "billing-azure"
    with pytest.raises(TerraformRefused, match="Mapping names are unique"):
        module.evaluate("var.mappings", twice, tmp_path)
    with pytest.raises(TerraformRefused, match="A GUID in lower case"):
        module.evaluate("var.mappings", inputs(tenant_id=TENANT.upper()), tmp_path)
