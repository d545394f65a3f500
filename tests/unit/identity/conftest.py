"""Fixtures for the identity tests: a controllable clock, fresh issuers, a verifier per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sts.config import Settings
from sts.dev.issuer import DevIssuer, SigningKey
from sts.identity.jwks import JWKSRegistry
from sts.identity.verifier import TokenVerifier
from tests.conftest import AUDIENCE


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def settings_for(*issuers: DevIssuer, skew: int = 60) -> Settings:
    return Settings(
        audiences=(AUDIENCE,),
        trusted_issuers=tuple(i.url for i in issuers),
        allow_http_loopback=True,
        clock_skew_seconds=skew,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _reset(issuer: DevIssuer, keys: list[SigningKey]) -> DevIssuer:
    issuer.keys = list(keys)
    issuer.jwks_status = 200
    issuer.jwks_delay = 0.0
    issuer.jwks_body = None
    issuer.jwks_headers = {}
    issuer.fetches = 0
    return issuer


@pytest.fixture(scope="session")
def _dev_server() -> Iterator[DevIssuer]:
    # Servers are shared because stopping one takes half a second; tests get them reset.
    with DevIssuer() as issuer:
        yield issuer


@pytest.fixture(scope="session")
def _attacker_server() -> Iterator[DevIssuer]:
    with DevIssuer() as issuer:
        yield issuer


@pytest.fixture
def dev(_dev_server: DevIssuer) -> DevIssuer:
    """An issuer this test may rotate and break: keys, status, body and counters start fresh."""
    keys = list(_dev_server.keys[-1:])
    return _reset(_dev_server, keys)


@pytest.fixture
def attacker(_attacker_server: DevIssuer) -> DevIssuer:
    """A second live issuer that is not trusted: its JWKS must never be fetched."""
    return _reset(_attacker_server, _attacker_server.keys[-1:])


@pytest.fixture
def registry(issuer: DevIssuer, clock: FakeClock) -> Iterator[JWKSRegistry]:
    reg = JWKSRegistry(settings_for(issuer), clock=clock)
    yield reg
    reg.stop()


@pytest.fixture
def verifier(issuer: DevIssuer, registry: JWKSRegistry) -> TokenVerifier:
    """A verifier trusting the session ``issuer`` with a fresh verified-token cache."""
    return TokenVerifier(settings_for(issuer), registry)
