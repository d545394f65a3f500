"""The database unreachable at request time and at start-up, on PostgreSQL through a TCP proxy.

The service reaches PostgreSQL only through :class:`TcpProxy`, which the test stops (listener
and every open connection) and starts again on the same port: a database outage as the service
sees it, without touching the shared server. The hot path (docs/architecture.md) uses no
database: verified tokens, the mapping index and credentials are all in memory.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from sts import create_app
from sts.db import Database
from sts.db.models import IssuanceEvent
from sts.dev.aws_emulator import AwsEmulator
from sts.dev.gcp_emulator import GcpEmulator
from sts.dev.issuer import DevIssuer
from sts.services import Services
from tests.conftest import AUDIENCE
from tests.functional.conftest import GRANT, ID_TOKEN, Stack, seed, serve_app, settings_for
from tests.functional.test_audit import Collect
from tests.functional.test_token import assert_error

pytestmark = pytest.mark.postgres

POSTGRES = ("127.0.0.1", 5432)


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to PostgreSQL, one thread pair per connection.

    :meth:`stop` closes the listener and cuts every forwarded connection, so the far side sees
    the database vanish; :meth:`start` listens on the same port again. :meth:`stall` is the
    nastier outage: connections are still accepted and nothing is refused, but no byte goes
    through in either direction until :meth:`resume` (a database host that hangs).
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
        self._flowing = threading.Event()
        self._flowing.set()
        self.connections = 0

    def stall(self) -> None:
        """Hold every byte, on open and new connections, until :meth:`resume`."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

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
                self._flowing.wait()
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
        self._flowing.set()
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


@pytest.fixture
def audit_log() -> Iterator[Collect]:
    handler = Collect()
    logger = logging.getLogger("sts.audit")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def metric(url: str, name: str) -> float:
    text = requests.get(url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} not exported")


def timed(call: Any) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def rows_for(database_url: str, deployment: str) -> int:
    database = Database(database_url)
    try:
        with database.engine.connect() as conn:
            count = conn.execute(
                sa.select(sa.func.count()).where(IssuanceEvent.deployment == deployment)
            ).scalar_one()
        return int(count)
    finally:
        database.dispose()


#: How long a wait for something that happens within a few seconds may take before the test
#: calls it stuck.
NOT_STUCK = 30.0


def wait_for(condition: Any, what: str, timeout: float = NOT_STUCK) -> None:
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


# The service's bounds (sts.audit, sts.services, sts.cache module docstrings), spelled out here.
AUDIT_WRITE_BOUND = 2.0
READY_PING_BOUND = 2.0
# What a request may take beyond a bound: the AWS emulator, thread hand-offs, a loaded machine.
# Generous: beyond its bound, a request held by the stalled database would wait for ever.
SLACK = 10.0


def test_stalled_database_holds_neither_cached_nor_cold_exchanges_nor_readyz(
    stack_factory: Any, postgres_url: str, proxy: TcpProxy, audit_log: Collect
) -> None:
    proxy.start()
    stack: Stack = stack_factory(database_url=through(proxy, postgres_url))
    cached = stack.token(deployment="cached-before-stall")
    first = stack.post(cached)
    assert first.status_code == 200, first.text
    assert get(stack.url, "/readyz").status_code == 200
    failures = metric(stack.url, "sts_audit_write_failures_total")
    late = metric(stack.url, "sts_audit_late_writes_total")

    proxy.stall()
    # These two touch no database: they take milliseconds, where anything that waited for the
    # stalled database would be let go only by a bound of its own (2 s), or never.
    again, took = timed(lambda: stack.post(cached))
    assert again.status_code == 200, again.text
    assert again.json()["aws_credentials"] == first.json()["aws_credentials"]
    assert took < AUDIT_WRITE_BOUND
    # No mapping for this caller: the in-memory index answers, no database, no cloud.
    unknown, took = timed(lambda: stack.post(stack.token(account="nobody-here")))
    assert unknown.status_code == 400, unknown.text
    assert took < AUDIT_WRITE_BOUND
    # A cold exchange: the pending row's INSERT hangs (bounded), AWS answers, the completing
    # write hangs (bounded again); the answer waits for neither beyond its bound.
    cold, took = timed(lambda: stack.post(stack.token(deployment="cold-during-stall")))
    assert cold.status_code == 200, cold.text
    assert 2 * AUDIT_WRITE_BOUND <= took < 2 * AUDIT_WRITE_BOUND + SLACK
    assert metric(stack.url, "sts_audit_write_failures_total") == failures + 2
    lost = [r for r in audit_log.records if getattr(r, "event", None)]
    assert [(r.event["deployment"], r.event["outcome"]) for r in lost] == [  # type: ignore[attr-defined]
        ("cold-during-stall", "pending"),
        ("cold-during-stall", "issued"),
    ]
    assert "did not answer within 2 s" in lost[0].getMessage()
    for _ in range(2):  # the second probe waits for the same hung ping, bounded again
        ready, took = timed(lambda: get(stack.url, "/readyz"))
        assert ready.status_code == 503
        assert "database" in ready.json()["reason"]
        assert took < READY_PING_BOUND + SLACK
    assert get(stack.url, "/healthz").status_code == 200

    proxy.resume()
    wait_for(lambda: get(stack.url, "/readyz").status_code == 200, "not ready after the stall")
    after = stack.post(stack.token(deployment="after-stall"))
    assert after.status_code == 200, after.text
    assert rows_for(postgres_url, "after-stall") == 1
    # One writer, in order: the stalled INSERT finished before this one and was rolled back,
    # so the WARNING line stays that event's only record.
    assert rows_for(postgres_url, "cold-during-stall") == 0
    assert metric(stack.url, "sts_audit_late_writes_total") == late
    assert metric(stack.url, "sts_audit_write_failures_total") == failures + 2


def test_stalled_database_before_the_first_load_answers_503_at_once(
    issuer: DevIssuer, aws: AwsEmulator, gcp: GcpEmulator, postgres_url: str, proxy: TcpProxy
) -> None:
    seed(postgres_url).dispose()
    proxy.start()
    proxy.stall()
    services = Services.build(settings_for(through(proxy, postgres_url), issuer, aws, gcp))
    server, url = serve_app(create_app(services=services))
    token = issuer.mint(audience=AUDIENCE, deployment="before-first-load")
    form = {"grant_type": GRANT, "subject_token_type": ID_TOKEN, "subject_token": token}
    try:
        wait_for(lambda: services.registry.ready()[0], "issuer keys never loaded")
        wait_for(lambda: proxy.connections >= 1, "the refresher never reached the database")
        response, took = timed(lambda: requests.post(url + "/token", data=form, timeout=30))
        # At most the wait for the first load (sts.mappings.live: 1 s), whatever the database.
        assert took < 1.0 + SLACK
        body = assert_error(response, 503, "temporarily_unavailable", token)
        assert body["error_description"] == "mappings unavailable"
        ready, took = timed(lambda: get(url, "/readyz"))
        assert ready.status_code == 503
        assert took < READY_PING_BOUND + SLACK

        proxy.resume()
        wait_for(lambda: get(url, "/readyz").status_code == 200, "not ready once resumed")
        response = requests.post(url + "/token", data=form, timeout=30)
        assert response.status_code == 200, response.text
    finally:
        proxy.stop()
        server.shutdown()
        server.server_close()
        services.close()
