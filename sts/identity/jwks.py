"""Issuer signing keys: a JWKS (RFC 7517) cache per trusted issuer, kept fresh in the background.

Invariants:

- A URL comes only from configuration (``<issuer>/.well-known/jwks.json``); nothing in a token
  chooses one, and a redirect is a failed fetch, so the configured host is the only host asked.
- Readers never block on the network for a known ``kid``: the key map is an immutable snapshot
  replaced whole after each successful fetch.
- A failed fetch never empties the key set: the last good set keeps serving (docs/reference.md
  section 3).
- An unknown ``kid`` triggers at most one refetch per :data:`REFETCH_COOLDOWN` seconds, and only
  one fetch per issuer is ever in flight, with at most one request thread waiting for it.
"""

from __future__ import annotations

import binascii
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import RSAKey

from sts.config import Settings, check_url
from sts.forking import renew_after_fork
from sts.metrics import JWKS_FETCHES, JWKS_LAST_SUCCESS
from sts.outbound import upstream_session

__all__ = [
    "DEFAULT_TTL",
    "MAX_JWKS_BYTES",
    "MAX_TTL",
    "MIN_RSA_BITS",
    "MIN_TTL",
    "REFETCH_COOLDOWN",
    "HeldKey",
    "JWKSCache",
    "JWKSError",
    "JWKSRegistry",
    "decode_b64url",
    "loads_json_object",
]

log = logging.getLogger(__name__)

REFETCH_COOLDOWN = 30.0
"""Seconds between two refetches triggered by an unknown ``kid`` (docs/reference.md section 3)."""
MIN_TTL = 60.0
MAX_TTL = 3600.0
DEFAULT_TTL = 300.0
MAX_JWKS_BYTES = 64 * 1024
MIN_RSA_BITS = 2048
CONNECT_TIMEOUT = 2.0
READ_TIMEOUT = 3.0
RETRY_BACKOFF_MAX = 30.0
"""A failed background fetch is retried after 1, 2, 4 ... seconds, capped here."""

# base64url's two characters of its own (RFC 4648 section 5), as the standard alphabet spells them.
_TO_STANDARD_ALPHABET = bytes.maketrans(b"-_", b"+/")
# Characters whose unused low bits are zero: the only canonical last characters of a base64url
# string of length 2 or 3 (mod 4), so one byte string has one encoding (RFC 4648 section 3.5).
_LAST_CHAR_2 = frozenset("AQgw")
_LAST_CHAR_3 = frozenset("AEIMQUYcgkosw048")
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d{1,10})\"?\s*(?:,|$)", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|,)\s*(?:no-store|no-cache)\s*(?:,|$)", re.IGNORECASE)


class JWKSError(ValueError):
    """A fetched key set (or a base64url/JSON value) is unusable; the message is safe to log."""


