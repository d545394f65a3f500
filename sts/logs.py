"""Logging set-up: one JSON object per line (default) or plain text for people.

Only fields we put there on purpose are logged; callers never pass tokens, secrets or
credentials to a logger (tests search the captured output for them).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


_last_second: list[Any] = [-1, ""]


def _timestamp(created: float, msecs: float) -> str:
    """ISO 8601 UTC with milliseconds; the seconds part is formatted once per second."""
    second = int(created)
    cached = _last_second
    if cached[0] != second:
        cached[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        cached[0] = second
    return f"{cached[1]}.{int(msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _timestamp(record.created, record.msecs),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_"):
                doc[name] = value
        if record.exc_info and record.exc_info[0] is not None:
            doc["exc_type"] = record.exc_info[0].__name__
        return json.dumps(doc, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{k}={v}"
            for k, v in record.__dict__.items()
            if k not in _STANDARD and not k.startswith("_")
        )
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}"
        return f"{line} {extras}" if extras else line


class DirectHandler(logging.Handler):
    """Writes each record as one line with one ``os.write`` to a file descriptor.

    The access log is written once per request from every request thread; a StreamHandler
    serialises them on its lock and a buffered stream. Our formatters keep no state and a
    single ``write(2)`` of a line is not torn by other threads' lines, so no lock is taken.
    """

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd

    def handle(self, record: logging.LogRecord) -> bool:
        if self.filter(record):
            self.emit(record)
            return True
        return False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            os.write(self._fd, (self.format(record) + "\n").encode("utf-8", "replace"))
        except Exception:
            self.handleError(record)


def configure(log_format: str, level: int = logging.INFO) -> None:
    """Route the ``sts`` loggers to stderr in the chosen format (idempotent)."""
    root = logging.getLogger("sts")
    handler = DirectHandler(sys.stderr.fileno())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root.handlers = [handler]
    root.setLevel(level)
    root.propagate = False
    # At DEBUG these libraries print request bodies, which hold the subject token.
    for noisy in ("botocore", "boto3", "urllib3", "google", "requests"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
