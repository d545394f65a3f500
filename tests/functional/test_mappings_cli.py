"""``sts db`` and ``sts mappings`` on real SQLite and PostgreSQL (docs/reference.md section 6)."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import click
import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from sts.db import Database
from sts.db.commands import db
from sts.mappings import store
from sts.mappings.commands import mappings
from sts.mappings.document import parse_document
from sts.mappings.models import MappingChange, RoleMapping
from sts.mappings.store import apply_specs
from tests.functional.serving import run_sts

ROLE = "arn:aws:iam::123456789012:role/orders-api"
WIP = (
    "//iam.googleapis.com/projects/123456789/locations/global/"
    "workloadIdentityPools/zuplo/providers/zuplo"
)
DOCUMENT = f"""\
mappings:
  - name: orders-prod
    description: Orders API in production
    account: my-account
    project: my-project
    environment_type: production
    aws:
      role_arn: {ROLE}
      session_policy:
        Version: "2012-10-17"
        Statement: [{{Effect: Allow, Action: "s3:GetObject", Resource: "arn:aws:s3:::o/*"}}]
  - name: analytics-gcp
    account: my-account
    project: "*"
    deployment: "analytics-*"
    gcp:
      workload_identity_provider: {WIP}
      service_account: reader@my-gcp.iam.gserviceaccount.com
