#!/usr/bin/env python3
"""The zuplo-sts benchmark: one command, everything on 127.0.0.1 (docs/benchmarks.md).

    python bench/run.py [--quick] [--duration 10] [--connections 32] [--profile [cached|fresh]]

It starts a dev issuer, the AWS emulator (moto) and the GCP emulator in this process, then for
each mapping count (10, 1,000, 100,000) a fresh database with generated mappings and ``sts serve``
(2 workers), and drives it with wrk:

- cached: the same token again and again (verified-token and credential caches hit);
- warm: many distinct identities whose credentials are already cached;
- cold: identities never seen before, so every request verifies RSA and calls the emulator,
  which holds each answer back by ``--cold-delay`` seconds.

Then, on the 1,000-mapping database, it runs the cached path head to head against the servers
it could have been (granian with 1 or 4 blocking threads, gunicorn sync and gthread) and the
Node.js comparators (fastify + jose, express + jose, 2 cluster workers each), and finally checks
that 2 ``sts serve`` processes sharing Redis and PostgreSQL make exactly one upstream call for 20
concurrent identical cold requests. Every process it starts is stopped on the way out.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
NODE_DIR = BENCH / ".node"
COMPARATOR = BENCH / "comparator"
LUA_SCRIPT = BENCH / "lua" / "exchange.lua"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sts.db import Database  # noqa: E402
from sts.dev.aws_emulator import AwsEmulator  # noqa: E402
from sts.dev.gcp_emulator import GcpEmulator  # noqa: E402
from sts.dev.issuer import DevIssuer  # noqa: E402
from sts.identity.verifier import VERIFIED_CACHE_SIZE  # noqa: E402
from sts.mappings import store  # noqa: E402
from sts.mappings.document import spec_from_dict  # noqa: E402
from sts.mappings.spec import MappingSpec  # noqa: E402

HOST = "127.0.0.1"
AUDIENCE = "https://sts.bench.example"
GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
# Four workload identity pool providers shared by every GCP mapping, as an organisation would.
WIPS = tuple(
    f"//iam.googleapis.com/projects/{100000000 + n}/locations/global/workloadIdentityPools/"
    f"zuplo-pool-{n}/providers/zuplo-oidc"
    for n in range(4)
)
MAPPINGS_PER_ACCOUNT = 8
SERVER_WORKERS = 2
# What each worker logs when its selection index is built (sts/mappings/live.py).
INDEX_LOADED = '"msg":"mapping index loaded"'
#: The isolation scenario: clients sending cold exchanges while the cached path is measured,
#: and how long the AWS emulator holds each of their calls.
ISOLATION_CALLERS = 16
ISOLATION_DELAY_SECONDS = 1.0
COLD_BODIES_ISOLATION = 2_000
#: Distinct tokens of the fresh-token head-to-head: more than the verified-token cache holds.
FRESH_TOKENS = VERIFIED_CACHE_SIZE + 2_000
FRESH = "head-to-head fresh"
GRANIAN_4 = "sts serve --threads 4 (granian)"
GRANIAN_1 = "sts serve --threads 1 (granian)"
GRANIAN_WSGI = "granian WSGI, 2 workers x 4 blocking threads (sts serve before RSGI)"
FASTIFY = "node fastify + jose, 2 workers"
EXPRESS = "node express + jose, 2 workers"
#: Servers that are not zuplo-sts: no warm-up of its caches, no upstream calls counted.
OTHER_SERVERS = ("fastify", "express", "floor")
FLOOR = "floor: granian RSGI, 2 workers, one RS256 verify, nothing else (bench/floor_app.py)"
# Upper bound on how fast the cold path can go; cold tokens are minted for this rate so no
# identity repeats within one measurement (the report warns if one did).
COLD_RATE_CEILING = 400
READY_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 10.0


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- tools -----------------------------------------------------------------------------------


def run_quiet(cmd: Sequence[str], *, timeout: float, cwd: Path | None = None) -> bool:
    try:
        done = subprocess.run(
            list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log(f"  {cmd[0]} failed: {exc}")
        return False
    if done.returncode != 0:
        log(f"  {' '.join(cmd)} exited {done.returncode}: {done.stderr.strip()[-400:]}")
    return done.returncode == 0


def ensure_apt(binary: str, package: str) -> str:
    """The path of ``binary``; installs the Debian ``package`` with apt-get when it is missing."""
    found = shutil.which(binary)
    if found:
        return found
    log(f"{binary} not found: installing the {package} package with apt-get")
    if not run_quiet(["apt-get", "install", "-y", package], timeout=600):
        run_quiet(["apt-get", "update"], timeout=600)
        run_quiet(["apt-get", "install", "-y", package], timeout=600)
    found = shutil.which(binary)
    if not found:
        raise SystemExit(f"error: {binary} is required; apt-get install -y {package} failed")
    return found


def ensure_node_modules() -> bool:
    """npm ci the comparator's pinned dependencies into bench/.node (ignored by git)."""
    if not shutil.which("node") or not shutil.which("npm"):
        ensure_apt("node", "nodejs")
        ensure_apt("npm", "npm")
    lock = COMPARATOR / "package-lock.json"
    manifest = COMPARATOR / "package.json"
    stamp = hashlib.sha256(manifest.read_bytes() + lock.read_bytes()).hexdigest()
    stamp_file = NODE_DIR / ".installed"
    if (
        stamp_file.exists()
        and stamp_file.read_text() == stamp
        and (NODE_DIR / "node_modules").is_dir()
    ):
        return True
    log("installing the comparator's npm packages into bench/.node (npm ci)")
    NODE_DIR.mkdir(exist_ok=True)
    shutil.copy(manifest, NODE_DIR / "package.json")
    shutil.copy(lock, NODE_DIR / "package-lock.json")
    ok = run_quiet(
        ["npm", "ci", "--no-audit", "--no-fund", "--prefix", str(NODE_DIR)],
        timeout=600,
    )
    if ok:
        stamp_file.write_text(stamp)
    return ok


