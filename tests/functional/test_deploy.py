"""deploy/ (the cloud templates) and docs/examples, checked offline with the real validators.

- Kubernetes manifests: every object against the Kubernetes OpenAPI schemas (kubernetes-validate,
  strict mode: unknown fields are errors), then the properties the operations guide relies on.
- CloudFormation: cfn-lint with zero findings, and the trust policy as IAM will read it.
- Terraform: parsed with python-hcl2; resources, attribute mapping, condition and audiences.
- Dockerfile: no engine here, so its instructions are parsed and the build stage's wheel build is
  run for real on exactly the files the Dockerfile copies.
- The Jobs' commands and the mappings ConfigMap run for real against SQLite.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import hcl2
import kubernetes_validate
import pytest
from cfnlint.api import ManualArgs, lint
from cfnlint.decode.decode import decode_str

from sts.config import ZUPLO_ISSUER
from sts.mappings.document import parse_document

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
# The oldest Kubernetes minor still in wide support, and the newest kubernetes-validate ships.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - a container listens on its own network namespace
SECRET_VARIABLES = {
    "STS_DATABASE_URL",
    "STS_REDIS_URL",
    "STS_CACHE_ENCRYPTION_KEY",
    "STS_KEY_ENCRYPTION_KEY",
}
ISSUER_HOST_PATH = ZUPLO_ISSUER.removeprefix("https://")
# The Zuplo claims that GCP maps to attributes (docs/reference.md section 1).
ENVIRONMENT_CLAIMS = ("account", "project", "deployment", "environment_type")


# ---------------------------------------------------------------------------------------------
# AWS CloudFormation


@pytest.fixture(scope="module")
def cfn_template() -> dict[str, Any]:
    template, errors = decode_str((DEPLOY / "aws" / "zuplo-oidc.yaml").read_text())
    assert not errors
    assert template is not None
    return dict(template)


def test_cloudformation_template_lints_clean() -> None:
    text = (DEPLOY / "aws" / "zuplo-oidc.yaml").read_text()
    matches = lint(text, config=ManualArgs(include_checks=["I"], regions=["us-east-1"]))
    assert [str(match) for match in matches] == []
    broken = text.replace("MaxSessionDuration: !Ref", "MaxSessionDurations: !Ref")
    assert "E3002" in {match.rule.id for match in lint(broken)}


def render_sub(template: str, variables: dict[str, str]) -> str:
    """CloudFormation's Fn::Sub on a string, for the variables given (every one must be)."""

    def one(match: re.Match[str]) -> str:
        return variables[match.group(1)]

    return re.sub(r"\$\{([A-Za-z0-9_.:]+)\}", one, template)


def trust_policy(template: dict[str, Any]) -> dict[str, Any]:
    """The role's trust policy, rendered as IAM will see it."""
    document = template["Resources"]["ExampleRole"]["Properties"]["AssumeRolePolicyDocument"]
    body, variables = document["Fn::Sub"]
    assert variables["ProviderArn"] == {"Ref": "ZuploOidcProvider"}
    # IssuerHostPath is the issuer URL without its scheme: the IAM condition key prefix.
    assert variables["IssuerHostPath"] == {
        "Fn::Select": [1, {"Fn::Split": ["https://", {"Ref": "IssuerUrl"}]}]
    }
    issuer = template["Parameters"]["IssuerUrl"]["Default"]
    values = {
        "ProviderArn": "arn:aws:iam::123456789012:oidc-provider/" + issuer[len("https://") :],
        "IssuerHostPath": issuer.split("https://")[1],
        "Audience": "https://sts.example.com",
        "SubjectPin": "client-123",
    }
    policy: dict[str, Any] = json.loads(render_sub(body, values))
    return policy


