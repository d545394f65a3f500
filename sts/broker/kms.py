"""Signing keys held in AWS KMS (``STS_SIGNING_KMS_KEY_IDS``): the service holds no private key.

The first key ARN signs (KMS ``Sign``, ``SigningAlgorithm=RSASSA_PKCS1_V1_5_SHA_256``,
``MessageType=RAW``: KMS hashes the JWS signing input itself), every key is published from its
``GetPublicKey`` answer, and each kid is the RFC 7638 thumbprint of that public key. The AWS
credentials come from boto3's standard chain (environment, web identity, instance role): this is
the only AWS call the service signs.

KMS holds no rotation history, so the published keys that do not sign are reported as
``previous``; rotating means changing the list of key ARNs.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key

from sts.broker.keys import KeyInfo, KeyState, Signer, public_jwk
from sts.config import ConfigError, kms_key_region
from sts.errors import ServerError, TemporarilyUnavailable

SIGNING_ALGORITHM = "RSASSA_PKCS1_V1_5_SHA_256"
KEY_SPECS = ("RSA_2048", "RSA_3072", "RSA_4096")
RETRY_AFTER_SECONDS = 5
# A token request waits on Sign: a few seconds at most, one retry (botocore "standard" mode
# backs off and retries throttling and 5xx answers).
CLIENT_CONFIG = Config(
    connect_timeout=2,
    read_timeout=5,
    retries={"mode": "standard", "total_max_attempts": 2},
)
# KMS error codes that say "try again later" (AWS KMS API Reference, "Common Errors" and the
# Sign/GetPublicKey errors); any other refusal is a configuration problem on our side.
RETRYABLE_CODES = frozenset(
    {
        "ThrottlingException",
        "LimitExceededException",
        "KMSInternalException",
        "DependencyTimeoutException",
        "KeyUnavailableException",
        "ServiceUnavailable",
        "InternalFailure",
    }
)


class _KmsClient(Protocol):
    """The two KMS operations the store calls, as boto3 exposes them."""

    def sign(self, **kwargs: Any) -> dict[str, Any]: ...

    def get_public_key(self, **kwargs: Any) -> dict[str, Any]: ...

    @property
    def meta(self) -> Any: ...


class KmsKeyError(ConfigError):
    """A configured KMS key cannot be used (missing, not RSA, not SIGN_VERIFY, access denied)."""

    def __init__(self, problem: str) -> None:
        super().__init__("STS_SIGNING_KMS_KEY_IDS", problem)


@dataclass(frozen=True)
class _PublishedKey:
    arn: str
    jwk: dict[str, str]


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error.get("Code") in RETRYABLE_CODES or int(status) >= 500
    # Connection refused, timeouts, broken answers: botocore's own errors, never a refusal.
    return isinstance(exc, BotoCoreError)


def _code(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code") or "UnknownError")
    return type(exc).__name__


class KmsKeyStore:
    """Keys in AWS KMS; public keys fetched once (a KMS key's key material never changes)."""

    def __init__(self, key_ids: Sequence[str], *, endpoint_url: str | None = None) -> None:
        if not key_ids:
            raise KmsKeyError("must name at least one key ARN")
        self._key_ids = tuple(key_ids)
        session = boto3.session.Session()
        clients: dict[str, _KmsClient] = {}
        for arn in self._key_ids:
            try:
                region = kms_key_region(arn)
            except ValueError:
                raise KmsKeyError("each entry must be a KMS key ARN") from None
            if region not in clients:
                clients[region] = cast(
                    _KmsClient,
                    session.client(
                        "kms", region_name=region, endpoint_url=endpoint_url, config=CLIENT_CONFIG
                    ),
                )
        self._clients = {arn: clients[kms_key_region(arn)] for arn in self._key_ids}
        self._published: tuple[_PublishedKey, ...] | None = None
        self._lock = threading.Lock()

    def endpoints(self) -> dict[str, str]:
        """The KMS endpoint each key is reached at (logs, diagnostics)."""
        return {arn: str(self._clients[arn].meta.endpoint_url) for arn in self._key_ids}

    def load(self) -> None:
        """Fetch every key's public part (``GetPublicKey``) and check it can sign RS256.

        Raises :class:`KmsKeyError` for a key that cannot be used, and
        :class:`sts.errors.TemporarilyUnavailable` if KMS cannot be reached or throttles.
        """
        with self._lock:
            if self._published is not None:
                return
            published = []
            for arn in self._key_ids:
                try:
                    answer = self._clients[arn].get_public_key(KeyId=arn)
                except (ClientError, BotoCoreError) as exc:
                    if _retryable(exc):
                        raise TemporarilyUnavailable(
                            "signing key unavailable",
                            retry_after=RETRY_AFTER_SECONDS,
                            cause=f"kms GetPublicKey: {_code(exc)}",
                        ) from None
                    raise KmsKeyError(f"{arn}: GetPublicKey refused ({_code(exc)})") from None
                published.append(_PublishedKey(arn, self._checked_jwk(arn, answer)))
            self._published = tuple(published)

    @staticmethod
    def _checked_jwk(arn: str, answer: dict[str, Any]) -> dict[str, str]:
        spec = answer.get("KeySpec") or answer.get("CustomerMasterKeySpec")
        if spec not in KEY_SPECS:
            raise KmsKeyError(f"{arn}: KeySpec {spec} is not one of {', '.join(KEY_SPECS)}")
        if answer.get("KeyUsage") != "SIGN_VERIFY":
            raise KmsKeyError(f"{arn}: KeyUsage must be SIGN_VERIFY")
        if SIGNING_ALGORITHM not in answer.get("SigningAlgorithms", ()):
            raise KmsKeyError(f"{arn}: does not offer {SIGNING_ALGORITHM}")
        public_key = load_der_public_key(answer["PublicKey"])
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise KmsKeyError(f"{arn}: GetPublicKey did not return an RSA key")
        return public_jwk(public_key)

    def _keys(self) -> tuple[_PublishedKey, ...]:
        if self._published is None:
            self.load()
        assert self._published is not None
        return self._published

    @property
    def ready(self) -> bool:
        return self._published is not None

    def signer(self) -> Signer:
        first = self._keys()[0]
        client = self._clients[first.arn]

        def sign(signing_input: bytes) -> bytes:
            try:
                answer = client.sign(
                    KeyId=first.arn,
                    Message=signing_input,
                    MessageType="RAW",
                    SigningAlgorithm=SIGNING_ALGORITHM,
                )
            except (ClientError, BotoCoreError) as exc:
                if _retryable(exc):
                    raise TemporarilyUnavailable(
                        retry_after=RETRY_AFTER_SECONDS, cause=f"kms Sign: {_code(exc)}"
                    ) from None
                raise ServerError(cause=f"kms Sign refused: {_code(exc)}") from None
            signature = answer.get("Signature")
            if not isinstance(signature, bytes) or not signature:
                raise ServerError(cause="kms Sign: no signature in the answer")
            return signature

        return Signer(first.jwk["kid"], sign)

    def public_jwks(self) -> list[dict[str, str]]:
        return [dict(key.jwk) for key in self._keys()]

    def list_keys(self) -> list[KeyInfo]:
        return [
            KeyInfo(
                key.jwk["kid"],
                KeyState.SIGNING if index == 0 else KeyState.PREVIOUS,
                created_at=None,
                signs_from=None,
            )
            for index, key in enumerate(self._keys())
        ]
