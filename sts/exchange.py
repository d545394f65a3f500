"""The exchange, top to bottom: verify the subject token, select the mapping, reuse or issue.

No Flask and no HTTP here: :mod:`sts.api.token` reads and parses the request and renders what
comes out. The exchange is two stages over one value, so that an event loop never waits:

1. :meth:`Exchanger.prepare` turns a :class:`TokenRequest` into a :class:`Selection` (the
   verified principal, the mapping, the granted scopes, the credential key) and makes every
   refusal that needs no cloud (the token, the mapping, the request, the configuration). It
   never waits unless told it may; when it would (an unknown ``kid`` whose key set must be
   fetched, the mapping index before its first load) it raises :class:`Unfinished`, whose
   :meth:`Unfinished.finish` continues on a thread from where it stopped.
2. :meth:`Exchanger.obtain_async` takes that same Selection to the credential cache: a hit is
   answered at once; a miss leads one upstream call (:meth:`Exchanger.issue`, on a thread) or
   follows the call already in flight (on the loop, no thread held).

Nothing is parsed, verified, selected or looked up twice, whichever way a request is answered.
Every refusal is an :class:`sts.errors.OAuthError`.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from sts.audit import AuditRecorder
from sts.broker.mint import BrokerMinter
from sts.cache import CacheKey, CredentialCache, cache_key
from sts.errors import OAuthError, ServerError, UnauthorizedClient, WouldWait
from sts.identity.principal import Principal
from sts.identity.verifier import TokenVerifier
from sts.mappings.index import MappingIndex, check_request, id_token_audience
from sts.mappings.live import LiveMappings
from sts.mappings.spec import BROKER, MappingSpec
from sts.metrics import SELECTIONS, UPSTREAM_CALLS, UPSTREAM_SECONDS
from sts.providers.base import CredentialProvider, Credentials
from sts.revocations import REVOKED

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Runs a blocking function on a request thread and awaits it (the server's executor).
OnThread = Callable[..., Awaitable[T]]


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """The RFC 8693 section 2.1 fields the service acts on (already syntax-checked)."""

    subject_token: str
    audience: str | None = None
    resource: str | None = None
    scope: str | None = None
    requested_token_type: str | None = None


@dataclass(frozen=True, slots=True)
class Selection:
    """A request made ready for the credential cache: who asks (the verified principal and
    the token's :func:`sts.identity.verifier.token_digest`), for what (the mapping, chosen from
    ``index``, and the granted scopes), and under which credential key. The subject token is
    kept only for a pass-through mapping's upstream call."""

    principal: Principal
    token_digest: bytes
    index: MappingIndex
    mapping: MappingSpec
    scopes: tuple[str, ...]
    key: CacheKey
    subject_token: str
    id_token_audience: str | None = None
    """A GCP ID token's audience (docs/reference.md section 14); None for access tokens."""


@dataclass(frozen=True, slots=True)
class Exchanged:
    selection: Selection
    credentials: Credentials
    cache_hit: bool


class Unfinished(Exception):
    """:meth:`Exchanger.prepare` stopped where it would have waited; :meth:`finish` goes on
    from there, on a thread (what was done before is not done again)."""

    def __init__(self, finish: Callable[[], Selection], reason: str) -> None:
        super().__init__(reason)
        self.finish = finish


