"""The shared tier against the real Redis: encryption at rest, cross-instance single-flight,
and falling back to the in-process tier when Redis is down or slow."""

from __future__ import annotations

import hashlib
import json
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import cast

import pytest
import redis

from sts.cache import (
    SHARED_LOCK_WAIT_SECONDS,
    UNAVAILABLE,
    CacheKey,
    CredentialCache,
    RedisTier,
    SharedLock,
    cache_key,
)
from sts.identity.principal import Principal
from sts.mappings.spec import AwsTarget, MappingSpec
from sts.metrics import REDIS_FALLBACKS
from sts.providers.base import Credentials

REDIS_URL = "redis://127.0.0.1:6379/0"
#: The socket time-out of the tiers on the real Redis. Generous: those tests are about what
#: Redis holds and who takes its locks, and under the service's 0.25 s a loaded machine could
#: make a call time out, which is "Redis unavailable" (the slow and dead Redis have their own
#: tests below, with the short time-out they are about).
REDIS_TIMEOUT = 5.0
PRINCIPAL = Principal(
    "https://iss", "sub", "acct", "proj", "dep", "production", frozenset({"aud-a"})
)
AWS = MappingSpec("m", "acct", "proj", aws=AwsTarget("arn:aws:iam::123456789012:role/r"))
KEY = cache_key(AWS, PRINCIPAL, ())
SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY-" + secrets.token_hex(8)
SESSION = "FwoGZXIvYXdzE-session-token-" + secrets.token_hex(16)


def creds() -> Credentials:
    return Credentials(
        provider="aws",
        access_token=SESSION,
        expires_at=time.time() + 3600,
        aws_access_key_id="ASIAEXAMPLE" + secrets.token_hex(4).upper(),
        aws_secret_access_key=SECRET,
    )


@pytest.fixture
def prefix() -> Iterator[str]:
    prefix = f"zuplo-sts-test:{secrets.token_hex(6)}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    for name in client.scan_iter(prefix + "*"):
        client.delete(name)
    client.close()


def tier(prefix: str, key: bytes | None = None, url: str = REDIS_URL) -> RedisTier:
    return RedisTier(url, key or bytes(32), prefix=prefix, timeout=REDIS_TIMEOUT)


def test_values_are_encrypted_and_bound_to_their_key(prefix: str) -> None:
    shared = tier(prefix)
    issued = creds()
    shared.put(KEY, issued, time.time(), 60)
    raw = redis.Redis.from_url(REDIS_URL)
    names = list(raw.scan_iter(prefix + "*"))
    assert len(names) == 1
    name = names[0].decode()
    # The name is a hash: no account, deployment or role in Redis.
    assert "acct" not in name
    assert "dep" not in name
    blob = raw.get(name)
    assert isinstance(blob, bytes)
    for secret in (SECRET, SESSION, issued.aws_access_key_id or "-"):
        assert secret.encode() not in blob
    assert 0 < raw.pttl(name) <= 60_000
    assert shared.get(KEY) == (issued, pytest.approx(time.time(), abs=5))
    # Another key cannot read it; a value moved to another name does not decrypt either.
    assert tier(prefix, key=b"\x01" * 32).get(KEY) is None
    other = cache_key(AWS, PRINCIPAL, ("x",))
    raw.set(shared._name("cred", other), blob)
    assert shared.get(other) is None
    raw.close()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_lock_is_exclusive_and_an_expired_holder_cannot_release_the_next_one(
    prefix: str,
) -> None:
    a, b, c = tier(prefix), tier(prefix), tier(prefix)
    held = a.acquire(KEY, 5)
    assert held is not None
    assert held is not UNAVAILABLE
    assert b.acquire(KEY, 5) is None
    held.release()
    short = b.acquire(KEY, 0.2)
    assert short is not None
    assert short is not UNAVAILABLE
    # b's lock expires by itself (its holder may have died); c takes the key.
    taken: list[SharedLock] = []

    def c_takes_it() -> bool:
        lock = c.acquire(KEY, 5)
        if lock is not None:
            taken.append(lock)
        return lock is not None

    wait_until(c_takes_it, "the short lock never expired")
    assert taken[0] is not UNAVAILABLE
    # b's late release must not free c's lock, and is no Redis failure.
    short.release()
    assert b.available
    assert a.acquire(KEY, 5) is None
    taken[0].release()
    assert a.acquire(KEY, 5) not in (None, UNAVAILABLE)


