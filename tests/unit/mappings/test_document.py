"""The mapping document parser: the file format of docs/reference.md section 4, strictly."""

from __future__ import annotations

import json
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sts.mappings.document import (
    MappingFileError,
    dump_json,
    parse_document,
    spec_from_dict,
)
from sts.mappings.spec import DEFAULT_GCP_SCOPE, AwsTarget, GcpTarget, MappingSpec

ROLE = "arn:aws:iam::123456789012:role/orders-api"
WIP = (
    "//iam.googleapis.com/projects/123456789/locations/global/"
    "workloadIdentityPools/zuplo/providers/zuplo"
)

CONTRACT_EXAMPLE = f"""\
mappings:
  - name: orders-prod              # unique, [a-z0-9][a-z0-9-]{{0,62}}
    description: Orders API in production
    account: my-account            # exact
    project: my-project            # required: exact, or "*"
    deployment: "*"                # glob (fnmatch, case-sensitive), default "*"
    environment_type: production   # production | preview | development | "*", default "*"
    enabled: true                  # default true
    aws:
      role_arn: {ROLE}
      duration_seconds: 3600       # 900..43200, default 3600
      session_policy:              # optional inline policy
        Version: "2012-10-17"
        Statement: [{{Effect: Allow, Action: "s3:GetObject", Resource: "arn:aws:s3:::orders/*"}}]
  - name: analytics-gcp
    account: my-account
    project: my-project
    gcp:
      workload_identity_provider: {WIP}
      service_account: reader@my-gcp.iam.gserviceaccount.com   # optional: impersonate it
      scopes: [https://www.googleapis.com/auth/cloud-platform] # default this one
      lifetime_seconds: 3600       # 600..43200, default 3600
"""


def test_contract_example_parses_with_defaults_filled() -> None:
    orders, analytics = parse_document(CONTRACT_EXAMPLE, "mappings.yaml")
    assert orders == MappingSpec(
        name="orders-prod",
        description="Orders API in production",
        account="my-account",
        project="my-project",
        deployment="*",
        environment_type="production",
        enabled=True,
        aws=AwsTarget(
            role_arn=ROLE,
            duration_seconds=3600,
            session_policy={
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": "s3:GetObject",
                        "Resource": "arn:aws:s3:::orders/*",
                    }
                ],
            },
        ),
    )
    assert analytics == MappingSpec(
        name="analytics-gcp",
        account="my-account",
        project="my-project",
        gcp=GcpTarget(
            workload_identity_provider=WIP,
            service_account="reader@my-gcp.iam.gserviceaccount.com",
            scopes=(DEFAULT_GCP_SCOPE,),
            lifetime_seconds=3600,
        ),
    )
    # Plain types, not the line-tracking subclasses: specs must compare equal to stored ones.
    assert type(orders.aws.session_policy) is dict  # type: ignore[union-attr]


def test_minimal_entries_get_every_default() -> None:
    document = f"""\
mappings:
  - {{name: a, account: acc, project: "*", aws: {{role_arn: "{ROLE}"}}}}
  - {{name: b, account: acc, project: p, gcp: {{workload_identity_provider: "{WIP}"}}}}
"""
    aws, gcp = parse_document(document)
    assert (aws.deployment, aws.environment_type, aws.enabled, aws.description) == (
        "*",
        "*",
        True,
        "",
    )
    assert aws.aws == AwsTarget(role_arn=ROLE, duration_seconds=3600, session_policy=None)
    assert gcp.gcp == GcpTarget(
        workload_identity_provider=WIP, service_account=None, scopes=(DEFAULT_GCP_SCOPE,)
    )


def test_dump_json_is_accepted_back_unchanged() -> None:
    specs = parse_document(CONTRACT_EXAMPLE)
    text = dump_json(specs)
    assert [item["name"] for item in json.loads(text)] == ["orders-prod", "analytics-gcp"]
    assert parse_document(text) == specs
    # The file form with the same entries parses to the same specs too.
    wrapped = json.dumps({"mappings": json.loads(text)})
    assert parse_document(wrapped) == specs
    assert dump_json([]) == "[]"
    assert parse_document("[]") == []


@settings(max_examples=200, deadline=None)
@given(description=st.text(max_size=60), deployment=st.text(min_size=1, max_size=20))
def test_any_accepted_text_survives_the_json_round_trip(description: str, deployment: str) -> None:
    document = {
        "name": "x",
        "account": "a",
        "project": "p",
        "deployment": deployment,
        "description": description,
        "aws": {"role_arn": ROLE},
    }
    try:
        spec = spec_from_dict(document, "mappings[0]")
    except MappingFileError:
        return
    assert parse_document(dump_json([spec])) == [spec]


