"""One wrk run with bench/lua/exchange.lua, and what it measured."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness.constants import LUA_SCRIPT


@dataclass
class Load:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    non_2xx: int


def wrk(
    binary: str,
    url: str,
    bodies_file: Path,
    *,
    duration: float,
    connections: int,
    threads: int,
) -> Load:
    env = {
        **os.environ,
        "BENCH_BODIES": str(bodies_file),
        "BENCH_THREADS": str(threads),
    }
    cmd = [
        binary,
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA_SCRIPT),
        url + "/token",
    ]
    done = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=duration + 60, check=False
    )
    for line in done.stdout.splitlines():
        if line.startswith("BENCH-RESULT "):
            raw = json.loads(line.removeprefix("BENCH-RESULT "))
            seconds = raw["duration_us"] / 1e6
            return Load(
                requests=raw["requests"],
                seconds=seconds,
                rps=raw["requests"] / seconds if seconds else 0.0,
                p50_ms=raw["p50_us"] / 1000,
                p90_ms=raw["p90_us"] / 1000,
                p99_ms=raw["p99_us"] / 1000,
                max_ms=raw["max_us"] / 1000,
                errors=raw["connect_errors"]
                + raw["read_errors"]
                + raw["write_errors"]
                + raw["timeouts"],
                non_2xx=raw["non_2xx"],
            )
    raise RuntimeError(f"wrk gave no result (exit {done.returncode}): {done.stderr[-400:]}")
