"""A corpus of hostile and malformed subject tokens, sent through real HTTP to ``POST /token``.

docs/reference.md section 3 is the attack surface: each row is a token an attacker (or a broken
client) could send, the fixed ``error_description`` the service must answer with, and where the
attack comes from (RFC 8725 section, and the CVE of the library it broke where there is one). Every
row asserts the whole response: 400 ``invalid_request``, the exact phrase, ``Cache-Control: no-
store``, no echo of the token or its parts, no call to AWS or GCP, and no fetch from the attacker's
server (a second live issuer on loopback serving its own key, which every key-bearing header points
at).

A few rows are positive controls (``expect=OK``): tokens at the edge of a rule that must still be
accepted, so the corpus also proves the checks are not broader than the contract.

The classes, their counts and citations are listed in ``tests/testdata/hostile_tokens.md``;
:func:`test_table_lists_every_class` keeps that table in step with :data:`CORPUS`.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from sts.dev.aws_emulator import AwsEmulator
from sts.dev.gcp_emulator import GcpEmulator
from sts.dev.issuer import DevIssuer, SigningKey, b64url
from tests.conftest import AUDIENCE
from tests.functional.conftest import Stack, running_stack
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

TABLE = Path(__file__).parent.parent / "testdata" / "hostile_tokens.md"
SKEW = 60  # the stack's STS_CLOCK_SKEW_SECONDS (the default)
DAY = 24 * 3600  # the longest lifetime (exp - iat) accepted
MARGIN = 15  # seconds between a time-claim edge case and the leeway edge, for slow machines
OK = None  # a positive control: the token must be exchanged (HTTP 200)
# token.py's phrase when subject_token is empty (RFC 6749 3.1: an empty parameter is omitted).
MISSING_SUBJECT_TOKEN = "missing subject_token"
DROP = object()


# --- the service under attack, and the attacker ------------------------------------------------


@pytest.fixture(scope="module")
def hostile_stack(
    issuer: DevIssuer,
    second: DevIssuer,
    aws: AwsEmulator,
    gcp: GcpEmulator,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """One service for the whole corpus (the rows never change its state, only read it).

    It trusts two issuers: the session issuer and :func:`second`.
    """
    url = f"sqlite:///{tmp_path_factory.mktemp('hostile') / 'sts.db'}"
    with running_stack(issuer, aws, gcp, url, trusted_issuers=(issuer.url, second.url)) as stack:
        yield stack


@pytest.fixture(scope="module")
def second(issuer: DevIssuer) -> Iterator[DevIssuer]:
    """A second trusted issuer: its own key first, then a twin publishing the session issuer's
    kid with other key material (two issuers may well pick the same kid)."""
    with DevIssuer() as other:
        other.keys.append(SigningKey(issuer.key.kid, SigningKey.generate().private_key))
        yield other


@pytest.fixture(scope="module")
def attacker() -> Iterator[DevIssuer]:
    """An untrusted issuer on loopback serving the attacker's key: it must never be asked."""
    with DevIssuer() as evil:
        yield evil


# --- token building ----------------------------------------------------------------------------


def enc(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _apply(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    for name, value in changes.items():
        if value is DROP:
            base.pop(name, None)
        else:
            base[name] = value
    return base


def _es_signer(curve: ec.EllipticCurve, digest: hashes.HashAlgorithm) -> Callable[[bytes], bytes]:
    key = ec.generate_private_key(curve)
    size = (curve.key_size + 7) // 8

    def sign(data: bytes) -> bytes:
        # RFC 7518 3.4: JWS carries R || S, not the DER sequence cryptography returns.
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(digest)))
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")

    return sign


@dataclass(frozen=True)
class Forge:
    """What an attacker has: the trusted issuer's public key (and, for controls, its signer).

    ``second`` is another trusted issuer, whose keys must never vouch for ``issuer``'s tokens
    nor the reverse.
    """

    issuer: DevIssuer
    attacker: DevIssuer
    second: DevIssuer

    @property
    def kid(self) -> str:
        return self.issuer.key.kid

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        return self.issuer.key.private_key.public_key()

    def header(self, **changes: Any) -> dict[str, Any]:
        return _apply({"alg": "RS256", "typ": "JWT", "kid": self.kid}, changes)

    def claims(self, **changes: Any) -> dict[str, Any]:
        return _apply(self.issuer.claims(AUDIENCE), changes)

    def token(
        self,
        header: dict[str, Any] | bytes | None = None,
        claims: dict[str, Any] | bytes | None = None,
        *,
        key: SigningKey | None = None,
    ) -> str:
        """Signed RS256 by ``key`` (default: the trusted issuer's own key) over exact bytes."""
        h = (
            header
            if isinstance(header, bytes)
            else enc(self.header() if header is None else header)
        )
        p = (
            claims
            if isinstance(claims, bytes)
            else enc(self.claims() if claims is None else claims)
        )
        return self.issuer.sign(h, p, key=key)

    def signed_with(
        self, header: dict[str, Any], sign: Callable[[bytes], bytes], claims: Any = None
    ) -> str:
        """A token whose signature comes from ``sign`` (another algorithm, an HMAC, nothing)."""
        signing_input = (
            f"{b64url(enc(header))}.{b64url(enc(self.claims() if claims is None else claims))}"
        )
        return signing_input + "." + b64url(sign(signing_input.encode("ascii")))

    def pem(self, fmt: serialization.PublicFormat) -> bytes:
        return self.public_key.public_bytes(serialization.Encoding.PEM, fmt)


Build = Callable[[Forge], str]
Signer = Callable[[bytes], bytes]
NOT_ALG = ALGORITHM_NOT_ALLOWED


def rsa_signer(
    pad: Callable[[hashes.HashAlgorithm], padding.AsymmetricPadding], digest: hashes.HashAlgorithm
) -> Callable[[Forge], Callable[[bytes], bytes]]:
    return lambda f: lambda data: f.issuer.key.private_key.sign(data, pad(digest), digest)


def pkcs1(_: hashes.HashAlgorithm) -> padding.AsymmetricPadding:
    return padding.PKCS1v15()


def pss(digest: hashes.HashAlgorithm) -> padding.AsymmetricPadding:
    return padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)


def hmac_with(alg: str, secret: Callable[[Forge], bytes]) -> Build:
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]

    def build(f: Forge) -> str:
        key = secret(f)
        return f.signed_with(f.header(alg=alg), lambda data: hmac.new(key, data, digest).digest())

    return build


def spki_pem(f: Forge) -> bytes:
    return f.pem(serialization.PublicFormat.SubjectPublicKeyInfo)


def attacker_cert(f: Forge) -> str:
    """A self-signed X.509 certificate for the attacker's key, as an x5c entry (RFC 7515 4.1.6)."""
    key = f.attacker.key.private_key
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev.zuplo.com")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")


