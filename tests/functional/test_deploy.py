"""deploy/ cloud trust (CloudFormation, Terraform modules) and docs/examples, checked offline with
the real validators and evaluated as the clouds would evaluate them.

- CloudFormation: cfn-lint with zero findings; stacks resolved for their parameters as
  CloudFormation resolves them (:func:`deploy_stack`: constraints, Rules, Conditions, intrinsic
  functions), and the trust policies they create evaluated by the IAM emulator
  (:mod:`sts.dev.aws_iam`) against a real issuer on 127.0.0.1.
- Terraform: parsed with python-hcl2, then evaluated by Terraform itself (``terraform console``,
  offline: variables, locals, ``for_each`` and outputs need no provider), with the attributes
  the clouds compute on apply stood in for (:data:`AFTER_APPLY`).
- What the templates and modules output for the mappings file is parsed as
  ``sts mappings apply`` parses a file.

This file: the pieces both modes share and pass-through mode (``token: zuplo``);
test_deploy_broker.py: broker mode; test_deploy_azure.py: Azure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hcl2
import pytest
import regex
import yaml
from cfnlint.api import ManualArgs, lint
from cfnlint.decode.decode import decode_str

from sts.config import ZUPLO_ISSUER
from sts.dev.aws_iam import IamTrust, provider_url
from sts.mappings.document import parse_document
from tests.oidc import TAGS, Issuer

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROVIDER_TEMPLATE = DEPLOY / "aws" / "oidc-provider.yaml"
ROLE_TEMPLATE = DEPLOY / "aws" / "mapping-role.yaml"
MODULES = DEPLOY / "terraform" / "modules"
EXAMPLES = DEPLOY / "terraform" / "examples"
ACCOUNT_ID = "123456789012"
ISSUER_HOST_PATH = ZUPLO_ISSUER.removeprefix("https://")
AUDIENCE = "https://sts.example.com"
# The Zuplo claims that GCP maps to attributes (docs/reference.md section 1).
ENVIRONMENT_CLAIMS = ("account", "project", "deployment", "environment_type")
ID_TOKEN_CREATOR = "roles/iam.serviceAccountOpenIdTokenCreator"
RUN_INVOKER = "roles/run.invoker"

needs_terraform = pytest.mark.skipif(
    shutil.which("terraform") is None, reason="needs the terraform command (offline)"
)


# ---------------------------------------------------------------------------------------------
# CloudFormation, resolved as CloudFormation resolves a stack

PSEUDO_PARAMETERS = {
    "AWS::AccountId": ACCOUNT_ID,
    "AWS::Partition": "aws",
    "AWS::Region": "us-east-1",
    "AWS::StackName": "zuplo-sts",
    "AWS::URLSuffix": "amazonaws.com",
}
NO_VALUE = object()


class StackRefused(Exception):
    """CloudFormation refuses the parameters (a constraint or a rule): nothing is created."""


@dataclass(frozen=True)
class Stack:
    """A stack as CloudFormation creates it: the resources whose condition holds, with their
    properties resolved and their physical ids (``Ref``) and attributes as IAM forms them."""

    parameters: dict[str, Any]
    resources: dict[str, dict[str, Any]]
    outputs: dict[str, Any]

    def role(self) -> dict[str, Any]:
        """The one role of a mapping-role.yaml stack: its properties, ``Ref`` and ``Arn``."""
        (role,) = (r for r in self.resources.values() if r["Type"] == "AWS::IAM::Role")
        return role

    def trust_policy(self) -> dict[str, Any]:
        policy: dict[str, Any] = json.loads(self.role()["Properties"]["AssumeRolePolicyDocument"])
        return policy


def load_template(path: Path) -> dict[str, Any]:
    template, errors = decode_str(path.read_text())
    assert not errors
    assert template is not None
    return dict(template)


def lint_findings(text: str) -> list[str]:
    config = ManualArgs(include_checks=["I"], regions=["us-east-1"])
    return [str(match) for match in lint(text, config=config)]


def _physical(kind: str, properties: Mapping[str, Any]) -> dict[str, str]:
    """The physical id (``Ref``) and attributes IAM gives the resources these templates create."""
    if kind == "AWS::IAM::OIDCProvider":
        url = provider_url(properties["Url"])
        return {"Ref": f"arn:aws:iam::{ACCOUNT_ID}:oidc-provider/{url}"}
    if kind == "AWS::IAM::Role":
        name = properties["RoleName"]
        return {"Ref": name, "Arn": f"arn:aws:iam::{ACCOUNT_ID}:role/{name}"}
    raise AssertionError(f"no stand-in for {kind}")


def _parameter_values(
    template: Mapping[str, Any], given: Mapping[str, str], unchecked: frozenset[str]
) -> dict[str, Any]:
    """The parameters with their defaults, refused as CloudFormation refuses them."""
    declared = template.get("Parameters", {})
    if set(given) - set(declared):
        raise StackRefused(f"unknown parameters {sorted(set(given) - set(declared))}")
    values: dict[str, Any] = {}
    for name, spec in declared.items():
        if name in given:
            raw = given[name]
        elif "Default" in spec:
            raw = str(spec["Default"])
        else:
            raise StackRefused(f"{name}: a value is required")
        if spec["Type"] == "CommaDelimitedList":
            values[name] = raw.split(",")
            continue
        allowed = [str(value) for value in spec.get("AllowedValues", [raw])]
        pattern = spec.get("AllowedPattern")
        if raw not in allowed or (
            pattern is not None and name not in unchecked and not regex.fullmatch(pattern, raw)
        ):
            raise StackRefused(f"{name}: {raw!r} is not allowed")
        if not int(spec.get("MinLength", 0)) <= len(raw) <= int(spec.get("MaxLength", 4096)):
            raise StackRefused(f"{name}: length")
        if spec["Type"] == "Number" and not (
            float(spec.get("MinValue", "-inf")) <= float(raw) <= float(spec.get("MaxValue", "inf"))
        ):
            raise StackRefused(f"{name}: {raw} is out of range")
        values[name] = raw
    return values


class _Resolver:
    """The intrinsic functions the templates use, evaluated as CloudFormation evaluates them
    (``Fn::If`` evaluates only the branch it takes; ``AWS::NoValue`` removes the property)."""

    def __init__(self, template: Mapping[str, Any], parameters: dict[str, Any]) -> None:
        self.template = template
        self.parameters = parameters
        self.resources: dict[str, dict[str, Any]] = {}

    def deploy(self) -> Stack:
        for name, rule in self.template.get("Rules", {}).items():
            if "RuleCondition" in rule and not self.value(rule["RuleCondition"]):
                continue
            for assertion in rule["Assertions"]:
                if not self.value(assertion["Assert"]):
                    raise StackRefused(f"{name}: {assertion.get('AssertDescription', '')}")
        for logical, resource in self.template["Resources"].items():
            if "Condition" in resource and not self.condition(resource["Condition"]):
                continue
            properties = self.value(resource.get("Properties", {}))
            self.resources[logical] = {
                "Type": resource["Type"],
                "Properties": properties,
                **_physical(resource["Type"], properties),
            }
        outputs = {
            name: self.value(output["Value"])
            for name, output in self.template.get("Outputs", {}).items()
            if "Condition" not in output or self.condition(output["Condition"])
        }
        return Stack(self.parameters, self.resources, outputs)

    def condition(self, name: str) -> bool:
        return bool(self.value(self.template["Conditions"][name]))

    def ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self.parameters:
            return self.parameters[name]
        if name in PSEUDO_PARAMETERS:
            return PSEUDO_PARAMETERS[name]
        return self.resources[name]["Ref"]

    def sub(self, argument: Any) -> str:
        text, variables = (argument, {}) if isinstance(argument, str) else argument
        local = {name: self.value(value) for name, value in variables.items()}

        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in local:
                return str(local[name])
            if "." in name:
                logical, attribute = name.split(".", 1)
                return str(self.resources[logical][attribute])
            return str(self.ref(name))

        return re.sub(r"\$\{([^}]*)\}", one, text)

    def value(self, node: Any) -> Any:
        if isinstance(node, list):
            return [item for item in map(self.value, node) if item is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, argument),) = node.items()
            if key == "Ref":
                return self.ref(argument)
            if key == "Condition":
                return self.condition(argument)
            if key == "Fn::GetAtt":
                logical, attribute = argument
                return self.resources[logical][attribute]
            if key == "Fn::Sub":
                return self.sub(argument)
            if key == "Fn::Select":
                return self.value(argument[1])[int(self.value(argument[0]))]
            if key == "Fn::Split":
                return str(self.value(argument[1])).split(argument[0])
            if key == "Fn::Join":
                return argument[0].join(self.value(argument[1]))
            if key == "Fn::If":
                name, taken, other = argument
                return self.value(taken if self.condition(name) else other)
            if key == "Fn::Equals":
                return self.value(argument[0]) == self.value(argument[1])
            if key == "Fn::Not":
                return not self.value(argument[0])
            if key == "Fn::And":
                return all(self.value(item) for item in argument)
            if key == "Fn::Or":
                return any(self.value(item) for item in argument)
        resolved = {key: self.value(item) for key, item in node.items()}
        return {key: item for key, item in resolved.items() if item is not NO_VALUE}


def deploy_stack(
    template: Mapping[str, Any],
    parameters: Mapping[str, str],
    *,
    unchecked: frozenset[str] = frozenset(),
) -> Stack:
    """The stack CloudFormation creates from ``template`` with ``parameters`` (strings, as on
    the command line), or :class:`StackRefused`. ``unchecked``: parameters whose AllowedPattern
    is left out (the loopback test issuer speaks http, not https)."""
    return _Resolver(template, _parameter_values(template, parameters, unchecked)).deploy()


def snippets_as_document(snippets: list[str]) -> str:
    """MappingSnippet outputs (one YAML flow mapping each) as the entries of one mappings file."""
    return "mappings:\n" + "".join(f"  - {snippet}\n" for snippet in snippets)


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


def pass_through_role(
    role_template: Mapping[str, Any], provider_arn: str, mapping: str, pin: str, **more: str
) -> Stack:
    return deploy_stack(
        role_template,
        {
            "OidcProviderArn": provider_arn,
            "Trust": "deployment",
            "MappingName": mapping,
            "SubjectPin": pin,
            "Audience": AUDIENCE,
            "ZuploAccount": "my-account",
            "ZuploProject": "my-project",
            "RoleName": f"zuplo-{mapping}",
            **more,
        },
    )


@pytest.mark.parametrize(
    ("path", "breakage"),
    [
        (PROVIDER_TEMPLATE, ("ClientIdList: !Ref", "ClientIdLists: !Ref")),
        (ROLE_TEMPLATE, ("MaxSessionDuration: !Ref", "MaxSessionDurations: !Ref")),
    ],
)
def test_cloudformation_templates_lint_clean(path: Path, breakage: tuple[str, str]) -> None:
    text = path.read_text()
    assert lint_findings(text) == []
    broken = text.replace(*breakage)
    assert broken != text
    assert "E3002" in {match.rule.id for match in lint(broken)}


def test_the_provider_is_the_one_per_account_piece(
    provider_template: dict[str, Any], role_template: dict[str, Any]
) -> None:
    """IAM keeps one OIDC provider per issuer URL in an account: the provider has a stack of
    its own, and no role stack creates one, so role stacks deploy side by side."""
    assert {name: r["Type"] for name, r in provider_template["Resources"].items()} == {
        "OidcProvider": "AWS::IAM::OIDCProvider"
    }
    assert provider_template["Outputs"]["OidcProviderArn"]["Value"] == {"Ref": "OidcProvider"}
    assert {r["Type"] for r in role_template["Resources"].values()} == {"AWS::IAM::Role"}
    assert "OidcProviderArn" in role_template["Parameters"]

    broker = deploy_stack(provider_template, {"IssuerUrl": "https://sts.example.com"})
    assert broker.resources["OidcProvider"]["Properties"] == {
        "Url": "https://sts.example.com",
        "ClientIdList": ["sts.amazonaws.com"],
        "Tags": [{"Key": "managed-by", "Value": "zuplo-sts"}],
    }
    assert broker.outputs["OidcProviderArn"] == (
        f"arn:aws:iam::{ACCOUNT_ID}:oidc-provider/sts.example.com"
    )
    zuplo = deploy_stack(
        provider_template,
        {"IssuerUrl": ZUPLO_ISSUER, "ClientIds": AUDIENCE, "Thumbprints": "a" * 40},
    )
    properties = zuplo.resources["OidcProvider"]["Properties"]
    assert (properties["Url"], properties["ClientIdList"]) == (ZUPLO_ISSUER, [AUDIENCE])
    assert properties["ThumbprintList"] == ["a" * 40]
    assert zuplo.outputs["OidcProviderArn"].endswith(f":oidc-provider/{ISSUER_HOST_PATH}")
    for bad in ("http://sts.example.com", "https://sts.example.com/", "https://a.example?x=1"):
        with pytest.raises(StackRefused, match="IssuerUrl"):
            deploy_stack(provider_template, {"IssuerUrl": bad})


def test_pass_through_trust_always_pins_one_sub(role_template: dict[str, Any]) -> None:
    """Any Zuplo deployment can mint a token for any audience: a pass-through role must pin
    sub, and the stack is refused without it."""
    arn = f"arn:aws:iam::{ACCOUNT_ID}:oidc-provider/{ISSUER_HOST_PATH}"
    with pytest.raises(StackRefused, match="DeploymentTrustPinsOneSub"):
        pass_through_role(role_template, arn, "orders-prod", "")
    with pytest.raises(StackRefused, match="DeploymentTrustPinsOneSub"):
        pass_through_role(role_template, arn, "orders-prod", "client-1", Audience="")
    for bad in ("client 1", "client-*", "client-?", 'client"1'):
        with pytest.raises(StackRefused, match="SubjectPin"):
            pass_through_role(role_template, arn, "orders-prod", bad)
    # A pin belongs to pass-through only: a broker role pins mapping:<name> by itself.
    with pytest.raises(StackRefused, match="BrokerTrustTakesNoPin"):
        pass_through_role(role_template, arn, "orders-prod", "client-1", Trust="mapping")

    stack = pass_through_role(role_template, arn, "orders-prod", "client-123")
    assert set(stack.resources) == {"PassThroughRole"}
    (statement,) = stack.trust_policy()["Statement"]
    assert statement == {
        "Sid": "OneDeployment",
        "Effect": "Allow",
        "Principal": {"Federated": arn},
        # Zuplo tokens carry no session tags: sts:TagSession is not allowed.
        "Action": "sts:AssumeRoleWithWebIdentity",
        "Condition": {
            "StringEquals": {
                f"{ISSUER_HOST_PATH}:aud": AUDIENCE,
                f"{ISSUER_HOST_PATH}:sub": "client-123",
            }
        },
    }


def test_two_pass_through_stacks_admit_one_deployment_each(
    provider_template: dict[str, Any], role_template: dict[str, Any], issuer: Issuer
) -> None:
    """The provider stack once, a role stack per mapping; the loopback issuer stands in for
    Zuplo's. Each role admits the Zuplo token of its own deployment and of no other."""
    provider = deploy_stack(
        provider_template,
        {"IssuerUrl": issuer.url, "ClientIds": AUDIENCE},
        unchecked=frozenset({"IssuerUrl"}),
    )
    properties = provider.resources["OidcProvider"]["Properties"]
    trust = IamTrust()
    registered = trust.add_oidc_provider(properties["Url"], properties["ClientIdList"])
    assert registered.arn == provider.outputs["OidcProviderArn"]
    pins = {"orders-prod": "client-1", "billing-prod": "client-2"}
    stacks = {
        name: pass_through_role(role_template, registered.arn, name, pin)
        for name, pin in pins.items()
    }
    for stack in stacks.values():
        trust.set_trust_policy(stack.outputs["RoleArn"], stack.trust_policy())

    def refusal(mapping: str, **claims: Any) -> str | None:
        found = trust.check(stacks[mapping].outputs["RoleArn"], issuer.mint(**claims))
        return None if found is None else found.code

    for mapping, pin in pins.items():
        other = next(p for p in pins.values() if p != pin)
        assert refusal(mapping, sub=pin, aud=AUDIENCE, **{TAGS: None}) is None
        assert refusal(mapping, sub=other, aud=AUDIENCE, **{TAGS: None}) == "AccessDenied"
        assert refusal(mapping, sub=pin, aud="sts.amazonaws.com", **{TAGS: None}) == (
            "InvalidIdentityToken"
        )
        # A token that carries session tags needs sts:TagSession, which this trust never grants.
        assert refusal(mapping, sub=pin, aud=AUDIENCE) == "AccessDenied"

    document = snippets_as_document([s.outputs["MappingSnippet"] for s in stacks.values()])
    specs = parse_document(document, "MappingSnippet")
    assert [(s.name, s.aws and s.aws.role_arn, s.aws and s.aws.token) for s in specs] == [
        (name, stack.outputs["RoleArn"], "zuplo") for name, stack in stacks.items()
    ]


