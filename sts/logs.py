"""Logging set-up: one JSON object per line (default) or plain text for people.

Only fields we put there on purpose are logged; callers never pass tokens, secrets or
credentials to a logger (tests search the captured output for them).
"""

from __future__ import annotations

import atexit
import json
import logging
import multiprocessing.util
import os
import re
import sys
import threading
import time
import unicodedata
from collections import deque
from collections.abc import Callable
from typing import Any

from sts.forking import renew_after_fork

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


_last_second: list[Any] = [-1, ""]


def _timestamp(created: float) -> str:
    """ISO 8601 UTC with milliseconds; the seconds part is formatted once per second."""
    second = int(created)
    cached = _last_second
    if cached[0] != second:
        cached[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        cached[0] = second
    return f"{cached[1]}.{int((created - second) * 1000):03d}Z"


# What a token or credential looks like, wherever it turns up in text we did not write
# ourselves (an exception's message inside a traceback): a JWS/JWT (RFC 7515 section 7.1,
# three base64url parts), a Google OAuth access token, and a long base64 run mixing upper
# case, lower case and digits (AWS session tokens and secret keys, encrypted blobs; file paths
# and names in a traceback do not mix all three).
_TOKEN_SHAPES = re.compile(
    r"[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}|ya29\.[A-Za-z0-9_.-]+"
)
_LONG_RUN = re.compile(r"[A-Za-z0-9+/=_-]{32,}")
# A traceback is cut to its last lines so that a log line stays under one pipe write.
MAX_TRACEBACK_CHARS = 2500


def redact(text: str) -> str:
    """``text`` with everything shaped like a token or credential replaced."""
    text = _TOKEN_SHAPES.sub("[redacted]", text)
    return _LONG_RUN.sub(_redact_mixed, text)


def _redact_mixed(match: re.Match[str]) -> str:
    run = match.group()
    mixed = (
        any(c.isupper() for c in run)
        and any(c.islower() for c in run)
        and any(c.isdigit() for c in run)
    )
    return "[redacted]" if mixed else run


def traceback_field(formatter: logging.Formatter, record: logging.LogRecord) -> str | None:
    """The record's traceback, redacted, its end kept when it is too long (saying so)."""
    if not record.exc_info or record.exc_info[0] is None:
        return None
    text = redact(formatter.formatException(record.exc_info))
    if len(text) > MAX_TRACEBACK_CHARS:
        # The innermost frames and the exception are at the end.
        head, _, _ = text.partition("\n")
        text = f"{head}\n  [shortened]\n{text[-MAX_TRACEBACK_CHARS:]}"
    return text


#: The longest line a formatter writes, newline included: one ``write(2)`` of at most
#: ``PIPE_BUF`` (4096) bytes to a pipe is atomic, so lines of several worker processes sharing
#: one pipe are never torn or spliced (docs/reference.md section 10).
MAX_LINE_BYTES = 4000
_SHORTENED = "[shortened]"
# Fields that are never shortened (their size is fixed).
_FIXED = frozenset({"ts", "level", "logger", "shortened"})


def _control_class() -> str:
    """A regex class of every character a terminal or a log reader may act on: Unicode Cc
    (C0, DEL, C1: CR, LF, ESC, ...), Cf (bidi overrides, zero-width characters) and the line
    and paragraph separators; plus the backslash, so that an escape is never ambiguous."""
    chars = [
        chr(code)
        for code in range(0x10000)
        if unicodedata.category(chr(code)) in ("Cc", "Cf", "Zl", "Zp")
    ]
    ranges = "".join(re.escape(char) for char in chars)
    return f"[{ranges}\\U000e0000-\\U000e007f\\\\]"


_CONTROL = re.compile(_control_class())
_NAMED_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_control(text: str) -> str:
    """``text`` with every control or format character written as an escape (``\\n``,
    ``\\x1b``, ``\\u202e``): what a caller sends can never start a line of its own, colour
    a terminal or reorder what a reader sees."""

    def one(match: re.Match[str]) -> str:
        char = match.group()
        named = _NAMED_ESCAPES.get(char)
        if named is not None:
            return named
        code = ord(char)
        if code < 0x100:
            return f"\\x{code:02x}"
        return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"

    return _CONTROL.sub(one, text)


def _fit(fields: dict[str, Any], render: Callable[[dict[str, Any]], str]) -> str:
    """``render(fields)`` in at most :data:`MAX_LINE_BYTES` - 1 bytes: the longest text fields
    are cut as little as needed (ending ``[shortened]``) and ``shortened`` names them."""
    limit = MAX_LINE_BYTES - 1
    line = render(fields)
    # Characters are at most 4 bytes in UTF-8: most lines need no encoding to be measured.
    if len(line) * 4 <= limit or len(line.encode("utf-8", "replace")) <= limit:
        return line

    def size(candidate: dict[str, Any]) -> int:
        return len(render(candidate).encode("utf-8", "replace"))

    fields = {
        name: value if isinstance(value, str | int | float | bool | None) else str(value)
        for name, value in fields.items()
    }
    cut: list[str] = []
    fields["shortened"] = cut
    while size(fields) > limit:
        candidates = [
            key for key, value in fields.items() if key not in _FIXED and isinstance(value, str)
        ]
        candidates = [key for key in candidates if fields[key] != _SHORTENED]
        if not candidates:
            break
        name = max(candidates, key=lambda key: len(fields[key]))
        value: str = fields[name]
        if name not in cut:
            cut.append(name)
        fields[name] = _SHORTENED
        if size(fields) > limit:
            continue  # even empty it does not fit: cut the next one too
        # The longest prefix that fits (an escaped character may take 10 bytes).
        low, high = 0, len(value)
        while low < high:
            middle = (low + high + 1) // 2
            fields[name] = value[:middle] + _SHORTENED
            if size(fields) <= limit:
                low = middle
            else:
                high = middle - 1
        fields[name] = value[:low] + _SHORTENED
    if size(fields) <= limit:
        return render(fields)
    # Only fixed-size fields are left too long: the fixed fields and the message's start.
    kept: dict[str, Any] = {key: fields[key] for key in ("ts", "level", "logger") if key in fields}
    kept["msg"] = str(fields.get("msg", ""))[:200] + _SHORTENED
    kept["shortened"] = sorted(set(fields) - _FIXED)
    return render(kept)


class LineFormatter(logging.Formatter):
    """A record as one line of at most :data:`MAX_LINE_BYTES`: the fixed fields, then the
    record's own (``extra``), then its traceback. :meth:`line` renders the same line from the
    fields alone, for :func:`write_line`."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {
            name: value
            for name, value in record.__dict__.items()
            if name not in _STANDARD and not name.startswith("_")
        }
        if record.exc_info and record.exc_info[0] is not None:
            fields["exc_type"] = record.exc_info[0].__name__
            fields["traceback"] = traceback_field(self, record)
        return self.line(record.created, record.levelname, record.name, record.getMessage(), fields)

    def line(
        self, created: float, level: str, logger: str, msg: str, fields: dict[str, Any]
    ) -> str:
        raise NotImplementedError


class JsonFormatter(LineFormatter):
    """One JSON object per line (``ensure_ascii``: control characters are escaped by
    construction), at most :data:`MAX_LINE_BYTES` long."""

    def line(
        self, created: float, level: str, logger: str, msg: str, fields: dict[str, Any]
    ) -> str:
        doc: dict[str, Any] = {
            "ts": _timestamp(created),
            "level": level.lower(),
            "logger": logger,
            "msg": msg,
            **fields,
        }
        return _fit(doc, _render_json)


# One encoder for every line: json.dumps with options builds a new one per call.
_render_json = json.JSONEncoder(default=str, separators=(",", ":")).encode


class TextFormatter(LineFormatter):
    """``HH:MM:SS LEVEL logger: message key=value ...`` for people; every field escaped
    (:func:`escape_control`), one line, at most :data:`MAX_LINE_BYTES` long. A value holding
    whitespace, ``=`` or ``"`` is quoted (``key="a b"``, ``\\"`` and ``\\\\`` inside), and so is a
    message holding ``=`` or ``"``: nothing a caller sends can pass for a field."""

    def line(
        self, created: float, level: str, logger: str, msg: str, fields: dict[str, Any]
    ) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%H:%M:%S", time.localtime(created)),
            "level": level,
            "logger": logger,
            "msg": msg,
            **fields,
        }
        return _fit(doc, _render_text)


