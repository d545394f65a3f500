""":class:`sts.mappings.watch.MappingsFile` on a real SQLite database: what one look at the file
does in each case (the service around it: tests/functional/test_mappings_file.py)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sts.db import Database
from sts.mappings import store
from sts.mappings.watch import MappingsFile, Outcome

GOOD = """\
mappings:
  - name: orders
    account: a
    project: p
    aws:
      role_arn: arn:aws:iam::123456789012:role/orders
"""
BAD = GOOD.replace("account: a", "account: a\n    lifetime: 3").replace("role/orders", "x")


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'sts.db'}")
    db.upgrade()
    yield db
    db.dispose()


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]


def test_each_look_applies_only_a_changed_content(
    database: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "mappings.yaml"
    path.write_text(GOOD)
    watcher = MappingsFile(str(path), database)
    assert watcher.check() == Outcome("applied", created=1, revision=1)
    assert watcher.check() == Outcome("unchanged")
    # Written again with the same content (a new stat): read, and nothing to do.
    path.write_text(GOOD)
    os.utime(path, ns=(1, 1))
    assert watcher.check() == Outcome("unchanged")
    history = store.load(database)
    assert [spec.name for spec in history[1]] == ["orders"]

    caplog.set_level(logging.INFO, logger="sts.mappings.file")
    path.write_text(BAD)
    assert watcher.check() == Outcome("refused")
    logged = errors(caplog)
    assert len(logged) == 2, logged
    assert all(f"{path}:" in line for line in logged)
    assert store.revision(database) == 1
    # The same mistakes again, or the same file looked at again: not logged again.
    os.utime(path, ns=(2, 2))
    assert watcher.check() == Outcome("unchanged")
    assert watcher.check() == Outcome("unchanged")
    assert len(errors(caplog)) == 2

    path.unlink()
    assert watcher.check() == Outcome("refused")
    assert watcher.check() == Outcome("refused")
    assert len(errors(caplog)) == 3
    assert "cannot read" in errors(caplog)[-1]

    path.write_text(GOOD.replace("project: p", "project: q"))
    assert watcher.check() == Outcome("applied", updated=1, revision=2)
    assert watcher.actor == f"file:{path}"


def test_a_database_that_fails_is_tried_again_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "mappings.yaml"
    path.write_text(GOOD)
    # Migrated? No: the tables do not exist, so every apply fails.
    unmigrated = Database(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        watcher = MappingsFile(str(path), unmigrated)
        caplog.set_level(logging.WARNING, logger="sts.mappings.file")
        assert watcher.check() == Outcome("failed")
        assert watcher.check() == Outcome("failed")
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "tried again" in warnings[0].getMessage()
        unmigrated.upgrade()
        assert watcher.check() == Outcome("applied", created=1, revision=1)
    finally:
        unmigrated.dispose()
