"""deploy/aws/zuplo-sts-broker.yaml: lints clean, and its trust policies, rendered as IAM receives
them, admit exactly the broker tokens they should (evaluated by the dev emulator's IAM checks
against a real issuer on 127.0.0.1)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hcl2
import pytest
from cfnlint.api import ManualArgs, lint
from cfnlint.decode import decode_str

from sts.dev.aws_iam import IamTrust
from sts.mappings.document import parse_document
from tests.functional.test_deploy import (
    APPLIED,
    assert_id_tokens_for_cloud_run,
    blocks,
    data_blocks,
    needs_terraform,
    render_output,
    snippet_as_document,
    unquote,
)
from tests.oidc import TAGS, Issuer

TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "aws" / "zuplo-sts-broker.yaml"
PINNED = "arn:aws:iam::123456789012:role/zuplo-orders-api"
ABAC = "arn:aws:iam::123456789012:role/zuplo-projects"


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    decoded, errors = decode_str(TEMPLATE.read_text())
    assert not errors
    assert decoded is not None
    return dict(decoded)


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    served = Issuer()
    yield served
    served.close()


def test_lints_clean_and_the_linter_sees_breakage() -> None:
    text = TEMPLATE.read_text()
    matches = lint(text, config=ManualArgs(include_checks=["I"], regions=["us-east-1"]))
    assert [str(match) for match in matches] == []
    broken = text.replace("MaxSessionDuration: !Ref", "MaxSessionDurations: !Ref")
    assert "E3002" in {match.rule.id for match in lint(broken)}


def test_the_provider_trusts_the_broker_issuer_for_sts_amazonaws_com(
    template: dict[str, Any],
) -> None:
    provider = template["Resources"]["BrokerOidcProvider"]["Properties"]
    assert provider["Url"] == {"Ref": "BrokerIssuerUrl"}
    assert provider["ClientIdList"] == ["sts.amazonaws.com"]
    pattern = template["Parameters"]["BrokerIssuerUrl"]["AllowedPattern"]
    assert re.fullmatch(pattern, "https://sts.example.com")
    for bad in ("http://sts.example.com", "https://sts.example.com/", "https://a.example?x=1"):
        assert not re.fullmatch(pattern, bad), bad


def rendered_trust(template: dict[str, Any], role: str, values: dict[str, str]) -> dict[str, Any]:
    """The role's AssumeRolePolicyDocument after Fn::Sub, as IAM will see it."""
    body, variables = template["Resources"][role]["Properties"]["AssumeRolePolicyDocument"][
        "Fn::Sub"
    ]
    assert variables["ProviderArn"] == {"Ref": "BrokerOidcProvider"}
    assert variables["IssuerHostPath"] == {
        "Fn::Select": [1, {"Fn::Split": ["https://", {"Ref": "BrokerIssuerUrl"}]}]
    }
    text = re.sub(r"\$\{([A-Za-z0-9_]+)\}", lambda m: values[m.group(1)], body)
    policy: dict[str, Any] = json.loads(text)
    return policy


@pytest.fixture(scope="module")
def trust(template: dict[str, Any], issuer: Issuer) -> IamTrust:
    """Both roles' trust policies on an IAM OIDC provider for the test issuer."""
    trust = IamTrust()
    provider = trust.add_oidc_provider(issuer.url, ["sts.amazonaws.com"])
    values = {
        "ProviderArn": provider.arn,
        "IssuerHostPath": provider.url,
        "MappingName": "orders-prod",
        "ZuploAccount": "acme",
    }
    trust.set_trust_policy(PINNED, rendered_trust(template, "PinnedRole", values))
    trust.set_trust_policy(ABAC, rendered_trust(template, "AbacRole", values))
    return trust


def tags(account: str = "acme", project: str | None = "orders") -> dict[str, Any]:
    principal = {"zuplo-account": [account]}
    if project is not None:
        principal["zuplo-project"] = [project]
    return {TAGS: {"principal_tags": principal, "transitive_tag_keys": list(principal)}}


@pytest.mark.parametrize(
    ("role", "claims", "expected"),
    [
        (PINNED, {"sub": "mapping:orders-prod", **tags()}, None),
        (PINNED, {"sub": "mapping:orders-prod", TAGS: None}, None),
        (PINNED, {"sub": "mapping:orders-preview", **tags()}, "AccessDenied"),
        (
            PINNED,
            {"sub": "mapping:orders-prod", "aud": "https://sts.example.com"},
            "InvalidIdentityToken",
        ),
        (ABAC, {"sub": "mapping:any-project", **tags()}, None),
        (ABAC, {"sub": "mapping:other", **tags(project="billing")}, None),
        (ABAC, {"sub": "mapping:any-project", **tags(account="other")}, "AccessDenied"),
        (ABAC, {"sub": "mapping:any-project", **tags(project=None)}, "AccessDenied"),
        (ABAC, {"sub": "mapping:any-project", TAGS: None}, "AccessDenied"),
        (ABAC, {"sub": "deployment:x", **tags()}, "AccessDenied"),
    ],
)
def test_trust_policies_admit_exactly_their_mappings(
    trust: IamTrust, issuer: Issuer, role: str, claims: dict[str, Any], expected: str | None
) -> None:
    refusal = trust.check(role, issuer.mint(**claims))
    assert (None if refusal is None else refusal.code) == expected


