"""The bounded readiness probe: a hung check holds no caller and never piles up threads."""

from __future__ import annotations

import threading
import time

import pytest

from sts.services import BoundedProbe


def test_hung_probe_times_out_and_later_calls_wait_for_the_same_run() -> None:
    release = threading.Event()
    runs: list[int] = []

    def hung() -> None:
        runs.append(1)
        release.wait(10)

    probe = BoundedProbe(hung, timeout=0.2)
    try:
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(TimeoutError, match=r"no answer within 0\.2 s"):
                probe()
            assert 0.2 <= time.monotonic() - started < 1.5
        assert runs == [1]
    finally:
        release.set()
    probe()  # answers now, whether by the released run or a fresh one
    count = len(runs)
    probe()  # a finished run is never reused: a fresh check
    assert len(runs) == count + 1


def test_probe_error_is_raised_to_the_caller() -> None:
    def refused() -> None:
        raise ConnectionRefusedError("database refused")

    probe = BoundedProbe(refused, timeout=1.0)
    with pytest.raises(ConnectionRefusedError, match="database refused"):
        probe()
