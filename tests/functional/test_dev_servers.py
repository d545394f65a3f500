"""The local emulators stay quiet when a client goes away mid-answer: a disconnect is the
client's business, not a traceback in the test output."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from sts.dev.issuer import DevIssuer


def vanish_mid_answer(url: str, path: str, method: str = "GET") -> None:
    """Send a request, then reset the connection (SO_LINGER 0) before the answer is read."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
    sock.close()


@pytest.fixture
def slow_issuer() -> Iterator[DevIssuer]:
    with DevIssuer() as issuer:
        # A large key set, sent after the client is gone: the write fails with EPIPE/ECONNRESET.
        issuer.jwks_body = b'{"keys": []}' + b" " * (8 * 1024 * 1024)
        issuer.jwks_delay = 0.3
        yield issuer


def test_dev_issuer_prints_nothing_when_a_client_disconnects(
    slow_issuer: DevIssuer, capfd: pytest.CaptureFixture[str]
) -> None:
    issuer = slow_issuer
    before = issuer.fetches
    for _ in range(3):
        vanish_mid_answer(issuer.url, urlsplit(issuer.jwks_url).path)
    deadline = time.monotonic() + 10
    while issuer.fetches < before + 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    # The server gives no sign once a failed write is dealt with: allow its delay and a margin.
    time.sleep(issuer.jwks_delay + 0.5)
    captured = capfd.readouterr()
    assert issuer.fetches == before + 3
    assert "Traceback" not in captured.err
    assert "BrokenPipeError" not in captured.err
    assert "ConnectionResetError" not in captured.err
