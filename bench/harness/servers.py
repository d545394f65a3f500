"""How each server of the benchmark is started: ``sts serve`` and the servers it could have been,
the floor, and the Node.js comparators (bench/comparator/).

:func:`launch` only builds the command, its environment and its readiness probe;
:meth:`harness.stack.Bench.start_server` starts it and waits for the probe.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from harness.constants import AUDIENCE, BENCH, COMPARATOR, HOST, NODE_DIR

#: The Node.js comparators, each ``bench/comparator/server-<kind>.js``.
NODE_KINDS = ("fastify", "express", "samework")


@dataclass(frozen=True)
class Upstreams:
    """What the servers other than ``sts serve`` are pointed at (sts reads its own
    configuration from the ``STS_`` environment, :meth:`harness.stack.Bench.sts_env`)."""

    issuer: str
    jwks_url: str
    aws_endpoint_url: str
    gcp_sts_url: str
    gcp_iam_url: str


@dataclass(frozen=True)
class Launch:
    """A server's command line, its environment and the path that answers 200 once it is up."""

    cmd: list[str]
    env: dict[str, str]
    probe: str


def launch(
    kind: str,
    name: str,
    port: int,
    env: dict[str, str],
    *,
    out: Path,
    upstreams: Upstreams,
    body_bytes: int,
    mappings_file: Path | None = None,
) -> Launch:
    """The command for server configuration ``kind`` on ``port``.

    ``env`` is the ``sts serve`` environment (used by the sts kinds); ``out`` the run's directory
    (gunicorn's metrics directory goes there); ``body_bytes`` the size of our cached answer, which
    the minimal comparators and the floor pad theirs to; ``mappings_file`` the JSON mappings
    the same-work comparator loads (:func:`harness.workload.write_mappings_json`).
    """
    python = sys.executable
    if kind.startswith("gunicorn") or kind == "granian-wsgi":
        # What sts serve sets up for its workers: metrics in multiprocess mode, so every
        # server pays the same per-request metrics cost.
        metrics = out / f"metrics-{name}"
        shutil.rmtree(metrics, ignore_errors=True)
        metrics.mkdir()
        env = {**env, "PROMETHEUS_MULTIPROC_DIR": str(metrics)}
    if kind == "granian-wsgi":
        # sts serve before the RSGI front (sts/rsgi.py): granian's WSGI interface, whose
        # blocking threads read the bodies themselves.
        cmd = [
            python,
            "-m",
            "granian",
            "--interface",
            "wsgi",
            "--workers",
            "2",
            "--blocking-threads",
            "4",
            "--no-ws",
            "--host",
            HOST,
            "--port",
            str(port),
            "sts.wsgi:app",
        ]
    elif kind.startswith("granian"):
        threads = kind.split("-bt", 1)[1] if "-bt" in kind else "4"
        cmd = [
            python,
            "-m",
            "sts",
            "serve",
            "--host",
            HOST,
            "--port",
            str(port),
            "--workers",
            "2",
            "--threads",
            threads,
        ]
    elif kind == "gunicorn-sync":
        cmd = [
            python,
            "-m",
            "gunicorn",
            "--workers",
            "2",
            "--worker-class",
            "sync",
            "--bind",
            f"{HOST}:{port}",
            "sts.wsgi:app",
        ]
    elif kind == "gunicorn-gthread":
        cmd = [
            python,
            "-m",
            "gunicorn",
            "--workers",
            "2",
            "--worker-class",
            "gthread",
            "--threads",
            "4",
            "--bind",
            f"{HOST}:{port}",
            "sts.wsgi:app",
        ]
    elif kind == "floor":
        cmd = [
            python,
            "-m",
            "granian",
            "--interface",
            "rsgi",
            "--loop",
            "asyncio",
            "--http",
            "1",
            "--no-ws",
            "--no-log",
            "--workers",
            "2",
            "--working-dir",
            str(BENCH),
            "--host",
            HOST,
            "--port",
            str(port),
            "floor_app:app",
        ]
        env = {
            **os.environ,
            "JWKS_URL": upstreams.jwks_url,
            "BODY_BYTES": str(body_bytes),
        }
    elif kind in NODE_KINDS:
        cmd = ["node", str(COMPARATOR / f"server-{kind}.js")]
        env = {
            **os.environ,
            "NODE_PATH": str(NODE_DIR / "node_modules"),
            "NODE_ENV": "production",
            "PORT": str(port),
            "JWKS_URL": upstreams.jwks_url,
            "ISSUER": upstreams.issuer,
            "AUDIENCE": AUDIENCE,
            "BODY_BYTES": str(body_bytes),
            "WORKERS": "2",
        }
        if kind == "samework":
            if mappings_file is None:
                raise ValueError("the same-work comparator needs the mappings file")
            env.update(
                {
                    "MAPPINGS_FILE": str(mappings_file),
                    "AWS_ENDPOINT_URL": upstreams.aws_endpoint_url,
                    "GCP_STS_URL": upstreams.gcp_sts_url,
                    "GCP_IAM_CREDENTIALS_URL": upstreams.gcp_iam_url,
                    "NO_PROXY": "127.0.0.1,localhost",
                    "no_proxy": "127.0.0.1,localhost",
                }
            )
    else:
        raise ValueError(kind)
    probe = "/healthz" if kind in NODE_KINDS else "/readyz"
    return Launch(cmd, env, probe)
