"""The exchange, top to bottom: verify the subject token, select the mapping, reuse or issue.

No Flask here: :mod:`sts.api.token` parses the HTTP request into a :class:`TokenRequest` and
renders what :meth:`Exchanger.exchange` returns. Every refusal is an :class:`sts.errors.OAuthError`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

from sts.audit import AuditRecorder
from sts.broker.mint import BrokerMinter
from sts.cache import CacheKey, CredentialCache, cache_key
from sts.errors import OAuthError, ServerError, WouldWait
from sts.identity.principal import Principal
from sts.identity.verifier import TokenVerifier
from sts.mappings.index import MappingIndex, check_request
from sts.mappings.live import LiveMappings
from sts.mappings.spec import BROKER, MappingSpec
from sts.metrics import UPSTREAM_CALLS, UPSTREAM_SECONDS
from sts.providers.base import CredentialProvider, Credentials

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """The RFC 8693 section 2.1 fields the service acts on (already syntax-checked)."""

    subject_token: str
    audience: str | None = None
    resource: str | None = None
    scope: str | None = None
    requested_token_type: str | None = None


@dataclass(frozen=True, slots=True)
class Exchanged:
    principal: Principal
    mapping: MappingSpec
    credentials: Credentials
    cache_hit: bool


@dataclass(frozen=True, slots=True)
class Selection:
    """What verification and selection made of a request, short of the credentials: the
    token (by its :func:`sts.identity.verifier.token_digest`), the mapping index it was
    selected from, the mapping and the credential key."""

    token_digest: bytes
    index: MappingIndex
    mapping: MappingSpec
    key: CacheKey


class Repeats:
    """Requests answered from the cache before, by a digest of their bytes (the HTTP layer's,
    :func:`sts.api.token.request_digest`), and their :class:`Selection`.

    The same bytes always parse to the same request, select the same mapping from the same
    index and ask for the same key: a repeat skips all three. What time can change is checked
    again on every repeat (:meth:`Exchanger.repeat`). Entries hold digests, never a token. A
    new mapping index drops them all; a full table is emptied.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self._max = max_entries
        self._index: MappingIndex | None = None
        self._entries: dict[Hashable, Selection] = {}

    def get(self, digest: Hashable, index: MappingIndex) -> Selection | None:
        """The selection remembered for ``digest`` if it was made from ``index``."""
        selection = self._entries.get(digest)
        if selection is None or selection.index is not index:
            return None
        return selection

    def put(self, digest: Hashable, selection: Selection) -> None:
        if selection.index is not self._index or len(self._entries) >= self._max:
            # A new index makes every entry stale: dropped at once, so that no old index is
            # kept alive by them.
            self._entries = {}
            self._index = selection.index
        self._entries[digest] = selection

    def __len__(self) -> int:
        return len(self._entries)


