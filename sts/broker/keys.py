"""The broker's signing keys: the :class:`KeyStore` protocol and its database implementation.

A key store answers two questions: which key signs now (:meth:`KeyStore.signer`), and which public
keys are published (:meth:`KeyStore.public_jwks`). :class:`DatabaseKeyStore` keeps RSA keys in the
``signing_keys`` table (:mod:`sts.broker.models`); :class:`sts.broker.kms.KmsKeyStore` keeps them
in AWS KMS.

Key states are derived from each row's timestamps and nothing else, so
every replica reading the same rows computes the same answer at the same moment:

- a key is *published* (in the JWKS) from the moment its row exists until ``retired_at`` is set;
- the *signing* key is the published key with the latest ``signs_from`` that has been reached
  (ties broken by ``generation``);
- published keys whose ``signs_from`` lies ahead are *next*; the others are *previous*.

A new key is published :data:`PUBLISH_AHEAD_SECONDS` before it signs (``sts keys rotate``; with
``--now`` it signs at once), so verifiers that cached the JWKS for its ``max-age`` (300 s) know its
kid before they see it. Automatic rotation (``STS_SIGNING_KEY_ROTATION_DAYS``) follows the same
rule, and retires a previous key only once it has been out of use for a whole rotation period
(at least a day, so far more than the :data:`KEEP_AFTER_SECONDS` that a broker token's lifetime
and the JWKS ``max-age`` need).

Who can mint what: with the database alone, nobody: the private keys are sealed with AES-256-GCM
under ``STS_KEY_ENCRYPTION_KEY`` with the kid as associated data, and the published key is derived
from the unsealed private key, never read from the row's public JWK (a row whose public JWK was
swapped stops start-up). Without the key-encryption key, the database can only retire keys or
make the service stop signing. With the database and the key-encryption key, one can sign broker
tokens for any mapping.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sts.broker.models import SigningKeyRow
from sts.config import ConfigError
from sts.db import Database
from sts.errors import TemporarilyUnavailable

log = logging.getLogger(__name__)

# A verifier may cache the JWKS for its max-age (300 s, sts.broker.documents) and a broker
# token lives at most 300 s (sts.broker.mint); 600 s covers both.
PUBLISH_AHEAD_SECONDS = 600
KEEP_AFTER_SECONDS = 600
RSA_KEY_BITS = 2048
RSA_PUBLIC_EXPONENT = 65537
NONCE_BYTES = 12  # AES-GCM's recommended IV length (NIST SP 800-38D section 8.2)
REFRESH_INTERVAL_SECONDS = 2.0
# A creation that lost a race to another replica reloads and decides again; twice is plenty.
WRITE_ATTEMPTS = 3
PUBLIC_JWK_MEMBERS = ("kty", "kid", "use", "alg", "n", "e")


class KeyState(StrEnum):
    NEXT = "next"
    SIGNING = "signing"
    PREVIOUS = "previous"


@dataclass(frozen=True)
class KeyInfo:
    """A published key as ``sts keys list`` shows it."""

    kid: str
    state: KeyState
    created_at: datetime | None
    signs_from: datetime | None
    # When a previous key stopped signing (None for next and signing keys, and in KMS).
    signed_until: datetime | None = None


@dataclass(frozen=True)
class Signer:
    """The key that signs now: its ``kid`` and an RS256 signature function (RFC 7518 3.3).

    One object, so the kid in the header and the key that signs can never come from two
    different moments.
    """

    kid: str
    sign: Callable[[bytes], bytes]


class KeyStore(Protocol):
    """What minting and the documents need from wherever the keys live."""

    def signer(self) -> Signer:
        """The signing key; raises :class:`sts.errors.TemporarilyUnavailable` if there is none."""
        ...

    def public_jwks(self) -> list[dict[str, str]]:
        """Every published public key as a JWK (RFC 7517 section 4), no private member."""
        ...

    def list_keys(self) -> list[KeyInfo]:
        """Every published key with its state, the signing key first."""
        ...

    @property
    def ready(self) -> bool:
        """True when a key can sign now (``/readyz`` in broker mode)."""
        ...


class KeyEncryptionKeyError(ConfigError):
    """``STS_KEY_ENCRYPTION_KEY`` cannot open a stored signing key: start-up must stop (exit 2)."""

    def __init__(self, kid: str) -> None:
        super().__init__(
            "STS_KEY_ENCRYPTION_KEY",
            f"cannot decrypt the stored signing key {kid} "
            "(a different key-encryption key, or the row was altered)",
        )
        self.kid = kid


class StoredKeyError(RuntimeError):
    """A ``signing_keys`` row is inconsistent (its public JWK does not match its private key)."""


class KeyOperationError(RuntimeError):
    """``sts keys rotate``/``retire`` refused: the one-line reason (exit 1)."""


def b64url(data: bytes) -> str:
    """Unpadded base64url (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(value: int) -> str:
    """A JWK integer member: big-endian, no leading zero octets (RFC 7518 section 6.3.1)."""
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638 section 3: SHA-256 of the required RSA members, lexicographic, no whitespace."""
    canonical = json.dumps(
        {"e": jwk["e"], "kty": "RSA", "n": jwk["n"]}, separators=(",", ":"), sort_keys=True
    )
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def public_jwk(public_key: rsa.RSAPublicKey) -> dict[str, str]:
    """The published form of an RSA public key, its kid the RFC 7638 thumbprint."""
    numbers = public_key.public_numbers()
    jwk = {"kty": "RSA", "n": _uint(numbers.n), "e": _uint(numbers.e)}
    return {"kty": "RSA", "kid": thumbprint(jwk), "use": "sig", "alg": "RS256", **jwk}


def _rs256(private_key: rsa.RSAPrivateKey) -> Callable[[bytes], bytes]:
    def sign(signing_input: bytes) -> bytes:
        return private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())

    return sign


@dataclass(frozen=True)
class _Key:
    """One row as loaded, with its unsealed private key while it is published."""

    kid: str
    generation: int
    jwk: dict[str, str]
    created_at: datetime
    signs_from: datetime
    retired_at: datetime | None
    private_key: rsa.RSAPrivateKey | None


@dataclass(frozen=True)
class _Timeline:
    """The states of all keys at one moment, computed from the rows alone."""

    signing: _Key | None
    next: tuple[_Key, ...]
    previous: tuple[tuple[_Key, datetime | None], ...]


def _timeline(rows: Sequence[_Key], now: datetime) -> _Timeline:
    ordered = sorted(rows, key=lambda key: (key.signs_from, key.generation))
    published = [key for key in ordered if key.retired_at is None]
    started = [key for key in published if key.signs_from <= now]
    signing = started[-1] if started else None
    # A key stopped signing when a later key started that was still published at that moment.
    successors = [
        key
        for key in ordered
        if key.signs_from <= now and (key.retired_at is None or key.retired_at > key.signs_from)
    ]
    previous = []
    for key in started[:-1]:
        later = [
            other.signs_from
            for other in successors
            if (other.signs_from, other.generation) > (key.signs_from, key.generation)
        ]
        previous.append((key, min(later) if later else None))
    return _Timeline(
        signing=signing,
        next=tuple(key for key in published if key.signs_from > now),
        previous=tuple(previous),
    )


class DatabaseKeyStore:
    """RSA signing keys in the ``signing_keys`` table, private parts sealed (module docstring).

    Rows are reloaded by :meth:`refresh` (a daemon thread started with :meth:`start` calls it
    every :data:`REFRESH_INTERVAL_SECONDS`); the states are computed at each call from the loaded
    rows and ``clock``, so a key scheduled to sign at ``T`` signs from ``T`` in every replica.
    """

    def __init__(
        self,
        database: Database,
        key_encryption_key: bytes,
        *,
        rotation_days: int = 0,
        clock: Callable[[], float] = time.time,
        refresh_interval: float = REFRESH_INTERVAL_SECONDS,
    ) -> None:
        self._database = database
        self._aead = AESGCM(key_encryption_key)
        self._rotation = timedelta(days=rotation_days)
        self._clock = clock
        self._interval = refresh_interval
        self._rows: tuple[_Key, ...] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self.last_error: str | None = None

    # -- reading -----------------------------------------------------------------------------

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def refresh(self) -> None:
        """Reload the rows; unseal keys not seen before.

        Raises :class:`KeyEncryptionKeyError` if a published key cannot be unsealed, and the
        database's error if it does not answer; the previously loaded rows stay in use.
        """
        with self._lock:
            with self._database.snapshot() as conn:
                rows = conn.execute(sa.select(SigningKeyRow.__table__)).all()
            known = {key.kid: key for key in self._rows or ()}
            loaded = []
            for row in rows:
                private_key, jwk = None, dict(row.public_jwk)
                if row.retired_at is None:
                    cached = known.get(row.kid)
                    if cached is not None and cached.private_key is not None:
                        private_key, jwk = cached.private_key, cached.jwk
                    else:
                        private_key = self._unseal(row.kid, row.sealed_private_key)
                        jwk = self._checked_public(row.kid, row.public_jwk, private_key)
                loaded.append(
                    _Key(
                        kid=row.kid,
                        generation=row.generation,
                        jwk=jwk,
                        created_at=row.created_at,
                        signs_from=row.signs_from,
                        retired_at=row.retired_at,
                        private_key=private_key,
                    )
                )
            self._rows = tuple(loaded)

    def _loaded(self) -> tuple[_Key, ...]:
        rows = self._rows
        if rows is None:
            self.refresh()
            rows = self._rows
        assert rows is not None
        return rows

    @property
    def ready(self) -> bool:
        """True once rows are loaded and one of them signs now (``/readyz``)."""
        rows = self._rows
        return rows is not None and _timeline(rows, self.now()).signing is not None

    def signer(self) -> Signer:
        try:
            rows = self._loaded()
        except sa.exc.SQLAlchemyError as exc:
            raise TemporarilyUnavailable(
                "signing key unavailable", cause=f"database unavailable: {type(exc).__name__}"
            ) from None
        signing = _timeline(rows, self.now()).signing
        if signing is None or signing.private_key is None:
            raise TemporarilyUnavailable("signing key unavailable", cause="no signing key")
        return Signer(signing.kid, _rs256(signing.private_key))

    def public_jwks(self) -> list[dict[str, str]]:
        rows = sorted(self._loaded(), key=lambda key: key.generation, reverse=True)
        return [dict(key.jwk) for key in rows if key.retired_at is None]

    def list_keys(self) -> list[KeyInfo]:
        timeline = _timeline(self._loaded(), self.now())
        infos = []
        if timeline.signing is not None:
            infos.append(self._info(timeline.signing, KeyState.SIGNING))
        infos.extend(self._info(key, KeyState.NEXT) for key in timeline.next)
        infos.extend(
            self._info(key, KeyState.PREVIOUS, until) for key, until in reversed(timeline.previous)
        )
        return infos

    @staticmethod
    def _info(key: _Key, state: KeyState, signed_until: datetime | None = None) -> KeyInfo:
        return KeyInfo(key.kid, state, key.created_at, key.signs_from, signed_until)

    # -- changing ----------------------------------------------------------------------------

    def bootstrap(self) -> None:
        """Make the first key if none is published (first start in broker mode), then load.

        Replicas starting together race to insert generation 1; the unique constraint lets one
        win and the others load its key.
        """
        for _ in range(WRITE_ATTEMPTS):
            self.refresh()
            if any(key.retired_at is None for key in self._loaded()):
                return
            moment = self.now()
            if self._insert_new_key(created_at=moment, signs_from=moment) is not None:
                self.refresh()
                return
        raise KeyOperationError("could not create the first signing key: keys changed meanwhile")

    def rotate(self, *, now: bool = False) -> KeyInfo:
        """``sts keys rotate``: add a key that signs in 600 s (``now``: promote or add, sign now).

        Without a signing key (an empty table), the new key signs at once: no verifier can hold
        a cached key set that lacks it, because there is none to hold. A second rotation while a
        key is next adds another one: each signs from its own ``signs_from``, in turn.
        """
        for _ in range(WRITE_ATTEMPTS):
            self.refresh()
            moment = self.now()
            timeline = _timeline(self._loaded(), moment)
            if timeline.next and now:
                pending = timeline.next[0]
                if self._promote(pending.kid, moment):
                    return self._after_write(pending.kid)
                continue
            signs_from = (
                moment
                if now or timeline.signing is None
                else moment + timedelta(seconds=PUBLISH_AHEAD_SECONDS)
            )
            kid = self._insert_new_key(created_at=moment, signs_from=signs_from)
            if kid is not None:
                return self._after_write(kid)
        raise KeyOperationError("the signing keys changed meanwhile: run the command again")

    def retire(self, kid: str) -> KeyInfo:
        """``sts keys retire``: remove a next or previous key from the JWKS, for good.

        Its sealed private key is deleted with it. Returns the key as it was before.
        """
        self.refresh()
        moment = self.now()
        info = {key.kid: key for key in self.list_keys()}.get(kid)
        if info is None:
            raise KeyOperationError(f"no published key with kid {kid!r}")
        if info.state is KeyState.SIGNING:
            raise KeyOperationError(
                f"key {kid} is the signing key: sts keys rotate first, then retire it"
            )
        with self._database.session() as session:
            result = session.execute(
                sa.update(SigningKeyRow)
                .where(SigningKeyRow.kid == kid, SigningKeyRow.retired_at.is_(None))
                .values(retired_at=moment, sealed_private_key=None)
            )
        if getattr(result, "rowcount", 1) != 1:
            raise KeyOperationError(f"key {kid} was retired meanwhile")
        self.refresh()
        return info

    def rotate_if_due(self) -> None:
        """Automatic rotation every ``STS_SIGNING_KEY_ROTATION_DAYS`` (0: never), by the same
        rules as ``sts keys rotate``; every replica may call it, the unique generation lets one
        key through.

        The next key is made :data:`PUBLISH_AHEAD_SECONDS` before the signing key's period ends
        and signs from that end, so the schedule does not drift with the refresh interval. A
        previous key is retired once it has been out of use for a whole rotation period.
        """
        if not self._rotation:
            return
        self.refresh()
        moment = self.now()
        timeline = _timeline(self._loaded(), moment)
        for key, until in timeline.previous:
            if until is not None and until + self._rotation <= moment:
                with self._database.session() as session:
                    session.execute(
                        sa.update(SigningKeyRow)
                        .where(SigningKeyRow.kid == key.kid, SigningKeyRow.retired_at.is_(None))
                        .values(retired_at=moment, sealed_private_key=None)
                    )
                log.info("signing key retired automatically", extra={"kid": key.kid})
        signing = timeline.signing
        if signing is None or timeline.next:
            return
        due = signing.signs_from + self._rotation
        ahead = timedelta(seconds=PUBLISH_AHEAD_SECONDS)
        if moment >= due - ahead:
            kid = self._insert_new_key(created_at=moment, signs_from=max(due, moment + ahead))
            if kid is not None:
                log.info("signing key rotation scheduled", extra={"kid": kid})
        self.refresh()

    def _after_write(self, kid: str) -> KeyInfo:
        self.refresh()
        return next(info for info in self.list_keys() if info.kid == kid)

    def _insert_new_key(self, *, created_at: datetime, signs_from: datetime) -> str | None:
        """Insert a fresh key as the next generation; None if another writer took it first.

        ``created_at`` is the moment the decision was made, so "published 600 s before it
        signs" holds exactly however long the RSA key generation takes.
        """
        generation = max((key.generation for key in self._loaded()), default=0) + 1
        private_key = rsa.generate_private_key(
            public_exponent=RSA_PUBLIC_EXPONENT, key_size=RSA_KEY_BITS
        )
        jwk = public_jwk(private_key.public_key())
        row = SigningKeyRow(
            kid=jwk["kid"],
            generation=generation,
            public_jwk=jwk,
            sealed_private_key=self._seal(jwk["kid"], private_key),
            created_at=created_at,
            signs_from=signs_from,
            retired_at=None,
        )
        try:
            # The INSERT is the transaction's first statement: on SQLite it waits for the write
            # lock (busy timeout) instead of failing on a stale read snapshot.
            with self._database.session() as session:
                session.add(row)
        except sa.exc.IntegrityError:
            return None
        return jwk["kid"]

    def _promote(self, kid: str, moment: datetime) -> bool:
        with self._database.session() as session:
            result = session.execute(
                sa.update(SigningKeyRow)
                .where(
                    SigningKeyRow.kid == kid,
                    SigningKeyRow.retired_at.is_(None),
                    SigningKeyRow.signs_from > moment,
                )
                .values(signs_from=moment)
            )
        return getattr(result, "rowcount", 1) == 1

    # -- sealing -----------------------------------------------------------------------------

    def _seal(self, kid: str, private_key: rsa.RSAPrivateKey) -> bytes:
        der = private_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, der, kid.encode("ascii"))

    def _unseal(self, kid: str, sealed: bytes | None) -> rsa.RSAPrivateKey:
        if not sealed or len(sealed) <= NONCE_BYTES:
            raise StoredKeyError(f"signing key {kid} is published but has no private key")
        try:
            der = self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], kid.encode())
        except InvalidTag:
            raise KeyEncryptionKeyError(kid) from None
        private_key = serialization.load_der_private_key(der, password=None)
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise StoredKeyError(f"signing key {kid} is not an RSA key")
        return private_key

    @staticmethod
    def _checked_public(
        kid: str, stored: dict[str, Any], private_key: rsa.RSAPrivateKey
    ) -> dict[str, str]:
        """The JWK derived from the private key; the row's copy must agree with it."""
        derived = public_jwk(private_key.public_key())
        if derived["kid"] != kid or {name: stored.get(name) for name in derived} != derived:
            raise StoredKeyError(
                f"signing key {kid}: the stored public key does not match the sealed private key"
            )
        return derived

    # -- background refresh ------------------------------------------------------------------

    def start(self) -> None:
        """Start the refresh thread (idempotent; call it in the worker process)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="sts-signing-keys", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.rotate_if_due()
                self.refresh()
            except Exception as exc:
                # The last loaded keys keep signing; an outage is logged once, by type only.
                self.last_error = f"signing keys not refreshed: {type(exc).__name__}"
                if not self._failing:
                    log.warning("signing key refresh failed: %s", type(exc).__name__)
                self._failing = True
            else:
                self._failing = False
                self.last_error = None
