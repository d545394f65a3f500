"""Broker mode in deploy/: the CloudFormation role stacks (deploy/aws/mapping-role.yaml on the
provider of deploy/aws/oidc-provider.yaml) and the Terraform modules for AWS and GCP. Their trust,
rendered as the clouds receive it, admits exactly the broker tokens of its mappings (evaluated
by the dev emulator's IAM checks against a real issuer on 127.0.0.1)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from sts.dev.aws_iam import IamTrust
from sts.mappings.document import parse_document
from tests.functional.test_deploy import (
    ACCOUNT_ID,
    ENVIRONMENT_CLAIMS,
    GCP_POOL,
    GCP_PROVIDER,
    MODULES,
    PROVIDER_TEMPLATE,
    ROLE_TEMPLATE,
    Stack,
    StackRefused,
    TerraformModule,
    assert_id_tokens_for_cloud_run,
    deploy_stack,
    gcp_inputs,
    load_template,
    needs_terraform,
    snippets_as_document,
)
from tests.oidc import TAGS, Issuer

# tests/functional/test_broker_exchange.py renders the roles of this template with
# :func:`rendered_trust`.
TEMPLATE = ROLE_TEMPLATE
PINNED = f"arn:aws:iam::{ACCOUNT_ID}:role/zuplo-orders-api"
ABAC = f"arn:aws:iam::{ACCOUNT_ID}:role/zuplo-projects"


@pytest.fixture(scope="module")
def provider_template() -> dict[str, Any]:
    return load_template(PROVIDER_TEMPLATE)


@pytest.fixture(scope="module")
def role_template() -> dict[str, Any]:
    return load_template(ROLE_TEMPLATE)


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    served = Issuer()
    yield served
    served.close()


@pytest.fixture(scope="module")
def aws_module() -> TerraformModule:
    return TerraformModule.load(MODULES / "aws")


@pytest.fixture(scope="module")
def gcp_module() -> TerraformModule:
    return TerraformModule.load(MODULES / "gcp")


def rendered_trust(template: dict[str, Any], role: str, values: dict[str, str]) -> dict[str, Any]:
    """Role ``role``'s AssumeRolePolicyDocument after Fn::Sub with ``values`` for its variables
    (ProviderArn, IssuerHostPath and the parameters it names), as IAM will see it.
    :func:`test_rendered_trust_is_the_deployed_trust` holds it to what a stack creates."""
    body, variables = template["Resources"][role]["Properties"]["AssumeRolePolicyDocument"][
        "Fn::Sub"
    ]
    assert variables["ProviderArn"] == {"Ref": "OidcProviderArn"}
    assert variables["IssuerHostPath"] == {
        "Fn::Select": [1, {"Fn::Split": ["oidc-provider/", {"Ref": "OidcProviderArn"}]}]
    }
    text = re.sub(r"\$\{([A-Za-z0-9_]+)\}", lambda m: values[m.group(1)], body)
    policy: dict[str, Any] = json.loads(text)
    return policy


def broker_role(
    template: Mapping[str, Any], provider_arn: str, mapping: str, role_name: str, **more: str
) -> Stack:
    return deploy_stack(
        template,
        {
            "OidcProviderArn": provider_arn,
            "MappingName": mapping,
            "ZuploAccount": "acme",
            "ZuploProject": "orders",
            "RoleName": role_name,
            **more,
        },
    )


@pytest.fixture(scope="module")
def trust(role_template: dict[str, Any], issuer: Issuer) -> IamTrust:
    """A pinned stack and an ABAC stack on an IAM OIDC provider for the test issuer."""
    trust = IamTrust()
    provider = trust.add_oidc_provider(issuer.url, ["sts.amazonaws.com"])
    pinned = broker_role(role_template, provider.arn, "orders-prod", "zuplo-orders-api")
    abac = broker_role(
        role_template,
        provider.arn,
        "projects-abac",
        "zuplo-projects",
        Trust="account",
        ZuploProject="*",
    )
    assert (pinned.outputs["RoleArn"], abac.outputs["RoleArn"]) == (PINNED, ABAC)
    assert (set(pinned.resources), set(abac.resources)) == ({"PinnedRole"}, {"AbacRole"})
    trust.set_trust_policy(PINNED, pinned.trust_policy())
    trust.set_trust_policy(ABAC, abac.trust_policy())
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


def test_two_mapping_stacks_trust_exactly_their_own_mapping(
    provider_template: dict[str, Any], role_template: dict[str, Any], issuer: Issuer
) -> None:
    """The provider stack once for STS_BROKER_ISSUER, then one role stack per mapping: two
    roles, each admitting the broker tokens of its own mapping (with or without session tags)
    and of no other; their snippets are one mappings file."""
    provider = deploy_stack(
        provider_template, {"IssuerUrl": issuer.url}, unchecked=frozenset({"IssuerUrl"})
    )
    properties = provider.resources["OidcProvider"]["Properties"]
    assert properties["ClientIdList"] == ["sts.amazonaws.com"]
    trust = IamTrust()
    registered = trust.add_oidc_provider(properties["Url"], properties["ClientIdList"])
    provider_arn = provider.outputs["OidcProviderArn"]
    assert registered.arn == provider_arn
    stacks = {
        "orders-prod": broker_role(role_template, provider_arn, "orders-prod", "zuplo-orders"),
        "billing-prod": broker_role(
            role_template,
            provider_arn,
            "billing-prod",
            "zuplo-billing",
            ZuploProject="billing",
            ZuploEnvironmentType="production",
            MaxSessionDuration="7200",
        ),
    }
    for stack in stacks.values():
        trust.set_trust_policy(stack.outputs["RoleArn"], stack.trust_policy())
    for name, stack in stacks.items():
        for other in stacks:
            for carried in (tags(), {TAGS: None}):
                token = issuer.mint(sub=f"mapping:{other}", **carried)
                refusal = trust.check(stack.outputs["RoleArn"], token)
                assert (refusal is None) == (other == name), (name, other, refusal)

    document = snippets_as_document([s.outputs["MappingSnippet"] for s in stacks.values()])
    specs = parse_document(document, "MappingSnippet")
    assert [(s.name, s.project, s.environment_type) for s in specs] == [
        ("orders-prod", "orders", "*"),
        ("billing-prod", "billing", "production"),
    ]
    for spec, stack in zip(specs, stacks.values(), strict=True):
        assert spec.aws is not None
        assert (spec.aws.role_arn, spec.aws.token) == (stack.outputs["RoleArn"], "broker")
    assert [s.aws and s.aws.duration_seconds for s in specs] == [3600, 7200]


def test_rendered_trust_is_the_deployed_trust(role_template: dict[str, Any]) -> None:
    arn = f"arn:aws:iam::{ACCOUNT_ID}:oidc-provider/sts.example.com/tenant"
    values = {
        "ProviderArn": arn,
        "IssuerHostPath": "sts.example.com/tenant",
        "MappingName": "orders-prod",
        "ZuploAccount": "acme",
    }
    pinned = broker_role(role_template, arn, "orders-prod", "r")
    assert rendered_trust(role_template, "PinnedRole", values) == pinned.trust_policy()
    abac = broker_role(role_template, arn, "orders-prod", "r", Trust="account")
    assert rendered_trust(role_template, "AbacRole", values) == abac.trust_policy()
    (statement,) = pinned.trust_policy()["Statement"]
    assert statement["Condition"] == {
        "StringEquals": {
            "sts.example.com/tenant:aud": "sts.amazonaws.com",
            "sts.example.com/tenant:sub": "mapping:orders-prod",
        }
    }


def test_the_abac_permissions_use_the_project_tag(role_template: dict[str, Any]) -> None:
    arn = f"arn:aws:iam::{ACCOUNT_ID}:oidc-provider/sts.example.com"
    stack = broker_role(role_template, arn, "projects", "r", Trust="account", BucketName="data")
    (policy,) = stack.role()["Properties"]["Policies"]
    read, listing = policy["PolicyDocument"]["Statement"]
    assert read["Resource"] == "arn:aws:s3:::data/${aws:PrincipalTag/zuplo-project}/*"
    assert listing["Resource"] == "arn:aws:s3:::data"
    assert listing["Condition"] == {
        "StringLike": {"s3:prefix": "${aws:PrincipalTag/zuplo-project}/*"}
    }
    (spec,) = parse_document(snippets_as_document([stack.outputs["MappingSnippet"]]))
    assert spec.aws is not None
    assert (spec.aws.token, spec.aws.session_tags) == ("broker", True)
    with pytest.raises(StackRefused, match="ZuploAccount"):
        broker_role(role_template, arn, "projects", "r", Trust="account", ZuploAccount='a"b')


# ---------------------------------------------------------------------------------------------
# deploy/terraform/modules/aws, token = "broker"


@needs_terraform
def test_aws_module_roles_admit_exactly_their_mapping(
    aws_module: TerraformModule, issuer: Issuer, tmp_path: Path
) -> None:
    """Two mappings, two roles, on the provider the module creates (or is given): each admits
    the broker tokens of its own mapping only; sts:TagSession exactly when the mapping sends
    session tags."""
    mappings = [
        {"name": "orders-prod", "account": "acme", "project": "orders"},
        {"name": "billing-prod", "account": "acme", "project": "billing", "session_tags": False},
    ]
    created = aws_module.instances(
        "aws_iam_openid_connect_provider.issuer",
        ["url", "client_id_list"],
        {"issuer": "https://sts.example.com", "mappings": mappings},
        tmp_path,
    )
    assert created == [{"url": "https://sts.example.com", "client_id_list": ["sts.amazonaws.com"]}]

    trust = IamTrust()
    provider = trust.add_oidc_provider(issuer.url, ["sts.amazonaws.com"])
    inputs = {
        "issuer": "https://sts.example.com",
        "oidc_provider_arn": provider.arn,
        "mappings": mappings,
    }
    roles = aws_module.instances(
        "aws_iam_role.mapping", ["name", "assume_role_policy"], inputs, tmp_path
    )
    arns = {name: f"arn:aws:iam::{ACCOUNT_ID}:role/{role['name']}" for name, role in roles.items()}
    for name, role in roles.items():
        trust.set_trust_policy(arns[name], json.loads(role["assume_role_policy"]))
    for name in roles:
        for other in roles:
            refusal = trust.check(arns[name], issuer.mint(sub=f"mapping:{other}", **{TAGS: None}))
            assert (refusal is None) == (other == name), (name, other)
    # Tags come unless the mapping says session_tags = false; the role then need not allow them.
    assert trust.check(arns["orders-prod"], issuer.mint(sub="mapping:orders-prod")) is None
    refusal = trust.check(arns["billing-prod"], issuer.mint(sub="mapping:billing-prod"))
    assert refusal is not None
    assert refusal.message == "Not authorized to perform sts:TagSession"

    specs = parse_document(aws_module.output("mappings_document", inputs, tmp_path))
    assert {s.name: (s.aws and s.aws.role_arn, s.aws and s.aws.session_tags) for s in specs} == {
        "orders-prod": (arns["orders-prod"], True),
        "billing-prod": (arns["billing-prod"], False),
    }
    assert {s.aws and s.aws.token for s in specs} == {"broker"}


# ---------------------------------------------------------------------------------------------
# deploy/terraform/modules/gcp, token = "broker"


@needs_terraform
def test_gcp_provider_trusts_the_broker_issuer_with_googles_default_audience(
    gcp_module: TerraformModule, tmp_path: Path
) -> None:
    provider = gcp_module.instances(
        "google_iam_workload_identity_pool_provider.issuer",
        ["oidc", "attribute_mapping", "attribute_condition"],
        gcp_inputs("broker"),
        tmp_path,
    )
    # The broker token's aud is "https:" + the provider name: Google's default, so no list.
    assert provider["oidc"] == [
        {"issuer_uri": "https://sts.example.com", "allowed_audiences": None}
    ]
    assert provider["attribute_mapping"] == {
        "google.subject": "assertion.sub",
        **{f"attribute.{c}": f"assertion.{c}" for c in ENVIRONMENT_CLAIMS},
        "attribute.zuplo_sub": "assertion.zuplo_sub",
    }
    assert provider["attribute_condition"] == (
        "assertion.sub.startsWith('mapping:') && assertion.account in [\"my-account\"]"
    )
    # The issuer has no default: a copy of the example cannot trust someone else's.
    assert "default" not in gcp_module.variables["issuer"]


@needs_terraform
def test_gcp_bindings_name_one_mapping_each(gcp_module: TerraformModule, tmp_path: Path) -> None:
    inputs = gcp_inputs("broker")
    inputs["mappings"][1]["account"] = "other-account"
    bindings = gcp_module.instances(
        "google_service_account_iam_member.workload_identity_user",
        ["service_account_id", "role", "member"],
        inputs,
        tmp_path,
    )
    assert {name: b["member"] for name, b in bindings.items()} == {
        name: f"principal://iam.googleapis.com/{GCP_POOL}/subject/mapping:{name}"
        for name in ("analytics-gcp", "orders-run")
    }
    assert {b["role"] for b in bindings.values()} == {"roles/iam.workloadIdentityUser"}
    # Broker bindings name a mapping, never a project: mappings of two accounts may share a pool.
    condition = gcp_module.instances(
        "google_iam_workload_identity_pool_provider.issuer",
        ["attribute_condition"],
        inputs,
        tmp_path,
    )["attribute_condition"]
    assert condition.endswith('assertion.account in ["my-account","other-account"]')

    specs = parse_document(gcp_module.output("mappings_document", inputs, tmp_path))
    for spec in specs:
        assert spec.gcp is not None
        assert (spec.gcp.token, spec.gcp.workload_identity_provider) == ("broker", GCP_PROVIDER)
        assert spec.gcp.service_account == f"zuplo-{spec.name}@my-gcp.iam.gserviceaccount.com"


@needs_terraform
def test_gcp_broker_id_tokens_for_cloud_run(gcp_module: TerraformModule, tmp_path: Path) -> None:
    assert_id_tokens_for_cloud_run(gcp_module, "broker", tmp_path)