def test_oidc_provider_for_the_zuplo_issuer(cfn_template: dict[str, Any]) -> None:
    parameters = cfn_template["Parameters"]
    assert parameters["IssuerUrl"]["Default"] == ZUPLO_ISSUER
    assert re.fullmatch(parameters["IssuerUrl"]["AllowedPattern"], ZUPLO_ISSUER)
    assert not re.fullmatch(parameters["IssuerUrl"]["AllowedPattern"], "http://example.com")
    provider = cfn_template["Resources"]["ZuploOidcProvider"]
    assert provider["Type"] == "AWS::IAM::OIDCProvider"
    properties = provider["Properties"]
    assert properties["Url"] == {"Ref": "IssuerUrl"}
    assert properties["ClientIdList"] == [{"Ref": "Audience"}]
    assert properties["ThumbprintList"] == {
        "Fn::If": ["HasThumbprints", {"Ref": "Thumbprints"}, {"Ref": "AWS::NoValue"}]
    }


def test_pass_through_trust_always_pins_one_sub(cfn_template: dict[str, Any]) -> None:
    """Any Zuplo deployment can mint a token for any audience: a role must pin sub."""
    pin = cfn_template["Parameters"]["SubjectPin"]
    assert "Default" not in pin
    assert pin["MinLength"] == 1
    for bad in ("", "client 1", "client-*", "client-?"):
        assert not re.fullmatch(pin["AllowedPattern"], bad), bad
    assert re.fullmatch(pin["AllowedPattern"], "client-123")
    (statement,) = trust_policy(cfn_template)["Statement"]
    assert statement["Effect"] == "Allow"
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert statement["Principal"]["Federated"].startswith("arn:aws:iam::")
    assert statement["Condition"] == {
        "StringEquals": {
            f"{ISSUER_HOST_PATH}:aud": "https://sts.example.com",
            f"{ISSUER_HOST_PATH}:sub": "client-123",
        }
    }


def test_role_session_and_policy(cfn_template: dict[str, Any]) -> None:
    parameters = cfn_template["Parameters"]["MaxSessionDuration"]
    # IAM's own bounds; a mapping's duration_seconds (<= 43200) must fit under the role's.
    assert (parameters["MinValue"], parameters["MaxValue"]) == (3600, 43200)
    role = cfn_template["Resources"]["ExampleRole"]["Properties"]
    assert role["MaxSessionDuration"] == {"Ref": "MaxSessionDuration"}
    assert role["ManagedPolicyArns"] == [{"Ref": "ExampleReadPolicy"}]
    policy = cfn_template["Resources"]["ExampleReadPolicy"]
    assert policy["Type"] == "AWS::IAM::ManagedPolicy"
    assert cfn_template["Outputs"]["RoleArn"]["Value"] == {"Fn::GetAtt": ["ExampleRole", "Arn"]}


# ---------------------------------------------------------------------------------------------
# GCP Terraform


