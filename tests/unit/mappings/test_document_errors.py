"""Every mistake in a mapping document in one run (docs/reference.md section 6, exit codes):
one ``file:line: path: problem`` line each, in file order, at most 50 and then a count.

A mistake hides no other: several in one entry, in its cloud block beside its top-level
fields, a duplicate name beside field errors. Only a check that needs a field which is itself
wrong is skipped.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from sts.mappings import document
from sts.mappings.document import (
    MAX_REPORTED_ERRORS,
    MappingFileError,
    MappingFileErrors,
    parse_document,
    spec_from_dict,
)

ROLE = "arn:aws:iam::123456789012:role/orders-api"
WIP = (
    "//iam.googleapis.com/projects/123456789/locations/global/"
    "workloadIdentityPools/zuplo/providers/zuplo"
)
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
MAPPING_KEYS = (
    "name, description, account, project, deployment, environment_type, enabled, aws, gcp, azure"
)
GCP_KEYS = (
    "workload_identity_provider, service_account, scopes, lifetime_seconds, token, "
    "id_token_audiences"
)
ENVIRONMENT = 'must be production, preview, development or "*"'

# The second entry: a duplicate name and eight independent mistakes, in the entry's fields and
# in its gcp block, and one field after the block (the report is in file order, not check order).
SEVERAL = f"""\
mappings:
  - name: orders-prod
    account: acc
    project: proj
    aws: {{role_arn: "{ROLE}"}}
  - name: orders-prod
    account: acc
    project: proj
    environment_type: staging
    colour: red
    description: "a\\x07b"
    gcp:
      workload_identity_provider: {WIP}
      lifetime_seconds: 100
      token: brokr
      scopes: [http://a.test/x]
      lifetime: 3600
    enabled: "yes"
"""

SEVERAL_REPORT = [
    "m.yaml:6: mappings[1].name: duplicate name 'orders-prod' (first at line 2)",
    f"m.yaml:9: mappings[1].environment_type: {ENVIRONMENT}",
    f"m.yaml:10: mappings[1].colour: unknown key (expected one of: {MAPPING_KEYS})",
    "m.yaml:11: mappings[1].description: must not contain the character U+0007",
    "m.yaml:14: mappings[1].gcp.lifetime_seconds: must be 600..43200",
    "m.yaml:15: mappings[1].gcp.token: must be broker or zuplo",
    "m.yaml:16: mappings[1].gcp.scopes[0]: must be an https:// scope URL",
    f"m.yaml:17: mappings[1].gcp.lifetime: unknown key (expected one of: {GCP_KEYS})",
    "m.yaml:18: mappings[1].enabled: must be true or false",
]


def report(text: str, source: str = "m.yaml") -> list[str]:
    """The lines ``sts mappings apply`` would print for ``text`` (no ``error:`` prefix)."""
    with pytest.raises(MappingFileError) as caught:
        parse_document(text, source)
    return [str(error) for error in caught.value.all]


def test_every_mistake_of_one_entry_is_reported_with_its_line() -> None:
    assert report(SEVERAL) == SEVERAL_REPORT


def test_the_python_loader_reports_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """The libyaml path checks entries as it reads them; the Python path from the whole tree."""
    monkeypatch.setattr(document, "_LIBYAML", False)
    assert report(SEVERAL) == SEVERAL_REPORT


def test_every_mistake_of_an_aws_block() -> None:
    text = """\
mappings:
  - name: Orders
    account: acc
    project: proj
    aws:
      role_arn: arn:aws:iam::123:role/x
      duration_seconds: 60
      token: brokr
      session_tags: "yes"
      session_policy:
        Version: 2012-10-17
        Statement: []
        Extra: 1
      sessiontags: true
"""
    assert report(text) == [
        "m.yaml:2: mappings[0].name: must match [a-z0-9][a-z0-9-]{0,62}",
        "m.yaml:6: mappings[0].aws.role_arn: must be an IAM role ARN "
        "(arn:aws:iam::<account>:role/…)",
        "m.yaml:7: mappings[0].aws.duration_seconds: must be 900..43200",
        "m.yaml:8: mappings[0].aws.token: must be broker or zuplo",
        "m.yaml:9: mappings[0].aws.session_tags: must be true or false",
        "m.yaml:12: mappings[0].aws.session_policy.Statement: "
        "must be a statement or a non-empty list of statements",
        "m.yaml:13: mappings[0].aws.session_policy.Extra: "
        "unknown key (expected one of: Version, Id, Statement)",
        "m.yaml:14: mappings[0].aws.sessiontags: unknown key (expected one of: "
        "role_arn, duration_seconds, session_policy, token, session_tags)",
    ]


def test_every_mistake_of_a_session_policy() -> None:
    text = f"""\
mappings:
  - name: orders
    account: acc
    project: proj
    aws:
      role_arn: {ROLE}
      session_policy:
        Version: "2012"
        Statement:
          - 1
          - {{Effect: Allow, Action: "a\\u202eb"}}
          - 2
"""
    assert report(text) == [
        'm.yaml:8: mappings[0].aws.session_policy.Version: must be "2012-10-17" (quoted)',
        "m.yaml:10: mappings[0].aws.session_policy.Statement[0]: must be a mapping",
        "m.yaml:11: mappings[0].aws.session_policy.Statement[1].Action: "
        "must not contain the character U+202E",
        "m.yaml:12: mappings[0].aws.session_policy.Statement[2]: must be a mapping",
    ]


def test_every_mistake_of_an_azure_block() -> None:
    text = f"""\
mappings:
  - name: billing
    account: "acc*"
    project: proj
    azure:
      tenant_id: {TENANT}x
      client_id: nope
      scopes: [https://management.azure.com/, api://b/.default]
      token: Broker
"""
    guid = "must be a GUID (8-4-4-4-12 hexadecimal digits, as the Azure portal shows it)"
    assert report(text) == [
        "m.yaml:3: mappings[0].account: must be exact (no glob)",
        f"m.yaml:6: mappings[0].azure.tenant_id: {guid}",
        f"m.yaml:7: mappings[0].azure.client_id: {guid}",
        "m.yaml:8: mappings[0].azure.scopes[0]: must be a resource followed by /.default "
        "(https://management.azure.com/.default)",
        "m.yaml:8: mappings[0].azure.scopes[1]: one scope only: Entra issues a client "
        "credentials token for one resource",
        "m.yaml:9: mappings[0].azure.token: must be broker or zuplo",
    ]


def test_every_mistake_of_a_gcp_block_and_its_lists() -> None:
    text = """\
mappings:
  - name: analytics
    account: acc
    project: proj
    gcp:
      workload_identity_provider: //iam.googleapis.com/projects/x
      service_account: reader@gmail.com
      scopes:
        - https://a.test/x
        - 7
        - https://a.test/x
        - http://a.test/y
      lifetime_seconds: true
      id_token_audiences: [https://a.test, http://b.test, https://a.test]
"""
    assert report(text) == [
        "m.yaml:6: mappings[0].gcp.workload_identity_provider: must be "
        "//iam.googleapis.com/projects/<number>/locations/global/"
        "workloadIdentityPools/<pool>/providers/<provider>",
        "m.yaml:7: mappings[0].gcp.service_account: must be a service account email "
        "(name@project.iam.gserviceaccount.com)",
        "m.yaml:10: mappings[0].gcp.scopes[1]: must be a string",
        "m.yaml:11: mappings[0].gcp.scopes[2]: duplicate scope",
        "m.yaml:12: mappings[0].gcp.scopes[3]: must be an https:// scope URL",
        "m.yaml:13: mappings[0].gcp.lifetime_seconds: must be a whole number of seconds, "
        "600..43200",
        # The audiences need a service account: one is given (a wrong one, reported above),
        # so that check does not add a second line for the same mistake.
        "m.yaml:14: mappings[0].gcp.id_token_audiences[1]: must be an https:// URL with a "
        "host, without userinfo or fragment",
        "m.yaml:14: mappings[0].gcp.id_token_audiences[2]: duplicate audience",
    ]


def test_a_missing_service_account_is_still_reported_beside_other_mistakes() -> None:
    text = f"""\
mappings:
  - name: analytics
    account: acc
    project: proj
    gcp:
      workload_identity_provider: {WIP}
      lifetime_seconds: 1
      id_token_audiences: [https://a.test]
"""
    assert report(text) == [
        "m.yaml:7: mappings[0].gcp.lifetime_seconds: must be 600..43200",
        "m.yaml:8: mappings[0].gcp.id_token_audiences: requires service_account "
        "(ID tokens are issued for a service account)",
    ]


def test_every_unknown_key_is_reported() -> None:
    text = f"""\
mappings:
  - name: orders
    acount: acc
    account: acc
    projet: proj
    project: proj
    aws: {{role_arn: "{ROLE}", duration: 900, tokens: broker}}
"""
    aws_keys = "role_arn, duration_seconds, session_policy, token, session_tags"
    assert report(text) == [
        f"m.yaml:3: mappings[0].acount: unknown key (expected one of: {MAPPING_KEYS})",
        f"m.yaml:5: mappings[0].projet: unknown key (expected one of: {MAPPING_KEYS})",
        f"m.yaml:7: mappings[0].aws.duration: unknown key (expected one of: {aws_keys})",
        f"m.yaml:7: mappings[0].aws.tokens: unknown key (expected one of: {aws_keys})",
    ]


def test_a_name_is_a_duplicate_whatever_else_is_wrong_in_either_entry() -> None:
    """The first entry's own mistakes do not hide its name: a later entry with the same name is
    a duplicate of it. A name that is itself wrong is reported once, as wrong."""
    text = f"""\
mappings:
  - name: orders
    account: acc
    project: proj
    aws: {{role_arn: nope}}
  - name: orders
    account: "a*"
    project: proj
    aws: {{role_arn: "{ROLE}"}}
  - name: Orders
    account: acc
    project: proj
    aws: {{role_arn: "{ROLE}"}}
  - name: Orders
    account: acc
    project: proj
    aws: {{role_arn: "{ROLE}"}}
"""
    pattern = "must match [a-z0-9][a-z0-9-]{0,62}"
    assert report(text) == [
        "m.yaml:5: mappings[0].aws.role_arn: must be an IAM role ARN "
        "(arn:aws:iam::<account>:role/…)",
        "m.yaml:6: mappings[1].name: duplicate name 'orders' (first at line 2)",
        "m.yaml:7: mappings[1].account: must be exact (no glob)",
        f"m.yaml:10: mappings[2].name: {pattern}",
        f"m.yaml:14: mappings[3].name: {pattern}",
    ]


def test_sixty_mistakes_give_fifty_lines_and_a_count() -> None:
    keys = "".join(f"    extra{n}: 1\n" for n in range(60))
    text = f"mappings:\n  - name: orders\n    account: a\n    project: p\n{keys}"
    text += f'    aws: {{role_arn: "{ROLE}"}}\n'
    with pytest.raises(MappingFileErrors) as caught:
        parse_document(text, "m.yaml")
    lines = [str(error) for error in caught.value.all]
    assert len(lines) == MAX_REPORTED_ERRORS == 50
    assert caught.value.omitted == 10
    assert lines[0].startswith("m.yaml:5: mappings[0].extra0: unknown key")
    assert lines[-1].startswith("m.yaml:54: mappings[0].extra49: unknown key")


def test_sixty_mistakes_over_many_entries_are_cut_at_fifty_too() -> None:
    entry = f'  - {{name: orders, account: a, project: p, aws: {{role_arn: "{ROLE}"}}}}\n'
    with pytest.raises(MappingFileErrors) as caught:
        parse_document("mappings:\n" + entry * 61, "m.yaml")
    assert len(caught.value.all) == 50
    assert caught.value.omitted == 10
    assert str(caught.value.all[-1]) == (
        "m.yaml:52: mappings[50].name: duplicate name 'orders' (first at line 2)"
    )


def as_json(text: str) -> str:
    """``text`` (a YAML mapping document) as indented JSON, one key a line."""
    tree: Any = document._load_python(text, "m.yaml")
    return json.dumps(tree, indent=2, ensure_ascii=False)


def test_json_documents_report_every_mistake_with_its_line() -> None:
    text = as_json(SEVERAL)
    lines = text.splitlines()

    def line_of(fragment: str, after: int = 0) -> int:
        return next(n for n, line in enumerate(lines, 1) if n > after and fragment in line)

    second = line_of('"name": "orders-prod"', after=line_of('"name": "orders-prod"'))
    expected = [
        (second, "mappings[1].name: duplicate name 'orders-prod' (first at line 4)"),
        (line_of('"environment_type"'), f"mappings[1].environment_type: {ENVIRONMENT}"),
        (line_of('"colour"'), "mappings[1].colour: unknown key"),
        (line_of('"description"'), "mappings[1].description: must not contain the character"),
        (line_of('"lifetime_seconds"'), "mappings[1].gcp.lifetime_seconds: must be 600..43200"),
        (line_of('"token"'), "mappings[1].gcp.token: must be broker or zuplo"),
        (line_of('"http://a.test/x"'), "mappings[1].gcp.scopes[0]: must be an https://"),
        (line_of('"lifetime"'), "mappings[1].gcp.lifetime: unknown key"),
        (line_of('"enabled"'), "mappings[1].enabled: must be true or false"),
    ]
    got = report(text, "m.json")
    assert len(got) == len(expected), got
    for message, (line, start) in zip(got, expected, strict=True):
        assert message.startswith(f"m.json:{line}: {start}"), (message, line, start)


def test_a_one_line_json_document_reports_every_mistake_on_line_one() -> None:
    text = json.dumps(json.loads(as_json(SEVERAL)))
    assert "\n" not in text
    got = report(text, "m.json")
    assert [line.split(": ", 1)[1] for line in got] == [
        line.split(": ", 1)[1].replace("(first at line 2)", "(first at line 1)")
        for line in SEVERAL_REPORT
    ]
    assert all(line.startswith("m.json:1: ") for line in got)


def test_spec_from_dict_reports_every_mistake_without_lines() -> None:
    """Rows read back from the database go through the same checks, in check order."""
    row = {
        "name": "x",
        "account": "a",
        "project": "p",
        "environment_type": "staging",
        "gcp": {"workload_identity_provider": WIP, "lifetime_seconds": 100, "token": "brokr"},
    }
    with pytest.raises(MappingFileErrors) as caught:
        spec_from_dict(row, "role_mappings[x]")
    assert [str(error) for error in caught.value.all] == [
        f"role_mappings[x].environment_type: {ENVIRONMENT}",
        "role_mappings[x].gcp.lifetime_seconds: must be 600..43200",
        "role_mappings[x].gcp.token: must be broker or zuplo",
    ]


def test_a_document_level_failure_stays_one_line() -> None:
    """What stops the reading (YAML that is not YAML, nesting too deep) is one line."""
    (line,) = report("mappings: [\n")
    assert line.startswith("m.yaml:2: invalid YAML: ")
    assert len(report("mappings: " + "[" * 101 + "]" * 101 + "\n")) == 1


def test_a_missing_field_is_reported_on_the_mappings_first_line_before_its_keys() -> None:
    """A missing field belongs to the mapping, whose first line is its first key's."""
    assert report("mapings: []\n") == [
        "m.yaml:1: mappings: required",
        "m.yaml:1: .mapings: unknown key (expected one of: mappings)",
    ]
    text = "mappings:\n  - name: orders\n    account: acc\n    project: proj\n    aws:\n"
    aws_keys = "role_arn, duration_seconds, session_policy, token, session_tags"
    assert report(text + "      role: x\n") == [
        "m.yaml:6: mappings[0].aws.role_arn: required",
        f"m.yaml:6: mappings[0].aws.role: unknown key (expected one of: {aws_keys})",
    ]


def test_the_document_keys_are_merged_in_file_order_with_the_entries() -> None:
    """The fast loader checks the entries while reading them, before the document's own keys:
    those are put back in their place."""
    entry = "  - {name: Bad, account: a, project: p, aws: {role_arn: nope}}\n"
    text = "colour: red\nmappings:\n" + entry + "size: 3\n"
    arn = "must be an IAM role ARN (arn:aws:iam::<account>:role/…)"
    assert report(text) == [
        "m.yaml:1: .colour: unknown key (expected one of: mappings)",
        "m.yaml:3: mappings[0].name: must match [a-z0-9][a-z0-9-]{0,62}",
        f"m.yaml:3: mappings[0].aws.role_arn: {arn}",
        "m.yaml:4: .size: unknown key (expected one of: mappings)",
    ]


def test_an_entry_that_is_not_a_mapping_is_reported_on_its_line() -> None:
    assert report("mappings:\n  - 1\n  - [x]\n") == [
        "m.yaml:2: mappings[0]: must be a mapping",
        "m.yaml:3: mappings[1]: must be a mapping",
    ]


@pytest.mark.parametrize(
    "text",
    [
        SEVERAL,
        "mapings: []\n",
        "colour: red\nmappings:\n  - {name: Bad, account: a, project: p}\nsize: 3\n",
        "mappings:\n  - 1\n  - [x]\n",
    ],
)
def test_both_loaders_report_the_same(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fast = report(text)
    monkeypatch.setattr(document, "_LIBYAML", False)
    assert report(text) == fast
