"""Requests to a started server: the first answer, the warm-up, each body exchanged once, and
the cold callers of the isolation scenario."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import requests

from harness.constants import INDEX_LOADED, SERVER_WORKERS
from harness.processes import Process, http


def first_ok(url: str, body: str, *, timeout: float) -> requests.Response:
    """POST until a 200 (the first request may build the mapping index)."""
    deadline = time.monotonic() + timeout
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    problem = "no answer"
    with http() as session:
        while time.monotonic() < deadline:
            # A worker's first request may build an index of 100,000 mappings: be patient.
            wait = max(5.0, deadline - time.monotonic())
            try:
                response = session.post(url + "/token", data=body, headers=headers, timeout=wait)
            except requests.RequestException as exc:
                problem = type(exc).__name__
            else:
                if response.status_code == 200:
                    return response
                problem = f"{response.status_code}: {response.text[:200]}"
            time.sleep(0.2)
    raise RuntimeError(f"POST /token did not succeed in {timeout:.0f}s: {problem}")


def warm_up(process: Process, url: str, body: str, *, timeout: float) -> None:
    """Until every worker has its mapping index: a worker builds it on its first request
    or its refresher's first tick, whichever comes first, so a fresh server would pay for
    it inside the measurement."""
    first_ok(url, body, timeout=timeout)
    deadline = time.monotonic() + timeout
    # A new connection per request: on one kept-alive connection every request would reach the
    # same worker, and a worker that starts its refresher on its first request (granian's WSGI
    # interface) would never build its index.
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Connection": "close"}
    with http() as session:
        while process.log_count(INDEX_LOADED) < SERVER_WORKERS:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{process.name}: mapping index not loaded in every worker")
            with contextlib.suppress(requests.RequestException):
                session.post(url + "/token", data=body, headers=headers, timeout=60)
            time.sleep(0.05)


def issue_all(url: str, bodies: list[str]) -> int:
    """Exchange each body once (16 at a time); returns how many were not 200."""
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    local = threading.local()

    def one(body: str) -> int:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = http()
        return session.post(url + "/token", data=body, headers=headers, timeout=60).status_code

    pool = ThreadPoolExecutor(max_workers=16)
    try:
        statuses = Counter(pool.map(one, bodies))
    finally:
        # On Ctrl-C, drop what has not started instead of sending it all first.
        pool.shutdown(wait=True, cancel_futures=True)
    return sum(n for status, n in statuses.items() if status != 200)


def cold_caller(url: str, bodies: list[str], stop: threading.Event, sent: Counter[int]) -> None:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    with http() as session:
        for body in bodies:
            if stop.is_set():
                return
            try:
                status = session.post(
                    url + "/token", data=body, headers=headers, timeout=30
                ).status_code
            except requests.RequestException:
                status = 0
            sent[status] += 1
