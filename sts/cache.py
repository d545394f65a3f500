"""Credential cache: one upstream call per identity and target per credential lifetime.

CONTRACT section 2 "Caching": credentials are reused for the same key while more than
``max(5 min, min(15 min, half their lifetime))`` remains; concurrent requests for one key make
one upstream call (single-flight). Two tiers (DESIGN.md, cache table):

- an in-process LRU in every worker, always;
- with ``STS_REDIS_URL``, Redis shared by every process and replica: values are AES-256-GCM
  encrypted, and a ``SET NX PX`` lock makes the single-flight hold across processes. Redis down
  or slow means the in-process tier serves alone, with a warning and a metric; never an error.

A credential past ``refresh_fraction`` of its usable life is renewed in the background while the
old one is still served (refresh-ahead), so a steady caller never waits for the cloud. Errors are
never cached: the next request for the key asks upstream again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Final, Protocol

from sts.identity.principal import Principal
from sts.mappings.spec import MappingSpec
from sts.metrics import CREDENTIAL_REFRESHES, REDIS_FALLBACKS
from sts.providers.base import Credentials

log = logging.getLogger(__name__)

MIN_REMAINING_SECONDS = 300
MAX_MARGIN_SECONDS = 900
DEFAULT_MAX_ENTRIES = 10_000
# Renew in the background once this fraction of the usable window (issue .. expiry - margin) passed.
DEFAULT_REFRESH_FRACTION = 0.8
# After a failed background renewal, wait this long before trying again for that key.
REFRESH_RETRY_SECONDS = 10.0
REFRESH_THREADS = 4

CacheKey = tuple[str, str, str, str, str, str, str, str, frozenset[str], frozenset[str]]


def cache_key(mapping: MappingSpec, principal: Principal, scopes: tuple[str, ...]) -> CacheKey:
    """What separates credentials: the mapping as currently defined, the caller, the scopes,
    and the token's audiences (README, credential caching: a cloud that checks ``aud`` must
    never see credentials obtained with another one)."""
    return (
        mapping.name,
        mapping.fingerprint,
        principal.issuer,
        principal.sub,
        principal.account,
        principal.project,
        principal.deployment,
        principal.environment_type,
        frozenset(scopes),
        principal.audiences,
    )


def reuse_margin(lifetime: float) -> float:
    """Seconds before expiry after which a credential is no longer handed out."""
    return max(MIN_REMAINING_SECONDS, min(MAX_MARGIN_SECONDS, lifetime / 2))


def usable_until(credentials: Credentials, issued_at: float) -> float:
    return credentials.expires_at - reuse_margin(credentials.expires_at - issued_at)


@dataclass(frozen=True, slots=True)
class _Entry:
    credentials: Credentials
    issued_at: float
    usable_until: float
    refresh_at: float


class _Flight:
    """One upstream call in progress; waiters block on ``done``."""

    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Credentials | None = None
        self.error: BaseException | None = None


class SharedTier(Protocol):
    """A cache shared by processes, with a lock per key (implemented by :class:`RedisTier`)."""

    def get(self, key: CacheKey) -> tuple[Credentials, float] | None:
        """The stored credentials and their issue time, or None (also when unavailable)."""

    def put(self, key: CacheKey, credentials: Credentials, issued_at: float, ttl: float) -> None:
        """Store for ``ttl`` seconds; failures are swallowed (and counted)."""

    def acquire(self, key: CacheKey, ttl: float) -> str | None:
        """A lock token, None if another process holds the lock, or ``UNAVAILABLE``."""

    def release(self, key: CacheKey, token: str) -> None:
        """Release the lock if this token still holds it."""


UNAVAILABLE: Final = "\x00unavailable"


class CredentialCache:
    """The in-process tier, with per-key single-flight and refresh-ahead, over an optional
    :class:`SharedTier`."""

    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.time,
        *,
        shared: SharedTier | None = None,
        refresh_fraction: float = DEFAULT_REFRESH_FRACTION,
        lock_ttl: float = 25.0,
        poll_interval: float = 0.02,
    ) -> None:
        if not 0 < refresh_fraction <= 1:
            raise ValueError("refresh_fraction must be in (0, 1]")
        self._entries: OrderedDict[CacheKey, _Entry] = OrderedDict()
        self._flights: dict[CacheKey, _Flight] = {}
        self._retry_refresh_at: dict[CacheKey, float] = {}
        self._lock = threading.Lock()
        self._max_entries = max_entries
        self._clock = clock
        self._shared = shared
        self._refresh_fraction = refresh_fraction
        self._lock_ttl = lock_ttl
        self._poll = poll_interval
        self._executor: ThreadPoolExecutor | None = None
        self._executor_pid = 0
        self.upstream_calls = 0

    def __len__(self) -> int:
        return len(self._entries)

    # -- the local tier ------------------------------------------------------------------------

    def _entry(self, key: CacheKey, now: float) -> _Entry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry.usable_until <= now:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry

    def get(self, key: CacheKey) -> Credentials | None:
        """A reusable credential for ``key`` from this process, or None."""
        entry = self._entry(key, self._clock())
        return None if entry is None else entry.credentials

    def put(self, key: CacheKey, credentials: Credentials, issued_at: float) -> None:
        until = usable_until(credentials, issued_at)
        if until <= self._clock():
            return
        refresh_at = issued_at + self._refresh_fraction * (until - issued_at)
        with self._lock:
            self._entries[key] = _Entry(credentials, issued_at, until, refresh_at)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    # -- the exchange path ---------------------------------------------------------------------

    def get_or_issue(
        self, key: CacheKey, issue: Callable[[], Credentials]
    ) -> tuple[Credentials, bool]:
        """Reusable credentials for ``key``, or the result of one ``issue()`` shared by every
        concurrent caller (across processes with a shared tier).

        Returns ``(credentials, hit)``; ``hit`` is False when this request made or awaited an
        upstream call.
        """
        now = self._clock()
        entry = self._entry(key, now)
        if entry is not None:
            if now >= entry.refresh_at:
                self._refresh_soon(key, issue, entry, now)
            return entry.credentials, True

        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            assert flight.result is not None
            return flight.result, False
        try:
            credentials, hit = self._fill(key, issue, stale=None)
            flight.result = credentials
            return credentials, hit
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            self._land(key, flight)

    def _land(self, key: CacheKey, flight: _Flight) -> None:
        with self._lock:
            if self._flights.get(key) is flight:
                del self._flights[key]
        flight.done.set()

    def _fresh(self, found: tuple[Credentials, float] | None, stale: _Entry | None) -> bool:
        """Is what the shared tier holds usable, and newer than what we are replacing?"""
        if found is None:
            return False
        credentials, issued_at = found
        if usable_until(credentials, issued_at) <= self._clock():
            return False
        return stale is None or credentials.expires_at > stale.credentials.expires_at

    def _adopt(self, shared: SharedTier, key: CacheKey, stale: _Entry | None) -> Credentials | None:
        """Take what another process stored for ``key``, if it is usable and newer."""
        found = shared.get(key)
        if not self._fresh(found, stale):
            return None
        assert found is not None
        self.put(key, *found)
        return found[0]

    def _fill(
        self, key: CacheKey, issue: Callable[[], Credentials], stale: _Entry | None
    ) -> tuple[Credentials, bool]:
        shared = self._shared
        if shared is None:
            return self._call(key, issue), False
        adopted = self._adopt(shared, key, stale)
        if adopted is not None:
            return adopted, True

        token = shared.acquire(key, self._lock_ttl)
        deadline = time.monotonic() + self._lock_ttl
        poll = self._poll
        while token is None:
            # Another process is asking upstream: wait for its answer in the shared tier.
            if time.monotonic() >= deadline:
                log.warning("shared lock wait timed out; asking upstream from this process")
                return self._call(key, issue, shared=shared), False
            time.sleep(poll)
            poll = min(poll * 1.5, 0.2)
            adopted = self._adopt(shared, key, stale)
            if adopted is not None:
                return adopted, True
            token = shared.acquire(key, self._lock_ttl)
        if token == UNAVAILABLE:
            return self._call(key, issue), False
        try:
            # The previous holder may have stored its answer just before we took the lock.
            adopted = self._adopt(shared, key, stale)
            if adopted is not None:
                return adopted, True
            return self._call(key, issue, shared=shared), False
        finally:
            shared.release(key, token)

    def _call(
        self, key: CacheKey, issue: Callable[[], Credentials], shared: SharedTier | None = None
    ) -> Credentials:
        issued_at = self._clock()
        with self._lock:
            self.upstream_calls += 1
        credentials = issue()
        self.put(key, credentials, issued_at)
        if shared is not None:
            ttl = usable_until(credentials, issued_at) - self._clock()
            if ttl > 0:
                shared.put(key, credentials, issued_at, ttl)
        return credentials

    # -- refresh-ahead ---------------------------------------------------------------------------

    def _refresh_soon(
        self, key: CacheKey, issue: Callable[[], Credentials], entry: _Entry, now: float
    ) -> None:
        with self._lock:
            if key in self._flights or self._retry_refresh_at.get(key, 0.0) > now:
                return
            flight = self._flights[key] = _Flight()
            self._retry_refresh_at.pop(key, None)
        try:
            self._pool().submit(self._refresh, key, issue, entry, flight)
        except RuntimeError:  # interpreter shutting down
            self._land(key, flight)

    def _refresh(
        self, key: CacheKey, issue: Callable[[], Credentials], entry: _Entry, flight: _Flight
    ) -> None:
        try:
            flight.result, _ = self._fill(key, issue, stale=entry)
            CREDENTIAL_REFRESHES.labels("ok").inc()
        except BaseException as exc:
            flight.error = exc
            with self._lock:
                self._retry_refresh_at[key] = self._clock() + REFRESH_RETRY_SECONDS
                while len(self._retry_refresh_at) > self._max_entries:
                    self._retry_refresh_at.pop(next(iter(self._retry_refresh_at)))
            CREDENTIAL_REFRESHES.labels("failed").inc()
            log.warning("background credential refresh failed: %s", type(exc).__name__)
        finally:
            self._land(key, flight)

    def _pool(self) -> ThreadPoolExecutor:
        # Created lazily and per process: a pre-forking server must not inherit dead threads.
        pid = os.getpid()
        if self._executor is None or self._executor_pid != pid:
            self._executor = ThreadPoolExecutor(REFRESH_THREADS, thread_name_prefix="sts-refresh")
            self._executor_pid = pid
        return self._executor

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait for background refreshes to finish (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                flights = list(self._flights.values())
            if not flights:
                return
            for flight in flights:
                flight.done.wait(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


# -- Redis --------------------------------------------------------------------------------------

_RELEASE = """
if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) end
return 0
"""


class RedisTier:
    """The shared tier on Redis. Keys are hashes (they reveal no identity); values are
    AES-256-GCM ciphertexts bound to their key, useless without ``STS_CACHE_ENCRYPTION_KEY``.

    Every Redis failure or time-out marks Redis down for ``down_seconds``; meanwhile the calls
    answer "absent" or :data:`UNAVAILABLE` at once, so a dead or slow Redis costs the caller at
    most one short time-out per ``down_seconds`` per process.
    """

    def __init__(
        self,
        url: str,
        encryption_key: bytes,
        *,
        prefix: str = "zuplo-sts:v1:",
        timeout: float = 0.25,
        down_seconds: float = 5.0,
    ) -> None:
        import redis
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        if len(encryption_key) != 32:
            raise ValueError("the cache encryption key must be 32 bytes")
        self._aead = AESGCM(encryption_key)
        self._prefix = prefix
        self._down_seconds = down_seconds
        self._down_until = 0.0
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._release = self._client.register_script(_RELEASE)

    def _name(self, kind: str, key: CacheKey) -> str:
        material = json.dumps([*key[:8], sorted(key[8])], separators=(",", ":"))
        return self._prefix + kind + ":" + hashlib.sha256(material.encode()).hexdigest()

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, operation: str, exc: BaseException) -> None:
        if self.available:
            log.warning(
                "redis unavailable, serving from the in-process cache",
                extra={"operation": operation, "error": type(exc).__name__},
            )
        self._down_until = time.monotonic() + self._down_seconds
        REDIS_FALLBACKS.labels(operation).inc()

    def _skip(self, operation: str) -> bool:
        if self.available:
            return False
        REDIS_FALLBACKS.labels(operation).inc()
        return True

    def get(self, key: CacheKey) -> tuple[Credentials, float] | None:
        if self._skip("get"):
            return None
        name = self._name("cred", key)
        try:
            blob = self._client.get(name)
        except self._errors as exc:
            self._failed("get", exc)
            return None
        if not isinstance(blob, bytes) or len(blob) < 13:
            return None
        try:
            plain = self._aead.decrypt(blob[:12], blob[12:], name.encode())
            doc: dict[str, Any] = json.loads(plain)
            issued_at = float(doc.pop("issued_at"))
            return Credentials(**doc), issued_at
        except Exception as exc:  # tampered, another key, or another format: a miss
            log.warning("undecryptable shared cache entry ignored: %s", type(exc).__name__)
            return None

    def put(self, key: CacheKey, credentials: Credentials, issued_at: float, ttl: float) -> None:
        if self._skip("put"):
            return
        name = self._name("cred", key)
        plain = json.dumps({**asdict(credentials), "issued_at": issued_at}).encode()
        nonce = secrets.token_bytes(12)
        blob = nonce + self._aead.encrypt(nonce, plain, name.encode())
        try:
            self._client.set(name, blob, px=max(1, int(ttl * 1000)))
        except self._errors as exc:
            self._failed("put", exc)

    def acquire(self, key: CacheKey, ttl: float) -> str | None:
        if self._skip("lock"):
            return UNAVAILABLE
        token = secrets.token_hex(16)
        try:
            taken = self._client.set(self._name("lock", key), token, nx=True, px=int(ttl * 1000))
        except self._errors as exc:
            self._failed("lock", exc)
            return UNAVAILABLE
        return token if taken else None

    def release(self, key: CacheKey, token: str) -> None:
        if token == UNAVAILABLE or self._skip("unlock"):
            return
        try:
            self._release(keys=[self._name("lock", key)], args=[token])
        except self._errors as exc:
            self._failed("unlock", exc)

    def ping(self) -> bool:
        try:
            return bool(self._client.ping())
        except self._errors:
            return False

    def close(self) -> None:
        self._client.close()
