"""The provider protocol and the one credential type every provider returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from sts.identity.principal import Principal
from sts.mappings.spec import MappingSpec, Provider


@dataclass(frozen=True)
class Credentials:
    """Short-lived credentials from one upstream call.

    For AWS, ``access_token`` is the session token and the key pair is set; for GCP it is the
    OAuth access token. ``expires_at`` is a UNIX time in seconds. Secrets stay out of ``repr``.
    """

    provider: Provider
    access_token: str = field(repr=False)
    expires_at: float
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = field(default=None, repr=False)
    scope: str | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class BrokerClaims:
    """What the broker token for one upstream call must carry (docs/reference.md section 8).

    Each provider says it for its cloud; the broker itself knows no cloud.
    """

    audience: str
    session_tags: bool = False


class CredentialProvider(Protocol):
    """Exchanges a verified subject token for credentials on one mapping's target.

    Raises :class:`sts.errors.InvalidTarget` / :class:`sts.errors.InvalidRequest` for refusals
    and :class:`sts.errors.TemporarilyUnavailable` for throttling, 5xx, timeouts and malformed
    answers, as docs/reference.md section 2 maps them.
    """

    def issue(
        self,
        principal: Principal,
        mapping: MappingSpec,
        subject_token: str,
        scopes: tuple[str, ...],
    ) -> Credentials: ...

    def broker_claims(self, mapping: MappingSpec) -> BrokerClaims:
        """The audience (and AWS session tags) of the broker token this cloud receives."""
        ...
