"""Token validation rules (docs/reference.md section 3): a table row per rule, a live issuer."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from sts.dev.issuer import DevIssuer, SigningKey, b64url
from sts.errors import InvalidRequest
from sts.identity import verifier as verifier_module
from sts.identity.jwks import JWKSRegistry
from sts.identity.principal import Principal
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
    MAX_TOKEN_BYTES,
    SIGNATURE_INVALID,
    TOKEN_EXPIRED,
    TOKEN_ISSUED_IN_FUTURE,
    TOKEN_LIFETIME_TOO_LONG,
    TOKEN_NOT_YET_VALID,
    TOKEN_TOO_LARGE,
    TOKEN_UNPARSABLE,
)
from tests.unit.identity.conftest import settings_for

NOW = 1_800_000_000.0
SKEW = 60  # settings_for's default clock_skew_seconds
DAY = 24 * 3600
DROP = object()


def enc(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _apply(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    for name, value in changes.items():
        if value is DROP:
            base.pop(name, None)
        else:
            base[name] = value
    return base


def header(i: DevIssuer, **changes: Any) -> dict[str, Any]:
    return _apply({"alg": "RS256", "typ": "JWT", "kid": i.key.kid}, changes)


def claims(i: DevIssuer, **changes: Any) -> dict[str, Any]:
    base = i.claims(AUDIENCE, iat=int(NOW) - 10, exp=int(NOW) + 3600)
    return _apply(base, changes)


def tok(i: DevIssuer, hdr: dict[str, Any] | None = None, **claim_changes: Any) -> str:
    return i.sign(enc(hdr if hdr is not None else header(i)), enc(claims(i, **claim_changes)))


def hdr_tok(**changes: Any) -> Callable[[DevIssuer], str]:
    return lambda i: tok(i, header(i, **changes))


def claim_tok(**changes: Any) -> Callable[[DevIssuer], str]:
    return lambda i: tok(i, **changes)


def raw_tok(header_bytes: bytes | None = None, payload: bytes | None = None) -> Callable[..., str]:
    def build(i: DevIssuer) -> str:
        h = header_bytes if header_bytes is not None else enc(header(i))
        return i.sign(h.replace(b"KID", i.key.kid.encode()), payload or enc(claims(i)))

    return build


def replace_part(index: int, change: Callable[[str], str]) -> Callable[[DevIssuer], str]:
    def build(i: DevIssuer) -> str:
        parts = tok(i).split(".")
        parts[index] = change(parts[index])
        return ".".join(parts)

    return build


def insert(text: str) -> Callable[[str], str]:
    return lambda part: part[:10] + text + part[10:]


def padded(part: str) -> str:
    assert len(part) % 4, "the part needs no padding; the case would test nothing"
    return part + "=" * (-len(part) % 4)


def std_alphabet(part: str) -> str:
    changed = part.replace("-", "+").replace("_", "/")
    assert changed != part
    return changed


def non_canonical(part: str) -> str:
    # A 256-byte signature is 342 characters (2 mod 4): the last one carries 4 unused bits.
    assert len(part) % 4 == 2
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return part[:-1] + alphabet[alphabet.index(part[-1]) + 1]


def padding_needed_token(part: int) -> Callable[[DevIssuer], str]:
    """A token whose header (0) or payload (1) needs padding, with the padding added."""

    def build(i: DevIssuer) -> str:
        for filler in range(4):
            hdr = header(i, **({"zz": "x" * filler} if part == 0 else {}))
            body = claims(i, **({"zz": "x" * filler} if part == 1 else {}))
            parts = i.sign(enc(hdr), enc(body)).split(".")
            if len(parts[part]) % 4:
                parts[part] = padded(parts[part])
                return ".".join(parts)
        raise AssertionError("unreachable")

    return build


def alg_none(i: DevIssuer) -> str:
    return f"{b64url(enc(header(i, alg='none')))}.{b64url(enc(claims(i)))}."


def hs256_with_public_key(i: DevIssuer) -> str:
    # The classic confusion: an HMAC keyed with the issuer's public key, which anyone has.
    pem = i.key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{b64url(enc(header(i, alg='HS256')))}.{b64url(enc(claims(i)))}"
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def other_key_same_kid(i: DevIssuer) -> str:
    impostor = SigningKey.generate(kid=i.key.kid)
    return i.sign(enc(header(i)), enc(claims(i)), key=impostor)


def tampered_payload(i: DevIssuer) -> str:
    h, _, s = tok(i).split(".")
    return f"{h}.{b64url(enc(claims(i, account='someone-else')))}.{s}"


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[DevIssuer], str]
    error: str | None  # None: the token verifies


def case(id: str, build: Callable[[DevIssuer], str], error: str | None) -> Any:
    return pytest.param(Case(id, build, error), id=id)


OK = None
CASES = [
    case("happy path", claim_tok(), OK),
    # --- structure: compact JWS, strict unpadded base64url, strict JSON
    case("two parts", lambda i: tok(i).rsplit(".", 1)[0], TOKEN_UNPARSABLE),
    case("four parts", lambda i: tok(i) + ".AAAA", TOKEN_UNPARSABLE),
    case("five parts (JWE shape)", lambda i: tok(i) + "..", TOKEN_UNPARSABLE),
    case("one part", lambda i: tok(i).split(".")[1], TOKEN_UNPARSABLE),
    case("empty string", lambda i: "", TOKEN_UNPARSABLE),
    case("only dots", lambda i: "..", TOKEN_UNPARSABLE),
    case("padding on signature", replace_part(2, padded), TOKEN_UNPARSABLE),
    case("padding on header", padding_needed_token(0), TOKEN_UNPARSABLE),
    case("padding on payload", padding_needed_token(1), TOKEN_UNPARSABLE),
    case("leading space", lambda i: " " + tok(i), TOKEN_UNPARSABLE),
    case("trailing newline", lambda i: tok(i) + "\n", TOKEN_UNPARSABLE),
    case("space inside payload", replace_part(1, insert(" ")), TOKEN_UNPARSABLE),
    case("tab inside signature", replace_part(2, insert("\t")), TOKEN_UNPARSABLE),
    case("+/ alphabet in signature", replace_part(2, std_alphabet), TOKEN_UNPARSABLE),
    case("non-canonical trailing bits", replace_part(2, non_canonical), TOKEN_UNPARSABLE),
    case("impossible length", replace_part(2, lambda p: p + "AA" + "A"), TOKEN_UNPARSABLE),
    case("non-ASCII", replace_part(1, lambda p: p[:5] + "é" + p[5:]), TOKEN_UNPARSABLE),
    case("header is a JSON array", raw_tok(header_bytes=b"[]"), TOKEN_UNPARSABLE),
    case("header is not JSON", raw_tok(header_bytes=b"{alg: RS256}"), TOKEN_UNPARSABLE),
    case("payload is a JSON string", raw_tok(payload=b'"claims"'), TOKEN_UNPARSABLE),
    case("payload is not UTF-8", raw_tok(payload=b'{"sub":"\xff"}'), TOKEN_UNPARSABLE),
    case(
        "duplicate kid in header",
        raw_tok(header_bytes=b'{"alg":"RS256","kid":"KID","kid":"KID"}'),
        TOKEN_UNPARSABLE,
    ),
    case(
        "duplicate alg in header, last one RS256",
        raw_tok(header_bytes=b'{"alg":"none","kid":"KID","alg":"RS256"}'),
        TOKEN_UNPARSABLE,
    ),
    case(
        "duplicate sub in payload",
        lambda i: i.sign(enc(header(i)), enc(claims(i))[:-1] + b',"sub":"atcl_somebody_else"}'),
        TOKEN_UNPARSABLE,
    ),
    case(
        "NaN exp",
        lambda i: i.sign(enc(header(i)), enc(claims(i, exp=DROP))[:-1] + b',"exp":NaN}'),
        TOKEN_UNPARSABLE,
    ),
    case(
        "overflowing exp",
        lambda i: i.sign(enc(header(i)), enc(claims(i, exp=DROP))[:-1] + b',"exp":1e400}'),
        TOKEN_UNPARSABLE,
    ),
    # --- algorithm
    case("alg none, no signature", alg_none, ALGORITHM_NOT_ALLOWED),
    case("alg none, RSA signature", hdr_tok(alg="none"), ALGORITHM_NOT_ALLOWED),
    case("HS256 keyed with the public key", hs256_with_public_key, ALGORITHM_NOT_ALLOWED),
    case("RS512", hdr_tok(alg="RS512"), ALGORITHM_NOT_ALLOWED),
    case("ES256", hdr_tok(alg="ES256"), ALGORITHM_NOT_ALLOWED),
    case("PS256", hdr_tok(alg="PS256"), ALGORITHM_NOT_ALLOWED),
    case("rs256 lower case", hdr_tok(alg="rs256"), ALGORITHM_NOT_ALLOWED),
    case("alg as a list", hdr_tok(alg=["RS256"]), ALGORITHM_NOT_ALLOWED),
    case("alg null", hdr_tok(alg=None), ALGORITHM_NOT_ALLOWED),
    case("alg missing", hdr_tok(alg=DROP), ALGORITHM_NOT_ALLOWED),
    # --- header parameters
    case("crit with a value", hdr_tok(crit=["exp"], exp=1), HEADER_NOT_ALLOWED),
    case("crit empty", hdr_tok(crit=[]), HEADER_NOT_ALLOWED),
    case("b64 false", hdr_tok(b64=False), HEADER_NOT_ALLOWED),
    case("b64 true", hdr_tok(b64=True), HEADER_NOT_ALLOWED),
    case("cty JWT (nested)", hdr_tok(cty="JWT"), HEADER_NOT_ALLOWED),
    case("cty null", hdr_tok(cty=None), HEADER_NOT_ALLOWED),
    case("enc (JWE)", hdr_tok(enc="A256GCM"), HEADER_NOT_ALLOWED),
    case("typ at+jwt", hdr_tok(typ="at+jwt"), HEADER_NOT_ALLOWED),
    case("typ not a string", hdr_tok(typ=1), HEADER_NOT_ALLOWED),
    case("typ lower case jwt", hdr_tok(typ="jwt"), OK),
    case("typ application/jwt", hdr_tok(typ="application/jwt"), OK),
    case("typ absent", hdr_tok(typ=DROP), OK),
    case("kid missing", hdr_tok(kid=DROP), KEY_NOT_FOUND),
    case("kid empty", hdr_tok(kid=""), KEY_NOT_FOUND),
    case("kid not a string", hdr_tok(kid=5), KEY_NOT_FOUND),
    case("kid null", hdr_tok(kid=None), KEY_NOT_FOUND),
    case("kid unknown", hdr_tok(kid="atky_unknown"), KEY_NOT_FOUND),
    # --- signature
    case("another key under the right kid", other_key_same_kid, SIGNATURE_INVALID),
    case("payload changed after signing", tampered_payload, SIGNATURE_INVALID),
    case("empty signature", replace_part(2, lambda p: ""), SIGNATURE_INVALID),
    # --- issuer
    case("iss missing", claim_tok(iss=DROP), ISSUER_NOT_TRUSTED),
    case("iss with trailing slash", lambda i: tok(i, iss=i.url + "/"), ISSUER_NOT_TRUSTED),
    case("iss upper-case scheme", lambda i: tok(i, iss="HTTP" + i.url[4:]), ISSUER_NOT_TRUSTED),
    case("iss as a list", lambda i: tok(i, iss=[i.url]), ISSUER_NOT_TRUSTED),
    case("iss null", claim_tok(iss=None), ISSUER_NOT_TRUSTED),
    case(
        "iss the real Zuplo issuer, not configured",
        claim_tok(iss="https://dev.zuplo.com/v1/client-auth/auth_o8PUdhKxSTOiB794GWPwLQCD"),
        ISSUER_NOT_TRUSTED,
    ),
    # --- audience
    case("aud list containing ours", claim_tok(aud=["https://other", AUDIENCE]), OK),
    case("aud list without ours", claim_tok(aud=["https://other"]), AUDIENCE_NOT_ACCEPTED),
    case("aud another string", claim_tok(aud="https://other"), AUDIENCE_NOT_ACCEPTED),
    case("aud ours with a slash", claim_tok(aud=AUDIENCE + "/"), AUDIENCE_NOT_ACCEPTED),
    case("aud missing", claim_tok(aud=DROP), CLAIM_INVALID),
    case("aud empty list", claim_tok(aud=[]), CLAIM_INVALID),
    case("aud a number", claim_tok(aud=5), CLAIM_INVALID),
    case("aud list with a non-string", claim_tok(aud=[AUDIENCE, 5]), CLAIM_INVALID),
    case("aud null", claim_tok(aud=None), CLAIM_INVALID),
    # --- exp (leeway 60 s: valid while now < exp + 60)
    case("exp just inside leeway", claim_tok(exp=int(NOW) - SKEW + 1), OK),
    case("exp float inside leeway", claim_tok(exp=NOW - SKEW + 0.5), OK),
    case("exp exactly at leeway", claim_tok(exp=int(NOW) - SKEW), TOKEN_EXPIRED),
    case("exp outside leeway", claim_tok(exp=int(NOW) - SKEW - 1), TOKEN_EXPIRED),
    case("exp an hour ago", claim_tok(exp=int(NOW) - 3600, iat=int(NOW) - 7200), TOKEN_EXPIRED),
    case("exp missing", claim_tok(exp=DROP), CLAIM_INVALID),
    case("exp a string", claim_tok(exp=str(int(NOW) + 3600)), CLAIM_INVALID),
    case("exp true", claim_tok(exp=True), CLAIM_INVALID),
    case("exp null", claim_tok(exp=None), CLAIM_INVALID),
    case("exp a list", claim_tok(exp=[int(NOW) + 3600]), CLAIM_INVALID),
    # --- lifetime: exp - iat at most 24 hours, whatever the clock
    case("lifetime exactly 24 h", claim_tok(iat=int(NOW) - 10, exp=int(NOW) - 10 + DAY), OK),
    case(
        "lifetime 24 h + 1 s",
        claim_tok(iat=int(NOW) - 10, exp=int(NOW) - 10 + DAY + 1),
        TOKEN_LIFETIME_TOO_LONG,
    ),
    case(
        "lifetime 24 h + 0.5 s (float exp)",
        claim_tok(iat=int(NOW) - 10, exp=NOW - 10 + DAY + 0.5),
        TOKEN_LIFETIME_TOO_LONG,
    ),
    case("lifetime: exp 10**20", claim_tok(exp=10**20), TOKEN_LIFETIME_TOO_LONG),
    case("lifetime: exp 1e300", claim_tok(exp=1e300), TOKEN_LIFETIME_TOO_LONG),
    case(
        "lifetime: iat long ago, exp in the future",
        claim_tok(iat=int(NOW) - 2 * DAY, exp=int(NOW) + 3600),
        TOKEN_LIFETIME_TOO_LONG,
    ),
    # --- nbf (valid once now >= nbf - 60)
    case("nbf in the past", claim_tok(nbf=int(NOW) - 100), OK),
    case("nbf at the leeway edge", claim_tok(nbf=int(NOW) + SKEW), OK),
    case("nbf just past the leeway", claim_tok(nbf=int(NOW) + SKEW + 1), TOKEN_NOT_YET_VALID),
    case("nbf float past the leeway", claim_tok(nbf=NOW + SKEW + 0.5), TOKEN_NOT_YET_VALID),
    case("nbf a string", claim_tok(nbf=str(int(NOW))), CLAIM_INVALID),
    case("nbf false", claim_tok(nbf=False), CLAIM_INVALID),
    case("nbf null", claim_tok(nbf=None), CLAIM_INVALID),
    # --- iat (not after now + 60)
    case("iat at the leeway edge", claim_tok(iat=int(NOW) + SKEW), OK),
    case("iat just past the leeway", claim_tok(iat=int(NOW) + SKEW + 1), TOKEN_ISSUED_IN_FUTURE),
    case("iat missing", claim_tok(iat=DROP), CLAIM_INVALID),
    case("iat a string", claim_tok(iat=str(int(NOW))), CLAIM_INVALID),
    case("iat false", claim_tok(iat=False), CLAIM_INVALID),
    case("iat null", claim_tok(iat=None), CLAIM_INVALID),
    # --- environment_type
    case("environment_type preview", claim_tok(environment_type="preview"), OK),
    case("environment_type development", claim_tok(environment_type="development"), OK),
    case("environment_type staging", claim_tok(environment_type="staging"), CLAIM_INVALID),
    case("environment_type Production", claim_tok(environment_type="Production"), CLAIM_INVALID),
    # --- jku, x5u, jwk, x5c are ignored (never fetched; see the attacker tests below)
    case("jku ignored", hdr_tok(jku="http://127.0.0.1:9/jwks.json"), OK),
    case("x5u ignored", hdr_tok(x5u="http://127.0.0.1:9/cert.pem"), OK),
    case("x5c ignored", hdr_tok(x5c=["MIIB"]), OK),
]


@pytest.mark.parametrize("rule", CASES)
def test_rule(rule: Case, issuer: DevIssuer, verifier: TokenVerifier) -> None:
    token = rule.build(issuer)
    if rule.error is None:
        principal = verifier.verify(token, now=NOW)
        assert principal.issuer == issuer.url
        return
    with pytest.raises(InvalidRequest) as info:
        verifier.verify(token, now=NOW)
    assert info.value.description == rule.error
    assert info.value.cause  # logs get the detail


@pytest.mark.parametrize("name", IDENTITY_CLAIMS)
@pytest.mark.parametrize("value", [DROP, "", 5, None, ["x"], {"a": "b"}, True])
def test_identity_claim_must_be_non_empty_string(
    name: str, value: Any, issuer: DevIssuer, verifier: TokenVerifier
) -> None:
    with pytest.raises(InvalidRequest) as info:
        verifier.verify(tok(issuer, **{name: value}), now=NOW)
    assert info.value.description == CLAIM_INVALID


def test_principal_carries_the_claims_and_every_audience(
    issuer: DevIssuer, verifier: TokenVerifier
) -> None:
    token = tok(
        issuer,
        sub="atcl_abc",
        account="acct",
        project="proj",
        deployment="dep-1",
        environment_type="preview",
        aud=["https://other.example", AUDIENCE, AUDIENCE],
    )
    assert verifier.verify(token, now=NOW) == Principal(
        issuer=issuer.url,
        sub="atcl_abc",
        account="acct",
        project="proj",
        deployment="dep-1",
        environment_type="preview",
        audiences=frozenset({"https://other.example", AUDIENCE}),
    )


def test_audiences_are_a_set_whatever_the_order(issuer: DevIssuer, verifier: TokenVerifier) -> None:
    forward = verifier.verify(tok(issuer, aud=[AUDIENCE, "https://b.example"]), now=NOW)
    backward = verifier.verify(tok(issuer, aud=["https://b.example", AUDIENCE]), now=NOW)
    single = verifier.verify(tok(issuer, aud=AUDIENCE), now=NOW)
    assert forward == backward
    assert forward.audiences == {AUDIENCE, "https://b.example"}
    assert single.audiences == {AUDIENCE}
    assert single != forward


def test_zuplo_shaped_token_from_mint(issuer: DevIssuer, verifier: TokenVerifier) -> None:
    """DevIssuer.mint's defaults (a real ``time.time()``) verify with the default clock."""
    principal = verifier.verify(issuer.mint())
    assert (principal.account, principal.environment_type) == ("my-account", "production")


