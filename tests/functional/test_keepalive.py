"""Keep-alive connections are closed after a bounded number of requests or seconds
(docs/reference.md section 10), so a worker that died and was restarted gets its share of steady
keep-alive traffic back: without the bound, every client that reconnected to the surviving
worker stayed there for good. A real ``sts serve`` with two workers; one is SIGKILLed under
load from 16 keep-alive clients, and the requests each worker answers are counted from the
access log."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from sts.dev.aws_emulator import AwsEmulator
from sts.dev.gcp_emulator import GcpEmulator
from sts.dev.issuer import DevIssuer
from sts.rsgi import KeepAlive
from tests.conftest import AUDIENCE
from tests.functional.conftest import DEFAULT_MAPPINGS, GRANT, ID_TOKEN
from tests.functional.serving import free_port, run_sts, serve_env

CLIENTS = 16
#: The new worker's share of the requests answered after it started, to count as "back".
FAIR_SHARE = 0.2


def test_a_connection_is_spent_after_its_requests_or_its_seconds() -> None:
    now = [0.0]
    keepalive = KeepAlive(requests=3, seconds=10.0, clock=lambda: now[0])
    assert [keepalive.spent("a:1") for _ in range(3)] == [False, False, True]
    assert keepalive.spent("a:1") is False  # a new connection on that port starts again
    assert keepalive.spent("b:2") is False
    now[0] = 10.0
    assert keepalive.spent("b:2") is True  # old enough
    assert keepalive.spent("a:1") is True


def workers_of(server: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == server:
                found.add(int(entry.name))
    return found


def pids_answering(log: Path) -> list[int]:
    """The worker pid of every /token answer logged so far, in order."""
    pids = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"path":"/token"' in line:
            try:
                pids.append(json.loads(line)["pid"])
            except (ValueError, KeyError):
                continue  # the last line may still be being written
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_restarted_worker_gets_its_share_of_keepalive_traffic_back(
    tmp_path: Path, issuer: DevIssuer, aws: AwsEmulator, gcp: GcpEmulator
) -> None:
    env = serve_env(f"sqlite:///{tmp_path / 'ka.db'}", issuer, aws, gcp)
    mappings = tmp_path / "mappings.yaml"
    mappings.write_text(DEFAULT_MAPPINGS)
    assert run_sts("db", "upgrade", env=env).returncode == 0
    assert run_sts("mappings", "apply", str(mappings), env=env).returncode == 0
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    body = {
        "grant_type": GRANT,
        "subject_token_type": ID_TOKEN,
        "subject_token": issuer.mint(audience=AUDIENCE, deployment="keepalive"),
    }
    stop = threading.Event()
    errors: Counter[str] = Counter()

    def client() -> None:
        with requests.Session() as session:  # one keep-alive connection at a time
            while not stop.is_set():
                try:
                    session.post(url + "/token", data=body, timeout=10)
                except requests.RequestException as exc:  # the killed worker's connections
                    errors[type(exc).__name__] += 1

    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "sts", "serve", "--port", str(port), "--workers", "2"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    clients = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, log.read_text()
            try:
                if requests.post(url + "/token", data=body, timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.1)
        for thread in clients:
            thread.start()
        deadline = time.monotonic() + 30
        while len(set(pids_answering(log))) < 2 or len(workers_of(server.pid)) < 2:
            assert time.monotonic() < deadline, "both workers never answered"
            time.sleep(0.1)

        victim = min(workers_of(server.pid))
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:
            restarted = workers_of(server.pid) - {victim}
            new = restarted - set(pids_answering(log))
            if len(restarted) == 2 and new:
                break
            assert time.monotonic() < deadline, "the worker was not restarted"
            time.sleep(0.05)
        (newcomer,) = new
        answered_before = len(pids_answering(log))

        # Within a minute of its start the new worker answers its share of what follows.
        deadline = time.monotonic() + 60
        while True:
            since = pids_answering(log)[answered_before:]
            share = since.count(newcomer) / len(since) if since else 0.0
            if len(since) >= 500 and share >= FAIR_SHARE:
                break
            assert time.monotonic() < deadline, (
                f"new worker answered {since.count(newcomer)} of {len(since)} requests"
            )
            time.sleep(0.5)
    finally:
        stop.set()
        for thread in clients:
            thread.join(15)
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
