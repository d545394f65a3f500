"""The main runs: for one mapping count, a fresh database and ``sts serve`` measured on the
cached, warm and cold paths."""

from __future__ import annotations

import secrets
import time

from harness.client import issue_all, warm_up
from harness.constants import COLD_RATE_CEILING, GRANIAN_4, READY_TIMEOUT_SECONDS
from harness.database import load_mappings
from harness.report import Row
from harness.stack import Bench
from harness.tools import log
from harness.workload import generate_specs, mint_bodies


def run_mapping_count(bench: Bench, count: int) -> None:
    """A fresh database of ``count`` generated mappings, ``sts serve`` on it, and the cached, warm
    and cold scenarios one after the other."""
    assert bench.issuer is not None
    assert bench.aws is not None
    assert bench.gcp is not None
    args = bench.args
    log(f"{count} mappings: generating and applying")
    specs = generate_specs(count)
    bench.allow_service_accounts(count)
    with bench.database(f"mappings-{count}") as database_url:
        seconds = load_mappings(database_url, specs)
        bench.report.apply_seconds[count] = seconds
        log(f"  apply of {count} mappings in one transaction: {seconds:.2f}s")
        del specs
        env = bench.sts_env(database_url, redis=not args.no_redis)
        started = time.monotonic()
        ready_timeout = READY_TIMEOUT_SECONDS + count / 500
        server, url = bench.start_server(
            "granian", f"sts-{count}", env, ready_timeout=ready_timeout
        )
        try:
            tag = secrets.token_hex(3)
            cached_body = bench.cached_identity(count, tag)
            warm_up(server, url, cached_body, timeout=ready_timeout)
            bench.report.ready_seconds[count] = time.monotonic() - started
            scenario_cached(bench, count, url, cached_body)
            scenario_warm(bench, count, url, tag)
            scenario_cold(bench, count, url, tag)
        finally:
            bench.procs.stop(server)


def scenario_cached(bench: Bench, count: int, url: str, body: str) -> None:
    path = bench.write_bodies(f"cached-{count}", [body])
    # The warm-up puts the token in both workers' caches; its calls are reported apart.
    _, warm_calls = bench.measure(url, path, duration=bench.args.warmup)
    load, calls = bench.measure(url, path)
    note = f"warm-up load made {warm_calls} upstream calls"
    bench.add(Row("cached", GRANIAN_4, count, load, calls, note))


def scenario_warm(bench: Bench, count: int, url: str, tag: str) -> None:
    n = bench.args.identities
    started = time.monotonic()
    bodies = mint_bodies(bench.issuer_, count, n, f"w{tag}", seed=2)
    minted = time.monotonic()
    before = bench.upstream_count()
    failed = issue_all(url, bodies)
    warm_calls = bench.upstream_count() - before
    log(
        f"  warm: minted {n} tokens in {minted - started:.1f}s, "
        f"exchanged each once in {time.monotonic() - minted:.1f}s"
    )
    path = bench.write_bodies(f"warm-{count}", bodies)
    _, more = bench.measure(url, path, duration=bench.args.warmup)
    load, calls = bench.measure(url, path)
    note = f"{n} identities; warming made {warm_calls} + {more} (warm-up load) upstream calls"
    if failed:
        note += f"; {failed} warm-up exchanges failed"
    bench.add(Row("warm", GRANIAN_4, count, load, calls, note))


def scenario_cold(bench: Bench, count: int, url: str, tag: str) -> None:
    assert bench.aws is not None
    assert bench.gcp is not None
    n = int(bench.args.duration * COLD_RATE_CEILING) + 200
    bodies = mint_bodies(bench.issuer_, count, n, f"k{tag}", seed=3)
    path = bench.write_bodies(f"cold-{count}", bodies)
    bench.aws.delay = bench.gcp.delay = bench.args.cold_delay
    exchanges = bench.upstream_exchanges()
    try:
        load, calls = bench.measure(url, path)
    finally:
        bench.aws.delay = bench.gcp.delay = 0.0
    exchanges = bench.upstream_exchanges() - exchanges
    note = (
        f"upstream delay {bench.args.cold_delay * 1000:.0f} ms per call; {exchanges} "
        "exchanges (a GCP mapping with a service account is 2 calls; requests still in "
        "flight when wrk stops count upstream but not in requests)"
    )
    if load.requests > n:
        note += f"; WARNING: {load.requests} requests > {n} fresh identities (some repeated)"
    bench.add(Row("cold", GRANIAN_4, count, load, calls, note))
