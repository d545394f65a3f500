"""Connections that withhold, trickle or never send (docs/reference.md section 10), against a
real ``sts serve`` with its default two workers, from raw sockets on 127.0.0.1."""

from __future__ import annotations

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
    server: tuple[str, int],
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
