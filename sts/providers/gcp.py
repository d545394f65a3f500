"""GCP credentials through Workload Identity Federation.

1. Token exchange at Google STS (RFC 8693;
   https://cloud.google.com/iam/docs/reference/sts/rest/v1/TopLevel/token) with google-auth's
   :class:`google.oauth2.sts.Client`: the Zuplo ID token for a federated access token.
2. When the mapping names a service account, ``generateAccessToken`` on the IAM Credentials
   API (https://cloud.google.com/iam/docs/reference/credentials/rest/v1/projects.serviceAccounts/generateAccessToken)
   with the federated token; its access token is the result.
3. For an ID token (``audience``; docs/reference.md, "GCP ID tokens"), ``generateIdToken``
   (https://cloud.google.com/iam/docs/reference/credentials/rest/v1/projects.serviceAccounts/generateIdToken)
   instead, after an exchange for the ``cloud-platform`` scope; the result expires at the
   token's own ``exp``.

Both calls go through one pooled ``requests`` session from :func:`sts.outbound.upstream_session`
(no credential from the environment, proxies as for every upstream) with connect/read timeouts, via
:class:`_Transport`, a google-auth transport of our own. It exists because google-auth's requests
transport takes no default timeout (its 120 s applies to calls that pass none, as
``sts.Client`` does), does not expose the HTTP status on errors, and at DEBUG level logs request
bodies and ``Authorization`` headers, which here hold the subject and federated tokens.

The impersonation calls are made directly rather than through
``google.auth.impersonated_credentials``: that class reads environment switches (regional
access boundary lookups that call other Google endpoints), accepts only one ``expireTime``
format, and hides the HTTP status; each request itself is one small JSON POST.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import google.auth.exceptions
import google.auth.transport
import google.oauth2.sts
import requests

from sts.config import Settings
from sts.errors import TemporarilyUnavailable
from sts.identity.principal import Principal
from sts.mappings.spec import DEFAULT_GCP_SCOPE, IAM_SCOPE, MappingSpec
from sts.outbound import upstream_session
from sts.protocol import (
    GCP_BROKER_AUDIENCE_PREFIX,
    GCP_REQUESTED_TOKEN_TYPE,
    GCP_SUBJECT_TOKEN_TYPE,
    TOKEN_EXCHANGE_GRANT_TYPE,
)
from sts.providers.base import ID_TOKEN, BrokerClaims, CredentialProvider, Credentials
from sts.providers.errors import (
    MIN_LIFETIME_SECONDS,
    RETRY_AFTER_SECONDS,
    THROTTLED_RETRY_AFTER_SECONDS,
    Outcome,
    parse_retry_after,
    redact,
    refused,
    sanitize_code,
    unavailable,
)

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 2.0
READ_TIMEOUT_SECONDS = 5.0
POOL_SIZE = 32
#: The longest a Google access token lives (12 hours, the ``generateAccessToken`` maximum): a
#: longer ``expires_in`` is a broken answer, and one beyond a float's range would not even add up.
MAX_EXPIRES_IN_SECONDS = 43200


def _row(code: str, phrase: str) -> Outcome:
    return refused("gcp", code, phrase)


#: The one table from Google error codes (STS OAuth ``error``, IAM ``error.status``) to the
#: contract's errors. Codes not listed: 4xx -> invalid_target, 429/5xx -> temporarily_unavailable.
ERRORS: dict[str, Outcome] = {
    # STS (RFC 6749 5.2 / RFC 8693 2.2.2 codes)
    "invalid_grant": _row("invalid_grant", "the subject token was not accepted"),
    "invalid_target": _row("invalid_target", "the workload identity provider was not accepted"),
    "unauthorized_client": _row("unauthorized_client", "the identity is not allowed by the pool"),
    "invalid_request": _row("invalid_request", "the exchange request was not accepted"),
    "invalid_scope": _row("invalid_scope", "the scope was not accepted"),
    "invalid_client": _row("invalid_client", "the client was not accepted"),
    "unsupported_grant_type": _row("unsupported_grant_type", "the grant was not accepted"),
    "access_denied": _row("access_denied", "the exchange was denied"),
    "temporarily_unavailable": unavailable(
        "gcp", "temporarily_unavailable", "Google STS is unavailable, retry later"
    ),
    # IAM Credentials (google.rpc.Code names)
    "PERMISSION_DENIED": _row(
        "PERMISSION_DENIED", "the identity may not impersonate the service account"
    ),
    "NOT_FOUND": _row("NOT_FOUND", "the service account was not found"),
    "UNAUTHENTICATED": _row("UNAUTHENTICATED", "the federated token was not accepted"),
    "INVALID_ARGUMENT": _row("INVALID_ARGUMENT", "the impersonation request was not accepted"),
    "FAILED_PRECONDITION": _row("FAILED_PRECONDITION", "the service account is not usable"),
    "RESOURCE_EXHAUSTED": unavailable(
        "gcp", "RESOURCE_EXHAUSTED", "quota exhausted, retry later", THROTTLED_RETRY_AFTER_SECONDS
    ),
    "UNAVAILABLE": unavailable("gcp", "UNAVAILABLE", "Google is unavailable, retry later"),
    "INTERNAL": unavailable("gcp", "INTERNAL", "Google is unavailable, retry later"),
    "DEADLINE_EXCEEDED": unavailable("gcp", "DEADLINE_EXCEEDED", "Google did not answer in time"),
}

_MALFORMED = unavailable("gcp", "MalformedResponse", "Google sent an unusable response")
_CONNECT_TIMEOUT = unavailable("gcp", "ConnectTimeout", "could not connect to Google in time")
_READ_TIMEOUT = unavailable("gcp", "ReadTimeout", "Google did not answer in time")
_CONNECTION = unavailable("gcp", "ConnectionError", "could not connect to Google")

#: Characters kept from an unknown Google error code (OAuth codes use "_").
_CODE_CHARS = "A-Za-z0-9._"
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
#: The scope of the federated token that asks for an ID token (docs/reference.md,
#: "GCP ID tokens").
ID_TOKEN_EXCHANGE_SCOPES = (DEFAULT_GCP_SCOPE,)
_EXPIRE_TIME = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)")


@dataclass
class _Response(google.auth.transport.Response):
    """google-auth's response interface over a ``requests`` response."""

    _status: int
    _headers: Mapping[str, str]
    _data: bytes

    @property
    def status(self) -> int:
        return self._status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._headers

    @property
    def data(self) -> bytes:
        return self._data