def ensure_py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if Path(found).exists():
        return found
    log("py-spy not found: pip install py-spy")
    run_quiet([sys.executable, "-m", "pip", "install", "--quiet", "py-spy"], timeout=300)
    found = str(Path(sys.executable).with_name("py-spy"))
    return found if Path(found).exists() else shutil.which("py-spy")


def ensure_gunicorn() -> bool:
    """gunicorn, for the head-to-head's gunicorn rows (not a dependency of the service)."""
    import importlib.util

    if importlib.util.find_spec("gunicorn") is not None:
        return True
    log("gunicorn not found: pip install gunicorn")
    run_quiet([sys.executable, "-m", "pip", "install", "--quiet", "gunicorn"], timeout=300)
    importlib.invalidate_caches()
    return importlib.util.find_spec("gunicorn") is not None


# -- processes -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class Process:
    """A child in its own process group, so stopping it also stops its workers."""

    def __init__(self, name: str, cmd: Sequence[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._out = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            list(cmd),
            env=env,
            cwd=ROOT,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def log_count(self, text: str) -> int:
        try:
            return self.log_path.read_text(errors="replace").count(text)
        except OSError:
            return 0

    def descendants(self) -> list[int]:
        """Process ids below this one (server workers), from /proc."""
        found: list[int] = []
        pending = [self.pid]
        while pending and len(found) < 256:
            pid = pending.pop()
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            for child in children:
                found.append(int(child))
                pending.append(int(child))
        return found

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=STOP_TIMEOUT_SECONDS)
        # Workers that outlived their parent still belong to the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._out.close()


class Processes:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.running: list[Process] = []

    def start(self, name: str, cmd: Sequence[str], env: dict[str, str]) -> Process:
        process = Process(name, cmd, env, self.out / f"{name}.log")
        self.running.append(process)
        return process

    def stop(self, process: Process) -> None:
        process.stop()
        if process in self.running:
            self.running.remove(process)

    def stop_all(self) -> None:
        while self.running:
            self.stop(self.running[-1])


def http() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # loopback only: never a proxy from the environment
    return session


def wait_until(process: Process, url: str, *, timeout: float, ok: tuple[int, ...] = (200,)) -> None:
    deadline = time.monotonic() + timeout
    with http() as session:
        while True:
            if not process.alive():
                raise RuntimeError(f"{process.name} exited:\n{process.tail()}")
            with contextlib.suppress(requests.RequestException):
                if session.get(url, timeout=2).status_code in ok:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{process.name} not ready after {timeout:.0f}s:\n{process.tail()}"
                )
            time.sleep(0.1)


# -- mappings and identities -----------------------------------------------------------------


