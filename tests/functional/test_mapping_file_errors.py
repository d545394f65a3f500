"""``sts mappings apply`` on a file with several mistakes (docs/reference.md section 6, exit
codes): exit 2, one ``error: file:line: ...`` line on standard error for each mistake, all in
the same run, at most 50 and then a count; nothing written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from sts.cli import cli
from sts.db import Database
from sts.mappings import store

ROLE = "arn:aws:iam::123456789012:role/orders-api"
WIP = (
    "//iam.googleapis.com/projects/123456789/locations/global/"
    "workloadIdentityPools/zuplo/providers/zuplo"
)

# orders-prod twice; the second holds seven more mistakes, in its own fields and its gcp block.
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
    gcp:
      workload_identity_provider: {WIP}
      lifetime_seconds: 100
      token: brokr
      id_token_audiences: [http://a.test]
    enabled: "yes"
"""

SEVERAL_REPORT = [
    "6: mappings[1].name: duplicate name 'orders-prod' (first at line 2)",
    '9: mappings[1].environment_type: must be production, preview, development or "*"',
    "10: mappings[1].colour: unknown key (expected one of: name, description, account, "
    "project, deployment, environment_type, enabled, aws, gcp, azure)",
    "13: mappings[1].gcp.lifetime_seconds: must be 600..43200",
    "14: mappings[1].gcp.token: must be broker or zuplo",
    "15: mappings[1].gcp.id_token_audiences: requires service_account "
    "(ID tokens are issued for a service account)",
    "15: mappings[1].gcp.id_token_audiences[0]: must be an https:// URL with a host, "
    "without userinfo or fragment",
    "16: mappings[1].enabled: must be true or false",
]


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'sts.db'}"


@pytest.fixture
def sts(database_url: str) -> Any:
    """``sts ARGS`` on a migrated SQLite database of this test's own."""

    def invoke(*args: str) -> Result:
        env = {"STS_DATABASE_URL": database_url, "USER": "alice"}
        return CliRunner().invoke(cli, list(args), env=env)

    upgraded = invoke("db", "upgrade")
    assert upgraded.exit_code == 0, upgraded.output
    return invoke


def assert_nothing_written(database_url: str) -> None:
    database = Database(database_url)
    try:
        assert store.load(database) == (0, [])
    finally:
        database.dispose()


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("dry_run", [False, True], ids=["apply", "dry-run"])
def test_every_mistake_is_one_line_in_one_run(
    sts: Any, database_url: str, tmp_path: Path, dry_run: bool
) -> None:
    path = write(tmp_path, "mappings.yaml", SEVERAL)
    result = sts("mappings", "apply", path, *(["--dry-run"] if dry_run else []))
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"error: {path}:{line}" for line in SEVERAL_REPORT]
    assert_nothing_written(database_url)


def test_the_file_fixed_applies(sts: Any, database_url: str, tmp_path: Path) -> None:
    """Guards the test above: with its mistakes mended the file is taken."""
    fixed = (
        SEVERAL.replace("  - name: orders-prod\n    account: acc\n    project: proj\n    env",
                        "  - name: orders-gcp\n    account: acc\n    project: proj\n    env")
        .replace("staging", "production")
        .replace("    colour: red\n", "")
        .replace("lifetime_seconds: 100", "lifetime_seconds: 600")
        .replace("brokr", "broker")
        .replace("[http://a.test]", "[https://a.test]")
        .replace(f"{WIP}\n", f"{WIP}\n      service_account: r@p.iam.gserviceaccount.com\n")
        .replace('"yes"', "true")
    )  # fmt: skip
    result = sts("mappings", "apply", write(tmp_path, "mappings.yaml", fixed))
    assert result.exit_code == 0, result.output
    assert "error:" not in result.stderr
    database = Database(database_url)
    try:
        names = sorted(spec.name for spec in store.load(database)[1])
    finally:
        database.dispose()
    assert names == ["orders-gcp", "orders-prod"]


def test_sixty_mistakes_give_fifty_lines_and_a_count(
    sts: Any, database_url: str, tmp_path: Path
) -> None:
    # Three mistakes an entry, in its fields and its aws block: 20 entries, 60 mistakes.
    entries = "".join(
        f"  - name: orders-{n}\n"
        "    account: acc\n"
        "    project: proj\n"
        "    environment_type: staging\n"
        "    aws:\n"
        f"      role_arn: {ROLE}\n"
        "      duration_seconds: 100\n"
        "      token: brokr\n"
        for n in range(20)
    )
    path = write(tmp_path, "mappings.yaml", "mappings:\n" + entries)
    result = sts("mappings", "apply", path)
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 51
    assert lines[:3] == [
        f"error: {path}:5: mappings[0].environment_type: must be production, preview, "
        'development or "*"',
        f"error: {path}:8: mappings[0].aws.duration_seconds: must be 900..43200",
        f"error: {path}:9: mappings[0].aws.token: must be broker or zuplo",
    ]
    # The 50th is the second mistake of the 17th entry (entry n starts on line 2 + 8n).
    assert lines[49] == f"error: {path}:136: mappings[16].aws.duration_seconds: must be 900..43200"
    assert lines[50] == f"error: {path}: 10 more mistakes not shown"
    assert_nothing_written(database_url)


def test_a_json_file_reports_every_mistake_with_its_line(
    sts: Any, database_url: str, tmp_path: Path
) -> None:
    entries = [
        {"name": "orders-prod", "account": "acc", "project": "proj", "aws": {"role_arn": ROLE}},
        {
            "name": "orders-prod",
            "account": "acc",
            "project": "proj",
            "environment_type": "staging",
            "gcp": {"workload_identity_provider": WIP, "lifetime_seconds": 100, "token": "brokr"},
        },
    ]
    text = json.dumps(entries, indent=2)
    lines = text.splitlines()

    def line_of(fragment: str, after: int = 0) -> int:
        return next(n for n, line in enumerate(lines, 1) if n > after and fragment in line)

    first = line_of('"orders-prod"')
    path = write(tmp_path, "mappings.json", text)
    result = sts("mappings", "apply", path)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"error: {path}:{line_of('orders-prod', first)}: mappings[1].name: duplicate name "
        f"'orders-prod' (first at line {first})",
        f"error: {path}:{line_of('staging')}: mappings[1].environment_type: must be "
        'production, preview, development or "*"',
        f"error: {path}:{line_of('lifetime_seconds')}: mappings[1].gcp.lifetime_seconds: "
        "must be 600..43200",
        f"error: {path}:{line_of('brokr')}: mappings[1].gcp.token: must be broker or zuplo",
    ]
    assert_nothing_written(database_url)


def test_a_document_level_failure_is_still_one_line(
    sts: Any, database_url: str, tmp_path: Path
) -> None:
    path = write(tmp_path, "mappings.yaml", SEVERAL + "  - [\n")
    result = sts("mappings", "apply", path)
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {path}:")
    assert "invalid YAML" in line
    assert_nothing_written(database_url)
