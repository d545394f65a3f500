"""DatabaseKeyStore on SQLite and PostgreSQL: states from timestamps, rotation, sealing."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sts.broker.keys import (
    DatabaseKeyStore,
    KeyEncryptionKeyError,
    KeyOperationError,
    StoredKeyError,
    public_jwk,
    thumbprint,
)
from sts.broker.models import SigningKeyRow
from sts.config import ConfigError
from sts.db import Database
from sts.errors import TemporarilyUnavailable
from tests.unit.broker.conftest import START, Clock, jwk_public_key

DAY = 86400


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def states(store: DatabaseKeyStore) -> dict[str, str]:
    return {info.kid: info.state.value for info in store.list_keys()}


def published(store: DatabaseKeyStore) -> list[str]:
    return [jwk["kid"] for jwk in store.public_jwks()]


def assert_signs_verifiably(store: DatabaseKeyStore) -> str:
    signer = store.signer()
    signature = signer.sign(b"header.payload")
    jwk = next(jwk for jwk in store.public_jwks() if jwk["kid"] == signer.kid)
    jwk_public_key(jwk).verify(signature, b"header.payload", padding.PKCS1v15(), hashes.SHA256())
    return signer.kid


def rows(database: Database) -> list[SigningKeyRow]:
    with database.session() as session:
        return list(session.scalars(sa.select(SigningKeyRow).order_by(SigningKeyRow.generation)))


def test_kid_is_the_rfc7638_thumbprint_of_the_rfc_example_key() -> None:
    # RFC 7638 section 3.1: the RSA key of RFC 7517 appendix A.1 and its SHA-256 thumbprint.
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_B"
        "JECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_F"
        "DW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI"
        "4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    )
    assert thumbprint({"kty": "RSA", "n": n, "e": "AQAB"}) == (
        "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    )


def test_public_jwk_has_only_public_members_and_its_kid_is_its_thumbprint() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = public_jwk(key.public_key())
    assert set(jwk) == {"kty", "kid", "use", "alg", "n", "e"}
    assert (jwk["kty"], jwk["use"], jwk["alg"], jwk["e"]) == ("RSA", "sig", "RS256", "AQAB")
    assert jwk["kid"] == thumbprint(jwk)
    assert jwk_public_key(jwk).public_numbers() == key.public_key().public_numbers()


def test_first_start_creates_one_rsa_2048_key_that_signs_at_once(
    database: Database, kek: bytes, clock: Clock
) -> None:
    store = DatabaseKeyStore(database, kek, clock=clock)
    assert store.list_keys() == []
    assert not store.ready
    store.bootstrap()
    assert store.ready
    kid = assert_signs_verifiably(store)
    assert states(store) == {kid: "signing"}
    assert jwk_public_key(store.public_jwks()[0]).key_size >= 2048
    (row,) = rows(database)
    assert (row.kid, row.generation, row.created_at, row.signs_from) == (
        kid,
        1,
        at(START),
        at(START),
    )
    assert row.retired_at is None

    store.bootstrap()
    assert len(rows(database)) == 1


def test_replicas_starting_together_create_exactly_one_key(
    database_url: str, kek: bytes, clock: Clock
) -> None:
    replicas = [Database(database_url) for _ in range(4)]
    stores = [DatabaseKeyStore(db, kek, clock=clock) for db in replicas]
    barrier = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def start(store: DatabaseKeyStore) -> None:
        barrier.wait()
        try:
            store.bootstrap()
        except BaseException as exc:
            errors.append(exc)

    replicas[0].upgrade()
    threads = [threading.Thread(target=start, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert errors == []
        assert len(rows(replicas[0])) == 1
        assert len({store.signer().kid for store in stores}) == 1
        assert len({tuple(published(store)) for store in stores}) == 1
    finally:
        for db in replicas:
            db.dispose()


def test_generation_is_unique_so_two_writers_cannot_both_add_the_next_key(
    database: Database, kek: bytes, clock: Clock
) -> None:
    store = DatabaseKeyStore(database, kek, clock=clock)
    store.bootstrap()
    (row,) = rows(database)
    duplicate = {
        "kid": "another-kid",
        "generation": row.generation,
        "public_jwk": row.public_jwk,
        "sealed_private_key": row.sealed_private_key,
        "created_at": at(START),
        "signs_from": at(START),
        "retired_at": None,
    }
    with pytest.raises(sa.exc.IntegrityError), database.session() as session:
        session.execute(sa.insert(SigningKeyRow).values(**duplicate))


def test_rotate_publishes_the_new_key_at_once_and_signs_with_it_600_s_later(
    database: Database, kek: bytes, clock: Clock
) -> None:
    store = DatabaseKeyStore(database, kek, clock=clock)
    store.bootstrap()
    old = store.signer().kid
    clock.advance(100)
    new = store.rotate()
    assert new.state.value == "next"
    assert (new.created_at, new.signs_from) == (at(START + 100), at(START + 700))
    assert published(store) == [new.kid, old]
    assert states(store) == {old: "signing", new.kid: "next"}

    clock.advance(599.999)
    assert store.signer().kid == old
    clock.advance(0.001)
    assert assert_signs_verifiably(store) == new.kid
    assert states(store) == {new.kid: "signing", old: "previous"}
    assert published(store) == [new.kid, old]
    previous = next(info for info in store.list_keys() if info.kid == old)
    assert previous.signed_until == at(START + 700)


def test_rotating_twice_adds_two_next_keys_that_sign_in_turn(
    database: Database, kek: bytes, clock: Clock
) -> None:
    store = DatabaseKeyStore(database, kek, clock=clock)
    store.bootstrap()
    old = store.signer().kid
    first = store.rotate()
    clock.advance(10)
    second = store.rotate()
    assert states(store) == {old: "signing", first.kid: "next", second.kid: "next"}
    assert published(store) == [second.kid, first.kid, old]
    clock.advance(590)
    assert store.signer().kid == first.kid
    clock.advance(10)
    assert store.signer().kid == second.kid
    assert states(store) == {second.kid: "signing", first.kid: "previous", old: "previous"}
    assert len(rows(database)) == 3


def test_rotate_now_promotes_the_next_key_and_keeps_the_old_one_published(
    database: Database, kek: bytes, clock: Clock
) -> None:
    store = DatabaseKeyStore(database, kek, clock=clock)
    store.bootstrap()
    old = store.signer().kid
    pending = store.rotate()
    clock.advance(30)
    promoted = store.rotate(now=True)
    assert promoted.kid == pending.kid
    assert promoted.signs_from == at(START + 30)
    assert assert_signs_verifiably(store) == pending.kid
    assert states(store) == {pending.kid: "signing", old: "previous"}
    assert len(rows(database)) == 2


def test_rotate_now_without_a_next_key_adds_one_that_signs_at_once(
    database: Database, kek: bytes, clock: Clock
) -> None:
    store = DatabaseKeyStore(database, kek, clock=clock)
    store.bootstrap()
    old = store.signer().kid
    clock.advance(5)
    added = store.rotate(now=True)
    assert added.kid != old
    assert (added.state.value, added.signs_from) == ("signing", at(START + 5))
    assert assert_signs_verifiably(store) == added.kid
    assert published(store) == [added.kid, old]


def test_rotate_on_an_empty_table_makes_a_key_that_signs_at_once(
    database: Database, kek: bytes, clock: Clock
) -> None:
    store = DatabaseKeyStore(database, kek, clock=clock)
    added = store.rotate()
    assert added.state.value == "signing"
    assert store.signer().kid == added.kid


def test_retire_removes_a_previous_key_from_the_jwks_and_deletes_its_private_part(
    database: Database, kek: bytes, clock: Clock
) -> None:
    store = DatabaseKeyStore(database, kek, clock=clock)
    store.bootstrap()
    old = store.signer().kid
    new = store.rotate(now=True)
    clock.advance(1)
    retired = store.retire(old)
    assert (retired.kid, retired.state.value) == (old, "previous")
    assert published(store) == [new.kid]
    assert states(store) == {new.kid: "signing"}
    row = next(row for row in rows(database) if row.kid == old)
    assert row.retired_at == at(START + 1)
    assert row.sealed_private_key is None
    with pytest.raises(KeyOperationError, match="no published key"):
        store.retire(old)


def test_retire_removes_a_next_key_before_it_ever_signs(
    database: Database, kek: bytes, clock: Clock
) -> None:
    store = DatabaseKeyStore(database, kek, clock=clock)
    store.bootstrap()
    old = store.signer().kid
    pending = store.rotate()
    assert store.retire(pending.kid).state.value == "next"
    clock.advance(3600)
    assert store.signer().kid == old
    assert published(store) == [old]


def test_retire_refuses_the_signing_key_and_an_unknown_kid(
    database: Database, kek: bytes, clock: Clock
) -> None:
    store = DatabaseKeyStore(database, kek, clock=clock)
    store.bootstrap()
    signing = store.signer().kid
    with pytest.raises(KeyOperationError, match="is the signing key"):
        store.retire(signing)
    with pytest.raises(KeyOperationError, match="no published key"):
        store.retire("no-such-kid")
    assert published(store) == [signing]


def test_two_stores_on_one_database_agree_on_the_signing_key_and_the_jwks(
    database_url: str, kek: bytes, clock: Clock
) -> None:
    first, second = Database(database_url), Database(database_url)
    try:
        first.upgrade()
        a = DatabaseKeyStore(first, kek, clock=clock)
        b = DatabaseKeyStore(second, kek, clock=clock)
        a.bootstrap()
        b.bootstrap()
        assert (a.signer().kid, a.public_jwks()) == (b.signer().kid, b.public_jwks())
        a.rotate()
        b.refresh()
        assert (a.signer().kid, a.public_jwks()) == (b.signer().kid, b.public_jwks())
        clock.advance(600)
        assert a.signer().kid == b.signer().kid != a.public_jwks()[1]["kid"]
        assert a.list_keys() == b.list_keys()
    finally:
        first.dispose()
        second.dispose()


def test_a_change_reaches_a_running_replica_within_10_seconds(
    database_url: str, kek: bytes
) -> None:
    first, second = Database(database_url), Database(database_url)
    first.upgrade()
    operator = DatabaseKeyStore(first, kek)
    operator.bootstrap()
    replica = DatabaseKeyStore(second, kek)
    replica.bootstrap()
    replica.start()
    try:
        added = operator.rotate(now=True)
        deadline = time.monotonic() + 10
        while replica.signer().kid != added.kid:
            assert time.monotonic() < deadline, "the replica still signs with the old key"
            time.sleep(0.05)
        assert replica.public_jwks() == operator.public_jwks()
    finally:
        replica.stop()
        first.dispose()
        second.dispose()


def test_wrong_key_encryption_key_stops_loading_with_an_error_naming_the_variable(
    database: Database, kek: bytes, clock: Clock
) -> None:
    DatabaseKeyStore(database, kek, clock=clock).bootstrap()
    other = DatabaseKeyStore(database, bytes(32), clock=clock)
    with pytest.raises(KeyEncryptionKeyError) as caught:
        other.refresh()
    assert isinstance(caught.value, ConfigError)
    assert caught.value.variable == "STS_KEY_ENCRYPTION_KEY"
    assert str(caught.value).startswith("STS_KEY_ENCRYPTION_KEY: cannot decrypt")
    with pytest.raises(KeyEncryptionKeyError):
        other.bootstrap()
    assert len(rows(database)) == 1


def test_a_sealed_key_moved_to_another_row_does_not_open(
    database: Database, kek: bytes, clock: Clock
) -> None:
    """The kid is the associated data: a row cannot borrow another row's sealed key."""
    store = DatabaseKeyStore(database, kek, clock=clock)
    store.bootstrap()
    store.rotate()
    first, second = rows(database)
    with database.session() as session:
        session.execute(
            sa.update(SigningKeyRow)
            .where(SigningKeyRow.kid == second.kid)
            .values(sealed_private_key=first.sealed_private_key)
        )
    with pytest.raises(KeyEncryptionKeyError) as caught:
        DatabaseKeyStore(database, kek, clock=clock).refresh()
    assert caught.value.kid == second.kid


