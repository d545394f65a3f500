"""Verify a Zuplo ID token and reduce it to a :class:`Principal` (docs/reference.md section 3).

The token is a compact JWS (RFC 7515 section 7.1) carrying JWT claims (RFC 7519), signed RS256
(RFC 7518 section 3.3). Structure, header and claims are checked by our own code with strict
decoding (one spelling per token, no duplicate JSON members, typed claims); joserfc then checks
that header once more against its own registry and verifies the signature with its RS256 model
(the token is decoded once: joserfc's own parse of it cost more than the RSA verification).

The hot path is a repeat token: a size check, one SHA-256 and one dictionary look-up, no RSA.
Each failure raises :class:`InvalidRequest` with one of the fixed phrases below; the ``cause`` is
for logs and never contains caller input.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from typing import Any, NamedTuple

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwa import JWSAlgModel
from joserfc.jwk import RSAKey

from sts.config import Settings
from sts.errors import InvalidRequest, TemporarilyUnavailable, WouldWait
from sts.identity.jwks import JWKSCache, JWKSError, JWKSRegistry, decode_b64url, loads_json_object
from sts.identity.principal import ENVIRONMENT_TYPES, Principal
from sts.metrics import SIGNATURE_CHECKS

__all__ = [
    "ALGORITHM_NOT_ALLOWED",
    "AUDIENCE_NOT_ACCEPTED",
    "CLAIM_INVALID",
    "HEADER_NOT_ALLOWED",
    "ISSUER_NOT_TRUSTED",
    "KEYS_UNAVAILABLE",
    "KEY_NOT_FOUND",
    "MAX_LIFETIME_SECONDS",
    "MAX_TOKEN_BYTES",
    "SIGNATURE_INVALID",
    "TOKEN_EXPIRED",
    "TOKEN_ISSUED_IN_FUTURE",
    "TOKEN_LIFETIME_TOO_LONG",
    "TOKEN_NOT_YET_VALID",
    "TOKEN_TOO_LARGE",
    "TOKEN_UNPARSABLE",
    "TokenVerifier",
    "token_digest",
]

TOKEN_UNPARSABLE = "token unparsable"  # noqa: S105
TOKEN_TOO_LARGE = "token too large"  # noqa: S105
ALGORITHM_NOT_ALLOWED = "algorithm not allowed"
HEADER_NOT_ALLOWED = "header not allowed"
KEY_NOT_FOUND = "signing key not found"
SIGNATURE_INVALID = "signature invalid"
ISSUER_NOT_TRUSTED = "issuer not trusted"
AUDIENCE_NOT_ACCEPTED = "audience not accepted"
TOKEN_EXPIRED = "token expired"  # noqa: S105
TOKEN_NOT_YET_VALID = "token not yet valid"  # noqa: S105
TOKEN_ISSUED_IN_FUTURE = "token issued in the future"  # noqa: S105
CLAIM_INVALID = "claim missing or invalid"
KEYS_UNAVAILABLE = "signing keys unavailable"
TOKEN_LIFETIME_TOO_LONG = "token lifetime too long"  # noqa: S105

MAX_TOKEN_BYTES = 16 * 1024
MAX_LIFETIME_SECONDS = 24 * 3600
"""``exp - iat`` above this is refused (docs/reference.md section 3); Zuplo issues 10 h tokens."""
VERIFIED_CACHE_SIZE = 10_000
KEYS_RETRY_AFTER = 5
ALGORITHM = "RS256"
IDENTITY_CLAIMS = ("sub", "account", "project", "deployment", "environment_type")
# crit and b64 (RFC 7515 4.1.11, RFC 7797): extensions we do not implement, rejected whatever
# their value. cty (RFC 7519 5.2): nested JWTs. enc and zip belong to JWE (RFC 7516).
FORBIDDEN_HEADERS = ("crit", "b64", "cty", "enc", "zip")
# RFC 7519 5.1: "JWT"; RFC 7515 4.1.9 lets the "application/" prefix be omitted, so both count.
ACCEPTED_TYP = frozenset({"jwt", "application/jwt"})

# jku, x5u, jwk and x5c pass through untouched: the key is only ever chosen by kid from the
# configured issuer's set, so those headers are never read, let alone fetched.
_JWS_REGISTRY = jws.JWSRegistry(algorithms=[ALGORITHM], strict_check_header=False)
_JWS_REGISTRY.max_header_length = MAX_TOKEN_BYTES


class _Verified(NamedTuple):
    principal: Principal
    exp: float
    valid_from: float
    keys: JWKSCache
    kid: str
    thumbprint: str
    """RFC 7638 thumbprint of the key that verified the token: a key replaced under the same
    ``kid`` must not keep vouching for tokens the old one signed."""


def token_digest(token: str) -> bytes:
    """SHA-256 of an ASCII token: the verified-token cache's key (no token is kept)."""
    return hashlib.sha256(token.encode("ascii")).digest()


