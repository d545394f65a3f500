"""Two ``sts serve`` processes sharing PostgreSQL and Redis, as two replicas would."""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from sts.dev.aws_emulator import AwsEmulator
from sts.dev.gcp_emulator import GcpEmulator
from sts.dev.issuer import DevIssuer
from tests.conftest import AUDIENCE, _postgres_schema_url
from tests.functional.conftest import DEFAULT_MAPPINGS, GRANT, ID_TOKEN
from tests.functional.serving import START_TIMEOUT, free_port, run_sts, serve_env

pytestmark = pytest.mark.postgres

#: How long a wait for something that happens within a few seconds may take before the test
#: calls it stuck.
NOT_STUCK = 30.0
#: The replicas' Redis URL. The socket time-outs (redis-py URL options, which win over the
#: service's 0.25 s) are generous: these tests are about what the replicas share through Redis,
#: and a call that a loaded machine made time out would be "Redis unavailable", served by one
#: process alone (tests/unit/test_cache_redis.py covers a slow Redis, with the short time-out).
REDIS_URL = "redis://127.0.0.1:6379/0?socket_timeout=5&socket_connect_timeout=5"


class Replica:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._out = open(log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sts", "serve", "--port", str(self.port), "--workers", "2"],
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            # Its own process group: the server and its granian workers can be killed together.
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                ready = requests.get(self.url + "/readyz", timeout=1).status_code == 200
                # /readyz is answered by one worker: wait until both have built their index.
                if ready and self.log.read_text().count('"msg":"mapping index loaded"') >= 2:
                    return
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()

    def kill_all(self) -> None:
        """SIGKILL the whole process group (server and workers), as a node failure would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=15)
        self._out.close()

    def refuses_connections(self, timeout: float = 10) -> bool:
        """True once nothing listens on the replica's port any more."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except ConnectionRefusedError:
                return True
            except OSError:
                pass
            time.sleep(0.05)
        return False


@pytest.fixture(scope="module")
def shared_postgres() -> Iterator[str]:
    yield from _postgres_schema_url()


@pytest.fixture(scope="module")
def replicas(
    shared_postgres: str,
    issuer: DevIssuer,
    aws: AwsEmulator,
    gcp: GcpEmulator,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Replica, Replica, dict[str, str]]]:
    tmp_path = tmp_path_factory.mktemp("replicas")
    postgres_url = shared_postgres
    env = serve_env(
        postgres_url,
        issuer,
        aws,
        gcp,
        STS_REDIS_URL=REDIS_URL,
        STS_CACHE_ENCRYPTION_KEY=base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
    )
    assert run_sts("db", "upgrade", env=env).returncode == 0
    mappings = tmp_path / "mappings.yaml"
    mappings.write_text(DEFAULT_MAPPINGS)
    applied = run_sts("mappings", "apply", str(mappings), env=env)
    assert applied.returncode == 0, applied.stderr
    a = Replica(env, tmp_path / "a.log")
    b = Replica(env, tmp_path / "b.log")
    try:
        a.wait_ready()
        b.wait_ready()
        yield a, b, env
    finally:
        a.stop()
        b.stop()


def exchange(url: str, token: str, **fields: str) -> requests.Response:
    data = {"grant_type": GRANT, "subject_token": token, "subject_token_type": ID_TOKEN, **fields}
    return requests.post(url + "/token", data=data, timeout=30)


