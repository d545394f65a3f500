"""``sts serve`` as a real process for functional tests: start it, wait until ready, stop it."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def sts_serve(env: dict[str, str], log_path: Path, *options: str) -> Iterator[str]:
    """``sts serve --port <free> OPTIONS`` with its output in ``log_path``; yields its URL once
    ``/readyz`` answers 200 (at most 30 s), and stops it with SIGTERM (SIGKILL after 15 s)."""
    port = free_port()
    command = [sys.executable, "-m", "sts", "serve", "--port", str(port), *options]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, log_path.read_text()
                try:
                    if requests.get(url + "/readyz", timeout=1).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
            yield url
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