class _CheckedHeader(NamedTuple):
    kid: str
    algorithm: JWSAlgModel


class _Decoded(NamedTuple):
    """A token decoded up to its key: what :meth:`TokenVerifier._finish` needs."""

    header_segment: str
    header: dict[str, Any] | None
    checked: _CheckedHeader | None
    kid: str
    claims: dict[str, Any]
    signature: bytes
    signing_input: str
    keys: JWKSCache


class _KeyNotHeld(Exception):
    """The token's ``kid`` is not in its issuer's key set as held: finishing may fetch it."""

    def __init__(self, decoded: _Decoded) -> None:
        super().__init__(f"kid {decoded.kid!r} not held")
        self.decoded = decoded


#: Header segments (exactly as spelled) of tokens that passed every header check, ours and
#: joserfc's, and whose signature verified: those checks depend on the header alone, so one
#: spelling always gets the same verdict. Cleared when full.
_checked_headers: dict[str, _CheckedHeader] = {}
_CHECKED_HEADERS_MAX = 64


def _check_with_joserfc(header: dict[str, Any]) -> JWSAlgModel:
    """joserfc's checks of a compact JWS header (``jws.validate_compact``) against its own
    registry, on the header we decoded (the token is not parsed a second time); its RS256
    model."""
    try:
        _JWS_REGISTRY.check_header(header)
        return _JWS_REGISTRY.get_alg(header["alg"])
    except (JoseError, ValueError) as exc:
        raise _fail(HEADER_NOT_ALLOWED, f"refused by joserfc ({type(exc).__name__})") from None


def _fail(description: str, cause: str) -> InvalidRequest:
    return InvalidRequest(description, cause=cause)


def _time_claim(claims: dict[str, Any], name: str, *, required: bool) -> float | None:
    """RFC 7519 section 2 NumericDate: a JSON number; booleans and strings are not numbers."""
    if name not in claims:
        if required:
            raise _fail(CLAIM_INVALID, f"{name} missing")
        return None
    value = claims[name]
    if type(value) is not int and type(value) is not float:
        raise _fail(CLAIM_INVALID, f"{name} is not a JSON number")
    try:
        # A JSON integer may have hundreds of digits; the comparisons below are in floats.
        return float(value)
    except OverflowError:
        raise _fail(CLAIM_INVALID, f"{name} out of range") from None