def unquote(value: Any) -> Any:
    """python-hcl2 keeps string literals' quotes; interpolations come as ``${...}``."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def load_tf(name: str) -> dict[str, Any]:
    with (DEPLOY / "gcp" / name).open() as handle:
        data: dict[str, Any] = hcl2.load(handle)
    return data


def blocks(data: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    """``resource`` blocks as ``{"type.name": body}``; variables and outputs as ``{name: body}``."""
    found: dict[str, dict[str, Any]] = {}
    for entry in data.get(kind, []):
        for first, body in entry.items():
            if kind == "resource":
                for second, inner in body.items():
                    found[f"{unquote(first)}.{unquote(second)}"] = inner
            else:
                found[unquote(first)] = body
    return found


@pytest.fixture(scope="module")
def terraform() -> dict[str, dict[str, dict[str, Any]]]:
    main, variables, outputs = load_tf("main.tf"), load_tf("variables.tf"), load_tf("outputs.tf")
    return {
        "resource": blocks(main, "resource"),
        "variable": blocks(variables, "variable"),
        "output": blocks(outputs, "output"),
    }


def test_terraform_resources(terraform: dict[str, dict[str, dict[str, Any]]]) -> None:
    assert set(terraform["resource"]) == {
        "google_iam_workload_identity_pool.zuplo",
        "google_iam_workload_identity_pool_provider.zuplo",
        "google_service_account.reader",
        "google_service_account_iam_member.zuplo_project",
        "google_service_account_iam_member.zuplo_project_id_tokens",
        "google_cloud_run_v2_service_iam_member.invoker",
    }


def test_terraform_oidc_provider(terraform: dict[str, dict[str, dict[str, Any]]]) -> None:
    provider = terraform["resource"]["google_iam_workload_identity_pool_provider.zuplo"]
    assert provider["workload_identity_pool_id"] == (
        "${google_iam_workload_identity_pool.zuplo.workload_identity_pool_id}"
    )
    (oidc,) = provider["oidc"]
    assert oidc["issuer_uri"] == "${var.issuer_uri}"
    assert oidc["allowed_audiences"] == "${var.audiences}"
    assert unquote(terraform["variable"]["issuer_uri"]["default"]) == ZUPLO_ISSUER
    assert [unquote(a) for a in terraform["variable"]["audiences"]["default"]] == [
        "https://sts.example.com"
    ]
    mapping = {unquote(k): unquote(v) for k, v in provider["attribute_mapping"].items()}
    assert mapping == {
        "google.subject": "assertion.sub",
        **{f"attribute.{c}": f"assertion.{c}" for c in ENVIRONMENT_CLAIMS},
    }
    condition = unquote(provider["attribute_condition"])
    assert condition == "assertion.account == '${var.zuplo_account}'"


def test_terraform_service_account_binding(
    terraform: dict[str, dict[str, dict[str, Any]]],
) -> None:
    binding = terraform["resource"]["google_service_account_iam_member.zuplo_project"]
    assert binding["service_account_id"] == "${google_service_account.reader.name}"
    assert unquote(binding["role"]) == "roles/iam.workloadIdentityUser"
    assert unquote(binding["member"]) == (
        "principalSet://iam.googleapis.com/${google_iam_workload_identity_pool.zuplo.name}"
        "/attribute.project/${var.zuplo_project}"
    )
    # The provider name output is what a mapping's gcp.workload_identity_provider takes.
    output = unquote(terraform["output"]["workload_identity_provider"]["value"])
    assert output == (
        "//iam.googleapis.com/${google_iam_workload_identity_pool_provider.zuplo.name}"
    )


def test_terraform_variables_declared_and_used() -> None:
    """Every var.X referenced is declared, and every declared variable is referenced."""
    text = "".join((DEPLOY / "gcp" / name).read_text() for name in ("main.tf", "outputs.tf"))
    used = set(re.findall(r"\bvar\.([a-z_][a-z0-9_]*)", text))
    declared = set(blocks(load_tf("variables.tf"), "variable"))
    assert used == declared


def data_blocks(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``data`` blocks as ``{"type.name": body}``."""
    found: dict[str, dict[str, Any]] = {}
    for entry in data.get("data", []):
        for first, body in entry.items():
            for second, inner in body.items():
                found[f"{unquote(first)}.{unquote(second)}"] = inner
    return found


def assert_id_tokens_for_cloud_run(
    resources: dict[str, dict[str, Any]],
    data: dict[str, dict[str, Any]],
    variables: dict[str, dict[str, Any]],
    *,
    federated: str,
    id_tokens: str,
) -> None:
    """docs/reference.md, "GCP ID tokens", in Terraform: the principal that may impersonate the
    service account may also have it sign ID tokens (generateIdToken needs
    iam.serviceAccounts.getOpenIdToken), and the service account may invoke the Cloud Run
    service the ``cloud_run_service`` variable names; all of it only when that is set."""
    only_with_a_service = '${var.cloud_run_service == "" ? 0 : 1}'
    impersonate = resources[federated]
    signer = resources[id_tokens]
    assert unquote(signer["role"]) == "roles/iam.serviceAccountOpenIdTokenCreator"
    assert signer["member"] == impersonate["member"]
    assert signer["service_account_id"] == impersonate["service_account_id"]
    assert signer["service_account_id"] == "${google_service_account.reader.name}"
    assert signer["count"] == only_with_a_service

    service = data["google_cloud_run_v2_service.invoked"]
    assert (service["name"], service["location"]) == (
        "${var.cloud_run_service}",
        "${var.cloud_run_location}",
    )
    assert service["count"] == only_with_a_service
    invoker = resources["google_cloud_run_v2_service_iam_member.invoker"]
    assert unquote(invoker["role"]) == "roles/run.invoker"
    assert unquote(invoker["member"]) == "serviceAccount:${google_service_account.reader.email}"
    assert invoker["name"] == "${data.google_cloud_run_v2_service.invoked[0].name}"
    assert invoker["location"] == "${data.google_cloud_run_v2_service.invoked[0].location}"
    assert invoker["count"] == only_with_a_service

    assert unquote(variables["cloud_run_service"]["default"]) == ""
    (validation,) = variables["cloud_run_service"]["validation"]
    found = re.search(r'regex\("(.+?)", var\.', validation["condition"])
    assert found is not None
    name = re.compile(found.group(1).replace("\\\\", "\\"))
    for good in ("orders", "o", "orders-api-2", "a" * 49):
        assert name.search(good), good
    for bad in ("Orders", "2orders", "orders-", "orders_api", "a" * 50, "https://o.run.app"):
        assert not name.search(bad), bad


