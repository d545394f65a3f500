"""Minting one broker token: the short-lived JWT that a cloud receives in broker mode.

The token is a compact JWS (RFC 7515 section 7.1) signed RS256
(RFC 7518 section 3.3) by the key store's signing key. The signing input is built here and handed
to the store, so a key that signs remotely (AWS KMS ``Sign``) and a local key are used alike.

Claims: ``iss`` the broker issuer, ``sub`` ``mapping:<name>``, the cloud's ``aud``, ``iat``,
``exp`` (at most :data:`MAX_LIFETIME_SECONDS` later), a random ``jti`` (RFC 7519 section 4.1.7),
the Zuplo deployment's ``account``/``project``/``deployment``/``environment_type``, its ``sub`` as
``zuplo_sub``, and for AWS the session tags claim (IAM User Guide, "Passing session tags using
AssumeRoleWithWebIdentity"). Nothing else of the Zuplo token is copied, its ``aud`` above all.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

from sts.broker.keys import KeyStore, b64url
from sts.errors import InvalidTarget
from sts.identity.principal import Principal

MAX_LIFETIME_SECONDS = 300
AWS_TAGS_CLAIM = "https://aws.amazon.com/tags"
# The session tag keys, in the order the claim lists them.
TAG_KEYS = (
    "zuplo-account",
    "zuplo-project",
    "zuplo-deployment",
    "zuplo-environment-type",
    "zuplo-mapping",
)
# An AWS session tag value: at most 256 characters, letters, digits, spaces and _.:/=+-@ (IAM
# User Guide, "Tagging AWS STS sessions"). ASCII only: refusing is safe, altering is not.
MAX_TAG_VALUE_LENGTH = 256
_TAG_VALUE = re.compile(r"[A-Za-z0-9 _.:/=+\-@]*")
TAG_REFUSAL = "a claim cannot be carried as an AWS session tag"
SUBJECT_PREFIX = "mapping:"


def tag_safe(value: str) -> bool:
    """True if AWS carries ``value`` as a session tag value exactly as it is."""
    return len(value) <= MAX_TAG_VALUE_LENGTH and _TAG_VALUE.fullmatch(value) is not None


def _segment(document: dict[str, Any]) -> str:
    # ensure_ascii: any str (lone surrogates included) encodes, and decodes back to itself.
    return b64url(json.dumps(document, separators=(",", ":"), ensure_ascii=True).encode("ascii"))


class BrokerMinter:
    """Signs broker tokens with ``key_store`` as issuer ``issuer`` (``STS_BROKER_ISSUER``)."""

    def __init__(
        self,
        key_store: KeyStore,
        issuer: str,
        *,
        lifetime_seconds: int = MAX_LIFETIME_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < lifetime_seconds <= MAX_LIFETIME_SECONDS:
            raise ValueError(f"a broker token lives 1..{MAX_LIFETIME_SECONDS} s")
        self._key_store = key_store
        self._issuer = issuer
        self._lifetime = lifetime_seconds
        self._clock = clock

    def mint(self, principal: Principal, mapping: str, audience: str, *, session_tags: bool) -> str:
        """A fresh broker token for one upstream call of ``mapping`` by ``principal``.

        With ``session_tags``, a value that must become a tag and that AWS cannot carry raises
        :class:`sts.errors.InvalidTarget` before anything is signed: it is never altered, since
        two different values must never become one tag.
        """
        tags = {
            "zuplo-account": principal.account,
            "zuplo-project": principal.project,
            "zuplo-deployment": principal.deployment,
            "zuplo-environment-type": principal.environment_type,
            "zuplo-mapping": mapping,
        }
        if session_tags and not all(tag_safe(value) for value in tags.values()):
            raise InvalidTarget(TAG_REFUSAL, cause="session tag value not representable")
        issued_at = int(self._clock())
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "sub": SUBJECT_PREFIX + mapping,
            "aud": audience,
            "iat": issued_at,
            "exp": issued_at + self._lifetime,
            "jti": secrets.token_urlsafe(24),
            "account": principal.account,
            "project": principal.project,
            "deployment": principal.deployment,
            "environment_type": principal.environment_type,
            "zuplo_sub": principal.sub,
        }
        if session_tags:
            claims[AWS_TAGS_CLAIM] = {
                "principal_tags": {key: [tags[key]] for key in TAG_KEYS},
                "transitive_tag_keys": list(TAG_KEYS),
            }
        signer = self._key_store.signer()
        header = {"alg": "RS256", "kid": signer.kid, "typ": "JWT"}
        signing_input = f"{_segment(header)}.{_segment(claims)}"
        signature = signer.sign(signing_input.encode("ascii"))
        return f"{signing_input}.{b64url(signature)}"