"""


@click.group()
def sts() -> None:
    """The two groups as sts/cli.py registers them."""


sts.add_command(db)
sts.add_command(mappings)


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    db.upgrade()
    yield db
    db.dispose()


@pytest.fixture
def run(database_url: str) -> Any:
    def invoke(*args: str, url: str | None = None, stdin: str | None = None) -> Result:
        env = {"STS_DATABASE_URL": url or database_url, "USER": "alice"}
        return CliRunner().invoke(sts, list(args), env=env, input=stdin)

    return invoke


def write(tmp_path: Path, text: str, name: str = "mappings.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def history(db: Database) -> list[dict[str, Any]]:
    with db.engine.connect() as conn:
        rows = conn.execute(sa.select(MappingChange).order_by(MappingChange.id)).mappings()
        return [dict(row) for row in rows]


# -- apply --------------------------------------------------------------------------------------


def test_apply_creates_then_is_a_no_op(database: Database, run: Any, tmp_path: Path) -> None:
    path = write(tmp_path, DOCUMENT)
    result = run("mappings", "apply", path)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "+ create analytics-gcp (gcp reader@my-gcp.iam.gserviceaccount.com)",
        f"+ create orders-prod (aws {ROLE})",
    ]
    revision, specs = store.load(database)
    assert revision == 1
    assert sorted(specs, key=lambda s: s.name) == sorted(
        parse_document(DOCUMENT), key=lambda s: s.name
    )
    rows = history(database)
    assert [(r["action"], r["name"], r["revision"]) for r in rows] == [
        ("create", "analytics-gcp", 1),
        ("create", "orders-prod", 1),
    ]
    host = f"cli:{socket.gethostname()}"
    assert all(r["actor"] == "alice" and r["source"] == host and r["before"] is None for r in rows)
    assert rows[1]["after"]["aws"]["session_policy"]["Version"] == "2012-10-17"
    assert rows[0]["changed_at"].tzinfo is UTC

    again = run("mappings", "apply", path)
    assert again.exit_code == 0
    assert again.stdout.strip() == "no changes"
    assert store.revision(database) == 1
    assert len(history(database)) == 2


def test_apply_updates_with_field_diff(database: Database, run: Any, tmp_path: Path) -> None:
    assert run("mappings", "apply", write(tmp_path, DOCUMENT)).exit_code == 0
    changed = DOCUMENT.replace(
        f"role_arn: {ROLE}", f"role_arn: {ROLE}\n      duration_seconds: 900"
    ).replace('deployment: "analytics-*"', "deployment: analytics-main\n    enabled: false")
    result = run("mappings", "apply", write(tmp_path, changed))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "~ update analytics-gcp: deployment analytics-* -> analytics-main, enabled true -> false",
        "~ update orders-prod: aws.duration_seconds 3600 -> 900",
    ]
    assert store.revision(database) == 2
    update = history(database)[-1]
    assert (update["action"], update["name"], update["revision"]) == ("update", "orders-prod", 2)
    assert update["before"]["aws"]["duration_seconds"] == 3600
    assert update["after"]["aws"]["duration_seconds"] == 900
    _, specs = store.load(database)
    disabled = next(spec for spec in specs if spec.name == "analytics-gcp")
    assert disabled.enabled is False
    with database.session() as session:
        row = session.scalars(sa.select(RoleMapping).where(RoleMapping.name == "orders-prod")).one()
        assert row.updated_at > row.created_at
        assert row.updated_at.tzinfo is UTC
        assert (row.provider, row.target) == ("aws", ROLE)


def test_prune_deletes_only_when_asked(database: Database, run: Any, tmp_path: Path) -> None:
    assert run("mappings", "apply", write(tmp_path, DOCUMENT)).exit_code == 0
    only_orders = DOCUMENT.split("  - name: analytics-gcp", maxsplit=1)[0]
    kept = run("mappings", "apply", write(tmp_path, only_orders))
    assert kept.exit_code == 0
    assert kept.stdout.splitlines() == [
        "no changes",
        "(1 stored mapping(s) not in the file kept; --prune deletes them)",
    ]
    assert store.revision(database) == 1

    pruned = run("mappings", "apply", "--prune", write(tmp_path, only_orders))
    assert pruned.exit_code == 0
    assert pruned.stdout.splitlines() == ["- delete analytics-gcp"]
    assert [spec.name for spec in store.load(database)[1]] == ["orders-prod"]
    deleted = history(database)[-1]
    assert (deleted["action"], deleted["after"], deleted["revision"]) == ("delete", None, 2)
    assert deleted["before"]["gcp"]["service_account"] == "reader@my-gcp.iam.gserviceaccount.com"


def test_dry_run_prints_the_diff_and_writes_nothing(
    database: Database, run: Any, tmp_path: Path
) -> None:
    result = run("mappings", "apply", "--dry-run", "--prune", write(tmp_path, DOCUMENT))
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        "+ create analytics-gcp (gcp reader@my-gcp.iam.gserviceaccount.com)",
        f"+ create orders-prod (aws {ROLE})",
        "(dry run: nothing written)",
    ]
    assert store.load(database) == (0, [])
    assert history(database) == []


def test_apply_reads_stdin(database: Database, run: Any) -> None:
    result = run("mappings", "apply", "-", stdin=DOCUMENT)
    assert result.exit_code == 0, result.output
    assert store.revision(database) == 1


def test_apply_is_one_transaction(database: Database) -> None:
    """A failure after some rows were written leaves nothing: rows, history, revision."""
    specs = parse_document(DOCUMENT)

    def apply_then_fail() -> None:
        with database.session() as session:
            diff = apply_specs(session, specs, prune=False, dry_run=False, actor="t", source="t")
            assert (diff.revision, len(diff.created)) == (1, 2)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        apply_then_fail()
    assert store.load(database) == (0, [])
    assert history(database) == []


def test_list_json_round_trips(database: Database, run: Any, tmp_path: Path) -> None:
    assert run("mappings", "apply", write(tmp_path, DOCUMENT)).exit_code == 0
    listed = run("mappings", "list", "--json")
    assert listed.exit_code == 0
    entries = json.loads(listed.stdout)
    assert [entry["name"] for entry in entries] == ["analytics-gcp", "orders-prod"]
    # Defaults filled in.
    assert entries[0]["gcp"]["lifetime_seconds"] == 3600
    assert entries[1]["aws"]["duration_seconds"] == 3600
    assert entries[1]["deployment"] == "*"

    result = run("mappings", "apply", "--prune", write(tmp_path, listed.stdout, "listed.json"))
    assert result.exit_code == 0
    assert result.stdout.strip() == "no changes"
    assert store.revision(database) == 1


def test_list_table(database: Database, run: Any, tmp_path: Path) -> None:
    empty = run("mappings", "list")
    assert (empty.exit_code, empty.stdout) == (0, "no mappings\n")
    assert run("mappings", "list", "--json").stdout == "[]\n"
    assert run("mappings", "apply", write(tmp_path, DOCUMENT)).exit_code == 0
    lines = run("mappings", "list").stdout.splitlines()
    assert lines[0].split() == [
        "NAME", "ENABLED", "ACCOUNT", "PROJECT", "DEPLOYMENT", "ENVIRONMENT", "TARGET",
    ]  # fmt: skip
    assert lines[1].split() == [
        "analytics-gcp", "yes", "my-account", "*", "analytics-*", "*",
        "gcp", "reader@my-gcp.iam.gserviceaccount.com",
    ]  # fmt: skip
    assert lines[2].split() == [
        "orders-prod", "yes", "my-account", "my-project", "*", "production", "aws", ROLE,
    ]  # fmt: skip


def test_remove(database: Database, run: Any, tmp_path: Path) -> None:
    assert run("mappings", "apply", write(tmp_path, DOCUMENT)).exit_code == 0
    result = run("mappings", "remove", "orders-prod")
    assert (result.exit_code, result.stdout) == (0, "- delete orders-prod\n")
    assert [spec.name for spec in store.load(database)[1]] == ["analytics-gcp"]
    assert store.revision(database) == 2
    last = history(database)[-1]
    assert (last["action"], last["name"], last["actor"], last["revision"]) == (
        "delete",
        "orders-prod",
        "alice",
        2,
    )

    unknown = run("mappings", "remove", "orders-prod")
    assert unknown.exit_code == 1
    assert unknown.stderr == "error: no mapping named 'orders-prod'\n"
    assert store.revision(database) == 2


# -- bad input: exit 2, one line saying where, nothing written ------------------------------


@pytest.mark.parametrize(
    ("replace", "by", "where"),
    [
        (f"role_arn: {ROLE}", "role_arn: arn:aws:iam::123:role/x", "8: mappings[0].aws.role_arn"),
        (
            f"role_arn: {ROLE}",
            f"role_arn: {ROLE}\n      duration_seconds: 44000",
            "9: mappings[0].aws.duration_seconds",
        ),
        (
            f"role_arn: {ROLE}",
            f"role_arn: {ROLE}\n      duration_seconds: 600",
            "9: mappings[0].aws.duration_seconds",
        ),
        ("/providers/zuplo", "/providers/z", "17: mappings[1].gcp.workload_identity_provider"),
        ("locations/global", "locations/us", "17: mappings[1].gcp.workload_identity_provider"),
        (
            f"{WIP}\n",
            f"{WIP}\n      lifetime_seconds: 60\n",
            "18: mappings[1].gcp.lifetime_seconds",
        ),
        ("    deployment:", "    deploymnet:", "15: mappings[1].deploymnet: unknown key"),
        (
            "      session_policy:",
            "      sessionpolicy:",
            "9: mappings[0].aws.sessionpolicy: unknown key",
        ),
        (
            "  - name: analytics-gcp",
            "  - name: orders-prod",
            "12: mappings[1].name: duplicate name",
        ),
    ],
)
def test_bad_file_exits_2_with_the_line(
    database: Database, run: Any, tmp_path: Path, replace: str, by: str, where: str
) -> None:
    assert replace in DOCUMENT
    path = write(tmp_path, DOCUMENT.replace(replace, by, 1))
    result = run("mappings", "apply", path)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: {path}:{where}")
    assert result.stderr.count("\n") == 1
    assert store.load(database) == (0, [])
    assert history(database) == []


POLICY_LINE = "      session_policy:"
STATEMENT = 'Statement: [{{Effect: Allow, Action: "s3:GetObject", Resource: "arn:aws:s3:::o/*"}}]'


def with_condition(condition: str) -> str:
    """DOCUMENT with ``condition`` as the Condition of orders-prod's statement (line 11)."""
    statement = STATEMENT.format()
    assert statement in DOCUMENT
    return DOCUMENT.replace(statement, statement[:-2] + f", Condition: {condition}}}]", 1)


