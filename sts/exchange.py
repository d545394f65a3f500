"""The exchange, top to bottom: verify the subject token, select the mapping, reuse or issue.

No Flask here: :mod:`sts.api.token` parses the HTTP request into a :class:`TokenRequest` and
renders what :meth:`Exchanger.exchange` returns. Every refusal is an :class:`sts.errors.OAuthError`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from sts.audit import AuditRecorder
from sts.broker.mint import BrokerMinter
from sts.cache import CredentialCache, cache_key
from sts.errors import OAuthError, ServerError, WouldWait
from sts.identity.principal import Principal
from sts.identity.verifier import TokenVerifier
from sts.mappings.index import check_request
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

    def exchange_cached(self, request: TokenRequest) -> Exchanged | None:
        """The exchange if it needs nothing that may wait, else None (:mod:`sts.rsgi` answers
        it on the event loop): the mapping index loaded, and credentials in this process's
        cache. Refusals raise exactly as :meth:`exchange` would; None means "run
        :meth:`exchange` on a request thread" (a miss, a renewal due, the index not loaded)."""
        if not self.mappings.loaded:
            return None
        try:
            principal = self.verifier.verify(request.subject_token, may_fetch=False)
        except WouldWait:
            return None
        mapping = self.mappings.current().select(principal, request.audience, request.resource)
        scopes = check_request(mapping, request.scope, request.requested_token_type)
        credentials = self.cache.peek(cache_key(mapping, principal, scopes))
        if credentials is None:
            return None
        return Exchanged(principal, mapping, credentials, cache_hit=True)

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
