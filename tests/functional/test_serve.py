"""``sts serve`` (the production server, several workers) and ``sts demo``, as processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from sts.dev.aws_emulator import AwsEmulator
from sts.dev.gcp_emulator import GcpEmulator
from sts.dev.issuer import DevIssuer
from tests.conftest import AUDIENCE
from tests.functional.conftest import DEFAULT_MAPPINGS, GRANT, ID_TOKEN
from tests.functional.serving import free_port, run_sts, serve_env, sts_serve


@pytest.fixture
def env(tmp_path: Path, issuer: DevIssuer, aws: AwsEmulator, gcp: GcpEmulator) -> dict[str, str]:
    return serve_env(f"sqlite:///{tmp_path / 'serve.db'}", issuer, aws, gcp)


@pytest.fixture
def server(env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    mappings = tmp_path / "mappings.yaml"
    mappings.write_text(DEFAULT_MAPPINGS)
    with sts_serve(env, tmp_path / "serve.log", "--workers", "2") as url:
        result = run_sts("mappings", "apply", str(mappings), env=env)
        assert result.returncode == 0, result.stderr
        yield url


def test_serve_migrates_sqlite_and_exchanges(server: str, issuer: DevIssuer) -> None:
    token = issuer.mint(audience=AUDIENCE, deployment="served-by-granian")
    deadline = time.monotonic() + 10
    # Each worker picks up the applied mappings within its refresh interval.
    while True:
        response = requests.post(
            server + "/token",
            data={"grant_type": GRANT, "subject_token": token, "subject_token_type": ID_TOKEN},
            timeout=30,
        )
        if response.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert response.status_code == 200, response.text
    assert response.json()["mapping"] == "orders-prod"
    assert response.headers["Cache-Control"] == "no-store"
    assert requests.get(server + "/healthz", timeout=5).status_code == 200


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("STS_AUDIENCE", ""),
        ("STS_CLOCK_SKEW_SECONDS", "soon"),
        ("STS_TRUSTED_ISSUERS", "http://issuer.example"),
        ("STS_LOG_FORMAT", "yaml"),
    ],
)
def test_serve_refuses_bad_configuration(env: dict[str, str], variable: str, value: str) -> None:
    env = {**env, variable: value}
    result = run_sts("serve", "--port", str(free_port()), env=env, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert variable in lines[0]


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STS_")}
    result = run_sts("demo", env=clean, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "orders-prod" in result.stdout
    assert "analytics-gcp" in result.stdout
    assert "GetCallerIdentity" in result.stdout
    # In broker mode: the clouds saw the service's own tokens, and AWS refused the Zuplo one.
    assert "broker mode" in result.stdout
    assert re.search(r"sub +mapping:orders-prod\n", result.stdout)
    assert re.search(r"aud +sts\.amazonaws\.com\n", result.stdout)
    assert re.search(r"sub +mapping:analytics-gcp\n", result.stdout)
    assert re.search(r"tag zuplo-project +my-project\n", result.stdout)
    assert "refused: InvalidIdentityToken" in result.stdout
    assert "billing-azure" in result.stdout
    assert re.search(r"sub +mapping:billing-azure\n", result.stdout)
    assert re.search(r"aud +api://AzureADTokenExchange\n", result.stdout)
    assert "one AWS, one GCP and one Azure exchange" in result.stdout
    # The demo shows credentials masked, never whole: no long secret-looking run of characters
    # (the Azure tenant and client ids are GUIDs, not secrets).
    shown = re.sub(r"\b[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}\b", "<guid>", result.stdout)
    assert not re.search(r"[A-Za-z0-9_+-]{30,}", shown), result.stdout
    assert list(tmp_path.iterdir()) == []


def answering_pids(log: Path, request_ids: set[str], timeout: float = 10) -> dict[str, int]:
    """Request id -> worker PID, from the server's access log lines for ``request_ids``
    (waiting for the log flusher, which writes them a moment after the answer)."""
    deadline = time.monotonic() + timeout
    while True:
        found = {
            doc["request_id"]: doc["pid"]
            for doc in (
                json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")
            )
            if doc.get("request_id") in request_ids
        }
        if len(found) == len(request_ids) or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_metrics_add_up_across_worker_processes(
    server: str, issuer: DevIssuer, tmp_path: Path
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    token = issuer.mint(audience=AUDIENCE, deployment="metrics-" + os.urandom(4).hex())
    data = {"grant_type": GRANT, "subject_token": token, "subject_token_type": ID_TOKEN}
    # The mappings were applied after start-up: wait until both workers have picked them up.
    deadline = time.monotonic() + 15
    streak = 0
    while streak < 12:
        ok = requests.post(server + "/token", data=data, timeout=30).status_code == 200
        streak = streak + 1 if ok else 0
        assert time.monotonic() < deadline

    def total() -> float:
        text = requests.get(server + "/metrics", timeout=10).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "sts_exchanges"
            for sample in family.samples
            if sample.name == "sts_exchanges_total"
        )

    before = total()
    request_ids = {f"both-workers-{n}" for n in range(20)}
    # Fresh connections spread over both workers; every scrape sees the sum of both.
    for request_id in sorted(request_ids):
        response = requests.post(
            server + "/token", data=data, headers={"X-Request-Id": request_id}, timeout=30
        )
        assert response.status_code == 200
    scrapes = {total() - before for _ in range(6)}
    assert scrapes == {20.0}
    # Both workers answered some of those twenty: the sum really is over two processes.
    pids = answering_pids(tmp_path / "serve.log", request_ids)
    assert set(pids) == request_ids
    assert len(set(pids.values())) == 2, pids


def test_serve_reads_a_chunked_body(server: str, issuer: DevIssuer) -> None:
    from urllib.parse import urlencode

    from tests.functional.test_request_properties import chunked_post

    token = issuer.mint(audience=AUDIENCE, deployment="chunked-" + os.urandom(4).hex())
    body = urlencode(
        {"grant_type": GRANT, "subject_token": token, "subject_token_type": ID_TOKEN}
    ).encode()
    deadline = time.monotonic() + 10
    while True:
        # The mappings were applied after start-up: each worker picks them up on its own.
        status, headers, answer = chunked_post(server, body)
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status == 200, (status, headers, answer)
    assert headers["cache-control"] == "no-store"


def test_a_worker_forked_after_the_app_was_built_keeps_its_keys_fresh(
    issuer: DevIssuer, aws: AwsEmulator, gcp: GcpEmulator, tmp_path: Path
) -> None:
    """A pre-forking server (gunicorn --preload and the like) builds the app, then forks: the
    parent runs nothing of the service's, and the worker starts its own key-set refresher."""
    from werkzeug.serving import make_server

    from sts import create_app
    from sts.identity.jwks import JWKSRegistry
    from sts.services import Services
    from tests.functional.conftest import seed, settings_for

    url = f"sqlite:///{tmp_path / 'fork.db'}"
    seed(url).dispose()
    settings = settings_for(url, issuer, aws, gcp)
    # Keys expire at once (max-age=0, a half-second floor): only a live refresher refetches.
    saved_headers = issuer.jwks_headers
    issuer.jwks_headers = {"Cache-Control": "max-age=0"}
    services = Services.build(settings, registry=JWKSRegistry(settings, min_ttl=0.5))
    before = set(threading.enumerate())
    app = create_app(services=services)
    # Nothing of the service runs in the parent: a thread of it could hold a lock (a metric's,
    # a connection pool's) at the instant of the fork, held in the child for ever.
    assert set(threading.enumerate()) - before == set()
    port = free_port()
    child = os.fork()
    if child == 0:  # pragma: no cover - the worker; it never returns to pytest
        try:
            make_server("127.0.0.1", port, app, threaded=True).serve_forever()
        finally:
            os._exit(1)
    try:
        services.close()
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                requests.get(base + "/healthz", timeout=2)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        fetched = issuer.fetches
        # No further requests: fetches now come from the worker's background refresher only.
        deadline = time.monotonic() + 10
        while issuer.fetches < fetched + 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert issuer.fetches >= fetched + 3
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        issuer.jwks_headers = saved_headers


