"""The floor of a Python server on the fresh-token path: granian's RSGI interface, 2 workers, and
per ``POST /token`` only the body read, the token taken out of the form, one RS256 verification
with ``cryptography`` (the issuer's first key, fetched once at start and read by the service's
own JWKS parser; the signature decoded by its strict base64url) and a fixed answer of
``BODY_BYTES`` bytes. No claim is checked, nothing is looked up, logged or counted.

What sts serve would reach if everything it does per request beyond that cost nothing; run by
``bench/run.py`` next to the comparators (``FLOOR``), never deployed:

    JWKS_URL=... BODY_BYTES=1053 python -m granian --interface rsgi --working-dir bench \\
        floor_app:app
"""

from __future__ import annotations

import json
import os
import urllib.request
from typing import Any
from urllib.parse import parse_qsl

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from sts.identity.jwks import decode_b64url, parse_jwks


def _issuer_key(url: str) -> rsa.RSAPublicKey:
    """The issuer's first key, read by the service's own JWKS parser."""
    with urllib.request.urlopen(url, timeout=5) as response:  # the dev issuer on 127.0.0.1
        keys = parse_jwks(response.read())
    key: rsa.RSAPublicKey = next(iter(keys.values())).get_op_key("verify")
    return key


_KEY = _issuer_key(os.environ["JWKS_URL"])
_PADDING = padding.PKCS1v15()
_HASH = hashes.SHA256()
_BODY = json.dumps({"verified": True, "padding": ""}).encode()
_BODY = _BODY[:-2] + b"x" * max(0, int(os.environ["BODY_BYTES"]) - len(_BODY)) + b'"}'
_HEADERS = [
    ("content-type", "application/json"),
    ("cache-control", "no-store"),
    ("pragma", "no-cache"),
]
_REFUSED = b'{"error":"invalid_request"}'


async def app(scope: Any, protocol: Any) -> None:
    if scope.proto != "http":
        return
    if scope.method != "POST":
        protocol.response_bytes(200, _HEADERS, b'{"status":"ok"}')  # /healthz, /readyz
        return
    body = await protocol()
    token = dict(parse_qsl(body.decode("ascii"))).get("subject_token", "")
    signing_input, _, signature = token.rpartition(".")
    try:
        _KEY.verify(decode_b64url(signature), signing_input.encode("ascii"), _PADDING, _HASH)
    except (InvalidSignature, ValueError):  # JWKSError is a ValueError
        protocol.response_bytes(400, _HEADERS, _REFUSED)
        return
    protocol.response_bytes(200, _HEADERS, _BODY)
