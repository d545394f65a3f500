"""Shared pieces of the provider error tables (docs/reference.md section 2, provider refusals).

Each provider maps an upstream error code to one :class:`Outcome` row: which
:class:`sts.errors.OAuthError` the caller gets and its fixed description. Descriptions are
built from the table only, never from upstream messages or caller input, so nothing the
upstream echoes (a token, a claim) can reach the caller.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sts.errors import InvalidRequest, InvalidTarget, OAuthError, TemporarilyUnavailable

#: Seconds a caller is told to wait after a transient upstream failure.
RETRY_AFTER_SECONDS = 2
#: After upstream throttling, wait a little longer.
THROTTLED_RETRY_AFTER_SECONDS = 5
#: Upper bound on an upstream ``Retry-After`` we pass on.
MAX_RETRY_AFTER_SECONDS = 60
#: Upstream text kept in log causes, at most.
MAX_CAUSE_CHARS = 200
#: Shorter parts of a secret are left in place: they could be any word of the message.
MIN_REDACTED_PART = 16
#: docs/reference.md section 2: nothing with under 5 minutes left is ever handed out, fresh
#: from upstream included; an answer that expires sooner is unusable (as
#: ``sts.cache.MIN_REMAINING_SECONDS``).
MIN_LIFETIME_SECONDS = 300

#: What an upstream request id may look like to be kept (AWS sends a UUID).
_REQUEST_ID = re.compile(r"[A-Za-z0-9-]{1,128}")
_JWS_LIKE = re.compile(r"eyJ[A-Za-z0-9_=-]{8,}(\.[A-Za-z0-9_=-]*)*")

Kind = type[InvalidTarget] | type[InvalidRequest] | type[TemporarilyUnavailable]


@dataclass(frozen=True)
class Outcome:
    """One row of an error table: the error class, the upstream code and a fixed phrase.

    The caller sees ``"<provider>: <code> - <phrase>"`` (docs/reference.md section 2);
    the raised error also carries ``provider`` and ``code`` as fields, for the audit trail.
    """

    kind: Kind
    provider: str
    code: str
    phrase: str
    retry_after: int = RETRY_AFTER_SECONDS

    @property
    def description(self) -> str:
        return f"{self.provider}: {self.code} - {self.phrase}"

    def error(
        self, cause: str, *, request_id: str | None = None, retry_after: int | None = None
    ) -> OAuthError:
        """The exception to raise; ``cause`` is for logs only.

        ``request_id`` is the upstream's id for its answer; ``retry_after`` overrides the row's
        (an upstream ``Retry-After``). Only ``temporarily_unavailable`` carries a retry delay.
        """
        delay = None
        if self.kind is TemporarilyUnavailable:
            delay = self.retry_after if retry_after is None else retry_after
        return self.kind(
            self.description,
            cause=cause,
            provider=self.provider,
            provider_code=self.code,
            upstream_request_id=request_id or None,
            retry_after=delay,
        )


def refused(prefix: str, code: str, phrase: str) -> Outcome:
    """A provider refusal: ``invalid_target``, description ``"<prefix>: <code> - <phrase>"``."""
    return Outcome(InvalidTarget, prefix, code, phrase)


def unavailable(
    prefix: str, code: str, phrase: str, retry_after: int = RETRY_AFTER_SECONDS
) -> Outcome:
    """A transient upstream failure: ``temporarily_unavailable`` with ``Retry-After``."""
    return Outcome(TemporarilyUnavailable, prefix, code, phrase, retry_after)


def sanitize_code(code: object, allowed: str = r"A-Za-z0-9.", limit: int = 64) -> str:
    """An upstream error code reduced to ``[allowed]`` characters, for unknown codes only.

    Upstream codes are not caller input, but an unexpected one is still cut down to a short,
    inert token before it goes into a description.
    """
    cleaned = re.sub(f"[^{allowed}]", "", str(code))[:limit]
    return cleaned or "Unknown"


def request_id(value: object) -> str | None:
    """An upstream request id, kept only if it is a short inert token (else ``None``)."""
    return value if isinstance(value, str) and _REQUEST_ID.fullmatch(value) else None


def parse_retry_after(value: str | None, default: int) -> int:
    """An upstream ``Retry-After`` in whole seconds (RFC 9110 10.2.3), clamped; else ``default``.

    Only the delay-seconds form is honoured; an HTTP-date falls back to ``default``.
    """
    if value is None or not value.strip().isdigit():
        return default
    return max(1, min(int(value.strip()), MAX_RETRY_AFTER_SECONDS))


def redact(text: str, *secrets: str) -> str:
    """Upstream text for a log cause: secrets removed, cut to :data:`MAX_CAUSE_CHARS`.

    Each dot-separated part of a secret goes too: a JWS signature echoed on its own is enough to
    rebuild the token from claims anyone can guess.
    """
    for secret in secrets:
        if not secret:
            continue
        text = text.replace(secret, "[redacted]")
        for part in secret.split("."):
            if len(part) >= MIN_REDACTED_PART:
                text = text.replace(part, "[redacted]")
    # Upstreams sometimes echo part of a token; any JWS-looking run goes too.
    return _JWS_LIKE.sub("[redacted]", text)[:MAX_CAUSE_CHARS]
