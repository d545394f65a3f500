"""Who is calling: verify a Zuplo ID token and reduce it to a :class:`Principal`."""

from sts.identity.principal import ENVIRONMENT_TYPES, Principal

__all__ = ["ENVIRONMENT_TYPES", "Principal"]