def mapping_document(i: int) -> dict[str, Any]:
    """Mapping number ``i``: 8 per account, 4 projects each with a production mapping on every
    deployment and a preview mapping on ``pr-*`` deployments; one in five is GCP."""
    account = f"acct-{i // MAPPINGS_PER_ACCOUNT:05d}"
    slot = i % MAPPINGS_PER_ACCOUNT
    project = f"proj-{slot // 2}"
    production = slot % 2 == 0
    environment = "production" if production else "preview"
    doc: dict[str, Any] = {
        "name": f"m{i:06d}-{project}-{environment}",
        "description": f"bench mapping {i} for {account}/{project}",
        "account": account,
        "project": project,
        "deployment": "*" if production else "pr-*",
        "environment_type": environment,
    }
    if i % 5 == 2:
        gcp: dict[str, Any] = {"workload_identity_provider": WIPS[i % len(WIPS)]}
        if (i // 5) % 3 != 0:
            gcp["service_account"] = service_account(i)
        doc["gcp"] = gcp
    else:
        aws: dict[str, Any] = {
            "role_arn": (
                f"arn:aws:iam::{100000000000 + i // MAPPINGS_PER_ACCOUNT}:role/"
                f"bench-{project}-{environment}"
            ),
            "duration_seconds": 3600,
        }
        if i % 4 == 1:
            aws["session_policy"] = {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": "s3:GetObject",
                        "Resource": f"arn:aws:s3:::{account}-{project}/*",
                    }
                ],
            }
        doc["aws"] = aws
    return doc


def service_account(i: int) -> str:
    return f"sa-{i:06d}@acct-{i // MAPPINGS_PER_ACCOUNT:05d}.iam.gserviceaccount.com"


def generate_specs(count: int) -> list[MappingSpec]:
    return [spec_from_dict(mapping_document(i), f"bench[{i}]") for i in range(count)]


def caller_claims(i: int, tag: str) -> dict[str, str]:
    """Claims of a caller that mapping ``i`` (and only it) binds; ``tag`` makes it unique."""
    doc = mapping_document(i)
    prefix = "main" if doc["environment_type"] == "production" else "pr"
    return {
        "sub": f"atcl_bench_{tag}",
        "account": doc["account"],
        "project": doc["project"],
        "deployment": f"{prefix}-{tag}",
        "environment_type": doc["environment_type"],
    }


def form_body(token: str) -> str:
    from urllib.parse import urlencode

    return urlencode({"grant_type": GRANT, "subject_token": token, "subject_token_type": ID_TOKEN})


def mint(issuer: DevIssuer, claims: dict[str, str]) -> str:
    """A Zuplo-like ID token for ``AUDIENCE`` with ``claims`` over the issuer's defaults."""
    full = issuer.claims(AUDIENCE)
    full.update(claims)
    return issuer.mint(full)


def mint_bodies(issuer: DevIssuer, mappings: int, count: int, tag: str, seed: int) -> list[str]:
    """``count`` form bodies for distinct identities spread over the mappings."""
    rng = random.Random(seed)
    bodies = []
    for k in range(count):
        claims = caller_claims(rng.randrange(mappings), f"{tag}{k:06d}")
        bodies.append(form_body(mint(issuer, claims)))
    return bodies


# -- database --------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    schema = "bench_" + secrets.token_hex(6)
    admin = sa.create_engine(POSTGRES_URL)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def load_mappings(url: str, specs: list[MappingSpec]) -> float:
    """Migrate and apply ``specs`` in one transaction; returns the apply's seconds."""
    database = Database(url)
    try:
        database.upgrade()
        started = time.perf_counter()
        store.apply(database, specs, actor="bench", source="bench/run.py")
        return time.perf_counter() - started
    finally:
        database.dispose()


# -- load ------------------------------------------------------------------------------------


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


# -- the stack -------------------------------------------------------------------------------


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


