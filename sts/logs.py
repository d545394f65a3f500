"""Logging set-up: one JSON object per line (default) or plain text for people.

Only fields we put there on purpose are logged; callers never pass tokens, secrets or
credentials to a logger (tests search the captured output for them).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
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


def configure(log_format: str, level: int = logging.INFO) -> None:
    """Route the ``sts`` loggers to stderr in the chosen format (idempotent)."""
    root = logging.getLogger("sts")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root.handlers = [handler]
    root.setLevel(level)
    root.propagate = False
    # At DEBUG these libraries print request bodies, which hold the subject token.
    for noisy in ("botocore", "boto3", "urllib3", "google", "requests"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
