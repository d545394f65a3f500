"""The key store broker mode uses, chosen by configuration (README "Configuration").

With ``STS_SIGNING_KMS_KEY_IDS`` the keys are in AWS KMS; otherwise they are rows of the
database, sealed under ``STS_KEY_ENCRYPTION_KEY`` and rotated every
``STS_SIGNING_KEY_ROTATION_DAYS`` by whichever replica gets there first.
"""

from __future__ import annotations

from sts.broker.keys import DatabaseKeyStore
from sts.broker.kms import KmsKeyStore
from sts.config import Settings
from sts.db import Database


def build_key_store(settings: Settings, database: Database) -> DatabaseKeyStore | KmsKeyStore:
    """The configured key store, not loaded yet.

    The service then calls ``bootstrap()`` and ``start()`` (database keys) or ``load()`` (KMS)
    at start-up; the errors those raise that name a variable (:class:`sts.config.ConfigError`
    subclasses) stop start-up with exit 2.
    """
    settings.require_signing_keys()
    if settings.signing_kms_key_ids:
        return KmsKeyStore(settings.signing_kms_key_ids, endpoint_url=settings.kms_endpoint_url)
    assert settings.key_encryption_key is not None
    return DatabaseKeyStore(
        database,
        settings.key_encryption_key,
        rotation_days=settings.signing_key_rotation_days,
    )
