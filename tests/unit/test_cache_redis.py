"""The shared tier against the real Redis: encryption at rest, cross-instance single-flight,
and falling back to the in-process tier when Redis is down or slow."""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from sts.cache import UNAVAILABLE, CredentialCache, RedisTier, cache_key
from sts.identity.principal import Principal
from sts.mappings.spec import AwsTarget, MappingSpec
from sts.metrics import REDIS_FALLBACKS
from sts.providers.base import Credentials

REDIS_URL = "redis://127.0.0.1:6379/0"
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
    return RedisTier(url, key or bytes(32), prefix=prefix)


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


def test_lock_is_exclusive_and_released_only_by_its_holder(prefix: str) -> None:
    a, b = tier(prefix), tier(prefix)
    token = a.acquire(KEY, 5)
    assert token not in (None, UNAVAILABLE)
    assert b.acquire(KEY, 5) is None
    b.release(KEY, "not-the-token")
    assert b.acquire(KEY, 5) is None
    assert token is not None
    a.release(KEY, token)
    assert b.acquire(KEY, 5) not in (None, UNAVAILABLE)


def test_single_flight_across_instances(prefix: str) -> None:
    """Eight caches (as in eight processes), one key, concurrent misses: one upstream call."""
    calls: list[int] = []
    lock = threading.Lock()

    def issue() -> Credentials:
        with lock:
            calls.append(1)
        time.sleep(0.3)
        return creds()

    caches = [CredentialCache(shared=tier(prefix)) for _ in range(8)]
    results: list[tuple[Credentials, bool]] = []
    barrier = threading.Barrier(len(caches))

    def run(cache: CredentialCache) -> None:
        barrier.wait()
        results.append(cache.get_or_issue(KEY, issue))

    threads = [threading.Thread(target=run, args=(c,)) for c in caches]
    for thread in threads:
        thread.start()
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
    assert time.monotonic() - started < 1.5
    assert REDIS_FALLBACKS.labels("get")._value.get() > before


def test_slow_redis_is_bounded_by_the_timeout(prefix: str) -> None:
    """A server that accepts connections and never answers: one short time-out, then skipped."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    try:
        shared = RedisTier(f"redis://127.0.0.1:{port}/0", bytes(32), prefix=prefix, timeout=0.2)
        cache = CredentialCache(shared=shared)
        started = time.monotonic()
        _, hit = cache.get_or_issue(KEY, creds)
        assert not hit
        assert time.monotonic() - started < 1.0
        assert not shared.available
        started = time.monotonic()
        for n in range(20):
            cache.get_or_issue(cache_key(AWS, PRINCIPAL, (str(n),)), creds)
        assert time.monotonic() - started < 0.5
    finally:
        listener.close()


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