def test_yaml_1_2_scalars_no_norway_problem() -> None:
    document = f"""\
mappings:
  - name: n
    account: yes
    project: no
    deployment: 1:00
    description: 2024-01-01
    aws: {{role_arn: "{ROLE}", duration_seconds: 1_000}}
"""
    # 1_000 is a string under YAML 1.2, so the duration is the one error.
    with pytest.raises(MappingFileError, match=r"^<input>:7: mappings\[0\]\.aws\.duration_seconds"):
        parse_document(document)
    (spec,) = parse_document(document.replace("1_000", "1000"))
    assert (spec.account, spec.project, spec.deployment) == ("yes", "no", "1:00")
    assert spec.description == "2024-01-01"


def _entry(**fields: str) -> str:
    """One YAML entry: name (line 2), account (3), project (4), other fields, then aws/gcp.

    Each value is a YAML fragment (may span lines); ``<absent>`` leaves the key out.
    """
    name = fields.pop("name", "orders")
    aws = fields.pop("aws", f"\n      role_arn: {ROLE}")
    gcp = fields.pop("gcp", "<absent>")
    ordered = {"account": "acc", "project": "proj", **fields, "aws": aws, "gcp": gcp}
    lines = ["mappings:", f"  - name: {name}"]
    lines += [f"    {key}: {value}" for key, value in ordered.items() if value != "<absent>"]
    return "\n".join(lines) + "\n"


GCP_BLOCK = f"\n      workload_identity_provider: {WIP}"


def _aws(extra: str) -> str:
    """An entry whose aws block is role_arn (line 6) plus ``extra`` lines from line 7."""
    return _entry(aws=f"\n      role_arn: {ROLE}{extra}")


def _policy(policy: str) -> str:
    """An entry whose session_policy (line 7) is ``policy``."""
    return _aws(f"\n      session_policy: {policy}")


def _gcp(extra: str) -> str:
    """An entry whose gcp block is the provider (line 6) plus ``extra`` lines from line 7."""
    return _entry(aws="<absent>", gcp=GCP_BLOCK + extra)


def _wip(wip: str) -> str:
    return _entry(aws="<absent>", gcp=f"\n      workload_identity_provider: {wip}")


ARN = "mappings[0].aws.role_arn"
DURATION = "mappings[0].aws.duration_seconds"
POLICY = "mappings[0].aws.session_policy"
PROVIDER = "mappings[0].gcp.workload_identity_provider"
SCOPES = "mappings[0].gcp.scopes"
LIFETIME = "mappings[0].gcp.lifetime_seconds"
LONG = "x" * 2100