def by_attacker(header: Callable[[Forge], dict[str, Any]]) -> Build:
    """Forged claims for the trusted issuer, signed with the attacker's key."""
    return lambda f: f.token(header(f), key=f.attacker.key)


def hdr(**changes: Any) -> Build:
    return lambda f: f.token(f.header(**changes))


def claim(**changes: Any) -> Build:
    return lambda f: f.token(claims=f.claims(**changes))


def at_time(**offsets: float | Callable[[int], Any]) -> Build:
    """Time claims relative to the clock when the row runs (the service uses the real clock)."""

    def build(f: Forge) -> str:
        now = int(time.time())
        values = {n: (o(now) if callable(o) else now + o) for n, o in offsets.items()}
        return f.token(claims=f.claims(**values))

    return build


def raw_header(text: bytes) -> Build:
    return lambda f: f.token(text.replace(b"KID", f.kid.encode()))


def raw_claim(name: str, json_text: bytes) -> Build:
    """The claims with ``name`` set to literal JSON text (NaN, 1e400, ... that json.dumps won't)."""

    def build(f: Forge) -> str:
        body = enc(f.claims(**{name: DROP}))
        return f.token(claims=body[:-1] + b',"' + name.encode() + b'":' + json_text + b"}")

    return build


def part(index: int, change: Callable[[str], str]) -> Build:
    def build(f: Forge) -> str:
        parts = f.token().split(".")
        parts[index] = change(parts[index])
        return ".".join(parts)

    return build


def padded(index: int) -> Build:
    """Header (0), payload (1) or signature (2) with the '=' padding RFC 7515 2 forbids."""

    def build(f: Forge) -> str:
        for filler in range(4):
            extra = {"zz": "x" * filler}
            parts = f.token(
                f.header(**(extra if index == 0 else {})), f.claims(**(extra if index == 1 else {}))
            ).split(".")
            if len(parts[index]) % 4:
                parts[index] += "=" * (-len(parts[index]) % 4)
                return ".".join(parts)
        raise AssertionError("unreachable: some filler length needs padding")

    return build


def std_alphabet(text: str) -> str:
    changed = text.replace("-", "+").replace("_", "/")
    if changed == text:  # no - or _ in this signature: force a '+' so the row still tests it
        changed = "+" + text[1:]
    return changed


def non_canonical(text: str) -> str:
    # A 2048-bit signature is 342 characters (2 mod 4): the last one has 4 unused bits.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return text[:-1] + alphabet[alphabet.index(text[-1]) + 1]