def assert_refused(
    run: Any, database: Database, path: str, where: str, problem: str, lines: int = 1
) -> None:
    result = run("mappings", "apply", path)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"error: {path}:{where}"), result.stderr
    assert problem in first
    assert result.stderr.count("\n") == lines, result.stderr
    assert all(line.startswith(f"error: {path}:") for line in result.stderr.splitlines())
    assert store.load(database) == (0, [])


def test_session_policy_3000_levels_deep_exits_2_with_the_line(
    database: Database, run: Any, tmp_path: Path
) -> None:
    deep = "[" * 3000 + "]" * 3000
    text = DOCUMENT.replace(POLICY_LINE, f"{POLICY_LINE} {deep}\n      old_policy:", 1)
    assert_refused(run, database, write(tmp_path, text), "9: ", "nested deeper than 100 levels")


def test_nesting_is_checked_anywhere_in_the_file(
    database: Database, run: Any, tmp_path: Path
) -> None:
    # Under a key that is itself unknown: the depth is refused while composing, before any
    # field check runs.
    deep = "{a: " * 3000 + "x" + "}" * 3000
    text = DOCUMENT + f"extra: {deep}\n"
    assert_refused(run, database, write(tmp_path, text), "19: ", "nested deeper than 100 levels")


def test_one_hundred_levels_are_accepted_one_hundred_and_one_are_not(
    database: Database, run: Any, tmp_path: Path
) -> None:
    # The root mapping is level 1; the Condition's value sits at level 8.
    def condition(levels: int) -> str:
        return "{a: " * levels + "x" + "}" * levels

    too_deep = write(tmp_path, with_condition(condition(94)), "deep.yaml")
    assert_refused(run, database, too_deep, "11: ", "nested deeper than 100 levels")
    result = run("mappings", "apply", write(tmp_path, with_condition(condition(93))))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "number",
    ["9" * 5000, "9" * 1000, "1." + "1" * 5000, "-" + "1" * 5000 + "e5"],
    ids=["5000-digit-int", "1000-digit-int", "5000-digit-float", "5000-digit-exponent"],
)
def test_numbers_of_thousands_of_digits_exit_2_with_the_line(
    database: Database, run: Any, tmp_path: Path, number: str
) -> None:
    duration = f"role_arn: {ROLE}\n      duration_seconds: {number}"
    text = DOCUMENT.replace(f"role_arn: {ROLE}", duration)
    assert_refused(run, database, write(tmp_path, text), "9: ", "number has too many digits")