# (document, line, path, problem fragment)
ERRORS = [
    # structure
    ("", None, None, "empty document"),
    ("mappings: 3\n", 1, "mappings", "must be a list"),
    ("mappings: []\nmapings: []\n", 2, ".mapings", "unknown key"),
    ("- 1\n", 1, "mappings[0]", "must be a mapping"),
    ("mappings: []\n---\nmappings: []\n", 2, None, "invalid YAML"),
    ("mappings: [\n", 2, None, "invalid YAML"),
    ("mappings:\n  - &a {name: x}\n  - *a\n", 3, None, "aliases are not allowed"),
    ("mappings:\n  - <<: {name: x}\n", 2, None, "merge keys"),
    ("mappings:\n  - name: x\n    name: y\n", 3, None, "duplicate key 'name' (first at line 2)"),
    ("mappings: !!set {a}\n", 1, None, "unsupported YAML tag"),
    ("mappings:\n  - name: !!binary aGk=\n", 2, None, "unsupported YAML tag"),
    ("mappings:\n  - {1: x}\n", 2, None, "keys must be strings"),
    # mapping fields
    (_entry(colour="red"), 5, "mappings[0].colour", "unknown key"),
    (_entry(name="Orders"), 2, "mappings[0].name", "must match"),
    (_entry(name="-orders"), 2, "mappings[0].name", "must match"),
    (_entry(name="a" * 64), 2, "mappings[0].name", "at most 63"),
    (_entry(name="null"), 2, "mappings[0].name", "required"),
    (_entry(account="<absent>"), 2, "mappings[0].account", "required"),
    (_entry(account='""'), 3, "mappings[0].account", "must not be empty"),
    (_entry(account='"acc*"'), 3, "mappings[0].account", "exact (no glob)"),
    (_entry(account="[a]"), 3, "mappings[0].account", "must be a string"),
    (_entry(account="x" * 256), 3, "mappings[0].account", "at most 255"),
    (_entry(project="<absent>"), 2, "mappings[0].project", "required"),
    (_entry(project='"proj-*"'), 4, "mappings[0].project", 'exact or "*"'),
    (_entry(deployment='""'), 5, "mappings[0].deployment", "must not be empty"),
    (_entry(environment_type="prod"), 5, "mappings[0].environment_type", "must be production"),
    (_entry(enabled='"true"'), 5, "mappings[0].enabled", "true or false"),
    (_entry(enabled="yes"), 5, "mappings[0].enabled", "true or false"),
    (_entry(enabled="1"), 5, "mappings[0].enabled", "true or false"),
    (_entry(description='"a\\x07b"'), 5, "mappings[0].description", "U+0007"),
    (_entry(description='"a\\u2028b"'), 5, "mappings[0].description", "U+2028"),
    (_entry(aws="<absent>"), 2, "mappings[0]", "exactly one of aws, gcp"),
    (_entry(gcp=GCP_BLOCK), 2, "mappings[0]", "exactly one of aws, gcp"),
    (_entry(aws="[]"), 5, "mappings[0].aws", "must be a mapping"),
    # aws
    (_aws("\n      role: x"), 7, "mappings[0].aws.role", "unknown key"),
    (_entry(aws="\n      duration_seconds: 900"), 6, ARN, "required"),
    (_entry(aws="{role_arn: arn:aws:iam::12345678901:role/x}"), 5, ARN, "IAM role ARN"),
    (_entry(aws="{role_arn: arn:aws:iam::123456789012:user/x}"), 5, ARN, "IAM role ARN"),
    (_entry(aws="{role_arn: arn:aws:iam::123456789012:role/}"), 5, ARN, "IAM role ARN"),
    (_entry(aws="{role_arn: arn:aws:s3:::bucket}"), 5, ARN, "IAM role ARN"),
    (_entry(aws=f'{{role_arn: "{ROLE}\\n"}}'), 5, ARN, "U+000A"),
    (_entry(aws=f'{{role_arn: "{ROLE} "}}'), 5, ARN, "IAM role ARN"),
    (_aws("\n      duration_seconds: 899"), 7, DURATION, "must be 900..43200"),
    (_aws("\n      duration_seconds: 43201"), 7, DURATION, "must be 900..43200"),
    (_aws("\n      duration_seconds: true"), 7, DURATION, "whole number"),
    (_aws("\n      duration_seconds: 3600.0"), 7, DURATION, "whole number"),
    (_aws('\n      duration_seconds: "3600"'), 7, DURATION, "whole number"),
    (_policy("allow"), 7, POLICY, "must be a mapping"),
    (_policy("{Statement: [{}]}"), 7, f"{POLICY}.Version", '"2012-10-17"'),
    (_policy("{Version: 2012-10-17, Statement: []}"), 7, f"{POLICY}.Statement", "non-empty"),
    (_policy("{Version: 2012-10-17, Statement: [1]}"), 7, f"{POLICY}.Statement[0]", "a mapping"),
    (_policy("{Version: 2012-10-17, Statement: {}, Extra: 1}"), 7, f"{POLICY}.Extra", "unknown"),
    (_policy(f'{{Version: 2012-10-17, Statement: {{R: "{LONG}"}}}}'), 7, POLICY, "at most 2048"),
    # gcp
    (_entry(aws="<absent>", gcp="\n      lifetime_seconds: 600"), 6, PROVIDER, "required"),
    (_wip(WIP.replace("global", "us-east1")), 6, PROVIDER, "//iam.googleapis.com/projects/<n"),
    (_wip(WIP.replace("/zuplo/", "/zup/")), 6, PROVIDER, "//iam.googleapis.com/projects/<n"),
    (_wip(WIP.replace("projects/123456789", "projects/p")), 6, PROVIDER, "//iam.googleapis"),
    (_wip("https://iam.googleapis.com/x"), 6, PROVIDER, "//iam.googleapis.com/projects/<n"),
    (
        _gcp("\n      service_account: reader@gmail.com"),
        7,
        "mappings[0].gcp.service_account",
        "email",
    ),
    (_gcp("\n      scopes: []"), 7, SCOPES, "non-empty list"),
    (_gcp("\n      scopes: https://www.googleapis.com/auth/x"), 7, SCOPES, "non-empty list"),
    (
        _gcp("\n      scopes:\n        - https://a.test/x\n        - http://a.test/y"),
        9,
        f"{SCOPES}[1]",
        "https://",
    ),
    (_gcp("\n      scopes: [https://a.test/x, https://a.test/x]"), 7, f"{SCOPES}[1]", "duplicate"),
    (_gcp("\n      lifetime_seconds: 599"), 7, LIFETIME, "must be 600..43200"),
    (_gcp("\n      lifetime_seconds: 43201"), 7, LIFETIME, "must be 600..43200"),
    (_gcp("\n      lifetime: 3600"), 7, "mappings[0].gcp.lifetime", "unknown key"),
]


