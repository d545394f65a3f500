"""Connections that withhold, trickle or never send (docs/reference.md section 10), against a
real ``sts serve`` with two workers (its default), from raw sockets on 127.0.0.1."""

from __future__ import annotations

import json
import os
import secrets
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from sts.dev.issuer import DevIssuer
from tests.conftest import AUDIENCE
from tests.functional.serving import sts_serve_within

WITHHELD = (
    b"POST /token HTTP/1.1\r\nHost: sts\r\n"
    b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 60000\r\n\r\n"
)
#: sts serve's default, given explicitly: :func:`flushed` needs to know how many write the log.
WORKERS = 2
#: The contract's deadlines (docs/reference.md section 10): a body within 10 s of its headers,
#: a connection that sends nothing (or stops inside its headers) closed within 30 s.
BODY_DEADLINE = 10.0
IDLE_CLOSE = 30.0
#: What a deadline may be late by on a loaded machine (the server's sweep, scheduling).
SLACK = 5.0
#: How long a wait for something that happens in milliseconds may take before the test calls
#: it stuck.
NOT_STUCK = 30.0


def wait_until(condition: Callable[[], bool], what: str, timeout: float = NOT_STUCK) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def log_lines(log: Path) -> list[dict[str, Any]]:
    """The JSON lines of ``log`` written whole so far (one being written is left for later)."""
    text = log.read_text(errors="replace")
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.startswith("{")]


def access_lines(lines: list[dict[str, Any]], status: int) -> list[dict[str, Any]]:
    return [doc for doc in lines if doc.get("logger") == "sts.access" and doc["status"] == status]


def flushed(url: str, log: Path) -> list[dict[str, Any]]:
    """The log once every worker has written all it logged before this call.

    A worker writes its lines in the order it logged them: once the access line of a request it
    answered now is in the file, so is everything it logged before. Requests on new
    connections, which the kernel spreads over the workers, until each worker has answered one.
    """
    pids: set[int] = set()
    deadline = time.monotonic() + NOT_STUCK
    while len(pids) < WORKERS:
        assert time.monotonic() < deadline, f"only the workers {pids} answered"
        marker = "flushed-" + secrets.token_hex(8)
        response = requests.get(url + "/nowhere", headers={"X-Request-Id": marker}, timeout=30)
        assert response.status_code == 404

        def line_of(marker: str = marker) -> dict[str, Any] | None:
            return next((doc for doc in log_lines(log) if doc.get("request_id") == marker), None)

        wait_until(lambda: line_of() is not None, f"the access line of {marker} was never written")
        pids.add(line_of()["pid"])  # type: ignore[index]
    return log_lines(log)


def _proc_net_tcp() -> list[tuple[int, int, str, int]]:
    """Loopback IPv4 sockets from ``/proc/net/tcp``: (local port, remote port, state, bytes
    received and not yet read; for a listening socket, connections not yet accepted)."""
    found = []
    with open("/proc/net/tcp") as table:
        next(table)
        for row in table:
            fields = row.split()
            local, remote, state, queues = fields[1], fields[2], fields[3], fields[4]
            if not local.startswith("0100007F:"):
                continue
            unread = int(queues.split(":")[1], 16)
            found.append((int(local[9:], 16), int(remote.split(":")[1], 16), state, unread))
    return found


def taken_up(port: int, clients: Iterable[socket.socket]) -> Callable[[], bool]:
    """A condition: the server on ``port`` has accepted every connection and read everything
    sent on ``clients`` so far (for a withheld body, its headers). Read from the kernel's own
    table on Linux; elsewhere there is nothing to look at and it holds at once, which makes
    the checks that follow it weaker, never wrong."""
    if not os.path.exists("/proc/net/tcp"):
        return lambda: True
    ports = {sock.getsockname()[1] for sock in clients}

    def condition() -> bool:
        table = _proc_net_tcp()
        listening = [unread for local, _, state, unread in table if local == port and state == "0A"]
        read = {
            remote: unread
            for local, remote, state, unread in table
            if local == port and state == "01" and remote in ports
        }
        return (
            bool(listening)
            and not any(listening)
            and len(read) == len(ports)
            and not any(read.values())
        )

    return condition


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
    with sts_serve_within(env, tmp_path / "serve.log", "--workers", str(WORKERS)) as url:
        yield url, int(url.rsplit(":", 1)[1])


