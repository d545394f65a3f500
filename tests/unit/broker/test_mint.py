"""Broker tokens: exact header and claims, session tags, refusals before signing; verified with
joserfc against the published JWKS, and fuzzed with every claim value the Zuplo verifier takes."""

from __future__ import annotations

import base64
import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc import jwt
from joserfc.jwk import KeySet

from sts.broker.documents import jwks_document
from sts.broker.keys import DatabaseKeyStore
from sts.broker.mint import BrokerMinter
from sts.db import Database
from sts.errors import InvalidTarget, TemporarilyUnavailable
from sts.identity.principal import Principal
from tests.unit.broker.conftest import START, Clock

ISSUER = "https://sts.example.com/broker"
AWS_AUDIENCE = "sts.amazonaws.com"
TAGS_CLAIM = "https://aws.amazon.com/tags"
REFUSAL = "a claim cannot be carried as an AWS session tag"
TAG_KEYS = [
    "zuplo-account",
    "zuplo-project",
    "zuplo-deployment",
    "zuplo-environment-type",
    "zuplo-mapping",
]
# The test's own statement of what AWS carries as a session tag value (IAM User Guide,
# "Tagging AWS STS sessions", ASCII only), independent of the implementation's.
TAG_SAFE = re.compile(r"[A-Za-z0-9 _.:/=+\-@]{0,256}")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatabaseKeyStore]:
    path: Path = tmp_path_factory.mktemp("mint") / "sts.db"
    database = Database(f"sqlite:///{path}")
    database.upgrade()
    key_store = DatabaseKeyStore(database, secrets.token_bytes(32))
    key_store.bootstrap()
    yield key_store
    database.dispose()


def principal(**fields: str) -> Principal:
    values = {
        "issuer": "https://dev.zuplo.com/v1/client-auth/auth_dev",
        "sub": "deployment/my-account/my-project/my-deployment",
        "account": "my-account",
        "project": "my-project",
        "deployment": "my-deployment-abc123",
        "environment_type": "production",
        **fields,
    }
    return Principal(audiences=frozenset({"https://sts.example.test"}), **values)


def verify(store: DatabaseKeyStore, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """What a cloud does: the key by kid from the published JWKS, RS256 only."""
    keys = KeySet.import_key_set(json.loads(jwks_document(store)))
    decoded = jwt.decode(token, keys, algorithms=["RS256"])
    return dict(decoded.header), dict(decoded.claims)


def raw_header(token: str) -> dict[str, Any]:
    segment = token.split(".", maxsplit=1)[0]
    header: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    )
    return header


def test_aws_token_has_exactly_the_contracted_header_and_claims(store: DatabaseKeyStore) -> None:
    clock = Clock()
    minter = BrokerMinter(store, ISSUER, clock=clock)
    token = minter.mint(principal(), "orders-prod", AWS_AUDIENCE, session_tags=True)
    header, claims = verify(store, token)
    assert raw_header(token) == {"alg": "RS256", "kid": store.signer().kid, "typ": "JWT"}
    assert header["kid"] == store.signer().kid
    jti = claims.pop("jti")
    assert isinstance(jti, str)
    assert len(jti) >= 16
    assert claims == {
        "iss": ISSUER,
        "sub": "mapping:orders-prod",
        "aud": AWS_AUDIENCE,
        "iat": int(START),
        "exp": int(START) + 300,
        "account": "my-account",
        "project": "my-project",
        "deployment": "my-deployment-abc123",
        "environment_type": "production",
        "zuplo_sub": "deployment/my-account/my-project/my-deployment",
        TAGS_CLAIM: {
            "principal_tags": {
                "zuplo-account": ["my-account"],
                "zuplo-project": ["my-project"],
                "zuplo-deployment": ["my-deployment-abc123"],
                "zuplo-environment-type": ["production"],
                "zuplo-mapping": ["orders-prod"],
            },
            "transitive_tag_keys": TAG_KEYS,
        },
    }


def test_without_session_tags_there_is_no_tags_claim(store: DatabaseKeyStore) -> None:
    gcp_audience = (
        "https://iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/z"
    )
    token = BrokerMinter(store, ISSUER).mint(
        principal(), "analytics-gcp", gcp_audience, session_tags=False
    )
    _, claims = verify(store, token)
    assert TAGS_CLAIM not in claims
    assert claims["aud"] == gcp_audience
    assert claims["sub"] == "mapping:analytics-gcp"


def test_every_token_gets_a_fresh_jti(store: DatabaseKeyStore) -> None:
    minter = BrokerMinter(store, ISSUER)
    jtis = {
        verify(store, minter.mint(principal(), "m", AWS_AUDIENCE, session_tags=False))[1]["jti"]
        for _ in range(50)
    }
    assert len(jtis) == 50


@pytest.mark.parametrize("lifetime", [0, -1, 301])
def test_a_lifetime_over_300_seconds_is_refused(store: DatabaseKeyStore, lifetime: int) -> None:
    with pytest.raises(ValueError, match=r"1\.\.300"):
        BrokerMinter(store, ISSUER, lifetime_seconds=lifetime)