class Bench:
    def __init__(self, args: argparse.Namespace, out: Path) -> None:
        self.args = args
        self.out = out
        self.procs = Processes(out)
        self.wrk_bin = ""
        self.issuer: DevIssuer | None = None
        self.aws: AwsEmulator | None = None
        self.gcp: GcpEmulator | None = None
        self.report = Report(
            started=time.strftime("%Y-%m-%d %H:%M:%S"),
            machine=machine(),
            settings={
                "quick": args.quick,
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "connections": args.connections,
                "wrk_threads": args.threads,
                "identities": args.identities,
                "cold_delay_s": args.cold_delay,
                "database": args.database,
                "redis": not args.no_redis,
                "mappings": args.mappings,
            },
        )
        self.cached_response_bytes = 0

    # -- environment --------------------------------------------------------------------

    def start_emulators(self) -> None:
        self.issuer = DevIssuer().start()
        self.aws = AwsEmulator().start()
        self.gcp = GcpEmulator().start()
        for wip in WIPS:
            self.gcp.add_provider(wip, self.issuer.url, self.issuer.jwks_url, [AUDIENCE])
        # A stopped sts server drops its keep-alive connections to the emulators; the standard
        # library's servers would print a traceback for each.
        for emulator in (self.issuer, self.gcp):
            server = getattr(emulator, "_server", None)
            if server is not None:
                server.handle_error = lambda *_: None

    def stop_emulators(self) -> None:
        for emulator in (self.gcp, self.aws, self.issuer):
            if emulator is not None:
                with contextlib.suppress(Exception):
                    emulator.stop()

    def allow_service_accounts(self, count: int) -> None:
        assert self.gcp is not None
        for i in range(count):
            doc = mapping_document(i)
            if "gcp" in doc and "service_account" in doc["gcp"]:
                self.gcp.allow_service_account(
                    doc["gcp"]["service_account"], doc["gcp"]["workload_identity_provider"]
                )

    def sts_env(self, database_url: str, *, redis: bool) -> dict[str, str]:
        assert self.issuer is not None
        assert self.aws is not None
        assert self.gcp is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("STS_")}
        env.update(
            {
                "STS_DATABASE_URL": database_url,
                "STS_AUDIENCE": AUDIENCE,
                "STS_TRUSTED_ISSUERS": self.issuer.url,
                "STS_ALLOW_HTTP_LOOPBACK": "true",
                "STS_AWS_ENDPOINT_URL": self.aws.endpoint_url,
                "STS_GCP_STS_URL": self.gcp.sts_url,
                "STS_GCP_IAM_CREDENTIALS_URL": self.gcp.iam_url,
                "STS_LOG_FORMAT": "json",
                "NO_PROXY": "127.0.0.1,localhost",
                "no_proxy": "127.0.0.1,localhost",
            }
        )
        if redis:
            env["STS_REDIS_URL"] = REDIS_URL
            env["STS_CACHE_ENCRYPTION_KEY"] = base64.urlsafe_b64encode(
                secrets.token_bytes(32)
            ).decode()
        return env

    def upstream_exchanges(self) -> int:
        """Credential issuances upstream: AWS calls plus GCP STS exchanges (not IAM calls)."""
        assert self.aws is not None
        assert self.gcp is not None
        gcp = sum(1 for request in list(self.gcp.requests) if request.path == "/v1/token")
        return len(self.aws.requests) + gcp

    def upstream_count(self) -> int:
        assert self.aws is not None
        assert self.gcp is not None
        return len(self.aws.requests) + len(self.gcp.requests)

    # -- servers ------------------------------------------------------------------------

    def start_server(
        self, kind: str, name: str, env: dict[str, str], *, ready_timeout: float
    ) -> tuple[Process, str]:
        """Start one server configuration; returns it and its base URL once it answers."""
        port = free_port()
        url = f"http://{HOST}:{port}"
        python = sys.executable
        if kind.startswith("gunicorn") or kind == "granian-wsgi":
            # What sts serve sets up for its workers: metrics in multiprocess mode, so every
            # server pays the same per-request metrics cost.
            metrics = self.out / f"metrics-{name}"
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
            assert self.issuer is not None
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
                "JWKS_URL": self.issuer.jwks_url,
                "BODY_BYTES": str(self.cached_response_bytes),
            }
        elif kind in ("fastify", "express"):
            assert self.issuer is not None
            cmd = ["node", str(COMPARATOR / f"server-{kind}.js")]
            env = {
                **os.environ,
                "NODE_PATH": str(NODE_DIR / "node_modules"),
                "NODE_ENV": "production",
                "PORT": str(port),
                "JWKS_URL": self.issuer.jwks_url,
                "ISSUER": self.issuer.url,
                "AUDIENCE": AUDIENCE,
                "BODY_BYTES": str(self.cached_response_bytes),
                "WORKERS": "2",
            }
        else:
            raise ValueError(kind)
        process = self.procs.start(name, cmd, env)
        probe = "/healthz" if kind in ("fastify", "express") else "/readyz"
        wait_until(process, url + probe, timeout=ready_timeout)
        return process, url

    def first_ok(self, url: str, body: str, *, timeout: float) -> requests.Response:
        """POST until a 200 (the first request may build the mapping index)."""
        deadline = time.monotonic() + timeout
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        problem = "no answer"
        with http() as session:
            while time.monotonic() < deadline:
                # A worker's first request may build an index of 100,000 mappings: be patient.
                wait = max(5.0, deadline - time.monotonic())
                try:
                    response = session.post(
                        url + "/token", data=body, headers=headers, timeout=wait
                    )
                except requests.RequestException as exc:
                    problem = type(exc).__name__
                else:
                    if response.status_code == 200:
                        return response
                    problem = f"{response.status_code}: {response.text[:200]}"
                time.sleep(0.2)
        raise RuntimeError(f"POST /token did not succeed in {timeout:.0f}s: {problem}")

    def warm_up(self, process: Process, url: str, body: str, *, timeout: float) -> None:
        """Until every worker has its mapping index: a worker builds it on its first request
        or its refresher's first tick, whichever comes first, so a fresh server would pay for
        it inside the measurement."""
        self.first_ok(url, body, timeout=timeout)
        deadline = time.monotonic() + timeout
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        with http() as session:
            while process.log_count(INDEX_LOADED) < SERVER_WORKERS:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{process.name}: mapping index not loaded in every worker")
                with contextlib.suppress(requests.RequestException):
                    session.post(url + "/token", data=body, headers=headers, timeout=60)
                time.sleep(0.05)

    def issue_all(self, url: str, bodies: list[str]) -> int:
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

    def measure(
        self, url: str, bodies_file: Path, *, duration: float | None = None
    ) -> tuple[Load, int]:
        """One wrk run; returns the load and the upstream calls made during it."""
        before = self.upstream_count()
        load = wrk(
            self.wrk_bin,
            url,
            bodies_file,
            duration=duration if duration is not None else self.args.duration,
            connections=self.args.connections,
            threads=self.args.threads,
        )
        return load, self.upstream_count() - before

    def write_bodies(self, name: str, bodies: list[str]) -> Path:
        path = self.out / f"{name}.bodies"
        path.write_text("\n".join(bodies) + "\n")
        return path

    # -- scenarios ----------------------------------------------------------------------

    def run_mapping_count(self, count: int) -> None:
        assert self.issuer is not None
        assert self.aws is not None
        assert self.gcp is not None
        args = self.args
        log(f"{count} mappings: generating and applying")
        specs = generate_specs(count)
        self.allow_service_accounts(count)
        with self.database(f"mappings-{count}") as database_url:
            seconds = load_mappings(database_url, specs)
            self.report.apply_seconds[count] = seconds
            log(f"  apply of {count} mappings in one transaction: {seconds:.2f}s")
            del specs
            env = self.sts_env(database_url, redis=not args.no_redis)
            started = time.monotonic()
            ready_timeout = READY_TIMEOUT_SECONDS + count / 500
            server, url = self.start_server(
                "granian", f"sts-{count}", env, ready_timeout=ready_timeout
            )
            try:
                tag = secrets.token_hex(3)
                cached_body = self.cached_identity(count, tag)
                self.warm_up(server, url, cached_body, timeout=ready_timeout)
                self.report.ready_seconds[count] = time.monotonic() - started
                self.scenario_cached(count, url, cached_body)
                self.scenario_warm(count, url, tag)
                self.scenario_cold(count, url, tag)
            finally:
                self.procs.stop(server)

    def cached_claims(self, count: int, tag: str) -> dict[str, str]:
        """The cached path's identity: bound to an AWS mapping in the middle of the table."""
        i = count // 2
        if "aws" not in mapping_document(i) or i >= count:
            i = (i + 1) % count if count > 1 else 0
        return caller_claims(i, f"c{tag}")

    def cached_identity(self, count: int, tag: str) -> str:
        """The cached path's one token."""
        return form_body(mint(self.issuer_, self.cached_claims(count, tag)))

    def fresh_tokens(self, claims: dict[str, str]) -> list[str]:
        """Bodies of :data:`FRESH_TOKENS` distinct tokens for one identity. More than the
        service's verified-token cache holds: walked in a cycle, every one is verified (RS256)
        again, as the comparators verify every request; the credentials stay cached."""
        return [
            form_body(mint(self.issuer_, {**claims, "jti": f"fresh-{k}"}))
            for k in range(FRESH_TOKENS)
        ]

    @contextlib.contextmanager
    def database(self, name: str) -> Iterator[str]:
        if self.args.database == "postgres":
            with postgres_schema() as url:
                yield url
        else:
            path = self.out / f"{name}.db"
            for suffix in ("", "-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
            yield f"sqlite:///{path}"

    def scenario_cached(self, count: int, url: str, body: str) -> None:
        path = self.write_bodies(f"cached-{count}", [body])
        # The warm-up puts the token in both workers' caches; its calls are reported apart.
        _, warm_calls = self.measure(url, path, duration=self.args.warmup)
        load, calls = self.measure(url, path)
        note = f"warm-up load made {warm_calls} upstream calls"
        self.add(Row("cached", GRANIAN_4, count, load, calls, note))

    def scenario_warm(self, count: int, url: str, tag: str) -> None:
        n = self.args.identities
        started = time.monotonic()
        bodies = mint_bodies(self.issuer_, count, n, f"w{tag}", seed=2)
        minted = time.monotonic()
        before = self.upstream_count()
        failed = self.issue_all(url, bodies)
        warm_calls = self.upstream_count() - before
        log(
            f"  warm: minted {n} tokens in {minted - started:.1f}s, "
            f"exchanged each once in {time.monotonic() - minted:.1f}s"
        )
        path = self.write_bodies(f"warm-{count}", bodies)
        _, more = self.measure(url, path, duration=self.args.warmup)
        load, calls = self.measure(url, path)
        note = f"{n} identities; warming made {warm_calls} + {more} (warm-up load) upstream calls"
        if failed:
            note += f"; {failed} warm-up exchanges failed"
        self.add(Row("warm", GRANIAN_4, count, load, calls, note))

    def scenario_cold(self, count: int, url: str, tag: str) -> None:
        assert self.aws is not None
        assert self.gcp is not None
        n = int(self.args.duration * COLD_RATE_CEILING) + 200
        bodies = mint_bodies(self.issuer_, count, n, f"k{tag}", seed=3)
        path = self.write_bodies(f"cold-{count}", bodies)
        self.aws.delay = self.gcp.delay = self.args.cold_delay
        exchanges = self.upstream_exchanges()
        try:
            load, calls = self.measure(url, path)
        finally:
            self.aws.delay = self.gcp.delay = 0.0
        exchanges = self.upstream_exchanges() - exchanges
        note = (
            f"upstream delay {self.args.cold_delay * 1000:.0f} ms per call; {exchanges} "
            "exchanges (a GCP mapping with a service account is 2 calls; requests still in "
            "flight when wrk stops count upstream but not in requests)"
        )
        if load.requests > n:
            note += f"; WARNING: {load.requests} requests > {n} fresh identities (some repeated)"
        self.add(Row("cold", GRANIAN_4, count, load, calls, note))

    @property
    def issuer_(self) -> DevIssuer:
        assert self.issuer is not None
        return self.issuer

    def head_to_head(self, count: int) -> None:
        """The cached path on every server configuration and on the comparators, back to back."""
        log(f"head to head on the cached path, {count} mappings")
        self.allow_service_accounts(count)
        configs: list[tuple[str, str]] = [("granian", GRANIAN_4)]
        if not self.args.skip_comparator:
            if ensure_node_modules():
                configs.append(("fastify", FASTIFY))
            else:
                self.report.notes.append("comparator skipped: npm ci failed")
        if not self.args.skip_servers:
            configs += [("granian-bt1", GRANIAN_1), ("granian-wsgi", GRANIAN_WSGI)]
            if ensure_gunicorn():
                configs += [
                    ("gunicorn-sync", "gunicorn sync, 2 workers"),
                    ("gunicorn-gthread", "gunicorn gthread, 2 workers x 4 threads"),
                ]
            else:
                self.report.notes.append("gunicorn rows skipped: pip install gunicorn failed")
        if not self.args.skip_comparator and any(kind == "fastify" for kind, _ in configs):
            configs.append(("express", EXPRESS))
        if not self.args.skip_comparator:
            configs.append(("floor", FLOOR))
        with self.database(f"head-to-head-{count}") as database_url:
            load_mappings(database_url, generate_specs(count))
            claims = self.cached_claims(count, secrets.token_hex(3))
            body = form_body(mint(self.issuer_, claims))
            path = self.write_bodies("head-to-head", [body])
            fresh = self.write_bodies("head-to-head-fresh", self.fresh_tokens(claims))
            # Rounds interleave the configurations (A B C, A B C, ...): a machine that slows
            # down for a while slows every configuration, not one.
            for round_ in range(1, self.args.rounds + 1):
                for kind, label in configs:
                    self.head_to_head_one(
                        kind,
                        label,
                        count,
                        database_url=database_url,
                        body=body,
                        path=path,
                        fresh=fresh,
                        round_=round_ if self.args.rounds > 1 else None,
                    )

    def head_to_head_one(
        self,
        kind: str,
        label: str,
        count: int,
        *,
        database_url: str,
        body: str,
        path: Path,
        fresh: Path,
        round_: int | None = None,
    ) -> None:
        log(f"  {label}" + (f" (round {round_})" if round_ else ""))
        env = self.sts_env(database_url, redis=not self.args.no_redis)
        server, url = self.start_server(
            kind, f"h2h-{kind}", env, ready_timeout=READY_TIMEOUT_SECONDS
        )
        try:
            response = self.first_ok(url, body, timeout=READY_TIMEOUT_SECONDS)
            if kind not in OTHER_SERVERS:
                self.warm_up(server, url, body, timeout=READY_TIMEOUT_SECONDS)
            if kind == "granian":
                # The comparators answer with a body of this size.
                self.cached_response_bytes = len(response.content)
            note = f"{len(response.content)}-byte body" + (f", round {round_}" if round_ else "")
            self.measure(url, path, duration=self.args.warmup)
            load, calls = self.measure(url, path)
            node = kind in OTHER_SERVERS
            self.add(Row("head-to-head", label, count, load, None if node else calls, note))
            # A new token per request for the same identity: one RS256 verification each.
            self.measure(url, fresh, duration=self.args.warmup)
            load, calls = self.measure(url, fresh)
            self.add(Row(FRESH, label, count, load, None if node else calls, note))
            if self.args.profile and kind == "granian" and (round_ or 1) == 1:
                # A run of its own: the samplers take CPU from the 2 cores being measured.
                self.profiled(server, url, fresh if self.args.profile == "fresh" else path)
        finally:
            self.procs.stop(server)

    def isolation(self, count: int) -> None:
        """The cached path's tail while cold exchanges wait on a slow cloud beside it.

        One ``sts serve`` (2 workers x 4 request threads); the cached load measured alone, then
        again while :data:`ISOLATION_CALLERS` clients send identities never seen before, each
        exchange held :data:`ISOLATION_DELAY_SECONDS` by the emulators (the request threads
        wait on it; the cached answers should not).
        """
        assert self.aws is not None
        log(f"isolation: cached path beside cold exchanges (AWS answering after "
            f"{ISOLATION_DELAY_SECONDS:g} s)")  # fmt: skip
        self.allow_service_accounts(count)
        with self.database(f"isolation-{count}") as database_url:
            load_mappings(database_url, generate_specs(count))
            env = self.sts_env(database_url, redis=not self.args.no_redis)
            server, url = self.start_server(
                "granian", "isolation", env, ready_timeout=READY_TIMEOUT_SECONDS
            )
            try:
                tag = secrets.token_hex(3)
                body = self.cached_identity(count, tag)
                self.warm_up(server, url, body, timeout=READY_TIMEOUT_SECONDS)
                path = self.write_bodies("isolation", [body])
                self.measure(url, path, duration=self.args.warmup)
                rounds = max(1, self.args.rounds)
                cold = mint_bodies(
                    self.issuer_, count, COLD_BODIES_ISOLATION * rounds, f"i{tag}", seed=4
                )
                for round_ in range(1, rounds + 1):
                    # Interleaved (alone, beside, alone, beside, ...): the p99 of one run moves
                    # by more than the target allows; the summary compares medians.
                    label = f"round {round_}" if rounds > 1 else ""
                    alone, _ = self.measure(url, path)
                    self.add(Row("isolation", "cached path alone", count, alone, None, label))
                    share = cold[
                        (round_ - 1) * COLD_BODIES_ISOLATION : round_ * COLD_BODIES_ISOLATION
                    ]
                    self.beside_cold(url, path, count, share, label)
            finally:
                self.procs.stop(server)

    def beside_cold(self, url: str, path: Path, count: int, cold: list[str], label: str) -> None:
        """Measure the cached load while :data:`ISOLATION_CALLERS` clients send ``cold``."""
        assert self.aws is not None
        assert self.gcp is not None
        self.aws.delay = self.gcp.delay = ISOLATION_DELAY_SECONDS
        stop = threading.Event()
        sent = Counter[int]()
        callers = [
            threading.Thread(
                target=self._cold_caller,
                args=(url, cold[n::ISOLATION_CALLERS], stop, sent),
                daemon=True,
            )
            for n in range(ISOLATION_CALLERS)
        ]
        for caller in callers:
            caller.start()
        try:
            time.sleep(ISOLATION_DELAY_SECONDS * 1.5)  # the request threads are busy
            beside, _ = self.measure(url, path)
        finally:
            stop.set()
            for caller in callers:
                caller.join(timeout=ISOLATION_DELAY_SECONDS * 3)
            self.aws.delay = self.gcp.delay = 0.0
        note = (
            f"{ISOLATION_CALLERS} cold callers, AWS answering after "
            f"{ISOLATION_DELAY_SECONDS:g} s: {sum(sent.values())} cold exchanges "
            f"({dict(sorted(sent.items()))} by status)" + (f", {label}" if label else "")
        )
        self.add(Row("isolation", "cached path beside cold exchanges", count, beside, None, note))

    @staticmethod
    def _cold_caller(
        url: str, bodies: list[str], stop: threading.Event, sent: Counter[int]
    ) -> None:
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

    def profiled(self, server: Process, url: str, path: Path) -> None:
        """Measure while py-spy samples the two workers: collapsed stacks of one (summarised
        into the report) and a flame graph of the other."""
        spy = ensure_py_spy()
        workers = [pid for pid in server.descendants() if "python" in _cmdline(pid)]
        if spy is None or not workers:
            self.report.notes.append("profile skipped: py-spy unavailable or no worker found")
            return
        seconds = str(max(1, round(self.args.duration)))
        raw, svg = self.out / "profile.raw", self.out / "profile.svg"
        common = ["record", "--duration", seconds, "--rate", "250", "--nonblocking"]
        jobs = [[spy, *common, "--pid", str(workers[-1]), "--function", "--format", "raw",
                 "--output", str(raw)]]  # fmt: skip
        if len(workers) > 1:
            jobs.append([spy, *common, "--pid", str(workers[-2]), "--output", str(svg)])
        logs = [self.out / f"py-spy-{n}.log" for n in range(len(jobs))]
        recorders = []
        for job, log_path in zip(jobs, logs, strict=True):
            with open(log_path, "wb") as sink:
                recorders.append(subprocess.Popen(job, stdout=sink, stderr=subprocess.STDOUT))
        try:
            result = self.measure(url, path)
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
            self.report.profile = summarize_profile(raw, self.args.profile)
            self.report.notes.append(f"py-spy collapsed stacks: {raw}; flame graph: {svg}")
        else:
            problem = logs[0].read_text(errors="replace").strip()[-300:]
            self.report.notes.append(f"py-spy recorded nothing: {problem}")
        self.report.notes.append(
            f"under py-spy the {self.args.profile} path ran at {result[0].rps:,.0f} req/s "
            "(not in the table)"
        )

    def single_flight(self) -> None:
        """2 ``sts serve`` processes on Redis + PostgreSQL; 20 identical cold requests."""
        assert self.issuer is not None
        assert self.aws is not None
        log("multi-process check: 2 sts serve processes, Redis + PostgreSQL, 20 cold requests")
        with postgres_schema() as database_url:
            load_mappings(database_url, generate_specs(10))
            env = self.sts_env(database_url, redis=True)
            timeout = READY_TIMEOUT_SECONDS
            a, url_a = self.start_server("granian", "replica-a", env, ready_timeout=timeout)
            b, url_b = self.start_server("granian", "replica-b", env, ready_timeout=timeout)
            try:
                claims = caller_claims(0, "sf" + secrets.token_hex(4))
                body = form_body(mint(self.issuer, claims))
                delay = 0.5
                barrier = threading.Barrier(20)
                statuses: list[int] = []
                keys: set[str] = set()
                lock = threading.Lock()

                def call(url: str) -> None:
                    with http() as session:
                        barrier.wait(timeout=30)
                        response = session.post(
                            url + "/token",
                            data=body,
                            headers={"Content-Type": "application/x-www-form-urlencoded"},
                            timeout=60,
                        )
                    with lock:
                        statuses.append(response.status_code)
                        if response.status_code == 200:
                            keys.add(response.json()["aws_credentials"]["AccessKeyId"])

                before = len(self.aws.requests)
                self.aws.delay = delay
                try:
                    threads = [
                        threading.Thread(target=call, args=((url_a, url_b)[n % 2],))
                        for n in range(20)
                    ]
                    for thread in threads:
                        thread.start()
                    for thread in threads:
                        thread.join(timeout=90)
                finally:
                    self.aws.delay = 0.0
                calls = len(self.aws.requests) - before
                self.report.single_flight = {
                    "requests": 20,
                    "ok": statuses.count(200),
                    "distinct_credentials": len(keys),
                    "upstream_calls": calls,
                    "upstream_delay_s": delay,
                    "passed": calls == 1 and statuses.count(200) == 20 and len(keys) == 1,
                }
            finally:
                self.procs.stop(a)
                self.procs.stop(b)

    def add(self, row: Row) -> None:
        self.report.rows.append(row)
        log(
            f"  {row.scenario:<12} {row.server:<40} {row.load.rps:>9.0f} req/s  "
            f"p50 {row.load.p50_ms:.2f} ms  p99 {row.load.p99_ms:.2f} ms  "
            f"upstream {row.upstream_calls if row.upstream_calls is not None else '-'}"
        )

    # -- the whole run ------------------------------------------------------------------

    def run(self) -> None:
        self.wrk_bin = ensure_apt("wrk", "wrk")
        self.start_emulators()
        if not self.args.skip_main:
            for count in self.args.mappings:
                self.run_mapping_count(count)
        self.head_to_head(self.args.head_to_head)
        if not self.args.skip_isolation:
            self.isolation(self.args.head_to_head)
        if not self.args.skip_multiprocess:
            self.single_flight()

    def close(self) -> None:
        self.procs.stop_all()
        self.stop_emulators()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


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


# -- output ----------------------------------------------------------------------------------


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
        for name in (FASTIFY, EXPRESS):
            other = report.median(scenario, name)
            if other is None or not other[0]:
                continue
            for label in (GRANIAN_4, GRANIAN_1, FLOOR):
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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
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
        bench.run()
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


if __name__ == "__main__":
    sys.exit(main())
