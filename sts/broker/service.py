"""Broker mode as one worker process runs it: the key store, the minter, the served documents.

docs/reference.md section 8. :func:`check_at_start_up` runs in ``sts serve``'s parent, before any
worker exists, so a key-encryption key that cannot open the stored keys (or an unusable KMS key)
stops start-up with one line naming the variable. Each worker then builds a :class:`Broker` and
:meth:`Broker.start` loads the keys on a daemon thread, retrying while the database or KMS does
not answer: no request thread ever waits for that, and ``/readyz`` says "signing key not loaded"
until a key signs.
"""

from __future__ import annotations

import logging
import threading

from sts.broker.documents import discovery_document, jwks_document
from sts.broker.keys import DatabaseKeyStore
from sts.broker.kms import KmsKeyStore
from sts.broker.mint import BrokerMinter
from sts.broker.stores import build_key_store
from sts.config import ConfigError, Settings
from sts.db import Database
from sts.errors import TemporarilyUnavailable

log = logging.getLogger(__name__)

#: Seconds between two attempts to load the keys while the database or KMS does not answer.
LOAD_RETRY_SECONDS = 1.0


def _load(store: DatabaseKeyStore | KmsKeyStore) -> None:
    if isinstance(store, DatabaseKeyStore):
        store.bootstrap()
    else:
        store.load()


def check_at_start_up(settings: Settings) -> None:
    """Open the keys once, as a worker will; raises what stops start-up.

    :class:`sts.config.ConfigError` (``KeyEncryptionKeyError``, ``KmsKeyError``) for a variable
    that cannot work, :class:`sts.broker.keys.StoredKeyError` for a stored key that is damaged.
    """
    database = Database(settings.database_url)
    try:
        _load(build_key_store(settings, database))
    finally:
        database.dispose()


class Broker:
    """What the service needs of broker mode in one process (built only with the issuer set)."""

    def __init__(self, settings: Settings, database: Database) -> None:
        settings.require_broker()
        assert settings.broker_issuer is not None
        self.issuer = settings.broker_issuer
        self.store = build_key_store(settings, database)
        self.minter = BrokerMinter(self.store, self.issuer)
        self.discovery = discovery_document(self.issuer)
        self.last_error: str | None = None
        self._loaded = threading.Event()
        self._stop = threading.Event()

    @property
    def ready(self) -> bool:
        return self._loaded.is_set() and self.store.ready

    def jwks(self) -> bytes:
        """The JWKS as published now, from memory (the refresher reloads the rows).

        Before the keys are loaded it is 503: a request thread never reads the database or KMS.
        """
        if not self._loaded.is_set():
            raise TemporarilyUnavailable(
                "signing keys not loaded yet", retry_after=5, cause=self.last_error
            )
        return jwks_document(self.store)

    def start(self) -> None:
        """Load the keys in the background, then keep database keys fresh (per process)."""
        threading.Thread(target=self._start, name="sts-broker-start", daemon=True).start()

    def _start(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                _load(self.store)
            except ConfigError as exc:
                # Start-up checked this already; keys changed since: say so, keep trying.
                self.last_error = str(exc)
            except Exception as exc:
                self.last_error = f"signing keys unavailable: {type(exc).__name__}"
            else:
                self.last_error = None
                self._loaded.set()
                break
            if not failing:
                log.warning("broker keys not loaded: %s", self.last_error)
                failing = True
            self._stop.wait(LOAD_RETRY_SECONDS)
        if isinstance(self.store, DatabaseKeyStore) and not self._stop.is_set():
            self.store.start()

    def close(self) -> None:
        self._stop.set()
        if isinstance(self.store, DatabaseKeyStore):
            self.store.stop()
