"""The multi-process check: 2 ``sts serve`` processes on Redis and PostgreSQL, 20 identical
cold requests at once, exactly one upstream call."""

from __future__ import annotations

import secrets
import threading

from harness.constants import READY_TIMEOUT_SECONDS
from harness.database import load_mappings, postgres_schema
from harness.processes import http
from harness.stack import Bench
from harness.tools import log
from harness.workload import caller_claims, form_body, generate_specs, mint


def single_flight(bench: Bench) -> None:
    """2 ``sts serve`` processes on Redis + PostgreSQL; 20 identical cold requests."""
    assert bench.issuer is not None
    assert bench.aws is not None
    log("multi-process check: 2 sts serve processes, Redis + PostgreSQL, 20 cold requests")
    with postgres_schema() as database_url:
        load_mappings(database_url, generate_specs(10))
        env = bench.sts_env(database_url, redis=True)
        timeout = READY_TIMEOUT_SECONDS
        a, url_a = bench.start_server("granian", "replica-a", env, ready_timeout=timeout)
        b, url_b = bench.start_server("granian", "replica-b", env, ready_timeout=timeout)
        try:
            claims = caller_claims(0, "sf" + secrets.token_hex(4))
            body = form_body(mint(bench.issuer, claims))
            delay = 0.5
            barrier = threading.Barrier(20)
            statuses: list[int] = []
            keys: set[str] = set()
            lock = threading.Lock()

            def call(url: str) -> None:
                with http() as session:
                    barrier.wait(timeout=30)
                    response = session.post(
                        url + "/token",
                        data=body,
                        headers={"Content-Type": "application/x-www-form-urlencoded"},
                        timeout=60,
                    )
                with lock:
                    statuses.append(response.status_code)
                    if response.status_code == 200:
                        keys.add(response.json()["aws_credentials"]["AccessKeyId"])

            before = len(bench.aws.requests)
            bench.aws.delay = delay
            try:
                threads = [
                    threading.Thread(target=call, args=((url_a, url_b)[n % 2],)) for n in range(20)
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(timeout=90)
            finally:
                bench.aws.delay = 0.0
            calls = len(bench.aws.requests) - before
            bench.report.single_flight = {
                "requests": 20,
                "ok": statuses.count(200),
                "distinct_credentials": len(keys),
                "upstream_calls": calls,
                "upstream_delay_s": delay,
                "passed": calls == 1 and statuses.count(200) == 20 and len(keys) == 1,
            }
        finally:
            bench.procs.stop(a)
            bench.procs.stop(b)
