"""Properties of :meth:`TokenVerifier.verify` on arbitrary input (docs/reference.md section 3).

Whatever string arrives, ``verify`` either returns the exact :class:`Principal` of a token that
really is valid, or raises :class:`InvalidRequest` / :class:`TemporarilyUnavailable` with one of
the fixed phrases. No other exception escapes, and no string other than a validly signed one is
ever accepted: random text, random three-part base64url strings, and every kind of mutation of a
valid token (flipped, inserted and deleted characters, swapped, duplicated and truncated parts).
Tokens with random headers or random claims, signed with the issuer's real key, are accepted if
and only if the header and claims obey every rule (an oracle written from the rules, so a verifier
that refused everything would fail as surely as one that accepted too much), and randomly drawn
valid tokens are always accepted with exactly their claims.
"""

from __future__ import annotations

import json
import math
import string
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sts.dev.issuer import DevIssuer, b64url
from sts.errors import InvalidRequest, OAuthError, TemporarilyUnavailable
from sts.identity.principal import ENVIRONMENT_TYPES, Principal
from sts.identity.verifier import TokenVerifier
from tests.conftest import AUDIENCE
from tests.phrases import (
    ALGORITHM_NOT_ALLOWED,
    AUDIENCE_NOT_ACCEPTED,
    CLAIM_INVALID,
    HEADER_NOT_ALLOWED,
    IDENTITY_CLAIMS,
    ISSUER_NOT_TRUSTED,
    KEY_NOT_FOUND,
    KEYS_UNAVAILABLE,
    SIGNATURE_INVALID,
    TOKEN_EXPIRED,
    TOKEN_ISSUED_IN_FUTURE,
    TOKEN_LIFETIME_TOO_LONG,
    TOKEN_NOT_YET_VALID,
    TOKEN_TOO_LARGE,
    TOKEN_UNPARSABLE,
)

NOW = 1_800_000_000.0
SKEW = 60  # the fixtures' clock_skew_seconds
DAY = 24 * 3600
B64URL = string.ascii_letters + string.digits + "-_"
PHRASES = frozenset(
    {
        TOKEN_UNPARSABLE,
        TOKEN_TOO_LARGE,
        ALGORITHM_NOT_ALLOWED,
        HEADER_NOT_ALLOWED,
        KEY_NOT_FOUND,
        SIGNATURE_INVALID,
        ISSUER_NOT_TRUSTED,
        AUDIENCE_NOT_ACCEPTED,
        TOKEN_EXPIRED,
        TOKEN_NOT_YET_VALID,
        TOKEN_ISSUED_IN_FUTURE,
        CLAIM_INVALID,
        KEYS_UNAVAILABLE,
        TOKEN_LIFETIME_TOO_LONG,
    }
)
PROPERTY = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def enc(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def valid_claims(issuer: DevIssuer) -> dict[str, Any]:
    return issuer.claims(AUDIENCE, iat=int(NOW) - 10, exp=int(NOW) + 3600)


def valid_header(issuer: DevIssuer) -> dict[str, Any]:
    return {"alg": "RS256", "typ": "JWT", "kid": issuer.key.kid}


def valid_token(issuer: DevIssuer) -> str:
    return issuer.sign(enc(valid_header(issuer)), enc(valid_claims(issuer)))


def principal_of(claims: dict[str, Any], issuer: DevIssuer) -> Principal:
    return Principal(
        issuer=issuer.url,
        sub=claims["sub"],
        account=claims["account"],
        project=claims["project"],
        deployment=claims["deployment"],
        environment_type=claims["environment_type"],
        audiences=frozenset([claims["aud"]] if isinstance(claims["aud"], str) else claims["aud"]),
    )


def outcome(verifier: TokenVerifier, token: str) -> Principal | OAuthError:
    """The Principal, or the refusal; any other exception fails the property."""
    try:
        return verifier.verify(token, now=NOW)
    except TemporarilyUnavailable as exc:
        refusal: OAuthError = exc
    except InvalidRequest as exc:
        refusal = exc
    assert refusal.description in PHRASES, refusal.description
    assert token not in (refusal.cause or "") or len(token) < 24
    return refusal


def assert_only_the_valid_token(verifier: TokenVerifier, issuer: DevIssuer, token: str) -> None:
    valid = valid_token(issuer)
    result = outcome(verifier, token)
    if token == valid:
        assert result == principal_of(valid_claims(issuer), issuer)
    else:
        assert isinstance(result, InvalidRequest), (
            f"accepted a token that is not the valid one: {token!r}"
        )


# --- arbitrary input ----------------------------------------------------------------------------


@PROPERTY
@given(text=st.text(max_size=400))
def test_random_text(text: str, issuer: DevIssuer, verifier: TokenVerifier) -> None:
    assert_only_the_valid_token(verifier, issuer, text)


@PROPERTY
@given(data=st.binary(max_size=400))
def test_random_bytes_as_latin1(data: bytes, issuer: DevIssuer, verifier: TokenVerifier) -> None:
    assert_only_the_valid_token(verifier, issuer, data.decode("latin-1"))


@PROPERTY
@given(parts=st.lists(st.text(alphabet=B64URL + "=+/. ", max_size=80), min_size=1, max_size=6))
def test_random_dotted_base64url(
    parts: list[str], issuer: DevIssuer, verifier: TokenVerifier
) -> None:
    assert_only_the_valid_token(verifier, issuer, ".".join(parts))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=4,
)


