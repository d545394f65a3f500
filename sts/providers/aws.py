"""AWS credentials through ``sts:AssumeRoleWithWebIdentity``.

API: https://docs.aws.amazon.com/STS/latest/APIReference/API_AssumeRoleWithWebIdentity.html

The call is unsigned: the subject token is the proof, so the service holds no AWS keys. The boto3
client is built on a botocore session that reads no environment variables and no shared
config or credentials files, so nothing on the host (a profile, ``AWS_ENDPOINT_URL_STS``,
``AWS_MAX_ATTEMPTS``) changes where or how the call is made; only :class:`sts.config.Settings` does.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import boto3.session
import botocore.session
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ParamValidationError,
    ReadTimeoutError,
)
from botocore.parsers import ResponseParserError

from sts.config import Settings
from sts.errors import InvalidRequest, OAuthError
from sts.identity.principal import Principal
from sts.mappings.spec import MappingSpec
from sts.protocol import AWS_BROKER_AUDIENCE
from sts.providers.base import BrokerClaims, CredentialProvider, Credentials
from sts.providers.errors import (
    MIN_LIFETIME_SECONDS,
    THROTTLED_RETRY_AFTER_SECONDS,
    Outcome,
    redact,
    refused,
    request_id,
    sanitize_code,
    unavailable,
)

if TYPE_CHECKING:
    from mypy_boto3_sts.client import STSClient

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 2.0
READ_TIMEOUT_SECONDS = 5.0
#: Attempts per call, the first included, in botocore's "standard" retry mode, which retries
#: throttling, 5xx and transient I/O errors with jittered backoff.
MAX_ATTEMPTS = 3
MAX_POOL_CONNECTIONS = 32

#: RoleSessionName limits (AssumeRoleWithWebIdentity request parameters).
SESSION_NAME_MIN = 2
SESSION_NAME_MAX = 64
_SESSION_NAME_DISALLOWED = re.compile(r"[^A-Za-z0-9_+=,.@-]")


def session_name(deployment: str) -> str:
    """The role session name for a deployment (docs/reference.md section 4).

    Every code point outside ``[A-Za-z0-9_+=,.@-]`` becomes ``-``; the result is cut to 64
    characters and right-padded with ``-`` to at least 2, which is what AWS accepts.
    """
    name = _SESSION_NAME_DISALLOWED.sub("-", deployment)[:SESSION_NAME_MAX]
    return name.ljust(SESSION_NAME_MIN, "-")


def _row(code: str, phrase: str) -> Outcome:
    return refused("aws", code, phrase)


_ACCESS_DENIED = _row("AccessDenied", "the role does not trust this identity")
_INVALID_TOKEN = _row("InvalidIdentityToken", "the identity token was not accepted")
_REJECTED_CLAIM = _row("IDPRejectedClaim", "the identity provider rejected the token's claims")
_MALFORMED_POLICY = _row("MalformedPolicyDocument", "the session policy is malformed")
_POLICY_TOO_LARGE = _row("PackedPolicyTooLarge", "the session policy is too large")
_VALIDATION = _row("ValidationError", "the request parameters were not accepted")
_REGION_DISABLED = _row("RegionDisabledException", "STS is not activated in this region")
_EXPIRED = Outcome(InvalidRequest, "aws", "ExpiredTokenException", "the identity token has expired")
_THROTTLED = unavailable(
    "aws", "Throttling", "request throttled, retry later", THROTTLED_RETRY_AFTER_SECONDS
)
_IDP_UNREACHABLE = unavailable(
    "aws", "IDPCommunicationError", "AWS could not reach the identity provider"
)

#: The one table from AWS error codes (both spellings AWS uses) to the contract's errors.
ERRORS: dict[str, Outcome] = {
    "AccessDenied": _ACCESS_DENIED,
    "AccessDeniedException": _ACCESS_DENIED,
    "InvalidIdentityToken": _INVALID_TOKEN,
    "InvalidIdentityTokenException": _INVALID_TOKEN,
    "IDPRejectedClaim": _REJECTED_CLAIM,
    "IDPRejectedClaimException": _REJECTED_CLAIM,
    "MalformedPolicyDocument": _MALFORMED_POLICY,
    "MalformedPolicyDocumentException": _MALFORMED_POLICY,
    "PackedPolicyTooLarge": _POLICY_TOO_LARGE,
    "PackedPolicyTooLargeException": _POLICY_TOO_LARGE,
    "ValidationError": _VALIDATION,
    "ValidationException": _VALIDATION,
    "RegionDisabledException": _REGION_DISABLED,
    "RegionDisabled": _REGION_DISABLED,
    "ExpiredToken": _EXPIRED,
    "ExpiredTokenException": _EXPIRED,
    "Throttling": _THROTTLED,
    "ThrottlingException": _THROTTLED,
    "RequestLimitExceeded": _THROTTLED,
    "IDPCommunicationError": _IDP_UNREACHABLE,
    "IDPCommunicationErrorException": _IDP_UNREACHABLE,
}

_SERVER_ERROR = unavailable("aws", "ServiceUnavailable", "AWS STS is unavailable, retry later")
_MALFORMED = unavailable("aws", "MalformedResponse", "AWS STS sent an unusable response")
_CONNECT_TIMEOUT = unavailable("aws", "ConnectTimeout", "could not connect to AWS STS in time")
_READ_TIMEOUT = unavailable("aws", "ReadTimeout", "AWS STS did not answer in time")
_CONNECTION = unavailable("aws", "EndpointConnectionError", "could not connect to AWS STS")
_CLOSED = unavailable("aws", "ConnectionClosedError", "AWS STS closed the connection")


def _isolated_boto3_session() -> boto3.session.Session:
    """A boto3 session that consults no environment variable and no ``~/.aws`` file.

    Each session variable keeps its built-in default but loses its environment variable and
    config-file key; the config and credentials files are the empty ``os.devnull``.
    """
    session_vars: dict[str, tuple[Any, Any, Any, Any]] = {
        name: (None, None, default, conversion)
        for name, (_, _, default, conversion) in botocore.session.Session.SESSION_VARIABLES.items()
    }
    session_vars["config_file"] = (None, None, os.devnull, None)
    session_vars["credentials_file"] = (None, None, os.devnull, None)
    return boto3.session.Session(botocore_session=botocore.session.Session(session_vars))


class AwsProvider:
    """:class:`sts.providers.base.CredentialProvider` for mappings with an ``aws`` target.

    One STS client per instance (botocore clients are thread-safe and pool connections). The
    timeouts and attempts are constructor arguments so tests can make failures fast.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
        read_timeout: float = READ_TIMEOUT_SECONDS,
        max_attempts: int = MAX_ATTEMPTS,
        max_pool_connections: int = MAX_POOL_CONNECTIONS,
    ) -> None:
        # botocore-stubs lag botocore: ignore_configured_endpoint_urls is botocore >= 1.31.
        config = Config(  # type: ignore[call-arg]
            signature_version=UNSIGNED,
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max_pool_connections,
            ignore_configured_endpoint_urls=True,
        )
        self._client: STSClient = _isolated_boto3_session().client(
            "sts",
            region_name=settings.aws_region,
            endpoint_url=settings.aws_endpoint_url,
            config=config,
        )

    @property
    def endpoint_url(self) -> str:
        """The STS endpoint this provider calls (the regional one unless overridden)."""
        return self._client.meta.endpoint_url

    def broker_claims(self, mapping: MappingSpec) -> BrokerClaims:
        """``aud`` ``sts.amazonaws.com`` (the IAM OIDC provider's client ID) and, unless the
        mapping says ``session_tags: false``, the session tags claim."""
        target = mapping.aws
        if target is None:
            raise ValueError(f"mapping {mapping.name!r} has no aws target")
        return BrokerClaims(AWS_BROKER_AUDIENCE, session_tags=target.session_tags)

    def issue(
        self,
        principal: Principal,
        mapping: MappingSpec,
        subject_token: str,
        scopes: tuple[str, ...],  # noqa: ARG002 - the protocol's signature; AWS takes no scopes
        *,
        audience: str | None = None,  # noqa: ARG002 - the protocol's; ID tokens are GCP only
    ) -> Credentials:
        """Assume ``mapping.aws.role_arn`` with the subject token as the web identity.

        Raises :class:`sts.errors.InvalidTarget` when AWS refuses,
        :class:`sts.errors.InvalidRequest` when AWS says the token expired, and
        :class:`sts.errors.TemporarilyUnavailable` on throttling, 5xx, timeouts, connection
        failures and unusable responses.
        """
        target = mapping.aws
        if target is None:
            raise ValueError(f"mapping {mapping.name!r} has no aws target")
        params: dict[str, Any] = {
            "RoleArn": target.role_arn,
            "RoleSessionName": session_name(principal.deployment),
            "WebIdentityToken": subject_token,
            "DurationSeconds": target.duration_seconds,
        }
        if target.session_policy is not None:
            params["Policy"] = json.dumps(target.session_policy, separators=(",", ":"))
        try:
            response = self._client.assume_role_with_web_identity(**params)
        except ClientError as exc:
            raise self._client_error(exc, mapping.name, subject_token) from None
        except (BotoCoreError, ResponseParserError) as exc:
            raise self._transport_error(exc, mapping.name) from None
        except ValueError as exc:
            # botocore's parser raises a bare ValueError for an unparsable timestamp in a 200.
            raise self._transport_error(exc, mapping.name) from None
        return self._credentials(response, mapping.name)

    @staticmethod
    def _client_error(exc: ClientError, mapping: str, subject_token: str) -> OAuthError:
        error = exc.response.get("Error", {})
        meta = exc.response.get("ResponseMetadata", {})
        code = str(error.get("Code", ""))
        status = meta.get("HTTPStatusCode")
        outcome = ERRORS.get(code)
        if outcome is None:
            if not isinstance(status, int) or status >= 500:
                outcome = _SERVER_ERROR
            else:
                outcome = refused("aws", sanitize_code(code), "AWS STS refused the exchange")
        upstream_id = request_id(meta.get("RequestId"))
        cause = (
            f"AssumeRoleWithWebIdentity failed: mapping={mapping} code={sanitize_code(code)}"
            f" status={status} request_id={upstream_id}"
            f" message={redact(str(error.get('Message', '')), subject_token)!r}"
        )
        log.warning("%s", cause)
        return outcome.error(cause, request_id=upstream_id)

    @staticmethod
    def _transport_error(
        exc: BotoCoreError | ResponseParserError | ValueError, mapping: str
    ) -> OAuthError:
        if isinstance(exc, ConnectTimeoutError):
            outcome = _CONNECT_TIMEOUT
        elif isinstance(exc, ReadTimeoutError):
            outcome = _READ_TIMEOUT
        elif isinstance(exc, ConnectionClosedError):
            outcome = _CLOSED
        elif isinstance(exc, EndpointConnectionError):
            outcome = _CONNECTION
        elif isinstance(exc, ParamValidationError):
            # botocore's own check of the request shape: AWS would answer ValidationError.
            outcome = _VALIDATION
        else:
            outcome = _MALFORMED
        # botocore messages name the endpoint and the failure, never the request body.
        cause = f"AssumeRoleWithWebIdentity failed: mapping={mapping} {type(exc).__name__}"
        log.warning("%s", cause)
        return outcome.error(cause)

    @staticmethod
    def _credentials(response: Any, mapping: str) -> Credentials:
        try:
            creds = response["Credentials"]
            key_id = creds["AccessKeyId"]
            secret = creds["SecretAccessKey"]
            session_token = creds["SessionToken"]
            expiration = creds["Expiration"]
            upstream_id = request_id(response.get("ResponseMetadata", {}).get("RequestId"))
        except (KeyError, TypeError, AttributeError):
            key_id = secret = session_token = expiration = upstream_id = None
        if not (
            isinstance(key_id, str)
            and key_id
            and isinstance(secret, str)
            and secret
            and isinstance(session_token, str)
            and session_token
            and isinstance(expiration, datetime)
            and expiration.tzinfo is not None
            and expiration.timestamp() - time.time() >= MIN_LIFETIME_SECONDS
        ):
            cause = (
                "AssumeRoleWithWebIdentity answer lacks usable credentials (missing, or expiring"
                f" within {MIN_LIFETIME_SECONDS} s): mapping={mapping}"
            )
            log.warning("%s", cause)
            raise _MALFORMED.error(cause, request_id=upstream_id)
        return Credentials(
            provider="aws",
            access_token=session_token,
            expires_at=expiration.timestamp(),
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            request_id=upstream_id,
        )


if TYPE_CHECKING:
    # Compile-time check that AwsProvider satisfies the protocol (mypy --strict).
    _: type[CredentialProvider] = AwsProvider
