"""A broker-like OIDC issuer for tests: discovery and JWKS on 127.0.0.1, tokens with session tags.

It publishes what an IAM OIDC identity provider reads (``/.well-known/openid-configuration``,
then ``jwks_uri``) and mints tokens shaped like zuplo-sts's broker tokens.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sts.dev.issuer import SigningKey, b64url

TAGS = "https://aws.amazon.com/tags"


class Issuer:
    """Discovery and JWKS on 127.0.0.1, as a broker issuer publishes them."""

    def __init__(self) -> None:
        self.key = SigningKey.generate()
        self.published = [self.key]
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": issuer.url, "jwks_uri": issuer.url + "/.well-known/jwks.json"}
                elif self.path == "/.well-known/jwks.json":
                    body = {"keys": [k.public_jwk() for k in issuer.published]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def mint(self, key: SigningKey | None = None, **overrides: Any) -> str:
        return mint(self.url, key or self.key, **overrides)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def mint(url: str, key: SigningKey, **overrides: Any) -> str:
    """A broker-like token for ``url``: sub, aud and the session tags claim, signed by ``key``."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": url,
        "sub": "mapping:orders",
        "aud": "sts.amazonaws.com",
        "iat": now,
        "exp": now + 300,
        TAGS: {
            "principal_tags": {
                "zuplo-account": ["acme"],
                "zuplo-project": ["orders"],
            },
            "transitive_tag_keys": ["zuplo-account", "zuplo-project"],
        },
    }
    claims.update(overrides)
    claims = {name: value for name, value in claims.items() if value is not None}
    header = b64url(json.dumps({"alg": "RS256", "kid": key.kid, "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims).encode())
    signing_input = f"{header}.{payload}".encode()
    return f"{header}.{payload}.{b64url(key.sign(signing_input))}"