@PROPERTY
@given(header=JSON, payload=JSON, signature=st.binary(max_size=300))
def test_random_json_parts_unsigned(
    header: Any, payload: Any, signature: bytes, issuer: DevIssuer, verifier: TokenVerifier
) -> None:
    token = ".".join(b64url(p) for p in (enc(header), enc(payload), signature))
    assert_only_the_valid_token(verifier, issuer, token)


# --- mutations of a valid token ----------------------------------------------------------------

ODD_CHARS = B64URL + ".=+/ \t\n\x00é\u200b\uff0e"


@st.composite
def mutation(draw: st.DrawFn, token: str) -> str:
    parts = token.split(".")
    kind = draw(
        st.sampled_from(
            ["flip", "insert", "delete", "swap", "truncate", "duplicate", "drop", "replace"]
        )
    )
    if kind == "flip":
        i = draw(st.integers(0, len(token) - 1))
        return token[:i] + draw(st.sampled_from(ODD_CHARS)) + token[i + 1 :]
    if kind == "insert":
        i = draw(st.integers(0, len(token)))
        return token[:i] + draw(st.text(alphabet=ODD_CHARS, min_size=1, max_size=4)) + token[i:]
    if kind == "delete":
        i = draw(st.integers(0, len(token) - 1))
        return token[:i] + token[i + draw(st.integers(1, 8)) :]
    if kind == "swap":
        return ".".join(draw(st.permutations(parts)))
    if kind == "truncate":
        return token[: draw(st.integers(0, len(token) - 1))]
    if kind == "duplicate":
        copy = parts[draw(st.integers(0, 2))]
        at = draw(st.integers(0, 3))
        return ".".join([*parts[:at], copy, *parts[at:]])
    if kind == "drop":
        at = draw(st.integers(0, 2))
        return ".".join(parts[:at] + parts[at + 1 :])
    at = draw(st.integers(0, 2))
    parts[at] = draw(st.text(alphabet=B64URL, max_size=40))
    return ".".join(parts)


@PROPERTY
@given(data=st.data())
def test_mutated_valid_token(
    data: st.DataObject, issuer: DevIssuer, verifier: TokenVerifier
) -> None:
    token = valid_token(issuer)
    assert verifier.verify(token, now=NOW) == principal_of(valid_claims(issuer), issuer)
    mutated = data.draw(mutation(token))
    assert_only_the_valid_token(verifier, issuer, mutated)


# --- random headers and claims under a genuine signature ---------------------------------------

HEADER_NAMES = ["alg", "kid", "typ", "crit", "b64", "cty", "enc", "zip", "jku", "x5u", "jwk", "x5c"]
HEADER_VALUES = st.sampled_from(["RS256", "none", "HS256", "JWT", "jwt", "at+jwt", ""]) | JSON


@PROPERTY
@given(
    extra=st.dictionaries(
        st.sampled_from(HEADER_NAMES) | st.text(max_size=6), HEADER_VALUES, max_size=5
    ),
    keep_alg=st.booleans(),
    keep_kid=st.booleans(),
)
def test_signed_random_header(
    extra: dict[str, Any],
    keep_alg: bool,
    keep_kid: bool,
    issuer: DevIssuer,
    verifier: TokenVerifier,
) -> None:
    header = {**extra}
    if keep_alg:
        header["alg"] = "RS256"
    if keep_kid:
        header["kid"] = issuer.key.kid
    result = outcome(verifier, issuer.sign(enc(header), enc(valid_claims(issuer))))
    typ = header.get("typ", "JWT")
    valid = (
        finite(header)
        and header.get("alg") == "RS256"
        and header.get("kid") == issuer.key.kid
        and not {"crit", "b64", "cty", "enc", "zip"} & header.keys()
        and isinstance(typ, str)
        and typ.lower() in ("jwt", "application/jwt")
        and key_headers_well_typed(header)
    )
    if valid:
        assert result == principal_of(valid_claims(issuer), issuer), header
    else:
        assert isinstance(result, InvalidRequest), f"accepted a header that breaks a rule: {header}"