def test_terraform_id_tokens_for_cloud_run(
    terraform: dict[str, dict[str, dict[str, Any]]],
) -> None:
    assert_id_tokens_for_cloud_run(
        terraform["resource"],
        data_blocks(load_tf("main.tf")),
        terraform["variable"],
        federated="google_service_account_iam_member.zuplo_project",
        id_tokens="google_service_account_iam_member.zuplo_project_id_tokens",
    )


# Resource attributes as Terraform would know them after apply, for rendering outputs.
APPLIED = {
    "google_iam_workload_identity_pool_provider.zuplo.name": (
        "projects/123456789/locations/global/workloadIdentityPools/zuplo/providers/zuplo"
    ),
    "google_iam_workload_identity_pool_provider.zuplo_sts.name": (
        "projects/123456789/locations/global/workloadIdentityPools/zuplo-sts/providers/zuplo-sts"
    ),
    "google_service_account.reader.email": "zuplo-reader@my-gcp.iam.gserviceaccount.com",
    "data.google_cloud_run_v2_service.invoked[0].uri": "https://orders-abc123-uc.a.run.app",
}


def output_expression(text: str, name: str) -> str:
    """The ``value`` expression of output ``name`` as written (balanced parentheses)."""
    start = text.index(f'output "{name}"')
    value = text.index("value", start)
    opening = text.index("(", value)
    depth = 0
    for index in range(opening, len(text)):
        depth += {"(": 1, ")": -1}.get(text[index], 0)
        if depth == 0:
            return text[text.index("=", value) + 1 : index + 1].strip()
    raise AssertionError(f"unbalanced output {name}")


def terraform_console(
    directory: Path, expression: str, variables: dict[str, str], tmp: Path
) -> subprocess.CompletedProcess[str]:
    """``expression`` evaluated by Terraform itself (``terraform console``, offline, no
    provider needed) beside the module's variables.tf as written (defaults and validations),
    with the variable values given."""
    shutil.copy(directory / "variables.tf", tmp / "variables.tf")
    (tmp / "render.tf").write_text(f"locals {{\n  rendered = {expression}\n}}\n")
    arguments = [f"-var={key}={value}" for key, value in variables.items()]
    return subprocess.run(
        ["terraform", "console", "-no-color", *arguments],
        cwd=tmp,
        input="local.rendered\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1"},
    )


def render_output(directory: Path, name: str, variables: dict[str, str], tmp: Path) -> str:
    """Output ``name`` (a string) of the module in ``directory`` as Terraform computes it, with
    resource attributes from :data:`APPLIED`."""
    expression = output_expression((directory / "outputs.tf").read_text(), name)
    for reference, value in APPLIED.items():
        expression = expression.replace(reference, json.dumps(value))
    assert not re.search(r"\b(google_[a-z0-9_]+|data)\.", expression), expression
    done = terraform_console(directory, expression, variables, tmp)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert (lines[0], lines[-1]) == ("<<EOT", "EOT"), done.stdout
    return "\n".join(lines[1:-1]) + "\n"


