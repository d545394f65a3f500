"""The head-to-head: the cached path and fresh tokens on every server configuration and on the
comparators, back to back on one database (docs/benchmarks.md), and the py-spy profile."""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

from harness.client import first_ok, warm_up
from harness.constants import (
    EXPRESS,
    FASTIFY,
    FLOOR,
    FRESH,
    GRANIAN_1,
    GRANIAN_4,
    GRANIAN_WSGI,
    NO_UPSTREAM,
    OTHER_SERVERS,
    READY_TIMEOUT_SECONDS,
    SAMEWORK,
)
from harness.database import load_mappings
from harness.processes import Process, cmdline
from harness.report import Row, summarize_profile
from harness.stack import Bench
from harness.tools import ensure_gunicorn, ensure_node_modules, ensure_py_spy, log
from harness.workload import form_body, generate_specs, mint, write_mappings_json


def head_to_head(bench: Bench, count: int) -> None:
    """The cached path on every server configuration and on the comparators, back to back."""
    log(f"head to head on the cached path, {count} mappings")
    bench.allow_service_accounts(count)
    configs: list[tuple[str, str]] = [("granian", GRANIAN_4)]
    if not bench.args.skip_comparator:
        if ensure_node_modules():
            configs.append(("fastify", FASTIFY))
            # Same work as ours per request (bench/comparator/server-samework.js).
            configs.append(("samework", SAMEWORK))
        else:
            bench.report.notes.append("comparator skipped: npm ci failed")
    if not bench.args.skip_servers:
        configs += [("granian-bt1", GRANIAN_1), ("granian-wsgi", GRANIAN_WSGI)]
        if ensure_gunicorn():
            configs += [
                ("gunicorn-sync", "gunicorn sync, 2 workers"),
                ("gunicorn-gthread", "gunicorn gthread, 2 workers x 4 threads"),
            ]
        else:
            bench.report.notes.append("gunicorn rows skipped: pip install gunicorn failed")
    if not bench.args.skip_comparator and any(kind == "fastify" for kind, _ in configs):
        configs.append(("express", EXPRESS))
    if not bench.args.skip_comparator:
        configs.append(("floor", FLOOR))
    with bench.database(f"head-to-head-{count}") as database_url:
        load_mappings(database_url, generate_specs(count))
        claims = bench.cached_claims(count, secrets.token_hex(3))
        body = form_body(mint(bench.issuer_, claims))
        path = bench.write_bodies("head-to-head", [body])
        fresh = bench.write_bodies("head-to-head-fresh", bench.fresh_tokens(claims))
        # The same mappings, for the same-work comparator to load and index.
        mappings_file = write_mappings_json(bench.out / f"mappings-{count}.json", count)
        # Rounds interleave the configurations (A B C, A B C, ...): a machine that slows
        # down for a while slows every configuration, not one.
        for round_ in range(1, bench.args.rounds + 1):
            for kind, label in configs:
                head_to_head_one(
                    bench,
                    kind,
                    label,
                    count,
                    database_url=database_url,
                    body=body,
                    path=path,
                    fresh=fresh,
                    mappings_file=mappings_file,
                    round_=round_ if bench.args.rounds > 1 else None,
                )


def head_to_head_one(
    bench: Bench,
    kind: str,
    label: str,
    count: int,
    *,
    database_url: str,
    body: str,
    path: Path,
    fresh: Path,
    mappings_file: Path | None = None,
    round_: int | None = None,
) -> None:
    log(f"  {label}" + (f" (round {round_})" if round_ else ""))
    env = bench.sts_env(database_url, redis=not bench.args.no_redis)
    server, url = bench.start_server(
        kind,
        f"h2h-{kind}",
        env,
        ready_timeout=READY_TIMEOUT_SECONDS,
        mappings_file=mappings_file,
    )
    try:
        response = first_ok(url, body, timeout=READY_TIMEOUT_SECONDS)
        if kind not in OTHER_SERVERS:
            warm_up(server, url, body, timeout=READY_TIMEOUT_SECONDS)
        if kind == "granian":
            # The comparators answer with a body of this size.
            bench.cached_response_bytes = len(response.content)
        note = f"{len(response.content)}-byte body" + (f", round {round_}" if round_ else "")
        bench.measure(url, path, duration=bench.args.warmup)
        load, calls = bench.measure(url, path)
        node = kind in NO_UPSTREAM
        bench.add(Row("head-to-head", label, count, load, None if node else calls, note))
        # A new token per request for the same identity: one RS256 verification each.
        bench.measure(url, fresh, duration=bench.args.warmup)
        load, calls = bench.measure(url, fresh)
        bench.add(Row(FRESH, label, count, load, None if node else calls, note))
        if bench.args.profile and kind == "granian" and (round_ or 1) == 1:
            # A run of its own: the samplers take CPU from the 2 cores being measured.
            profiled(bench, server, url, fresh if bench.args.profile == "fresh" else path)
    finally:
        bench.procs.stop(server)


def profiled(bench: Bench, server: Process, url: str, path: Path) -> None:
    """Measure while py-spy samples the two workers: collapsed stacks of one (summarised
    into the report) and a flame graph of the other."""
    spy = ensure_py_spy()
    workers = [pid for pid in server.descendants() if "python" in cmdline(pid)]
    if spy is None or not workers:
        bench.report.notes.append("profile skipped: py-spy unavailable or no worker found")
        return
    seconds = str(max(1, round(bench.args.duration)))
    raw, svg = bench.out / "profile.raw", bench.out / "profile.svg"
    common = ["record", "--duration", seconds, "--rate", "250", "--nonblocking"]
    jobs = [[spy, *common, "--pid", str(workers[-1]), "--function", "--format", "raw",
             "--output", str(raw)]]  # fmt: skip
    if len(workers) > 1:
        jobs.append([spy, *common, "--pid", str(workers[-2]), "--output", str(svg)])
    logs = [bench.out / f"py-spy-{n}.log" for n in range(len(jobs))]
    recorders = []
    for job, log_path in zip(jobs, logs, strict=True):
        with open(log_path, "wb") as sink:
            recorders.append(subprocess.Popen(job, stdout=sink, stderr=subprocess.STDOUT))
    try:
        result = bench.measure(url, path)
    except BaseException:
        for recorder in recorders:
            recorder.kill()
            recorder.wait()
        raise
    for recorder in recorders:
        try:
            recorder.wait(timeout=int(seconds) + 30)
        except subprocess.TimeoutExpired:
            recorder.kill()
            recorder.wait()
    if raw.exists():
        bench.report.profile = summarize_profile(raw, bench.args.profile)
        bench.report.notes.append(f"py-spy collapsed stacks: {raw}; flame graph: {svg}")
    else:
        problem = logs[0].read_text(errors="replace").strip()[-300:]
        bench.report.notes.append(f"py-spy recorded nothing: {problem}")
    bench.report.notes.append(
        f"under py-spy the {bench.args.profile} path ran at {result[0].rps:,.0f} req/s "
        "(not in the table)"
    )