def test_description_never_echoes_the_token(issuer: DevIssuer, verifier: TokenVerifier) -> None:
    token = tok(issuer, aud="https://other")
    with pytest.raises(InvalidRequest) as info:
        verifier.verify(token, now=NOW)
    for text in (info.value.description, info.value.cause or "", str(info.value)):
        assert token not in text
        assert "https://other" not in text


def _token_of_length(i: DevIssuer, target: int) -> str:
    """A validly signed token whose length is ``target`` or the nearest length below it."""
    base = len(tok(i, zz=""))
    filler = (target - base) * 3 // 4
    best = ""
    for n in range(max(0, filler - 4), filler + 4):
        t = tok(i, zz="x" * n)
        if len(t) <= target and len(t) > len(best):
            best = t
    return best


def test_size_limit_is_16_kib(issuer: DevIssuer, verifier: TokenVerifier) -> None:
    largest = _token_of_length(issuer, MAX_TOKEN_BYTES)
    assert MAX_TOKEN_BYTES - 2 <= len(largest) <= MAX_TOKEN_BYTES
    verifier.verify(largest, now=NOW)

    too_large = _token_of_length(issuer, MAX_TOKEN_BYTES + 4)
    assert len(too_large) > MAX_TOKEN_BYTES
    with pytest.raises(InvalidRequest) as info:
        verifier.verify(too_large, now=NOW)
    assert info.value.description == TOKEN_TOO_LARGE