class Exchanger:
    """Wires the verifier, the mapping index, the credential cache and the providers."""

    def __init__(
        self,
        verifier: TokenVerifier,
        mappings: LiveMappings,
        cache: CredentialCache,
        providers: Mapping[str, CredentialProvider],
        audit: AuditRecorder,
        *,
        minter: BrokerMinter | None = None,
    ) -> None:
        self.verifier = verifier
        self.mappings = mappings
        self.cache = cache
        self.providers = providers
        self.audit = audit
        # Broker mode (reference section 8): signs the token a ``token: broker`` mapping's
        # cloud receives. None without STS_BROKER_ISSUER.
        self.minter = minter
        self.repeats = Repeats()

    def exchange_cached(
        self, request: TokenRequest, *, repeat_as: Hashable | None = None
    ) -> Exchanged | None:
        """The exchange if it needs nothing that may wait, else None (:mod:`sts.rsgi` answers
        it on the event loop): the mapping index loaded, and credentials in this process's
        cache. Refusals raise exactly as :meth:`exchange` would; None means "run
        :meth:`exchange` on a request thread" (a miss, a renewal due, the index not loaded).

        ``repeat_as``: the request's digest (:class:`Repeats`), under which an answered
        request is remembered for :meth:`repeat`."""
        if not self.mappings.loaded:
            return None
        try:
            principal, digest = self.verifier.verify_digested(
                request.subject_token, may_fetch=False
            )
        except WouldWait:
            return None
        index = self.mappings.current()
        mapping = index.select(principal, request.audience, request.resource)
        scopes = check_request(mapping, request.scope, request.requested_token_type)
        key = cache_key(mapping, principal, scopes)
        credentials = self.cache.peek(key)
        if credentials is None:
            return None
        if repeat_as is not None:
            self.repeats.put(repeat_as, Selection(digest, index, mapping, key))
        return Exchanged(principal, mapping, credentials, cache_hit=True)

    def repeat(self, digest: Hashable) -> Exchanged | None:
        """The answer to a request answered before under ``digest`` (:class:`Repeats`), when
        nothing that time changes stands in its way: the token's verification still holds (not
        expired, its key still the issuer's), the mapping index is the one it was selected
        from, and the credentials are cached and not due for renewal. Anything else is None,
        and the request takes the whole way (:meth:`exchange_cached`), which gives the answer
        or the refusal it always gives."""
        if not self.mappings.loaded:
            return None
        selection = self.repeats.get(digest, self.mappings.current())
        if selection is None:
            return None
        principal = self.verifier.verified_before(selection.token_digest)
        if principal is None:
            return None
        try:
            credentials = self.cache.peek(selection.key)
        except OAuthError:
            return None  # a remembered refusal: the whole way raises it
        if credentials is None:
            return None
        return Exchanged(principal, selection.mapping, credentials, cache_hit=True)

    def exchange(self, request: TokenRequest) -> Exchanged:
        principal = self.verifier.verify(request.subject_token)
        mapping = self.mappings.current().select(principal, request.audience, request.resource)
        scopes = check_request(mapping, request.scope, request.requested_token_type)
        provider = self.providers.get(mapping.provider)
        if provider is None:
            raise ServerError(cause=f"no provider configured for {mapping.provider}")
        minter = self.minter
        if mapping.token == BROKER and minter is None:
            # A configuration error, not the caller's (reference section 4).
            log.error(
                "mapping %s has token broker but STS_BROKER_ISSUER is not set",
                mapping.name,
                extra={"mapping": mapping.name},
            )
            raise ServerError(cause=f"mapping {mapping.name}: broker token without an issuer")

        def presented() -> str:
            """The token the cloud receives: a fresh broker token per upstream call, or the
            Zuplo token passed through."""
            if minter is None or mapping.token != BROKER:
                return request.subject_token
            claims = provider.broker_claims(mapping)
            try:
                return minter.mint(
                    principal, mapping.name, claims.audience, session_tags=claims.session_tags
                )
            except Exception as exc:
                # A tag AWS cannot carry, KMS unreachable: no cloud call was made.
                self.audit.record_refused(principal, mapping, exc, scopes=scopes)
                raise

        def issue() -> Credentials:
            web_identity = presented()
            started = time.perf_counter()
            try:
                credentials = provider.issue(principal, mapping, web_identity, scopes)
            except OAuthError as exc:
                UPSTREAM_CALLS.labels(mapping.provider, exc.error).inc()
                self.audit.record_refused(principal, mapping, exc, scopes=scopes)
                raise
            except Exception as exc:
                UPSTREAM_CALLS.labels(mapping.provider, "server_error").inc()
                self.audit.record_refused(principal, mapping, exc, scopes=scopes)
                raise
            finally:
                UPSTREAM_SECONDS.labels(mapping.provider).observe(time.perf_counter() - started)
            UPSTREAM_CALLS.labels(mapping.provider, "ok").inc()
            # Written before the caller is answered: a process killed after responding has
            # already recorded what it handed out (the recorder never raises).
            self.audit.record_issued(principal, mapping, credentials, scopes=scopes)
            return credentials

        credentials, hit = self.cache.get_or_issue(cache_key(mapping, principal, scopes), issue)
        return Exchanged(principal, mapping, credentials, hit)
