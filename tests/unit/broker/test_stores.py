"""Which key store the settings choose."""

from __future__ import annotations

import base64

import pytest

from sts.broker.keys import DatabaseKeyStore
from sts.broker.kms import KmsKeyStore
from sts.broker.stores import build_key_store
from sts.config import ConfigError, Settings
from sts.db import Database

ARN = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
KEK = base64.urlsafe_b64encode(bytes(32)).decode()


@pytest.fixture
def database() -> Database:
    return Database("sqlite://")


def test_kms_key_ids_choose_the_kms_store(database: Database) -> None:
    settings = Settings.from_env(
        {"STS_BROKER_ISSUER": "https://sts.example.com", "STS_SIGNING_KMS_KEY_IDS": ARN}
    )
    store = build_key_store(settings, database)
    assert isinstance(store, KmsKeyStore)
    assert store.endpoints() == {ARN: "https://kms.eu-west-1.amazonaws.com"}


def test_a_key_encryption_key_chooses_the_database_store(database: Database) -> None:
    settings = Settings.from_env(
        {"STS_BROKER_ISSUER": "https://sts.example.com", "STS_KEY_ENCRYPTION_KEY": KEK}
    )
    assert isinstance(build_key_store(settings, database), DatabaseKeyStore)


@pytest.mark.parametrize(
    ("settings", "variable"),
    [
        (Settings(), "STS_BROKER_ISSUER"),
        (Settings(broker_issuer="https://sts.example.com"), "STS_KEY_ENCRYPTION_KEY"),
    ],
)
def test_without_what_broker_mode_needs_the_error_names_the_variable(
    database: Database, settings: Settings, variable: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        build_key_store(settings, database)
    assert caught.value.variable == variable
