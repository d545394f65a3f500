"""Fixtures for provider tests: real boto3 against moto's server, real google-auth against the
GCP emulator, whose workload identity provider trusts the session's development issuer."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from sts.dev.aws_emulator import AwsEmulator
from sts.dev.gcp_emulator import GcpEmulator
from sts.dev.issuer import DevIssuer
from sts.identity.principal import Principal
from tests.conftest import AUDIENCE

WIF_PROVIDER = (
    "//iam.googleapis.com/projects/123456789/locations/global/"
    "workloadIdentityPools/zuplo/providers/zuplo"
)
SERVICE_ACCOUNT = "reader@my-gcp.iam.gserviceaccount.com"


@pytest.fixture(scope="session")
def _aws_emulator() -> Iterator[AwsEmulator]:
    with AwsEmulator() as emulator:
        yield emulator


@pytest.fixture
def aws_emulator(_aws_emulator: AwsEmulator) -> Iterator[AwsEmulator]:
    """moto's STS over HTTP, with no recorded requests, faults or delay left from other tests."""
    _aws_emulator.clear()
    yield _aws_emulator
    _aws_emulator.clear()


@pytest.fixture(scope="session")
def _gcp_emulator(issuer: DevIssuer) -> Iterator[GcpEmulator]:
    with GcpEmulator() as emulator:
        emulator.add_provider(WIF_PROVIDER, issuer.url, issuer.jwks_url, [AUDIENCE])
        emulator.allow_service_account(SERVICE_ACCOUNT, WIF_PROVIDER)
        yield emulator


@pytest.fixture
def gcp_emulator(_gcp_emulator: GcpEmulator) -> Iterator[GcpEmulator]:
    """The GCP emulator trusting ``issuer`` for ``WIF_PROVIDER``, with a clean record."""
    _gcp_emulator.clear()
    yield _gcp_emulator
    _gcp_emulator.clear()


@pytest.fixture
def subject_token(issuer: DevIssuer) -> str:
    """A valid Zuplo-like ID token for the service's audience."""
    return issuer.mint(audience=AUDIENCE)


@pytest.fixture
def principal(issuer: DevIssuer) -> Principal:
    claims = issuer.claims()
    return Principal(
        issuer=claims["iss"],
        sub=claims["sub"],
        account=claims["account"],
        project=claims["project"],
        deployment=claims["deployment"],
        environment_type=claims["environment_type"],
        audiences=frozenset({claims["aud"]}),
    )


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on: connecting is refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
