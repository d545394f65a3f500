"""The results: rows, the report, the machine line, the table, the summary and the profile."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.constants import EXPRESS, FASTIFY, FLOOR, FRESH, GRANIAN_1, GRANIAN_4, SAMEWORK
from harness.wrk import Load


@dataclass
class Row:
    """One line of the results table."""

    scenario: str
    server: str
    mappings: int
    load: Load
    upstream_calls: int | None = None
    note: str = ""

    @property
    def per_10k(self) -> float | None:
        if self.upstream_calls is None or not self.load.requests:
            return None
        return self.upstream_calls * 10_000 / self.load.requests


@dataclass
class Report:
    started: str
    machine: dict[str, str]
    settings: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    apply_seconds: dict[int, float] = field(default_factory=dict)
    ready_seconds: dict[int, float] = field(default_factory=dict)
    single_flight: dict[str, Any] = field(default_factory=dict)
    profile: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def find(self, scenario: str, server: str, mappings: int | None = None) -> Row | None:
        rows = self.find_all(scenario, server, mappings)
        return rows[0] if rows else None

    def find_all(self, scenario: str, server: str, mappings: int | None = None) -> list[Row]:
        return [
            row
            for row in self.rows
            if row.scenario == scenario
            and row.server == server
            and (mappings is None or row.mappings == mappings)
        ]

    def median(self, scenario: str, server: str) -> tuple[float, float] | None:
        """Median req/s and median p99 (ms) over the rounds of one configuration."""
        rows = self.find_all(scenario, server)
        if not rows:
            return None
        return (
            statistics.median(row.load.rps for row in rows),
            statistics.median(row.load.p99_ms for row in rows),
        )


def machine() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    from importlib.metadata import PackageNotFoundError, version

    versions = []
    for package in ("granian", "gunicorn", "flask"):
        with contextlib.suppress(PackageNotFoundError):
            versions.append(f"{package} {version(package)}")
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        node = subprocess.run(
            ["node", "--version"], capture_output=True, text=True, timeout=10, check=False
        )
        versions.append(f"node {node.stdout.strip()}")
    memory = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "memory": memory,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "versions": ", ".join(versions),
        "load": " ".join(f"{n:.2f}" for n in os.getloadavg()),
    }


def summarize_profile(raw: Path, path_name: str = "cached", top: int = 15) -> list[str]:
    """Top functions by own time and by total time, from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    native = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        if not stack.strip():
            # No Python frame: granian's own (Rust) threads, or the worker waiting for a core.
            native += count
            continue
        frames = stack.split(";")
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    if not samples:
        return ["(no samples)"]
    lines = [
        f"py-spy, one worker under the {path_name}-path load: {samples} samples in Python code "
        f"({native} more without a Python frame); share of the Python samples:",
        "own time:",
    ]
    lines += [f"  {n * 100 / samples:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    lines.append("total time (function and what it calls):")
    lines += [f"  {n * 100 / samples:5.1f}%  {frame}" for frame, n in total.most_common(top)]
    return lines


def table(report: Report) -> str:
    header = (
        "| scenario | server | mappings | req/s | p50 ms | p99 ms | requests | non-2xx "
        "| upstream calls | per 10k req | note |"
    )
    lines = [header, "|" + "---|" * 11]
    for row in report.rows:
        per = row.per_10k
        lines.append(
            f"| {row.scenario} | {row.server} | {row.mappings:,} | {row.load.rps:,.0f} "
            f"| {row.load.p50_ms:.2f} | {row.load.p99_ms:.2f} | {row.load.requests:,} "
            f"| {row.load.non_2xx + row.load.errors} "
            f"| {row.upstream_calls if row.upstream_calls is not None else '-'} "
            f"| {f'{per:.1f}' if per is not None else '-'} | {row.note} |"
        )
    return "\n".join(lines)


def summary(report: Report) -> list[str]:
    lines = []
    for count, seconds in sorted(report.apply_seconds.items()):
        ready = report.ready_seconds.get(count)
        lines.append(
            f"apply of {count:,} mappings (one transaction): {seconds:.2f} s; "
            f"sts serve answering /token {ready:.1f} s after start"
            if ready is not None
            else f"apply of {count:,} mappings (one transaction): {seconds:.2f} s"
        )
    rounds = len(report.find_all("head-to-head", GRANIAN_4))
    medians = " (medians of the rounds)" if rounds > 1 else ""
    for scenario, path in (
        ("head-to-head", "cached path"),
        (FRESH, "fresh token, cached credentials"),
    ):
        # Each comparator against the servers measured beside it; the same-work comparator
        # (bench/comparator/server-samework.js) also against fastify + jose: what the work
        # that fastify + jose leaves out costs Node.
        for name, labels in (
            (FASTIFY, (GRANIAN_4, GRANIAN_1, FLOOR, SAMEWORK)),
            (EXPRESS, (GRANIAN_4, GRANIAN_1, FLOOR)),
            (SAMEWORK, (GRANIAN_4, GRANIAN_1)),
        ):
            other = report.median(scenario, name)
            if other is None or not other[0]:
                continue
            for label in labels:
                row = report.median(scenario, label)
                if row is not None:
                    lines.append(
                        f"{path}, {label} / {name}{medians}: {row[0] / other[0]:.2f}x "
                        f"requests/s, p99 {row[1] / other[1]:.2f}x ({row[1]:.2f} ms vs "
                        f"{other[1]:.2f} ms)"
                    )
    alone = report.median("isolation", "cached path alone")
    beside = report.median("isolation", "cached path beside cold exchanges")
    if alone is not None and beside is not None:
        several = len(report.find_all("isolation", "cached path alone")) > 1
        lines.append(
            f"isolation{' (medians of the rounds)' if several else ''}: "
            f"cached-path p99 {alone[1]:.2f} ms alone, "
            f"{beside[1]:.2f} ms beside cold exchanges ({beside[1] - alone[1]:+.2f} ms); req/s "
            f"{beside[0] / alone[0]:.2f}x"
        )
    counts = sorted(report.apply_seconds)
    if len(counts) > 1:
        low = report.find("cached", GRANIAN_4, counts[0])
        high = report.find("cached", GRANIAN_4, counts[-1])
        if low and high and low.load.p50_ms:
            lines.append(
                f"selection: cached-path p50 with {counts[-1]:,} mappings / with {counts[0]:,}: "
                f"{high.load.p50_ms / low.load.p50_ms:.2f}x"
            )
    if report.single_flight:
        sf = report.single_flight
        lines.append(
            f"multi-process single-flight: {sf['requests']} concurrent identical cold requests "
            f"over 2 sts serve processes (Redis + PostgreSQL, upstream delay "
            f"{sf['upstream_delay_s']} s): {sf['ok']} ok, {sf['upstream_calls']} upstream "
            f"call(s), {sf['distinct_credentials']} distinct credential(s): "
            f"{'PASS' if sf['passed'] else 'FAIL'}"
        )
    return lines


def print_report(report: Report, out: Path) -> None:
    settings = report.settings
    print()
    print(
        f"machine: {report.machine['nproc']} cores, {report.machine['cpu']}, "
        f"{report.machine['memory']}; python {report.machine['python']}, "
        f"{report.machine['versions']}; load average before the run {report.machine['load']}"
    )
    print(
        f"wrk: {settings['wrk_threads']} threads, {settings['connections']} connections, "
        f"{settings['duration_s']} s per scenario after {settings['warmup_s']} s warm-up; "
        f"database {settings['database']}; redis {'on' if settings['redis'] else 'off'}"
        + ("; QUICK RUN" if settings["quick"] else "")
    )
    print()
    print(table(report))
    print()
    for line in summary(report):
        print(line)
    if report.profile:
        print()
        print("\n".join(report.profile))
    for note in report.notes:
        print(f"note: {note}")
    print(f"\nlogs and results: {out}")