def decode_b64url(value: str) -> bytes:
    """Strict unpadded base64url (RFC 7515 section 2): no padding, whitespace or ``+/``.

    Non-canonical encodings (unused trailing bits set) are refused, so a token has exactly one
    spelling and the verified-token cache cannot be sidestepped by re-encoding.
    """
    if "+" in value or "/" in value or "=" in value:
        raise JWKSError("not unpadded base64url")
    rest = len(value) % 4
    if rest == 1:
        raise JWKSError("impossible base64url length")
    if (rest == 2 and value[-1] not in _LAST_CHAR_2) or (
        rest == 3 and value[-1] not in _LAST_CHAR_3
    ):
        raise JWKSError("non-canonical base64url")
    # The URL-safe alphabet mapped onto the standard one (whose own "+/" were refused above);
    # strict mode refuses every other character, whitespace included.
    try:
        data = value.encode("ascii").translate(_TO_STANDARD_ALPHABET) + b"=" * (-rest % 4)
        return binascii.a2b_base64(data, strict_mode=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise JWKSError("not unpadded base64url") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise JWKSError("duplicate member name")
    return result


def _no_constant(name: str) -> Any:
    raise JWKSError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JWKSError("number out of range")
    return value


# One decoder for every token part and key set (``json.loads`` with hooks builds one per call).
_DECODER = json.JSONDecoder(
    object_pairs_hook=_no_duplicates, parse_constant=_no_constant, parse_float=_finite_float
)


def loads_json_object(data: bytes) -> dict[str, Any]:
    """Parse UTF-8 JSON (RFC 8259) that must be an object, refusing duplicate member names.

    RFC 7515 section 4 and RFC 7519 section 4 let a parser reject duplicates; we must, because two
    parsers picking different duplicates is how signature and claim checks get split. ``NaN``,
    ``Infinity`` and numbers that overflow a double are not JSON numbers and are refused too.
    """
    try:
        value = _DECODER.decode(data.decode("utf-8"))
    except JWKSError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise JWKSError("not valid JSON") from None
    if not isinstance(value, dict):
        raise JWKSError("not a JSON object")
    return value


def _uint(value: Any, name: str) -> int:
    if not isinstance(value, str) or not value:
        raise JWKSError(f"{name} missing")
    return int.from_bytes(decode_b64url(value), "big")


def parse_jwks(body: bytes) -> dict[str, RSAKey]:
    """Usable RS256 verification keys by ``kid`` (RFC 7517 section 5, RFC 7518 section 6.3.1).

    Keys that are not RSA, have no ``kid``, are marked for another use or algorithm, or have a
    modulus under :data:`MIN_RSA_BITS` are skipped; a ``kid`` that appears twice is ambiguous and
    dropped. A set with no usable key at all is an error, so a broken publication never replaces a
    working key set.
    """
    document = loads_json_object(body)
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise JWKSError("no keys array")
    keys: dict[str, RSAKey] = {}
    duplicated: set[str] = set()
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("kty") != "RSA":
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid:
            continue
        if entry.get("use", "sig") != "sig" or entry.get("alg", "RS256") != "RS256":
            continue
        key_ops = entry.get("key_ops")
        if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
            continue
        try:
            n = _uint(entry.get("n"), "n")
            e = _uint(entry.get("e"), "e")
            if n.bit_length() < MIN_RSA_BITS:
                log.warning("jwks key %s skipped: modulus under %d bits", kid, MIN_RSA_BITS)
                continue
            public = rsa.RSAPublicNumbers(e, n).public_key()
            key = RSAKey.import_key(public)
        except (JWKSError, ValueError) as exc:
            log.warning("jwks key %s skipped: %s", kid, exc)
            continue
        if kid in keys or kid in duplicated:
            duplicated.add(kid)
            keys.pop(kid, None)
            continue
        keys[kid] = key
    if duplicated:
        log.warning("jwks kids dropped as ambiguous: %s", ", ".join(sorted(duplicated)))
    if not keys:
        raise JWKSError("no usable RS256 key")
    return keys


def ttl_from_cache_control(
    header: str | None, min_ttl: float = MIN_TTL, max_ttl: float = MAX_TTL
) -> float:
    """Key set lifetime from ``Cache-Control`` (RFC 9111 section 5.2.2), within our bounds."""
    if not header:
        return min(max_ttl, max(min_ttl, DEFAULT_TTL))
    if _NO_CACHE.search(header):
        return min_ttl
    match = _MAX_AGE.search(header)
    if match is None:
        return min(max_ttl, max(min_ttl, DEFAULT_TTL))
    return min(max_ttl, max(min_ttl, float(match.group(1))))


class HeldKey(NamedTuple):
    """A verification key and its RFC 7638 thumbprint, from one fetched set: what tells a key
    replaced under the same kid apart (computed once per fetch, not per token)."""

    key: RSAKey
    thumbprint: str


@dataclass(frozen=True)
class _KeySet:
    keys: dict[str, HeldKey]
    kids: frozenset[str]

    @classmethod
    def of(cls, keys: dict[str, RSAKey]) -> _KeySet:
        held = {kid: HeldKey(key, key.thumbprint()) for kid, key in keys.items()}
        return cls(held, frozenset(keys))


_EMPTY = _KeySet({}, frozenset())


class JWKSCache:
    """The key set of ONE issuer, fetched from one configured URL.

    ``clock`` (monotonic seconds) drives TTL, backoff and the refetch cooldown; tests inject one.
    Raises :class:`sts.config.ConfigError` when ``url`` is neither HTTPS nor (with
    ``allow_http_loopback``) plain HTTP to a loopback host.
    """

    def __init__(
        self,
        issuer: str,
        url: str,
        *,
        allow_http_loopback: bool,
        clock: Callable[[], float] = time.monotonic,
        timeout: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT),
        max_bytes: int = MAX_JWKS_BYTES,
        min_ttl: float = MIN_TTL,
        max_ttl: float = MAX_TTL,
        refetch_cooldown: float = REFETCH_COOLDOWN,
    ) -> None:
        self.issuer = issuer
        self.url = check_url("STS_TRUSTED_ISSUERS", url, allow_http_loopback=allow_http_loopback)
        self._clock = clock
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._min_ttl = min_ttl
        self._max_ttl = max_ttl
        self._cooldown = refetch_cooldown
        self._set = _EMPTY
        self._loaded = False
        self._last_error: str | None = None
        self._due_at = -math.inf
        self._failures = 0
        self._last_miss_fetch: float | None = None
        self._lock = threading.Lock()
        self._session: requests.Session | None = None
        renew_after_fork(self)

    @property
    def loaded(self) -> bool:
        """True once a key set has been fetched successfully (it is never unloaded)."""
        return self._loaded

    @property
    def last_error(self) -> str | None:
        """Why the most recent fetch failed, or None if it succeeded; safe to log and show."""
        return self._last_error

    @property
    def refresh_due_at(self) -> float:
        """Clock time at which the background refresher should fetch again."""
        return self._due_at

    def kids(self) -> frozenset[str]:
        return self._set.kids

    def get_key(self, kid: str) -> HeldKey | None:
        """The verification key for ``kid`` and its thumbprint, refetching once (per cooldown)
        when it is unknown.

        Anyone can invent a ``kid`` (docs/reference.md section 3), so a miss never queues behind a
        fetch: a miss that finds no fetch in flight and no cooldown running fetches itself,
        bounded by the fetch's own timeout; every other miss is answered at once from the
        current set. Known kids never touch the lock.
        """
        key = self._set.keys.get(kid)
        if key is not None:
            return key
        if self._cooling_down():
            return None
        # Non-blocking: while the refresher or another miss is fetching, this miss is simply
        # not found, and never a second thread waiting on the network for this issuer.
        if not self._lock.acquire(blocking=False):
            return self._set.keys.get(kid)
        try:
            key = self._set.keys.get(kid)
            if key is not None or self._cooling_down():
                return key
            self._last_miss_fetch = self._clock()
            self._fetch_locked()
            return self._set.keys.get(kid)
        finally:
            self._lock.release()

    def thumbprint(self, kid: str) -> str | None:
        """RFC 7638 thumbprint of the key held for ``kid`` (never fetches); None if not held."""
        held = self._set.keys.get(kid)
        return None if held is None else held.thumbprint

    def _cooling_down(self) -> bool:
        last = self._last_miss_fetch
        return last is not None and self._clock() - last < self._cooldown

    def refresh(self) -> bool:
        """Fetch now; on failure keep the last good set, record ``last_error`` and return False."""
        with self._lock:
            return self._fetch_locked()

    def _fetch_locked(self) -> bool:
        try:
            keys, ttl = self._download()
        except Exception as exc:
            reason = str(exc) if isinstance(exc, JWKSError) else f"error ({type(exc).__name__})"
            self._failures += 1
            JWKS_FETCHES.labels("failed").inc()
            self._last_error = reason
            self._due_at = self._clock() + min(RETRY_BACKOFF_MAX, 2.0 ** (self._failures - 1))
            log.warning(
                "jwks fetch failed for issuer %s: %s (%s)",
                self.issuer,
                reason,
                "serving last good key set" if self._loaded else "no keys loaded",
            )
            return False
        JWKS_FETCHES.labels("ok").inc()
        JWKS_LAST_SUCCESS.labels(self.issuer).set_to_current_time()
        self._set = _KeySet.of(keys)
        self._loaded = True
        self._failures = 0
        self._last_error = None
        self._due_at = self._clock() + ttl
        return True

    def _download(self) -> tuple[dict[str, RSAKey], float]:
        deadline = time.monotonic() + sum(self._timeout)
        try:
            response = self._http().get(
                self.url,
                timeout=self._timeout,
                allow_redirects=False,
                stream=True,
                headers={"Accept": "application/json", "Accept-Encoding": "identity"},
            )
        except requests.RequestException as exc:
            raise JWKSError(f"request failed ({type(exc).__name__})") from None
        with response:
            if 300 <= response.status_code < 400:
                raise JWKSError(f"redirect refused (HTTP {response.status_code})")
            if response.status_code != 200:
                raise JWKSError(f"HTTP {response.status_code}")
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > self._max_bytes:
                raise JWKSError(f"response larger than {self._max_bytes} bytes")
            body = bytearray()
            try:
                for chunk in response.iter_content(chunk_size=8192):
                    body += chunk
                    if len(body) > self._max_bytes:
                        raise JWKSError(f"response larger than {self._max_bytes} bytes")
                    if time.monotonic() > deadline:
                        raise JWKSError("response too slow")
            except requests.RequestException as exc:
                raise JWKSError(f"request failed ({type(exc).__name__})") from None
            ttl = ttl_from_cache_control(
                response.headers.get("Cache-Control"), self._min_ttl, self._max_ttl
            )
        return parse_jwks(bytes(body)), ttl

    def _http(self) -> requests.Session:
        # No credential from the environment (netrc), proxies as for every upstream.
        if self._session is None:
            self._session = upstream_session()
        return self._session

    def close(self) -> None:
        """Close pooled connections (the cache stays usable; a new session opens on demand)."""
        session, self._session = self._session, None
        if session is not None:
            session.close()

    def _after_fork(self) -> None:
        # A lock held by a parent thread at fork time would stay held forever in the child, and
        # pooled sockets must not be shared between processes.
        self._lock = threading.Lock()
        self._session = None


