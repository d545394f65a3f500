"""Connections that withhold, trickle or never send (docs/reference.md section 10), against a
real ``sts serve`` with its default two workers, from raw sockets on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from sts.dev.issuer import DevIssuer
from tests.conftest import AUDIENCE
from tests.functional.serving import sts_serve

WITHHELD = (
    b"POST /token HTTP/1.1\r\nHost: sts\r\n"
    b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 60000\r\n\r\n"
)


def logged(tmp_path: Path, status: int) -> list[dict[str, object]]:
    time.sleep(0.5)  # the log flusher writes every 0.1 s
    lines = (tmp_path / "serve.log").read_text().splitlines()
    docs = [json.loads(line) for line in lines if line.startswith("{")]
    return [doc for doc in docs if doc.get("logger") == "sts.access" and doc["status"] == status]


@pytest.fixture
def server(tmp_path: Path, issuer: DevIssuer) -> Iterator[tuple[str, int]]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STS_")}
    env = {
        **clean,
        "STS_DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}",
        "STS_AUDIENCE": AUDIENCE,
        "STS_TRUSTED_ISSUERS": issuer.url,
        "STS_ALLOW_HTTP_LOOPBACK": "true",
    }
    with sts_serve(env, tmp_path / "serve.log") as url:
        yield url, int(url.rsplit(":", 1)[1])


def connect(port: int, first: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if first:
        sock.sendall(first)
    return sock


def answered_at_once(url: str) -> None:
    """``/healthz`` and a ``POST /token`` are answered as if nothing else were connected."""
    started = time.monotonic()
    assert requests.get(url + "/healthz", timeout=5).status_code == 200
    refused = requests.post(url + "/token", data={"grant_type": "password"}, timeout=5)
    assert refused.status_code == 400
    assert refused.json()["error"] == "unsupported_grant_type"
    assert time.monotonic() - started < 1.0


def ends(sock: socket.socket, within: float) -> tuple[float, bytes]:
    """Seconds until the server answered or closed ``sock``, and what it sent first."""
    started = time.monotonic()
    sock.settimeout(within)
    try:
        data = sock.recv(4096)
    except TimeoutError:
        pytest.fail(f"still open after {within} s")
    except ConnectionResetError:
        data = b""
    return time.monotonic() - started, data


def test_sixty_four_withheld_bodies_hold_no_request_thread_and_get_408_within_10_s(
    server: tuple[str, int], tmp_path: Path
) -> None:
    url, port = server
    sent_at = time.monotonic()
    withheld = [connect(port, WITHHELD) for _ in range(64)]
    # One that trickles its body, a byte a second: the deadline is on the whole body.
    trickling = connect(port, WITHHELD)
    stop = threading.Event()

    def trickle() -> None:
        while not stop.is_set():
            try:
                trickling.send(b"a")
            except OSError:
                return
            stop.wait(1)

    threading.Thread(target=trickle, daemon=True).start()
    try:
        time.sleep(0.5)
        answered_at_once(url)
        answers = [ends(sock, within=15)[1] for sock in [*withheld, trickling]]
        elapsed = time.monotonic() - sent_at
        assert 9 < elapsed < 13, elapsed
        for data in answers:
            assert data.startswith(b"HTTP/1.1 408"), data[:80]
            assert b"request body not received in time" in data
        answered_at_once(url)
        # Each is in the access log, as every request is: a flood shows.
        refused = logged(tmp_path, 408)
        assert len(refused) == 65
        assert {doc["reason"] for doc in refused} == {"request body not received in time"}
        assert {doc["path"] for doc in refused} == {"/token"}
    finally:
        stop.set()
        for sock in [*withheld, trickling]:
            sock.close()


def test_1200_silent_connections_leave_room_and_are_closed_within_30_s(
    server: tuple[str, int],
) -> None:
    url, port = server
    opened_at = time.monotonic()
    silent = [connect(port) for _ in range(1150)]
    partial = [connect(port, b"GET /healthz HTTP/1.1\r\nHost: s") for _ in range(50)]
    try:
        time.sleep(0.5)
        answered_at_once(url)
        for sock in [*silent, *partial]:
            remaining = 35 - (time.monotonic() - opened_at)
            _, data = ends(sock, within=max(remaining, 0.1))
            assert not data.startswith(b"HTTP/1.1 200"), data[:80]
        assert time.monotonic() - opened_at < 35
        answered_at_once(url)
    finally:
        for sock in [*silent, *partial]:
            sock.close()


def exchange_raw(port: int, request: bytes, *, half_close: bool = False) -> bytes:
    with connect(port, request) as sock:
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        sock.settimeout(5)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def body_of(answer: bytes) -> dict[str, str]:
    doc: dict[str, str] = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    return doc


def test_bodies_through_the_event_loop_keep_the_token_endpoints_answers(
    server: tuple[str, int],
) -> None:
    """What sts/rsgi.py reads is what POST /token refuses or accepts, as before."""
    _, port = server
    head = (
        b"POST /token HTTP/1.1\r\nHost: sts\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    )
    # A declared length over 64 KiB: refused without reading the body.
    started = time.monotonic()
    answer = exchange_raw(port, head + b"Content-Length: 70000\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400"), answer[:80]
    assert body_of(answer)["error_description"] == "request body too large"
    assert time.monotonic() - started < 2
    # A chunked body over 64 KiB: read up to the limit, then refused.
    chunks = b"".join(b"2000\r\n" + b"a" * 0x2000 + b"\r\n" for _ in range(9)) + b"0\r\n\r\n"
    answer = exchange_raw(port, head + b"Transfer-Encoding: chunked\r\n\r\n" + chunks)
    assert body_of(answer)["error_description"] == "request body too large"
    # A small chunked body is read whole.
    form = b"grant_type=password"
    chunked = f"{len(form):x}\r\n".encode() + form + b"\r\n0\r\n\r\n"
    answer = exchange_raw(port, head + b"Transfer-Encoding: chunked\r\n\r\n" + chunked)
    assert body_of(answer)["error"] == "unsupported_grant_type"
    # A body shorter than declared, then the client stops sending: answered or closed at once.
    started = time.monotonic()
    answer = exchange_raw(
        port, head + b"Content-Length: 100\r\n\r\ngrant_type=pass", half_close=True
    )
    assert time.monotonic() - started < 2
    assert answer.startswith(b"HTTP/1.1 400"), answer[:80]
    assert body_of(answer) == {
        "error": "invalid_request",
        "error_description": "malformed request body",
    }