def exchange(url: str, token: str) -> requests.Response:
    return requests.post(
        url + "/token",
        data={"grant_type": GRANT, "subject_token": token, "subject_token_type": ID_TOKEN},
        timeout=30,
    )


def test_cached_answers_never_wait_for_a_request_thread_held_by_a_slow_cloud(
    env: dict[str, str], tmp_path: Path, issuer: DevIssuer, aws: AwsEmulator
) -> None:
    """One worker, one request thread, an AWS that answers after 4.5 s: while the thread waits on
    AWS, a request whose credentials are cached is answered at once, on the event loop."""
    mappings = tmp_path / "mappings.yaml"
    mappings.write_text(DEFAULT_MAPPINGS)
    with sts_serve(env, tmp_path / "serve.log", "--workers", "1", "--threads", "1") as url:
        assert run_sts("mappings", "apply", str(mappings), env=env).returncode == 0
        cached = issuer.mint(audience=AUDIENCE, deployment="cached-one")
        deadline = time.monotonic() + 10
        while exchange(url, cached).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        aws.delay = 4.5  # under the AWS call's 5 s read time-out
        try:
            with ThreadPoolExecutor(2) as pool:
                calls = len(aws.requests)
                cold = pool.submit(exchange, url, issuer.mint(audience=AUDIENCE, deployment="cold"))
                # The cold request holds the only request thread once AWS has its call.
                deadline = time.monotonic() + 10
                while len(aws.requests) == calls:
                    assert time.monotonic() < deadline, "the cold call never reached AWS"
                    time.sleep(0.01)
                started = time.monotonic()
                answer = exchange(url, cached)
                elapsed = time.monotonic() - started
                assert answer.status_code == 200, answer.text
                # Not stuck behind the cold call (4.5 s): generous for a loaded machine.
                assert elapsed < 3.0, elapsed
                assert not cold.done()
                assert cold.result(timeout=30).status_code == 200
        finally:
            aws.delay = 0.0
    lines = [
        json.loads(line)
        for line in (tmp_path / "serve.log").read_text().splitlines()
        if line.startswith("{")
    ]
    hits = [line for line in lines if line.get("cache_hit") is True]
    assert hits, "the cached answers were logged like any other"


