"""Credential cache: one upstream call per identity and target per credential lifetime.

README "Run it" and "Operating it": credentials are reused for the same key while more than
``max(5 min, min(15 min, half their lifetime))`` remains; concurrent requests for one key make
one upstream call (single-flight). Two tiers:

- an in-process LRU in every worker, always;
- with ``STS_REDIS_URL``, Redis shared by every process and replica: values are AES-256-GCM
  encrypted, names are HMAC-SHA-256 digests of the whole key, and a ``redis.lock.Lock`` makes the
  single-flight hold across processes. Redis down or slow means the in-process tier serves
  alone, with a warning and a metric; never an error.

A credential past ``refresh_fraction`` of its usable life is renewed in the background while the
old one is still served (refresh-ahead), so a steady caller never waits for the cloud. Errors are
never cached: the next request for the key asks upstream again.

How long anything waits (one budget, every part bounded):

- :data:`SHARED_LOCK_WAIT_SECONDS` (5 s): a leader whose key is locked by another process polls
  Redis for that process's answer this long, then asks upstream itself. Each Redis call is also
  bounded by :class:`RedisTier`'s socket time-out (0.25 s).
- The upstream call is bounded by its provider (AWS: 3 attempts of at most 2 s connect + 5 s
  read, with botocore's standard backoff of at most 1 s then 2 s, so 24 s; GCP: two calls of at
  most 7 s each).
- The audit INSERT is bounded by :data:`sts.audit.AUDIT_WRITE_TIMEOUT_SECONDS` (2 s).
- :data:`WAITER_TIMEOUT_SECONDS` (35 s: the three above, 31 s, and the Redis calls, which stop
  after their first time-out): a request waiting for another request's upstream call in this
  process gives up after this and answers 503 ``temporarily_unavailable`` with ``Retry-After``;
  the leader carries on and caches its answer.
- :data:`LOCK_TTL_SECONDS` (30 s, more than the 26 s of one upstream call and its audit write):
  the Redis lock expires after this even if its holder died, so a crashed replica holds no key
  for longer.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from sts.errors import InvalidTarget, OAuthError, TemporarilyUnavailable
from sts.forking import renew_after_fork
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
#: Seconds a request waits for another request's upstream call for the same key (module docstring).
WAITER_TIMEOUT_SECONDS = 35.0
#: Seconds a leader waits for another process holding the key's Redis lock.
SHARED_LOCK_WAIT_SECONDS = 5.0
#: Seconds after which a Redis lock expires by itself (its holder may have died).
LOCK_TTL_SECONDS = 30.0
#: ``Retry-After`` of a waiter that gave up: the leader's answer is usually cached by then.
WAITER_RETRY_AFTER_SECONDS = 5
#: A cloud's refusal of a key is answered again from memory this long (docs/reference.md
#: section 10): a broken mapping cannot spend the cloud's quota or grow the audit table.
REFUSAL_MEMORY_SECONDS = 10.0

if TYPE_CHECKING:
    from redis.lock import Lock

CacheKey = tuple[str, str, str, str, str, str, str, str, frozenset[str], frozenset[str], str | None]


def cache_key(
    mapping: MappingSpec,
    principal: Principal,
    scopes: tuple[str, ...],
    id_token_audience: str | None = None,
) -> CacheKey:
    """What separates credentials: the mapping as currently defined, the caller, the scopes,
    the token's audiences (docs/reference.md section 2, caching: a cloud that checks ``aud``
    must never see credentials obtained with another one), and for a GCP ID token the
    audience it is for (section 14; None: an access token)."""
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
        id_token_audience,
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


class Flight:
    """One upstream call in progress. A thread waits on ``done``; an event loop registers a
    callback (:meth:`on_done`) and holds no thread while it waits."""

    __slots__ = ("_callbacks", "_lock", "done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Credentials | None = None
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    def on_done(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the landing thread, or at once if landed already)."""
        with self._lock:
            if not self.done.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def land(self) -> None:
        with self._lock:
            self.done.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def outcome(self) -> Credentials:
        """The leader's credentials, or its error raised."""
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class SharedLock(Protocol):
    """A held cross-process lock (see :meth:`SharedTier.acquire`)."""

    def release(self) -> None:
        """Release it if this holder still owns it; failures are swallowed (and counted)."""


class _Unavailable:
    """The lock answer when the shared tier is down: nothing is held, nothing to release."""

    def release(self) -> None:
        return None


