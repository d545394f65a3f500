"""Azure credentials through Microsoft Entra workload identity federation.

One call (https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-client-creds-grant-flow,
"access token request with a federated credential"): ``POST
{STS_AZURE_AUTHORITY_URL}/{tenant_id}/oauth2/v2.0/token`` with the client credentials grant, the
mapping's ``client_id`` and scope, and the broker token (``aud`` ``api://AzureADTokenExchange``)
or, with ``token: zuplo``, the Zuplo token as the RFC 7523 client assertion. Entra checks the
assertion against a federated identity credential of that app or managed identity: issuer,
subject (``mapping:<name>`` for a broker token) and audience.

The request is made with ``requests`` on the pooled session of :func:`sts.outbound.upstream_session`
(no credential from the environment, proxies as for every upstream), with the same connect/read
timeouts and the same retry policy as the other providers: none here; a transient failure is
``temporarily_unavailable`` with ``Retry-After`` and the caller retries. msal is not used: its
authorities must be ``https://`` (it refuses the loopback emulator the tests run against), it
reads the tenant's discovery documents before the first token (one more call per process and
tenant), and it keeps a token cache of its own beneath the service's, keyed without the caller's
identity.

Errors: Entra's 400 and 401 answers carry ``error_codes`` (and an ``error_description`` that
starts ``AADSTS<n>:``); the caller sees ``azure: AADSTS<n> - <fixed phrase>`` from :data:`ERRORS`,
never Entra's text, which echoes the assertion's issuer and subject. 429, 5xx, timeouts and
unusable answers are ``temporarily_unavailable``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import requests

from sts.config import Settings
from sts.identity.principal import Principal
from sts.mappings.spec import MappingSpec
from sts.outbound import upstream_session
from sts.protocol import AZURE_BROKER_AUDIENCE, CLIENT_ASSERTION_TYPE, CLIENT_CREDENTIALS_GRANT_TYPE
from sts.providers.base import BrokerClaims, CredentialProvider, Credentials
from sts.providers.errors import (
    MIN_LIFETIME_SECONDS,
    RETRY_AFTER_SECONDS,
    THROTTLED_RETRY_AFTER_SECONDS,
    Outcome,
    parse_retry_after,
    redact,
    refused,
    request_id,
    unavailable,
)

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 2.0
READ_TIMEOUT_SECONDS = 5.0
POOL_SIZE = 32
#: Entra's access tokens live 60 to 90 minutes, 24 hours at most: a longer ``expires_in`` is a
#: broken answer.
MAX_EXPIRES_IN_SECONDS = 86400

_AADSTS = re.compile(r"AADSTS(\d{1,9})\b")


def _refusal(number: int, phrase: str) -> Outcome:
    return refused("azure", f"AADSTS{number}", phrase)


#: The one table from Entra's AADSTS numbers to fixed phrases
#: (https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes). Any other
#: number of a 400/401 answer is ``invalid_target`` with :data:`GENERIC_PHRASE`.
ERRORS: dict[int, Outcome] = {
    number: _refusal(number, phrase)
    for number, phrase in (
        # The federated credential: none matches the assertion.
        (700211, "no federated credential of the app matches the token's issuer"),
        (700212, "no federated credential of the app matches the token's audience"),
        (700213, "no federated credential of the app matches the token's subject"),
        (70021, "no federated credential of the app matches the token"),
        # The assertion itself.
        (700024, "the client assertion is not within its valid time range"),
        (700027, "the client assertion's signature was not accepted"),
        (50027, "the client assertion is not a valid token"),
        (50166, "Entra could not read the issuer's keys"),
        (700023, "the client assertion's audience was not accepted"),
        # The app, the tenant, the resource.
        (700016, "the application was not found in the tenant"),
        (90002, "the tenant was not found"),
        (500011, "the resource was not found in the tenant"),
        (1002012, "the scope must be a resource followed by /.default"),
        (70011, "the scope was not accepted"),
        (7000112, "the application is disabled"),
        # The request.
        (900144, "the request was missing a parameter"),
        (9000411, "the request repeated a parameter"),
        (90014, "the request was not accepted"),
        (70003, "the grant was not accepted"),
        (90011, "the client assertion type was not accepted"),
    )
}
GENERIC_PHRASE = "Entra refused the exchange"

_MALFORMED = unavailable("azure", "MalformedResponse", "Entra sent an unusable response")
_CONNECT_TIMEOUT = unavailable("azure", "ConnectTimeout", "could not connect to Entra in time")
_READ_TIMEOUT = unavailable("azure", "ReadTimeout", "Entra did not answer in time")
_CONNECTION = unavailable("azure", "ConnectionError", "could not connect to Entra")


class _UpstreamError(Exception):
    """An upstream failure, classified: the table row and the log-only cause."""

    def __init__(self, outcome: Outcome, cause: str, request_id: str | None = None) -> None:
        super().__init__(outcome.description)
        self.outcome = outcome
        self.cause = cause
        self.request_id = request_id


class AzureProvider:
    """:class:`sts.providers.base.CredentialProvider` for mappings with an ``azure`` target."""

    def __init__(
        self,
        settings: Settings,
        *,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
        read_timeout: float = READ_TIMEOUT_SECONDS,
        pool_size: int = POOL_SIZE,
    ) -> None:
        self._authority = settings.azure_authority_url.rstrip("/")
        self._timeout = (connect_timeout, read_timeout)
        self._session = upstream_session(pool_size=pool_size)

    def close(self) -> None:
        """Release pooled connections."""
        self._session.close()

    def broker_claims(self, mapping: MappingSpec) -> BrokerClaims:
        """``aud`` ``api://AzureADTokenExchange``: the audience of a federated credential."""
        if mapping.azure is None:
            raise ValueError(f"mapping {mapping.name!r} has no azure target")
        return BrokerClaims(AZURE_BROKER_AUDIENCE)

    def token_url(self, tenant_id: str) -> str:
        return f"{self._authority}/{quote(tenant_id, safe='')}/oauth2/v2.0/token"

    def issue(
        self,
        principal: Principal,  # noqa: ARG002 - the protocol's signature; the token says it all
        mapping: MappingSpec,
        subject_token: str,
        scopes: tuple[str, ...],
        *,
        audience: str | None = None,  # noqa: ARG002 - the protocol's; ID tokens are GCP only
    ) -> Credentials:
        """The client credentials grant with ``subject_token`` as the client assertion.

        ``scopes`` were checked against the mapping by the caller; empty means the mapping's.
        Raises :class:`sts.errors.InvalidTarget` when Entra refuses and
        :class:`sts.errors.TemporarilyUnavailable` on 429, 5xx, timeouts, connection failures
        and unusable answers.
        """
        target = mapping.azure
        if target is None:
            raise ValueError(f"mapping {mapping.name!r} has no azure target")
        scopes = scopes or target.scopes
        try:
            token, expires_in, upstream_id = self._request(
                target.tenant_id, target.client_id, scopes, subject_token
            )
        except _UpstreamError as failure:
            cause = f"Azure exchange failed: mapping={mapping.name} {failure.cause}"
            log.warning("%s", cause)
            raise failure.outcome.error(cause, request_id=failure.request_id) from None
        return Credentials(
            provider="azure",
            access_token=token,
            expires_at=time.time() + expires_in,
            scope=" ".join(scopes),
            request_id=upstream_id,
        )

    def _request(
        self, tenant_id: str, client_id: str, scopes: tuple[str, ...], assertion: str
    ) -> tuple[str, int, str | None]:
        form = {
            "client_id": client_id,
            "grant_type": CLIENT_CREDENTIALS_GRANT_TYPE,
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": assertion,
            "scope": " ".join(scopes),
        }
        try:
            response = self._session.post(
                self.token_url(tenant_id),
                data=form,
                headers={"Accept": "application/json"},
                timeout=self._timeout,
                allow_redirects=False,
            )
        except requests.exceptions.ConnectTimeout:
            raise _UpstreamError(_CONNECT_TIMEOUT, "ConnectTimeout") from None
        except requests.exceptions.Timeout:
            raise _UpstreamError(_READ_TIMEOUT, "ReadTimeout") from None
        except requests.RequestException as exc:
            # requests' messages name the URL and the socket error, never the body.
            raise _UpstreamError(_CONNECTION, type(exc).__name__) from None
        body = _json(response.content)
        upstream_id = request_id(body.get("correlation_id")) if body else None
        if response.status_code != 200:
            failure = _failure(response, body, assertion)
            failure.request_id = upstream_id
            raise failure
        token = body.get("access_token") if body else None
        expires_in = body.get("expires_in") if body else None
        if isinstance(expires_in, str) and expires_in.isdigit():
            expires_in = int(expires_in)  # Entra's v1 endpoint sends strings
        if (
            not isinstance(token, str)
            or not token
            or not isinstance(expires_in, int)
            or isinstance(expires_in, bool)
            or not 0 < expires_in <= MAX_EXPIRES_IN_SECONDS
        ):
            raise _UpstreamError(_MALFORMED, "200 without access_token/expires_in")
        if expires_in < MIN_LIFETIME_SECONDS:
            raise _UpstreamError(
                _MALFORMED, f"token expires within {MIN_LIFETIME_SECONDS} s of issue"
            )
        return token, expires_in, upstream_id


