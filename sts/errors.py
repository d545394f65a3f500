"""One error hierarchy for the OAuth token endpoint (RFC 6749 section 5.2, RFC 8693 section 2.2.2).

Every failure the caller can see is an :class:`OAuthError` carrying its RFC error code, HTTP status
and a fixed, safe description. Handlers raise; :func:`sts.api.error_answer` renders. The ``cause``
is for logs only and never reaches the caller.

An error from an upstream call also carries its facts as typed fields: ``provider`` (``aws``,
``gcp``), ``provider_code`` (the upstream's error code as the provider table names it),
``upstream_request_id`` (the request id the upstream gave its answer, when it gave one) and
``retry_after`` (seconds, sent as ``Retry-After``, RFC 9110 section 10.2.3). The audit trail and
the logs read these fields; nothing parses them back out of the description.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sts.protocol import TOKEN_EXCHANGE_GRANT_TYPE


class OAuthError(Exception):
    """Base class: ``error`` is the RFC code, ``status`` the HTTP status (RFC 6749 section 5.2)."""

    error = "server_error"
    status = 500
    default_description = "internal error"
    #: The provider of the mapping the request was refused after selecting (``aws``, ``gcp``,
    #: ``azure``), which the metrics count it under; None when no mapping was selected. Unlike
    #: ``provider``, which only a cloud's own answer sets.
    mapping_provider: str | None = None

    def __init__(
        self,
        description: str | None = None,
        *,
        cause: str | None = None,
        provider: str | None = None,
        provider_code: str | None = None,
        upstream_request_id: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        self.description = description or self.default_description
        self.cause = cause
        self.provider = provider
        self.provider_code = provider_code
        self.upstream_request_id = upstream_request_id
        self.retry_after = None if retry_after is None else max(1, int(retry_after))
        super().__init__(self.description)

    @property
    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(self.retry_after)}

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
    default_description = f"grant_type must be {TOKEN_EXCHANGE_GRANT_TYPE}"


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

    #: Seconds a caller is told to wait when the raiser names no better value.
    default_retry_after = 5

    def __init__(
        self,
        description: str | None = None,
        *,
        retry_after: int | None = None,
        cause: str | None = None,
        provider: str | None = None,
        provider_code: str | None = None,
        upstream_request_id: str | None = None,
    ) -> None:
        super().__init__(
            description,
            cause=cause,
            provider=provider,
            provider_code=provider_code,
            upstream_request_id=upstream_request_id,
            retry_after=self.default_retry_after if retry_after is None else retry_after,
        )


class BodyTimeout(OAuthError):
    """The request body did not arrive within its deadline (docs/reference.md section 10)."""

    error = "invalid_request"
    status = 408
    default_description = "request body not received in time"


class MethodNotAllowed(OAuthError):
    """A method the endpoint does not take (RFC 9110 section 15.5.6); ``allow`` lists those
    it does."""

    error = "method_not_allowed"
    status = 405
    default_description = "method not allowed"

    def __init__(self, allow: str) -> None:
        super().__init__()
        self.allow = allow

    @property
    def headers(self) -> dict[str, str]:
        return {"Allow": self.allow}


class ServerError(OAuthError):
    error = "server_error"
    status = 500
    default_description = "internal error"


class WouldWait(Exception):
    """An operation asked not to wait (on an event loop) would have to: ``resume`` (when
    given) goes on from where it stopped, on a thread."""

    def __init__(self, reason: str, resume: Callable[[], Any] | None = None) -> None:
        super().__init__(reason)
        self.resume = resume
