"""Alembic migrations on SQLite and PostgreSQL: up from empty, down to empty, no model drift,
the root alembic.ini, packaging, and the helper for mappings kept in a team's own history."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from sts.db import MIGRATION_LOCK, Database, MigrationRefused, NotMigratedError, migrations_dir
from sts.db.models import all_tables
from sts.mappings import store
from sts.mappings.document import MappingFileError, parse_document
from sts.mappings.models import MappingChange
from sts.mappings.spec import MappingSpec
from tests.functional.serving import run_sts

REPO = Path(__file__).resolve().parents[2]
TABLES = {
    "role_mappings",
    "mapping_revision",
    "mapping_changes",
    "issuance_events",
    "signing_keys",
    "revocations",
    "revocation_revision",
}
ROLE = "arn:aws:iam::123456789012:role/orders-api"
TEAM_REVISION = "7ea3c0ffee01"


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    yield db
    db.dispose()


def tables(db: Database) -> set[str]:
    with db.engine.connect() as conn:
        return set(sa.inspect(conn).get_table_names())


def test_upgrade_from_empty_then_downgrade_to_empty(database: Database) -> None:
    assert tables(database) == set()
    assert database.current() is None
    with pytest.raises(NotMigratedError, match="run sts db upgrade"):
        database.require_current()

    database.upgrade()
    assert tables(database) == TABLES | {"alembic_version"}
    assert database.current() == database.head()
    database.require_current()
    assert store.revision(database) == 0
    with database.engine.connect() as conn:
        inspector = sa.inspect(conn)
        indexes = {index["name"]: index for index in inspector.get_indexes("role_mappings")}
        assert indexes["ix_role_mappings_account"]["column_names"] == ["account"]
        unique = inspector.get_unique_constraints("role_mappings")
        assert [constraint["column_names"] for constraint in unique] == [["name"]]

    with pytest.raises(MigrationRefused, match="--undo-service-schema"):
        database.downgrade("base")
    assert tables(database) == TABLES | {"alembic_version"}
    database.downgrade("base", undo_service_schema=True)
    assert tables(database) <= {"alembic_version"}
    assert database.current() is None

    database.upgrade()
    assert tables(database) == TABLES | {"alembic_version"}


def test_autogenerate_diff_against_the_models_is_empty(database: Database) -> None:
    database.upgrade()
    with database.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, all_tables()) == []


def test_root_alembic_ini_works_from_the_repository_root(database: Database) -> None:
    env = {**os.environ, "STS_DATABASE_URL": database.url.render_as_string(hide_password=False)}
    output = {}
    for command in ("upgrade", "check", "current"):
        result = subprocess.run(
            [sys.executable, "-m", "alembic", command, *(["head"] if command == "upgrade" else [])],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        output[command] = result.stdout + result.stderr
    assert database.current() == database.head()
    # `alembic check` compares the migrated database with env.py's target_metadata.
    assert "No new upgrade operations detected" in output["check"]
    assert f"{database.head()} (head)" in output["current"]


def test_migrations_ship_in_the_package() -> None:
    """pyproject lists every package by hand (to map migrations/ to sts._migrations)."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {"sts._migrations": "migrations"}
    on_disk = {
        ".".join(path.parent.relative_to(REPO).parts)
        for path in (REPO / "sts").rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert on_disk | {"sts._migrations", "sts._migrations.versions"} == set(config["packages"])
    assert migrations_dir() == REPO / "migrations"
    versions = list((REPO / "migrations" / "versions").glob("*.py"))
    assert versions
    for path in versions:
        if path.name != "__init__.py":
            revision, _, slug = path.stem.partition("_")
            assert len(revision) == 12
            assert slug


DECOY_ENV = """\
raise SystemExit("the decoy migrations directory was used")
"""


def test_installed_wheel_uses_its_own_migrations_never_a_decoy_beside_it(tmp_path: Path) -> None:
    """The package installed from its wheel, with another project's ``migrations/`` next to it
    and in the working directory: ``sts db upgrade`` runs the migrations inside the package."""
    # Built from a copy: a build in the checkout would leave build/ behind.
    source = tmp_path / "src"
    for name in ("sts", "migrations"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--wheel-dir",
            str(tmp_path / "dist"),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("zuplo_sts-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    for decoy in (site / "migrations", tmp_path / "work" / "migrations"):
        (decoy / "versions").mkdir(parents=True)
        (decoy / "env.py").write_text(DECOY_ENV)
        (decoy / "script.py.mako").write_text("")
    (tmp_path / "work" / "alembic.ini").write_text("[alembic]\nscript_location = migrations\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STS_")}
    env["PYTHONPATH"] = str(site)
    env["STS_DATABASE_URL"] = f"sqlite:///{tmp_path / 'work' / 'sts.db'}"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args],
            env=env,
            cwd=tmp_path / "work",
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    where = run("-c", "import sts.db; print(sts.db.__file__); print(sts.db.migrations_dir())")
    assert where.returncode == 0, where.stderr
    module, directory = where.stdout.split()
    # The wheel's copy is the one imported, not the checkout's editable install.
    assert Path(module).is_relative_to(site)
    assert Path(directory) == site / "sts" / "_migrations"
    upgraded = run("-m", "sts", "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert "decoy" not in upgraded.stdout + upgraded.stderr
    current = run("-m", "sts", "db", "current")
    assert current.stdout.strip().endswith("(head)"), current.stdout + current.stderr


def team_revision(directory: Path, head: str, document: str) -> Path:
    """A team's own revision after the zuplo-sts head, keeping mappings in its history."""
    directory.mkdir(exist_ok=True)
    path = directory / f"{TEAM_REVISION}_team_mappings.py"
    path.write_text(
        textwrap.dedent(
            f'''\
            """Team mappings."""
            from sts.mappings.migration import apply_mappings, revert_mappings

            revision = "{TEAM_REVISION}"
            down_revision = "{head}"
            branch_labels = None
            depends_on = None

            MAPPINGS = {document!r}


            def upgrade() -> None:
                apply_mappings(MAPPINGS, revision=revision)


            def downgrade() -> None:
                revert_mappings(revision=revision)
            '''
        )
    )
    return directory


BEFORE = f"""\
mappings:
  - {{name: kept, account: a, project: p, aws: {{role_arn: "{ROLE}"}}}}
  - {{name: edited, account: a, project: p, aws: {{role_arn: "{ROLE}"}}}}
"""
TEAM = f"""\
mappings:
  - {{name: added, account: a, project: p, aws: {{role_arn: "{ROLE}"}}}}
  - {{name: edited, account: a, project: p, aws: {{role_arn: "{ROLE}", duration_seconds: 900}}}}
"""


def by_name(specs: list[MappingSpec]) -> dict[str, MappingSpec]:
    return {spec.name: spec for spec in specs}


def test_migration_helper_applies_and_reverts(database: Database, tmp_path: Path) -> None:
    database.upgrade()
    head = database.head()
    assert head is not None
    store.apply(database, parse_document(BEFORE), actor="ops", source="cli")
    original = by_name(store.load(database)[1])
    versions = team_revision(tmp_path / "versions", head, TEAM)

    for cycle in range(2):
        database.upgrade("head", version_locations=[versions])
        assert database.current() == TEAM_REVISION
        # A database ahead of the shipped head (with the team's revisions) counts as migrated.
        database.require_current()
        revision, specs = store.load(database)
        assert revision == 2 + 2 * cycle
        assert set(by_name(specs)) == {"kept", "edited", "added"}
        assert by_name(specs)["edited"].aws.duration_seconds == 900  # type: ignore[union-attr]
        assert by_name(specs)["kept"] == original["kept"]

        database.downgrade(head, version_locations=[versions])
        assert database.current() == head
        revision, specs = store.load(database)
        assert revision == 3 + 2 * cycle
        assert by_name(specs) == original

    with database.engine.connect() as conn:
        rows = conn.execute(
            sa.select(MappingChange.source, MappingChange.action, MappingChange.name)
            .where(MappingChange.source.like("alembic:%"))
            .order_by(MappingChange.id)
        ).all()
        actors = conn.execute(
            sa.select(MappingChange.actor).where(MappingChange.source.like("alembic:%"))
        ).scalars()
        assert set(actors) == {"alembic"}
    applied, reverted = f"alembic:{TEAM_REVISION}", f"alembic:{TEAM_REVISION}:revert"
    one_cycle = [
        (applied, "update", "edited"),
        (applied, "create", "added"),
        (reverted, "delete", "added"),
        (reverted, "update", "edited"),
    ]
    assert [tuple(row) for row in rows] == one_cycle * 2


def test_revert_restores_the_state_before_the_upgrade(database: Database, tmp_path: Path) -> None:
    """Edits made after the upgrade are undone too: the downgrade restores the earlier state."""
    database.upgrade()
    head = database.head()
    assert head is not None
    store.apply(database, parse_document(BEFORE), actor="ops", source="cli")
    original = by_name(store.load(database)[1])
    versions = team_revision(tmp_path / "versions", head, TEAM)
    database.upgrade("head", version_locations=[versions])
    assert store.remove(database, "added", actor="ops", source="cli")

    database.downgrade(head, version_locations=[versions])
    assert by_name(store.load(database)[1]) == original


def test_migration_with_an_invalid_document_changes_nothing(
    database: Database, tmp_path: Path
) -> None:
    database.upgrade()
    head = database.head()
    assert head is not None
    bad = TEAM.replace("duration_seconds: 900", "duration_seconds: 9")
    versions = team_revision(tmp_path / "versions", head, bad)
    with pytest.raises(MappingFileError, match=rf"^alembic:{TEAM_REVISION}:3: mappings\[1\]"):
        database.upgrade("head", version_locations=[versions])
    assert database.current() == head
    assert store.load(database) == (0, [])


def test_cli_runs_team_revisions_up_and_down(database_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "STS_DATABASE_URL": database_url}

    def sts(*args: str) -> subprocess.CompletedProcess[str]:
        return run_sts(*args, env=env)

    assert sts("db", "upgrade").returncode == 0
    database = Database(database_url)
    try:
        head = database.head()
        assert head is not None
        versions = team_revision(tmp_path / "versions", head, TEAM)
        up = sts("db", "upgrade", "--versions", str(versions))
        assert up.returncode == 0, up.stderr
        assert TEAM_REVISION in up.stdout
        assert set(by_name(store.load(database)[1])) == {"added", "edited"}
        down = sts("db", "downgrade", head, "--versions", str(versions))
        assert down.returncode == 0, down.stderr
        assert database.current() == head
        assert store.load(database)[1] == []
        missing = sts("db", "upgrade", "--versions", str(tmp_path / "nowhere"))
        assert missing.returncode == 2
    finally:
        database.dispose()


def readme_migration_example() -> tuple[str, list[list[str]]]:
    """The README's team revision (its Python block) and its two ``sts db`` commands, as
    written there."""
    text = (REPO / "README.md").read_text()
    section = text.split("### Mappings kept in your migration history", 1)[1]
    python = section.split("```python\n", 1)[1].split("```", 1)[0]
    shell = section.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [
        line.split("#", 1)[0].split()[1:] for line in shell.splitlines() if line.startswith("sts ")
    ]
    return python, commands


def seeded_service_rows(database: Database) -> dict[str, int]:
    """One row in each table of the service that holds what must never be lost."""
    from sts.db.models import IssuanceEvent

    with database.session() as session:
        session.add(
            IssuanceEvent(
                issuer="https://issuer.example",
                sub="s",
                account="a",
                project="p",
                deployment="d",
                environment_type="production",
                mapping="m",
                provider="aws",
                target=ROLE,
                outcome="issued",
            )
        )
    return row_counts(database)


def row_counts(database: Database) -> dict[str, int]:
    with database.engine.connect() as conn:
        names = set(sa.inspect(conn).get_table_names()) & TABLES
        return {
            name: conn.execute(sa.text(f"SELECT count(*) FROM {name}")).scalar_one()  # noqa: S608
            for name in sorted(names)
        }


def test_readme_migration_example_runs_as_written_and_keeps_the_service_tables(
    database_url: str, tmp_path: Path
) -> None:
    """The README's revision and commands, verbatim: up adds the mapping, down removes it, and
    the service's tables (the audit trail above all) are untouched by either."""
    python, commands = readme_migration_example()
    assert [command[:2] for command in commands] == [["db", "upgrade"], ["db", "downgrade"]]
    versions = tmp_path / "my-versions"
    versions.mkdir()
    (versions / "7f3a1c2b9d10_grant_orders_prod.py").write_text(python)
    env = {**os.environ, "STS_DATABASE_URL": database_url}
    assert run_sts("db", "upgrade", env=env).returncode == 0
    database = Database(database_url)
    try:
        before = seeded_service_rows(database)
        for command in commands:
            done = run_sts(*command, env=env, cwd=tmp_path)
            assert done.returncode == 0, done.stderr
            if command[1] == "upgrade":
                assert [spec.name for spec in store.load(database)[1]] == ["orders-prod"]
        assert tables(database) == TABLES | {"alembic_version"}
        after = row_counts(database)
        assert after["issuance_events"] == before["issuance_events"] == 1
        assert after["mapping_changes"] == 2  # the history keeps the grant and its revert
        assert store.load(database)[1] == []
        assert database.current() == database.head()
    finally:
        database.dispose()


def test_readme_revision_names_the_current_head() -> None:
    """Each new zuplo-sts revision moves the head: the README's example must move with it."""
    python, commands = readme_migration_example()
    head = ScriptDirectory.from_config(Database("sqlite://").alembic_config()).get_current_head()
    assert f'down_revision = "{head}"' in python
    assert commands[1][2] == head


@pytest.mark.parametrize(
    "parent",
    [
        pytest.param("4c5e7cca9f12", id="off-an-older-service-revision"),
        pytest.param(None, id="a-second-root"),
    ],
)
def test_upgrade_refuses_revisions_that_fork_the_history(
    database_url: str, tmp_path: Path, parent: str | None
) -> None:
    """Last round's README example (down_revision the first revision) reported success with
    two heads; its downgrade then dropped the audit trail. Now: exit 2, one line, nothing."""
    env = {**os.environ, "STS_DATABASE_URL": database_url}
    assert run_sts("db", "upgrade", env=env).returncode == 0
    database = Database(database_url)
    try:
        before = seeded_service_rows(database)
        head = database.current()
        versions = team_revision(tmp_path / "versions", "PARENT", TEAM)
        path = next(versions.iterdir())
        path.write_text(path.read_text().replace('"PARENT"', repr(parent)))
        refused = run_sts("db", "upgrade", "--versions", str(versions), env=env)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert len(refused.stderr.splitlines()) == 1, refused.stderr
        assert "head" in refused.stderr
        assert database.current() == head
        assert row_counts(database) == before
        assert store.load(database) == (0, [])
    finally:
        database.dispose()


def test_upgrade_accepts_a_merge_revision_joining_an_applied_one_to_the_head(
    database: Database, tmp_path: Path
) -> None:
    """A team revision applied on top of an older zuplo-sts head is joined to the new head by a
    merge revision (README): one head, descending from zuplo-sts's."""
    database.upgrade("c3b1e0d5a9f4")  # an older release's head
    versions = team_revision(tmp_path / "versions", "c3b1e0d5a9f4", TEAM)
    config = database.alembic_config([versions])
    from alembic import command

    with database.engine.begin() as conn:  # applied by that older release, unchecked
        config.attributes["connection"] = conn
        command.upgrade(config, TEAM_REVISION)
    head = database.head()
    (versions / "0merge_team_head.py").write_text(
        f'revision = "0a0a0a0a0a0a"\ndown_revision = ("{TEAM_REVISION}", "{head}")\n'
        "def upgrade() -> None: ...\ndef downgrade() -> None: ...\n"
    )
    database.upgrade("heads", version_locations=[versions])
    assert database.current() == "0a0a0a0a0a0a"
    assert tables(database) == TABLES | {"alembic_version"}


@pytest.mark.parametrize("target", ["base", "4c5e7cca9f12", "c3b1"])
def test_downgrade_into_the_service_schema_needs_its_flag(
    database_url: str, tmp_path: Path, target: str
) -> None:
    env = {**os.environ, "STS_DATABASE_URL": database_url}
    assert run_sts("db", "upgrade", env=env).returncode == 0
    database = Database(database_url)
    try:
        before = seeded_service_rows(database)
        head = database.current()
        refused = run_sts("db", "downgrade", target, env=env)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert len(refused.stderr.splitlines()) == 1, refused.stderr
        assert "--undo-service-schema" in refused.stderr
        assert "audit trail" in refused.stderr
        assert database.current() == head
        assert row_counts(database) == before

        done = run_sts("db", "downgrade", target, "--undo-service-schema", env=env)
        assert done.returncode == 0, done.stderr
        assert database.current() != head
        assert "issuance_events" not in tables(database) or target != "base"
    finally:
        database.dispose()


@pytest.mark.parametrize("target", ["-1", "head", "nosuchrevision"])
def test_downgrade_refuses_targets_it_cannot_check(database_url: str, target: str) -> None:
    env = {**os.environ, "STS_DATABASE_URL": database_url}
    assert run_sts("db", "upgrade", env=env).returncode == 0
    refused = run_sts("db", "downgrade", "--", target, env=env)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert len(refused.stderr.splitlines()) == 1, refused.stderr


@pytest.mark.postgres
def test_replicas_upgrading_at_once_wait_for_each_other(postgres_url: str) -> None:
    """Every replica's init container runs ``sts db upgrade`` (deploy/kubernetes): one migrates,
    the others wait for it and then find the schema at head. Shown with the lock held here: an
    upgrade started meanwhile waits on it (seen in pg_locks), and finishes once it is free."""
    env = {**os.environ, "STS_DATABASE_URL": postgres_url}
    database = Database(postgres_url)
    try:
        with database.engine.connect() as holder:
            holder.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
            holder.commit()
            upgrades = [
                subprocess.Popen(
                    [sys.executable, "-m", "sts", "db", "upgrade"],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for _ in range(2)
            ]
            waiting = sa.text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            )
            deadline = time.monotonic() + 120
            while holder.execute(waiting).scalar_one() < 2:
                holder.commit()
                for upgrade in upgrades:
                    assert upgrade.poll() is None, upgrade.communicate()
                assert time.monotonic() < deadline, "the upgrades never waited for the lock"
                time.sleep(0.05)
            assert database.current() is None
            holder.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
            holder.commit()
        for upgrade in upgrades:
            _, err = upgrade.communicate(timeout=120)
            assert upgrade.returncode == 0, err
        head = ScriptDirectory.from_config(database.alembic_config()).get_current_head()
        assert database.current() == head
    finally:
        database.dispose()