def sized(target: int) -> Build:
    """A validly signed token of about ``target`` characters (filler in an unknown claim)."""

    def build(f: Forge) -> str:
        base = len(f.token(claims=f.claims(zz="")))
        filler = max(0, (target - base) * 3 // 4)
        return f.token(claims=f.claims(zz="x" * filler))

    return build


def nested(f: Forge) -> str:
    """A signed JWT whose payload is another (inner) JWT, RFC 7519 5.2 style."""
    inner = f.token().encode()
    return f.token(f.header(cty="JWT"), inner)


def nested_without_cty(f: Forge) -> str:
    return f.token(claims=f.token().encode())


def jwe_shape(header: dict[str, Any]) -> Build:
    def build(f: Forge) -> str:
        pieces = [enc(header), b"k" * 256, b"i" * 12, b"c" * 64, b"t" * 16]
        return ".".join(b64url(p) for p in pieces)

    return build


def python_jwt_mixed(f: Forge) -> str:
    """CVE-2022-39227: JSON serialization whose first member name smuggles a compact token."""
    h, p, s = f.token().split(".")
    forged = b64url(enc(f.claims(account="victim-account")))
    return json.dumps({f"  {h}.{forged}.": "", "protected": h, "payload": p, "signature": s})


def json_serialization(f: Forge) -> str:
    h, p, s = f.token().split(".")
    return json.dumps({"protected": h, "payload": p, "signature": s})


def other_key_same_kid(f: Forge) -> str:
    return f.token(key=SigningKey(f.kid, f.attacker.key.private_key))


def tampered_payload(f: Forge) -> str:
    h, _, s = f.token().split(".")
    return f"{h}.{b64url(enc(f.claims(account='someone-else')))}.{s}"


def tampered_header(f: Forge) -> str:
    _, p, s = f.token().split(".")
    return f"{b64url(enc(f.header(typ='jwt')))}.{p}.{s}"


def spliced_signature(f: Forge) -> str:
    """A real signature of the issuer over another token, glued onto forged claims."""
    signature = f.token(claims=f.claims(sub="atcl_other")).split(".")[2]
    h, p, _ = f.token(claims=f.claims(project="victim-project")).split(".")
    return f"{h}.{p}.{signature}"


def flipped_signature_bit(f: Forge) -> str:
    h, p, s = f.token().split(".")
    raw = bytearray(base64.urlsafe_b64decode(s + "=="))
    raw[len(raw) // 2] ^= 0x01
    return f"{h}.{p}.{b64url(bytes(raw))}"


def unicode_header(encoding: str) -> Build:
    def build(f: Forge) -> str:
        text = json.dumps(f.header(), separators=(",", ":"))
        return f.token(text.encode(encoding))

    return build


def unsigned(alg: Any, *, signature: bool) -> Build:
    """An ``alg: none`` style token; ``signature`` adds a real RS256 signature anyway."""

    def build(f: Forge) -> str:
        header = f.header(alg=alg)
        if signature:
            return f.token(header)
        return f"{b64url(enc(header))}.{b64url(enc(f.claims()))}."

    return build


@dataclass(frozen=True)
class Row:
    id: str
    cls: str
    build: Build
    expect: str | None
    cite: str


def rows(cls: str, cite: str, *entries: tuple[str, Build, str | None]) -> list[Row]:
    return [Row(id, cls, build, expect, cite) for id, build, expect in entries]


RFC_ALG = "RFC 8725 3.1"
NONE = "RFC 8725 3.1, 3.2; CVE-2022-23540 (jsonwebtoken none by default)"
CONFUSION = "RFC 8725 2.1, 3.1; CVE-2015-9235 (jsonwebtoken), CVE-2016-10555 (jwt-simple)"

ALG_NONE = [
    row
    for label, alg in [
        ("none", "none"),
        ("None", "None"),
        ("NONE", "NONE"),
        ("nOnE", "nOnE"),
        ("empty", ""),
        ("null", None),
        ("missing", DROP),
    ]
    for row in rows(
        "alg none",
        NONE,
        (f"alg {label}, empty signature", unsigned(alg, signature=False), ALGORITHM_NOT_ALLOWED),
        (f"alg {label}, RSA signature", unsigned(alg, signature=True), ALGORITHM_NOT_ALLOWED),
    )
] + rows(
    "alg none",
    NONE,
    (
        "alg none without the final dot",
        lambda f: unsigned("none", signature=False)(f)[:-1],
        TOKEN_UNPARSABLE,
    ),
)

HMAC_CONFUSION = [
    *rows(
        "HMAC keyed with the issuer's public key",
        CONFUSION,
        ("HS256, SPKI PEM with newline", hmac_with("HS256", spki_pem), ALGORITHM_NOT_ALLOWED),
        (
            "HS256, SPKI PEM without newline",
            hmac_with("HS256", lambda f: spki_pem(f).rstrip(b"\n")),
            ALGORITHM_NOT_ALLOWED,
        ),
        ("HS384, SPKI PEM", hmac_with("HS384", spki_pem), ALGORITHM_NOT_ALLOWED),
        ("HS512, SPKI PEM", hmac_with("HS512", spki_pem), ALGORITHM_NOT_ALLOWED),
        (
            "HS256, SPKI PEM with CRLF line ends",
            hmac_with("HS256", lambda f: spki_pem(f).replace(b"\n", b"\r\n")),
            ALGORITHM_NOT_ALLOWED,
        ),
    ),
    Row(
        "HS256, PKCS#1 PEM (BEGIN RSA PUBLIC KEY)",
        "HMAC keyed with the issuer's public key",
        hmac_with("HS256", lambda f: f.pem(serialization.PublicFormat.PKCS1)),
        ALGORITHM_NOT_ALLOWED,
        "RFC 8725 3.1; CVE-2017-11424 (PyJWT, PKCS#1 PEM not blocklisted)",
    ),
    Row(
        "HS256, PEM with leading whitespace",
        "HMAC keyed with the issuer's public key",
        hmac_with("HS256", lambda f: b"\n  " + spki_pem(f)),
        ALGORITHM_NOT_ALLOWED,
        "RFC 8725 3.1; CVE-2023-48223, CVE-2026-34950 (fast-jwt PEM matcher)",
    ),
    Row(
        "HS256, OpenSSH public key",
        "HMAC keyed with the issuer's public key",
        hmac_with(
            "HS256",
            lambda f: f.public_key.public_bytes(
                serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
            ),
        ),
        ALGORITHM_NOT_ALLOWED,
        "RFC 8725 3.1; CVE-2022-29217 (PyJWT), CVE-2024-33663 (python-jose)",
    ),
    Row(
        "HS256, DER SubjectPublicKeyInfo",
        "HMAC keyed with the issuer's public key",
        hmac_with(
            "HS256",
            lambda f: f.public_key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        ),
        ALGORITHM_NOT_ALLOWED,
        "RFC 8725 3.1; python-jose #414 (DER bypass of the CVE-2024-33663 fix)",
    ),
    Row(
        "HS256, JWK JSON as served",
        "HMAC keyed with the issuer's public key",
        hmac_with("HS256", lambda f: json.dumps(f.issuer.key.public_jwk()).encode()),
        ALGORITHM_NOT_ALLOWED,
        "RFC 8725 3.1; CVE-2026-48526 (PyJWT JWK as HMAC secret), CVE-2024-37568 (authlib)",
    ),
    Row(
        "HS256, JWK JSON in RFC 7638 canonical form",
        "HMAC keyed with the issuer's public key",
        hmac_with(
            "HS256",
            lambda f: enc(
                {k: f.issuer.key.public_jwk()[k] for k in ("e", "kty", "n")},
            ),
        ),
        ALGORITHM_NOT_ALLOWED,
        "RFC 8725 3.1; CVE-2026-48526 (PyJWT), CVE-2024-37568 (authlib)",
    ),
]


def signed_as(alg: str, signer: Callable[[Forge], Callable[[bytes], bytes]]) -> Build:
    return lambda f: f.signed_with(f.header(alg=alg), signer(f))


def es(curve: ec.EllipticCurve, digest: hashes.HashAlgorithm) -> Callable[[Forge], Signer]:
    return lambda f: _es_signer(curve, digest)


def eddsa(f: Forge) -> Signer:
    return ed25519.Ed25519PrivateKey.generate().sign


OTHER_ALGS = rows(
    "other JWS algorithms",
    RFC_ALG + "; CVE-2024-37568 (authlib: algorithm chosen by the token)",
    ("RS384 by the issuer's key", signed_as("RS384", rsa_signer(pkcs1, hashes.SHA384())), NOT_ALG),
    ("RS512 by the issuer's key", signed_as("RS512", rsa_signer(pkcs1, hashes.SHA512())), NOT_ALG),
    ("PS256 by the issuer's key", signed_as("PS256", rsa_signer(pss, hashes.SHA256())), NOT_ALG),
    ("PS384 by the issuer's key", signed_as("PS384", rsa_signer(pss, hashes.SHA384())), NOT_ALG),
    ("PS512 by the issuer's key", signed_as("PS512", rsa_signer(pss, hashes.SHA512())), NOT_ALG),
    ("ES256", signed_as("ES256", es(ec.SECP256R1(), hashes.SHA256())), NOT_ALG),
    ("ES384", signed_as("ES384", es(ec.SECP384R1(), hashes.SHA384())), NOT_ALG),
    ("ES512", signed_as("ES512", es(ec.SECP521R1(), hashes.SHA512())), NOT_ALG),
    ("EdDSA", signed_as("EdDSA", eddsa), NOT_ALG),
    ("HS256 with a random secret", hmac_with("HS256", lambda f: b"attacker-secret-" * 4), NOT_ALG),
    ("rs256 lower case", hdr(alg="rs256"), NOT_ALG),
    ("RS256 with a trailing space", hdr(alg="RS256 "), NOT_ALG),
    ("alg as a list", hdr(alg=["RS256"]), NOT_ALG),
    ("alg as an object", hdr(alg={"name": "RS256"}), NOT_ALG),
)

KID = rows(
    "kid missing, unknown or injected",
    "RFC 8725 2.9, 3.10 (kid is untrusted input: SQL/LDAP/path injection)",
    ("kid missing", hdr(kid=DROP), KEY_NOT_FOUND),
    ("kid empty", hdr(kid=""), KEY_NOT_FOUND),
    ("kid unknown", hdr(kid="atky_unknown"), KEY_NOT_FOUND),
    ("kid an integer", hdr(kid=0), KEY_NOT_FOUND),
    ("kid a list with the real kid", lambda f: f.token(f.header(kid=[f.kid])), KEY_NOT_FOUND),
    ("kid null", hdr(kid=None), KEY_NOT_FOUND),
    ("kid true", hdr(kid=True), KEY_NOT_FOUND),
    ("kid path traversal", hdr(kid="../../../../dev/null"), KEY_NOT_FOUND),
    ("kid SQL injection", hdr(kid="' OR 1=1 --"), KEY_NOT_FOUND),
    ("kid command injection", hdr(kid="x|curl http://127.0.0.1:9/;"), KEY_NOT_FOUND),
    (
        "kid a URL to the attacker",
        lambda f: f.token(f.header(kid=f.attacker.jwks_url)),
        KEY_NOT_FOUND,
    ),
    ("kid 4000 characters", hdr(kid="k" * 4000), KEY_NOT_FOUND),
    ("kid with a NUL byte", lambda f: f.token(f.header(kid=f.kid + "\x00")), KEY_NOT_FOUND),
    ("kid a prefix of the real kid", lambda f: f.token(f.header(kid=f.kid[:-1])), KEY_NOT_FOUND),
)

KEY_HEADERS = rows(
    "jku, x5u, jwk, x5c at the attacker",
    "RFC 8725 2.9, 3.10 (jku/x5u SSRF); RFC 7515 4.1.2-4.1.6",
    (
        "jku to the attacker's JWKS, attacker kid",
        by_attacker(lambda f: f.header(kid=f.attacker.key.kid, jku=f.attacker.jwks_url)),
        KEY_NOT_FOUND,
    ),
    (
        "jku to the attacker's JWKS, real kid",
        by_attacker(lambda f: f.header(jku=f.attacker.jwks_url)),
        SIGNATURE_INVALID,
    ),
    (
        "x5u to the attacker, attacker kid",
        by_attacker(lambda f: f.header(kid=f.attacker.key.kid, x5u=f.attacker.jwks_url)),
        KEY_NOT_FOUND,
    ),
    (
        "x5u to the attacker, no kid",
        by_attacker(lambda f: f.header(kid=DROP, x5u=f.attacker.jwks_url)),
        KEY_NOT_FOUND,
    ),
    (
        "x5c attacker certificate, real kid",
        by_attacker(lambda f: f.header(x5c=[attacker_cert(f)])),
        SIGNATURE_INVALID,
    ),
    (
        "x5c attacker certificate, no kid",
        by_attacker(lambda f: f.header(kid=DROP, x5c=[attacker_cert(f)])),
        KEY_NOT_FOUND,
    ),
    (
        "iss is the attacker's own issuer, attacker key and kid",
        lambda f: f.token(
            f.header(kid=f.attacker.key.kid, jku=f.attacker.jwks_url),
            f.claims(iss=f.attacker.url),
            key=f.attacker.key,
        ),
        ISSUER_NOT_TRUSTED,
    ),
    (
        "control: jku to the attacker on a genuine token is ignored",
        lambda f: f.token(f.header(jku=f.attacker.jwks_url)),
        OK,
    ),
    (
        "control: x5u and x5c on a genuine token are ignored",
        lambda f: f.token(f.header(x5u=f.attacker.jwks_url, x5c=[attacker_cert(f)])),
        OK,
    ),
) + rows(
    "jku, x5u, jwk, x5c at the attacker",
    "RFC 8725 3.10; CVE-2018-0114 (node-jose), CVE-2026-27962 (authlib jwk injection)",
    (
        "jwk embedded attacker key, attacker kid",
        by_attacker(lambda f: f.header(kid=f.attacker.key.kid, jwk=f.attacker.key.public_jwk())),
        KEY_NOT_FOUND,
    ),
    (
        "jwk embedded attacker key, real kid",
        by_attacker(lambda f: f.header(jwk={**f.attacker.key.public_jwk(), "kid": f.kid})),
        SIGNATURE_INVALID,
    ),
    (
        "jwk embedded attacker key, no kid",
        by_attacker(lambda f: f.header(kid=DROP, jwk=f.attacker.key.public_jwk())),
        KEY_NOT_FOUND,
    ),
)

EXTENSIONS = rows(
    "crit, b64, cty, enc, zip, typ",
    "RFC 7515 4.1.11, RFC 7797; RFC 8725 3.11; CVE-2025-59420 (authlib crit), "
    "CVE-2026-32597 (PyJWT crit)",
    ("crit listing exp", hdr(crit=["exp"], exp=1), HEADER_NOT_ALLOWED),
    ("crit empty list", hdr(crit=[]), HEADER_NOT_ALLOWED),
    ("crit null", hdr(crit=None), HEADER_NOT_ALLOWED),
    ("crit b64 with b64 false", hdr(crit=["b64"], b64=False), HEADER_NOT_ALLOWED),
    ("b64 false", hdr(b64=False), HEADER_NOT_ALLOWED),
    ("b64 true", hdr(b64=True), HEADER_NOT_ALLOWED),
    ("cty JWT", hdr(cty="JWT"), HEADER_NOT_ALLOWED),
    ("enc A256GCM on a three-part token", hdr(enc="A256GCM"), HEADER_NOT_ALLOWED),
    ("zip DEF on a three-part token", hdr(zip="DEF"), HEADER_NOT_ALLOWED),
    ("typ at+jwt", hdr(typ="at+jwt"), HEADER_NOT_ALLOWED),
    ("typ a number", hdr(typ=1), HEADER_NOT_ALLOWED),
)

JWE_NESTED = [
    *rows(
        "JWE, nested and JSON-serialized tokens",
        "RFC 8725 2.3, 3.3; RFC 7516 7.1",
        ("nested JWT with cty JWT", nested, TOKEN_UNPARSABLE),
        ("nested JWT without cty", nested_without_cty, TOKEN_UNPARSABLE),
        ("JWE shape, dir/A256GCM", jwe_shape({"alg": "dir", "enc": "A256GCM"}), TOKEN_UNPARSABLE),
        ("JWS JSON serialization", json_serialization, TOKEN_UNPARSABLE),
    ),
    Row(
        "JWE shape, RSA-OAEP with zip DEF (decompression bomb)",
        "JWE, nested and JSON-serialized tokens",
        jwe_shape({"alg": "RSA-OAEP", "enc": "A256GCM", "zip": "DEF"}),
        TOKEN_UNPARSABLE,
        "RFC 8725 3.6; CVE-2024-33664 (python-jose JWE bomb)",
    ),
    Row(
        "mixed JSON/compact forgery",
        "JWE, nested and JSON-serialized tokens",
        python_jwt_mixed,
        TOKEN_UNPARSABLE,
        "RFC 7515 7; CVE-2022-39227 (python-jwt claim forgery)",
    ),
]

PART_COUNTS = rows(
    "wrong number of parts",
    "RFC 7515 7.1; RFC 7519 7.2",
    ("one part", lambda f: f.token().split(".")[1], TOKEN_UNPARSABLE),
    ("two parts", lambda f: f.token().rsplit(".", 1)[0], TOKEN_UNPARSABLE),
    ("four parts", lambda f: f.token() + "." + f.token().split(".")[2], TOKEN_UNPARSABLE),
    ("six parts", lambda f: f.token() + "...", TOKEN_UNPARSABLE),
    ("trailing dot", lambda f: f.token() + ".", TOKEN_UNPARSABLE),
    ("leading dot", lambda f: "." + f.token(), TOKEN_UNPARSABLE),
    ("two tokens joined", lambda f: f.token() + "." + f.token(), TOKEN_UNPARSABLE),
    ("just two dots", lambda f: "..", TOKEN_UNPARSABLE),
    ("just four dots", lambda f: "....", TOKEN_UNPARSABLE),
    ("empty string", lambda f: "", MISSING_SUBJECT_TOKEN),
)

ENCODING = rows(
    "base64url and whitespace",
    "RFC 7515 2, 7.1; RFC 4648 5; RFC 8725 2.6",
    ("padded header", padded(0), TOKEN_UNPARSABLE),
    ("padded payload", padded(1), TOKEN_UNPARSABLE),
    ("padded signature", padded(2), TOKEN_UNPARSABLE),
    ("+/ alphabet in the signature", part(2, std_alphabet), TOKEN_UNPARSABLE),
    ("non-canonical trailing bits", part(2, non_canonical), TOKEN_UNPARSABLE),
    ("impossible length", part(2, lambda s: s + "AAA"), TOKEN_UNPARSABLE),
    ("space inside the payload", part(1, lambda s: s[:10] + " " + s[10:]), TOKEN_UNPARSABLE),
    ("newline inside the header", part(0, lambda s: s[:8] + "\n" + s[8:]), TOKEN_UNPARSABLE),
    ("CRLF folded signature", part(2, lambda s: s[:76] + "\r\n" + s[76:]), TOKEN_UNPARSABLE),
    ("tab inside the signature", part(2, lambda s: s[:20] + "\t" + s[20:]), TOKEN_UNPARSABLE),
    ("leading space", lambda f: " " + f.token(), TOKEN_UNPARSABLE),
    ("trailing newline", lambda f: f.token() + "\n", TOKEN_UNPARSABLE),
    ("Bearer prefix", lambda f: "Bearer " + f.token(), TOKEN_UNPARSABLE),
    ("percent-encoded dot", lambda f: f.token().replace(".", "%2E", 1), TOKEN_UNPARSABLE),
)

SIGNATURE = rows(
    "signature",
    "RFC 8725 2.1, 3.1; RFC 7515 5.2",
    ("another key under the right kid", other_key_same_kid, SIGNATURE_INVALID),
    ("payload changed after signing", tampered_payload, SIGNATURE_INVALID),
    ("header changed after signing", tampered_header, SIGNATURE_INVALID),
    ("signature from another token", spliced_signature, SIGNATURE_INVALID),
    ("one bit flipped", flipped_signature_bit, SIGNATURE_INVALID),
    ("signature truncated", part(2, lambda s: s[:84]), SIGNATURE_INVALID),
    ("signature empty", part(2, lambda s: ""), SIGNATURE_INVALID),
    ("signature all zero bytes", part(2, lambda s: b64url(bytes(256))), SIGNATURE_INVALID),
)

TIME = rows(
    "time claims",
    "RFC 7519 4.1.4-4.1.6, 2 (NumericDate); RFC 8725 3.8",
    ("exp an hour ago", at_time(exp=-3600, iat=-7200), TOKEN_EXPIRED),
    ("exp just outside the leeway", at_time(exp=-(SKEW + MARGIN)), TOKEN_EXPIRED),
    ("control: exp passed, inside the leeway", at_time(exp=-(SKEW - MARGIN)), OK),
    ("control: exp a float in the future", at_time(exp=3600.5), OK),
    ("control: exp a float inside the leeway", at_time(exp=-(SKEW - MARGIN) + 0.25), OK),
    ("exp 10**20", at_time(exp=lambda now: 10**20), TOKEN_LIFETIME_TOO_LONG),
    ("exp 1e300", at_time(exp=lambda now: 1e300), TOKEN_LIFETIME_TOO_LONG),
    ("exp a 401-digit integer", raw_claim("exp", b"1" + b"0" * 400), CLAIM_INVALID),
    ("control: lifetime exactly 24 h", at_time(iat=0, exp=DAY), OK),
    ("lifetime 24 h + 1 s", at_time(iat=0, exp=DAY + 1), TOKEN_LIFETIME_TOO_LONG),
    ("lifetime 10 days", at_time(iat=0, exp=10 * DAY), TOKEN_LIFETIME_TOO_LONG),
    ("exp zero", at_time(exp=lambda now: 0), TOKEN_EXPIRED),
    ("exp negative", at_time(exp=lambda now: -1), TOKEN_EXPIRED),
    ("exp missing", claim(exp=DROP), CLAIM_INVALID),
    ("exp the string 9999999999", claim(exp="9999999999"), CLAIM_INVALID),
    ("exp true", claim(exp=True), CLAIM_INVALID),
    ("exp false", claim(exp=False), CLAIM_INVALID),
    ("exp null", claim(exp=None), CLAIM_INVALID),
    ("exp a list", at_time(exp=lambda now: [now + 3600]), CLAIM_INVALID),
    ("exp an object", claim(exp={"$date": 9999999999}), CLAIM_INVALID),
    ("exp NaN", raw_claim("exp", b"NaN"), TOKEN_UNPARSABLE),
    ("exp Infinity", raw_claim("exp", b"Infinity"), TOKEN_UNPARSABLE),
    ("exp 1e400 overflows", raw_claim("exp", b"1e400"), TOKEN_UNPARSABLE),
    ("control: nbf in the future, inside the leeway", at_time(nbf=SKEW - MARGIN), OK),
    ("nbf beyond the leeway", at_time(nbf=SKEW + MARGIN), TOKEN_NOT_YET_VALID),
    ("nbf a string", at_time(nbf=str), CLAIM_INVALID),
    ("nbf true", claim(nbf=True), CLAIM_INVALID),
    ("nbf null", claim(nbf=None), CLAIM_INVALID),
    ("control: iat in the future, inside the leeway", at_time(iat=SKEW - MARGIN), OK),
    ("iat beyond the leeway", at_time(iat=SKEW + MARGIN), TOKEN_ISSUED_IN_FUTURE),
    ("iat a year ahead", at_time(iat=365 * 86400, exp=366 * 86400), TOKEN_ISSUED_IN_FUTURE),
    ("iat missing", claim(iat=DROP), CLAIM_INVALID),
    ("iat a string", at_time(iat=str), CLAIM_INVALID),
    ("iat false", claim(iat=False), CLAIM_INVALID),
)


def swap_scheme(url: str) -> str:
    return ("https" + url[4:]) if url.startswith("http:") else ("http" + url[5:])


AUDIENCES = [
    *rows(
        "aud look-alikes",
        "RFC 7519 4.1.3; RFC 8725 3.9",
        ("aud with a trailing slash", claim(aud=AUDIENCE + "/"), AUDIENCE_NOT_ACCEPTED),
        ("aud http instead of https", claim(aud=swap_scheme(AUDIENCE)), AUDIENCE_NOT_ACCEPTED),
        ("aud a prefix of ours", claim(aud=AUDIENCE[:-1]), AUDIENCE_NOT_ACCEPTED),
        ("aud ours plus a suffix", claim(aud=AUDIENCE + ".evil.example"), AUDIENCE_NOT_ACCEPTED),
        ("aud upper case", claim(aud=AUDIENCE.upper()), AUDIENCE_NOT_ACCEPTED),
        ("aud list without ours", claim(aud=["https://other.example"]), AUDIENCE_NOT_ACCEPTED),
        (
            "aud list of look-alikes",
            claim(aud=[AUDIENCE + "/", AUDIENCE.upper()]),
            AUDIENCE_NOT_ACCEPTED,
        ),
        ("aud empty list", claim(aud=[]), CLAIM_INVALID),
        ("aud a number", claim(aud=443), CLAIM_INVALID),
        ("aud null", claim(aud=None), CLAIM_INVALID),
        ("aud missing", claim(aud=DROP), CLAIM_INVALID),
        ("aud list with ours and a number", claim(aud=[AUDIENCE, 1]), CLAIM_INVALID),
        ("aud ours nested in a list", claim(aud=[[AUDIENCE]]), CLAIM_INVALID),
        ("control: aud list containing ours", claim(aud=["https://other.example", AUDIENCE]), OK),
    ),
    Row(
        "aud the issuer's own URL",
        "aud look-alikes",
        lambda f: f.token(claims=f.claims(aud=f.issuer.url)),
        AUDIENCE_NOT_ACCEPTED,
        "RFC 8725 3.9; CVE-2025-27370, CVE-2025-27371 (audience injection)",
    ),
]


def iss(change: Callable[[str], Any]) -> Build:
    return lambda f: f.token(claims=f.claims(iss=change(f.issuer.url)))


ISSUERS = rows(
    "iss look-alikes",
    "RFC 7519 4.1.1; RFC 8725 3.8; CVE-2024-53861 (PyJWT partial iss match)",
    ("iss with a trailing slash", iss(lambda u: u + "/"), ISSUER_NOT_TRUSTED),
    ("iss https instead of http", iss(swap_scheme), ISSUER_NOT_TRUSTED),
    ("iss a prefix of ours", iss(lambda u: u[:-1]), ISSUER_NOT_TRUSTED),
    ("iss ours plus a suffix", iss(lambda u: u + "x"), ISSUER_NOT_TRUSTED),
    ("iss the host only", iss(lambda u: u.split("/v1/")[0]), ISSUER_NOT_TRUSTED),
    ("iss upper case", iss(str.upper), ISSUER_NOT_TRUSTED),
    ("iss as a list", iss(lambda u: [u]), ISSUER_NOT_TRUSTED),
    ("iss null", iss(lambda u: None), ISSUER_NOT_TRUSTED),
    ("iss missing", claim(iss=DROP), ISSUER_NOT_TRUSTED),
    (
        "iss the real Zuplo issuer (not configured)",
        claim(iss="https://dev.zuplo.com/v1/client-auth/auth_o8PUdhKxSTOiB794GWPwLQCD"),
        ISSUER_NOT_TRUSTED,
    ),
)

IDENTITY = [
    Row(
        f"{name} {label}",
        "identity claims missing, empty or mistyped",
        claim(**{name: value}),
        CLAIM_INVALID,
        "docs/reference.md section 3; RFC 8693 2.2.2",
    )
    for name in IDENTITY_CLAIMS
    for label, value in [
        ("missing", DROP),
        ("empty", ""),
        ("a number", 7),
        ("a list", ["my-account"]),
        ("an object", {"value": "my-account"}),
        ("null", None),
        ("a boolean", True),
    ]
]

ENVIRONMENT = rows(
    "environment_type outside the enum",
    "docs/reference.md section 3",
    ("environment_type Production", claim(environment_type="Production"), CLAIM_INVALID),
    ("environment_type PRODUCTION", claim(environment_type="PRODUCTION"), CLAIM_INVALID),
    ("environment_type prod", claim(environment_type="prod"), CLAIM_INVALID),
    ("environment_type staging", claim(environment_type="staging"), CLAIM_INVALID),
    ("environment_type with a space", claim(environment_type="production "), CLAIM_INVALID),
    ("environment_type *", claim(environment_type="*"), CLAIM_INVALID),
    ("control: environment_type preview", claim(environment_type="preview"), OK),
)


def dup_claim(name: str, value: Any) -> Build:
    def build(f: Forge) -> str:
        return f.token(
            claims=enc(f.claims())[:-1] + b',"' + name.encode() + b'":' + enc(value) + b"}"
        )

    return build


DUPLICATES = rows(
    "duplicate JSON members",
    "RFC 7515 4, RFC 7519 4; RFC 8725 2.6; CVE-2022-39227 (parser differentials)",
    (
        "header alg RS256 then none",
        raw_header(b'{"alg":"RS256","kid":"KID","alg":"none"}'),
        TOKEN_UNPARSABLE,
    ),
    (
        "header alg none then RS256",
        raw_header(b'{"alg":"none","kid":"KID","alg":"RS256"}'),
        TOKEN_UNPARSABLE,
    ),
    (
        "header kid twice",
        raw_header(b'{"alg":"RS256","kid":"other","kid":"KID"}'),
        TOKEN_UNPARSABLE,
    ),
    ("payload account twice", dup_claim("account", "victim-account"), TOKEN_UNPARSABLE),
    ("payload account twice, same value", dup_claim("account", "my-account"), TOKEN_UNPARSABLE),
    ("payload iss twice", dup_claim("iss", "https://evil.example"), TOKEN_UNPARSABLE),
    ("payload aud twice", dup_claim("aud", AUDIENCE), TOKEN_UNPARSABLE),
)

OVERSIZED = rows(
    "oversized tokens",
    "docs/reference.md section 3 (16 KiB cap, checked before parsing)",
    ("just over 16 KiB, validly signed", sized(MAX_TOKEN_BYTES + 64), TOKEN_TOO_LARGE),
    ("60 KiB, validly signed", sized(60 * 1024), TOKEN_TOO_LARGE),
    ("60 KiB of dots", lambda f: "." * (60 * 1024), TOKEN_TOO_LARGE),
    ("9000 non-ASCII characters (18 KB)", lambda f: "é" * 9000, TOKEN_TOO_LARGE),
    ("control: 15 KiB, validly signed", sized(15 * 1024), OK),
)

UNICODE = rows(
    "unicode tricks",
    "RFC 8725 2.6, 3.7 (UTF-8 only); RFC 7515 2",
    ("fullwidth alg RS256", hdr(alg="\uff32\uff33256"), ALGORITHM_NOT_ALLOWED),
    ("Cyrillic DZE for S in alg", hdr(alg="R\u0405256"), ALGORITHM_NOT_ALLOWED),
    ("zero-width space in kid", lambda f: f.token(f.header(kid=f.kid + "\u200b")), KEY_NOT_FOUND),
    (
        "homoglyph issuer (Cyrillic a)",
        iss(lambda u: u.replace("auth", "\u0430uth")),
        ISSUER_NOT_TRUSTED,
    ),
    ("non-ASCII inside the token", part(1, lambda s: s[:5] + "é" + s[5:]), TOKEN_UNPARSABLE),
    (
        "fullwidth dot as separator",
        lambda f: f.token().replace(".", "\uff0e", 1),
        TOKEN_UNPARSABLE,
    ),
    ("BOM before the header JSON", unicode_header("utf-8-sig"), TOKEN_UNPARSABLE),
    ("header JSON in UTF-16", unicode_header("utf-16"), TOKEN_UNPARSABLE),
    ("header JSON in UTF-16LE", unicode_header("utf-16-le"), TOKEN_UNPARSABLE),
    (
        "payload not UTF-8 (Latin-1)",
        lambda f: f.token(claims=b'{"sub":"\xe9"}'),
        TOKEN_UNPARSABLE,
    ),
    (
        "lone surrogate escape in kid",
        raw_header(b'{"alg":"RS256","kid":"KID\\ud800"}'),
        KEY_NOT_FOUND,
    ),
    (
        "control: alg written with a JSON escape",
        raw_header(b'{"alg":"\\u0052S256","typ":"JWT","kid":"KID"}'),
        OK,
    ),
)

JSON_SHAPE = rows(
    "JSON shape",
    "RFC 7515 4, 5.2; RFC 7519 7.2; RFC 8259",
    (
        "header with trailing garbage",
        raw_header(b'{"alg":"RS256","kid":"KID"}x'),
        TOKEN_UNPARSABLE,
    ),
    ("header two objects", raw_header(b'{"alg":"RS256","kid":"KID"}{}'), TOKEN_UNPARSABLE),
    ("header a JSON array", raw_header(b'["RS256","KID"]'), TOKEN_UNPARSABLE),
    ("header a JSON string", raw_header(b'"RS256"'), TOKEN_UNPARSABLE),
    ("header a JSON number", raw_header(b"256"), TOKEN_UNPARSABLE),
    ("header null", raw_header(b"null"), TOKEN_UNPARSABLE),
    ("header empty", raw_header(b""), TOKEN_UNPARSABLE),
    ("header single-quoted", raw_header(b"{'alg':'RS256','kid':'KID'}"), TOKEN_UNPARSABLE),
    ("header with a comment", raw_header(b'{"alg":"RS256",/*x*/"kid":"KID"}'), TOKEN_UNPARSABLE),
    (
        "payload with trailing garbage",
        lambda f: f.token(claims=enc(f.claims()) + b"garbage"),
        TOKEN_UNPARSABLE,
    ),
    ("payload a JSON array", lambda f: f.token(claims=enc([f.claims()])), TOKEN_UNPARSABLE),
    (
        "payload nested 5000 deep",
        lambda f: f.token(claims=b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}"),
        TOKEN_UNPARSABLE,
    ),
)


def as_second(
    header: Callable[[Forge], dict[str, Any]], key: Callable[[Forge], SigningKey]
) -> Build:
    """The second issuer's claims (``iss`` included) under ``header``, signed by ``key``."""
    return lambda f: f.token(header(f), f.second.claims(AUDIENCE), key=key(f))


def as_first(
    header: Callable[[Forge], dict[str, Any]], key: Callable[[Forge], SigningKey]
) -> Build:
    return lambda f: f.token(header(f), key=key(f))


def first_key(f: Forge) -> SigningKey:
    return f.issuer.key


def second_own_key(f: Forge) -> SigningKey:
    return f.second.keys[0]


def second_twin_key(f: Forge) -> SigningKey:
    """The second issuer's key published under the first issuer's kid."""
    return f.second.keys[1]


def shared_kid(f: Forge) -> dict[str, Any]:
    return f.header()


def second_kid(f: Forge) -> dict[str, Any]:
    return f.header(kid=f.second.keys[0].kid)


TWO_ISSUERS = rows(
    "two trusted issuers",
    "RFC 8725 3.8 (a key vouches only for its own issuer); RFC 7517 4.5 (kid unique per set)",
    (
        "second's iss, first's key under the kid both publish",
        as_second(shared_kid, first_key),
        SIGNATURE_INVALID,
    ),
    (
        "first's iss, second's key under the kid both publish",
        as_first(shared_kid, second_twin_key),
        SIGNATURE_INVALID,
    ),
    (
        "second's iss, first's key under second's own kid",
        as_second(second_kid, first_key),
        SIGNATURE_INVALID,
    ),
    ("first's iss, second's own key and kid", as_first(second_kid, second_own_key), KEY_NOT_FOUND),
    ("control: second's iss, own key and kid", as_second(second_kid, second_own_key), OK),
    (
        "control: second's iss, its key under the shared kid",
        as_second(shared_kid, second_twin_key),
        OK,
    ),
)

CORPUS: list[Row] = [
    *ALG_NONE,
    *HMAC_CONFUSION,
    *OTHER_ALGS,
    *KID,
    *KEY_HEADERS,
    *EXTENSIONS,
    *JWE_NESTED,
    *PART_COUNTS,
    *ENCODING,
    *SIGNATURE,
    *TIME,
    *AUDIENCES,
    *ISSUERS,
    *IDENTITY,
    *ENVIRONMENT,
    *DUPLICATES,
    *OVERSIZED,
    *UNICODE,
    *JSON_SHAPE,
    *TWO_ISSUERS,
]


# --- the checks --------------------------------------------------------------------------------


def _echoes(body: str, token: str) -> list[str]:
    """Pieces of the token that appear in the response body (none may)."""
    pieces = [token] + [p for p in re.split(r"[.\s]", token) if len(p) >= 8]
    return [p[:16] for p in pieces if p and p in body]


@pytest.mark.parametrize("row", [pytest.param(r, id=r.id) for r in CORPUS])
def test_hostile_token(
    row: Row, hostile_stack: Stack, attacker: DevIssuer, second: DevIssuer
) -> None:
    token = row.build(Forge(hostile_stack.issuer, attacker, second))
    aws_before, gcp_before = len(hostile_stack.aws.requests), len(hostile_stack.gcp.requests)

    response = hostile_stack.post(token)

    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Content-Type"].startswith("application/json")
    assert not _echoes(response.text, token), "the response echoes the token"
    assert attacker.fetches == 0, "the attacker's server was asked for keys"
    if row.expect is OK:
        assert response.status_code == 200, response.text
        assert response.json()["mapping"] in ("orders-prod", "orders-preview")
        return
    assert (response.status_code, response.json()) == (
        400,
        {"error": "invalid_request", "error_description": row.expect},
    )
    assert len(hostile_stack.aws.requests) == aws_before, "a hostile token reached AWS"
    assert len(hostile_stack.gcp.requests) == gcp_before, "a hostile token reached GCP"


def test_corpus_size_and_controls() -> None:
    """The issue asks for at least 60 hostile tokens; the controls keep the checks honest."""
    hostile = [r for r in CORPUS if r.expect is not OK]
    controls = [r for r in CORPUS if r.expect is OK]
    assert len(hostile) >= 70
    assert len(controls) >= 10
    assert len({r.id for r in CORPUS}) == len(CORPUS), "row ids must be unique"


def test_table_lists_every_class() -> None:
    """tests/testdata/hostile_tokens.md names each class with its exact count."""
    listed: dict[str, int] = {}
    for line in TABLE.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[1].isdigit():
            listed[cells[0].replace("\\|", "|")] = int(cells[1])
    assert listed == dict(Counter(r.cls for r in CORPUS))


def test_attacker_server_is_live(attacker: DevIssuer) -> None:
    """The never-fetched assertions mean something only if a fetch would have been counted."""
    before = attacker.fetches
    assert requests.get(attacker.jwks_url, timeout=5).json()["keys"][0]["kid"] == attacker.key.kid
    assert attacker.fetches == before + 1
    attacker.fetches = before


# --- credentials are never shared across issuers or audiences ----------------------------------


def test_same_claims_under_two_issuers_get_separate_credentials(
    hostile_stack: Stack, second: DevIssuer
) -> None:
    """The same account (and sub, project, deployment) under another trusted issuer is another
    caller: its exchange makes its own upstream call and never receives the first's credentials."""
    identity = {"deployment": "same-claims-two-issuers", "sub": "atcl_same_subject"}
    first = hostile_stack.issuer.mint(audience=AUDIENCE, **identity)
    other = second.mint(audience=AUDIENCE, **identity)
    before = len(hostile_stack.aws.requests)

    answers = [hostile_stack.post(token) for token in (first, other, first, other)]

    for answer in answers:
        assert answer.status_code == 200, answer.text
    keys = [a.json()["aws_credentials"]["AccessKeyId"] for a in answers]
    assert keys[0] != keys[1]
    assert keys[2:] == keys[:2]  # each issuer's caller reuses its own credentials
    calls = hostile_stack.aws.requests[before:]
    assert [c.web_identity_token for c in calls] == [first, other]


AUD_A = "https://a.sts.example.test"
AUD_B = "https://b.sts.example.test"
AUD_ROLE = "arn:aws:iam::123456789012:role/audience-a-only"
AUD_MAPPINGS = f"""
mappings:
  - name: audience-a-only
    account: aud-account
    project: aud-project
    aws:
      role_arn: {AUD_ROLE}
"""


def test_token_for_another_audience_is_never_answered_from_the_cache(
    issuer: DevIssuer,
    aws: AwsEmulator,
    gcp: GcpEmulator,
    tmp_path: Path,
) -> None:
    """The service accepts audiences a and b; the role's provider accepts only a. Credentials
    obtained with an a-token must not be handed to the same caller's b-token."""
    url = f"sqlite:///{tmp_path / 'audiences.db'}"
    identity = {"account": "aud-account", "project": "aud-project", "deployment": "aud-main"}
    aws.require_audience(AUD_ROLE, [AUD_A])
    try:
        with running_stack(
            issuer, aws, gcp, url, document=AUD_MAPPINGS, audiences=(AUD_A, AUD_B)
        ) as stack:
            granted = stack.post(issuer.mint(audience=AUD_A, **identity))
            assert granted.status_code == 200, granted.text
            assert len(stack.aws_requests()) == 1

            b_token = issuer.mint(audience=AUD_B, **identity)
            refused = stack.post(b_token)
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"] == "invalid_target"
            assert refused.json()["error_description"].startswith("aws: InvalidIdentityToken")
            calls = stack.aws_requests()
            assert [c.web_identity_token for c in calls[1:]] == [b_token]

            # A list of audiences is a set: [a, b] and [b, a] share credentials, and those are
            # not the a-only ones either.
            both = stack.post(issuer.mint(audience=[AUD_A, AUD_B], **identity))
            assert both.status_code == 200, both.text
            reversed_ = stack.post(issuer.mint(audience=[AUD_B, AUD_A], **identity))
            assert reversed_.status_code == 200, reversed_.text
            assert len(stack.aws_requests()) == 3
            assert both.json()["aws_credentials"] == reversed_.json()["aws_credentials"]
            assert both.json()["aws_credentials"] != granted.json()["aws_credentials"]
    finally:
        aws.require_audience(AUD_ROLE, None)


def test_emulator_refuses_a_token_for_another_audience(aws: AwsEmulator, issuer: DevIssuer) -> None:
    """The audience rule the test above relies on really refuses, and only for its role."""
    client = boto3.client(
        "sts",
        endpoint_url=aws.endpoint_url,
        region_name="us-east-1",
        config=Config(signature_version=UNSIGNED),
    )

    def assume(role: str, audience: str | list[str]) -> str:
        try:
            client.assume_role_with_web_identity(
                RoleArn=role,
                RoleSessionName="aud-check",
                WebIdentityToken=issuer.mint(audience=audience),
            )
        except ClientError as exc:
            return str(exc.response["Error"]["Code"])
        return "ok"

    aws.require_audience(AUD_ROLE, [AUD_A])
    try:
        assert assume(AUD_ROLE, AUD_A) == "ok"
        assert assume(AUD_ROLE, [AUD_B, AUD_A]) == "ok"
        assert assume(AUD_ROLE, AUD_B) == "InvalidIdentityToken"
        assert assume("arn:aws:iam::123456789012:role/other", AUD_B) == "ok"
    finally:
        aws.require_audience(AUD_ROLE, None)
    assert assume(AUD_ROLE, AUD_B) == "ok"
