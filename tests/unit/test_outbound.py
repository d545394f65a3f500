"""sts.outbound: the proxy rule of every upstream session (README, "Configuration")."""

from __future__ import annotations

import pytest
from botocore.utils import get_environ_proxies

from sts.outbound import proxies_for, upstream_session

NAMES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY")


@pytest.fixture(autouse=True)
def clean_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.mark.parametrize(
    ("env", "url", "expected"),
    [
        ({}, "https://sts.googleapis.com/v1/token", {}),
        (
            {"HTTPS_PROXY": "http://proxy.internal:3128"},
            "https://sts.googleapis.com/v1/token",
            {"https": "http://proxy.internal:3128"},
        ),
        ({"HTTPS_PROXY": "http://proxy.internal:3128"}, "http://127.0.0.1:8080/jwks", {}),
        (
            {"HTTP_PROXY": "http://proxy.internal:3128"},
            "http://127.0.0.1:8080/jwks",
            {"http": "http://proxy.internal:3128"},
        ),
        (
            {"HTTPS_PROXY": "http://proxy.internal:3128", "NO_PROXY": "googleapis.com"},
            "https://sts.googleapis.com/v1/token",
            {},
        ),
        (
            {"HTTPS_PROXY": "http://proxy.internal:3128", "NO_PROXY": "*"},
            "https://sts.us-east-1.amazonaws.com/",
            {},
        ),
        (
            {"https_proxy": "http://lower.internal:3128"},
            "https://sts.us-east-1.amazonaws.com/",
            {"https": "http://lower.internal:3128"},
        ),
    ],
)
def test_the_proxy_chosen_is_the_one_botocore_chooses(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], url: str, expected: dict[str, str]
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert proxies_for(url) == expected
    scheme = url.split(":", 1)[0]
    botocore_choice = get_environ_proxies(url).get(scheme)
    assert proxies_for(url).get(scheme) == botocore_choice


def test_sessions_trust_nothing_from_the_environment() -> None:
    session = upstream_session()
    try:
        assert session.trust_env is False
        assert session.auth is None
        assert session.proxies == {}
    finally:
        session.close()
