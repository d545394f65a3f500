"""Builds the long-lived objects one worker process needs, from validated settings."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

from sts.audit import AuditRecorder
from sts.broker.service import Broker
from sts.cache import CacheKey, CredentialCache, RedisTier
from sts.config import Settings
from sts.db import Database, describe_failure
from sts.exchange import Exchanger
from sts.forking import renew_after_fork
from sts.identity.jwks import JWKSRegistry
from sts.identity.verifier import TokenVerifier
from sts.mappings.live import LiveMappings
from sts.metrics import CACHE_ENTRIES, MAPPING_REVISION, MAPPINGS_LOADED, SIGNING_KEY_LOADED
from sts.providers.aws import AwsProvider
from sts.providers.azure import AzureProvider
from sts.providers.base import CredentialProvider, Credentials
from sts.providers.gcp import GcpProvider
from sts.revocations import RevocationIndex

log = logging.getLogger(__name__)

#: Seconds ``/readyz`` waits for the database to answer ``SELECT 1`` (a stalled database must
#: not hold the probe: Kubernetes' own probe time-out defaults to 1 s, so it is never the bound).
READY_PING_TIMEOUT_SECONDS = 2.0


class BoundedProbe:
    """Runs ``probe`` on a daemon thread and waits for it at most ``timeout`` seconds.

    At most one run is in flight per process: while a run hangs, later calls wait for that same
    run (with their own bound) instead of starting more threads that would hang too.
    """

    def __init__(self, probe: Callable[[], None], timeout: float) -> None:
        self._probe = probe
        self._timeout = timeout
        self._lock = threading.Lock()
        self._running: Future[None] | None = None
        renew_after_fork(self)

    def _after_fork(self) -> None:
        # The parent's probe thread (and its future) are not this process's.
        self._lock = threading.Lock()
        self._running = None

    def __call__(self) -> None:
        """Return if the probe succeeded in time; raise its error, or :class:`TimeoutError`."""
        with self._lock:
            running = self._running
            if running is None or running.done():
                running = self._running = Future()
                threading.Thread(
                    target=self._run, args=(running,), name="sts-probe", daemon=True
                ).start()
        try:
            running.result(self._timeout)
        except FutureTimeout:
            raise TimeoutError(f"no answer within {self._timeout:g} s") from None

    def _run(self, running: Future[None]) -> None:
        try:
            self._probe()
        except BaseException as exc:
            running.set_exception(exc)
        else:
            running.set_result(None)


@dataclass(eq=False)  # held in a weak set (sts.forking): hashed by identity
class Services:
    settings: Settings
    database: Database
    registry: JWKSRegistry
    verifier: TokenVerifier
    mappings: LiveMappings
    cache: CredentialCache
    exchanger: Exchanger
    broker: Broker | None = None
    _started: bool = False
    _start_lock: threading.Lock = field(default_factory=threading.Lock)
    _ping: BoundedProbe | None = None

    def __post_init__(self) -> None:
        renew_after_fork(self)

    def _after_fork(self) -> None:
        # A forked worker has none of its parent's refreshers: it starts its own. A lock held
        # by another thread when the process forked stays held in the child: a fresh one.
        self._started = False
        self._start_lock = threading.Lock()

    @classmethod
    def build(cls, settings: Settings, *, registry: JWKSRegistry | None = None) -> Services:
        """Wire the services for ``settings``.

        ``registry`` replaces the default key-set registry: tests pass one with short TTLs or
        timeouts; production never does.
        """
        database = Database(settings.database_url)
        registry = registry if registry is not None else JWKSRegistry(settings)
        verifier = TokenVerifier(settings, registry)
        mappings = LiveMappings(database, broker_mode=settings.broker_issuer is not None)
        shared = None
        if settings.redis_url is not None and settings.cache_encryption_key is not None:
            shared = RedisTier(settings.redis_url, settings.cache_encryption_key)
        cache = CredentialCache(shared=shared)
        providers: dict[str, CredentialProvider] = {
            "aws": AwsProvider(settings),
            "gcp": GcpProvider(settings),
            "azure": AzureProvider(settings),
        }
        broker = Broker(settings, database) if settings.broker_issuer is not None else None
        exchanger = Exchanger(
            verifier,
            mappings,
            cache,
            providers,
            AuditRecorder(database),
            minter=broker.minter if broker is not None else None,
        )
        services = cls(settings, database, registry, verifier, mappings, cache, exchanger, broker)
        mappings.on_tick = services.export_gauges
        mappings.on_revocations = services.drop_revoked
        cache.refuse_shared = services.guarded
        return services

    def guarded(self, key: CacheKey, credentials: Credentials, issued_at: float) -> bool:  # noqa: ARG002
        """Do credentials cached under ``key`` fall under a revocation's guard (its identity,
        or a printed AWS deny)? Then they are never served again."""
        index = self.mappings.current_or_none()
        mapping = None if index is None else index.get(key[0])
        if mapping is None or mapping.fingerprint != key[1]:
            return False  # a mapping that is gone or changed: its key is never asked again
        identity = {
            "account": key[4],
            "project": key[5],
            "deployment": key[6],
            "environment_type": key[7],
            "sub": key[3],
            "mapping": key[0],
        }
        return self.mappings.revoked.denies(mapping, identity, issued_at) is not None

    def drop_revoked(self, revoked: RevocationIndex) -> None:  # noqa: ARG002
        """On the refresh thread, when the revocations change: forget every cached credential
        they guard (the shared tier's are refused as they are read: ``guarded``)."""
        dropped = self.cache.drop(self.guarded)
        if dropped:
            log.info("revoked credentials dropped", extra={"dropped": dropped})

    def export_gauges(self) -> None:
        """Publish cache sizes, the index state and whether a broker key signs (runs on the
        mapping refresh thread)."""
        CACHE_ENTRIES.labels("credentials").set(len(self.cache))
        CACHE_ENTRIES.labels("verified_tokens").set(self.verifier.cached_tokens)
        if self.broker is not None:
            SIGNING_KEY_LOADED.labels(self.broker.issuer).set(1 if self.broker.ready else 0)
        if self.mappings.loaded:
            index = self.mappings.current()
            MAPPINGS_LOADED.set(len(index))
            MAPPING_REVISION.set(index.revision)

    def start(self) -> None:
        """Start the background refreshers in this process; cheap and idempotent per process.

        A pre-forking server (one that builds the app, then forks its workers) leaves each
        worker without the parent's threads: a call in a forked process starts them again
        there. The API layer calls this on every request, so no server has to know.
        """
        if self._started:
            return
        with self._start_lock:
            if self._started:
                return
            self._started = True
        self.registry.start()
        self.mappings.start()
        if self.broker is not None:
            self.broker.start()

    def ready(self) -> tuple[bool, str | None]:
        """Readiness (README "Operating it"): the database answers within
        :data:`READY_PING_TIMEOUT_SECONDS` and every issuer has keys."""
        if self._ping is None:
            self._ping = BoundedProbe(self.database.ping, READY_PING_TIMEOUT_SECONDS)
        try:
            self._ping()
        except Exception as exc:
            return False, describe_failure(exc)
        if not self.mappings.loaded:
            return False, self.mappings.last_error or "mapping index not loaded yet"
        if self.broker is not None and not self.broker.ready:
            return False, self.broker.last_error or "signing key not loaded yet"
        return self.registry.ready()

    def close(self) -> None:
        if self.broker is not None:
            self.broker.close()
        self.cache.close()
        self.registry.stop()
        self.mappings.stop()
        self.database.dispose()