def test_a_row_whose_public_key_was_swapped_stops_loading(
    database: Database, kek: bytes, clock: Clock
) -> None:
    """Someone with only the database must not get their own key published under our kid."""
    store = DatabaseKeyStore(database, kek, clock=clock)
    store.bootstrap()
    (row,) = rows(database)
    intruder = public_jwk(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    )
    with database.session() as session:
        session.execute(
            sa.update(SigningKeyRow)
            .where(SigningKeyRow.kid == row.kid)
            .values(public_jwk={**intruder, "kid": row.kid})
        )
    with pytest.raises(StoredKeyError, match="does not match"):
        DatabaseKeyStore(database, kek, clock=clock).refresh()


def test_a_published_row_without_a_private_key_stops_loading(
    database: Database, kek: bytes, clock: Clock
) -> None:
    DatabaseKeyStore(database, kek, clock=clock).bootstrap()
    with database.session() as session:
        session.execute(sa.update(SigningKeyRow).values(sealed_private_key=None))
    with pytest.raises(StoredKeyError, match="no private key"):
        DatabaseKeyStore(database, kek, clock=clock).refresh()


def test_automatic_rotation_publishes_600_s_ahead_and_retires_after_a_period(
    database: Database, kek: bytes, clock: Clock
) -> None:
    store = DatabaseKeyStore(database, kek, rotation_days=1, clock=clock)
    store.bootstrap()
    first = store.signer().kid

    clock.advance(DAY - 601)
    store.rotate_if_due()
    assert published(store) == [first]

    clock.advance(1)
    store.rotate_if_due()
    store.rotate_if_due()
    second = published(store)[0]
    assert states(store) == {first: "signing", second: "next"}
    scheduled = next(info for info in store.list_keys() if info.kid == second)
    assert scheduled.signs_from == at(START + DAY)

    clock.advance(600)
    assert store.signer().kid == second
    store.rotate_if_due()
    assert states(store) == {second: "signing", first: "previous"}

    clock.advance(DAY - 600)
    store.rotate_if_due()
    third = published(store)[0]
    assert states(store) == {second: "signing", third: "next", first: "previous"}

    # A whole period after it stopped signing, the first key is retired.
    clock.advance(599)
    store.rotate_if_due()
    assert first in published(store)
    clock.advance(1)
    store.rotate_if_due()
    assert states(store) == {third: "signing", second: "previous"}
    assert first not in published(store)


