#!/usr/bin/env python3
"""What ``sts mappings apply`` costs on a large file (docs/benchmarks.md, "Applying a large
file"): wall time and peak memory of the real command, as an operator runs it.

    python bench/apply.py [--count 100000] [--database sqlite|postgres]

It writes ``--count`` generated mappings (bench/run.py's, 8 per account) as one YAML file,
migrates a fresh database (an SQLite file, or a new PostgreSQL schema dropped afterwards), then
runs ``sts mappings apply`` three times: the first apply, the same file again (no change), and
the file with one mapping in a hundred edited.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from run import mapping_document, postgres_schema  # noqa: E402


def write_file(path: Path, count: int, *, edited_every: int = 0) -> None:
    entries = [mapping_document(i) for i in range(count)]
    if edited_every:
        for entry in entries[::edited_every]:
            entry["description"] += " (edited)"
    with path.open("w") as handle:
        yaml.dump({"mappings": entries}, handle, Dumper=yaml.CSafeDumper, sort_keys=False)


def sts(*args: str, env: dict[str, str]) -> tuple[float, int, str]:
    """Seconds, peak resident KiB and the last line of standard output of ``sts ARGS``."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "sts", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    lines = process.stdout.read().splitlines()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"sts {' '.join(args)} failed: {lines[-5:]}")
    return seconds, usage.ru_maxrss, lines[-1] if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--write", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--edited-every", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write:
        write_file(args.write, args.count, edited_every=args.edited_every)
        return
    with tempfile.TemporaryDirectory(prefix="sts-apply-") as scratch:
        work = Path(scratch)
        plain, edited = work / "mappings.yaml", work / "edited.yaml"
        # Written by a child process: a forked child starts with its parent's resident memory,
        # which would then count in every measured command's peak.
        for path, every in ((plain, 0), (edited, 100)):
            subprocess.run(
                [sys.executable, __file__, "--write", str(path), "--count", str(args.count)]
                + (["--edited-every", str(every)] if every else []),
                check=True,
            )
        megabytes = plain.stat().st_size / 1e6
        print(f"{args.count:,} mappings, {megabytes:.1f} MB of YAML, {args.database}")
        sqlite = contextlib.nullcontext(f"sqlite:///{work / 'sts.db'}")
        with postgres_schema() if args.database == "postgres" else sqlite as database_url:
            env = {**os.environ, "STS_DATABASE_URL": database_url}
            sts("db", "upgrade", env=env)
            print("| apply | seconds | peak MB | last line |")
            print("|---|---|---|---|")
            for label, path in (
                ("first", plain),
                ("unchanged", plain),
                ("1 in 100 edited", edited),
            ):
                seconds, peak_kib, last = sts("mappings", "apply", str(path), env=env)
                print(f"| {label} | {seconds:.1f} | {peak_kib / 1024:.0f} | {last[:60]} |")


if __name__ == "__main__":
    main()
