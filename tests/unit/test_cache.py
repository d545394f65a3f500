"""Credential cache: the contract's reuse rule, key separation, single-flight; fake clock."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from sts.cache import CredentialCache, cache_key, reuse_margin
from sts.errors import TemporarilyUnavailable
from sts.identity.principal import Principal
from sts.mappings.spec import AwsTarget, GcpTarget, MappingSpec
from sts.providers.base import Credentials

PRINCIPAL = Principal(
    "https://iss", "sub", "acct", "proj", "dep", "production", frozenset({"aud-a", "aud-b"})
)
AWS = MappingSpec("m", "acct", "proj", aws=AwsTarget("arn:aws:iam::123456789012:role/r"))


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def creds(expires_at: float, token: str = "t") -> Credentials:
    return Credentials(provider="aws", access_token=token, expires_at=expires_at)


@pytest.mark.parametrize(
    ("lifetime", "margin"),
    [(900, 450), (1200, 600), (1800, 900), (3600, 900), (43200, 900), (600, 300), (300, 300)],
)
def test_reuse_margin(lifetime: int, margin: int) -> None:
    assert reuse_margin(lifetime) == margin


def test_hour_long_credential_is_reused_until_15_minutes_before_expiry() -> None:
    clock = Clock()
    cache = CredentialCache(clock=clock, refresh_fraction=1.0)
    calls: list[int] = []

    def issue() -> Credentials:
        calls.append(1)
        return creds(clock.now + 3600, token=f"t{len(calls)}")

    key = cache_key(AWS, PRINCIPAL, ())
    first, hit = cache.get_or_issue(key, issue)
    assert not hit
    clock.now += 3600 - 900 - 1
    again, hit = cache.get_or_issue(key, issue)
    assert hit
    assert again is first
    clock.now += 1
    renewed, hit = cache.get_or_issue(key, issue)
    assert not hit
    assert renewed.access_token == "t2"
    assert len(calls) == 2


def test_nothing_with_under_five_minutes_left_is_stored() -> None:
    clock = Clock()
    cache = CredentialCache(clock=clock)
    key = cache_key(AWS, PRINCIPAL, ())
    cache.put(key, creds(clock.now + 299), issued_at=clock.now)
    assert cache.get(key) is None


def test_keys_separate_what_the_contract_separates() -> None:
    gcp = MappingSpec("g", "acct", "proj", gcp=GcpTarget("//iam.googleapis.com/projects/1/x"))
    base = cache_key(gcp, PRINCIPAL, ("a", "b"))
    assert cache_key(gcp, PRINCIPAL, ("b", "a")) == base
    others = [
        cache_key(gcp, PRINCIPAL, ("a",)),
        cache_key(AWS, PRINCIPAL, ("a", "b")),
        cache_key(
            MappingSpec("g", "acct", "proj", gcp=GcpTarget("//iam.googleapis.com/projects/2/x")),
            PRINCIPAL,
            ("a", "b"),
        ),
    ]
    for field in ("issuer", "sub", "account", "project", "deployment", "environment_type"):
        others.append(cache_key(gcp, replace(PRINCIPAL, **{field: "other"}), ("a", "b")))
    assert base not in others
    assert len(set(others)) == len(others)
    # The token's audiences are compared as a set; another audience is another key.
    assert (
        cache_key(gcp, replace(PRINCIPAL, audiences=frozenset(["aud-b", "aud-a"])), ("a", "b"))
        == base
    )
    assert cache_key(gcp, replace(PRINCIPAL, audiences=frozenset({"aud-a"})), ("a", "b")) != base


def test_single_flight_and_errors_are_not_cached() -> None:
    cache = CredentialCache()
    started = threading.Event()
    release = threading.Event()
    calls: list[int] = []

    def slow_failure() -> Credentials:
        calls.append(1)
        started.set()
        release.wait(5)
        raise TemporarilyUnavailable("upstream down")

    key = cache_key(AWS, PRINCIPAL, ())
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            cache.get_or_issue(key, slow_failure)
        except TemporarilyUnavailable as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    threads[0].start()
    started.wait(5)
    for thread in threads[1:]:
        thread.start()
    time.sleep(0.1)
    release.set()
    for thread in threads:
        thread.join(5)
    assert len(calls) == 1
    assert len(errors) == 8
    ok, hit = cache.get_or_issue(key, lambda: creds(time.time() + 3600))
    assert not hit
    assert ok.access_token == "t"


def test_lru_bound() -> None:
    clock = Clock()
    cache = CredentialCache(max_entries=3, clock=clock)
    keys = [cache_key(AWS, PRINCIPAL, (str(i),)) for i in range(5)]
    for key in keys:
        cache.put(key, creds(clock.now + 3600), issued_at=clock.now)
    assert len(cache) == 3
    assert cache.get(keys[0]) is None
    assert cache.get(keys[4]) is not None


def test_refresh_ahead_renews_in_the_background_while_serving_the_old() -> None:
    clock = Clock()
    cache = CredentialCache(clock=clock, refresh_fraction=0.5)
    release = threading.Event()
    calls: list[float] = []

    def issue() -> Credentials:
        calls.append(clock.now)
        if len(calls) > 1:
            release.wait(5)
        return creds(clock.now + 3600, token=f"t{len(calls)}")

    key = cache_key(AWS, PRINCIPAL, ())
    first, _ = cache.get_or_issue(key, issue)
    # Usable window is 2700 s; half of it passed: still the old one, renewal starts behind it.
    clock.now += 1349
    assert cache.get_or_issue(key, issue) == (first, True)
    assert len(calls) == 1
    clock.now += 1
    served, hit = cache.get_or_issue(key, issue)
    assert (served, hit) == (first, True)
    again, hit = cache.get_or_issue(key, issue)  # one renewal in flight, not two
    assert (again, hit) == (first, True)
    release.set()
    cache.wait_idle()
    assert len(calls) == 2
    renewed, hit = cache.get_or_issue(key, issue)
    assert hit
    assert renewed.access_token == "t2"
    cache.close()


def test_failed_refresh_keeps_serving_and_retries_later() -> None:
    clock = Clock()
    cache = CredentialCache(clock=clock, refresh_fraction=0.5)
    calls: list[int] = []

    def issue() -> Credentials:
        calls.append(1)
        if len(calls) == 2:
            raise TemporarilyUnavailable("upstream down")
        return creds(clock.now + 3600, token=f"t{len(calls)}")

    key = cache_key(AWS, PRINCIPAL, ())
    first, _ = cache.get_or_issue(key, issue)
    clock.now += 2000
    assert cache.get_or_issue(key, issue)[0] is first
    cache.wait_idle()
    assert len(calls) == 2
    # Within the retry pause no new attempt; the old credential is still handed out.
    assert cache.get_or_issue(key, issue)[0] is first
    cache.wait_idle()
    assert len(calls) == 2
    clock.now += 11
    assert cache.get_or_issue(key, issue)[0] is first
    cache.wait_idle()
    assert len(calls) == 3
    assert cache.get_or_issue(key, issue)[0].access_token == "t3"
    cache.close()