# A field value with whitespace (any: a no-break space splits words as well), "=" or '"' in it
# is quoted, so that no value can pass for a field of its own (docs/reference.md section 10).
_NEEDS_QUOTES = re.compile(r'[\s="]')
# A message is text for people, spaces included: quoted only when it could pass for a field.
_MESSAGE_NEEDS_QUOTES = re.compile(r'[="]')


def _quoted(text: str) -> str:
    """``text`` (already escaped: every backslash doubled) between quotes, ``"`` as ``\\"``."""
    return '"' + text.replace('"', '\\"') + '"'


def _text_value(value: Any) -> str:
    """A field value as written: control characters escaped, quoted when it holds whitespace,
    ``=`` or ``"``."""
    text = escape_control(",".join(value) if isinstance(value, list) else str(value))
    return _quoted(text) if _NEEDS_QUOTES.search(text) else text


def _render_text(fields: dict[str, Any]) -> str:
    msg = escape_control(str(fields["msg"]))
    if _MESSAGE_NEEDS_QUOTES.search(msg):
        msg = _quoted(msg)
    head = f"{fields['ts']} {fields['level']:<7} {escape_control(str(fields['logger']))}: {msg}"
    extras = " ".join(
        f"{escape_control(str(name))}={_text_value(value)}"
        for name, value in fields.items()
        if name not in ("ts", "level", "logger", "msg") and not (name == "shortened" and not value)
    )
    return f"{head} {extras}" if extras else head