def test_rotation_days_zero_never_rotates(database: Database, kek: bytes, clock: Clock) -> None:
    store = DatabaseKeyStore(database, kek, rotation_days=0, clock=clock)
    store.bootstrap()
    clock.advance(400 * DAY)
    store.rotate_if_due()
    assert len(published(store)) == 1


def test_signer_without_any_key_is_temporarily_unavailable(
    database: Database, kek: bytes, clock: Clock
) -> None:
    with pytest.raises(TemporarilyUnavailable) as caught:
        DatabaseKeyStore(database, kek, clock=clock).signer()
    assert caught.value.headers["Retry-After"]
    assert caught.value.description == "signing key unavailable"


def test_signer_with_an_unreachable_database_is_temporarily_unavailable(kek: bytes) -> None:
    database = Database("postgresql+psycopg://postgres@127.0.0.1:1/test")
    try:
        with pytest.raises(TemporarilyUnavailable) as caught:
            DatabaseKeyStore(database, kek).signer()
        assert caught.value.cause == "database unavailable: OperationalError"
    finally:
        database.dispose()


def test_refresh_failure_keeps_the_loaded_keys_signing_and_is_logged_once(
    database: Database, kek: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    store = DatabaseKeyStore(database, kek, refresh_interval=0.05)
    store.bootstrap()
    kid = store.signer().kid
    with database.session() as session:
        session.execute(sa.text("DROP TABLE signing_keys"))
    caplog.set_level(logging.WARNING, logger="sts.broker.keys")
    store.start()
    try:
        deadline = time.monotonic() + 10
        while store.last_error is None:
            assert time.monotonic() < deadline, "the refresh thread never failed"
            time.sleep(0.02)
        assert store.last_error.startswith("signing keys not refreshed: ")
        assert assert_signs_verifiably(store) == kid
    finally:
        store.stop()
    failures = [r for r in caplog.records if r.getMessage().startswith("signing key refresh")]
    assert len(failures) == 1


# -- writes that lose a race --------------------------------------------------------------------
# Another replica winning the race is played by SQLite triggers: an INSERT refused as a
# constraint violation (what the unique generation does), an UPDATE that matches no row (what a
# concurrent retire or promotion leaves behind).


@pytest.fixture
def sqlite_database(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'race.db'}")
    db.upgrade()
    yield db
    db.dispose()


def refuse_inserts(database: Database) -> None:
    with database.session() as session:
        session.execute(
            sa.text(
                "CREATE TRIGGER other_replica BEFORE INSERT ON signing_keys "
                "BEGIN SELECT RAISE(ABORT, 'lost the race'); END"
            )
        )


def ignore_updates(database: Database) -> None:
    with database.session() as session:
        session.execute(
            sa.text(
                "CREATE TRIGGER other_replica BEFORE UPDATE ON signing_keys "
                "BEGIN SELECT RAISE(IGNORE); END"
            )
        )


def test_bootstrap_that_keeps_losing_the_insert_race_says_so(
    sqlite_database: Database, kek: bytes, clock: Clock
) -> None:
    refuse_inserts(sqlite_database)
    store = DatabaseKeyStore(sqlite_database, kek, clock=clock)
    with pytest.raises(KeyOperationError, match="could not create the first signing key"):
        store.bootstrap()
    with pytest.raises(KeyOperationError, match="changed meanwhile: run the command again"):
        store.rotate()


def test_automatic_rotation_that_loses_the_insert_race_adds_nothing(
    sqlite_database: Database, kek: bytes, clock: Clock
) -> None:
    store = DatabaseKeyStore(sqlite_database, kek, rotation_days=1, clock=clock)
    store.bootstrap()
    refuse_inserts(sqlite_database)
    clock.advance(DAY)
    store.rotate_if_due()
    assert len(published(store)) == 1


def test_promotion_or_retirement_overtaken_by_another_writer_is_refused(
    sqlite_database: Database, kek: bytes, clock: Clock
) -> None:
    store = DatabaseKeyStore(sqlite_database, kek, clock=clock)
    store.bootstrap()
    store.rotate(now=True)
    pending = store.rotate()
    previous = next(info for info in store.list_keys() if info.state.value == "previous")
    ignore_updates(sqlite_database)
    with pytest.raises(KeyOperationError, match="changed meanwhile"):
        store.rotate(now=True)
    with pytest.raises(KeyOperationError, match="was retired meanwhile"):
        store.retire(previous.kid)
    assert states(store)[pending.kid] == "next"


def test_a_stored_key_that_is_not_rsa_stops_loading(
    database: Database, kek: bytes, clock: Clock
) -> None:
    """A row sealed correctly (format of sts.broker.models) but holding an EC key."""
    store = DatabaseKeyStore(database, kek, clock=clock)
    store.bootstrap()
    (row,) = rows(database)
    der = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    nonce = secrets.token_bytes(12)
    sealed = nonce + AESGCM(kek).encrypt(nonce, der, row.kid.encode())
    with database.session() as session:
        session.execute(sa.update(SigningKeyRow).values(sealed_private_key=sealed))
    with pytest.raises(StoredKeyError, match="not an RSA key"):
        DatabaseKeyStore(database, kek, clock=clock).refresh()


class TickingClock(Clock):
    """A clock that moves a second each time it is read, like a slow machine under load."""

    def __call__(self) -> float:
        self.now += 1
        return self.now


def test_a_new_key_is_published_exactly_600_s_before_it_signs_however_slow_the_machine(
    database: Database, kek: bytes
) -> None:
    store = DatabaseKeyStore(database, kek, clock=TickingClock())
    store.bootstrap()
    (first,) = rows(database)
    assert first.created_at == first.signs_from
    store.rotate()
    second = rows(database)[1]
    assert (second.signs_from - second.created_at).total_seconds() == 600
