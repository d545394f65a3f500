"""Credential cache: the contract's reuse rule, key separation, single-flight; fake clock."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace

import pytest

from sts.cache import CredentialCache, cache_key, reuse_margin
from sts.config import Settings
from sts.dev.aws_emulator import AwsEmulator
from sts.dev.issuer import DevIssuer
from sts.errors import InvalidRequest, InvalidTarget, TemporarilyUnavailable
from sts.identity.principal import Principal
from sts.mappings.spec import AwsTarget, GcpTarget, MappingSpec
from sts.providers.aws import AwsProvider
from sts.providers.base import Credentials
from tests.forking import in_child

PRINCIPAL = Principal(
    "https://iss", "sub", "acct", "proj", "dep", "production", frozenset({"aud-a", "aud-b"})
)
AWS = MappingSpec("m", "acct", "proj", aws=AwsTarget("arn:aws:iam::123456789012:role/r"))


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


#: Only says "not stuck": what the tests wait for happens within a second.
NOT_STUCK = 30.0


def creds(expires_at: float, token: str = "t") -> Credentials:
    return Credentials(provider="aws", access_token=token, expires_at=expires_at)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


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
    assert started.wait(5)
    for thread in threads[1:]:
        thread.start()
    wait_until(lambda: cache.waiting == 7, "the other seven never waited for the leader")
    release.set()
    for thread in threads:
        thread.join(5)
    assert len(calls) == 1
    assert len(errors) == 8
    ok, hit = cache.get_or_issue(key, lambda: creds(time.time() + 3600))
    assert not hit
    assert ok.access_token == "t"


def test_lru_evicts_the_least_recently_used_entry_and_keeps_a_touched_one() -> None:
    clock = Clock()
    cache = CredentialCache(max_entries=3, clock=clock)
    keys = [cache_key(AWS, PRINCIPAL, (str(i),)) for i in range(5)]
    for key in keys[:3]:
        cache.put(key, creds(clock.now + 3600), issued_at=clock.now)
    # The oldest entry is read: keys[1] is now the least recently used.
    assert cache.get(keys[0]) is not None
    cache.put(keys[3], creds(clock.now + 3600), issued_at=clock.now)
    assert len(cache) == 3
    assert cache.get(keys[1]) is None
    assert cache.get(keys[0]) is not None
    assert cache.get(keys[2]) is not None
    assert cache.get(keys[3]) is not None
    # A hit through the exchange path touches too: keys[2] is now the oldest.
    assert cache.get_or_issue(keys[0], lambda: creds(0))[1]
    assert cache.get_or_issue(keys[3], lambda: creds(0))[1]
    cache.put(keys[4], creds(clock.now + 3600), issued_at=clock.now)
    assert cache.get(keys[2]) is None
    assert all(cache.get(keys[n]) is not None for n in (0, 3, 4))


def test_single_flight_waiter_gives_up_with_503_after_the_bound_while_the_leader_hangs() -> None:
    cache = CredentialCache(wait_timeout=0.3)
    in_upstream = threading.Event()
    release = threading.Event()
    key = cache_key(AWS, PRINCIPAL, ())

    def hanging_upstream() -> Credentials:
        in_upstream.set()
        release.wait(4 * NOT_STUCK)  # until the test lets it answer
        return creds(time.time() + 3600, token="leader")

    leader_result: list[tuple[Credentials, bool]] = []
    leader = threading.Thread(
        target=lambda: leader_result.append(cache.get_or_issue(key, hanging_upstream))
    )
    leader.start()
    waiter_errors: list[BaseException] = []
    waited: list[float] = []

    def waiter() -> None:
        started = time.monotonic()
        try:
            cache.get_or_issue(key, lambda: creds(time.time() + 3600, token="second call"))
        except BaseException as exc:
            waiter_errors.append(exc)
        waited.append(time.monotonic() - started)

    try:
        assert in_upstream.wait(NOT_STUCK)
        thread = threading.Thread(target=waiter)
        thread.start()
        thread.join(NOT_STUCK)
        assert not thread.is_alive(), "the waiter is still waiting for the hung leader"
        # It gave up while the leader still hung (the leader answers only once released).
        assert leader.is_alive()
        assert not leader_result
        assert len(waiter_errors) == 1
        error = waiter_errors[0]
        assert isinstance(error, TemporarilyUnavailable)
        assert error.status == 503
        assert error.headers == {"Retry-After": "5"}
        # After its 0.3 s, no sooner.
        assert waited[0] >= 0.3
        assert cache.waiting == 0
    finally:
        release.set()
        leader.join(NOT_STUCK)
    # The leader was never interrupted: its answer is cached for the next request.
    assert leader_result[0][0].access_token == "leader"
    assert cache.get_or_issue(key, lambda: creds(0))[0].access_token == "leader"
    assert cache.upstream_calls == 1


def test_waiter_gives_up_while_the_leader_waits_on_a_stalling_aws_emulator(
    issuer: DevIssuer,
) -> None:
    """The leader's hang comes from outside: AWS STS (the emulator) holds its answer 3 s, ten
    times the waiter's 0.3 s."""
    with AwsEmulator() as aws:
        provider = AwsProvider(Settings(aws_endpoint_url=aws.endpoint_url), read_timeout=NOT_STUCK)
        cache = CredentialCache(wait_timeout=0.3)
        token = issuer.mint(audience="sts-test")
        key = cache_key(AWS, PRINCIPAL, ())

        def issue() -> Credentials:
            return provider.issue(PRINCIPAL, AWS, token, ())

        aws.delay = 3.0
        leader_result: list[tuple[Credentials, bool]] = []
        leader = threading.Thread(
            target=lambda: leader_result.append(cache.get_or_issue(key, issue))
        )
        leader.start()
        wait_until(lambda: len(aws.requests) == 1, "the leader never reached AWS")
        started = time.monotonic()
        with pytest.raises(TemporarilyUnavailable) as gave_up:
            cache.get_or_issue(key, issue)
        # After its 0.3 s, and while the leader still waited for AWS.
        assert time.monotonic() - started >= 0.3
        assert leader.is_alive()
        assert not leader_result
        assert gave_up.value.headers == {"Retry-After": "5"}
        leader.join(NOT_STUCK)
        assert not leader.is_alive()
        # The leader's call went through once; the waiter never made a second one.
        assert leader_result[0][1] is False
        assert len(aws.requests) == 1
        assert cache.get_or_issue(key, issue) == (leader_result[0][0], True)