class JWKSRegistry:
    """One :class:`JWKSCache` per trusted issuer (at ``settings.jwks_url``), one refresher thread.

    :meth:`start` is called in each worker process after the server forks; it is idempotent, and
    a process forked after :meth:`start` starts its own thread on its next call.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        timeout: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT),
        max_bytes: int = MAX_JWKS_BYTES,
        min_ttl: float = MIN_TTL,
        refetch_cooldown: float = REFETCH_COOLDOWN,
    ) -> None:
        self._caches: dict[str, JWKSCache] = {
            issuer: JWKSCache(
                issuer,
                settings.jwks_url(issuer),
                allow_http_loopback=settings.allow_http_loopback,
                clock=clock,
                timeout=timeout,
                max_bytes=max_bytes,
                min_ttl=min_ttl,
                refetch_cooldown=refetch_cooldown,
            )
            for issuer in settings.trusted_issuers
        }
        self._clock = clock
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._start_lock = threading.Lock()
        renew_after_fork(self)

    def _after_fork(self) -> None:
        # The parent's refresher does not exist here (each cache renews its own lock).
        self._thread = None
        self._stop = threading.Event()
        self._start_lock = threading.Lock()

    def get(self, issuer: str) -> JWKSCache | None:
        return self._caches.get(issuer)

    def caches(self) -> tuple[JWKSCache, ...]:
        return tuple(self._caches.values())

    def start(self) -> None:
        """Launch the refresher (fetches every issuer at once, then keeps each fresh)."""
        with self._start_lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="jwks-refresher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the refresher and close pooled connections."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout)
        self._thread = None
        for cache in self._caches.values():
            cache.close()

    def ready(self) -> tuple[bool, str | None]:
        """(True, None) once every issuer's keys loaded; else False and a reason for /readyz."""
        for issuer, cache in self._caches.items():
            if not cache.loaded:
                return False, f"jwks not loaded for {issuer}"
        return True, None

    def _run(self) -> None:
        stop = self._stop
        while not stop.is_set():
            for cache in self._caches.values():
                if stop.is_set():
                    return
                if self._clock() >= cache.refresh_due_at:
                    try:
                        cache.refresh()
                    except Exception:
                        # The refresher must outlive any surprise; the next round retries.
                        log.exception("jwks refresh crashed for issuer %s", cache.issuer)
            if not self._caches:
                return
            wait = min(c.refresh_due_at for c in self._caches.values()) - self._clock()
            stop.wait(min(1.0, max(0.05, wait)))