def test_long_number_inside_a_session_policy_exits_2_with_the_line(
    database: Database, run: Any, tmp_path: Path
) -> None:
    text = with_condition("{n: " + "7" * 5000 + "}")
    assert_refused(run, database, write(tmp_path, text), "11: ", "number has too many digits")


def test_file_over_64_mib_exits_2(database: Database, run: Any, tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    padding = 64 * 1024 * 1024 + 1 - len(DOCUMENT.encode())
    path.write_bytes(DOCUMENT.encode() + b"#" * (padding - 1) + b"\n")
    assert path.stat().st_size == 64 * 1024 * 1024 + 1
    result = run("mappings", "apply", str(path))
    assert result.exit_code == 2
    assert result.stderr == f"error: {path}: larger than 64 MiB\n"
    assert store.load(database) == (0, [])


def test_stdin_over_64_mib_exits_2(database: Database, run: Any) -> None:
    result = run("mappings", "apply", "-", stdin=DOCUMENT + " " * (64 * 1024 * 1024))
    assert result.exit_code == 2
    assert result.stderr == "error: <stdin>: larger than 64 MiB\n"


def test_file_with_no_end_exits_2(database: Database, run: Any) -> None:
    result = run("mappings", "apply", "/dev/zero")
    assert result.exit_code == 2
    assert result.stderr == "error: /dev/zero: larger than 64 MiB\n"
    assert store.load(database) == (0, [])


@pytest.mark.parametrize(
    ("replace", "by", "where", "char"),
    [
        ("account: my-account", "account: my-\u202eaccount", "4: mappings[0].account", "202E"),
        ("account: my-account", "account: my-\u200baccount", "4: mappings[0].account", "200B"),
        ("project: my-project", 'project: "my\\x07project"', "5: mappings[0].project", "0007"),
        (
            "description: Orders API in production",
            'description: "two\\nlines"',
            "3: mappings[0].description",
            "000A",
        ),
        (
            "description: Orders API in production",
            'description: "tab\\there"',
            "3: mappings[0].description",
            "0009",
        ),
        (
            "description: Orders API in production",
            "description: Orders \u2066API",
            "3: mappings[0].description",
            "2066",
        ),
        ('"arn:aws:s3:::o/*"', '"arn:aws:s3:::o/\u202e*"', "11: mappings[0].aws", "202E"),
        ("    deployment:", '    deployment: "x\\u061c*"\n    environment_type:', "15: ", "061C"),
    ],
)
def test_control_and_format_characters_exit_2_with_the_line(
    database: Database, run: Any, tmp_path: Path, replace: str, by: str, where: str, char: str
) -> None:
    assert replace in DOCUMENT
    text = DOCUMENT.replace(replace, by, 1)
    # The deployment case also moves the old deployment value under environment_type: a second
    # mistake in the same entry, reported too.
    lines = 2 if replace == "    deployment:" else 1
    assert_refused(run, database, write(tmp_path, text), where, f"U+{char}", lines)


def test_one_bad_entry_writes_nothing(database: Database, run: Any, tmp_path: Path) -> None:
    bad = DOCUMENT + "  - {name: late, account: a, project: p, aws: {role_arn: nope}}\n"
    result = run("mappings", "apply", "--prune", write(tmp_path, bad))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {tmp_path / 'mappings.yaml'}:19: mappings[2].aws")
    assert store.load(database) == (0, [])


def test_unreadable_file_exits_2(database: Database, run: Any, tmp_path: Path) -> None:
    missing = run("mappings", "apply", str(tmp_path / "nope.yaml"))
    assert missing.exit_code == 2
    assert (
        missing.stderr
        == f"error: {tmp_path / 'nope.yaml'}: cannot read: No such file or directory\n"
    )
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00mappings")
    result = run("mappings", "apply", str(binary))
    assert (result.exit_code, result.stderr) == (2, f"error: {binary}: not UTF-8 text\n")
    assert run("mappings", "apply").exit_code == 2  # click usage error: FILE missing


def test_bad_configuration_exits_2_naming_the_variable(tmp_path: Path) -> None:
    env = {"STS_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", "STS_LOG_FORMAT": "xml"}
    for args in (["db", "upgrade"], ["db", "current"], ["mappings", "list"]):
        result = CliRunner().invoke(sts, args, env=env)
        assert result.exit_code == 2
        assert result.stderr == "error: STS_LOG_FORMAT: must be json or text\n"
    result = CliRunner().invoke(sts, ["db", "current"], env={"STS_DATABASE_URL": "nope://"})
    assert result.exit_code == 2
    assert result.stderr.startswith("error: STS_DATABASE_URL: ")
    assert not (tmp_path / "x.db").exists()


# -- operation failures: exit 1, one line ---------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=2",
        "sqlite:////nonexistent-directory/sts.db",
    ],
)
@pytest.mark.parametrize(
    "args",
    [["db", "upgrade"], ["db", "current"], ["mappings", "list"], ["mappings", "remove", "x"]],
)
def test_unreachable_database_exits_1(url: str, args: list[str]) -> None:
    result = CliRunner().invoke(sts, args, env={"STS_DATABASE_URL": url})
    if url.startswith("sqlite") and args == ["db", "current"]:
        # Nothing to connect to, and nothing created by asking.
        assert (result.exit_code, result.stdout) == (0, "none (not migrated: run sts db upgrade)\n")
        return
    assert result.exit_code == 1
    if url.startswith("sqlite") and args == ["mappings", "list"]:
        # A read-only command: the missing file is named, never created.
        assert result.stderr == (
            "error: database /nonexistent-directory/sts.db does not exist: "
            "run sts db upgrade to create it\n"
        )
        return
    assert result.stderr.startswith("error: database unreachable: ")
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.output


