"""``azure:`` mappings in the file format (docs/reference.md section 9): strict values, the
defaults, the ``list --json`` round trip, selection and the scope checks."""

from __future__ import annotations

import pytest

from sts.errors import InvalidScope, InvalidTarget
from sts.identity.principal import Principal
from sts.mappings.document import MappingFileError, dump_json, parse_document
from sts.mappings.index import MappingIndex, check_request
from sts.mappings.spec import DEFAULT_AZURE_SCOPE, AzureTarget
from sts.protocol import ACCESS_TOKEN_TYPE, AWS_CREDENTIALS_TOKEN_TYPE

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "9b2a4c1e-3f5d-4e6a-8b7c-0d1e2f3a4b5c"


def document(block: str) -> str:
    """One mapping whose azure block starts on line 6."""
    return (
        "mappings:\n"
        "  - name: billing-azure\n"
        "    account: acc\n"
        "    project: proj\n"
        "    azure:\n"
        f"{block}"
    )


VALID = f"      tenant_id: {TENANT}\n      client_id: {CLIENT}\n"


def test_the_contract_example_with_defaults() -> None:
    (spec,) = parse_document(document(VALID))
    assert spec.provider == "azure"
    assert spec.azure == AzureTarget(tenant_id=TENANT, client_id=CLIENT)
    assert spec.azure.scopes == (DEFAULT_AZURE_SCOPE,) == ("https://management.azure.com/.default",)
    assert spec.targets == (CLIENT,)
    assert spec.token is None


def test_upper_case_ids_are_the_same_ids() -> None:
    (spec,) = parse_document(document(VALID.upper().replace("TENANT_ID", "tenant_id").replace(
        "CLIENT_ID", "client_id")))  # fmt: skip
    assert spec.azure is not None
    assert (spec.azure.tenant_id, spec.azure.client_id) == (TENANT, CLIENT)


def test_list_json_is_taken_back_unchanged() -> None:
    block = VALID + "      scopes: [api://billing-api/.default]\n      token: zuplo\n"
    (spec,) = parse_document(document(block))
    (again,) = parse_document(dump_json([spec]))
    assert again == spec
    assert again.fingerprint == spec.fingerprint
    assert spec.to_document()["azure"] == {
        "tenant_id": TENANT,
        "client_id": CLIENT,
        "scopes": ["api://billing-api/.default"],
        "token": "zuplo",
    }


AZ = "mappings[0].azure"
ERRORS = [
    (VALID.replace(TENANT, "not-a-guid"), 6, f"{AZ}.tenant_id", "must be a GUID"),
    (VALID.replace(CLIENT, CLIENT[:-1]), 7, f"{AZ}.client_id", "must be a GUID"),
    (VALID.replace(CLIENT, "{" + CLIENT + "}"), 7, f"{AZ}.client_id", "must be a string"),
    (VALID.replace(CLIENT, '"' + CLIENT + '\\n"'), 7, f"{AZ}.client_id", "U+000A"),
    (f"      client_id: {CLIENT}\n", 6, f"{AZ}.tenant_id", "required"),
    (VALID + "      scopes: []\n", 8, f"{AZ}.scopes", "one <resource>/.default"),
    (VALID + "      scopes: https://management.azure.com/.default\n", 8, f"{AZ}.scopes", "list"),
    (VALID + "      scopes: [https://management.azure.com]\n", 8, f"{AZ}.scopes[0]", "/.default"),
    (VALID + "      scopes: [/.default]\n", 8, f"{AZ}.scopes[0]", "/.default"),
    (VALID + '      scopes: ["https://a b/.default"]\n', 8, f"{AZ}.scopes[0]", "/.default"),
    (VALID + "      scopes: [1]\n", 8, f"{AZ}.scopes[0]", "must be a string"),
    (
        VALID + "      scopes: [https://a.test/.default, https://b.test/.default]\n",
        8,
        f"{AZ}.scopes[1]",
        "one scope only",
    ),
    (VALID + "      token: Broker\n", 8, f"{AZ}.token", "broker or zuplo"),
    (VALID + "      session_tags: false\n", 8, f"{AZ}.session_tags", "unknown key"),
    (VALID + "      resource: x\n", 8, f"{AZ}.resource", "unknown key"),
]


@pytest.mark.parametrize(("block", "line", "path", "problem"), ERRORS)
def test_bad_values_name_the_line_and_path(block: str, line: int, path: str, problem: str) -> None:
    with pytest.raises(MappingFileError) as caught:
        parse_document(document(block), "mappings.yaml")
    assert (caught.value.line, caught.value.path) == (line, path), str(caught.value)
    assert problem in caught.value.problem


def test_two_clouds_in_one_mapping_are_refused() -> None:
    text = document(VALID) + "    gcp:\n      workload_identity_provider: x\n"
    with pytest.raises(MappingFileError, match="exactly one of aws, gcp, azure is required"):
        parse_document(text)


def principal(project: str = "proj") -> Principal:
    return Principal(
        issuer="https://issuer.test",
        sub="sub",
        account="acc",
        project=project,
        deployment="dep",
        environment_type="production",
        audiences=frozenset({"aud"}),
    )


def test_selection_by_client_id_and_the_scope_and_token_type_checks() -> None:
    (spec,) = parse_document(document(VALID))
    index = MappingIndex([spec], revision=1)
    assert index.select(principal(), None, CLIENT).name == "billing-azure"
    assert index.select(principal(), "billing-azure", None).name == "billing-azure"
    with pytest.raises(InvalidTarget):
        index.select(principal(), None, TENANT)
    assert check_request(spec, None, None) == (DEFAULT_AZURE_SCOPE,)
    assert check_request(spec, DEFAULT_AZURE_SCOPE, ACCESS_TOKEN_TYPE) == (DEFAULT_AZURE_SCOPE,)
    assert check_request(spec, "", "") == (DEFAULT_AZURE_SCOPE,)
    for scope in ("https://graph.microsoft.com/.default", "https://management.azure.com"):
        with pytest.raises(InvalidScope):
            check_request(spec, scope, None)
    with pytest.raises(InvalidTarget):
        check_request(spec, None, AWS_CREDENTIALS_TOKEN_TYPE)