class DirectHandler(logging.Handler):
    """Writes formatted lines to a file descriptor in batches, without a handler lock.

    The access log is written once per request from every request thread; a StreamHandler
    serialises them on its lock and pays one ``write(2)`` each. Here a request only appends
    its line to a deque (atomic under the GIL); a flusher thread writes what is pending every
    ``interval`` seconds in chunks of at most ``PIPE_BUF`` bytes, so lines from several worker
    processes sharing one pipe are never torn. Warnings and errors are written at once, and
    whatever is pending at exit is written then.
    """

    CHUNK_BYTES = MAX_LINE_BYTES  # below PIPE_BUF (4096): one write(2) to a pipe is atomic

    def __init__(self, fd: int, interval: float = 0.1) -> None:
        super().__init__()
        self.fd = fd
        self._interval = interval
        self._pending: deque[str] = deque()
        self._write_lock = threading.Lock()
        self._flushing = False
        renew_after_fork(self)

    def handle(self, record: logging.LogRecord) -> bool:
        if self.filter(record):
            self.emit(record)
            return True
        return False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.add(line, record.levelno)

    def add(self, line: str, level: int) -> None:
        """Queue one formatted line (written at once from WARNING up)."""
        self._pending.append(line)
        if not self._flushing:
            self._start_flusher()
        if level >= logging.WARNING or len(self._pending) > 1000:
            self.flush()

    def _after_fork(self) -> None:
        # The parent's flusher thread does not exist in the child, and its lock may have been
        # held at the fork: the child starts its own on its first line.
        self._write_lock = threading.Lock()
        self._flushing = False

    def _start_flusher(self) -> None:
        self._flushing = True
        threading.Thread(target=self._run, name="sts-log-flush", daemon=True).start()
        atexit.register(self.flush)
        # A multiprocessing worker (granian's) leaves through os._exit, running only
        # multiprocessing's own finalizers: the lines of its last requests are written there.
        multiprocessing.util.Finalize(None, self.flush, exitpriority=100)

    def _run(self) -> None:
        while True:
            time.sleep(self._interval)
            self.flush()

    def flush(self) -> None:
        with self._write_lock:
            chunk: list[bytes] = []
            size = 0
            while True:
                try:
                    line = (self._pending.popleft() + "\n").encode("utf-8", "replace")
                except IndexError:
                    break
                if chunk and size + len(line) > self.CHUNK_BYTES:
                    self._write(b"".join(chunk))
                    chunk, size = [], 0
                chunk.append(line)
                size += len(line)
            if chunk:
                self._write(b"".join(chunk))

    def _write(self, data: bytes) -> None:
        try:
            while data:
                written = os.write(self.fd, data)
                data = data[written:]
        except OSError:
            pass  # stderr gone (a closed pipe): logging must never break a request