def test_role_session_and_permissions(role_template: dict[str, Any]) -> None:
    bounds = role_template["Parameters"]["MaxSessionDuration"]
    # IAM's own bounds; a mapping's duration_seconds (<= 43200) must fit under the role's.
    assert (bounds["MinValue"], bounds["MaxValue"]) == (3600, 43200)
    arn = f"arn:aws:iam::{ACCOUNT_ID}:oidc-provider/{ISSUER_HOST_PATH}"
    for bad in ("900", "43201"):
        with pytest.raises(StackRefused, match="MaxSessionDuration"):
            pass_through_role(role_template, arn, "orders-prod", "c", MaxSessionDuration=bad)
    bare = pass_through_role(role_template, arn, "orders-prod", "c").role()["Properties"]
    assert "ManagedPolicyArns" not in bare
    assert "Policies" not in bare
    assert bare["MaxSessionDuration"] == "3600"
    stack = pass_through_role(
        role_template,
        arn,
        "orders-prod",
        "c",
        MaxSessionDuration="7200",
        PolicyArns="arn:aws:iam::aws:policy/ReadOnlyAccess,arn:aws:iam::aws:policy/AWSDenyAll",
        BucketName="orders",
    )
    role = stack.role()["Properties"]
    assert role["ManagedPolicyArns"] == [
        "arn:aws:iam::aws:policy/ReadOnlyAccess",
        "arn:aws:iam::aws:policy/AWSDenyAll",
    ]
    (policy,) = role["Policies"]
    assert policy["PolicyDocument"]["Statement"] == [
        {
            "Sid": "ReadObjects",
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": "arn:aws:s3:::orders/*",
        }
    ]
    (spec,) = parse_document(snippets_as_document([stack.outputs["MappingSnippet"]]))
    assert spec.aws is not None
    assert spec.aws.duration_seconds == 7200


# ---------------------------------------------------------------------------------------------
# Terraform, evaluated by Terraform


def unquote(value: Any) -> Any:
    """python-hcl2 keeps string literals' quotes; interpolations come as ``${...}``."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def tf_expression(value: Any) -> str:
    """A value as python-hcl2 reads it, written back as a Terraform expression."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ", ".join(map(tf_expression, value)) + "]"
    if isinstance(value, dict):
        items = [
            (key if key.startswith('"') else json.dumps(key)) + " = " + tf_expression(item)
            for key, item in value.items()
            if not key.startswith("__")
        ]
        return "{" + ", ".join(items) + "}"
    text = str(value)
    if text.startswith("${") and text.endswith("}"):
        return text[2:-1]
    return text


def per_instance(text: str) -> str:
    """``each.key``, ``each.value`` and ``count.index`` as the variables of a ``for``."""
    text = re.sub(r"\beach\.key\b", "each_key", text)
    text = re.sub(r"\beach\.value\b", "each_value", text)
    return re.sub(r"\bcount\.index\b", "count_index", text)


# What the clouds compute on apply, as expressions over each resource's own arguments (self.x):
# enough for the locals and outputs that read them.
AFTER_APPLY: dict[str, dict[str, str]] = {
    "aws_iam_openid_connect_provider.issuer": {
        "arn": f'"arn:aws:iam::{ACCOUNT_ID}:oidc-provider/${{trimprefix(self.url, "https://")}}"',
    },
    "aws_iam_role.mapping": {
        "arn": f'"arn:aws:iam::{ACCOUNT_ID}:role/${{self.name}}"',
        "name": "self.name",
        "id": "self.name",
    },
    "google_iam_workload_identity_pool.issuer": {
        "name": (
            '"projects/123456789/locations/global/workloadIdentityPools/'
            '${self.workload_identity_pool_id}"'
        ),
        "workload_identity_pool_id": "self.workload_identity_pool_id",
    },
    "google_iam_workload_identity_pool_provider.issuer": {
        "name": (
            '"projects/123456789/locations/global/workloadIdentityPools/'
            '${self.workload_identity_pool_id}/providers/${self.workload_identity_pool_provider_id}"'
        ),
    },
    "google_service_account.mapping": {
        "email": '"${self.account_id}@${self.project}.iam.gserviceaccount.com"',
        "name": (
            '"projects/${self.project}/serviceAccounts/'
            '${self.account_id}@${self.project}.iam.gserviceaccount.com"'
        ),
    },
    "data.google_cloud_run_v2_service.invoked": {
        "name": "self.name",
        "location": "self.location",
        "uri": '"https://${self.name}-abc123-uc.a.run.app"',
    },
    "azuread_application.mapping": {
        "client_id": 'uuidv5("url", self.display_name)',
        "id": '"/applications/${uuidv5("oid", self.display_name)}"',
    },
    "azuread_service_principal.mapping": {"object_id": 'uuidv5("x500", self.client_id)'},
}


SELF = re.compile(r"\bself\.([a-z_]+)")


class TerraformRefused(Exception):
    """``terraform console`` failed: a variable's validation refused the inputs, or an
    expression is wrong. The message is Terraform's."""


def _console(work: Path, expression: str) -> Any:
    """``expression`` (a JSON value) evaluated by ``terraform console`` in ``work``."""
    (work / "zz_rendered.tf").write_text(
        f"locals {{\n  rendered_for_test = jsonencode({expression})\n}}\n"
    )
    done = subprocess.run(
        ["terraform", "console", "-no-color"],
        cwd=work,
        input="local.rendered_for_test\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1"},
    )
    if done.returncode != 0 or "Error:" in done.stderr:
        raise TerraformRefused(done.stdout + done.stderr)
    return json.loads(json.loads(done.stdout.strip().splitlines()[-1]))


@dataclass(frozen=True)
class TerraformModule:
    """A module's configuration as python-hcl2 reads it: resources (``type.name``, data sources
    ``data.type.name``), locals and outputs as expressions, variables as blocks."""

    directory: Path
    resources: dict[str, dict[str, Any]]
    locals: dict[str, str]
    outputs: dict[str, str]
    variables: dict[str, dict[str, Any]]

    @classmethod
    def load(cls, directory: Path) -> TerraformModule:
        resources: dict[str, dict[str, Any]] = {}
        local_values: dict[str, str] = {}
        outputs: dict[str, str] = {}
        variables: dict[str, dict[str, Any]] = {}
        for path in sorted(directory.glob("*.tf")):
            with path.open() as handle:
                data = hcl2.load(handle)
            for kind, prefix in (("resource", ""), ("data", "data.")):
                for entry in data.get(kind, []):
                    for first, named in entry.items():
                        for second, body in named.items():
                            resources[f"{prefix}{unquote(first)}.{unquote(second)}"] = body
            for entry in data.get("locals", []):
                for name, value in entry.items():
                    if not name.startswith("__"):
                        local_values[name] = tf_expression(value)
            for entry in data.get("output", []):
                for name, body in entry.items():
                    outputs[unquote(name)] = tf_expression(body["value"])
            for entry in data.get("variable", []):
                for name, body in entry.items():
                    variables[unquote(name)] = body
        return cls(directory, resources, local_values, outputs, variables)

    @staticmethod
    def each_instance(body: Mapping[str, Any], element: str) -> str:
        """``element`` (written with each.key, each.value, count.index) for every instance of a
        resource: a map by key for ``for_each``, a list for ``count``, else the element."""
        element = per_instance(element)
        if "for_each" in body:
            iterated = tf_expression(body["for_each"])
            return f"{{for each_key, each_value in {iterated} : each_key => {element}}}"
        if "count" in body:
            return f"[for count_index in range({tf_expression(body['count'])}) : {element}]"
        return element

    def stand_in(self, address: str) -> str:
        """Resource ``address`` after apply (:data:`AFTER_APPLY`), as an expression."""
        body = self.resources[address]

        def own(match: re.Match[str]) -> str:
            return "(" + tf_expression(body[match.group(1)]) + ")"

        fields = ", ".join(
            name + " = " + SELF.sub(own, template)
            for name, template in AFTER_APPLY[address].items()
        )
        return self.after_apply(self.each_instance(body, "{" + fields + "}"))

    def after_apply(self, text: str) -> str:
        """``text`` with every reference to a resource replaced by its :meth:`stand_in`."""
        for address in AFTER_APPLY:
            pattern = r"(?<![\w.])" + re.escape(address) + r"(?![\w-])"
            if address in self.resources and re.search(pattern, text):
                replacement = "(" + self.stand_in(address) + ")"
                text = re.sub(pattern, lambda _, stand_in=replacement: stand_in, text)
        return text

    def evaluate(self, expression: str, inputs: Mapping[str, Any], tmp: Path) -> Any:
        """``expression`` evaluated by Terraform in the module's scope: its variables.tf as
        written (types, defaults, validations) given ``inputs``, and its locals, the resources
        stood in for as after apply."""
        work = Path(tempfile.mkdtemp(dir=tmp))
        shutil.copy(self.directory / "variables.tf", work / "variables.tf")
        body = "".join(f"  {k} = {self.after_apply(v)}\n" for k, v in self.locals.items())
        (work / "locals.tf").write_text(f"locals {{\n{body}}}\n")
        (work / "terraform.tfvars.json").write_text(json.dumps(inputs))
        return _console(work, self.after_apply(expression))

    def instances(
        self, address: str, arguments: list[str], inputs: Mapping[str, Any], tmp: Path
    ) -> Any:
        """The instances Terraform plans for resource ``address`` with these ``arguments`` of
        each: ``{key: {argument: value}}`` for ``for_each``, a list for ``count``."""
        body = self.resources[address]
        fields = ", ".join(f"{name} = {tf_expression(body[name])}" for name in arguments)
        return self.evaluate(self.each_instance(body, "{" + fields + "}"), inputs, tmp)

    def output(self, name: str, inputs: Mapping[str, Any], tmp: Path) -> Any:
        return self.evaluate(self.outputs[name], inputs, tmp)


def example_call(example: Path, tmp: Path) -> tuple[TerraformModule, dict[str, Any]]:
    """The module an example root configuration calls, and the inputs Terraform gives it from
    the example's terraform.tfvars.example."""
    with (example / "main.tf").open() as handle:
        ((call,),) = [entry.values() for entry in hcl2.load(handle)["module"]]
    module = TerraformModule.load((example / unquote(call["source"])).resolve())
    arguments = {
        name: tf_expression(value)
        for name, value in call.items()
        if name != "source" and not name.startswith("__")
    }
    work = Path(tempfile.mkdtemp(dir=tmp))
    shutil.copy(example / "variables.tf", work / "variables.tf")
    shutil.copy(example / "terraform.tfvars.example", work / "terraform.tfvars")
    expression = "{" + ", ".join(f"{k} = {v}" for k, v in arguments.items()) + "}"
    inputs: dict[str, Any] = _console(work, expression)
    return module, inputs


def variables_used(directory: Path) -> set[str]:
    text = "".join(path.read_text() for path in directory.glob("*.tf"))
    return set(re.findall(r"\bvar\.([a-z_][a-z0-9_]*)", text))


def validation_regex(variable: Mapping[str, Any], index: int = 0) -> re.Pattern[str]:
    """The first ``regex("...", ...)`` of a variable's ``index``-th validation."""
    found = re.search(r'regex\("(.+?)", ', variable["validation"][index]["condition"])
    assert found is not None
    return re.compile(found.group(1).replace("\\\\", "\\"))


@pytest.fixture(scope="module")
def aws_module() -> TerraformModule:
    return TerraformModule.load(MODULES / "aws")


@pytest.fixture(scope="module")
def gcp_module() -> TerraformModule:
    return TerraformModule.load(MODULES / "gcp")


TERRAFORM_ROOTS = sorted([*MODULES.iterdir(), *EXAMPLES.iterdir()])


@needs_terraform
def test_terraform_is_formatted() -> None:
    done = subprocess.run(
        ["terraform", "fmt", "-check", "-recursive", "-no-color", str(DEPLOY / "terraform")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "CHECKPOINT_DISABLE": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("directory", TERRAFORM_ROOTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_terraform_variables_declared_and_used(directory: Path) -> None:
    """Every var.X referenced is declared, and every declared variable is referenced."""
    declared = TerraformModule.load(directory).variables
    assert variables_used(directory) == set(declared)
    for variable in declared.values():
        assert variable.get("description"), variable


def for_each_of(module: TerraformModule) -> dict[str, str]:
    """What each resource of the module is instantiated over."""
    return {
        address: per_instance(tf_expression(body.get("for_each", body.get("count", "once"))))
        for address, body in module.resources.items()
    }


def test_the_modules_make_one_of_each_per_mapping() -> None:
    """The per-account or per-project pieces once; a role, service account, binding or
    federated credential per mapping, keyed by the mapping's name."""
    mappings = "local.mappings"
    assert TerraformModule.load(MODULES / "aws").locals["mappings"] == (
        "{for m in var.mappings : m.name => m}"
    )
    assert for_each_of(TerraformModule.load(MODULES / "aws")) == {
        "aws_iam_openid_connect_provider.issuer": "var.oidc_provider_arn == null ? 1 : 0",
        "aws_iam_role.mapping": mappings,
        "aws_iam_role_policy_attachment.mapping": "local.policy_attachments",
        "aws_iam_role_policy.mapping": "{for name, m in local.mappings : name => m if "
        "m.policy != null}",
    }
    assert for_each_of(TerraformModule.load(MODULES / "gcp")) == {
        "google_iam_workload_identity_pool.issuer": "once",
        "google_iam_workload_identity_pool_provider.issuer": "once",
        "google_service_account.mapping": mappings,
        "google_service_account_iam_member.workload_identity_user": mappings,
        "google_service_account_iam_member.id_token_creator": "local.cloud_run",
        "data.google_cloud_run_v2_service.invoked": "local.cloud_run",
        "google_cloud_run_v2_service_iam_member.invoker": "local.cloud_run",
    }
    assert for_each_of(TerraformModule.load(MODULES / "azure")) == {
        "azuread_application.mapping": mappings,
        "azuread_service_principal.mapping": mappings,
        "azuread_application_federated_identity_credential.mapping": mappings,
        "azurerm_role_assignment.mapping": "local.role_assignments",
    }
    for name in ("aws", "gcp", "azure"):
        module = TerraformModule.load(MODULES / name)
        assert {"mappings", "mappings_document"} <= set(module.outputs)
        assert module.outputs["mappings_document"] == (
            "yamlencode({mappings = local.mapping_entries})"
        )


def test_the_cloud_run_grant_is_written_once() -> None:
    """roles/iam.serviceAccountOpenIdTokenCreator and roles/run.invoker (docs/reference.md
    section 14) are granted by one resource each, in the GCP module, for both modes."""
    grants: dict[str, list[str]] = {ID_TOKEN_CREATOR: [], RUN_INVOKER: []}
    for directory in sorted({path.parent for path in DEPLOY.rglob("*.tf")}):
        for address, body in TerraformModule.load(directory).resources.items():
            role = unquote(body.get("role"))
            if role in grants:
                grants[role].append(f"{directory.relative_to(DEPLOY)}:{address}")
    assert grants == {
        ID_TOKEN_CREATOR: [
            "terraform/modules/gcp:google_service_account_iam_member.id_token_creator"
        ],
        RUN_INVOKER: ["terraform/modules/gcp:google_cloud_run_v2_service_iam_member.invoker"],
    }
    for gone in ("gcp", "gcp-broker", "azure"):
        assert not (DEPLOY / gone).exists(), gone


@needs_terraform
@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
def test_the_examples_render_a_file_mappings_apply_takes(cloud: str, tmp_path: Path) -> None:
    """Each example calls its module with two mappings (terraform.tfvars.example); the module's
    mappings_document, rendered for them, is one file of two mappings."""
    module, inputs = example_call(EXAMPLES / cloud, tmp_path)
    assert module.directory == MODULES / cloud
    assert len(inputs["mappings"]) == 2
    document = module.output("mappings_document", inputs, tmp_path)
    specs = parse_document(document, "mappings_document")
    assert [spec.name for spec in specs] == sorted(m["name"] for m in inputs["mappings"])
    for spec in specs:
        target = getattr(spec, cloud)
        assert target is not None
        assert target.token == "broker"


def aws_pass_through(provider_arn: str | None = None) -> dict[str, Any]:
    return {
        "issuer": ZUPLO_ISSUER,
        "token": "zuplo",
        "audience": AUDIENCE,
        "oidc_provider_arn": provider_arn,
        "mappings": [
            {
                "name": "orders-prod",
                "account": "my-account",
                "project": "orders",
                "environment_type": "production",
                "subject": "client-1",
            },
            {
                "name": "billing-prod",
                "account": "my-account",
                "project": "billing",
                "role_name": "zuplo-billing",
                "duration_seconds": 900,
                "subject": "client-2",
            },
        ],
    }


@needs_terraform
def test_aws_module_pass_through_roles_pin_one_deployment_each(
    aws_module: TerraformModule, issuer: Issuer, tmp_path: Path
) -> None:
    """Two mappings, two roles: each trusts the Zuplo token of its own deployment only (the
    roles' trust policies as Terraform renders them, evaluated by the IAM emulator)."""
    created = aws_module.instances(
        "aws_iam_openid_connect_provider.issuer",
        ["url", "client_id_list", "thumbprint_list"],
        aws_pass_through(),
        tmp_path,
    )
    assert created == [{"url": ZUPLO_ISSUER, "client_id_list": [AUDIENCE], "thumbprint_list": None}]

    trust = IamTrust()
    provider = trust.add_oidc_provider(issuer.url, [AUDIENCE])
    inputs = aws_pass_through(provider.arn)
    assert (
        aws_module.instances("aws_iam_openid_connect_provider.issuer", [], inputs, tmp_path) == []
    )
    roles = aws_module.instances(
        "aws_iam_role.mapping",
        ["name", "max_session_duration", "assume_role_policy"],
        inputs,
        tmp_path,
    )
    assert {key: (r["name"], r["max_session_duration"]) for key, r in roles.items()} == {
        "billing-prod": ("zuplo-billing", 3600),
        "orders-prod": ("zuplo-orders-prod", 3600),
    }
    pins = {"orders-prod": "client-1", "billing-prod": "client-2"}
    for name, role in roles.items():
        policy = json.loads(role["assume_role_policy"])
        (statement,) = policy["Statement"]
        assert statement["Action"] == ["sts:AssumeRoleWithWebIdentity"]
        assert statement["Condition"] == {
            "StringEquals": {f"{provider.url}:aud": AUDIENCE, f"{provider.url}:sub": pins[name]}
        }
        trust.set_trust_policy(f"arn:aws:iam::{ACCOUNT_ID}:role/{role['name']}", policy)
    for name, role in roles.items():
        arn = f"arn:aws:iam::{ACCOUNT_ID}:role/{role['name']}"
        for other, pin in pins.items():
            found = trust.check(arn, issuer.mint(sub=pin, aud=AUDIENCE, **{TAGS: None}))
            assert (found is None) == (other == name), (name, other)

    document = aws_module.output("mappings_document", inputs, tmp_path)
    assert "session_tags" not in document
    specs = parse_document(document, "mappings_document")
    assert [(s.name, s.aws and s.aws.role_arn, s.aws and s.aws.token) for s in specs] == [
        ("billing-prod", f"arn:aws:iam::{ACCOUNT_ID}:role/zuplo-billing", "zuplo"),
        ("orders-prod", f"arn:aws:iam::{ACCOUNT_ID}:role/zuplo-orders-prod", "zuplo"),
    ]
    assert [s.aws and s.aws.duration_seconds for s in specs] == [900, 3600]


@needs_terraform
def test_aws_module_refuses_a_pass_through_mapping_without_one_subject(
    aws_module: TerraformModule, tmp_path: Path
) -> None:
    inputs = aws_pass_through()
    for subject in (None, "client-*", "client 1"):
        inputs["mappings"][0]["subject"] = subject
        with pytest.raises(TerraformRefused, match="pins one exact subject"):
            aws_module.evaluate("var.mappings", inputs, tmp_path)
    broker = {"issuer": "https://sts.example.com", "mappings": aws_pass_through()["mappings"]}
    with pytest.raises(TerraformRefused, match="pins one exact subject"):
        aws_module.evaluate("var.mappings", broker, tmp_path)
    without_audience = {**aws_pass_through(), "audience": None}
    with pytest.raises(TerraformRefused, match="Set audience exactly when"):
        aws_module.evaluate("var.mappings", without_audience, tmp_path)


def gcp_inputs(token: str, **more: Any) -> dict[str, Any]:
    return {
        "project_id": "my-gcp",
        "issuer": ZUPLO_ISSUER if token == "zuplo" else "https://sts.example.com",
        "token": token,
        "audiences": [AUDIENCE] if token == "zuplo" else [],
        "mappings": [
            {"name": "analytics-gcp", "account": "my-account", "project": "analytics"},
            {
                "name": "orders-run",
                "account": "my-account",
                "project": "*",
                "cloud_run_service": "orders",
                "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
                "lifetime_seconds": 900,
            },
        ],
        **more,
    }


GCP_POOL = "projects/123456789/locations/global/workloadIdentityPools/zuplo-sts"
GCP_PROVIDER = f"//iam.googleapis.com/{GCP_POOL}/providers/zuplo-sts"


@needs_terraform
def test_gcp_module_pass_through_provider(gcp_module: TerraformModule, tmp_path: Path) -> None:
    provider = gcp_module.instances(
        "google_iam_workload_identity_pool_provider.issuer",
        ["oidc", "attribute_mapping", "attribute_condition", "workload_identity_pool_id"],
        gcp_inputs("zuplo"),
        tmp_path,
    )
    assert provider["oidc"] == [{"issuer_uri": ZUPLO_ISSUER, "allowed_audiences": [AUDIENCE]}]
    assert provider["attribute_mapping"] == {
        "google.subject": "assertion.sub",
        **{f"attribute.{c}": f"assertion.{c}" for c in ENVIRONMENT_CLAIMS},
    }
    # Tokens of another Zuplo account are refused before any binding is looked at.
    assert provider["attribute_condition"] == 'assertion.account in ["my-account"]'
    assert provider["workload_identity_pool_id"] == "zuplo-sts"
    mappings = gcp_inputs("zuplo")["mappings"]
    mappings[1]["account"] = "other-account"
    with pytest.raises(TerraformRefused, match="names the same Zuplo account"):
        gcp_module.evaluate("var.mappings", gcp_inputs("zuplo", mappings=mappings), tmp_path)
    with pytest.raises(TerraformRefused, match="Name the audiences exactly when"):
        gcp_module.evaluate("var.mappings", gcp_inputs("zuplo", audiences=[]), tmp_path)


@needs_terraform
def test_gcp_module_pass_through_binds_each_mapping_to_its_project(
    gcp_module: TerraformModule, tmp_path: Path
) -> None:
    bindings = gcp_module.instances(
        "google_service_account_iam_member.workload_identity_user",
        ["service_account_id", "role", "member"],
        gcp_inputs("zuplo"),
        tmp_path,
    )
    assert bindings == {
        "analytics-gcp": {
            "service_account_id": "projects/my-gcp/serviceAccounts/"
            "zuplo-analytics-gcp@my-gcp.iam.gserviceaccount.com",
            "role": "roles/iam.workloadIdentityUser",
            "member": f"principalSet://iam.googleapis.com/{GCP_POOL}/attribute.project/analytics",
        },
        "orders-run": {
            "service_account_id": "projects/my-gcp/serviceAccounts/"
            "zuplo-orders-run@my-gcp.iam.gserviceaccount.com",
            "role": "roles/iam.workloadIdentityUser",
            # project "*": every project of the one account the provider admits.
            "member": f"principalSet://iam.googleapis.com/{GCP_POOL}/*",
        },
    }


def assert_id_tokens_for_cloud_run(module: TerraformModule, token: str, tmp: Path) -> None:
    """docs/reference.md section 14 in Terraform, for either mode: the principal that may
    impersonate a mapping's service account may also have it sign ID tokens (generateIdToken
    needs iam.serviceAccounts.getOpenIdToken), and the service account may invoke the Cloud Run
    service the mapping names; only for mappings that name one."""
    inputs = gcp_inputs(token)
    members = module.instances(
        "google_service_account_iam_member.workload_identity_user",
        ["service_account_id", "member"],
        inputs,
        tmp,
    )
    signers = module.instances(
        "google_service_account_iam_member.id_token_creator",
        ["service_account_id", "member", "role"],
        inputs,
        tmp,
    )
    assert signers == {"orders-run": {**members["orders-run"], "role": ID_TOKEN_CREATOR}}
    services = module.instances(
        "data.google_cloud_run_v2_service.invoked", ["project", "name", "location"], inputs, tmp
    )
    assert services == {
        "orders-run": {"project": "my-gcp", "name": "orders", "location": "us-central1"}
    }
    invokers = module.instances(
        "google_cloud_run_v2_service_iam_member.invoker",
        ["project", "name", "location", "role", "member"],
        inputs,
        tmp,
    )
    assert invokers == {
        "orders-run": {
            "project": "my-gcp",
            "name": "orders",
            "location": "us-central1",
            "role": RUN_INVOKER,
            "member": "serviceAccount:zuplo-orders-run@my-gcp.iam.gserviceaccount.com",
        }
    }
    specs = parse_document(module.output("mappings_document", inputs, tmp), "mappings_document")
    audiences = {spec.name: spec.gcp and spec.gcp.id_token_audiences for spec in specs}
    assert audiences == {
        "analytics-gcp": (),
        "orders-run": ("https://orders-abc123-uc.a.run.app",),
    }


@needs_terraform
def test_gcp_module_pass_through_id_tokens_for_cloud_run(
    gcp_module: TerraformModule, tmp_path: Path
) -> None:
    assert_id_tokens_for_cloud_run(gcp_module, "zuplo", tmp_path)


@needs_terraform
def test_gcp_module_pass_through_mappings_document(
    gcp_module: TerraformModule, tmp_path: Path
) -> None:
    document = gcp_module.output("mappings_document", gcp_inputs("zuplo"), tmp_path)
    analytics, orders = parse_document(document, "mappings_document")
    for spec, email in (
        (analytics, "zuplo-analytics-gcp@my-gcp.iam.gserviceaccount.com"),
        (orders, "zuplo-orders-run@my-gcp.iam.gserviceaccount.com"),
    ):
        assert spec.gcp is not None
        assert (spec.gcp.workload_identity_provider, spec.gcp.service_account) == (
            GCP_PROVIDER,
            email,
        )
        assert spec.gcp.token == "zuplo"
    assert (analytics.project, orders.project) == ("analytics", "*")
    assert orders.gcp is not None
    assert orders.gcp.lifetime_seconds == 900
    # Left out, not null: the service's defaults apply.
    entries = {entry["name"]: entry["gcp"] for entry in yaml.safe_load(document)["mappings"]}
    assert set(entries["analytics-gcp"]) == {
        "workload_identity_provider",
        "service_account",
        "token",
    }


@needs_terraform
def test_gcp_module_refuses_a_cloud_run_service_that_is_no_name(
    gcp_module: TerraformModule, tmp_path: Path
) -> None:
    pattern = validation_regex(gcp_module.variables["mappings"], 4)
    for good in ("orders", "o", "orders-api-2", "a" * 49):
        assert pattern.search(good), good
    for bad in ("Orders", "2orders", "orders-", "orders_api", "a" * 50, "https://o.run.app"):
        assert not pattern.search(bad), bad
    inputs = gcp_inputs("broker")
    inputs["mappings"][1]["cloud_run_service"] = "https://orders.run.app"
    with pytest.raises(TerraformRefused, match="A Cloud Run service name"):
        gcp_module.evaluate("var.mappings", inputs, tmp_path)


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
