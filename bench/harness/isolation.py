"""Isolation: the cached path's tail while cold exchanges wait on a slow cloud beside it."""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from pathlib import Path

from harness.client import cold_caller, warm_up
from harness.constants import (
    COLD_BODIES_ISOLATION,
    ISOLATION_CALLERS,
    ISOLATION_DELAY_SECONDS,
    READY_TIMEOUT_SECONDS,
)
from harness.database import load_mappings
from harness.report import Row
from harness.stack import Bench
from harness.tools import log
from harness.workload import generate_specs, mint_bodies


def isolation(bench: Bench, count: int) -> None:
    """The cached path's tail while cold exchanges wait on a slow cloud beside it.

    One ``sts serve`` (2 workers x 4 request threads); the cached load measured alone, then
    again while :data:`ISOLATION_CALLERS` clients send identities never seen before, each
    exchange held :data:`ISOLATION_DELAY_SECONDS` by the emulators (the request threads
    wait on it; the cached answers should not).
    """
    assert bench.aws is not None
    log(f"isolation: cached path beside cold exchanges (AWS answering after "
        f"{ISOLATION_DELAY_SECONDS:g} s)")  # fmt: skip
    bench.allow_service_accounts(count)
    with bench.database(f"isolation-{count}") as database_url:
        load_mappings(database_url, generate_specs(count))
        env = bench.sts_env(database_url, redis=not bench.args.no_redis)
        server, url = bench.start_server(
            "granian", "isolation", env, ready_timeout=READY_TIMEOUT_SECONDS
        )
        try:
            tag = secrets.token_hex(3)
            body = bench.cached_identity(count, tag)
            warm_up(server, url, body, timeout=READY_TIMEOUT_SECONDS)
            path = bench.write_bodies("isolation", [body])
            bench.measure(url, path, duration=bench.args.warmup)
            rounds = max(1, bench.args.rounds)
            cold = mint_bodies(
                bench.issuer_, count, COLD_BODIES_ISOLATION * rounds, f"i{tag}", seed=4
            )
            for round_ in range(1, rounds + 1):
                # Interleaved (alone, beside, alone, beside, ...): the p99 of one run moves
                # by more than the target allows; the summary compares medians.
                label = f"round {round_}" if rounds > 1 else ""
                alone, _ = bench.measure(url, path)
                bench.add(Row("isolation", "cached path alone", count, alone, None, label))
                share = cold[(round_ - 1) * COLD_BODIES_ISOLATION : round_ * COLD_BODIES_ISOLATION]
                beside_cold(bench, url, path, count, share, label=label)
        finally:
            bench.procs.stop(server)


def beside_cold(
    bench: Bench, url: str, path: Path, count: int, cold: list[str], *, label: str
) -> None:
    """Measure the cached load while :data:`ISOLATION_CALLERS` clients send ``cold``."""
    assert bench.aws is not None
    assert bench.gcp is not None
    bench.aws.delay = bench.gcp.delay = ISOLATION_DELAY_SECONDS
    stop = threading.Event()
    sent = Counter[int]()
    callers = [
        threading.Thread(
            target=cold_caller,
            args=(url, cold[n::ISOLATION_CALLERS], stop, sent),
            daemon=True,
        )
        for n in range(ISOLATION_CALLERS)
    ]
    for caller in callers:
        caller.start()
    try:
        time.sleep(ISOLATION_DELAY_SECONDS * 1.5)  # the request threads are busy
        beside, _ = bench.measure(url, path)
    finally:
        stop.set()
        for caller in callers:
            caller.join(timeout=ISOLATION_DELAY_SECONDS * 3)
        bench.aws.delay = bench.gcp.delay = 0.0
    note = (
        f"{ISOLATION_CALLERS} cold callers, AWS answering after "
        f"{ISOLATION_DELAY_SECONDS:g} s: {sum(sent.values())} cold exchanges "
        f"({dict(sorted(sent.items()))} by status)" + (f", {label}" if label else "")
    )
    bench.add(Row("isolation", "cached path beside cold exchanges", count, beside, None, note))
