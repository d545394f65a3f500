"""One error hierarchy for the OAuth token endpoint (RFC 6749 section 5.2, RFC 8693 section 2.2.2).

Every failure the caller can see is an :class:`OAuthError` carrying its RFC error code, HTTP status
and a fixed, safe description. Handlers raise; :func:`sts.api.error_answer` renders. The ``cause``
is for logs only and never reaches the caller.
"""

from __future__ import annotations


class OAuthError(Exception):
    """Base class: ``error`` is the RFC code, ``status`` the HTTP status."""

    error = "server_error"
    status = 500
    default_description = "internal error"

    def __init__(self, description: str | None = None, *, cause: str | None = None) -> None:
        self.description = description or self.default_description
        self.cause = cause
        super().__init__(self.description)

    @property
    def headers(self) -> dict[str, str]:
        return {}

    def to_dict(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


class InvalidRequest(OAuthError):
    """Malformed request, or a subject token that fails validation (RFC 8693 section 2.2.2)."""

    error = "invalid_request"
    status = 400
    default_description = "invalid request"


class UnsupportedGrantType(OAuthError):
    error = "unsupported_grant_type"
    status = 400
    default_description = "grant_type must be urn:ietf:params:oauth:grant-type:token-exchange"


class UnauthorizedClient(OAuthError):
    """The token is valid, but no enabled mapping binds the caller."""

    error = "unauthorized_client"
    status = 400
    default_description = "no mapping binds this identity"


class InvalidTarget(OAuthError):
    """Unknown or unbound target, ambiguous choice, or a provider refusal (RFC 8693 2.2.2)."""

    error = "invalid_target"
    status = 400
    default_description = "target not available to this identity"


class InvalidScope(OAuthError):
    error = "invalid_scope"
    status = 400
    default_description = "scope not allowed by the mapping"


class TemporarilyUnavailable(OAuthError):
    """Upstream or key-set trouble the caller should retry (RFC 6749 section 4.1.2.1)."""

    error = "temporarily_unavailable"
    status = 503
    default_description = "temporarily unavailable, retry later"

    def __init__(
        self, description: str | None = None, *, retry_after: int = 5, cause: str | None = None
    ) -> None:
        super().__init__(description, cause=cause)
        self.retry_after = max(1, int(retry_after))

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class ServerError(OAuthError):
    error = "server_error"
    status = 500
    default_description = "internal error"
