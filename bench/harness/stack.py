"""The stack a run measures: the emulators in this process, the servers it starts, and the
measurement (:class:`Bench`). The scenarios are in :mod:`harness.scenarios`,
:mod:`harness.head_to_head`, :mod:`harness.isolation` and :mod:`harness.single_flight`."""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

from harness.constants import AUDIENCE, FRESH_TOKENS, HOST, REDIS_URL, WIPS
from harness.database import postgres_schema
from harness.processes import Process, Processes, free_port, wait_until
from harness.report import Report, Row, machine
from harness.servers import Upstreams, launch
from harness.tools import log
from harness.workload import caller_claims, form_body, mapping_document, mint
from harness.wrk import Load, wrk
from sts.dev.aws_emulator import AwsEmulator
from sts.dev.gcp_emulator import GcpEmulator
from sts.dev.issuer import DevIssuer


class Bench:
    """One run: its options, its output directory, the processes it started, the emulators and
    the report the scenarios add their rows to."""

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

    # -- servers and load ------------------------------------------------------------------

    def start_server(
        self,
        kind: str,
        name: str,
        env: dict[str, str],
        *,
        ready_timeout: float,
        mappings_file: Path | None = None,
    ) -> tuple[Process, str]:
        """Start one server configuration (:func:`harness.servers.launch`); returns it and its
        base URL once it answers."""
        port = free_port()
        url = f"http://{HOST}:{port}"
        spec = launch(
            kind,
            name,
            port,
            env,
            out=self.out,
            upstreams=self.upstreams,
            body_bytes=self.cached_response_bytes,
            mappings_file=mappings_file,
        )
        process = self.procs.start(name, spec.cmd, spec.env)
        wait_until(process, url + spec.probe, timeout=ready_timeout)
        return process, url

    @property
    def upstreams(self) -> Upstreams:
        """The emulators' addresses, for the servers other than sts serve."""
        assert self.issuer is not None
        assert self.aws is not None
        assert self.gcp is not None
        return Upstreams(
            issuer=self.issuer.url,
            jwks_url=self.issuer.jwks_url,
            aws_endpoint_url=self.aws.endpoint_url,
            gcp_sts_url=self.gcp.sts_url,
            gcp_iam_url=self.gcp.iam_url,
        )

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

    # -- identities and databases ----------------------------------------------------------

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

    @property
    def issuer_(self) -> DevIssuer:
        assert self.issuer is not None
        return self.issuer

    def add(self, row: Row) -> None:
        self.report.rows.append(row)
        log(
            f"  {row.scenario:<12} {row.server:<40} {row.load.rps:>9.0f} req/s  "
            f"p50 {row.load.p50_ms:.2f} ms  p99 {row.load.p99_ms:.2f} ms  "
            f"upstream {row.upstream_calls if row.upstream_calls is not None else '-'}"
        )

    def close(self) -> None:
        self.procs.stop_all()
        self.stop_emulators()
