"""The live mapping index: never a database read on a request thread, a refresher per process."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from sts.db import Database
from sts.errors import TemporarilyUnavailable
from sts.mappings.live import LiveMappings
from tests.forking import in_child
from tests.functional.conftest import DEFAULT_MAPPINGS, seed


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


@pytest.fixture
def database_file(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'sts.db'}"
    seed(url).dispose()
    return url


@pytest.fixture
def live(database_file: str) -> Iterator[LiveMappings]:
    database = Database(database_file)
    mappings = LiveMappings(database, interval=0.05)
    yield mappings
    mappings.stop()
    database.dispose()


def test_before_the_first_load_current_refuses_at_once_without_reading(
    live: LiveMappings,
) -> None:
    checkouts: list[int] = []
    sa.event.listen(live._database.engine, "checkout", lambda *_: checkouts.append(1))
    with pytest.raises(TemporarilyUnavailable) as refused:
        live.current()
    assert refused.value.description == "mappings unavailable"
    assert refused.value.headers == {"Retry-After": "5"}
    assert checkouts == []


def test_a_request_just_after_start_waits_for_the_first_load_instead_of_503(
    live: LiveMappings,
) -> None:
    live.start()
    assert len(live.current()) == 5


def test_once_loaded_current_never_reads_the_database_on_the_calling_thread(
    live: LiveMappings,
) -> None:
    readers: set[int] = set()

    def checkout(*_: Any) -> None:
        readers.add(threading.get_ident())

    sa.event.listen(live._database.engine, "checkout", checkout)
    live.start()
    wait_until(lambda: live.loaded, "the index never loaded")
    wait_until(lambda: len(readers) >= 1, "the refresher never read the database")
    for _ in range(200):
        assert len(live.current()) == 5
    assert threading.get_ident() not in readers


def test_forked_child_runs_its_own_refresher_that_follows_changes(
    live: LiveMappings, database_file: str
) -> None:
    live.start()
    wait_until(lambda: live.loaded, "the index never loaded")
    loaded = live.current().revision

    def child() -> bool:
        live.start()
        running = any(
            t.name == "sts-mappings" and t.is_alive() and t is not threading.main_thread()
            for t in threading.enumerate()
        )
        changed = DEFAULT_MAPPINGS.replace("duration_seconds: 3600", "duration_seconds: 7200")
        seed(database_file, changed).dispose()
        deadline = time.monotonic() + 10
        while live.current().revision == loaded:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return running and live.running

    # Fork while a parent thread holds the refresh lock, as the refresher does mid-refresh.
    with live._lock:
        code = in_child(child)
    assert code == 0
    # The parent's own refresher is untouched and follows the child's change too.
    assert live.running
    wait_until(lambda: live.current().revision != loaded, "the parent missed the change")
