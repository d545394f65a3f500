"""The one server base the dev issuer and the emulators share (sts.dev.serving.BackgroundServer):
each binds on start (loopback, a free port or the one given), serves on a daemon thread, has a
``url``, works as a context manager and stops for good."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
import requests

from sts.dev.aws_emulator import AwsEmulator
from sts.dev.entra_emulator import EntraEmulator
from sts.dev.gcp_emulator import GcpEmulator
from sts.dev.issuer import ISSUER_PATH, DevIssuer
from sts.dev.serving import BackgroundServer, Reply, dispatching_server, free_port


class Echo(BackgroundServer):
    """The least a server of the base needs: what answers."""

    def _build(self) -> ThreadingHTTPServer:
        return dispatching_server(self.host, self.port, self._answer)

    @staticmethod
    def _answer(method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        return 200, f"{method} {path}".encode(), {"Content-Type": "text/plain"}


FACTORIES: dict[str, Callable[..., BackgroundServer]] = {
    "issuer": lambda **kw: DevIssuer(bits=1024, **kw),
    "aws": AwsEmulator,
    "gcp": GcpEmulator,
    "entra": EntraEmulator,
    "echo": Echo,
}


@pytest.fixture(params=sorted(FACTORIES))
def make(request: pytest.FixtureRequest) -> Callable[..., BackgroundServer]:
    return FACTORIES[request.param]


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.trust_env = False  # loopback only
        yield session


def root(server: BackgroundServer) -> str:
    """``http://host:port`` of ``server`` (the issuer's ``url`` names its issuer path)."""
    parts = urlsplit(server.url)
    return f"{parts.scheme}://{parts.netloc}"


def refused(url: str) -> bool:
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def served_threads() -> set[threading.Thread]:
    return set(threading.enumerate())


def test_every_dev_server_is_one_of_the_base() -> None:
    for make in FACTORIES.values():
        assert isinstance(make(), BackgroundServer)


def test_nothing_is_bound_before_start(make: Callable[..., BackgroundServer]) -> None:
    port = free_port()
    server = make(port=port)
    with pytest.raises(RuntimeError, match="is not started"):
        _ = server.url
    with socket.socket() as holder:  # the port is still free: construction binds nothing
        holder.bind(("127.0.0.1", port))


def test_start_serves_on_loopback_on_a_daemon_thread(
    make: Callable[..., BackgroundServer], http: requests.Session
) -> None:
    before = served_threads()
    with make() as server:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", root(server))
        started = served_threads() - before
        assert started
        assert all(thread.daemon for thread in started)
        answer = http.get(root(server) + "/", timeout=10)
        assert 200 <= answer.status_code < 600
    assert not any(thread.is_alive() for thread in started)


def test_a_given_port_is_used(make: Callable[..., BackgroundServer]) -> None:
    port = free_port()
    with make(port=port) as server:
        assert urlsplit(server.url).port == port
        assert server.port == port
        assert server.host == "127.0.0.1"


def test_stop_closes_the_socket_and_keeps_the_url(make: Callable[..., BackgroundServer]) -> None:
    """After stop() the URL still names where the server was: clients there are refused (how
    the outage tests use a stopped issuer)."""
    server = make().start()
    url = server.url
    assert not refused(url)
    server.stop()
    assert server.url == url
    assert refused(url)
    server.stop()  # a second stop does nothing


def test_start_twice_is_one_server(make: Callable[..., BackgroundServer]) -> None:
    server = make()
    try:
        assert server.start() is server
        url = server.url
        assert server.start() is server
        assert server.url == url
    finally:
        server.stop()
    assert refused(url)


def test_a_stopped_server_starts_again(make: Callable[..., BackgroundServer]) -> None:
    port = free_port()
    server = make(port=port)
    with server:
        pass
    with server:
        assert not refused(server.url)
        assert urlsplit(server.url).port == port


def test_the_public_urls_are_the_servers() -> None:
    with (
        DevIssuer(bits=1024) as issuer,
        AwsEmulator() as aws,
        GcpEmulator() as gcp,
        EntraEmulator() as entra,
    ):
        assert issuer.url == root(issuer) + ISSUER_PATH
        assert issuer.jwks_url == issuer.url + "/.well-known/jwks.json"
        assert aws.endpoint_url == aws.url
        assert gcp.base_url == gcp.url == gcp.iam_url
        assert gcp.sts_url == gcp.url + "/v1/token"
        assert entra.authority_url == entra.url