class SharedTier(Protocol):
    """A cache shared by processes, with a lock per key (implemented by :class:`RedisTier`)."""

    def get(self, key: CacheKey) -> tuple[Credentials, float] | None:
        """The stored credentials and their issue time, or None (also when unavailable)."""

    def put(self, key: CacheKey, credentials: Credentials, issued_at: float, ttl: float) -> None:
        """Store for ``ttl`` seconds; failures are swallowed (and counted)."""

    def acquire(self, key: CacheKey, ttl: float) -> SharedLock | None:
        """The held lock, None if another process holds it, or :data:`UNAVAILABLE`."""


UNAVAILABLE: Final[SharedLock] = _Unavailable()


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
        lock_ttl: float = LOCK_TTL_SECONDS,
        lock_wait: float = SHARED_LOCK_WAIT_SECONDS,
        wait_timeout: float = WAITER_TIMEOUT_SECONDS,
        poll_interval: float = 0.02,
    ) -> None:
        if not 0 < refresh_fraction <= 1:
            raise ValueError("refresh_fraction must be in (0, 1]")
        self._entries: OrderedDict[CacheKey, _Entry] = OrderedDict()
        # Cloud refusals by key: (forget at, the error), oldest first.
        self._refusals: OrderedDict[CacheKey, tuple[float, OAuthError]] = OrderedDict()
        self._flights: dict[CacheKey, Flight] = {}
        self._retry_refresh_at: dict[CacheKey, float] = {}
        self._lock = threading.Lock()
        self._max_entries = max_entries
        self._clock = clock
        self._shared = shared
        self._refresh_fraction = refresh_fraction
        self._lock_ttl = lock_ttl
        self._lock_wait = lock_wait
        self._wait_timeout = wait_timeout
        self._poll = poll_interval
        self._executor: ThreadPoolExecutor | None = None
        self.upstream_calls = 0
        self._waiting = 0
        # Credentials that must never be served again (a revocation's guard), asked of what
        # the shared tier holds before it is adopted: (key, credentials, issued_at) -> bool.
        self.refuse_shared: Callable[[CacheKey, Credentials, float], bool] | None = None
        renew_after_fork(self)

    def _after_fork(self) -> None:
        # A lock held by a parent thread at fork time would stay held forever in the child, and
        # the parent's flights have no thread here to land them: waiters would only time out.
        self._lock = threading.Lock()
        self._flights.clear()
        self._waiting = 0
        self._executor = None

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def waiting(self) -> int:
        """Requests now waiting for another request's upstream call in this process."""
        return self._waiting

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

    def drop(self, doomed: Callable[[CacheKey, Credentials, float], bool]) -> int:
        """Forget every entry for which ``doomed(key, credentials, issued_at)``; how many."""
        with self._lock:
            entries = list(self._entries.items())
        gone = [key for key, entry in entries if doomed(key, entry.credentials, entry.issued_at)]
        with self._lock:
            for key in gone:
                self._entries.pop(key, None)
        return len(gone)

    # -- the exchange path ---------------------------------------------------------------------

    def lookup(self, key: CacheKey, issue: Callable[[], Credentials]) -> Credentials | None:
        """Reusable credentials for ``key`` from this process, or None; never waits (safe on an
        event loop). Credentials due for renewal are still handed out while ``issue`` renews
        them in the background. A remembered cloud refusal of ``key`` is raised."""
        now = self._clock()
        entry = self._entry(key, now)
        if entry is not None:
            if now >= entry.refresh_at:
                self._refresh_soon(key, issue, entry, now)
            return entry.credentials
        refused = self._refused(key, now)
        if refused is not None:
            raise refused
        return None

    def join(self, key: CacheKey) -> tuple[Flight, bool]:
        """The flight for ``key``, and whether the caller leads it (then it must call
        :meth:`lead`, on a thread: it may wait on Redis and the cloud)."""
        with self._lock:
            flight = self._flights.get(key)
            if flight is not None:
                return flight, False
            flight = self._flights[key] = Flight()
            return flight, True

    def lead(
        self, key: CacheKey, issue: Callable[[], Credentials], flight: Flight
    ) -> tuple[Credentials, bool]:
        """The leader's part: the shared tier, else one ``issue()``; lands ``flight`` with the
        result for every follower. ``(credentials, hit)``."""
        try:
            # A flight that landed between the caller's lookup and its join left an entry.
            entry = self._entry(key, self._clock())
            if entry is not None:
                credentials, hit = entry.credentials, True
            else:
                credentials, hit = self._fill(key, issue, stale=None)
            flight.result = credentials
            return credentials, hit
        except BaseException as exc:
            flight.error = exc
            if isinstance(exc, InvalidTarget) and exc.provider is not None:
                self._remember_refusal(key, exc)
            raise
        finally:
            self._land(key, flight)

    def follow(self, flight: Flight) -> Credentials:
        """A follower's wait on a thread (a WSGI server's): at most the waiter time-out."""
        with self._lock:
            self._waiting += 1
        try:
            landed = flight.done.wait(self._wait_timeout)
        finally:
            with self._lock:
                self._waiting -= 1
        if not landed:
            raise self._gave_up()
        return flight.outcome()

    async def follow_async(self, flight: Flight) -> Credentials:
        """A follower's wait on an event loop: no thread is held, at most the waiter time-out."""
        loop = asyncio.get_running_loop()
        landed: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not landed.done():
                landed.set_result(None)

        def landed_elsewhere() -> None:  # on the leader's thread
            loop.call_soon_threadsafe(wake)

        flight.on_done(landed_elsewhere)
        with self._lock:
            self._waiting += 1
        try:
            await asyncio.wait_for(landed, self._wait_timeout)
        except TimeoutError:
            raise self._gave_up() from None
        finally:
            with self._lock:
                self._waiting -= 1
        return flight.outcome()

    def _gave_up(self) -> TemporarilyUnavailable:
        log.warning(
            "gave up waiting for another request's upstream call",
            extra={"waited_seconds": self._wait_timeout},
        )
        return TemporarilyUnavailable(
            retry_after=WAITER_RETRY_AFTER_SECONDS,
            cause=f"single-flight wait exceeded {self._wait_timeout:g} s",
        )

    def get_or_issue(
        self, key: CacheKey, issue: Callable[[], Credentials]
    ) -> tuple[Credentials, bool]:
        """Reusable credentials for ``key``, or the result of one ``issue()`` shared by every
        concurrent caller (across processes with a shared tier): :meth:`lookup`, then
        :meth:`join` and :meth:`lead` or :meth:`follow`, on the calling thread.

        Returns ``(credentials, hit)``; ``hit`` is False when this request made or awaited an
        upstream call.
        """
        credentials = self.lookup(key, issue)
        if credentials is not None:
            return credentials, True
        flight, leader = self.join(key)
        if leader:
            return self.lead(key, issue, flight)
        return self.follow(flight), False

    def _refused(self, key: CacheKey, now: float) -> OAuthError | None:
        """A copy of the cloud's remembered refusal of ``key``, if it is recent enough."""
        with self._lock:
            found = self._refusals.get(key)
            if found is None:
                return None
            if found[0] <= now:
                del self._refusals[key]
                return None
        return copy.copy(found[1])

    def _remember_refusal(self, key: CacheKey, error: OAuthError) -> None:
        """Remember a provider's 400 (reference section 2's provider-refusal row) for
        :data:`REFUSAL_MEMORY_SECONDS`. Never a 503, never a refusal the service made itself
        (those cost no cloud call), never "token expired" (a new token may well succeed)."""
        forget_at = self._clock() + REFUSAL_MEMORY_SECONDS
        with self._lock:
            self._refusals[key] = (forget_at, error.with_traceback(None))
            self._refusals.move_to_end(key)
            while len(self._refusals) > self._max_entries:
                self._refusals.popitem(last=False)

    def _land(self, key: CacheKey, flight: Flight) -> None:
        with self._lock:
            if self._flights.get(key) is flight:
                del self._flights[key]
        flight.land()

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
        refuse = self.refuse_shared
        if refuse is not None and refuse(key, *found):
            return None  # issued before a revocation that guards it: never served again
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

        held = shared.acquire(key, self._lock_ttl)
        deadline = time.monotonic() + self._lock_wait
        poll = self._poll
        while held is None:
            # Another process is asking upstream: wait for its answer in the shared tier.
            if time.monotonic() >= deadline:
                log.warning("shared lock wait timed out; asking upstream from this process")
                return self._call(key, issue, shared=shared), False
            time.sleep(poll)
            poll = min(poll * 1.5, 0.2)
            adopted = self._adopt(shared, key, stale)
            if adopted is not None:
                return adopted, True
            held = shared.acquire(key, self._lock_ttl)
        if held is UNAVAILABLE:
            return self._call(key, issue), False
        try:
            # The previous holder may have stored its answer just before we took the lock.
            adopted = self._adopt(shared, key, stale)
            if adopted is not None:
                return adopted, True
            return self._call(key, issue, shared=shared), False
        finally:
            held.release()

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
            flight = self._flights[key] = Flight()
            self._retry_refresh_at.pop(key, None)
        try:
            self._pool().submit(self._refresh, key, issue, entry, flight)
        except RuntimeError:  # interpreter shutting down
            self._land(key, flight)

    def _refresh(
        self, key: CacheKey, issue: Callable[[], Credentials], entry: _Entry, flight: Flight
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
        # Created lazily: a pre-forking server's worker makes its own (_after_fork forgets the
        # parent's, whose threads do not exist in the child).
        if self._executor is None:
            self._executor = ThreadPoolExecutor(REFRESH_THREADS, thread_name_prefix="sts-refresh")
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

#: HKDF ``info`` (RFC 5869 section 2.3) of the sub-key that names Redis entries: the AEAD key
#: itself only encrypts, so no key serves two purposes.
_NAMES_INFO: Final = b"zuplo-sts cache names v1"


def _canonical(value: object) -> object:
    """``value`` as JSON-ready data that is equal exactly when the values are equal.

    Walks the whole key, whatever its length, so an element added to :func:`cache_key` is part
    of the name without changing this function; sets are sorted, as their order means nothing.
    """
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (tuple, list)):
        return [_canonical(item) for item in value]
    if isinstance(value, (frozenset, set)):
        items = [_canonical(item) for item in value]
        return {"set": sorted(items, key=lambda item: json.dumps(item, sort_keys=True))}
    raise TypeError(f"cache key element of type {type(value).__name__} has no canonical form")


