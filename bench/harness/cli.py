"""The command line of ``bench/run.py`` and the whole run, scenario after scenario."""

from __future__ import annotations

import argparse
import json
import signal
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from harness.head_to_head import head_to_head
from harness.isolation import isolation
from harness.report import print_report
from harness.scenarios import run_mapping_count
from harness.single_flight import single_flight
from harness.stack import Bench
from harness.tools import ensure_apt, log

#: The first paragraph of bench/run.py's docstring: what ``--help`` says.
DESCRIPTION = "The zuplo-sts benchmark: one command, everything on 127.0.0.1 (docs/benchmarks.md)."


def run(bench: Bench) -> None:
    """Every part of the run the options ask for, in order; :meth:`Bench.close` stops what it
    started."""
    bench.wrk_bin = ensure_apt("wrk", "wrk")
    bench.start_emulators()
    if not bench.args.skip_main:
        for count in bench.args.mappings:
            run_mapping_count(bench, count)
    head_to_head(bench, bench.args.head_to_head)
    if not bench.args.skip_isolation:
        isolation(bench, bench.args.head_to_head)
    if not bench.args.skip_multiprocess:
        single_flight(bench)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument(
        "--quick", action="store_true", help="2 s per scenario, 10 and 1,000 mappings only"
    )
    parser.add_argument("--duration", type=float, help="seconds per measurement (default 10)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up load (default 3)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument(
        "--mappings", help="comma-separated mapping counts (default 10,1000,100000)"
    )
    parser.add_argument(
        "--identities", type=int, help="warm-path identities (default 1000; quick: 300)"
    )
    parser.add_argument(
        "--cold-delay", type=float, default=0.05, help="emulator delay on the cold path (s)"
    )
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--no-redis", action="store_true", help="main runs without Redis")
    parser.add_argument(
        "--head-to-head", type=int, default=1000, help="mappings for the head-to-head runs"
    )
    parser.add_argument("--skip-main", action="store_true", help="no per-mapping-count runs")
    parser.add_argument("--skip-comparator", action="store_true")
    parser.add_argument("--skip-servers", action="store_true", help="no gunicorn/granian variants")
    parser.add_argument("--skip-multiprocess", action="store_true")
    parser.add_argument(
        "--profile",
        nargs="?",
        const="cached",
        choices=("cached", "fresh"),
        help="py-spy one worker under the head-to-head load of that path (default: cached)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="head-to-head and isolation rounds, interleaved; medians reported",
    )
    parser.add_argument(
        "--skip-isolation", action="store_true", help="no cached-beside-cold measurement"
    )
    parser.add_argument("--out", type=Path, help="directory for logs and results")
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 2.0 if args.quick else 10.0
    if args.warmup is None:
        args.warmup = 1.0 if args.quick else 3.0
    if args.identities is None:
        args.identities = 300 if args.quick else 1000
    if not 1 <= args.identities <= 100_000:
        parser.error("--identities must be 1..100000")
    if args.mappings is None:
        args.mappings = "10,1000" if args.quick else "10,1000,100000"
    args.mappings = [int(part.replace("_", "")) for part in args.mappings.split(",") if part]
    if not 1 <= args.duration <= 600 or not 1 <= args.warmup <= 120:
        parser.error("--duration must be 1..600 s and --warmup 1..120 s")
    if not 1 <= args.connections <= 10_000 or not 1 <= args.threads <= 64:
        parser.error("--connections must be 1..10000 and --threads 1..64")
    if any(not 1 <= n <= 1_000_000 for n in args.mappings):
        parser.error("--mappings: counts must be 1..1,000,000")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="sts-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, out)

    def terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # Set both explicitly: a shell starting this in the background would leave SIGINT ignored.
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
    status = 0
    try:
        run(bench)
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
        status = 130
    except Exception as exc:
        log(f"failed: {type(exc).__name__}: {exc}")
        status = 1
    finally:
        # Stopping is bounded (Process.stop); a second Ctrl-C must not cut it short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        bench.close()
    report = bench.report
    (out / "results.json").write_text(
        json.dumps(
            {**asdict(report), "rows": [{**asdict(r), "per_10k": r.per_10k} for r in report.rows]},
            indent=2,
            default=str,
        )
    )
    print_report(report, out)
    if report.single_flight and not report.single_flight["passed"]:
        status = status or 1
    return status
