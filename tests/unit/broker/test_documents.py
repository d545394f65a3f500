"""The discovery document and the JWKS, as served and exported."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from sts.broker.documents import discovery_document, jwks_document
from sts.broker.keys import DatabaseKeyStore, public_jwk
from sts.db import Database
from tests.unit.broker.conftest import Clock

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


class _FixedKeys:
    """A key store that hands over exactly the JWKs it was given."""

    def __init__(self, jwks: list[dict[str, str]]) -> None:
        self._jwks = jwks

    def signer(self) -> Any:
        raise NotImplementedError

    def public_jwks(self) -> list[dict[str, str]]:
        return self._jwks

    def list_keys(self) -> list[Any]:
        return []

    @property
    def ready(self) -> bool:
        return False


def test_discovery_document_names_the_issuer_and_its_jwks() -> None:
    document = json.loads(discovery_document("https://sts.example.com/tenant-a"))
    assert document == {
        "issuer": "https://sts.example.com/tenant-a",
        "jwks_uri": "https://sts.example.com/tenant-a/.well-known/jwks.json",
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "claims_supported": [
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
            "https://aws.amazon.com/tags",
        ],
    }


def test_jwks_holds_every_published_key_with_public_members_only(
    database: Database, kek: bytes, clock: Clock
) -> None:
    store = DatabaseKeyStore(database, kek, clock=clock)
    store.bootstrap()
    store.rotate()
    document = json.loads(jwks_document(store))
    assert list(document) == ["keys"]
    assert [key["kid"] for key in document["keys"]] == [jwk["kid"] for jwk in store.public_jwks()]
    assert len(document["keys"]) == 2
    for key in document["keys"]:
        assert set(key) == {"kty", "kid", "n", "e", "alg", "use"}
        assert (key["kty"], key["alg"], key["use"]) == ("RSA", "RS256", "sig")


def test_jwks_drops_any_private_member_a_key_store_hands_over() -> None:
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaky = {**public_jwk(private_key.public_key()), **dict.fromkeys(PRIVATE_MEMBERS, "secret")}
    document = json.loads(jwks_document(_FixedKeys([leaky])))
    (key,) = document["keys"]
    assert not set(key) & PRIVATE_MEMBERS
    assert b"secret" not in jwks_document(_FixedKeys([leaky]))


def test_jwks_refuses_a_key_that_is_not_rsa() -> None:
    with pytest.raises(ValueError, match="RSA keys only"):
        jwks_document(_FixedKeys([{"kty": "EC", "kid": "x", "crv": "P-256"}]))