def key_material(key: CacheKey) -> bytes:
    """The canonical serialisation of a whole cache key (what :class:`RedisTier` names)."""
    return json.dumps(_canonical(key), separators=(",", ":"), sort_keys=True).encode()


class _RedisLock:
    """A held ``redis.lock.Lock``; releasing checks the token (redis-py's Lua script)."""

    __slots__ = ("_lock", "_tier")

    def __init__(self, tier: RedisTier, lock: Lock) -> None:
        self._tier = tier
        self._lock = lock

    def release(self) -> None:
        self._tier._release(self._lock)


class RedisTier:
    """The shared tier on Redis. Names are HMAC-SHA-256 digests of the whole key under a sub-key
    of ``STS_CACHE_ENCRYPTION_KEY`` (HKDF, RFC 5869), so nobody without that key can test a
    guessed identity against them; values are AES-256-GCM ciphertexts bound to their name,
    useless without the key.

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
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF
        from redis.backoff import NoBackoff
        from redis.exceptions import LockNotOwnedError
        from redis.retry import Retry

        if len(encryption_key) != 32:
            raise ValueError("the cache encryption key must be 32 bytes")
        self._aead = AESGCM(encryption_key)
        self._name_key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=_NAMES_INFO
        ).derive(encryption_key)
        self._prefix = prefix
        self._down_seconds = down_seconds
        self._down_until = 0.0
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._not_owned: type[BaseException] = LockNotOwnedError
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )

    def _name(self, kind: str, key: CacheKey) -> str:
        digest = hmac.new(
            self._name_key, kind.encode() + b"\x00" + key_material(key), hashlib.sha256
        ).hexdigest()
        return self._prefix + kind + ":" + digest

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

    def acquire(self, key: CacheKey, ttl: float) -> SharedLock | None:
        if self._skip("lock"):
            return UNAVAILABLE
        # Not thread-local: the handle, not the thread, owns the token.
        lock = self._client.lock(
            self._name("lock", key), timeout=ttl, blocking=False, thread_local=False
        )
        try:
            taken = lock.acquire()
        except self._errors as exc:
            self._failed("lock", exc)
            return UNAVAILABLE
        return _RedisLock(self, lock) if taken else None

    def _release(self, lock: Lock) -> None:
        if self._skip("unlock"):
            return
        try:
            lock.release()
        except self._not_owned:
            # The lock expired and maybe another process holds it now: theirs stays.
            log.info("shared cache lock expired before its release")
        except self._errors as exc:
            self._failed("unlock", exc)

    def close(self) -> None:
        self._client.close()
