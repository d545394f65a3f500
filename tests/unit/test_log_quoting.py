"""Text log lines parse back to exactly the fields that were logged (docs/reference.md section
10): a value containing whitespace, ``=`` or ``"`` is written quoted (``key="a b"``, ``\\"`` and
``\\\\`` inside), control and format characters are escaped, so no caller can add a field of its
own to a line, and a line stays within :data:`sts.logs.MAX_LINE_BYTES`."""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sts import logs

# One field: a key (no space, no "="), then a quoted value or a run without space or quote.
_FIELD = r'[^\s="]+=(?:"(?:[^"\\]|\\.)*"|[^\s"]*)'
_FIELD_TOKEN = re.compile(r'(?P<key>[^\s="]+)=(?P<value>"(?:[^"\\]|\\.)*"|[^\s"]*)')
_FIELDS = re.compile(rf"(?:{_FIELD})(?: {_FIELD})*")
_HEAD = re.compile(
    r"(?P<ts>\d\d:\d\d:\d\d) (?P<level>[A-Z]+) +(?P<logger>[^\s:]+): "
    r'(?P<msg>"(?:[^"\\]|\\.)*"|[^="]*?)(?: (?P<fields>[^\s="]+=.*))?'
)
_ESCAPE = re.compile(r"\\(?:x([0-9a-f]{2})|u([0-9a-f]{4})|U([0-9a-f]{8})|(.))", re.DOTALL)
_NAMED = {"\\": "\\", '"': '"', "n": "\n", "r": "\r", "t": "\t"}


def unescape(text: str, *, message: bool = False) -> str:
    """The value as logged, from its written form (quotes removed, escapes decoded). An
    unquoted message may hold spaces (it is text for people), never ``=`` or ``"``."""
    if text.startswith('"'):
        assert len(text) >= 2, text
        assert text.endswith('"'), text
        text = text[1:-1]
    else:
        assert '"' not in text, text
        assert "=" not in text, text
        assert message or not any(char.isspace() for char in text), text

    def one(match: re.Match[str]) -> str:
        code = match.group(1) or match.group(2) or match.group(3)
        if code:
            return chr(int(code, 16))
        named = match.group(4)
        assert named in _NAMED, f"unknown escape \\{named} in {text!r}"
        return _NAMED[named]

    decoded = _ESCAPE.sub(one, text)
    # Every backslash in the written form starts an escape.
    assert "\\" not in _ESCAPE.sub("", text), text
    return decoded


def parse(line: str) -> dict[str, str]:
    """A text line's message and fields, by the grammar above; anything else fails."""
    assert "\n" not in line
    assert "\r" not in line
    head = _HEAD.fullmatch(line)
    assert head is not None, line
    parsed = {"logger": head["logger"], "msg": unescape(head["msg"], message=True)}
    fields = head["fields"] or ""
    if fields:
        assert _FIELDS.fullmatch(fields), fields
    for token in _FIELD_TOKEN.finditer(fields):
        key = token["key"]
        assert key not in parsed, f"{key} twice in {line!r}"
        parsed[key] = unescape(token["value"])
    return parsed


def render(msg: str, fields: dict[str, Any]) -> str:
    return logs.TextFormatter().line(time.time(), "INFO", "sts.access", msg, dict(fields))