def test_oversized_garbage_is_too_large_not_unparsable(verifier: TokenVerifier) -> None:
    for junk in ("=" * (MAX_TOKEN_BYTES + 1), "é" * (MAX_TOKEN_BYTES // 2 + 1)):
        with pytest.raises(InvalidRequest) as info:
            verifier.verify(junk, now=NOW)
        assert info.value.description == TOKEN_TOO_LARGE
    assert verifier.signature_checks == 0


# --- headers that name keys or URLs never make us fetch anything -----------------------------


def test_jku_to_attacker_jwks_is_never_fetched(
    issuer: DevIssuer, attacker: DevIssuer, verifier: TokenVerifier
) -> None:
    forged = issuer.sign(
        enc({"alg": "RS256", "kid": attacker.key.kid, "jku": attacker.jwks_url}),
        enc(claims(issuer)),
        key=attacker.key,
    )
    with pytest.raises(InvalidRequest) as info:
        verifier.verify(forged, now=NOW)
    assert info.value.description == KEY_NOT_FOUND
    assert attacker.fetches == 0


def test_x5u_to_attacker_is_never_fetched(
    issuer: DevIssuer, attacker: DevIssuer, verifier: TokenVerifier
) -> None:
    forged = issuer.sign(
        enc({"alg": "RS256", "kid": attacker.key.kid, "x5u": attacker.jwks_url}),
        enc(claims(issuer)),
        key=attacker.key,
    )
    with pytest.raises(InvalidRequest) as info:
        verifier.verify(forged, now=NOW)
    assert info.value.description == KEY_NOT_FOUND
    assert attacker.fetches == 0


def test_embedded_jwk_is_not_used(
    issuer: DevIssuer, attacker: DevIssuer, verifier: TokenVerifier
) -> None:
    forged = issuer.sign(
        enc({"alg": "RS256", "kid": issuer.key.kid, "jwk": attacker.key.public_jwk()}),
        enc(claims(issuer)),
        key=attacker.key,
    )
    with pytest.raises(InvalidRequest) as info:
        verifier.verify(forged, now=NOW)
    assert info.value.description == SIGNATURE_INVALID
    assert attacker.fetches == 0


def test_untrusted_iss_never_reaches_its_jwks(
    issuer: DevIssuer, attacker: DevIssuer, verifier: TokenVerifier
) -> None:
    forged = attacker.sign(
        enc({"alg": "RS256", "kid": attacker.key.kid, "jku": attacker.jwks_url}),
        enc(claims(attacker)),
    )
    with pytest.raises(InvalidRequest) as info:
        verifier.verify(forged, now=NOW)
    assert info.value.description == ISSUER_NOT_TRUSTED
    assert attacker.fetches == 0


# --- the verified-token cache ------------------------------------------------------------------


def test_repeat_token_does_no_rsa_work(issuer: DevIssuer, verifier: TokenVerifier) -> None:
    token = tok(issuer)
    first = verifier.verify(token, now=NOW)
    fetches = issuer.fetches
    for _ in range(5):
        assert verifier.verify(token, now=NOW + 100) == first
    assert verifier.signature_checks == 1
    assert issuer.fetches == fetches


def test_cached_token_still_expires(issuer: DevIssuer, verifier: TokenVerifier) -> None:
    token = tok(issuer, exp=int(NOW) + 100)
    verifier.verify(token, now=NOW)
    verifier.verify(token, now=NOW + 100 + SKEW - 1)
    with pytest.raises(InvalidRequest) as info:
        verifier.verify(token, now=NOW + 100 + SKEW)
    assert info.value.description == TOKEN_EXPIRED
    assert verifier.signature_checks == 1


def test_cached_token_rechecked_when_clock_is_earlier(
    issuer: DevIssuer, verifier: TokenVerifier
) -> None:
    token = tok(issuer, iat=int(NOW))
    verifier.verify(token, now=NOW)
    with pytest.raises(InvalidRequest) as info:
        verifier.verify(token, now=NOW - SKEW - 1)
    assert info.value.description == TOKEN_ISSUED_IN_FUTURE


def test_failed_tokens_are_not_cached(issuer: DevIssuer, verifier: TokenVerifier) -> None:
    token = tok(issuer, aud="https://other")
    for _ in range(2):
        with pytest.raises(InvalidRequest):
            verifier.verify(token, now=NOW)
    assert verifier.signature_checks == 2


def test_cache_is_bounded_lru(issuer: DevIssuer, registry: JWKSRegistry) -> None:
    small = TokenVerifier(settings_for(issuer), registry, cache_size=2)
    a, b, c = (tok(issuer, sub=f"atcl_{n}") for n in "abc")
    for token in (a, b, a, c):  # c evicts b, the least recently used
        small.verify(token, now=NOW)
    assert small.signature_checks == 3
    small.verify(a, now=NOW)
    assert small.signature_checks == 3
    small.verify(b, now=NOW)
    assert small.signature_checks == 4


def test_hs256_confusion_is_base64_exact(issuer: DevIssuer) -> None:
    """Guard for the table: the HS256 token really is a well-formed HMAC token."""
    token = hs256_with_public_key(issuer)
    header_part = token.split(".")[0]
    decoded = base64.urlsafe_b64decode(header_part + "=" * (-len(header_part) % 4))
    assert json.loads(decoded)["alg"] == "HS256"


# --- The header memo: an issuer's header, checked once, is known by its exact spelling.


def _segment(token: str) -> str:
    return token.split(".", maxsplit=1)[0]


def test_a_remembered_header_still_leaves_every_other_check_to_each_token(
    issuer: DevIssuer, verifier: TokenVerifier
) -> None:
    good = tok(issuer)
    verifier.verify(good, now=NOW)
    assert _segment(good) in verifier_module._checked_headers
    # Same header spelling: the signature, the key and every claim are still checked.
    refused = {
        SIGNATURE_INVALID: [tampered_payload(issuer), other_key_same_kid(issuer)],
        TOKEN_EXPIRED: [tok(issuer, exp=int(NOW) - SKEW - 1)],
        AUDIENCE_NOT_ACCEPTED: [tok(issuer, aud="https://other")],
        ISSUER_NOT_TRUSTED: [tok(issuer, iss="https://not-trusted.example")],
        CLAIM_INVALID: [tok(issuer, account="")],
    }
    for phrase, tokens in refused.items():
        for token in tokens:
            assert _segment(token) == _segment(good)
            with pytest.raises(InvalidRequest) as info:
                verifier.verify(token, now=NOW)
            assert info.value.description == phrase


def test_a_header_is_remembered_only_once_its_token_verified(
    issuer: DevIssuer, verifier: TokenVerifier
) -> None:
    new_header = header(issuer, zz="forged-first")
    forged = tok(issuer, new_header).rsplit(".", 1)[0] + "." + b64url(b"\x00" * 256)
    with pytest.raises(InvalidRequest) as info:
        verifier.verify(forged, now=NOW)
    assert info.value.description == SIGNATURE_INVALID
    assert _segment(forged) not in verifier_module._checked_headers
    for refused_header in (header(issuer, crit=["exp"]), header(issuer, alg="HS256")):
        with pytest.raises(InvalidRequest):
            verifier.verify(tok(issuer, refused_header), now=NOW)
        assert b64url(enc(refused_header)) not in verifier_module._checked_headers
    signed = tok(issuer, new_header)
    verifier.verify(signed, now=NOW)
    assert _segment(signed) in verifier_module._checked_headers


def test_the_header_memo_is_bounded(issuer: DevIssuer, verifier: TokenVerifier) -> None:
    for n in range(3 * verifier_module._CHECKED_HEADERS_MAX):
        verifier.verify(tok(issuer, header(issuer, zz=f"h{n}")), now=NOW)
        assert len(verifier_module._checked_headers) <= verifier_module._CHECKED_HEADERS_MAX
    assert verifier.signature_checks == 3 * verifier_module._CHECKED_HEADERS_MAX
