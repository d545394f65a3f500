"""``sts mappings plan``, ``who-can`` and ``history`` (docs/reference.md section 12) on real
SQLite and PostgreSQL databases, and ``plan`` against what the real service then does: the
audit trail replayed, compared with ``sts explain --claims`` and ``POST /token``."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sts.cli import cli
from sts.db import Database
from sts.db.models import IssuanceEvent, MappingChange
from sts.dev.aws_emulator import AwsEmulator
from sts.dev.gcp_emulator import GcpEmulator
from sts.dev.issuer import DevIssuer
from sts.mappings import store
from sts.mappings.document import parse_document
from tests.functional.conftest import Stack, running_stack, seed

ARN = "arn:aws:iam::123456789012:role/"
ROLE_PROD, ROLE_PREVIEW, ROLE_REPORTS = ARN + "orders-prod", ARN + "orders-preview", ARN + "reports"
ROLE_ANALYTICS, ROLE_CANARY = ARN + "analytics", ARN + "canary"
WIP = (
    "//iam.googleapis.com/projects/123456789/locations/global/"
    "workloadIdentityPools/zuplo-pool/providers/zuplo-oidc"
)
SA = "reports@my-gcp.iam.gserviceaccount.com"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "9b2a4c1e-3f5d-4e6a-8b7c-0d1e2f3a4b5c"

STORED = f"""\
mappings:
  - name: orders-prod
    account: acct
    project: shop
    environment_type: production
    aws: {{role_arn: "{ROLE_PROD}"}}
  - name: orders-preview
    account: acct
    project: shop
    environment_type: preview
    aws: {{role_arn: "{ROLE_PREVIEW}"}}
  - name: reports-a
    account: acct
    project: reports
    aws: {{role_arn: "{ROLE_REPORTS}"}}
  - name: reports-b
    account: acct
    project: reports
    gcp: {{workload_identity_provider: "{WIP}", service_account: {SA}}}
  - name: billing
    account: acct
    project: billing
    azure: {{tenant_id: {TENANT}, client_id: {CLIENT}}}
  - name: old-role
    account: acct
    project: legacy
    enabled: false
    aws: {{role_arn: "{ROLE_PROD}"}}
"""

# orders-preview, reports-b and old-role are left out (deleted with --prune); a canary mapping on
# one exact deployment, and analytics (whose earlier mapping is gone), are new.
PLANNED = f"""\
mappings:
  - name: orders-prod
    account: acct
    project: shop
    environment_type: production
    aws: {{role_arn: "{ROLE_PROD}"}}
  - name: shop-canary
    account: acct
    project: shop
    deployment: main-1
    aws: {{role_arn: "{ROLE_CANARY}"}}
  - name: reports-a
    account: acct
    project: reports
    aws: {{role_arn: "{ROLE_REPORTS}"}}
  - name: billing
    account: acct
    project: billing
    azure: {{tenant_id: {TENANT}, client_id: {CLIENT}}}
  - name: analytics
    account: acct
    project: analytics
    aws: {{role_arn: "{ROLE_ANALYTICS}"}}