def test_a_shorter_lifetime_is_honoured(store: DatabaseKeyStore) -> None:
    token = BrokerMinter(store, ISSUER, lifetime_seconds=60, clock=Clock()).mint(
        principal(), "m", AWS_AUDIENCE, session_tags=False
    )
    _, claims = verify(store, token)
    assert claims["exp"] - claims["iat"] == 60


@pytest.mark.parametrize(
    "fields",
    [
        {"account": "a" * 257},
        {"project": "projet-é"},
        {"deployment": "dep<script>"},
        {"deployment": "dep\tname"},
        {"deployment": "dep,name"},
        {"project": "名前"},
        {"account": "acct\u00a0name"},
        {"deployment": "x#y"},
    ],
)
def test_a_value_aws_cannot_tag_is_refused_before_any_signing(fields: dict[str, str]) -> None:
    """The store has no key at all: reaching the signer would raise temporarily_unavailable."""
    empty = _EmptyKeyStore()
    with pytest.raises(InvalidTarget) as caught:
        BrokerMinter(empty, ISSUER).mint(principal(**fields), "m", AWS_AUDIENCE, session_tags=True)
    assert caught.value.description == REFUSAL
    assert caught.value.status == 400
    with pytest.raises(TemporarilyUnavailable):
        BrokerMinter(empty, ISSUER).mint(principal(**fields), "m", AWS_AUDIENCE, session_tags=False)


def test_every_allowed_character_and_256_characters_are_carried_unchanged(
    store: DatabaseKeyStore,
) -> None:
    allowed = "AZaz09 _.:/=+-@"
    fields = {"account": "a" * 256, "project": allowed, "deployment": "d"}
    token = BrokerMinter(store, ISSUER).mint(
        principal(**fields), "orders-prod", AWS_AUDIENCE, session_tags=True
    )
    _, claims = verify(store, token)
    tags = claims[TAGS_CLAIM]["principal_tags"]
    assert tags["zuplo-account"] == ["a" * 256]
    assert tags["zuplo-project"] == [allowed]
    assert claims["project"] == allowed


class _EmptyKeyStore:
    """A key store with no signing key (the KeyStore protocol, as before any key exists)."""

    def signer(self) -> Any:
        raise TemporarilyUnavailable("signing key unavailable")

    def public_jwks(self) -> list[dict[str, str]]:
        return []

    def list_keys(self) -> list[Any]:
        return []

    @property
    def ready(self) -> bool:
        return False


# Any non-empty JSON string: lone surrogates too, since a JSON \u escape can spell one.
ANY_CHARACTER = st.characters(exclude_categories=())
# Mostly tag-safe characters with a few that are not, so both outcomes are common.
NEARLY_TAG_SAFE = "AZaz09 _.:/=+-@<é"
ZUPLO_VALUES = st.text(ANY_CHARACTER, min_size=1, max_size=300) | st.text(
    NEARLY_TAG_SAFE, min_size=1, max_size=300
)
MAPPING_NAMES = st.from_regex(r"[a-z0-9][a-z0-9-]{0,62}", fullmatch=True)


@settings(max_examples=150, deadline=None)
@given(
    sub=ZUPLO_VALUES,
    account=ZUPLO_VALUES,
    project=ZUPLO_VALUES,
    deployment=ZUPLO_VALUES,
    environment_type=st.sampled_from(["production", "preview", "development"]),
    mapping=MAPPING_NAMES,
    session_tags=st.booleans(),
)
def test_fuzzed_claims_are_refused_with_the_phrase_or_verify_and_round_trip_exactly(
    store: DatabaseKeyStore,
    sub: str,
    account: str,
    project: str,
    deployment: str,
    environment_type: str,
    mapping: str,
    session_tags: bool,
) -> None:
    who = principal(
        sub=sub,
        account=account,
        project=project,
        deployment=deployment,
        environment_type=environment_type,
    )
    tag_values = [account, project, deployment, environment_type, mapping]
    unsafe = session_tags and not all(TAG_SAFE.fullmatch(value) for value in tag_values)
    minter = BrokerMinter(store, ISSUER)
    if unsafe:
        with pytest.raises(InvalidTarget) as caught:
            minter.mint(who, mapping, AWS_AUDIENCE, session_tags=session_tags)
        assert caught.value.description == REFUSAL
        return
    token = minter.mint(who, mapping, AWS_AUDIENCE, session_tags=session_tags)
    _, claims = verify(store, token)
    assert claims["sub"] == "mapping:" + mapping
    assert (claims["account"], claims["project"], claims["deployment"]) == (
        account,
        project,
        deployment,
    )
    assert claims["environment_type"] == environment_type
    assert claims["zuplo_sub"] == sub
    if session_tags:
        assert claims[TAGS_CLAIM]["principal_tags"] == {
            key: [value] for key, value in zip(TAG_KEYS, tag_values, strict=True)
        }
    else:
        assert TAGS_CLAIM not in claims