class Repeats:
    """Selections by the digest of the request bytes they were made from (the HTTP layer's,
    :func:`sts.api.token.request_digest`).

    The same bytes always parse to the same request, select the same mapping from the same
    index and ask for the same key: a repeat skips all three. What time changes is checked
    again on every repeat (:meth:`Exchanger.prepare`: the token's verification, through the
    verifier's own test). A selection carries its subject token (a pass-through mapping's
    upstream call presents it), so an entry keeps a token in memory as long as it lives, as
    the request that brought it did. A new mapping index drops every entry; a full table is
    emptied.
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
        self.selections = 0
        """Mapping selections made (a repeat or a thread finishing a request adds none)."""

    # -- stage 1: the selection ----------------------------------------------------------------

    def prepare(
        self,
        request: Callable[[], TokenRequest],
        *,
        repeat_as: Hashable | None = None,
        may_wait: bool = False,
    ) -> Selection:
        """The :class:`Selection` for a request, or the refusal it gets.

        ``request`` parses the request (called only when it is not a repeat); ``repeat_as`` is
        the digest of its bytes (:class:`Repeats`). With ``may_wait`` false (an event loop)
        nothing here waits: :class:`Unfinished` says what is left for a thread.
        """
        index = self.mappings.current_or_none()
        if repeat_as is not None and index is not None:
            remembered = self.repeats.get(repeat_as, index)
            # A repeat is answered only while its verification still holds, by the verifier's
            # own test (expiry, the key still the issuer's); otherwise the whole way decides.
            if remembered is not None and self.verifier.verified_before(remembered.token_digest):
                return self._admit(remembered)
        parsed = request()
        try:
            principal, digest = self.verifier.verify_digested(
                parsed.subject_token, may_fetch=may_wait
            )
        except WouldWait as waiting:
            resume = waiting.resume
            assert resume is not None

            def verify_then_select() -> Selection:
                principal, digest = resume()
                return self._select(parsed, principal, digest, None, repeat_as)

            raise Unfinished(verify_then_select, str(waiting)) from None
        if index is None:
            if may_wait:
                return self._select(parsed, principal, digest, None, repeat_as)
            raise Unfinished(
                functools.partial(self._select, parsed, principal, digest, None, repeat_as),
                "mapping index not loaded",
            )
        return self._select(parsed, principal, digest, index, repeat_as)

    def _select(
        self,
        request: TokenRequest,
        principal: Principal,
        digest: bytes,
        index: MappingIndex | None,
        repeat_as: Hashable | None,
    ) -> Selection:
        if index is None:
            index = self.mappings.current()  # waits for the first load, boundedly
        self.selections += 1
        SELECTIONS.inc()
        mapping = index.select(principal, request.audience, request.resource)
        try:
            scopes = check_request(mapping, request.scope, request.requested_token_type)
            audience = id_token_audience(mapping, request.resource, request.requested_token_type)
            self._check_configuration(mapping)
        except OAuthError as refusal:
            refusal.mapping_provider = mapping.provider
            raise
        selection = Selection(
            principal,
            digest,
            index,
            mapping,
            scopes,
            cache_key(mapping, principal, scopes, audience),
            request.subject_token,
            audience,
        )
        if repeat_as is not None:
            self.repeats.put(repeat_as, selection)
        return self._admit(selection)

    def _admit(self, selection: Selection) -> Selection:
        """Refuse a revoked identity (docs/reference.md section 11): on every path, repeats
        included, before any cache is looked at."""
        revoked = self.mappings.revoked.refusing(selection.principal, selection.mapping.name)
        if revoked is not None:
            refusal = UnauthorizedClient(REVOKED, cause=f"revocation {revoked.id}")
            refusal.mapping_provider = selection.mapping.provider
            raise refusal
        return selection

    def _check_configuration(self, mapping: MappingSpec) -> None:
        """A mapping this service cannot serve as configured is a 500 on every path, never the
        caller's fault (reference section 4), logged with the mapping's name."""
        if mapping.provider not in self.providers:
            raise ServerError(cause=f"no provider configured for {mapping.provider}")
        if mapping.token == BROKER and self.minter is None:
            log.error(
                "mapping %s has token broker but STS_BROKER_ISSUER is not set",
                mapping.name,
                extra={"mapping": mapping.name},
            )
            raise ServerError(cause=f"mapping {mapping.name}: broker token without an issuer")

    # -- stage 2: the credentials --------------------------------------------------------------

    async def obtain_async(
        self, selection: Selection, on_thread: OnThread[Any], *, on_loop: bool = True
    ) -> Exchanged:
        """The credentials for ``selection``: a hit at once; a miss leads the upstream call on
        a request thread (``on_thread``) or follows the one in flight. On an event loop
        (``on_loop``) a follower holds no thread; otherwise (a WSGI server's request thread,
        where ``on_thread`` runs in place) it waits where it is."""
        issue = functools.partial(self.issue, selection)
        credentials = self.cache.lookup(selection.key, issue)
        if credentials is not None:
            return Exchanged(selection, credentials, cache_hit=True)
        flight, leader = self.cache.join(selection.key)
        if leader:
            credentials, hit = await on_thread(self.cache.lead, selection.key, issue, flight)
            return Exchanged(selection, credentials, hit)
        if on_loop:
            credentials = await self.cache.follow_async(flight)
        else:
            credentials = await on_thread(self.cache.follow, flight)
        return Exchanged(selection, credentials, cache_hit=False)

    def issue(self, selection: Selection) -> Credentials:
        """One upstream call for ``selection`` (a thread: it waits on the cloud), recorded in
        the audit trail before it is made (``pending``) and completed before the caller is
        answered."""
        principal, mapping, scopes = selection.principal, selection.mapping, selection.scopes
        audience = selection.id_token_audience
        provider = self.providers[mapping.provider]
        minter = self.minter
        if minter is not None and mapping.token == BROKER:
            claims = provider.broker_claims(mapping)
            try:
                web_identity = minter.mint(
                    principal, mapping.name, claims.audience, session_tags=claims.session_tags
                )
            except Exception as exc:
                # A tag AWS cannot carry, KMS unreachable: no cloud call was made, so no pending
                # row either; the refusal is the whole row.
                self.audit.record_refused(principal, mapping, exc, scopes=scopes)
                raise
        else:
            web_identity = selection.subject_token
        # Written before the call: a process killed while the cloud answers leaves this row
        # ``pending`` (credentials may have been issued). The calls below complete it.
        pending = self.audit.record_pending(principal, mapping, scopes=scopes, audience=audience)
        started = time.perf_counter()
        try:
            credentials = provider.issue(
                principal, mapping, web_identity, scopes, audience=audience
            )
        except OAuthError as exc:
            UPSTREAM_CALLS.labels(mapping.provider, exc.error).inc()
            self.audit.record_refused(
                principal, mapping, exc, scopes=scopes, pending=pending, audience=audience
            )
            raise
        except Exception as exc:
            UPSTREAM_CALLS.labels(mapping.provider, "server_error").inc()
            self.audit.record_refused(
                principal, mapping, exc, scopes=scopes, pending=pending, audience=audience
            )
            raise
        finally:
            UPSTREAM_SECONDS.labels(mapping.provider).observe(time.perf_counter() - started)
        UPSTREAM_CALLS.labels(mapping.provider, "ok").inc()
        # Completed before the caller is answered: a process killed after responding has
        # already recorded what it handed out (the recorder never raises).
        self.audit.record_issued(
            principal, mapping, credentials, scopes=scopes, pending=pending, audience=audience
        )
        return credentials
