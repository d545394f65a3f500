"""Builds the long-lived objects one worker process needs, from validated settings."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from sts.audit import AuditRecorder
from sts.cache import CredentialCache, RedisTier
from sts.config import Settings
from sts.db import Database
from sts.exchange import Exchanger
from sts.identity.jwks import JWKSRegistry
from sts.identity.verifier import TokenVerifier
from sts.mappings.live import LiveMappings
from sts.metrics import CACHE_ENTRIES, MAPPING_REVISION, MAPPINGS_LOADED
from sts.providers.aws import AwsProvider
from sts.providers.base import CredentialProvider
from sts.providers.gcp import GcpProvider

# A lock held by another thread when the process forked stays held in the child: every
# child gets a fresh one.
_start_lock = threading.Lock()


def _new_start_lock() -> None:
    global _start_lock  # noqa: PLW0603 - replaced in a forked child only
    _start_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_start_lock)


@dataclass
class Services:
    settings: Settings
    database: Database
    registry: JWKSRegistry
    verifier: TokenVerifier
    mappings: LiveMappings
    cache: CredentialCache
    exchanger: Exchanger
    _started_pid: int = 0

    @classmethod
    def build(cls, settings: Settings, *, registry: JWKSRegistry | None = None) -> Services:
        """Wire the services for ``settings``.

        ``registry`` replaces the default key-set registry: tests pass one with short TTLs or
        timeouts; production never does.
        """
        database = Database(settings.database_url)
        registry = registry if registry is not None else JWKSRegistry(settings)
        verifier = TokenVerifier(settings, registry)
        mappings = LiveMappings(database)
        shared = None
        if settings.redis_url is not None and settings.cache_encryption_key is not None:
            shared = RedisTier(settings.redis_url, settings.cache_encryption_key)
        cache = CredentialCache(shared=shared)
        providers: dict[str, CredentialProvider] = {
            "aws": AwsProvider(settings),
            "gcp": GcpProvider(settings),
        }
        exchanger = Exchanger(verifier, mappings, cache, providers, AuditRecorder(database))
        services = cls(settings, database, registry, verifier, mappings, cache, exchanger)
        mappings.on_tick = services.export_gauges
        return services

    def export_gauges(self) -> None:
        """Publish cache sizes and the index state (runs on the mapping refresh thread)."""
        CACHE_ENTRIES.labels("credentials").set(len(self.cache))
        CACHE_ENTRIES.labels("verified_tokens").set(self.verifier.cached_tokens)
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
        pid = os.getpid()
        if self._started_pid == pid:
            return
        with _start_lock:
            if self._started_pid == pid:
                return
            self._started_pid = pid
        self.registry.start()
        self.mappings.start()

    def ready(self) -> tuple[bool, str | None]:
        """Readiness (CONTRACT section 7): the database answers and every issuer has keys."""
        try:
            self.database.ping()
        except Exception as exc:
            return False, f"database unavailable: {type(exc).__name__}"
        if not self.mappings.loaded:
            return False, "mapping index not loaded yet"
        return self.registry.ready()

    def close(self) -> None:
        self.cache.close()
        self.registry.stop()
        self.mappings.stop()
        self.database.dispose()