class _Transport(google.auth.transport.Request):
    """A google-auth transport for one ``issue`` call: shared session, fixed timeouts.

    It keeps the last response so that errors can be classified by HTTP status, which
    google-auth's exceptions do not carry. It never logs.
    """

    def __init__(self, session: requests.Session, timeout: tuple[float, float]) -> None:
        self._session = session
        self._timeout = timeout
        self.last: _Response | None = None

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: Any = None,  # noqa: ARG002 - ours are fixed per provider
        **kwargs: Any,  # noqa: ARG002 - nothing else (client certificates) is used
    ) -> _Response:
        self.last = None
        try:
            response = self._session.request(
                method,
                url,
                data=body,
                headers=dict(headers or {}),
                timeout=self._timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise google.auth.exceptions.TransportError(exc) from exc  # type: ignore[no-untyped-call]
        self.last = _Response(response.status_code, response.headers, response.content)
        return self.last


class _UpstreamError(Exception):
    """An upstream failure, classified: the table row and the log-only cause."""

    def __init__(self, outcome: Outcome, cause: str) -> None:
        super().__init__(outcome.description)
        self.outcome = outcome
        self.cause = cause


class GcpProvider:
    """:class:`sts.providers.base.CredentialProvider` for mappings with a ``gcp`` target.

    One pooled ``requests`` session per instance; timeouts are constructor arguments so tests
    can make failures fast. Upstream calls are not retried here: a transient failure becomes
    ``temporarily_unavailable`` with ``Retry-After`` and the caller retries.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
        read_timeout: float = READ_TIMEOUT_SECONDS,
        pool_size: int = POOL_SIZE,
    ) -> None:
        self._sts = google.oauth2.sts.Client(settings.gcp_sts_url)  # type: ignore[no-untyped-call]
        self._iam_url = settings.gcp_iam_credentials_url.rstrip("/")
        self._timeout = (connect_timeout, read_timeout)
        self._session = upstream_session(pool_size=pool_size)

    def close(self) -> None:
        """Release pooled connections."""
        self._session.close()

    def broker_claims(self, mapping: MappingSpec) -> BrokerClaims:
        """``aud`` ``https:`` + the provider name: the audience a workload identity provider
        allows when it names none (Google's default)."""
        target = mapping.gcp
        if target is None:
            raise ValueError(f"mapping {mapping.name!r} has no gcp target")
        return BrokerClaims(GCP_BROKER_AUDIENCE_PREFIX + target.workload_identity_provider)

    def issue(
        self,
        principal: Principal,  # noqa: ARG002 - the protocol's signature; the token says it all
        mapping: MappingSpec,
        subject_token: str,
        scopes: tuple[str, ...],
        *,
        audience: str | None = None,
    ) -> Credentials:
        """Exchange the subject token (and impersonate the service account, if any).

        ``scopes`` were checked against the mapping by the caller; empty means the mapping's.
        With ``audience`` (one of the mapping's ``id_token_audiences``, chosen by the caller)
        the result is the service account's Google-signed ID token for it instead
        (``token_type`` :data:`~sts.providers.base.ID_TOKEN`, no scope; ``scopes`` unused).
        Raises :class:`sts.errors.InvalidTarget` when Google refuses and
        :class:`sts.errors.TemporarilyUnavailable` on 429, 5xx, timeouts, connection failures
        and unusable responses.
        """
        target = mapping.gcp
        if target is None:
            raise ValueError(f"mapping {mapping.name!r} has no gcp target")
        if audience is not None and (
            target.service_account is None or audience not in target.id_token_audiences
        ):
            raise ValueError(f"audience not in mapping {mapping.name!r}'s id_token_audiences")
        scopes = scopes or target.scopes
        transport = _Transport(self._session, self._timeout)
        secrets = [subject_token]
        try:
            if audience is not None:
                token, expires_at = self._id_token(
                    transport, mapping, subject_token, audience=audience, secrets=secrets
                )
            else:
                # As google-auth does, the federated token carries only the IAM scope when it
                # is used to impersonate; the requested scopes go on the service account's token.
                token, expires_at = self._exchange(
                    transport,
                    audience=target.workload_identity_provider,
                    subject_token=subject_token,
                    scopes=(IAM_SCOPE,) if target.service_account else scopes,
                    secrets=secrets,
                )
                if target.service_account is not None:
                    secrets.append(token)
                    token, expires_at = self._generate(
                        transport,
                        service_account=target.service_account,
                        federated_token=token,
                        scopes=scopes,
                        lifetime_seconds=target.lifetime_seconds,
                        secrets=secrets,
                    )
            if expires_at - time.time() < MIN_LIFETIME_SECONDS:
                raise _UpstreamError(
                    _MALFORMED, f"token expires within {MIN_LIFETIME_SECONDS} s of issue"
                )
        except _UpstreamError as failure:
            cause = f"GCP exchange failed: mapping={mapping.name} {failure.cause}"
            log.warning("%s", cause)
            raise failure.outcome.error(cause) from None
        if audience is not None:
            return Credentials(
                provider="gcp", access_token=token, expires_at=expires_at, token_type=ID_TOKEN
            )
        return Credentials(
            provider="gcp", access_token=token, expires_at=expires_at, scope=" ".join(scopes)
        )

    def _id_token(
        self,
        transport: _Transport,
        mapping: MappingSpec,
        subject_token: str,
        *,
        audience: str,
        secrets: list[str],
    ) -> tuple[str, float]:
        """The exchange as for an access token, for the cloud-platform scope (docs/reference.md,
        "GCP ID tokens"), then the service account's ID token for ``audience`` and its expiry."""
        target = mapping.gcp
        assert target is not None
        assert target.service_account is not None
        federated, _ = self._exchange(
            transport,
            audience=target.workload_identity_provider,
            subject_token=subject_token,
            scopes=ID_TOKEN_EXCHANGE_SCOPES,
            secrets=secrets,
        )
        secrets.append(federated)
        return self._generate_id_token(
            transport,
            service_account=target.service_account,
            federated_token=federated,
            audience=audience,
            secrets=secrets,
        )

    def _exchange(
        self,
        transport: _Transport,
        *,
        audience: str,
        subject_token: str,
        scopes: tuple[str, ...],
        secrets: list[str],
    ) -> tuple[str, float]:
        """RFC 8693 exchange at Google STS: the federated access token and its expiry."""
        try:
            answer = self._sts.exchange_token(  # type: ignore[no-untyped-call]
                request=transport,
                grant_type=TOKEN_EXCHANGE_GRANT_TYPE,
                subject_token=subject_token,
                subject_token_type=GCP_SUBJECT_TOKEN_TYPE,
                audience=audience,
                requested_token_type=GCP_REQUESTED_TOKEN_TYPE,
                scopes=list(scopes),
            )
        except google.auth.exceptions.TransportError as exc:
            raise _transport_failure("sts", exc) from None
        except (google.auth.exceptions.GoogleAuthError, ValueError):
            # OAuthError for a non-200 answer, ValueError for a 200 that is not JSON.
            raise _http_failure("sts", transport.last, secrets) from None
        token = answer.get("access_token") if isinstance(answer, dict) else None
        expires_in = answer.get("expires_in") if isinstance(answer, dict) else None
        if (
            not isinstance(token, str)
            or not token
            or not isinstance(expires_in, int)
            or isinstance(expires_in, bool)
            or not 0 < expires_in <= MAX_EXPIRES_IN_SECONDS
        ):
            raise _UpstreamError(_MALFORMED, "sts: 200 without access_token/expires_in")
        return token, time.time() + expires_in

    def _generate(
        self,
        transport: _Transport,
        *,
        service_account: str,
        federated_token: str,
        scopes: tuple[str, ...],
        lifetime_seconds: int,
        secrets: list[str],
    ) -> tuple[str, float]:
        """``projects.serviceAccounts.generateAccessToken``: the SA's token and its expiry."""
        answer = self._iam_call(
            transport,
            f"{quote(service_account, safe='@.')}:generateAccessToken",
            {"scope": list(scopes), "lifetime": f"{lifetime_seconds}s"},
            federated_token,
            secrets,
        )
        try:
            token = answer["accessToken"]
            expires_at = _parse_expire_time(answer["expireTime"])
        except (ValueError, KeyError, TypeError, RecursionError):
            raise _UpstreamError(_MALFORMED, "iam: 200 without accessToken/expireTime") from None
        if not isinstance(token, str) or not token:
            raise _UpstreamError(_MALFORMED, "iam: 200 without accessToken/expireTime")
        return token, expires_at

    def _iam_call(
        self,
        transport: _Transport,
        method: str,
        request: dict[str, Any],
        federated_token: str,
        secrets: list[str],
    ) -> dict[str, Any]:
        """``POST {iam}/v1/projects/-/serviceAccounts/{method}`` with the federated token: the
        JSON object answered, or the contract's errors (transport, refusal, malformed)."""
        url = f"{self._iam_url}/v1/projects/-/serviceAccounts/{method}"
        headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {federated_token}",
        }
        try:
            response = transport(
                url=url, method="POST", body=json.dumps(request).encode(), headers=headers
            )
        except google.auth.exceptions.TransportError as exc:
            raise _transport_failure("iam", exc) from None
        if response.status != 200:
            raise _http_failure("iam", response, secrets)
        try:
            answer = json.loads(response.data)
        except (ValueError, RecursionError):  # RecursionError: nested too deep for json
            raise _UpstreamError(_MALFORMED, f"iam: 200 that is not JSON ({method})") from None
        if not isinstance(answer, dict):
            raise _UpstreamError(_MALFORMED, f"iam: 200 that is not a JSON object ({method})")
        return answer

    def _generate_id_token(
        self,
        transport: _Transport,
        *,
        service_account: str,
        federated_token: str,
        audience: str,
        secrets: list[str],
    ) -> tuple[str, float]:
        """``projects.serviceAccounts.generateIdToken``: the SA's ID token for ``audience`` and
        its expiry, read from the token's own ``exp`` (nothing else in the answer counts)."""
        answer = self._iam_call(
            transport,
            f"{quote(service_account, safe='@.')}:generateIdToken",
            {"audience": audience, "includeEmail": True},
            federated_token,
            secrets,
        )
        try:
            token = answer["token"]
        except (KeyError, TypeError):
            raise _UpstreamError(_MALFORMED, "iam: 200 without token") from None
        if not isinstance(token, str) or not token:
            raise _UpstreamError(_MALFORMED, "iam: 200 without token")
        claims = _jwt_claims(token)
        if claims is None:
            raise _UpstreamError(_MALFORMED, "iam: token is not a JWT")
        if claims.get("aud") != audience:
            raise _UpstreamError(_MALFORMED, "iam: token for another audience")
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise _UpstreamError(_MALFORMED, "iam: token without a numeric exp")
        try:
            expires_at = float(exp)
        except OverflowError:
            raise _UpstreamError(_MALFORMED, "iam: token exp out of range") from None
        if not math.isfinite(expires_at) or expires_at - time.time() > MAX_EXPIRES_IN_SECONDS:
            raise _UpstreamError(_MALFORMED, "iam: token exp out of range")
        return token, expires_at


def _jwt_claims(token: str) -> dict[str, Any] | None:
    """The payload of a compact JWS, decoded and not verified (Google signed it; the answer came
    over TLS from Google): None when it is not one."""
    parts = token.split(".")
    if len(parts) != 3 or not _BASE64URL.fullmatch(parts[1]):
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    return claims if isinstance(claims, dict) else None


def _parse_expire_time(value: object) -> float:
    """An RFC 3339 ``expireTime`` (Google sends ``Z``, sometimes with fractional seconds)."""
    match = _EXPIRE_TIME.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError("bad expireTime")
    zone = "+00:00" if match.group(2) == "Z" else match.group(2)
    return datetime.fromisoformat(match.group(1) + zone).timestamp()


def _transport_failure(step: str, exc: google.auth.exceptions.TransportError) -> _UpstreamError:
    cause = exc.__cause__
    if isinstance(cause, requests.exceptions.ConnectTimeout):
        outcome = _CONNECT_TIMEOUT
    elif isinstance(cause, requests.exceptions.Timeout):
        outcome = _READ_TIMEOUT
    else:
        outcome = _CONNECTION
    # requests' messages name the URL and the socket error, never the body.
    return _UpstreamError(outcome, f"{step}: {type(cause).__name__}")


def _error_code(data: bytes) -> str | None:
    """The error code of a Google error body: OAuth ``error`` or ``error.status``."""
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):  # deeply nested JSON is malformed too
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, str):
        return error
    if isinstance(error, dict) and isinstance(error.get("status"), str):
        return str(error["status"])
    return None


