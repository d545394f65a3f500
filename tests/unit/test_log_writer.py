"""``sts.logs.write_line``: the access line without a log record, exactly the line the
logging path writes, and a real record whenever anyone else listens."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator

import pytest

from sts import logs

FIELDS = {
    "request_id": "abc",
    "method": "POST",
    "path": "/token\n\u202e",
    "status": 200,
    "latency_ms": 0.25,
    "outcome": "ok",
    "cache_hit": True,
}


@pytest.fixture(params=["json", "text"])
def pipe_log(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    """The service's logging set up on a pipe instead of stderr; yields the format and the
    pipe's read end."""
    read_end, write_end = os.pipe()
    saved = os.dup(sys.stderr.fileno())
    os.dup2(write_end, sys.stderr.fileno())
    try:
        logs.configure(request.param)
        yield request.param, read_end
    finally:
        assert logs._handler is not None
        logs._handler.flush()
        os.dup2(saved, sys.stderr.fileno())
        for fd in (saved, read_end, write_end):
            os.close(fd)
        logs.configure("json")


def lines(read_end: int) -> list[str]:
    assert logs._handler is not None
    logs._handler.flush()
    os.set_blocking(read_end, False)
    return os.read(read_end, 65536).decode().splitlines()


def without_time(line: str, log_format: str) -> object:
    if log_format == "json":
        doc = json.loads(line)
        doc.pop("ts")
        return doc
    return line.split(" ", 1)[1]


def test_the_same_line_as_a_record_makes(pipe_log: tuple[str, int]) -> None:
    log_format, read_end = pipe_log
    access = logging.getLogger("sts.access")
    logs.write_line(access, logging.INFO, "request", dict(FIELDS))
    # A filter on the logger sends the same call down the logging path (a real record).
    access.addFilter(lambda record: True)
    try:
        logs.write_line(access, logging.INFO, "request", dict(FIELDS))
    finally:
        access.filters.clear()
    direct, recorded = lines(read_end)
    assert without_time(direct, log_format) == without_time(recorded, log_format)
    assert "\n\u202e" not in direct
    assert "\\n\\u202e" in direct  # escaped alike in both formats


def test_another_handler_gets_a_record(pipe_log: tuple[str, int]) -> None:
    _, read_end = pipe_log
    seen: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    capture = Capture()
    logging.getLogger("sts").addHandler(capture)
    try:
        logs.write_line(logging.getLogger("sts.access"), logging.INFO, "request", dict(FIELDS))
    finally:
        logging.getLogger("sts").removeHandler(capture)
    assert [record.getMessage() for record in seen] == ["request"]
    assert seen[0].__dict__["outcome"] == "ok"
    assert len(lines(read_end)) == 1  # and the service's own line is still written


def test_a_line_too_long_is_shortened_on_the_direct_path(pipe_log: tuple[str, int]) -> None:
    _, read_end = pipe_log
    fields = {**FIELDS, "path": "/" + "a" * 60_000}
    logs.write_line(logging.getLogger("sts.access"), logging.INFO, "request", fields)
    (line,) = lines(read_end)
    assert len(line.encode()) < logs.MAX_LINE_BYTES
    assert "[shortened]" in line
