"""Credential cache: reuse upstream credentials per identity and target, one upstream call per key.

CONTRACT section 2 "Caching": credentials are reused for the same key while more than
``max(5 min, min(15 min, half their lifetime))`` remains, and concurrent requests for one key
within a process make one upstream call (single-flight). Errors are never cached: the next
request for the key tries upstream again.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from sts.identity.principal import Principal
from sts.mappings.spec import MappingSpec
from sts.providers.base import Credentials

MIN_REMAINING_SECONDS = 300
MAX_MARGIN_SECONDS = 900
DEFAULT_MAX_ENTRIES = 10_000

CacheKey = tuple[str, str, str, str, str, str, str, str, frozenset[str]]


def cache_key(mapping: MappingSpec, principal: Principal, scopes: tuple[str, ...]) -> CacheKey:
    """What separates credentials: the mapping as currently defined, the caller, the scopes."""
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
    )


def reuse_margin(lifetime: float) -> float:
    """Seconds before expiry after which a credential is no longer handed out."""
    return max(MIN_REMAINING_SECONDS, min(MAX_MARGIN_SECONDS, lifetime / 2))


@dataclass(frozen=True, slots=True)
class _Entry:
    credentials: Credentials
    # Past this instant the credential is not handed out any more.
    usable_until: float


class _Flight:
    """One upstream call in progress; waiters block on ``done``."""

    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Credentials | None = None
        self.error: BaseException | None = None


class CredentialCache:
    """In-process tier: bounded LRU of credentials with per-key single-flight."""

    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._entries: OrderedDict[CacheKey, _Entry] = OrderedDict()
        self._flights: dict[CacheKey, _Flight] = {}
        self._lock = threading.Lock()
        self._max_entries = max_entries
        self._clock = clock
        self.upstream_calls = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey) -> Credentials | None:
        """A reusable credential for ``key``, or None."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry.usable_until <= now:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry.credentials

    def put(self, key: CacheKey, credentials: Credentials, issued_at: float) -> None:
        lifetime = credentials.expires_at - issued_at
        usable_until = credentials.expires_at - reuse_margin(lifetime)
        if usable_until <= issued_at:
            return
        with self._lock:
            self._entries[key] = _Entry(credentials, usable_until)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def get_or_issue(
        self, key: CacheKey, issue: Callable[[], Credentials]
    ) -> tuple[Credentials, bool]:
        """The cached credential, or the result of one ``issue()`` shared by concurrent callers.

        Returns ``(credentials, hit)``; ``hit`` is False for the caller that made or awaited
        the upstream call.
        """
        cached = self.get(key)
        if cached is not None:
            return cached, True
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
            # Another flight may have finished between our miss and taking the lead.
            cached = self.get(key)
            if cached is not None:
                flight.result = cached
                return cached, True
            issued_at = self._clock()
            self.upstream_calls += 1
            credentials = issue()
            flight.result = credentials
            self.put(key, credentials, issued_at)
            return credentials, False
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                del self._flights[key]
            flight.done.set()