HOSTILE = [
    "/x status=200",
    "/x%20status=200",
    "/x status=200 outcome=ok",
    "a b",
    "a=b",
    "=",
    '"',
    '""',
    'say "hi"',
    '"quoted" status=200',
    "back\\slash",
    'back\\" status=200',
    "ends with backslash\\",
    '\\"',
    "tab\there",
    "line\nstatus=200",
    "cr\r\nstatus=200",
    "\x1b[31mred\x1b[0m status=200",
    "\u202etxt.exe status=200",
    "nbsp\u00a0status=200",
    "ideographic\u3000status=200",
    "nel\u0085status=200",
    "\x00nul",
    "",
    " ",
    "plain",
    "/token",
    "ünïcödé wörds",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_a_value_parses_back_exactly_and_adds_no_field(value: str) -> None:
    fields = {"request_id": "abc", "path": value, "status": 404, "cache_hit": False}
    line = render("request", fields)
    parsed = parse(line)
    assert parsed == {
        "logger": "sts.access",
        "msg": "request",
        "request_id": "abc",
        "path": value,
        "status": "404",
        "cache_hit": "False",
    }
    # Nothing the caller sent is a control character of the written line.
    assert not any(char in line for char in ("\n", "\r", "\x1b", "\u202e", "\x00", "\u0085"))


def test_plain_values_are_written_as_before() -> None:
    line = render("request", {"request_id": "abc", "path": "/token", "status": 200})
    assert line.endswith(" INFO    sts.access: request request_id=abc path=/token status=200")


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("/x status=200", 'path="/x status=200"'),
        ("a=b", 'path="a=b"'),
        ('say "hi"', r'path="say \"hi\""'),
        ('back\\" x', r'path="back\\\" x"'),
        ("line\nstatus=200", r'path="line\nstatus=200"'),
        ("back\\slash", r"path=back\\slash"),
    ],
)
def test_quoting_and_escapes_as_documented(value: str, written: str) -> None:
    line = render("request", {"path": value, "status": 404})
    assert line.endswith(f" {written} status=404"), line


def test_every_field_of_many_hostile_ones_parses_back() -> None:
    fields = {f"f{i}": value for i, value in enumerate(HOSTILE)}
    parsed = parse(render("request", fields))
    assert parsed == {"logger": "sts.access", "msg": "request", **fields}


@pytest.mark.parametrize(
    "msg", ["loaded x=1", 'said "no"', "plain words", "status=200", "a\nstatus=200"]
)
def test_a_message_cannot_pass_for_a_field(msg: str) -> None:
    parsed = parse(render(msg, {"status": 404}))
    assert parsed == {"logger": "sts.access", "msg": msg, "status": "404"}


@pytest.mark.parametrize("unit", ['"', "\\", " ", "=", "\x1b", "\u202e", "a"])
def test_a_long_hostile_value_is_shortened_within_the_bound_and_still_parses(unit: str) -> None:
    value = "/" + unit * 20_000 + " status=200"
    line = render("request", {"request_id": "abc", "path": value, "status": 404})
    assert len((line + "\n").encode()) <= logs.MAX_LINE_BYTES
    parsed = parse(line)
    assert parsed["status"] == "404"
    assert parsed["shortened"] == "path"
    assert parsed["path"].endswith("[shortened]")
    assert value.startswith(parsed["path"].removesuffix("[shortened]"))


@pytest.fixture
def text_pipe() -> Iterator[int]:
    """The service's logging in ``text`` format on a pipe instead of stderr; yields the
    pipe's read end."""
    read_end, write_end = os.pipe()
    saved = os.dup(sys.stderr.fileno())
    os.dup2(write_end, sys.stderr.fileno())
    try:
        logs.configure("text")
        yield read_end
    finally:
        assert logs._handler is not None
        logs._handler.flush()
        os.dup2(saved, sys.stderr.fileno())
        for fd in (saved, read_end, write_end):
            os.close(fd)
        logs.configure("json")


def written(read_end: int) -> list[str]:
    assert logs._handler is not None
    logs._handler.flush()
    os.set_blocking(read_end, False)
    return os.read(read_end, 65536).decode().splitlines()


def test_the_access_line_of_a_hostile_path_parses_back(text_pipe: int) -> None:
    """The access logger's own call (sts.api.log_request -> logs.write_line): a path such as
    ``/x%20status=200``, decoded, must not add ``status=200`` or any other field."""
    from sts.api import log_request

    path = '/x status=200 outcome=ok cause="x" pid=1\nlevel=ERROR'
    log_request("abc", "GET", path, 404, time.perf_counter(), {"outcome": "not_found"})
    (line,) = written(text_pipe)
    parsed = parse(line)
    assert parsed["path"] == path
    assert parsed["status"] == "404"
    assert parsed["outcome"] == "not_found"
    assert parsed["pid"] == str(os.getpid())
    assert set(parsed) == {
        "logger",
        "msg",
        "request_id",
        "method",
        "path",
        "status",
        "latency_ms",
        "pid",
        "outcome",
    }