def snippet_as_document(snippet: str) -> str:
    """The YAML of one mapping, as the one entry of a mappings file."""
    return "mappings:\n  - " + "\n    ".join(snippet.rstrip("\n").splitlines()) + "\n"


needs_terraform = pytest.mark.skipif(
    shutil.which("terraform") is None, reason="needs the terraform command (offline)"
)


@needs_terraform
@pytest.mark.parametrize(
    ("service", "audiences"),
    [("", ()), ("orders", ("https://orders-abc123-uc.a.run.app",))],
)
def test_terraform_mapping_snippet_is_a_mapping_apply_takes(
    tmp_path: Path, service: str, audiences: tuple[str, ...]
) -> None:
    values = {
        "project_id": "my-gcp",
        "zuplo_account": "my-account",
        "zuplo_project": "my-project",
        "cloud_run_service": service,
    }
    snippet = render_output(DEPLOY / "gcp", "mapping_snippet", values, tmp_path)
    (spec,) = parse_document(snippet_as_document(snippet), "mapping_snippet")
    assert (spec.name, spec.account, spec.project) == ("analytics-gcp", "my-account", "my-project")
    assert spec.gcp is not None
    assert spec.gcp.workload_identity_provider == (
        "//iam.googleapis.com/" + APPLIED["google_iam_workload_identity_pool_provider.zuplo.name"]
    )
    assert spec.gcp.service_account == APPLIED["google_service_account.reader.email"]
    assert spec.gcp.id_token_audiences == audiences


@needs_terraform
def test_terraform_refuses_a_cloud_run_service_that_is_no_name(tmp_path: Path) -> None:
    values = {"project_id": "p", "zuplo_account": "a", "zuplo_project": "p"}
    done = terraform_console(
        DEPLOY / "gcp", "var.cloud_run_service", {**values, "cloud_run_service": "orders"}, tmp_path
    )
    assert (done.returncode, done.stdout.strip()) == (0, '"orders"'), done.stderr
    refused = terraform_console(
        DEPLOY / "gcp",
        "var.cloud_run_service",
        {**values, "cloud_run_service": "https://orders.run.app"},
        tmp_path,
    )
    assert refused.returncode != 0
    assert "A Cloud Run service name" in refused.stdout + refused.stderr


# ---------------------------------------------------------------------------------------------
# docs/examples (type-checked by hand with tsc; here: they speak the contract's protocol)


def test_examples_use_the_contract_fields() -> None:
    examples = ROOT / "docs" / "examples"
    client = (examples / "sts-client.ts").read_text()
    assert "ZuploServices.getIDToken(context, {" in client
    assert '"urn:ietf:params:oauth:grant-type:token-exchange"' in client
    assert '"urn:ietf:params:oauth:token-type:id_token"' in client
    assert '"content-type": "application/x-www-form-urlencoded"' in client
    assert 'new URL("/token", ' in client
    for field in ("AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"):
        assert f"{field}: string" in client
    aws = (examples / "aws-handler.ts").read_text()
    assert 'import { AwsClient } from "aws4fetch";' in aws
    assert "sessionToken: credentials.SessionToken" in aws
    gcp = (examples / "gcp-handler.ts").read_text()
    assert "authorization: `Bearer ${accessToken}`" in gcp
    # docs/reference.md, "GCP ID tokens": an ID token for a Cloud Run URL, sent as bearer token.
    run = (examples / "gcp-id-token-handler.ts").read_text()
    assert "ZuploServices.getIDToken(context, {" in run
    assert '"urn:ietf:params:oauth:token-type:id_token"' in run
    assert "requested_token_type: ID_TOKEN" in run
    assert 'body.set("resource", audience)' in run
    assert "authorization: `Bearer ${idToken}`" in run
    assert "fetch(new URL(" in run
    readme = (examples / "README.md").read_text()
    for variable in re.findall(r"environment\.([A-Z_]+)|required\(\"([A-Z_]+)\"\)", aws + client):
        name = variable[0] or variable[1]
        assert f"`{name}`" in readme, name