def connect(port: int, first: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if first:
        sock.sendall(first)
    return sock


def answered(held: Iterable[socket.socket]) -> list[socket.socket]:
    """The sockets in ``held`` on which the server has answered or that it closed (now)."""
    with selectors.DefaultSelector() as selector:
        for sock in held:
            selector.register(sock, selectors.EVENT_READ)
        return [key.fileobj for key, _ in selector.select(timeout=0)]  # type: ignore[misc]


def answered_at_once(url: str, held: Iterable[socket.socket] = ()) -> None:
    """``/healthz`` and a ``POST /token`` are answered as if nothing else were connected:
    while every connection in ``held`` still waits for its own answer. Had either request
    waited for a thread or a slot one of them holds, it could only have been answered once
    that connection's deadline freed it, so after the server answered or closed that one.
    (The time-outs only say "not stuck".)"""
    assert requests.get(url + "/healthz", timeout=NOT_STUCK).status_code == 200
    refused = requests.post(url + "/token", data={"grant_type": "password"}, timeout=NOT_STUCK)
    assert refused.status_code == 400
    assert refused.json()["error"] == "unsupported_grant_type"
    early = answered(held)
    assert not early, f"{len(early)} held connections were answered or closed first"


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
    withheld: list[socket.socket] = []
    sent: list[float] = []  # when each connection's headers went out
    for _ in range(64):
        withheld.append(connect(port, WITHHELD))
        sent.append(time.monotonic())
    # One that trickles its body, a byte a second: the deadline is on the whole body.
    trickling = connect(port, WITHHELD)
    sent.append(time.monotonic())
    held = [*withheld, trickling]
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
        wait_until(taken_up(port, held), "the server never read the 65 requests' headers")
        answered_at_once(url, held)
        answers = []
        for number, (sock, at) in enumerate(zip(held, sent, strict=True)):
            # Each is answered within the deadline of its own headers, and a loaded machine's
            # slack; one whose deadline was not enforced would wait for the 30 s idle close.
            remaining = at + BODY_DEADLINE + SLACK - time.monotonic()
            answers.append(ends(sock, within=max(remaining, 0.1))[1])
            if number == 0:
                # Not before the deadline either (the server starts it once it has the headers).
                assert time.monotonic() - at > BODY_DEADLINE - 1
        for data in answers:
            assert data.startswith(b"HTTP/1.1 408"), data[:80]
            assert b"request body not received in time" in data
        answered_at_once(url)
        # Each is in the access log, as every request is: a flood shows. Exactly once each:
        # the count is read again once every worker has written all it logged.
        log = tmp_path / "serve.log"
        wait_until(
            lambda: len(access_lines(log_lines(log), 408)) >= 65,
            "the 65 refusals never all reached the access log",
        )
        refused = access_lines(flushed(url, log), 408)
        assert len(refused) == 65
        assert {doc["reason"] for doc in refused} == {"request body not received in time"}
        assert {doc["path"] for doc in refused} == {"/token"}
    finally:
        stop.set()
        for sock in held:
            sock.close()


def test_1200_silent_connections_leave_room_and_are_closed_within_30_s(
    server: tuple[str, int],
) -> None:
    url, port = server
    held: list[socket.socket] = []
    opened: list[float] = []
    for number in range(1200):
        # 1150 that send nothing, 50 that stop in the middle of their headers.
        held.append(connect(port, b"GET /healthz HTTP/1.1\r\nHost: s" if number >= 1150 else b""))
        opened.append(time.monotonic())
    try:
        wait_until(taken_up(port, held), "the server never took up the 1,200 connections")
        answered_at_once(url, held)
        for sock, at in zip(held, opened, strict=True):
            remaining = at + IDLE_CLOSE + SLACK - time.monotonic()
            _, data = ends(sock, within=max(remaining, 0.1))
            assert not data.startswith(b"HTTP/1.1 200"), data[:80]
        answered_at_once(url)
    finally:
        for sock in held:
            sock.close()


def exchange_raw(port: int, request: bytes, *, half_close: bool = False) -> bytes:
    with connect(port, request) as sock:
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        sock.settimeout(NOT_STUCK)
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
    # Before the body deadline could have fired (the 400, not a 408, says so too); the bound
    # itself only says "not stuck".
    assert time.monotonic() - started < BODY_DEADLINE
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
    # Not left to the body deadline: that would be a 408 (below), not this 400.
    assert time.monotonic() - started < BODY_DEADLINE
    assert answer.startswith(b"HTTP/1.1 400"), answer[:80]
    assert body_of(answer) == {
        "error": "invalid_request",
        "error_description": "malformed request body",
    }