@pytest.mark.parametrize(("document", "line", "path", "problem"), ERRORS)
def test_invalid_documents_name_the_line_and_path(
    document: str, line: int | None, path: str | None, problem: str
) -> None:
    with pytest.raises(MappingFileError) as caught:
        parse_document(document, "mappings.yaml")
    error = caught.value
    assert (error.line, error.path) == (line, path), str(error)
    assert problem in error.problem
    message = str(error)
    assert "\n" not in message
    prefix = f"mappings.yaml:{line}: " if line is not None else "mappings.yaml: "
    assert message.startswith(prefix + (f"{path}: " if path else ""))


def test_the_entry_template_is_valid() -> None:
    """Guards the table above: every error comes from the one field changed."""
    assert parse_document(_entry())[0].name == "orders"
    assert parse_document(_entry(aws="<absent>", gcp=GCP_BLOCK))[0].provider == "gcp"


def test_error_message_example_from_the_brief() -> None:
    document = _entry(aws=f"\n      role_arn: {ROLE}\n      duration_seconds: 60")
    with pytest.raises(MappingFileError) as caught:
        parse_document(document, "mappings.yaml")
    assert str(caught.value) == (
        "mappings.yaml:7: mappings[0].aws.duration_seconds: must be 900..43200"
    )


@pytest.mark.parametrize(
    "role_arn",
    [
        "arn:aws:iam::123456789012:role/orders-api",
        "arn:aws:iam::123456789012:role/service-role/path/orders_api+=,.@-",
        "arn:aws-cn:iam::123456789012:role/x",
        "arn:aws-us-gov:iam::123456789012:role/x",
    ],
)
def test_valid_role_arns(role_arn: str) -> None:
    (spec,) = parse_document(_entry(aws=f"{{role_arn: '{role_arn}'}}"))
    assert spec.targets == (role_arn,)


@pytest.mark.parametrize(
    "account",
    [
        "reader@my-gcp.iam.gserviceaccount.com",
        "my-gcp@appspot.gserviceaccount.com",
        "123456789-compute@developer.gserviceaccount.com",
    ],
)
def test_valid_service_accounts(account: str) -> None:
    (spec,) = parse_document(
        _entry(aws="<absent>", gcp=GCP_BLOCK + f"\n      service_account: {account}")
    )
    assert spec.targets == (account,)


def test_duplicate_names_point_at_both_lines() -> None:
    document = textwrap.dedent(
        f"""\
        mappings:
          - {{name: same, account: a, project: p, aws: {{role_arn: "{ROLE}"}}}}
          - {{name: other, account: a, project: p, aws: {{role_arn: "{ROLE}"}}}}
          - {{name: same, account: b, project: p, aws: {{role_arn: "{ROLE}"}}}}
        """
    )
    with pytest.raises(MappingFileError) as caught:
        parse_document(document, "m.yaml")
    assert (
        str(caught.value) == "m.yaml:4: mappings[2].name: duplicate name 'same' (first at line 2)"
    )


def test_spec_from_dict_without_lines_names_the_path() -> None:
    with pytest.raises(MappingFileError) as caught:
        spec_from_dict(
            {"name": "x", "account": "a", "project": "p", "aws": {"role_arn": "nope"}},
            "role_mappings[x]",
        )
    assert str(caught.value).startswith("role_mappings[x].aws.role_arn: must be an IAM role ARN")
    with pytest.raises(MappingFileError, match=r"^where: must be a mapping$"):
        spec_from_dict(["not", "a", "mapping"], "where")


def test_json_input_is_yaml() -> None:
    document = json.dumps(
        {
            "mappings": [
                {
                    "name": "j",
                    "account": "a",
                    "project": "p",
                    "description": "caf\u00e9 \U0001f600",
                    "aws": {"role_arn": ROLE, "duration_seconds": 900},
                }
            ]
        }
    )
    assert "\\ud83d\\ude00" in document
    (spec,) = parse_document(document)
    assert spec.description == "caf\u00e9 \U0001f600"
    with pytest.raises(MappingFileError, match=r"U\+D83D"):
        parse_document(document.replace("\\ude00", ""))
    assert spec.aws is not None
    assert spec.aws.duration_seconds == 900
