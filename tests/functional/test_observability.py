"""Metrics at /metrics, one log line per request with an X-Request-Id, in both log formats."""

from __future__ import annotations

import json
import logging
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from sts.logs import JsonFormatter, TextFormatter
from tests.functional.conftest import Stack


def samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = requests.get(url + "/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_exchanges_and_follow_conventions(stack: Stack) -> None:
    before = samples(stack.url)
    token = stack.token(deployment="metrics-check")
    assert stack.post(token).status_code == 200
    assert stack.post(token).status_code == 200
    assert stack.post("garbage").status_code == 400
    after = samples(stack.url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("sts_exchanges_total", outcome="ok", provider="aws", cache="miss") == 1
    assert delta("sts_exchanges_total", outcome="ok", provider="aws", cache="hit") == 1
    assert (
        delta("sts_exchanges_total", outcome="invalid_request", provider="none", cache="none") == 1
    )
    assert delta("sts_upstream_calls_total", provider="aws", result="ok") == 1
    assert delta("sts_upstream_duration_seconds_count", provider="aws") == 1
    assert delta("sts_exchange_duration_seconds_count", provider="aws", cache="hit") == 1
    names = {name for name, _ in after}
    for name in names:
        if name.startswith("sts_"):
            assert re.fullmatch(r"sts_[a-z0-9_]+", name), name
    assert any(n.startswith("sts_jwks_fetches_total") for n in names)


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    captured: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(record)

    handler = Capture(level=logging.DEBUG)
    logger = logging.getLogger("sts")
    logger.addHandler(handler)
    yield captured
    logger.removeHandler(handler)


def test_one_line_per_request_with_request_id(
    stack: Stack, records: list[logging.LogRecord]
) -> None:
    token = stack.token(deployment="log-check")
    response = requests.post(
        stack.url + "/token",
        data={
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": token,
            "subject_token_type": "urn:ietf:params:oauth:token-type:id_token",
        },
        headers={"X-Request-Id": "gw-1234.abc"},
        timeout=30,
    )
    assert response.status_code == 200
    assert response.headers["X-Request-Id"] == "gw-1234.abc"
    generated = stack.post("garbage").headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    hostile = requests.post(
        stack.url + "/token", headers={"X-Request-Id": "x\u00e9" + "y" * 300}, timeout=10
    )
    assert hostile.headers["X-Request-Id"] != "x\u00e9" + "y" * 300

    lines = [r for r in records if r.name == "sts.access" and r.__dict__.get("path") == "/token"]
    by_id = {r.__dict__["request_id"]: r.__dict__ for r in lines}
    ok = by_id["gw-1234.abc"]
    assert ok["status"] == 200
    assert ok["outcome"] == "ok"
    assert ok["mapping"] == "orders-prod"
    assert ok["cache_hit"] is False
    assert ok["latency_ms"] >= 0
    refused = by_id[generated]
    assert refused["status"] == 400
    assert refused["outcome"] == "invalid_request"
    assert refused["reason"] == "token unparsable"
    # Exactly one access line per request.
    assert len([r for r in lines if r.__dict__["request_id"] == "gw-1234.abc"]) == 1
    text = json.dumps([r.__dict__ for r in records], default=str)
    assert token not in text
    assert token.split(".")[2] not in text


def test_successful_probes_are_quiet(stack: Stack, records: list[logging.LogRecord]) -> None:
    assert requests.get(stack.url + "/healthz", timeout=10).status_code == 200
    probes = [r for r in records if r.name == "sts.access" and r.__dict__.get("path") == "/healthz"]
    # Logged at DEBUG only, and the service logs at INFO: nothing.
    assert probes == []
    assert requests.get(stack.url + "/nowhere", timeout=10).status_code == 404
    missing = [r for r in records if r.name == "sts.access" and r.__dict__["path"] == "/nowhere"]
    assert [r.levelno for r in missing] == [logging.INFO]


def test_formats() -> None:
    record = logging.LogRecord("sts.access", logging.INFO, __file__, 1, "request", (), None)
    record.request_id = "abc"
    record.status = 200
    line = JsonFormatter().format(record)
    doc = json.loads(line)
    assert doc["msg"] == "request"
    assert doc["request_id"] == "abc"
    assert doc["level"] == "info"
    text = TextFormatter().format(record)
    assert "request_id=abc" in text
    assert "\n" not in text


class GarbledRedis:
    """A TCP server where Redis should be that answers every command with the RESP3 integer
    ``:1``, the connection's first command (``HELLO 3``) included. redis-py's handshake expects
    a map from ``HELLO`` and calls ``.get`` on what it read: an AttributeError, an error none of
    the service's layers expects (the shared tier falls back on ``redis.RedisError`` and
    ``OSError``, what a Redis that is down or slow raises).

    Its URL makes the cause deterministic from outside, with redis-py's documented URL options
    (query-string values win over the arguments ``RedisTier`` passes): ``protocol=3`` so
    ``HELLO`` is sent whatever redis-py's default protocol, and 30 s socket time-outs instead of
    the service's 0.25 s, so that a loaded machine cannot turn a late answer into a time-out,
    which is "Redis unavailable" and rightly served by the in-process tier.

    (A malformed bulk length such as ``$not-a-length`` is no such cause: redis-py raises
    ``InvalidResponse``, a ``RedisError``, for it, and the service falls back as it should.)
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        port = self._listener.getsockname()[1]
        self.url = (
            f"redis://127.0.0.1:{port}/0?protocol=3&socket_timeout=30&socket_connect_timeout=30"
        )
        self.received: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                while chunk := conn.recv(65536):
                    self.received.append(chunk)
                    conn.sendall(b":1\r\n")
            except OSError:
                return

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def garbled_redis() -> Iterator[GarbledRedis]:
    server = GarbledRedis()
    yield server
    server.close()


def frames(traceback: str) -> list[Path]:
    """The files of a formatted traceback's frames, outermost first."""
    return [Path(name) for name in re.findall(r'File "([^"]+)"', traceback)]


def test_unexpected_error_is_500_logged_with_redacted_traceback_and_counted(
    stack_factory: Any, garbled_redis: GarbledRedis, capfd: pytest.CaptureFixture[str]
) -> None:
    stack: Stack = stack_factory(
        redis_url=garbled_redis.url, cache_encryption_key=b"k" * 32, log_format="json"
    )
    before = samples(stack.url)
    token = stack.token(deployment="garbled-redis")
    capfd.readouterr()
    response = stack.post(token)
    # The access line is written by the log flusher a moment later: poll for it (30 s only
    # says "not stuck"; it is there within a tenth of a second).
    output = ""
    deadline = time.monotonic() + 30
    while '"path":"/token"' not in output and time.monotonic() < deadline:
        time.sleep(0.05)
        output += capfd.readouterr().err
    assert response.status_code == 500, (
        "the garbled HELLO answer was not an unexpected error; if the Redis client now raises a "
        "RedisError for it, the fallback is right and this test needs another cause\n"
        f"{response.status_code} {response.text}\n{output}"
    )
    assert response.json() == {"error": "server_error", "error_description": "internal error"}
    assert response.headers["Cache-Control"] == "no-store"
    # The cause really was the garbled Redis: it was asked, and answered, the handshake.
    assert b"HELLO" in b"".join(garbled_redis.received)
    after = samples(stack.url)
    counted = value(
        after, "sts_exchanges_total", outcome="server_error", provider="none", cache="none"
    ) - value(before, "sts_exchanges_total", outcome="server_error", provider="none", cache="none")
    assert counted == 1

    errors = [
        json.loads(line)
        for line in output.splitlines()
        if line.startswith("{") and '"unhandled error"' in line
    ]
    assert len(errors) == 1, output
    (error,) = errors
    assert error["level"] == "error"
    assert error["traceback"].startswith("Traceback (most recent call last):")
    assert error["traceback"].splitlines()[-1].startswith(error["exc_type"] + ":")
    # Raised inside the Redis client, called by the service's shared cache tier.
    files = frames(error["traceback"])
    assert "redis" in files[-1].parts, error["traceback"]
    assert any(f.name == "cache.py" and f.parent.name == "sts" for f in files), files
    access = [
        json.loads(line)
        for line in output.splitlines()
        if line.startswith("{") and '"path":"/token"' in line
    ]
    assert [(line["status"], line["outcome"]) for line in access] == [(500, "server_error")]
    assert access[0]["cause"] == error["exc_type"]
    assert token not in output
    assert token.split(".")[2] not in output


def test_formatters_redact_tokens_and_credentials_inside_tracebacks(stack: Stack) -> None:
    token = stack.token()
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    google = "ya29.a0AfH6SMBx-example_token"
    try:
        raise RuntimeError(f"upstream said {token} {secret} {google}")
    except RuntimeError:
        record = logging.LogRecord(
            "sts.api", logging.ERROR, __file__, 1, "unhandled error", (), sys.exc_info()
        )
    doc = json.loads(JsonFormatter().format(record))
    text = TextFormatter().format(record)
    for rendered in (doc["traceback"], text):
        assert "RuntimeError: upstream said [redacted] [redacted] [redacted]" in rendered
        for part in (*token.split("."), secret, google):
            assert part not in rendered
    # File names and lines of the traceback stay readable.
    assert "test_observability.py" in doc["traceback"]
    assert "\n" not in text
    assert 'traceback="Traceback (most recent call last):\\n' in text


def test_readme_lists_every_metric() -> None:
    from pathlib import Path

    import sts.metrics

    root = Path(sts.metrics.__file__).resolve().parents[1]
    defined = set(re.findall(r'"(sts_[a-z0-9_]+)"', (root / "sts" / "metrics.py").read_text()))
    readme = (root / "README.md").read_text()
    section = readme.split("- **Metrics.**", 1)[1].split("\n- **", 1)[0]
    assert set(re.findall(r"`(sts_[a-z0-9_]+)`", section)) == defined