class TokenVerifier:
    """Checks tokens against ``settings`` (issuers, audiences, leeway) and the issuers' keys."""

    def __init__(
        self,
        settings: Settings,
        registry: JWKSRegistry,
        *,
        cache_size: int = VERIFIED_CACHE_SIZE,
    ) -> None:
        self._issuers = frozenset(settings.trusted_issuers)
        self._audiences = frozenset(settings.audiences)
        self._leeway = float(settings.clock_skew_seconds)
        self._registry = registry
        self._cache_size = cache_size
        self._verified: OrderedDict[bytes, _Verified] = OrderedDict()
        self._lock = threading.Lock()
        self.signature_checks = 0
        """RSA verifications performed; a repeat token must not add to it."""
        self.verifications = 0
        """Tokens verified (:meth:`verify_digested`), cache hits included: one per request
        at most, whichever way it is answered."""

    def verify(self, token: str, now: float | None = None, *, may_fetch: bool = True) -> Principal:
        """The :class:`Principal` a valid token proves; ``now`` is Unix time (default: the clock).

        Raises :class:`InvalidRequest` for any invalid token and
        :class:`TemporarilyUnavailable` when the issuer's keys have never been fetched. With
        ``may_fetch`` false (an event loop), a token whose ``kid`` is not held raises
        :class:`sts.errors.WouldWait` instead of (maybe) fetching the key set.
        """
        return self.verify_digested(token, now, may_fetch=may_fetch)[0]

    def verify_digested(
        self, token: str, now: float | None = None, *, may_fetch: bool = True
    ) -> tuple[Principal, bytes]:
        """:meth:`verify`, and the token's :func:`token_digest` (for :meth:`verified_before`)."""
        if len(token) > MAX_TOKEN_BYTES:
            raise _fail(TOKEN_TOO_LARGE, "token over 16 KiB")
        if not token.isascii():
            if len(token.encode("utf-8", "surrogatepass")) > MAX_TOKEN_BYTES:
                raise _fail(TOKEN_TOO_LARGE, "token over 16 KiB")
            raise _fail(TOKEN_UNPARSABLE, "token is not ASCII")
        if now is None:
            now = time.time()
        self.verifications += 1
        digest = token_digest(token)
        hit = self._hit(digest)
        if hit is not None:
            if self._holds(hit, now):
                return hit.principal, digest
            # Expired, or the key left the issuer's set or was replaced under its kid (or the
            # caller's clock went back): refused, or verified afresh.
            self._forget(digest)
            if now >= hit.exp + self._leeway:
                raise _fail(TOKEN_EXPIRED, "exp passed (cached verification)")
        try:
            verified = self._verify(token, now, may_fetch=may_fetch)
        except _KeyNotHeld as not_held:
            decoded = not_held.decoded

            def fetch_then_verify() -> tuple[Principal, bytes]:
                return self._remember(digest, self._finish(decoded, time.time())), digest

            raise WouldWait(str(not_held), resume=fetch_then_verify) from None
        return self._remember(digest, verified), digest

    def _remember(self, digest: bytes, verified: _Verified) -> Principal:
        with self._lock:
            self._verified[digest] = verified
            while len(self._verified) > self._cache_size:
                self._verified.popitem(last=False)
        return verified.principal

    def verified_before(self, digest: bytes, now: float | None = None) -> Principal | None:
        """The principal of a token verified before, by its :func:`token_digest`, when that
        verification still holds at ``now`` (:meth:`_holds`, the test a cache hit of
        :meth:`verify` passes); None otherwise (then :meth:`verify` decides, and raises what
        it must)."""
        hit = self._hit(digest)
        if hit is None or not self._holds(hit, time.time() if now is None else now):
            return None
        return hit.principal

    def _holds(self, hit: _Verified, now: float) -> bool:
        """A verification still holds at ``now``: the token not expired, already valid
        (``iat``/``nbf``), and the key that verified it still the issuer's under its kid."""
        return (
            now < hit.exp + self._leeway
            and now >= hit.valid_from
            and hit.keys.thumbprint(hit.kid) == hit.thumbprint
        )

    def _hit(self, digest: bytes) -> _Verified | None:
        with self._lock:
            hit = self._verified.get(digest)
            if hit is not None:
                self._verified.move_to_end(digest)
        return hit

    @property
    def cached_tokens(self) -> int:
        """Verified tokens held (for the cache-size gauge)."""
        return len(self._verified)

    def _forget(self, digest: bytes) -> None:
        with self._lock:
            self._verified.pop(digest, None)

    def _verify(self, token: str, now: float, *, may_fetch: bool = True) -> _Verified:
        decoded = self._decode(token)
        if not may_fetch and decoded.keys.thumbprint(decoded.kid) is None:
            # An unknown kid may make this request fetch the key set: not on an event loop.
            raise _KeyNotHeld(decoded)
        return self._finish(decoded, now)

    def _decode(self, token: str) -> _Decoded:
        """The token's parts decoded, its header checked and its issuer's key set chosen."""
        parts = token.split(".")
        if len(parts) != 3:
            raise _fail(TOKEN_UNPARSABLE, f"compact JWS has 3 parts, token has {len(parts)}")
        # An issuer signs every token with the same few headers: one already checked whole (by
        # us and by joserfc) is known by its exact spelling, and not decoded or checked again.
        checked = _checked_headers.get(parts[0])
        try:
            header = None if checked is not None else loads_json_object(decode_b64url(parts[0]))
            claims = loads_json_object(decode_b64url(parts[1]))
            signature = decode_b64url(parts[2])
        except JWKSError as exc:
            raise _fail(TOKEN_UNPARSABLE, f"token: {exc}") from None
        if checked is None:
            assert header is not None
            kid = self._check_header(header)
        else:
            kid = checked.kid
        keys = self._keys_for(claims)
        # The signing input is the token's first two parts exactly as sent (RFC 7515 5.2).
        signing_input = token[: len(parts[0]) + 1 + len(parts[1])]
        return _Decoded(parts[0], header, checked, kid, claims, signature, signing_input, keys)

    def _finish(self, decoded: _Decoded, now: float) -> _Verified:
        """The key (fetched if need be), the signature and the claims."""
        keys, kid, header, checked = decoded.keys, decoded.kid, decoded.header, decoded.checked
        held = keys.get_key(kid)
        if held is None:
            if not keys.loaded:
                raise TemporarilyUnavailable(
                    KEYS_UNAVAILABLE,
                    retry_after=KEYS_RETRY_AFTER,
                    cause=f"jwks for {keys.issuer}: {keys.last_error}",
                )
            raise _fail(KEY_NOT_FOUND, f"kid not in the key set of {keys.issuer}")
        if checked is None:
            assert header is not None
            algorithm = _check_with_joserfc(header)
        else:
            algorithm = checked.algorithm
        self._check_signature(algorithm, decoded.signing_input, decoded.signature, held.key)
        if checked is None:
            # Only a header the issuer's key signed is remembered: forged ones never churn it.
            if len(_checked_headers) >= _CHECKED_HEADERS_MAX:
                _checked_headers.clear()
            _checked_headers[decoded.header_segment] = _CheckedHeader(kid, algorithm)
        return self._check_claims(decoded.claims, now, keys, kid, held.thumbprint)

    def _check_header(self, header: dict[str, Any]) -> str:
        """RFC 7515 section 4.1 and the docs/reference.md section 3; returns the ``kid``."""
        if header.get("alg") != ALGORITHM:
            raise _fail(ALGORITHM_NOT_ALLOWED, "alg is not RS256")
        for name in FORBIDDEN_HEADERS:
            if name in header:
                raise _fail(HEADER_NOT_ALLOWED, f"{name} header present")
        if "typ" in header:
            typ = header["typ"]
            if not isinstance(typ, str) or typ.lower() not in ACCEPTED_TYP:
                raise _fail(HEADER_NOT_ALLOWED, "typ is not JWT")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise _fail(KEY_NOT_FOUND, "kid header missing or not a non-empty string")
        return kid

    def _keys_for(self, claims: dict[str, Any]) -> JWKSCache:
        # The unverified iss only picks a configured key set by exact match; it never builds a URL.
        iss = claims.get("iss")
        if not isinstance(iss, str) or iss not in self._issuers:
            raise _fail(ISSUER_NOT_TRUSTED, "iss missing or not a configured issuer")
        keys = self._registry.get(iss)
        if keys is None:
            raise _fail(ISSUER_NOT_TRUSTED, "no key set registered for a configured issuer")
        return keys

    def _check_signature(
        self, algorithm: JWSAlgModel, signing_input: str, signature: bytes, key: RSAKey
    ) -> None:
        """joserfc's RS256 model on the signature we decoded: the key's ``use`` and ``alg``,
        then the RSA verification (the header passed :func:`_check_with_joserfc`)."""
        with self._lock:
            self.signature_checks += 1
        SIGNATURE_CHECKS.inc()
        try:
            algorithm.check_key(key)
            valid = algorithm.verify(signing_input.encode("ascii"), signature, key)
        except (JoseError, ValueError) as exc:
            raise _fail(HEADER_NOT_ALLOWED, f"refused by joserfc ({type(exc).__name__})") from None
        if not valid:
            raise _fail(SIGNATURE_INVALID, "RS256 signature does not verify")

    def _check_claims(
        self, claims: dict[str, Any], now: float, keys: JWKSCache, kid: str, thumbprint: str
    ) -> _Verified:
        """RFC 7519 section 4.1 (aud, exp, nbf, iat) plus the Zuplo identity claims."""
        aud = claims.get("aud")
        if isinstance(aud, str):
            audiences: list[Any] = [aud]
        elif isinstance(aud, list) and aud and all(isinstance(a, str) for a in aud):
            audiences = aud
        else:
            raise _fail(CLAIM_INVALID, "aud missing or not a string or list of strings")
        if self._audiences.isdisjoint(audiences):
            raise _fail(AUDIENCE_NOT_ACCEPTED, "no aud entry is a configured audience")

        exp = _time_claim(claims, "exp", required=True)
        iat = _time_claim(claims, "iat", required=True)
        nbf = _time_claim(claims, "nbf", required=False)
        assert exp is not None
        assert iat is not None
        leeway = self._leeway
        if now >= exp + leeway:
            raise _fail(TOKEN_EXPIRED, "exp passed")
        if nbf is not None and now < nbf - leeway:
            raise _fail(TOKEN_NOT_YET_VALID, "nbf in the future")
        if iat > now + leeway:
            raise _fail(TOKEN_ISSUED_IN_FUTURE, "iat in the future")
        # No leeway here: the bound is on what the issuer wrote, not on clocks.
        if exp - iat > MAX_LIFETIME_SECONDS:
            raise _fail(TOKEN_LIFETIME_TOO_LONG, "exp - iat over 24 hours")

        for name in IDENTITY_CLAIMS:
            value = claims.get(name)
            if not isinstance(value, str) or not value:
                raise _fail(CLAIM_INVALID, f"{name} missing or not a non-empty string")
        if claims["environment_type"] not in ENVIRONMENT_TYPES:
            raise _fail(CLAIM_INVALID, "environment_type not one of " + " ".join(ENVIRONMENT_TYPES))

        principal = Principal(
            issuer=keys.issuer,
            sub=claims["sub"],
            account=claims["account"],
            project=claims["project"],
            deployment=claims["deployment"],
            environment_type=claims["environment_type"],
            audiences=frozenset(audiences),
            issued_at=iat,
        )
        valid_from = max(iat, nbf if nbf is not None else iat) - leeway
        return _Verified(principal, exp, valid_from, keys, kid, thumbprint)
