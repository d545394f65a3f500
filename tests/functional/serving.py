"""``sts`` as a real process for functional tests: a command run to its end, or ``sts serve``
started, waited for until ready, and stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import requests

from sts.dev.serving import free_port
from tests.conftest import AUDIENCE

if TYPE_CHECKING:
    from sts.dev.aws_emulator import AwsEmulator
    from sts.dev.gcp_emulator import GcpEmulator
    from sts.dev.issuer import DevIssuer

__all__ = [
    "START_TIMEOUT",
    "free_port",
    "run_sts",
    "serve_env",
    "stop",
    "sts_serve",
    "sts_serve_on_a_pipe",
    "sts_serve_on_a_pipe_within",
    "sts_serve_within",
    "wait_ready_within",
]

#: How long ``sts serve`` may take to become ready before a test calls it stuck: each worker
#: imports the whole service, which on a loaded 2-core machine can take well over the 30 s that
#: :func:`sts_serve` allows. It is ready within seconds otherwise: the wait ends then.
START_TIMEOUT = 120.0


def serve_env(
    database_url: str,
    issuer: DevIssuer,
    aws: AwsEmulator | None = None,
    gcp: GcpEmulator | None = None,
    **variables: str,
) -> dict[str, str]:
    """This process's environment without any ``STS_`` variable, then the service's: the
    database, the test audience, ``issuer`` trusted over loopback HTTP, the emulators' URLs
    when given, and ``variables`` (``STS_...`` names) last."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STS_")}
    env.update(
        STS_DATABASE_URL=database_url,
        STS_AUDIENCE=AUDIENCE,
        STS_TRUSTED_ISSUERS=issuer.url,
        STS_ALLOW_HTTP_LOOPBACK="true",
    )
    if aws is not None:
        env["STS_AWS_ENDPOINT_URL"] = aws.endpoint_url
    if gcp is not None:
        env["STS_GCP_STS_URL"] = gcp.sts_url
        env["STS_GCP_IAM_CREDENTIALS_URL"] = gcp.iam_url
    env.update(variables)
    return env


def run_sts(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``sts ARGS`` run to its end in ``env``, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "sts", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _wait_ready(
    proc: subprocess.Popen[bytes], url: str, describe: Callable[[], str], path: str = "/readyz"
) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, describe()
        try:
            if requests.get(url + path, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, describe()
        time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def sts_serve(
    env: dict[str, str], log_path: Path, *options: str, ready: str = "/readyz"
) -> Iterator[str]:
    """``sts serve --port <free> OPTIONS`` with its output in ``log_path``; yields its URL once
    ``ready`` (``/readyz``; ``/healthz`` for a server that is meant not to be ready) answers 200
    (at most 30 s), and stops it with SIGTERM (SIGKILL after 15 s)."""
    port = free_port()
    command = [sys.executable, "-m", "sts", "serve", "--port", str(port), *options]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(proc, url, log_path.read_text, ready)
            yield url
        finally:
            stop(proc)


@contextmanager
def sts_serve_on_a_pipe(env: dict[str, str], *options: str) -> Iterator[tuple[str, list[bytes]]]:
    """As :func:`sts_serve`, with stdout and stderr on one pipe, as in a container: yields the
    URL and the list that a reader thread fills with the raw lines read from the pipe."""
    port = free_port()
    command = [sys.executable, "-m", "sts", "serve", "--port", str(port), *options]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    pipe = proc.stdout
    lines: list[bytes] = []

    def read() -> None:
        for line in iter(pipe.readline, b""):
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, url, lambda: b"".join(lines[-20:]).decode(errors="replace"))
        yield url, lines
    finally:
        stop(proc)
        reader.join(10)
        pipe.close()


def wait_ready_within(
    proc: subprocess.Popen[bytes],
    url: str,
    describe: Callable[[], str],
    path: str = "/readyz",
    timeout: float = START_TIMEOUT,
) -> None:
    """Until ``url + path`` answers 200 (polled), at most ``timeout`` seconds; fails at once,
    with ``describe()``, if ``proc`` ends meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, describe()
        try:
            if requests.get(url + path, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, describe()
        time.sleep(0.1)


@contextmanager
def sts_serve_within(
    env: dict[str, str],
    log_path: Path,
    *options: str,
    ready: str = "/readyz",
    start_timeout: float = START_TIMEOUT,
) -> Iterator[str]:
    """As :func:`sts_serve`, waiting up to ``start_timeout`` seconds for it to be ready."""
    port = free_port()
    command = [sys.executable, "-m", "sts", "serve", "--port", str(port), *options]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready_within(proc, url, log_path.read_text, ready, start_timeout)
            yield url
        finally:
            stop(proc)


@contextmanager
def sts_serve_on_a_pipe_within(
    env: dict[str, str], *options: str, start_timeout: float = START_TIMEOUT
) -> Iterator[tuple[str, list[bytes]]]:
    """As :func:`sts_serve_on_a_pipe`, waiting up to ``start_timeout`` seconds for it to be
    ready."""
    port = free_port()
    command = [sys.executable, "-m", "sts", "serve", "--port", str(port), *options]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    pipe = proc.stdout
    lines: list[bytes] = []

    def read() -> None:
        for line in iter(pipe.readline, b""):
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready_within(
            proc,
            url,
            lambda: b"".join(lines[-20:]).decode(errors="replace"),
            timeout=start_timeout,
        )
        yield url, lines
    finally:
        stop(proc)
        reader.join(10)
        pipe.close()
