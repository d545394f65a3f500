"""Who is calling: verify a Zuplo ID token and reduce it to a :class:`Principal`."""

from sts.identity.jwks import JWKSCache, JWKSRegistry
from sts.identity.principal import ENVIRONMENT_TYPES, Principal
from sts.identity.verifier import TokenVerifier

__all__ = ["ENVIRONMENT_TYPES", "JWKSCache", "JWKSRegistry", "Principal", "TokenVerifier"]