"""

SHOP = ("acct", "shop", "main-1", "production")
PREVIEW = ("acct", "shop", "pr-7", "preview")
REPORTS = ("acct", "reports", "main", "production")
BILLING = ("acct", "billing", "main", "production")
ANALYTICS = ("acct", "analytics", "main", "production")
OLD = ("acct", "shop", "old", "production")

# (identity, sub, mapping, target, outcome, days ago): what the service recorded.
TRAIL = [
    (SHOP, "sub-shop", "orders-prod", ROLE_PROD, "issued", 1),
    (PREVIEW, "sub-preview", "orders-preview", ROLE_PREVIEW, "pending", 2),
    # reports-a and reports-b tie for this caller: it named reports-b.
    (REPORTS, "sub-reports", "reports-b", SA, "issued", 3),
    (BILLING, "sub-billing", "billing", CLIENT, "invalid_target:AADSTS700016", 4),
    # Its mapping was removed since (the trail still shows it); the file brings one back.
    (ANALYTICS, "sub-analytics", "analytics", ROLE_ANALYTICS, "issued", 5),
    (OLD, "sub-old", "orders-prod", ROLE_PROD, "issued", 40),
]

PRUNED_LINES = [
    f"+ acct/analytics/main/production gains analytics ({ROLE_ANALYTICS})",
    f"+ acct/reports/main/production gains reports-a ({ROLE_REPORTS})",
    f"- acct/reports/main/production loses reports-b ({SA})",
    "~ acct/shop/main-1/production moves orders-prod -> shop-canary",
    f"- acct/shop/pr-7/preview loses orders-preview ({ROLE_PREVIEW})",
]
COUNT_LINE = re.compile(
    r"5 identities replayed since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ; "
    r"4 change: 2 gains, 2 losses, 1 move; nothing written"
)


def record(database: Database, *events: tuple[Any, ...]) -> None:
    """Rows as the service writes them, inserted directly (their times chosen by the test)."""
    now = datetime.now(UTC)
    rows = [
        {
            "created_at": now - timedelta(days=days),
            "issuer": "https://issuer.example.test",
            "sub": sub,
            "account": identity[0],
            "project": identity[1],
            "deployment": identity[2],
            "environment_type": identity[3],
            "mapping": mapping,
            "provider": "gcp" if target == SA else "azure" if target == CLIENT else "aws",
            "target": target,
            "outcome": outcome,
        }
        for identity, sub, mapping, target, outcome, days in events
    ]
    with database.engine.begin() as conn:
        conn.execute(sa.insert(IssuanceEvent), rows)


def state(database: Database) -> tuple[Any, ...]:
    """Everything a review command must leave as it was."""
    with database.engine.connect() as conn:
        changes = conn.execute(sa.select(sa.func.count()).select_from(MappingChange)).scalar()
        events = conn.execute(sa.select(sa.func.count()).select_from(IssuanceEvent)).scalar()
    return store.load(database), changes, events


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    database = seed(database_url, STORED)
    # The analytics mapping the trail shows existed once, and was removed.
    store.apply(
        database,
        parse_document(PLANNED, "x.yaml")[-1:],
        actor="test",
        source="test",
    )
    store.remove(database, "analytics", actor="test", source="test")
    record(database, *TRAIL)
    yield database
    database.dispose()


@pytest.fixture
def run(database_url: str) -> Any:
    def invoke(*args: str, stdin: str | None = None, url: str | None = None) -> Result:
        env = {"STS_DATABASE_URL": url or database_url, "USER": "alice", "STS_ACTOR": None}
        return CliRunner().invoke(cli, list(args), env=env, input=stdin)

    return invoke


def write(tmp_path: Path, text: str, name: str = "mappings.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# -- plan -------------------------------------------------------------------------------------


def test_plan_prune_prints_each_caller_that_changes_and_writes_nothing(
    database: Database, run: Any, tmp_path: Path
) -> None:
    before = state(database)
    result = run("mappings", "plan", write(tmp_path, PLANNED), "--prune")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    *lines, count = result.stdout.splitlines()
    assert lines == PRUNED_LINES
    assert COUNT_LINE.fullmatch(count), count
    assert state(database) == before


def test_plan_without_prune_keeps_what_the_file_does_not_name(
    database: Database, run: Any, tmp_path: Path
) -> None:
    result = run("mappings", "plan", write(tmp_path, PLANNED))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[:-1] == [
        f"+ acct/analytics/main/production gains analytics ({ROLE_ANALYTICS})",
        "~ acct/shop/main-1/production moves orders-prod -> shop-canary",
    ]
    assert "; 2 change: 1 gain, 0 losses, 1 move;" in result.stdout


def test_plan_is_what_apply_then_does(database: Database, run: Any, tmp_path: Path) -> None:
    """The plan's "after" is the stored mappings once the same apply has run."""
    path = write(tmp_path, PLANNED)
    planned = json.loads(run("mappings", "plan", path, "--prune", "--json").stdout)
    assert run("mappings", "apply", path, "--prune").exit_code == 0
    again = json.loads(run("mappings", "plan", path, "--prune", "--json").stdout)
    assert again["changes"] == []
    for change in planned["changes"]:
        claims = json.dumps(change["identity"])
        args = ["explain", "--claims", claims, "--json"]
        if change["audience"] is not None:
            args += ["--audience", change["audience"]]
        explained = json.loads(run(*args).stdout)
        assert explained["chosen"] == change["after"]["mapping"]
        assert explained["error"] == change["after"]["error"]