def test_forked_child_issues_without_waiting_for_the_parents_flight_or_lock() -> None:
    # A child that waited for the parent's flight would wait this long, then fail.
    cache = CredentialCache(wait_timeout=2 * NOT_STUCK, refresh_fraction=0.5)
    key = cache_key(AWS, PRINCIPAL, ())
    other = cache_key(AWS, PRINCIPAL, ("other",))
    in_upstream = threading.Event()
    release = threading.Event()

    def parent_upstream() -> Credentials:
        in_upstream.set()
        release.wait(4 * NOT_STUCK)  # until the test lets it answer
        return creds(time.time() + 3600, token="parent")

    leader = threading.Thread(target=cache.get_or_issue, args=(key, parent_upstream))
    leader.start()
    clock_base = time.time()
    cache.put(other, creds(clock_base + 3600, token="old"), issued_at=clock_base - 3000)

    def child() -> bool:
        started = time.monotonic()
        # The parent's flight for ``key`` has no thread in this process to land it.
        issued, hit = cache.get_or_issue(key, lambda: creds(time.time() + 3600, token="child"))
        # Far below the wait for the parent's flight (2 * NOT_STUCK): "not stuck" only.
        quick = time.monotonic() - started < NOT_STUCK
        # Past its refresh point: renewed by this process's own background pool.
        served, _ = cache.get_or_issue(other, lambda: creds(time.time() + 3600, token="new"))
        cache.wait_idle(NOT_STUCK)
        renewed = cache.get(other)
        return (
            quick
            and not hit
            and issued.access_token == "child"
            and served.access_token == "old"
            and renewed is not None
            and renewed.access_token == "new"
        )

    try:
        assert in_upstream.wait(NOT_STUCK)
        # Fork while a parent thread holds the cache's lock, as a busy worker may.
        with cache._lock:
            code = in_child(child, timeout=3 * NOT_STUCK)
    finally:
        release.set()
        leader.join(NOT_STUCK)
        cache.close()
    assert code == 0


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


def test_a_cloud_refusal_is_remembered_for_ten_seconds_for_its_key_only() -> None:
    clock = Clock()
    cache = CredentialCache(clock=clock)
    calls: list[str] = []
    refusal = InvalidTarget(
        "aws: AccessDenied - the role does not trust this identity",
        provider="aws",
        provider_code="AccessDenied",
    )

    def refused() -> Credentials:
        calls.append("refused")
        raise refusal

    key = cache_key(AWS, PRINCIPAL, ())
    for _ in range(20):
        with pytest.raises(InvalidTarget) as caught:
            cache.get_or_issue(key, refused)
        assert caught.value.to_dict() == refusal.to_dict()
        assert caught.value.provider_code == "AccessDenied"
    assert calls == ["refused"]
    # Another key (an edited mapping: another fingerprint) is asked at once.
    edited = replace(AWS, aws=AwsTarget("arn:aws:iam::123456789012:role/r", duration_seconds=900))
    ok, _ = cache.get_or_issue(cache_key(edited, PRINCIPAL, ()), lambda: creds(clock.now + 3600))
    assert ok.access_token == "t"
    # After 10 s the cloud is asked again.
    clock.now += 9.9
    with pytest.raises(InvalidTarget):
        cache.get_or_issue(key, refused)
    assert calls == ["refused"]
    clock.now += 0.2
    ok, hit = cache.get_or_issue(key, lambda: creds(clock.now + 3600))
    assert (ok.access_token, hit) == ("t", False)


@pytest.mark.parametrize(
    "error",
    [
        TemporarilyUnavailable("aws: ThrottlingException", provider="aws"),
        InvalidRequest("aws: ExpiredTokenException", provider="aws"),
        # The service's own refusal (a session tag AWS cannot carry): no cloud call to save.
        InvalidTarget("a claim cannot be carried as an AWS session tag"),
    ],
)
def test_503s_expired_tokens_and_the_services_own_refusals_are_never_remembered(
    error: Exception,
) -> None:
    cache = CredentialCache()
    key = cache_key(AWS, PRINCIPAL, ())
    calls: list[int] = []

    def failing() -> Credentials:
        calls.append(1)
        raise error

    for _ in range(3):
        with pytest.raises(type(error)):
            cache.get_or_issue(key, failing)
    assert len(calls) == 3
