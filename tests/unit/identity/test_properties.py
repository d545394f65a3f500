"""Properties of :meth:`TokenVerifier.verify` on arbitrary input (CONTRACT section 3).

Whatever string arrives, ``verify`` either returns the exact :class:`Principal` of a token that
really is valid, or raises :class:`InvalidRequest` / :class:`TemporarilyUnavailable` with one of
the fixed phrases. No other exception escapes, and no string other than a validly signed one is
ever accepted: random text, random three-part base64url strings, and every kind of mutation of a
valid token (flipped, inserted and deleted characters, swapped, duplicated and truncated parts).
Tokens with random headers or random claims, signed with the issuer's real key, are accepted only
when the header and claims obey every rule.
"""

from __future__ import annotations

import json
import string
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sts.dev.issuer import DevIssuer, b64url
from sts.errors import InvalidRequest, OAuthError, TemporarilyUnavailable
from sts.identity import verifier as v
from sts.identity.principal import ENVIRONMENT_TYPES, Principal
from sts.identity.verifier import TokenVerifier
from tests.conftest import AUDIENCE

NOW = 1_800_000_000.0
SKEW = 60  # the fixtures' clock_skew_seconds
B64URL = string.ascii_letters + string.digits + "-_"
PHRASES = frozenset(
    {
        v.TOKEN_UNPARSABLE,
        v.TOKEN_TOO_LARGE,
        v.ALGORITHM_NOT_ALLOWED,
        v.HEADER_NOT_ALLOWED,
        v.KEY_NOT_FOUND,
        v.SIGNATURE_INVALID,
        v.ISSUER_NOT_TRUSTED,
        v.AUDIENCE_NOT_ACCEPTED,
        v.TOKEN_EXPIRED,
        v.TOKEN_NOT_YET_VALID,
        v.TOKEN_ISSUED_IN_FUTURE,
        v.CLAIM_INVALID,
        v.KEYS_UNAVAILABLE,
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
        expires_at=int(claims["exp"]),
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
    if isinstance(result, Principal):
        # Accepted only with exactly the rules of CONTRACT section 3 satisfied.
        assert header.get("alg") == "RS256"
        assert header.get("kid") == issuer.key.kid
        assert not {"crit", "b64", "cty", "enc", "zip"} & header.keys()
        typ = header.get("typ", "JWT")
        assert isinstance(typ, str)
        assert typ.lower() in ("jwt", "application/jwt")
        assert result == principal_of(valid_claims(issuer), issuer)


CLAIM_VALUES = (
    st.sampled_from(["", "my-account", "production", "preview", AUDIENCE, [AUDIENCE]])
    | st.integers(int(NOW) - 200, int(NOW) + 200)
    | st.floats(NOW - 200, NOW + 200)
    | JSON
)


@PROPERTY
@given(
    changes=st.dictionaries(
        st.sampled_from(
            ["iss", "aud", "exp", "iat", "nbf", *v.IDENTITY_CLAIMS, "zz"],
        ),
        CLAIM_VALUES,
        max_size=4,
    ),
    drop=st.sets(st.sampled_from(["iss", "aud", "exp", "iat", *v.IDENTITY_CLAIMS]), max_size=2),
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
    if isinstance(result, Principal):
        assert claims["iss"] == issuer.url
        aud = claims["aud"]
        assert aud == AUDIENCE or (isinstance(aud, list) and AUDIENCE in aud)
        for name in ("exp", "iat", *(("nbf",) if "nbf" in claims else ())):
            assert type(claims[name]) in (int, float), name
        assert claims["exp"] + SKEW > NOW
        assert claims["iat"] <= NOW + SKEW
        assert "nbf" not in claims or claims["nbf"] - SKEW <= NOW
        for name in v.IDENTITY_CLAIMS:
            assert isinstance(claims[name], str)
            assert claims[name]
        assert claims["environment_type"] in ENVIRONMENT_TYPES
        assert result == principal_of(claims, issuer)