def children_of(pid: int) -> set[int]:
    """PIDs whose parent is ``pid`` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after its closing paren.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.add(int(entry.name))
    return found


def test_a_second_server_on_the_same_port_exits_1_in_one_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    with sts_serve(env, tmp_path / "serve.log") as url:
        port = url.rsplit(":", 1)[1]
        other = {**env, "STS_AUDIENCE": "https://another.example"}
        result = run_sts("serve", "--port", port, env=other)
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert lines == [
            f"error: cannot listen on 127.0.0.1:{port}: "
            "the port is in use (is another sts serve running?)"
        ]
        assert requests.get(url + "/healthz", timeout=5).status_code == 200


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")
@contextmanager
def server_process(env: dict[str, str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    """``sts serve --port PORT``, output discarded; killed on the way out if still running."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sts", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def both_workers(server_pid: int, deadline: float, poll: float = 0.1) -> set[int]:
    """The pids of the server's two workers, once both exist."""
    workers: set[int] = set()
    while len(workers) < 2:
        workers = children_of(server_pid)
        assert time.monotonic() < deadline, workers
        time.sleep(poll)
    return workers


def assert_none_outlives(workers: set[int], port: int) -> None:
    """Within 10 s of the server's death, no worker is left, and nothing answers on ``port``."""
    deadline = time.monotonic() + 10
    while alive := [pid for pid in workers if Path(f"/proc/{pid}").exists()]:
        assert time.monotonic() < deadline, f"workers {alive} outlived the server"
        time.sleep(0.1)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_workers_die_with_a_server_killed_by_sigkill(env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with server_process(env, port) as proc:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.1)
        workers = both_workers(proc.pid, deadline)
        proc.kill()
        proc.wait()
        assert_none_outlives(workers, port)


def test_workers_still_starting_die_with_a_server_killed_by_sigkill(env: dict[str, str]) -> None:
    """The server killed while its workers are still importing the application: they must not
    survive as orphans (a SIGTERM then met the server's own handlers, which a forked worker
    inherits, and was lost)."""
    port = free_port()
    with server_process(env, port) as proc:
        workers = both_workers(proc.pid, time.monotonic() + 30, poll=0.01)
        proc.kill()
        proc.wait()
        assert_none_outlives(workers, port)