def test_apply_to_unmigrated_database_exits_1(run: Any, database_url: str, tmp_path: Path) -> None:
    for args in (
        ["mappings", "apply", write(tmp_path, DOCUMENT)],
        ["mappings", "list"],
        ["mappings", "remove", "x"],
    ):
        result = run(*args)
        assert result.exit_code == 1
        assert result.stderr.startswith("error: database not migrated")
        assert result.stderr.rstrip().endswith("run sts db upgrade")
    db = Database(database_url)
    try:
        assert db.current() is None
    finally:
        db.dispose()


def test_db_upgrade_and_current(run: Any, database_url: str) -> None:
    db = Database(database_url)
    try:
        head = db.head()
        before = run("db", "current")
        assert (before.exit_code, before.stdout) == (0, "none (not migrated: run sts db upgrade)\n")
        upgraded = run("db", "upgrade")
        assert upgraded.exit_code == 0, upgraded.output
        assert upgraded.stdout == f"database upgraded from empty to {head} (head)\n"
        assert run("db", "upgrade").stdout == f"database already at {head} (head)\n"
        assert run("db", "current").stdout == f"{head} (head)\n"
        assert db.current() == head
        assert store.revision(db) == 0
    finally:
        db.dispose()


# -- the Database object ------------------------------------------------------------------


