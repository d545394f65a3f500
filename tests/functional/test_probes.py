"""Probes never wait behind exchanges (docs/reference.md section 10): with 16 cold requests on a
cloud that answers after 4.5 s, for one credential key or for 16, ``/healthz`` and ``/readyz``
answer at once on every worker of a real ``sts serve``, and waiting for another request's
upstream call holds no request thread (the cold requests all finish, one call per key and
worker)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from sts.dev.aws_emulator import AwsEmulator
from sts.dev.gcp_emulator import GcpEmulator
from sts.dev.issuer import DevIssuer
from tests.conftest import AUDIENCE
from tests.functional.conftest import DEFAULT_MAPPINGS, GRANT, ID_TOKEN
from tests.functional.serving import run_sts, serve_env, sts_serve

#: Just under the AWS call's 5 s read time-out (the service would retry, then answer 503).
CLOUD_SECONDS = 4.5
COLD_REQUESTS = 16
#: "Not stuck": the contract's bounds are 100 ms (/healthz) and 2 s (/readyz); these leave room
#: for a loaded 2-core machine and still fail at once if a probe waits for the cloud.
HEALTHZ_BOUND = 1.5
READYZ_BOUND = 3.5


@pytest.fixture
def slow_aws() -> Iterator[AwsEmulator]:
    with AwsEmulator() as emulator:
        yield emulator


@pytest.fixture
def server(
    tmp_path: Path, issuer: DevIssuer, slow_aws: AwsEmulator, gcp: GcpEmulator
) -> Iterator[str]:
    env = serve_env(f"sqlite:///{tmp_path / 'probes.db'}", issuer, slow_aws, gcp)
    mappings = tmp_path / "mappings.yaml"
    mappings.write_text(DEFAULT_MAPPINGS)
    # Applied before the server starts: every worker's first index holds them.
    assert run_sts("db", "upgrade", env=env).returncode == 0
    assert run_sts("mappings", "apply", str(mappings), env=env).returncode == 0
    with sts_serve(env, tmp_path / "serve.log", "--workers", "2") as url:
        yield url


def exchange(url: str, token: str) -> requests.Response:
    data = {"grant_type": GRANT, "subject_token": token, "subject_token_type": ID_TOKEN}
    return requests.post(url + "/token", data=data, timeout=60)


def probe(url: str, path: str) -> tuple[float, int]:
    """Seconds and status of one probe, on a new connection (any worker may take it)."""
    started = time.monotonic()
    response = requests.get(url + path, timeout=30, headers={"Connection": "close"})
    return time.monotonic() - started, response.status_code


@pytest.mark.parametrize("distinct", [False, True], ids=["one-key", "distinct-keys"])
def test_probes_answer_at_once_beside_cold_exchanges_on_a_slow_cloud(
    server: str, issuer: DevIssuer, slow_aws: AwsEmulator, distinct: bool
) -> None:
    tokens = [
        issuer.mint(audience=AUDIENCE, deployment=f"cold-{n if distinct else 'same'}")
        for n in range(COLD_REQUESTS)
    ]
    calls = len(slow_aws.requests)
    slow_aws.delay = CLOUD_SECONDS
    with ThreadPoolExecutor(COLD_REQUESTS) as pool:
        cold: list[Future[requests.Response]] = [
            pool.submit(exchange, server, token) for token in tokens
        ]
        # The probes start once the cloud holds calls (the observable event), not after a nap.
        deadline = time.monotonic() + 15
        while len(slow_aws.requests) == calls:
            assert time.monotonic() < deadline, "no call reached the cloud"
            time.sleep(0.01)
        healthz: list[float] = []
        readyz: list[float] = []
        while not all(future.done() for future in cold) and len(healthz) < 40:
            seconds, status = probe(server, "/healthz")
            assert status == 200
            healthz.append(seconds)
            seconds, status = probe(server, "/readyz")
            # Its own 2 s database bound may answer 503 on a machine this loaded; never late.
            assert status in (200, 503)
            readyz.append(seconds)
        answers = [future.result(timeout=60) for future in cold]
    slow_aws.delay = 0.0
    assert len(healthz) >= 5, "the cold requests finished before the probes could be timed"
    assert max(healthz) < HEALTHZ_BOUND, sorted(healthz)[-5:]
    assert max(readyz) < READYZ_BOUND, sorted(readyz)[-5:]
    assert [answer.status_code for answer in answers] == [200] * COLD_REQUESTS, [
        answer.text for answer in answers if answer.status_code != 200
    ]
    made = len(slow_aws.requests) - calls
    if distinct:
        assert made == COLD_REQUESTS
    else:
        assert 1 <= made <= 2  # one per worker at most, without Redis