class CountingTier(RedisTier):
    """The real tier, counting lock attempts so a test can see every cache has tried."""

    attempts = 0
    _count_lock = threading.Lock()

    def acquire(self, key: CacheKey, ttl: float) -> SharedLock | None:
        with CountingTier._count_lock:
            CountingTier.attempts += 1
        return super().acquire(key, ttl)


def test_single_flight_across_instances(prefix: str) -> None:
    """Eight caches (as in eight processes), one key, concurrent misses: one upstream call."""
    calls: list[int] = []
    lock = threading.Lock()
    release = threading.Event()
    CountingTier.attempts = 0

    def issue() -> Credentials:
        with lock:
            calls.append(1)
        # Hold the lock until all the others have found it taken at least once.
        release.wait(10)
        return creds()

    caches = [
        CredentialCache(
            shared=CountingTier(REDIS_URL, bytes(32), prefix=prefix, timeout=REDIS_TIMEOUT)
        )
        for _ in range(8)
    ]
    results: list[tuple[Credentials, bool]] = []
    barrier = threading.Barrier(len(caches))

    def run(cache: CredentialCache) -> None:
        barrier.wait()
        results.append(cache.get_or_issue(KEY, issue))

    threads = [threading.Thread(target=run, args=(c,)) for c in caches]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: CountingTier.attempts >= 8, "not every cache tried the lock")
    finally:
        release.set()
    for thread in threads:
        thread.join(10)
    assert len(calls) == 1
    assert len({r[0].access_token for r in results}) == 1
    assert sorted(hit for _, hit in results) == [False] + [True] * 7
    # Later misses in yet another process are served from Redis.
    late = CredentialCache(shared=tier(prefix))
    assert late.get_or_issue(KEY, issue)[1] is True
    assert len(calls) == 1


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_redis_down_falls_back_without_error_or_hang(prefix: str) -> None:
    before = REDIS_FALLBACKS.labels("get")._value.get()
    cache = CredentialCache(shared=tier(prefix, url=f"redis://127.0.0.1:{_closed_port()}/0"))
    started = time.monotonic()
    first, hit = cache.get_or_issue(KEY, creds)
    assert not hit
    # In-process tier still works, and the second miss skips Redis at once.
    assert cache.get_or_issue(KEY, creds) == (first, True)
    other = cache_key(AWS, PRINCIPAL, ("other",))
    assert cache.get_or_issue(other, creds)[1] is False
    # A refused connection costs milliseconds; waiting for the shared lock as if another
    # process held it would cost this much.
    assert time.monotonic() - started < SHARED_LOCK_WAIT_SECONDS
    assert REDIS_FALLBACKS.labels("get")._value.get() > before


def connections(listener: socket.socket) -> int:
    """How many connections ``listener`` received since last asked (each accepted and closed).

    A client's ``connect`` returns once the kernel has queued its connection, so every
    connection made before this call is counted, even one the client closed since."""
    count = 0
    listener.setblocking(False)
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def test_slow_redis_is_bounded_by_the_timeout(prefix: str) -> None:
    """A server that accepts connections and never answers: one short time-out, then skipped."""
    with socket.create_server(("127.0.0.1", 0), backlog=64) as listener:
        port = listener.getsockname()[1]
        # Down for longer than the test can take: every call below is within the skip window.
        shared = RedisTier(
            f"redis://127.0.0.1:{port}/0", bytes(32), prefix=prefix, timeout=0.2, down_seconds=300
        )
        cache = CredentialCache(shared=shared)
        started = time.monotonic()
        _, hit = cache.get_or_issue(KEY, creds)
        took = time.monotonic() - started
        assert not hit
        # It waited for the time-out, once: one connection, and the lock and the store that
        # followed were skipped without another (30 s: "not stuck"; it takes 0.2 s).
        assert 0.2 <= took < 30
        assert not shared.available
        assert connections(listener) == 1
        for n in range(20):
            assert cache.get_or_issue(cache_key(AWS, PRINCIPAL, (str(n),)), creds)[1] is False
        # Skipped, every one of them: Redis was not asked again.
        assert connections(listener) == 0


