"""How long cold exchanges on request threads hold up the event loop's cached answers.

The isolation target of ``bench/run.py`` (the cached path's p99 beside cold exchanges that wait
on a slow cloud) is measured through wrk on a 2-core virtual machine, where one run's p99 moves
by tens of milliseconds. This measures the mechanism itself, in one process, as a worker of
``sts serve`` runs it: the event loop answers one cached request every ``--interval`` seconds
(``TokenEndpoint.answer``, as ``sts.rsgi`` awaits it) while ``--threads`` request threads run
cold exchanges (``answer`` with a new identity each, run to its end on the thread: verification,
the AWS call, the audit row) against an AWS emulator in another process that answers after
``--delay`` seconds. For each cached answer it records how late it started after it was due and
how long it took: the wait for the GIL that a request thread holds shows there.

    python bench/loop_lag.py [--seconds 10] [--threads 4] [--switch-interval 0.005,0.001]

Prints, per switch interval (``sys.setswitchinterval``), the p50, p99 and max of lateness plus
duration, alone and beside the cold exchanges, and how many cold exchanges ran.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from sts.api.token import FORM, TokenEndpoint, on_this_thread, run_to_end
from sts.dev.aws_emulator import AwsEmulator
from sts.dev.issuer import DevIssuer

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from inprocess import AUDIENCE, form, running_service  # noqa: E402


def answer(endpoint: TokenEndpoint, body: bytes) -> int:
    """The status of ``POST /token`` with ``body``, answered on this thread."""
    status, _, _ = run_to_end(endpoint.answer("POST", FORM, None, body, on_this_thread))
    return status


def run_emulator(delay: float, ready: Any, stop: Any) -> None:
    """The AWS emulator in its own process, so its work takes no GIL from the measured one."""
    with AwsEmulator() as aws:
        aws.delay = delay
        ready.send(aws.endpoint_url)
        stop.wait()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


async def cached_answers(
    endpoint: TokenEndpoint, body: bytes, seconds: float, interval: float
) -> list[float]:
    """Milliseconds from when each cached answer was due to when it was done."""
    loop = asyncio.get_running_loop()
    delays: list[float] = []
    due = loop.time()
    end = due + seconds
    while due < end:
        due += interval
        await asyncio.sleep(max(0.0, due - loop.time()))
        status = await endpoint.answer("POST", FORM, None, body, on_this_thread)
        if status[0] != 200:
            raise SystemExit(f"not answered on the loop: {status!r}")
        delays.append((loop.time() - due) * 1000)
    return delays


def cold_caller(
    endpoint: TokenEndpoint, issuer: DevIssuer, name: str, stop: threading.Event, done: list[int]
) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        token = issuer.mint(audience=AUDIENCE, deployment=f"cold-{name}-{n}")
        body = form(token)
        if answer(endpoint, body) == 200:
            done.append(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    parser.add_argument("--interval", type=float, default=0.0005, help="between cached answers")
    parser.add_argument("--threads", type=int, default=4, help="request threads, cold")
    parser.add_argument("--delay", type=float, default=1.0, help="the emulator's answer delay")
    parser.add_argument("--switch-interval", default="0.005,0.001", help="comma-separated")
    args = parser.parse_args()
    intervals = [float(value) for value in args.switch_interval.split(",")]

    context = multiprocessing.get_context("spawn")
    ready, child_end = context.Pipe()
    stop_emulator = context.Event()
    emulator = context.Process(
        target=run_emulator, args=(args.delay, child_end, stop_emulator), daemon=True
    )
    emulator.start()
    endpoint_url = ready.recv()
    with ExitStack() as stack, tempfile.TemporaryDirectory() as work:
        stack.callback(emulator.join, 10)
        stack.callback(stop_emulator.set)
        issuer = stack.enter_context(DevIssuer())
        endpoint = running_service(stack, Path(work), issuer, endpoint_url)
        body = form(issuer.mint(audience=AUDIENCE, deployment="cached"))
        if answer(endpoint, body) != 200:
            raise SystemExit("the first exchange failed")

        results = []
        for switch in intervals:
            sys.setswitchinterval(switch)
            alone = asyncio.run(cached_answers(endpoint, body, args.seconds, args.interval))
            stop = threading.Event()
            done: list[int] = []
            callers = [
                threading.Thread(
                    target=cold_caller, args=(endpoint, issuer, f"{switch}-{k}", stop, done)
                )
                for k in range(args.threads)
            ]
            for caller in callers:
                caller.start()
            time.sleep(args.delay * 1.5)
            beside = asyncio.run(cached_answers(endpoint, body, args.seconds, args.interval))
            stop.set()
            for caller in callers:
                caller.join()
            results.append((switch, alone, beside, len(done)))
    for switch, alone, beside, cold in results:
        for label, values in (("alone", alone), ("beside cold", beside)):
            print(
                f"switch interval {switch * 1000:g} ms, {label:11s}: p50 "
                f"{statistics.median(values):.3f} ms, p99 {percentile(values, 0.99):.3f} ms, "
                f"max {max(values):.3f} ms ({len(values)} answers)"
            )
        print(f"  cold exchanges beside: {cold}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