def finite(value: Any) -> bool:
    """RFC 8259 section 6 has no NaN or Infinity: a part holding one is not JSON at all."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(finite(v) for v in value.values())
    if isinstance(value, list):
        return all(finite(v) for v in value)
    return True


def key_headers_well_typed(header: dict[str, Any]) -> bool:
    """RFC 7515 4.1.2-4.1.8: never followed, but a mistyped value is a malformed header."""
    for name in ("jku", "x5u"):
        value = header.get(name, "https://absent")
        if not isinstance(value, str) or not value.startswith(("http://", "https://")):
            return False
    x5c = header.get("x5c", [])
    if not isinstance(x5c, list) or not all(isinstance(c, str) for c in x5c):
        return False
    if not isinstance(header.get("jwk", {}), dict):
        return False
    return all(isinstance(header.get(n, ""), str) for n in ("x5t", "x5t#S256"))


CLAIM_VALUES = (
    st.sampled_from(["", "my-account", "production", "preview", AUDIENCE, [AUDIENCE]])
    | st.integers(int(NOW) - 200, int(NOW) + 200)
    | st.floats(NOW - 200, NOW + 200)
    # Around the 24-hour lifetime edge for the valid claims' iat (NOW - 10), and a day back.
    | st.integers(int(NOW) - 10 + DAY - 100, int(NOW) - 10 + DAY + 100)
    | st.integers(int(NOW) - DAY - 100, int(NOW) - DAY + 100)
    | JSON
)


@PROPERTY
@given(
    changes=st.dictionaries(
        st.sampled_from(
            ["iss", "aud", "exp", "iat", "nbf", *IDENTITY_CLAIMS, "zz"],
        ),
        CLAIM_VALUES,
        max_size=4,
    ),
    drop=st.sets(st.sampled_from(["iss", "aud", "exp", "iat", *IDENTITY_CLAIMS]), max_size=2),
)
def test_signed_random_claims(
    changes: dict[str, Any],
    drop: set[str],
    issuer: DevIssuer,
    verifier: TokenVerifier,
) -> None:
    claims = {**valid_claims(issuer), **changes}
    for name in drop:
        claims.pop(name, None)
    result = outcome(verifier, issuer.sign(enc(valid_header(issuer)), enc(claims)))
    if claims_obey_the_rules(claims, issuer):
        assert result == principal_of(claims, issuer), claims
    else:
        assert isinstance(result, InvalidRequest), f"accepted claims that break a rule: {claims}"


def _number(value: Any) -> bool:
    if type(value) is int:
        return abs(value) < 10**300
    return type(value) is float and math.isfinite(value)


def claims_obey_the_rules(claims: dict[str, Any], issuer: DevIssuer) -> bool:
    """The README's token checks, written out independently of the verifier."""
    if not finite(claims) or claims.get("iss") != issuer.url:
        return False
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or not audiences:
        return False
    if not all(isinstance(a, str) for a in audiences) or AUDIENCE not in audiences:
        return False
    times = ("exp", "iat", *(("nbf",) if "nbf" in claims else ()))
    if not all(name in claims and _number(claims[name]) for name in times):
        return False
    exp, iat, nbf = claims["exp"], claims["iat"], claims.get("nbf")
    if not (exp + SKEW > NOW and iat <= NOW + SKEW and exp - iat <= DAY):
        return False
    if nbf is not None and nbf - SKEW > NOW:
        return False
    if not all(isinstance(claims.get(n), str) and claims[n] for n in IDENTITY_CLAIMS):
        return False
    return claims["environment_type"] in ENVIRONMENT_TYPES


# --- valid tokens drawn at random are accepted --------------------------------------------------

NAMES = st.text(min_size=1, max_size=30)


@st.composite
def valid_random_claims(draw: st.DrawFn, issuer: DevIssuer) -> dict[str, Any]:
    iat = draw(st.integers(int(NOW) - DAY, int(NOW) + SKEW) | st.floats(NOW - DAY, NOW + SKEW))
    # exp after now - leeway, and no more than a day after iat.
    low = max(NOW - SKEW + 1, iat)
    exp = draw(st.floats(low, iat + DAY) | st.integers(int(low) + 1, int(iat + DAY)))
    others = draw(st.lists(st.text(max_size=20).filter(lambda a: a != AUDIENCE), max_size=3))
    at = draw(st.integers(0, len(others)))
    audiences = [*others[:at], AUDIENCE, *others[at:]]
    claims: dict[str, Any] = {
        "iss": issuer.url,
        "aud": draw(st.sampled_from([audiences, AUDIENCE])) if not others else audiences,
        "iat": iat,
        "exp": exp,
        "sub": draw(NAMES),
        "account": draw(NAMES),
        "project": draw(NAMES),
        "deployment": draw(NAMES),
        "environment_type": draw(st.sampled_from(ENVIRONMENT_TYPES)),
        "zz": draw(JSON.filter(finite)),  # unknown claims are ignored
    }
    if draw(st.booleans()):
        claims["nbf"] = draw(st.floats(NOW - DAY, NOW + SKEW))
    return claims


@PROPERTY
@given(data=st.data(), typ=st.sampled_from([None, "JWT", "jwt", "application/jwt", "JwT"]))
def test_valid_random_tokens_are_accepted(
    data: st.DataObject, typ: str | None, issuer: DevIssuer, verifier: TokenVerifier
) -> None:
    claims = data.draw(valid_random_claims(issuer))
    header: dict[str, Any] = {"alg": "RS256", "kid": issuer.key.kid}
    if typ is not None:
        header["typ"] = typ
    assert claims_obey_the_rules(claims, issuer)
    assert outcome(verifier, issuer.sign(enc(header), enc(claims))) == principal_of(claims, issuer)