def _http_failure(step: str, response: _Response | None, secrets: list[str]) -> _UpstreamError:
    if response is None:
        return _UpstreamError(_MALFORMED, f"{step}: no response")
    status = response.status
    code = _error_code(response.data)
    detail = redact(response.data.decode("utf-8", "replace"), *secrets)
    cause = f"{step}: status={status} code={sanitize_code(code, _CODE_CHARS)} body={detail!r}"
    if status == 200:
        return _UpstreamError(_MALFORMED, cause)
    retry_after = parse_retry_after(
        response.headers.get("Retry-After"),
        THROTTLED_RETRY_AFTER_SECONDS if status == 429 else RETRY_AFTER_SECONDS,
    )
    outcome = ERRORS.get(code) if code is not None else None
    if status == 429 or status >= 500:
        if outcome is None or outcome.kind is not TemporarilyUnavailable:
            name = sanitize_code(code, _CODE_CHARS) if code else f"HTTP{status}"
            outcome = unavailable("gcp", name, "Google is unavailable, retry later")
        outcome = replace(outcome, retry_after=retry_after)
    elif outcome is None:
        if code is None:
            outcome = _MALFORMED
        else:
            outcome = refused(
                "gcp", sanitize_code(code, _CODE_CHARS), "Google refused the exchange"
            )
    return _UpstreamError(outcome, cause)


if TYPE_CHECKING:
    # Compile-time check that GcpProvider satisfies the protocol (mypy --strict).
    _: type[CredentialProvider] = GcpProvider
