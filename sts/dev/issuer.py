"""A development Zuplo-like issuer: RS256 keys, a JWKS served over HTTP on loopback, token minting.

Tokens look like the ones ``ZuploServices.getIDToken`` returns (claims ``iss sub aud iat exp account
project deployment environment_type``, a ``kid`` header). Tests also use :meth:`DevIssuer.sign` to
build hostile tokens byte by byte.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from sts.dev.serving import BackgroundServer

ISSUER_PATH = "/v1/client-auth/auth_dev"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


@dataclass
class SigningKey:
    kid: str
    private_key: rsa.RSAPrivateKey = field(repr=False)

    @classmethod
    def generate(cls, kid: str | None = None, bits: int = 2048) -> SigningKey:
        kid = kid or "atky_" + secrets.token_urlsafe(16)
        return cls(kid, rsa.generate_private_key(public_exponent=65537, key_size=bits))

    def public_jwk(self) -> dict[str, str]:
        numbers = self.private_key.public_key().public_numbers()
        return {
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": self.kid,
            "n": _uint(numbers.n),
            "e": _uint(numbers.e),
        }

    def sign(self, signing_input: bytes) -> bytes:
        return self.private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())


class DevIssuer(BackgroundServer):
    """An issuer with a live JWKS endpoint (and discovery document) on 127.0.0.1; start with
    :meth:`start` or ``with``.

    ``jwks_status``, ``jwks_delay`` and ``jwks_body`` let tests break the endpoint; ``fetches``
    counts the JWKS requests served.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, bits: int = 2048) -> None:
        super().__init__(host, port)
        self.keys: list[SigningKey] = [SigningKey.generate(bits=bits)]
        self.jwks_status = 200
        self.jwks_delay = 0.0
        self.jwks_body: bytes | None = None
        self.jwks_headers: dict[str, str] = {}
        self.fetches = 0
        self._lock = threading.Lock()

    def _build(self) -> ThreadingHTTPServer:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == ISSUER_PATH + "/.well-known/openid-configuration":
                    # What an IAM OIDC identity provider reads first (the AWS emulator too).
                    document = {"issuer": issuer.url, "jwks_uri": issuer.jwks_url}
                    data = json.dumps(document).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                if self.path != ISSUER_PATH + "/.well-known/jwks.json":
                    self.send_error(404)
                    return
                with issuer._lock:
                    issuer.fetches += 1
                if issuer.jwks_delay:
                    time.sleep(issuer.jwks_delay)
                body = issuer.jwks_body
                if body is None:
                    body = json.dumps(issuer.jwks()).encode()
                self.send_response(issuer.jwks_status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in issuer.jwks_headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        # HTTP/1.0, one request a connection: once stopped, the issuer is gone for every client.
        server = ThreadingHTTPServer((self.host, self.port), Handler)
        server.daemon_threads = True
        return server

    @property
    def url(self) -> str:
        """The issuer (its tokens' ``iss``): the server's URL and :data:`ISSUER_PATH`."""
        return super().url + ISSUER_PATH

    @property
    def jwks_url(self) -> str:
        return self.url + "/.well-known/jwks.json"

    @property
    def key(self) -> SigningKey:
        """The current signing key (the first in the set)."""
        return self.keys[0]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk() for k in self.keys]}

    def rotate(self, keep_old: bool = True) -> SigningKey:
        """Add a new current key; drop the old ones unless ``keep_old``."""
        new = SigningKey.generate()
        self.keys = [new, *self.keys] if keep_old else [new]
        return new

    def claims(
        self,
        audience: str | list[str] = "https://sts.example.test",
        *,
        lifetime: int = 36000,
        **overrides: Any,
    ) -> dict[str, Any]:
        """Claims like a Zuplo ID token's; ``overrides`` replace or add claims."""
        return dev_claims(self.url, audience, lifetime=lifetime, **overrides)

    def mint(
        self,
        claims: dict[str, Any] | None = None,
        *,
        header: dict[str, Any] | None = None,
        key: SigningKey | None = None,
        drop: tuple[str, ...] = (),
        **overrides: Any,
    ) -> str:
        """A signed RS256 token; ``claims`` defaults to :meth:`claims` with ``overrides``."""
        key = key or self.key
        payload = dict(claims) if claims is not None else self.claims(**overrides)
        for name in drop:
            payload.pop(name, None)
        if header is None:
            return compact_rs256(key, payload)
        return self.sign(
            json.dumps(header, separators=(",", ":")).encode(),
            json.dumps(payload, separators=(",", ":")).encode(),
            key=key,
        )

    def sign(self, header: bytes, payload: bytes, key: SigningKey | None = None) -> str:
        """Sign raw header and payload bytes (for hostile tokens with exact bytes)."""
        key = key or self.key
        signing_input = f"{b64url(header)}.{b64url(payload)}".encode("ascii")
        return signing_input.decode("ascii") + "." + b64url(key.sign(signing_input))


def dev_claims(
    issuer: str, audience: str | list[str], *, lifetime: int = 36000, **overrides: Any
) -> dict[str, Any]:
    """Claims like a Zuplo ID token's from ``issuer``; ``overrides`` replace or add claims."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": "atcl_" + "8GLgIDYRw38Jqg0tHR8tiZfh",
        "aud": audience,
        "iat": now,
        "exp": now + lifetime,
        "account": "my-account",
        "project": "my-project",
        "deployment": "copper-bedbug-main-53c4947",
        "environment_type": "production",
    }
    claims.update(overrides)
    return claims


def compact_rs256(key: SigningKey, claims: dict[str, Any]) -> str:
    """``claims`` signed with ``key``: a compact JWS, header ``alg`` RS256, ``typ`` JWT, its kid."""
    header = json.dumps({"alg": "RS256", "typ": "JWT", "kid": key.kid}, separators=(",", ":"))
    payload = json.dumps(claims, separators=(",", ":"))
    signing_input = f"{b64url(header.encode())}.{b64url(payload.encode())}".encode("ascii")
    return signing_input.decode("ascii") + "." + b64url(key.sign(signing_input))
