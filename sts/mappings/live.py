"""The mapping index the service selects from, kept in step with the database.

The index is rebuilt only when the stored revision changes; a daemon thread checks the revision
every few seconds, so no request pays for a database round trip. When the database is
unreachable the last index keeps serving (a warning is logged once per outage).

Only that thread ever reads the database: :meth:`LiveMappings.current` is an attribute read.
Before the first load it waits at most :data:`FIRST_LOAD_WAIT_SECONDS` for the thread's first
attempt (a worker that has just started, while another worker of the pod already answers
``/readyz``), then answers 503 "mappings unavailable": never longer, however long a hung
database holds that attempt (README "Operating it"). The thread is per process: a worker forked
after :meth:`LiveMappings.start` starts its own on its next call, as the JWKS registry does.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sts import revocations
from sts.db import Database, describe_failure
from sts.errors import TemporarilyUnavailable
from sts.forking import renew_after_fork
from sts.mappings import store
from sts.mappings.index import MappingIndex
from sts.revocations import RevocationIndex

log = logging.getLogger(__name__)

REFRESH_INTERVAL_SECONDS = 2.0
#: Seconds a request waits for the refresh thread's first attempt before answering 503.
FIRST_LOAD_WAIT_SECONDS = 1.0


class LiveMappings:
    """Holds the current :class:`MappingIndex`; ``current()`` is a plain attribute read."""

    def __init__(
        self,
        database: Database,
        interval: float = REFRESH_INTERVAL_SECONDS,
        on_tick: Callable[[], None] | None = None,
        *,
        broker_mode: bool = False,
    ) -> None:
        self._database = database
        # The service's STS_BROKER_ISSUER decides what an unset ``token`` means (reference
        # section 4): the index holds every mapping as this service runs it.
        self._broker_mode = broker_mode
        self._interval = interval
        # Called after every refresh on the refresh thread (exports gauges; must not raise).
        self.on_tick = on_tick
        self._index: MappingIndex | None = None
        # Loaded with the index (before it, the first time): a loaded index implies known
        # revocations.
        self.revoked = RevocationIndex(broker_mode=broker_mode)
        self._revocations_loaded = False
        # Called on the refresh thread with each new revocation index (drops what it denies
        # from the credential caches; must not raise).
        self.on_revocations: Callable[[RevocationIndex], None] | None = None
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._stop = threading.Event()
        self._first_attempt = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self.last_error: str | None = None
        renew_after_fork(self)

    def current(self) -> MappingIndex:
        """The loaded index; never touches the database (module docstring)."""
        index = self._index
        if index is None and self.running:
            self._first_attempt.wait(FIRST_LOAD_WAIT_SECONDS)
            index = self._index
        if index is None:
            raise TemporarilyUnavailable(
                "mappings unavailable",
                retry_after=5,
                cause=self.last_error or "mapping index not loaded yet",
            )
        return index

    def current_or_none(self) -> MappingIndex | None:
        """The loaded index, or None before the first load: never waits."""
        return self._index

    @property
    def loaded(self) -> bool:
        return self._index is not None

    def refresh(self) -> MappingIndex | None:
        """Reload if the stored revision moved; keep the old index if the database fails."""
        with self._lock:
            try:
                changed = self._refresh_revocations()
                revision = store.revision(self._database)
                if self._index is None or revision != self._index.revision:
                    revision, specs = store.load(self._database)
                    self._index = MappingIndex(
                        (spec.with_default_token(self._broker_mode) for spec in specs),
                        revision=revision,
                    )
                    log.info("mapping index loaded", extra={"revision": revision})
            except Exception as exc:
                self.last_error = describe_failure(exc)
                if not self._failing:
                    log.warning("mapping refresh failed: %s", self.last_error)
                self._failing = True
            else:
                self._failing = False
                self.last_error = None
                if changed and self.on_revocations is not None:
                    try:
                        self.on_revocations(self.revoked)
                    except Exception as exc:
                        log.warning("dropping revoked credentials failed: %s", type(exc).__name__)
            return self._index

    def _refresh_revocations(self) -> bool:
        """Reload the revocations if their stored revision moved; True if it did."""
        stored = revocations.revision(self._database)
        if self._revocations_loaded and stored == self.revoked.revision:
            return False
        self.revoked = revocations.load(self._database, broker_mode=self._broker_mode)
        self._revocations_loaded = True
        log.info(
            "revocations loaded",
            extra={"revision": self.revoked.revision, "active": len(self.revoked)},
        )
        return True

    def start(self) -> None:
        """Start the refresh thread (idempotent; call it in the worker process)."""
        with self._start_lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run,
                args=(self._stop, self._first_attempt),
                name="sts-mappings",
                daemon=True,
            )
            self._thread.start()

    @property
    def running(self) -> bool:
        """Is this process's refresh thread alive?"""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def stop(self) -> None:
        self._stop.set()

    def _after_fork(self) -> None:
        # A lock held by a parent thread at fork time would stay held forever in the child; the
        # parent's thread does not exist here, nor must its events be shared. (The database
        # forgets the parent's pooled connections itself: sts.db.Database._after_fork.)
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._thread = None
        self._stop = threading.Event()
        self._first_attempt = threading.Event()

    def _run(self, stop: threading.Event, first_attempt: threading.Event) -> None:
        # Build the index as soon as the worker starts, not on its first request.
        try:
            if self._index is None:
                self.refresh()
        finally:
            first_attempt.set()
        while not stop.wait(self._interval):
            self.refresh()
            if self.on_tick is not None:
                try:
                    self.on_tick()
                except Exception as exc:
                    log.warning("periodic task failed: %s", type(exc).__name__)
