"""The database unreachable at request time and at start-up, on PostgreSQL through a TCP proxy.

The service reaches PostgreSQL only through :class:`TcpProxy`, which the test stops (listener
and every open connection) and starts again on the same port: a database outage as the service
sees it, without touching the shared server. The hot path (DESIGN.md, "one exchange") uses no
database: verified tokens, the mapping index and credentials are all in memory.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from sqlalchemy.engine import make_url

from sts import create_app
from sts.dev.aws_emulator import AwsEmulator
from sts.dev.gcp_emulator import GcpEmulator
from sts.dev.issuer import DevIssuer
from sts.services import Services
from tests.conftest import AUDIENCE
from tests.functional.conftest import Stack, seed, serve_app, settings_for
from tests.functional.test_token import assert_error

pytestmark = pytest.mark.postgres

POSTGRES = ("127.0.0.1", 5432)


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to PostgreSQL, one thread pair per connection.

    :meth:`stop` closes the listener and cuts every forwarded connection, so the far side sees
    the database vanish; :meth:`start` listens on the same port again.
    """

    def __init__(self, target: tuple[str, int] = POSTGRES) -> None:
        self.target = target
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self.connections = 0

    def start(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        listener.settimeout(0.05)
        self._listener = listener
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, args=(listener, self._stopped), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket, stopped: threading.Event) -> None:
        while not stopped.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            server.settimeout(None)
            with self._lock:
                if stopped.is_set():
                    client.close()
                    server.close()
                    return
                self._open.update((client, server))
                self.connections += 1
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                self._cut(sock)

    def _cut(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def stop(self) -> None:
        self._stopped.set()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            open_sockets = list(self._open)
        for sock in open_sockets:
            self._cut(sock)


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    proxy = TcpProxy()
    try:
        yield proxy
    finally:
        proxy.stop()


def through(proxy: TcpProxy, url: str) -> str:
    """``url`` (the ``postgres_url`` fixture's schema) reached through the proxy instead."""
    return (
        make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    )


def get(stack_url: str, path: str) -> requests.Response:
    return requests.get(stack_url + path, timeout=10)


def wait_for(condition: Any, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_outage_at_request_time_cached_paths_keep_serving(
    stack_factory: Any, postgres_url: str, proxy: TcpProxy
) -> None:
    proxy.start()
    stack: Stack = stack_factory(database_url=through(proxy, postgres_url))
    cached = stack.token(deployment="cached-before-outage")
    first = stack.post(cached)
    assert first.status_code == 200, first.text
    assert proxy.connections >= 1

    proxy.stop()
    upstream_calls = stack.services.cache.upstream_calls
    # The same request: cached verification, in-memory index, cached credentials.
    again = stack.post(cached)
    assert again.status_code == 200, again.text
    assert again.json()["aws_credentials"] == first.json()["aws_credentials"]
    assert stack.services.cache.upstream_calls == upstream_calls
    # A new identity: the mapping index is in memory, so only AWS is asked.
    fresh = stack.post(stack.token(deployment="new-during-outage"))
    assert fresh.status_code == 200, fresh.text
    assert fresh.json()["mapping"] == "orders-prod"
    gcp = stack.post(stack.token(account="gcp-account", project="analytics", deployment="g-out"))
    assert gcp.status_code == 200, gcp.text

    ready = get(stack.url, "/readyz")
    assert ready.status_code == 503
    assert ready.headers["Content-Type"].startswith("application/json")
    assert "database" in ready.json()["reason"]
    assert get(stack.url, "/healthz").status_code == 200

    proxy.start()
    wait_for(lambda: get(stack.url, "/readyz").status_code == 200, "not ready after recovery")
    assert stack.post(stack.token(deployment="after-recovery")).status_code == 200


def test_database_down_at_start_up(
    issuer: DevIssuer, aws: AwsEmulator, gcp: GcpEmulator, postgres_url: str, proxy: TcpProxy
) -> None:
    # The schema and mappings exist; the service just cannot reach them yet.
    seed(postgres_url).dispose()
    services = Services.build(settings_for(through(proxy, postgres_url), issuer, aws, gcp))
    server, url = serve_app(create_app(services=services))
    try:
        wait_for(lambda: services.registry.ready()[0], "issuer keys never loaded")
        token = issuer.mint(audience=AUDIENCE, deployment="before-database")
        response = requests.post(
            url + "/token",
            data={
                "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                "subject_token": token,
                "subject_token_type": "urn:ietf:params:oauth:token-type:id_token",
            },
            timeout=30,
        )
        assert_error(response, 503, "temporarily_unavailable", token)
        ready = get(url, "/readyz")
        assert ready.status_code == 503
        assert "database" in ready.json()["reason"]
        assert get(url, "/healthz").status_code == 200

        proxy.start()
        wait_for(lambda: get(url, "/readyz").status_code == 200, "not ready once the db is up")
        response = requests.post(
            url + "/token",
            data={
                "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                "subject_token": token,
                "subject_token_type": "urn:ietf:params:oauth:token-type:id_token",
            },
            timeout=30,
        )
        assert response.status_code == 200, response.text
    finally:
        server.shutdown()
        server.server_close()
        services.close()
