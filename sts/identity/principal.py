"""The verified caller: all that leaves ``sts.identity``."""

from __future__ import annotations

from dataclasses import dataclass

ENVIRONMENT_TYPES = ("production", "preview", "development")


@dataclass(frozen=True, slots=True)
class Principal:
    """A Zuplo deployment, as proven by a verified ID token."""

    issuer: str
    sub: str
    account: str
    project: str
    deployment: str
    environment_type: str
    expires_at: int