def test_database_basics(database: Database) -> None:
    database.ping()
    assert store.load(database) == (0, [])
    specs = parse_document(DOCUMENT)
    diff = store.apply(database, specs, actor="t", source="test")
    assert (diff.revision, diff.changed) == (1, True)
    assert store.remove(database, "orders-prod", actor="t", source="test") is True
    assert store.remove(database, "orders-prod", actor="t", source="test") is False
    assert store.revision(database) == 2
    with pytest.raises(ValueError, match="duplicate"):
        store.apply(database, [specs[0], specs[0]], actor="t", source="test")


def test_sqlite_connections_are_configured(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'pragmas.db'}")
    try:
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    finally:
        db.dispose()


def test_installed_command_runs_the_groups(database_url: str, tmp_path: Path) -> None:
    """Through the real ``sts`` entry point, as an operator types it."""
    env = {**os.environ, "STS_DATABASE_URL": database_url}
    env.pop("STS_BROKER_ISSUER", None)
    path = write(tmp_path, DOCUMENT)
    outputs = []
    for args in (["db", "upgrade"], ["mappings", "apply", path], ["mappings", "list", "--json"]):
        result = run_sts(*args, env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    assert "+ create orders-prod" in outputs[1]
    # Defaults filled in, but the token as stored: unset here (reference section 13).
    assert parse_document(outputs[2]) == sorted(parse_document(DOCUMENT), key=lambda s: s.name)
    assert '"token"' not in outputs[2]


def test_concurrent_applies_queue_and_get_distinct_revisions(database: Database) -> None:
    """The revision row is locked first, so a second writer waits and then bumps again."""
    first_spec, second_spec = parse_document(DOCUMENT)
    applied, release = threading.Event(), threading.Event()
    results: dict[str, Any] = {}

    def first() -> None:
        with database.session() as session:
            results["first"] = apply_specs(
                session, [first_spec], prune=False, dry_run=False, actor="a", source="t"
            )
            applied.set()
            release.wait(10)

    def second() -> None:
        results["second"] = store.apply(database, [second_spec], actor="b", source="t")

    one = threading.Thread(target=first)
    one.start()
    assert applied.wait(10)
    two = threading.Thread(target=second)
    two.start()
    two.join(0.5)
    assert two.is_alive(), "the second apply did not wait for the first"
    release.set()
    one.join(10)
    two.join(10)
    assert (results["first"].revision, results["second"].revision) == (1, 2)
    assert store.revision(database) == 2
    assert [(r["name"], r["revision"]) for r in history(database)] == [
        ("orders-prod", 1),
        ("analytics-gcp", 2),
    ]


def test_every_mistake_is_reported_in_one_run(database: Database, run: Any, tmp_path: Path) -> None:
    text = """\
mappings:
  - name: first-ok
    account: acc
    project: proj
    aws: {role_arn: arn:aws:iam::123456789012:role/ok}
  - name: Bad-Name
    account: acc
    project: proj
    aws: {role_arn: arn:aws:iam::123456789012:role/ok}
  - name: bad-duration
    account: acc
    project: proj
    aws: {role_arn: arn:aws:iam::123456789012:role/ok, duration_seconds: 5}
  - name: first-ok
    account: acc
    project: proj
    aws: {role_arn: arn:aws:iam::123456789012:role/ok}
  - name: bad-gcp
    account: acc
    project: proj
    gcp: {workload_identity_provider: nope}
"""
    path = write(tmp_path, text)
    result = run("mappings", "apply", path)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: {path}:6: mappings[1].name: must match [a-z0-9][a-z0-9-]{{0,62}}",
        f"error: {path}:13: mappings[2].aws.duration_seconds: must be 900..43200",
        f"error: {path}:14: mappings[3].name: duplicate name 'first-ok' (first at line 2)",
        f"error: {path}:21: mappings[4].gcp.workload_identity_provider: must be "
        "//iam.googleapis.com/projects/<number>/locations/global/"
        "workloadIdentityPools/<pool>/providers/<provider>",
    ]
    assert store.load(database) == (0, [])


