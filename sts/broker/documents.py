"""The broker's discovery document and JWKS, as bytes ready to serve or to export.

OpenID Connect Discovery 1.0 section 3 (provider metadata; the clouds read ``issuer`` and
``jwks_uri``) and RFC 7517 section 5 (a JWK Set). Both are served at the fixed paths below,
whatever the issuer's path, and ``sts keys export`` writes the same bytes for static hosting.
"""

from __future__ import annotations

import json
from typing import Any

from sts.broker.keys import PUBLIC_JWK_MEMBERS, KeyStore
from sts.broker.mint import AWS_TAGS_CLAIM

DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/.well-known/jwks.json"
CACHE_CONTROL = "public, max-age=300"
CLAIMS_SUPPORTED = (
    "iss",
    "sub",
    "aud",
    "iat",
    "exp",
    "jti",
    "account",
    "project",
    "deployment",
    "environment_type",
    "zuplo_sub",
    AWS_TAGS_CLAIM,
)


def _render(document: dict[str, Any]) -> bytes:
    return json.dumps(document, indent=2).encode("ascii") + b"\n"


def discovery_document(issuer: str) -> bytes:
    """The provider metadata for ``issuer`` (``STS_BROKER_ISSUER``)."""
    return _render(
        {
            "issuer": issuer,
            "jwks_uri": issuer + JWKS_PATH,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "claims_supported": list(CLAIMS_SUPPORTED),
        }
    )


def jwks_document(key_store: KeyStore) -> bytes:
    """``{"keys": [...]}`` with every published public key.

    Members are copied by name from an allow-list, so nothing but ``kty kid use alg n e`` can
    ever reach the document, whatever a key store hands over.
    """
    keys = []
    for jwk in key_store.public_jwks():
        if jwk.get("kty") != "RSA":
            raise ValueError("the broker publishes RSA keys only")
        keys.append({name: jwk[name] for name in PUBLIC_JWK_MEMBERS})
    return _render({"keys": keys})