def test_the_abac_permissions_use_the_project_tag(template: dict[str, Any]) -> None:
    (policy,) = template["Resources"]["AbacRole"]["Properties"]["Policies"]
    read, listing = policy["PolicyDocument"]["Statement"]
    assert read["Resource"] == {
        "Fn::Sub": "arn:${AWS::Partition}:s3:::${AbacBucketName}"
        "/${!aws:PrincipalTag/zuplo-project}/*"
    }
    assert listing["Condition"] == {
        "StringLike": {"s3:prefix": "${aws:PrincipalTag/zuplo-project}/*"}
    }


# ---------------------------------------------------------------------------------------------
# deploy/gcp-broker (Terraform)

GCP = TEMPLATE.parents[1] / "gcp-broker"


def hcl_blocks(name: str, kind: str) -> dict[str, dict[str, Any]]:
    with (GCP / name).open() as handle:
        return blocks(hcl2.load(handle), kind)


def test_gcp_provider_trusts_the_broker_issuer_with_googles_default_audience() -> None:
    resources = hcl_blocks("main.tf", "resource")
    provider = resources["google_iam_workload_identity_pool_provider.zuplo_sts"]
    (oidc,) = provider["oidc"]
    assert oidc["issuer_uri"] == "${var.broker_issuer}"
    # The broker token's aud is "https:" + the provider name: Google's default, so no list.
    assert "allowed_audiences" not in oidc
    mapping = {unquote(k): unquote(v) for k, v in provider["attribute_mapping"].items()}
    assert mapping == {
        "google.subject": "assertion.sub",
        "attribute.account": "assertion.account",
        "attribute.project": "assertion.project",
        "attribute.deployment": "assertion.deployment",
        "attribute.environment_type": "assertion.environment_type",
        "attribute.zuplo_sub": "assertion.zuplo_sub",
    }
    assert unquote(provider["attribute_condition"]) == (
        "assertion.sub.startsWith('mapping:') && assertion.account == '${var.zuplo_account}'"
    )
    assert "default" not in hcl_blocks("variables.tf", "variable")["broker_issuer"]


def test_gcp_binding_names_one_mapping() -> None:
    binding = hcl_blocks("main.tf", "resource")["google_service_account_iam_member.one_mapping"]
    assert unquote(binding["role"]) == "roles/iam.workloadIdentityUser"
    assert unquote(binding["member"]) == (
        "principal://iam.googleapis.com/${google_iam_workload_identity_pool.zuplo_sts.name}"
        "/subject/mapping:${var.mapping_name}"
    )


def test_gcp_broker_variables_declared_and_used() -> None:
    text = "".join((GCP / name).read_text() for name in ("main.tf", "outputs.tf"))
    used = set(re.findall(r"\bvar\.([a-z_][a-z0-9_]*)", text))
    assert used == set(hcl_blocks("variables.tf", "variable"))


def test_gcp_broker_id_tokens_for_cloud_run() -> None:
    with (GCP / "main.tf").open() as handle:
        data = data_blocks(hcl2.load(handle))
    assert_id_tokens_for_cloud_run(
        hcl_blocks("main.tf", "resource"),
        data,
        hcl_blocks("variables.tf", "variable"),
        federated="google_service_account_iam_member.one_mapping",
        id_tokens="google_service_account_iam_member.one_mapping_id_tokens",
    )


@needs_terraform
@pytest.mark.parametrize(
    ("service", "audiences"),
    [("", ()), ("orders", ("https://orders-abc123-uc.a.run.app",))],
)
def test_gcp_broker_mapping_snippet_is_the_bound_mapping(
    tmp_path: Path, service: str, audiences: tuple[str, ...]
) -> None:
    values = {
        "project_id": "my-gcp",
        "broker_issuer": "https://sts.example.com",
        "zuplo_account": "my-account",
        "mapping_name": "orders-run",
        "cloud_run_service": service,
    }
    snippet = render_output(GCP, "mapping_snippet", values, tmp_path)
    (spec,) = parse_document(snippet_as_document(snippet), "mapping_snippet")
    assert (spec.name, spec.account) == ("orders-run", "my-account")
    assert spec.gcp is not None
    assert spec.gcp.token == "broker"
    assert spec.gcp.workload_identity_provider == (
        "//iam.googleapis.com/"
        + APPLIED["google_iam_workload_identity_pool_provider.zuplo_sts.name"]
    )
    assert spec.gcp.service_account == APPLIED["google_service_account.reader.email"]
    assert spec.gcp.id_token_audiences == audiences