def _json(data: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):  # deeply nested JSON is malformed too
        return None
    return body if isinstance(body, dict) else None


def aadsts_number(body: dict[str, Any] | None) -> int | None:
    """The AADSTS number of an Entra error body: ``error_codes[0]``, else the start of
    ``error_description`` (docs/reference.md section 9)."""
    if body is None:
        return None
    codes = body.get("error_codes")
    if isinstance(codes, list) and codes:
        first = codes[0]
        if isinstance(first, int) and not isinstance(first, bool) and 0 < first < 10**9:
            return first
    description = body.get("error_description")
    if isinstance(description, str):
        match = _AADSTS.match(description)
        if match is not None:
            return int(match.group(1))
    return None


def _failure(
    response: requests.Response, body: dict[str, Any] | None, secret: str
) -> _UpstreamError:
    status = response.status_code
    number = aadsts_number(body)
    detail = redact(response.content.decode("utf-8", "replace"), secret)
    cause = f"status={status} code=AADSTS{number} body={detail!r}"
    if status == 429 or status >= 500:
        retry_after = parse_retry_after(
            response.headers.get("Retry-After"),
            THROTTLED_RETRY_AFTER_SECONDS if status == 429 else RETRY_AFTER_SECONDS,
        )
        code = f"AADSTS{number}" if number is not None else f"HTTP{status}"
        phrase = (
            "Entra is throttling requests, retry later"
            if status == 429
            else ("Entra is unavailable, retry later")
        )
        return _UpstreamError(unavailable("azure", code, phrase, retry_after), cause)
    if status in (400, 401) and number is not None:
        return _UpstreamError(ERRORS.get(number) or _refusal(number, GENERIC_PHRASE), cause)
    # A redirect, a 4xx without an AADSTS number, an HTML error page: not Entra's answer.
    return _UpstreamError(_MALFORMED, cause)


if TYPE_CHECKING:
    # Compile-time check that AzureProvider satisfies the protocol (mypy --strict).
    _: type[CredentialProvider] = AzureProvider
