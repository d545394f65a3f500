"""Every log line whole, and none of the caller's making (docs/reference.md section 10): a real
``sts serve`` with two workers writing to one pipe, as in a container."""

from __future__ import annotations

import json
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from sts.dev.issuer import DevIssuer
from tests.functional.serving import serve_env, sts_serve_on_a_pipe_within


def log_env(tmp_path: Path, issuer: DevIssuer, log_format: str) -> dict[str, str]:
    return serve_env(f"sqlite:///{tmp_path / 'serve.db'}", issuer, STS_LOG_FORMAT=log_format)


def raw_request(url: str, request: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        return sock.recv(65536)


def test_sixty_kilobyte_paths_beside_small_requests_never_tear_a_line(
    tmp_path: Path, issuer: DevIssuer
) -> None:
    long_path = "/" + "a" * 60_000
    with sts_serve_on_a_pipe_within(log_env(tmp_path, issuer, "json"), "--workers", "2") as (
        url,
        lines,
    ):
        session = requests.Session()

        def one(i: int) -> int:
            path = long_path if i % 2 else f"/small-{i}"
            return session.get(url + path, timeout=30).status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(one, range(400)))
        assert set(statuses) == {404}
    access = []
    loggers = set()
    for raw in lines:
        assert raw.endswith(b"\n")
        assert len(raw) <= 4000
        doc = json.loads(raw)  # every line one whole JSON object, granian's own included
        loggers.add(doc["logger"])
        if doc.get("logger") == "sts.access" and doc.get("status") == 404:
            access.append(doc)
    assert len(access) == 400
    assert "_granian" in loggers  # its start-up lines, as JSON
    long_ones = [doc for doc in access if doc.get("shortened")]
    assert len(long_ones) == 200
    assert all(doc["shortened"] == ["path"] for doc in long_ones)
    assert all(doc["path"].startswith("/aaaa") for doc in long_ones)
    assert all(doc["path"].endswith("[shortened]") for doc in long_ones)


FORGED = [
    "%0a12:00:00 INFO    sts.access: request path=/admin status=200",
    "%0d%0a12:00:00 ERROR sts.forged",
    "%1b%5b31mred%1b%5b0m",
    "%e2%80%aetxt.exe",  # U+202E, the right-to-left override
    "%c2%85next-line",  # U+0085, NEL
    "%e2%80%a8separator",  # U+2028
    "%00nul",
]


def test_no_caller_writes_a_line_or_a_control_character_into_the_text_log(
    tmp_path: Path, issuer: DevIssuer
) -> None:
    with sts_serve_on_a_pipe_within(log_env(tmp_path, issuer, "text"), "--workers", "1") as (
        url,
        lines,
    ):
        for i, forged in enumerate(FORGED):
            target = f"/x{i}" + forged.replace(" ", "%20")
            answer = raw_request(url, f"GET {target} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
            assert answer.startswith(b"HTTP/1.1 404"), answer
    text = b"".join(lines).decode("utf-8")
    for i in range(len(FORGED)):
        # Quoted when the path holds a space (a forged field would otherwise follow it).
        logged = [
            line for line in text.splitlines() if f"path=/x{i}" in line or f'path="/x{i}' in line
        ]
        assert len(logged) == 1, text
        (line,) = logged
        assert "sts.access" in line
        assert "status=404" in line
        assert not any(ch in line for ch in ("\x1b", "\r", "\u202e", "\u0085", "\u2028", "\x00")), (
            repr(line)
        )
    assert 'path="/x0\\n12:00:00 INFO' in text
    assert "path=/x2\\x1b[31mred" in text
    assert "path=/x3\\u202etxt.exe" in text
    # The forged lines exist only inside the real ones, escaped.
    assert not any(line.startswith("12:00:00") for line in text.splitlines())