def test_plan_json(database: Database, run: Any, tmp_path: Path) -> None:
    path = write(tmp_path, PLANNED)
    result = run("mappings", "plan", path, "--prune", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["file"] == path
    assert doc["prune"] is True
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", doc["since"])
    assert doc["identities"] == 5
    assert doc["counts"] == {"identities": 5, "changed": 4, "gains": 2, "loses": 2, "moves": 1}
    assert [change["line"] for change in doc["changes"]] == PRUNED_LINES
    named = doc["changes"][2]
    assert named == {
        "line": f"- acct/reports/main/production loses reports-b ({SA})",
        "change": "loses",
        "identity": {
            "account": "acct",
            "project": "reports",
            "deployment": "main",
            "environment_type": "production",
        },
        "audience": "reports-b",
        "before": {"mapping": "reports-b", "target": SA, "error": None},
        "after": {"mapping": None, "target": None, "error": "invalid_target"},
    }
    assert doc["changes"][1]["before"]["error"] == "invalid_target"  # the tie, unnamed
    assert "note" not in doc


def test_plan_window(database: Database, run: Any, tmp_path: Path) -> None:
    path = write(tmp_path, PLANNED)
    # 60 days back: the old caller of orders-prod (on deployment "old") is replayed too: no
    # change for it (the canary binds only main-1).
    wide = run("mappings", "plan", path, "--prune", "--since", "60d")
    assert "6 identities replayed" in wide.stdout
    assert wide.stdout.splitlines()[:-1] == PRUNED_LINES
    # Two days back: the caller of orders-prod and the pending preview call.
    since = (datetime.now(UTC) - timedelta(days=2, hours=12)).strftime("%Y-%m-%dT%H:%M:%SZ")
    narrow = run("mappings", "plan", path, "--prune", "--since", since)
    assert narrow.exit_code == 0, narrow.output
    assert narrow.stdout.splitlines()[:-1] == [PRUNED_LINES[3], PRUNED_LINES[4]]
    assert narrow.stdout.splitlines()[-1].startswith(f"2 identities replayed since {since};")


def test_plan_replays_refused_and_pending_callers(
    database: Database, run: Any, tmp_path: Path
) -> None:
    """The billing caller's only row is a refusal, the preview caller's a pending call: both are
    replayed (the preview one loses its mapping; billing is unchanged)."""
    only = f"""\
mappings:
  - name: billing
    account: acct
    project: billing
    enabled: false
    azure: {{tenant_id: {TENANT}, client_id: {CLIENT}}}
"""
    result = run("mappings", "plan", write(tmp_path, only), "--prune")
    assert result.exit_code == 0, result.output
    assert f"- acct/billing/main/production loses billing ({CLIENT})" in result.stdout
    assert f"- acct/shop/pr-7/preview loses orders-preview ({ROLE_PREVIEW})" in result.stdout


@pytest.mark.parametrize("as_json", [False, True])
def test_plan_with_an_empty_audit_trail_has_nothing_to_replay(
    database_url: str, run: Any, tmp_path: Path, as_json: bool
) -> None:
    database = seed(database_url, STORED)
    # Rows older than the window do not count.
    record(database, (SHOP, "sub", "orders-prod", ROLE_PROD, "issued", 31))
    args = ["mappings", "plan", write(tmp_path, PLANNED), "--prune"]
    result = run(*args, *(["--json"] if as_json else []))
    assert result.exit_code == 0, result.output
    if as_json:
        doc = json.loads(result.stdout)
        assert doc["changes"] == []
        assert doc["counts"]["identities"] == 0
        assert doc["note"].startswith("nothing to replay")
    else:
        assert re.fullmatch(
            r"nothing to replay: the audit trail records no caller since \S+Z\n", result.stdout
        )
    with database.engine.begin() as conn:
        conn.execute(sa.delete(IssuanceEvent))
    assert run(*args).stdout.startswith("nothing to replay: ")
    database.dispose()


BAD_FILES = [
    ("bad role", PLANNED.replace(ROLE_CANARY, "arn:aws:iam::123:role/x")),
    ("unknown key", PLANNED.replace("    deployment: main-1", "    deploymnet: main-1")),
    ("duplicate name", PLANNED.replace("name: analytics", "name: billing")),
    ("several mistakes", PLANNED.replace("project: shop", "projekt: shop")),
    ("not yaml", "mappings: [\n"),
    ("no list", "mappings: 3\n"),
    ("control character", PLANNED.replace("project: reports", 'project: "re\\x07ports"')),
    ("too deep", "mappings: " + "[" * 200 + "]" * 200 + "\n"),
]


@pytest.mark.parametrize("text", [text for _, text in BAD_FILES], ids=[n for n, _ in BAD_FILES])
def test_plan_refuses_file_mistakes_exactly_as_apply(
    database: Database, run: Any, tmp_path: Path, text: str
) -> None:
    before = state(database)
    path = write(tmp_path, text)
    planned, applied = run("mappings", "plan", path, "--prune"), run("mappings", "apply", path)
    assert planned.exit_code == applied.exit_code == 2
    assert planned.stdout == applied.stdout == ""
    assert planned.stderr == applied.stderr
    assert planned.stderr.startswith(f"error: {path}:")
    assert state(database) == before


def test_plan_refuses_unreadable_files_exactly_as_apply(
    database: Database, run: Any, tmp_path: Path
) -> None:
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00mappings")
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(b"#" * (64 * 1024 * 1024 + 1))
    for path in (str(tmp_path / "missing.yaml"), str(binary), str(huge), "/dev/zero"):
        planned, applied = run("mappings", "plan", path), run("mappings", "apply", path)
        assert planned.exit_code == applied.exit_code == 2
        assert planned.stderr == applied.stderr
        assert planned.stderr.count("\n") == 1
    stdin = "mappings:\n  - {name: x, account: a, project: p, aws: {role_arn: nope}}\n"
    planned = run("mappings", "plan", "-", stdin=stdin)
    applied = run("mappings", "apply", "-", stdin=stdin)
    assert planned.exit_code == applied.exit_code == 2
    assert planned.stderr == applied.stderr
    assert planned.stderr.startswith("error: <stdin>:2: mappings[0].aws.role_arn")


def test_plan_reads_stdin(database: Database, run: Any) -> None:
    result = run("mappings", "plan", "-", "--prune", stdin=PLANNED)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[:-1] == PRUNED_LINES


@pytest.mark.parametrize("window", ["nope", "0d", "30", "-5d", "2026-13-01", ""])
@pytest.mark.parametrize("command", ["plan", "who-can", "history"])
def test_an_unparseable_window_is_exit_2_one_line(
    database: Database, run: Any, tmp_path: Path, window: str, command: str
) -> None:
    target = {"plan": write(tmp_path, PLANNED), "who-can": ROLE_PROD, "history": "orders-prod"}
    result = run("mappings", command, target[command], "--since", window)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr == (
        "error: --since: expected a duration back from now (30m, 24h, 7d) or an RFC 3339 time\n"
    )


def test_plan_on_a_database_that_does_not_exist_is_exit_1(run: Any, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'none.db'}"
    result = run("mappings", "plan", write(tmp_path, PLANNED), url=url)
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "none.db").exists()


EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "mappings-review.yml"


def test_the_example_review_workflow_plans_with_prune(
    database: Database, run: Any, tmp_path: Path
) -> None:
    """docs/examples/mappings-review.yml: on a change to the file, the command it runs is plan
    with --prune (what the service's STS_MAPPINGS_FILE applies), and it works."""
    workflow = yaml.safe_load(EXAMPLE.read_text())
    job = workflow["jobs"]["plan"]
    # YAML 1.1 reads the key "on" as true.
    assert workflow[True]["pull_request"]["paths"] == [job["env"]["MAPPINGS_FILE"]]
    script = next(step["run"] for step in job["steps"] if "mappings plan" in step.get("run", ""))
    found = re.search(r'"\$STS_IMAGE" \\\n\s*(mappings plan [^>]*?) >', script)
    assert found is not None, script
    args = shlex.split(found.group(1).replace('"$MAPPINGS_FILE"', write(tmp_path, PLANNED)))
    assert "--prune" in args
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[:-1] == PRUNED_LINES


# -- who-can ----------------------------------------------------------------------------------


def test_who_can_a_role(database: Database, run: Any) -> None:
    result = run("mappings", "who-can", ROLE_PROD)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"{ROLE_PROD} (AWS role ARN)"
    assert lines[1] == "granted by 1 enabled mapping:"
    assert lines[2].split() == [
        "NAME",
        "ENABLED",
        "ACCOUNT",
        "PROJECT",
        "DEPLOYMENT",
        "ENVIRONMENT",
        "TARGET",
    ]
    assert lines[3].split() == [
        "orders-prod",
        "yes",
        "acct",
        "shop",
        "*",
        "production",
        "aws",
        ROLE_PROD,
    ]
    assert lines[4] == "disabled mappings that name it (they grant nothing): old-role"
    assert re.fullmatch(r"obtained by 1 identity since \S+Z:", lines[5])
    assert lines[6].split() == [
        "ACCOUNT",
        "PROJECT",
        "DEPLOYMENT",
        "ENVIRONMENT",
        "SUB",
        "MAPPING",
        "LAST",
        "OUTCOME",
    ]
    row = lines[7].split()
    assert row[:6] == ["acct", "shop", "main-1", "production", "sub-shop", "orders-prod"]
    assert row[-1] == "issued"
    assert len(lines) == 8
    # 60 days: the old caller's row too.
    wide = run("mappings", "who-can", ROLE_PROD, "--since", "60d")
    assert "obtained by 2 identities since" in wide.stdout
    assert "sub-old" in wide.stdout


