"""The verified caller: all that leaves ``sts.identity``."""

from __future__ import annotations

from dataclasses import dataclass, field

ENVIRONMENT_TYPES = ("production", "preview", "development")


@dataclass(frozen=True, slots=True)
class Principal:
    """A Zuplo deployment, as proven by a verified ID token.

    ``audiences`` is the token's whole ``aud`` (RFC 7519 section 4.1.3) as a set: the cloud sees
    the token and may check it, so credentials are never shared across audiences (README,
    credential caching).
    """

    issuer: str
    sub: str
    account: str
    project: str
    deployment: str
    environment_type: str
    audiences: frozenset[str]
    issued_at: float = field(default=0.0, compare=False)
    """The token's ``iat``: what a revocation's ``--issued-before`` is compared with. A fact
    of the token, not of the identity: two principals are equal whatever their tokens' ages."""