def test_one_upstream_call_for_twenty_concurrent_cold_requests(
    replicas: tuple[Replica, Replica, dict[str, str]], issuer: DevIssuer, aws: AwsEmulator
) -> None:
    a, b, _ = replicas
    # A deployment name no other test (or earlier run) used: a cold key in the shared Redis.
    token = issuer.mint(audience=AUDIENCE, deployment="scale-" + secrets.token_hex(6))
    seen = len(aws.requests)
    aws.delay = 0.5
    statuses: list[int] = []
    keys: list[str] = []
    barrier = threading.Barrier(20)

    def call(url: str) -> None:
        barrier.wait()
        response = exchange(url, token)
        statuses.append(response.status_code)
        if response.status_code == 200:
            keys.append(response.json()["aws_credentials"]["AccessKeyId"])

    try:
        threads = [threading.Thread(target=call, args=((a, b)[n % 2].url,)) for n in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        aws.delay = 0
    assert statuses == [200] * 20
    assert len(set(keys)) == 1
    assert len(aws.requests[seen:]) == 1


def test_mapping_change_reaches_both_replicas(
    replicas: tuple[Replica, Replica, dict[str, str]], issuer: DevIssuer, tmp_path: Path
) -> None:
    a, b, env = replicas
    token = issuer.mint(audience=AUDIENCE, account="late-account", project="p")
    for replica in (a, b):
        assert exchange(replica.url, token).json()["error"] == "unauthorized_client"
    late = tmp_path / "late.yaml"
    late.write_text(
        "mappings:\n"
        "  - name: late\n"
        "    account: late-account\n"
        "    project: p\n"
        "    aws: {role_arn: 'arn:aws:iam::123456789012:role/late'}\n"
    )
    assert run_sts("mappings", "apply", str(late), env=env).returncode == 0
    # Each worker polls the database every 2 s (sts.mappings.live): "not stuck" is far later.
    deadline = time.monotonic() + NOT_STUCK
    pending = {a.url, b.url}
    while pending and time.monotonic() < deadline:
        # Several tries per replica: its two workers each refresh on their own.
        for url in list(pending):
            if all(exchange(url, token).status_code == 200 for _ in range(4)):
                pending.discard(url)
        time.sleep(0.2)
    assert not pending


def audit_rows(database_url: str, deployment_prefix: str) -> list[tuple[str, str]]:
    import sqlalchemy as sa

    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT deployment, outcome FROM issuance_events WHERE deployment LIKE :p"),
                {"p": deployment_prefix + "%"},
            ).all()
    finally:
        engine.dispose()
    return [(row[0], row[1]) for row in rows]


def test_exchange_through_either_replica_is_audited_once(
    replicas: tuple[Replica, Replica, dict[str, str]], issuer: DevIssuer, shared_postgres: str
) -> None:
    a, b, _ = replicas
    prefix = "audit-once-" + secrets.token_hex(4)
    token = issuer.mint(audience=AUDIENCE, deployment=prefix)
    for replica in (a, b, a, b):
        assert exchange(replica.url, token).status_code == 200
    assert audit_rows(shared_postgres, prefix) == [(prefix, "issued")]


def test_killing_a_replica_mid_load_loses_no_audit_row(
    replicas: tuple[Replica, Replica, dict[str, str]], issuer: DevIssuer, shared_postgres: str
) -> None:
    """Cold exchanges (each one upstream call and one audit row) on both replicas; one replica
    is killed with SIGKILL halfway. Every credential handed out has its row, and the survivor
    keeps answering."""
    a, b, _ = replicas
    prefix = "kill-" + secrets.token_hex(4)
    served: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def load(replica: Replica, worker: int) -> None:
        for n in range(200):
            if stop.is_set():
                return
            deployment = f"{prefix}-{worker}-{n}"
            token = issuer.mint(audience=AUDIENCE, deployment=deployment)
            try:
                response = exchange(replica.url, token)
            except requests.RequestException:
                continue  # the killed replica: no answer, so no credential handed out
            if response.status_code == 200:
                with lock:
                    served.append(deployment)

    threads = [threading.Thread(target=load, args=((a, b)[w % 2], w)) for w in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + NOT_STUCK
    while len(served) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    a.kill_all()
    killed_at = len(served)
    # Every worker died with the server: no process is left to answer on its port.
    assert a.refuses_connections()
    # The survivor keeps answering the load after the kill.
    deadline = time.monotonic() + NOT_STUCK
    while len(served) < killed_at + 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    for thread in threads:
        thread.join(30)

    assert killed_at >= 20
    assert len(served) >= killed_at + 10, "the survivor stopped answering after the kill"
    survivors = [
        exchange(b.url, issuer.mint(audience=AUDIENCE, deployment=f"{prefix}-after-{n}"))
        for n in range(3)
    ]
    assert [r.status_code for r in survivors] == [200, 200, 200]
    rows = dict(audit_rows(shared_postgres, prefix))
    missing = [deployment for deployment in served if deployment not in rows]
    assert missing == []
    assert all(rows[d] == "issued" for d in served)