def test_a_flood_of_mistakes_is_cut_short_and_counted(
    database: Database, run: Any, tmp_path: Path
) -> None:
    entries = "".join(f"  - name: Bad{n}\n    account: a\n    project: p\n" for n in range(80))
    path = write(tmp_path, "mappings:\n" + entries)
    result = run("mappings", "apply", path)
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 51
    # Two mistakes an entry (the name, and no cloud): 160 in all, 50 shown.
    assert lines[-1] == f"error: {path}: 110 more mistakes not shown"
    assert store.load(database) == (0, [])


def test_the_actor_comes_from_the_option_or_sts_actor_and_the_host_is_recorded(
    database: Database, database_url: str, tmp_path: Path
) -> None:
    path = write(tmp_path, DOCUMENT)

    def invoke(*args: str, **env: str) -> Result:
        full = {"STS_DATABASE_URL": database_url, "USER": "alice", **env}
        return CliRunner().invoke(sts, list(args), env=full)

    assert invoke("mappings", "apply", path, STS_ACTOR="deploy-job").exit_code == 0
    assert invoke("mappings", "remove", "orders-prod", "--actor", "bob@example.com",
                  STS_ACTOR="deploy-job").exit_code == 0  # fmt: skip
    rows = history(database)
    assert [(r["action"], r["actor"]) for r in rows] == [
        ("create", "deploy-job"),
        ("create", "deploy-job"),
        ("delete", "bob@example.com"),
    ]
    assert {r["source"] for r in rows} == {f"cli:{socket.gethostname()}"}
    for value in ("", "   ", "a\nb", "x\u202ey", "z" * 256):
        for refused in (
            invoke("mappings", "apply", path, "--actor", value),
            invoke("mappings", "apply", path, STS_ACTOR=value),
        ):
            assert refused.exit_code == 2, refused.output
            (line,) = refused.stderr.strip().splitlines()
            assert "must be 1..255 printable characters" in line
    assert len(history(database)) == 3


def test_several_mistakes_in_one_entry_are_each_reported(
    database: Database, run: Any, tmp_path: Path
) -> None:
    text = """\
mappings:
  - name: Bad
    account: "acc*"
    project: p
    environment_type: staging
    enabled: "yes"
    aws: {role_arn: nope}
"""
    path = write(tmp_path, text)
    result = run("mappings", "apply", path)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"error: {path}:2: mappings[0].name: must match [a-z0-9][a-z0-9-]{{0,62}}",
        f"error: {path}:3: mappings[0].account: must be exact (no glob)",
        f"error: {path}:5: mappings[0].environment_type: must be production, preview, "
        'development or "*"',
        f"error: {path}:6: mappings[0].enabled: must be true or false",
        f"error: {path}:7: mappings[0].aws.role_arn: must be an IAM role ARN "
        "(arn:aws:iam::<account>:role/…)",
    ]
    assert store.load(database) == (0, [])