def test_tampered_value_is_a_miss(prefix: str) -> None:
    shared = tier(prefix)
    shared.put(KEY, creds(), time.time(), 60)
    raw = redis.Redis.from_url(REDIS_URL)
    name = shared._name("cred", KEY)
    blob = raw.get(name)
    assert isinstance(blob, bytes)
    raw.set(name, blob[:-1] + bytes([blob[-1] ^ 1]))
    assert shared.get(KEY) is None
    raw.close()


def _identity_fields() -> tuple[Principal, MappingSpec]:
    token = secrets.token_hex(4)
    principal = Principal(
        "https://issuer.example/" + token,
        "sub-" + token,
        "account-" + token,
        "project-" + token,
        "deployment-" + token,
        "production",
        2_000_000_000,
    )
    mapping = MappingSpec(
        "mapping-" + token,
        principal.account,
        principal.project,
        aws=AwsTarget(f"arn:aws:iam::123456789012:role/role-{token}"),
    )
    return principal, mapping


def test_names_are_keyed_hmacs_revealing_no_identity(prefix: str) -> None:
    principal, mapping = _identity_fields()
    key = cache_key(mapping, principal, ("scope-a",))
    tier(prefix, key=b"\x01" * 32).put(key, creds(), time.time(), 60)
    held = tier(prefix, key=b"\x01" * 32).acquire(key, 5)
    assert held is not None
    assert held is not UNAVAILABLE
    raw = redis.Redis.from_url(REDIS_URL)
    try:
        stored = {name: raw.get(name) for name in raw.scan_iter(prefix + "*")}
        assert len(stored) == 2
        fields = [*key[:8], "scope-a", mapping.aws.role_arn if mapping.aws else ""]
        # Not a plain SHA-256 of the identity, in the previous layout or any simple one.
        plain = {
            hashlib.sha256(
                json.dumps([*key[:8], sorted(key[8])], separators=(",", ":")).encode()
            ).hexdigest(),
            hashlib.sha256("".join(map(str, fields)).encode()).hexdigest(),
            hashlib.sha256("|".join(map(str, fields)).encode()).hexdigest(),
        }
        for name, value in stored.items():
            assert name.split(b":")[-1].decode() not in plain
            for field in fields:
                assert field.encode() not in name
                assert value is not None
                assert field.encode() not in value
    finally:
        held.release()
        raw.close()


def test_two_encryption_keys_give_different_names(prefix: str) -> None:
    one, two = tier(prefix, key=b"\x01" * 32), tier(prefix, key=b"\x02" * 32)
    assert one._name("cred", KEY) != two._name("cred", KEY)
    assert one._name("lock", KEY) != two._name("lock", KEY)
    assert one._name("cred", KEY) == tier(prefix, key=b"\x01" * 32)._name("cred", KEY)


def test_every_element_of_the_key_changes_the_name_whatever_its_position(prefix: str) -> None:
    shared = tier(prefix)
    base = shared._name("cred", KEY)
    for position in range(len(KEY)):
        changed = list(KEY)
        changed[position] = frozenset({"x"}) if position == 8 else str(KEY[position]) + "x"
        assert shared._name("cred", cast(CacheKey, tuple(changed))) != base, position
    # An element added later (say, a frozenset of audiences) is covered without new code.
    longer = cast(CacheKey, (*KEY, frozenset({"aud-1", "aud-2"})))
    assert shared._name("cred", longer) != base
    assert shared._name("cred", longer) == shared._name(
        "cred", cast(CacheKey, (*KEY, frozenset({"aud-2", "aud-1"})))
    )
    assert shared._name("cred", longer) != shared._name(
        "cred", cast(CacheKey, (*KEY, frozenset({"aud-1"})))
    )


def test_a_key_element_without_a_canonical_form_is_refused_not_ignored(prefix: str) -> None:
    shared = tier(prefix)
    with pytest.raises(TypeError, match="bytes"):
        shared._name("cred", cast(CacheKey, (*KEY, b"raw")))
