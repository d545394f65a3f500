"""The provider protocol and the one credential type every provider returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal, Protocol

from sts.identity.principal import Principal
from sts.mappings.spec import MappingSpec, Provider

#: What :attr:`Credentials.token_type` says ``access_token`` holds.
TokenKind = Literal["access_token", "id_token"]
#: An OAuth access token, or for AWS the session token of a key pair (every provider's default).
ACCESS_TOKEN: Final = "access_token"  # noqa: S105 - a kind of token, not a password
#: A Google-signed OpenID Connect ID token (GCP ``generateIdToken``; docs/reference.md,
#: "GCP ID tokens").
ID_TOKEN: Final = "id_token"  # noqa: S105 - a kind of token, not a password


@dataclass(frozen=True)
class Credentials:
    """Short-lived credentials from one upstream call.

    For AWS, ``access_token`` is the session token and the key pair is set; for GCP it is the
    OAuth access token, or with ``token_type`` :data:`ID_TOKEN` a Google-signed ID token (then
    ``scope`` is None). ``expires_at`` is a UNIX time in seconds. Secrets stay out of ``repr``.

    A plain document round trip (``dataclasses.asdict``, then ``Credentials(**doc)``) gives
    back an equal value; a document written before ``token_type`` existed reads as an access
    token.
    """

    provider: Provider
    access_token: str = field(repr=False)
    expires_at: float
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = field(default=None, repr=False)
    scope: str | None = None
    request_id: str | None = None
    token_type: TokenKind = ACCESS_TOKEN


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

    ``audience``: the audience of an ID token to issue instead of an access token (only a GCP
    mapping with ``id_token_audiences`` issues one: docs/reference.md, "GCP ID tokens"; the
    caller chose it with :func:`sts.mappings.index.id_token_audience`). Other providers are
    never given one.
    """

    def issue(
        self,
        principal: Principal,
        mapping: MappingSpec,
        subject_token: str,
        scopes: tuple[str, ...],
        *,
        audience: str | None = None,
    ) -> Credentials: ...

    def broker_claims(self, mapping: MappingSpec) -> BrokerClaims:
        """The audience (and AWS session tags) of the broker token this cloud receives."""
        ...