def test_who_can_json(database: Database, run: Any) -> None:
    result = run("mappings", "who-can", "orders-preview", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["target"] == "orders-preview"
    assert doc["kinds"] == ["mapping"]
    assert [m["name"] for m in doc["mappings"]] == ["orders-preview"]
    assert doc["mappings"][0]["environment_type"] == "preview"
    assert doc["mappings"][0]["aws"]["role_arn"] == ROLE_PREVIEW
    assert doc["disabled"] == []
    (who,) = doc["identities"]
    assert {k: v for k, v in who.items() if k != "last"} == {
        "account": "acct",
        "project": "shop",
        "deployment": "pr-7",
        "environment_type": "preview",
        "sub": "sub-preview",
        "mapping": "orders-preview",
        "outcome": "pending",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", who["last"])
    text = run("mappings", "who-can", "orders-preview").stdout
    assert text.splitlines()[-1].endswith("pending (may have been issued)")


@pytest.mark.parametrize(
    ("target", "kind", "granted", "subs"),
    [
        (SA, "GCP service account", ["reports-b"], ["sub-reports"]),
        # The provider's mapping impersonates a service account: its rows record that.
        (WIP, "GCP workload identity provider", ["reports-b"], ["sub-reports"]),
        (CLIENT, "Azure client_id or mapping name", ["billing"], []),  # its one call was refused
        (CLIENT.upper(), "Azure client_id", ["billing"], []),
        ("reports-b", "mapping name", ["reports-b"], ["sub-reports"]),
        ("analytics", "mapping name", [], ["sub-analytics"]),  # removed: the trail remembers
    ],
)
def test_who_can_each_kind_of_target(
    database: Database, run: Any, target: str, kind: str, granted: list[str], subs: list[str]
) -> None:
    result = run("mappings", "who-can", target, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [m["name"] for m in doc["mappings"]] == granted
    assert sorted(i["sub"] for i in doc["identities"]) == subs
    text = run("mappings", "who-can", target).stdout
    assert text.splitlines()[0] == f"{target} ({kind})"


def test_who_can_a_valid_target_nothing_grants_is_exit_0(database: Database, run: Any) -> None:
    result = run("mappings", "who-can", ARN + "nobody")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1:] == [
        "no enabled mapping grants it",
        result.stdout.splitlines()[2],
    ]
    assert result.stdout.splitlines()[2].startswith(
        "the audit trail shows no identity obtaining it since "
    )
    doc = json.loads(run("mappings", "who-can", ARN + "nobody", "--json").stdout)
    assert (doc["mappings"], doc["identities"]) == ([], [])


@pytest.mark.parametrize(
    "target",
    [
        "arn:aws:iam::123:role/x",
        "Orders-Prod",
        "https://orders.example.com",
        "orders prod",
        "reader@example.com",
        "x\ny",
        "",
    ],
)
def test_who_can_an_unknown_kind_of_target_is_exit_2_one_line(
    database: Database, run: Any, target: str
) -> None:
    result = run("mappings", "who-can", target)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr == (
        "error: TARGET: not an AWS role ARN, a GCP service account or provider name, an Azure "
        "client_id or a mapping name\n"
    )


# -- history ----------------------------------------------------------------------------------


def test_history_newest_first_with_the_fields_changed(
    database: Database, run: Any, tmp_path: Path
) -> None:
    edited = STORED.replace(
        f'role_arn: "{ROLE_PREVIEW}"', f'role_arn: "{ROLE_CANARY}", duration_seconds: 900'
    )
    assert run("mappings", "apply", write(tmp_path, edited)).exit_code == 0
    assert run("mappings", "remove", "old-role").exit_code == 0
    result = run("mappings", "history")
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["TIME", "ACTOR", "SOURCE", "NAME", "CHANGE", "FIELDS"]
    assert rows[0].split()[1:6] == ["alice", rows[0].split()[2], "old-role", "deleted", "aws"]
    assert rows[0].split()[2].startswith("cli")
    assert rows[0].endswith(f"aws {ROLE_PROD}")
    assert rows[1].split()[3:5] == ["orders-preview", "updated"]
    assert rows[1].endswith(
        f"aws.role_arn {ROLE_PREVIEW} -> {ROLE_CANARY}, aws.duration_seconds 3600 -> 900"
    )
    assert rows[2].split()[1:5] == ["test", "test", "analytics", "deleted"]
    assert rows[3].split()[1:5] == ["test", "test", "analytics", "created"]
    assert [row.split()[4] for row in rows[4:]] == ["created"] * 6
    times = [row.split()[0] for row in rows]
    assert times == sorted(times, reverse=True)


def test_history_of_one_mapping_as_json(database: Database, run: Any, tmp_path: Path) -> None:
    edited = STORED.replace(f'role_arn: "{ROLE_PREVIEW}"', f'role_arn: "{ROLE_CANARY}"')
    assert run("mappings", "apply", write(tmp_path, edited)).exit_code == 0
    result = run("mappings", "history", "orders-preview", "--json")
    assert result.exit_code == 0, result.output
    updated, created = json.loads(result.stdout)
    assert updated["action"] == "updated"
    assert updated["actor"] == "alice"
    assert updated["fields"] == [
        {"path": "aws.role_arn", "before": ROLE_PREVIEW, "after": ROLE_CANARY}
    ]
    assert updated["before"]["aws"]["role_arn"] == ROLE_PREVIEW
    assert updated["after"]["aws"]["role_arn"] == ROLE_CANARY
    assert updated["revision"] == created["revision"] + 3
    assert created["action"] == "created"
    assert (created["fields"], created["before"]) == ([], None)
    assert created["after"]["name"] == "orders-preview"


def test_history_window_and_empty(database: Database, run: Any) -> None:
    result = run("mappings", "history", "--since", "2099-01-01T00:00:00Z")
    assert result.exit_code == 0, result.output
    assert result.stdout == "no mapping changes recorded since 2099-01-01T00:00:00Z\n"
    result = run("mappings", "history", "no-such-mapping")
    assert (result.exit_code, result.stdout) == (
        0,
        "no mapping changes of no-such-mapping recorded\n",
    )
    assert json.loads(run("mappings", "history", "x", "--json").stdout) == []
    assert len(run("mappings", "history", "--since", "1h").stdout.splitlines()) == 9


@pytest.mark.parametrize("name", ["Orders", "orders prod", "_x", "a" * 64])
def test_history_of_something_that_is_no_mapping_name_is_exit_2(
    database: Database, run: Any, name: str
) -> None:
    result = run("mappings", "history", name)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == "error: NAME: not a mapping name ([a-z0-9][a-z0-9-]{0,62})\n"


# -- plan against the real service --------------------------------------------------------------


def outcome(response: Any) -> tuple[str | None, str | None]:
    """(mapping, error) of a POST /token answer."""
    body = response.json()
    if response.status_code == 200:
        return body["mapping"], None
    assert response.status_code == 400, response.text
    return None, body["error"]


def token_outcome(stack: Stack, identity: dict[str, str], audience: str | None) -> Any:
    fields = {"audience": audience} if audience is not None else {}
    return outcome(stack.post(stack.token(**identity), **fields))


def explain_outcome(run: Any, identity: dict[str, str], audience: str | None) -> Any:
    args = ["explain", "--claims", json.dumps(identity), "--json"]
    if audience is not None:
        args += ["--audience", audience]
    doc = json.loads(run(*args).stdout)
    return doc["chosen"], doc["error"]


AWS_STORED = f"""\
mappings:
  - {{name: orders-prod, account: acct, project: shop, environment_type: production,
      aws: {{role_arn: "{ROLE_PROD}"}}}}
  - {{name: orders-preview, account: acct, project: shop, environment_type: preview,
      aws: {{role_arn: "{ROLE_PREVIEW}"}}}}
  - {{name: reports-a, account: acct, project: reports, aws: {{role_arn: "{ROLE_REPORTS}"}}}}
  - {{name: reports-b, account: acct, project: reports, aws: {{role_arn: "{ROLE_ANALYTICS}"}}}}
"""
AWS_PLANNED = f"""\
mappings:
  - {{name: orders-prod, account: acct, project: shop, environment_type: production,
      aws: {{role_arn: "{ROLE_PROD}"}}}}
  - {{name: shop-canary, account: acct, project: shop, deployment: main-1,
      aws: {{role_arn: "{ROLE_CANARY}"}}}}
  - {{name: reports-a, account: acct, project: reports, aws: {{role_arn: "{ROLE_REPORTS}"}}}}
"""


def test_plan_shows_what_the_service_then_does(
    issuer: DevIssuer,
    aws: AwsEmulator,
    gcp: GcpEmulator,
    database_url: str,
    run: Any,
    tmp_path: Path,
) -> None:
    """The trail written by real exchanges, the plan, the apply, the same exchanges again."""
    fields = ("account", "project", "deployment", "environment_type")
    main_2 = ("acct", "shop", "main-2", "production")
    callers = [dict(zip(fields, who, strict=True)) for who in (SHOP, PREVIEW, REPORTS, main_2)]
    # The REPORTS caller names reports-b: reports-a and reports-b tie for it.
    asked = [(0, None), (1, None), (2, None), (2, "reports-b"), (3, None)]
    with running_stack(issuer, aws, gcp, database_url, document=AWS_STORED) as stack:
        before = {(i, name): token_outcome(stack, callers[i], name) for i, name in asked}
        assert before[(0, None)] == ("orders-prod", None)
        assert before[(2, None)] == (None, "invalid_target")
        path = write(tmp_path, AWS_PLANNED)
        plan = json.loads(run("mappings", "plan", path, "--prune", "--json").stdout)
        # Four identities: the REPORTS caller through its named call (the tie made no call).
        assert plan["identities"] == 4
        assert run("mappings", "apply", path, "--prune").exit_code == 0
        stack.services.mappings.refresh()
        after = {(i, name): token_outcome(stack, callers[i], name) for i, name in asked}
    changed = {
        (callers.index(change["identity"]), change["audience"]): change
        for change in plan["changes"]
    }
    for key, was in before.items():
        now = after[key]
        # No mapping keeps its name with another target here: the names tell every change.
        if was[0] == now[0]:
            assert key not in changed
            continue
        change = changed.pop(key)
        assert (change["before"]["mapping"], change["before"]["error"]) == was
        assert (change["after"]["mapping"], change["after"]["error"]) == now
    assert changed == {}
    assert [c["line"] for c in plan["changes"]] == [
        f"+ acct/reports/main/production gains reports-a ({ROLE_REPORTS})",
        f"- acct/reports/main/production loses reports-b ({ROLE_ANALYTICS})",
        "~ acct/shop/main-1/production moves orders-prod -> shop-canary",
        f"- acct/shop/pr-7/preview loses orders-preview ({ROLE_PREVIEW})",
    ]


# -- the property: plan's outcome is explain's and POST /token's -----------------------------

NAMES = ("m0", "m1", "m2", "m3", "m4")
ACCOUNTS = ("acct", "other")
MAPPING = st.fixed_dictionaries(
    {
        "account": st.sampled_from(("acct", "acct", "other")),
        "project": st.sampled_from(("p1", "p2", "*")),
        "deployment": st.sampled_from(("d1", "d2", "d*", "*", "x?")),
        "environment_type": st.sampled_from(("production", "preview", "*")),
        "enabled": st.booleans(),
        "role": st.sampled_from(("r1", "r2", "r3")),
    }
)
MAPPINGS = st.dictionaries(st.sampled_from(NAMES), MAPPING, max_size=5)


@st.composite
def stored_and_planned(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """Stored mappings and a file that edits them, as a pull request would: each mapping kept,
    dropped or with one field changed, and new ones added."""
    stored = draw(MAPPINGS)
    planned: dict[str, Any] = {}
    for name, fields in stored.items():
        edit = draw(st.sampled_from(("keep", "drop", "change")))
        if edit == "drop":
            continue
        planned[name] = dict(fields)
        if edit == "change":
            key = draw(st.sampled_from(sorted(fields)))
            planned[name][key] = draw(MAPPING)[key]
    for name, fields in draw(MAPPINGS).items():
        planned.setdefault(name, fields)
    return stored, planned


IDENTITY = st.tuples(
    st.sampled_from(ACCOUNTS),
    st.sampled_from(("p1", "p2")),
    st.sampled_from(("d1", "d2", "x1")),
    st.sampled_from(("production", "preview")),
)
TRAIL_ROWS = st.lists(st.tuples(IDENTITY, st.sampled_from(NAMES)), min_size=1, max_size=6)


def side(result: tuple[str | None, str | None], target: str | None) -> dict[str, str | None]:
    """A plan's "before" or "after" for an explain/token result and the mapping's target."""
    return {"mapping": result[0], "target": target, "error": result[1]}


def document(mappings: dict[str, dict[str, Any]]) -> str:
    entries = [
        {
            "name": name,
            **{key: value for key, value in fields.items() if key != "role"},
            "aws": {"role_arn": ARN + fields["role"]},
        }
        for name, fields in mappings.items()
    ]
    return json.dumps({"mappings": entries})


def test_plan_agrees_with_explain_and_token(
    issuer: DevIssuer,
    aws: AwsEmulator,
    gcp: GcpEmulator,
    database_url: str,
    run: Any,
    tmp_path: Path,
) -> None:
    """For generated mappings, files and audit trails: every request plan replays gets, before
    and after the apply, what ``sts explain --claims`` chooses and what ``POST /token`` selects;
    plan lists exactly the requests whose result differs."""
    with ExitStack() as stop:
        stack = stop.enter_context(
            running_stack(issuer, aws, gcp, database_url, document="mappings: []\n")
        )
        database = Database(database_url)
        stop.callback(database.dispose)

        @settings(
            max_examples=20,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(mappings=stored_and_planned(), trail=TRAIL_ROWS, prune=st.booleans())
        def check(
            mappings: tuple[dict[str, Any], dict[str, Any]],
            trail: list[tuple[tuple[str, ...], str]],
            prune: bool,
        ) -> None:
            stored, planned = mappings
            store.apply(
                database,
                parse_document(document(stored), "stored.json"),
                prune=True,
                actor="test",
                source="test",
            )
            with database.engine.begin() as conn:
                conn.execute(sa.delete(IssuanceEvent))
            record(database, *((who, "sub", name, ARN + "r1", "issued", 0) for who, name in trail))
            path = write(tmp_path, document(planned), "planned.json")
            args = ["mappings", "plan", path, "--json", *(["--prune"] if prune else [])]
            result = run(*args)
            assert result.exit_code == 0, result.output
            plan = json.loads(result.stdout)

            fields = ("account", "project", "deployment", "environment_type")
            identities = {who: dict(zip(fields, who, strict=True)) for who, _ in trail}
            assert plan["identities"] == len(identities)
            stack.services.mappings.refresh()
            # What plan replays: every identity naming nothing, and each recorded mapping that
            # the unnamed request does not get over the stored mappings, by name.
            results_before = {
                (who, None): explain_outcome(run, claims, None)
                for who, claims in identities.items()
            }
            for who, name in trail:
                if name != results_before[(who, None)][0]:
                    results_before[(who, name)] = explain_outcome(run, identities[who], name)
            for (who, name), expected in results_before.items():
                assert token_outcome(stack, identities[who], name) == expected

            assert run("mappings", "apply", path, *(["--prune"] if prune else [])).exit_code == 0
            stack.services.mappings.refresh()
            results_after = {
                (who, name): explain_outcome(run, identities[who], name)
                for who, name in results_before
            }
            for (who, name), expected in results_after.items():
                assert token_outcome(stack, identities[who], name) == expected

            roles = {} if prune else {name: ARN + f["role"] for name, f in stored.items()}
            old_roles = {name: ARN + f["role"] for name, f in stored.items()}
            roles.update({name: ARN + f["role"] for name, f in planned.items()})
            changes = {(tuple(c["identity"].values()), c["audience"]): c for c in plan["changes"]}
            assert set(changes) <= set(results_before)
            for key, was in results_before.items():
                now = results_after[key]
                was_target = old_roles[was[0]] if was[0] is not None else None
                now_target = roles[now[0]] if now[0] is not None else None
                change = changes.get(key)
                if (was[0], was_target) == (now[0], now_target):
                    assert change is None, change
                    continue
                if change is None:
                    # Shown once: a named request that changes as the unnamed one does.
                    unnamed = changes[(key[0], None)]
                    assert key[1] is not None
                    assert (unnamed["before"]["mapping"], unnamed["after"]["mapping"]) == (
                        was[0],
                        now[0],
                    )
                    continue
                assert change["before"] == side(was, was_target)
                assert change["after"] == side(now, now_target)

        check()