_handler: DirectHandler | None = None


def write_line(logger: logging.Logger, level: int, msg: str, fields: dict[str, Any]) -> None:
    """``logger.log(level, msg, extra=fields)``, the same line, without building a record
    when nothing but the configured handler would see it (the access line of every request:
    a record, its dict and the handler chain cost more than the exchange on the cached path).
    The caller has checked ``logger.isEnabledFor(level)``."""
    handler = _handler
    parent = logger.parent
    formatter = handler.formatter if handler is not None else None
    if (
        handler is None
        or not isinstance(formatter, LineFormatter)
        or logger.handlers
        or logger.filters
        or not logger.propagate
        or parent is None
        or parent.handlers != [handler]
        or parent.filters
        or parent.propagate
        or handler.filters
        or level < handler.level
    ):
        # Someone else listens (a test's capture, an embedding application): a real record.
        logger.log(level, msg, extra=fields)
        return
    try:
        line = formatter.line(time.time(), logging.getLevelName(level), logger.name, msg, fields)
    except Exception:
        logger.log(level, msg, extra=fields)  # logging reports what went wrong
        return
    handler.add(line, level)


def configure(log_format: str, level: int = logging.INFO) -> None:
    """Route the ``sts`` loggers to stderr in the chosen format (idempotent)."""
    global _handler  # noqa: PLW0603 - one handler per process
    root = logging.getLogger("sts")
    fd = sys.stderr.fileno()
    if _handler is None or _handler.fd != fd:
        # One handler (and one flusher thread) per process and descriptor, however often the
        # app is built.
        if _handler is not None:
            _handler.flush()
        _handler = DirectHandler(fd)
    _handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler = _handler
    root.handlers = [handler]
    root.setLevel(level)
    root.propagate = False
    # No caller lookup (file, line, function) per record: no formatter prints it, and on the
    # cached path it was a quarter of the logging cost (the logging module's documented switch).
    logging._srcfile = None
    # At DEBUG these libraries print request bodies, which hold the subject token.
    for noisy in ("botocore", "boto3", "urllib3", "google", "requests"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def granian_config(log_format: str) -> dict[str, Any]:
    """granian's ``log_dictconfig``: its own lines (start-up, workers, shutdown) in the
    service's format on stderr, so that with ``json`` every line the server writes is one JSON
    object (granian's default is plain ``[INFO] ...`` text on stdout)."""
    formatter = "sts.logs.JsonFormatter" if log_format == "json" else "sts.logs.TextFormatter"
    handler = {"class": "logging.StreamHandler", "formatter": "sts", "stream": "ext://sys.stderr"}
    quiet = {"handlers": ["sts"], "level": "INFO", "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"sts": {"()": formatter}},
        "handlers": {"sts": handler},
        "loggers": {"_granian": quiet, "granian.access": dict(quiet)},
    }
