"""``sts keys``: the broker's signing keys (states and timings: :mod:`sts.broker.keys`).

Exit codes: 0 success; 1 the operation failed (database or KMS unreachable, not migrated,
retiring the signing key or an unknown kid, keys changed by another writer meanwhile); 2 bad
usage or bad configuration, one line naming what is wrong, with nothing written: broker mode off,
a key-encryption key that cannot open the stored keys, and ``rotate``/``retire`` while the keys
are managed in AWS KMS.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from sts.broker.documents import DISCOVERY_PATH, JWKS_PATH, discovery_document, jwks_document
from sts.broker.keys import (
    KEEP_AFTER_SECONDS,
    DatabaseKeyStore,
    KeyEncryptionKeyError,
    KeyInfo,
    KeyOperationError,
    KeyState,
    KeyStore,
    StoredKeyError,
)
from sts.broker.kms import KmsKeyError, KmsKeyStore
from sts.broker.stores import build_key_store
from sts.config import ConfigError, Settings
from sts.db.commands import fail, guard, open_database
from sts.errors import TemporarilyUnavailable

KMS_MANAGED = (
    "STS_SIGNING_KMS_KEY_IDS: the signing keys are managed in AWS KMS; "
    "change the key list to rotate or retire"
)


@click.group("keys")
def keys() -> None:
    """The broker's signing keys (broker mode: STS_BROKER_ISSUER)."""


def _settings() -> Settings:
    try:
        settings = Settings.from_env()
        settings.require_signing_keys()
    except ConfigError as exc:
        fail(str(exc), 2)
    return settings


@contextmanager
def _database_store(settings: Settings) -> Iterator[DatabaseKeyStore]:
    """The database's keys, every published one unsealed (so a wrong key-encryption key is
    found before anything is written with it)."""
    with open_database() as database:
        guard(database.require_current)
        store = build_key_store(settings, database)
        assert isinstance(store, DatabaseKeyStore)  # callers handle KMS first
        try:
            guard(store.refresh)
        except KeyEncryptionKeyError as exc:
            fail(str(exc), 2)
        except StoredKeyError as exc:
            fail(str(exc), 1)
        yield store


@contextmanager
def _store(settings: Settings) -> Iterator[KeyStore]:
    if not settings.signing_kms_key_ids:
        with _database_store(settings) as store:
            yield store
        return
    try:
        kms = KmsKeyStore(settings.signing_kms_key_ids, endpoint_url=settings.kms_endpoint_url)
        kms.load()
    except KmsKeyError as exc:
        fail(str(exc), 2)
    except TemporarilyUnavailable as exc:
        fail(f"AWS KMS unavailable ({exc.cause})", 1)
    yield kms


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _as_json(info: KeyInfo) -> dict[str, str | None]:
    return {
        "kid": info.kid,
        "state": info.state.value,
        "created_at": _time(info.created_at),
        "signs_from": _time(info.signs_from),
        "signed_until": _time(info.signed_until),
    }


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="A JSON array of objects.")
def keys_list(as_json: bool) -> None:
    """The published keys: kid, state (next, signing, previous), when made, when signing.

    Reads STS_DATABASE_URL, STS_BROKER_ISSUER, STS_KEY_ENCRYPTION_KEY, STS_SIGNING_KMS_KEY_IDS,
    STS_KMS_ENDPOINT_URL and STS_ALLOW_HTTP_LOOPBACK."""
    with _store(_settings()) as store:
        infos = store.list_keys()
    if as_json:
        click.echo(json.dumps([_as_json(info) for info in infos], indent=2))
        return
    if not infos:
        click.echo("no signing keys (the service makes one when it starts in broker mode)")
        return
    rows = [("KID", "STATE", "CREATED", "SIGNS FROM")] + [
        (info.kid, info.state.value, _time(info.created_at) or "-", _time(info.signs_from) or "-")
        for info in infos
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


@keys.command("rotate")
@click.option("--now", "at_once", is_flag=True, help="Sign with the new (or next) key at once.")
def keys_rotate(at_once: bool) -> None:
    """Add a key, published now and signing in 600 s (--now: promote the next key, or add one,
    signing at once). The keys that signed before stay published as previous.

    Reads STS_DATABASE_URL, STS_BROKER_ISSUER, STS_KEY_ENCRYPTION_KEY, STS_SIGNING_KMS_KEY_IDS,
    STS_KMS_ENDPOINT_URL and STS_ALLOW_HTTP_LOOPBACK."""
    settings = _settings()
    if settings.signing_kms_key_ids:
        fail(KMS_MANAGED, 2)
    with _database_store(settings) as store:
        try:
            info = guard(lambda: store.rotate(now=at_once))
        except KeyOperationError as exc:
            fail(str(exc), 1)
    if info.state is KeyState.SIGNING:
        click.echo(f"key {info.kid} signs now")
    else:
        click.echo(f"added key {info.kid}: published now, signs from {_time(info.signs_from)}")


# A kid is base64url and may begin with "-": it must not be read as an option.
@keys.command("retire", context_settings={"ignore_unknown_options": True})
@click.argument("kid")
def keys_retire(kid: str) -> None:
    """Remove a next or previous key from the JWKS at once, for good.

    Reads STS_DATABASE_URL, STS_BROKER_ISSUER, STS_KEY_ENCRYPTION_KEY, STS_SIGNING_KMS_KEY_IDS,
    STS_KMS_ENDPOINT_URL and STS_ALLOW_HTTP_LOOPBACK."""
    settings = _settings()
    if settings.signing_kms_key_ids:
        fail(KMS_MANAGED, 2)
    with _database_store(settings) as store:
        try:
            info = guard(lambda: store.retire(kid))
        except KeyOperationError as exc:
            fail(str(exc), 1)
        moment = store.now()
    recent = moment - timedelta(seconds=KEEP_AFTER_SECONDS)
    if info.signed_until is not None and info.signed_until > recent:
        click.echo(
            f"warning: key {info.kid} signed less than {KEEP_AFTER_SECONDS} s ago; "
            "broker tokens it signed no longer verify",
            err=True,
        )
    click.echo(f"retired key {info.kid} ({info.state.value}): removed from the JWKS")


@keys.command("export")
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
def keys_export(directory: Path) -> None:
    """Write DIR/.well-known/openid-configuration and DIR/.well-known/jwks.json for static
    hosting at STS_BROKER_ISSUER: the same documents the service serves.

    Reads STS_DATABASE_URL, STS_BROKER_ISSUER, STS_KEY_ENCRYPTION_KEY, STS_SIGNING_KMS_KEY_IDS,
    STS_KMS_ENDPOINT_URL and STS_ALLOW_HTTP_LOOPBACK."""
    settings = _settings()
    issuer = settings.require_broker()
    with _store(settings) as store:
        if not store.list_keys():
            fail("no signing keys yet: start the service in broker mode or run sts keys rotate", 1)
        documents = {DISCOVERY_PATH: discovery_document(issuer), JWKS_PATH: jwks_document(store)}
    written = []
    for path, body in documents.items():
        target = directory / path.lstrip("/")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(body)
        except OSError as exc:
            fail(f"{target}: cannot write: {exc.strerror or type(exc).__name__}", 1)
        written.append(str(target))
    click.echo("wrote " + " and ".join(written))
