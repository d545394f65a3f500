"""A whole service over real HTTP: dev issuer, moto AWS server, GCP emulator, a real database."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from werkzeug.serving import BaseWSGIServer, make_server

from sts import create_app
from sts.api import services_of
from sts.config import Settings
from sts.db import Database
from sts.dev.aws_emulator import AwsEmulator, StsCall
from sts.dev.gcp_emulator import GcpEmulator, RecordedRequest
from sts.dev.issuer import DevIssuer
from sts.identity.jwks import JWKSRegistry
from sts.mappings.document import parse_document
from sts.mappings.store import apply_specs
from sts.services import Services
from tests.conftest import AUDIENCE

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
WIP = (
    "//iam.googleapis.com/projects/123456789/locations/global/"
    "workloadIdentityPools/zuplo-pool/providers/zuplo-oidc"
)
WIP_OTHER = (
    "//iam.googleapis.com/projects/123456789/locations/global/"
    "workloadIdentityPools/zuplo-pool/providers/other-oidc"
)
SA = "reader@demo-project.iam.gserviceaccount.com"
ROLE = "arn:aws:iam::123456789012:role/orders-api"
ROLE_PREVIEW = "arn:aws:iam::123456789012:role/orders-preview"

DEFAULT_MAPPINGS = f"""
mappings:
  - name: orders-prod
    account: my-account
    project: my-project
    environment_type: production
    aws:
      role_arn: {ROLE}
      duration_seconds: 3600
  - name: orders-preview
    account: my-account
    project: my-project
    environment_type: preview
    aws:
      role_arn: {ROLE_PREVIEW}
      duration_seconds: 900
      session_policy:
        Version: "2012-10-17"
        Statement: [{{Effect: Allow, Action: "s3:GetObject", Resource: "arn:aws:s3:::orders/*"}}]
  - name: analytics-gcp
    account: gcp-account
    project: analytics
    gcp:
      workload_identity_provider: {WIP}
      service_account: {SA}
      scopes: [https://www.googleapis.com/auth/cloud-platform, https://www.googleapis.com/auth/bigquery]
      lifetime_seconds: 1800
  - name: federated-gcp
    account: gcp-account
    project: federated
    gcp:
      workload_identity_provider: {WIP_OTHER}
  - name: disabled-one
    account: my-account
    project: disabled-project
    enabled: false
    aws:
      role_arn: arn:aws:iam::123456789012:role/disabled
"""


@pytest.fixture(scope="session")
def aws() -> Iterator[AwsEmulator]:
    with AwsEmulator() as emulator:
        yield emulator


@pytest.fixture(scope="session")
def gcp(issuer: DevIssuer) -> Iterator[GcpEmulator]:
    with GcpEmulator() as emulator:
        emulator.add_provider(WIP, issuer.url, issuer.jwks_url, [AUDIENCE])
        emulator.add_provider(WIP_OTHER, issuer.url, issuer.jwks_url, [AUDIENCE])
        emulator.allow_service_account(SA, WIP)
        yield emulator


@dataclass
class Stack:
    url: str
    issuer: DevIssuer
    aws: AwsEmulator
    gcp: GcpEmulator
    services: Services
    aws_seen: int
    gcp_seen: int

    def token(self, **claims: Any) -> str:
        return self.issuer.mint(audience=AUDIENCE, **claims)

    def post(self, token: str | None = None, **fields: str) -> requests.Response:
        data = {"grant_type": GRANT, "subject_token_type": ID_TOKEN, **fields}
        data.setdefault("subject_token", token if token is not None else self.token())
        return requests.post(self.url + "/token", data=data, timeout=30)

    def raw(self, body: bytes | str, content_type: str) -> requests.Response:
        return requests.post(
            self.url + "/token", data=body, headers={"Content-Type": content_type}, timeout=30
        )

    def aws_requests(self) -> list[StsCall]:
        """What the AWS emulator received during this test."""
        return list(self.aws.requests[self.aws_seen :])

    def gcp_requests(self) -> list[RecordedRequest]:
        return list(self.gcp.requests[self.gcp_seen :])


def serve_app(app: Any, port: int = 0) -> tuple[BaseWSGIServer, str]:
    """``app`` served on 127.0.0.1 by threads of this process. An sts app's refreshers start
    with the server, as ``sts.rsgi`` starts them with each worker (``create_app`` starts none)."""
    if "sts" in getattr(app, "extensions", {}):
        services_of(app).start()
    server = make_server("127.0.0.1", port, app, threaded=True)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    return server, f"http://127.0.0.1:{server.server_port}"


def settings_for(
    database_url: str, issuer: DevIssuer, aws: AwsEmulator, gcp: GcpEmulator, **extra: Any
) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "audiences": (AUDIENCE,),
        "trusted_issuers": (issuer.url,),
        "allow_http_loopback": True,
        "aws_endpoint_url": aws.endpoint_url,
        "gcp_sts_url": gcp.sts_url,
        "gcp_iam_credentials_url": gcp.iam_url,
    }
    values.update(extra)
    return Settings(**values)


def wait_ready(services: Services, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not services.ready()[0]:
        if time.monotonic() > deadline:
            raise AssertionError(f"service not ready: {services.ready()[1]}")
        time.sleep(0.05)


def seed(database_url: str, document: str = DEFAULT_MAPPINGS) -> Database:
    database = Database(database_url)
    database.upgrade()
    with database.session() as session:
        apply_specs(
            session,
            parse_document(document, "test.yaml"),
            prune=True,
            dry_run=False,
            actor="test",
            source="test",
        )
    return database


@contextmanager
def running_stack(
    issuer: DevIssuer,
    aws: AwsEmulator,
    gcp: GcpEmulator,
    database_url: str,
    *,
    document: str = DEFAULT_MAPPINGS,
    wait: bool = True,
    registry_options: dict[str, Any] | None = None,
    port: int = 0,
    **extra: Any,
) -> Iterator[Stack]:
    """The service over HTTP on ``database_url`` seeded with ``document``; stopped on exit.

    ``registry_options`` builds the key-set registry with test timings (a TTL under a minute,
    no refetch cooldown); ``port`` is where it listens (a broker issuer names it before the
    service starts); ``extra`` overrides settings.
    """
    database = seed(database_url, document)
    settings = settings_for(database_url, issuer, aws, gcp, **extra)
    registry = JWKSRegistry(settings, **registry_options) if registry_options else None
    services = Services.build(settings, registry=registry)
    server, base = serve_app(create_app(services=services), port)
    try:
        if wait:
            wait_ready(services)
        yield Stack(base, issuer, aws, gcp, services, len(aws.requests), len(gcp.requests))
    finally:
        server.shutdown()
        server.server_close()
        services.close()
        database.dispose()


@pytest.fixture
def stack_factory(
    issuer: DevIssuer, aws: AwsEmulator, gcp: GcpEmulator, tmp_path: Path
) -> Iterator[Any]:
    """Start services on the default (or a given) document and database; all stopped at the end."""
    numbers = itertools.count()
    with ExitStack() as started:

        def start(
            document: str = DEFAULT_MAPPINGS,
            database_url: str | None = None,
            wait: bool = True,
            **extra: Any,
        ) -> Stack:
            url = database_url or f"sqlite:///{tmp_path / f'sts{next(numbers)}.db'}"
            stack: Stack = started.enter_context(
                running_stack(issuer, aws, gcp, url, document=document, wait=wait, **extra)
            )
            return stack

        yield start


@pytest.fixture
def stack(stack_factory: Any) -> Stack:
    """The service on SQLite with the default mappings, ready."""
    stack: Stack = stack_factory()
    return stack
