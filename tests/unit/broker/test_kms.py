"""KmsKeyStore with real boto3 against moto's KMS served over HTTP on 127.0.0.1.

moto signs for real (RSA PKCS#1 v1.5 over SHA-256), so every signature is checked against the
key the store publishes. Faults (throttling, 5xx, refusals) are injected ahead of moto.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.serialization import load_der_public_key

from sts.broker.kms import KmsKeyError, KmsKeyStore
from sts.config import ConfigError
from sts.dev.aws_emulator import AwsEmulator
from sts.errors import ServerError, TemporarilyUnavailable
from tests.unit.broker.conftest import jwk_public_key

JSON_ERROR = {"Content-Type": "application/x-amz-json-1.1"}


@pytest.fixture(scope="module")
def _emulator() -> Iterator[AwsEmulator]:
    with AwsEmulator() as emulator:
        yield emulator


@pytest.fixture
def kms(_emulator: AwsEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsEmulator]:
    """moto's KMS, and dummy credentials for the standard AWS chain (environment first)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    _emulator.clear()
    yield _emulator
    _emulator.clear()


def create_key(emulator: AwsEmulator, spec: str = "RSA_2048", usage: str = "SIGN_VERIFY") -> str:
    client = boto3.client("kms", region_name="us-east-1", endpoint_url=emulator.endpoint_url)
    arn: str = client.create_key(KeySpec=spec, KeyUsage=usage)["KeyMetadata"]["Arn"]
    return arn


def kms_public_key_der(emulator: AwsEmulator, arn: str) -> bytes:
    client = boto3.client("kms", region_name="us-east-1", endpoint_url=emulator.endpoint_url)
    der: bytes = client.get_public_key(KeyId=arn)["PublicKey"]
    return der


def rfc7638(der: bytes) -> str:
    """The thumbprint computed here independently: {"e","kty","n"} sorted, no whitespace."""
    numbers = load_der_public_key(der).public_numbers()  # type: ignore[union-attr]

    def member(value: int) -> str:
        raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    canonical = f'{{"e":"{member(numbers.e)}","kty":"RSA","n":"{member(numbers.n)}"}}'
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def kms_error(emulator: AwsEmulator, status: int, code: str, times: int = 1) -> None:
    body = json.dumps({"__type": code, "message": "injected"}).encode()
    emulator.fail_next(status, body=body, headers=JSON_ERROR, times=times)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_first_key_signs_every_key_is_published_kid_is_the_rfc7638_thumbprint(
    kms: AwsEmulator,
) -> None:
    first, second = create_key(kms), create_key(kms, "RSA_3072")
    store = KmsKeyStore([first, second], endpoint_url=kms.endpoint_url)
    kids = [rfc7638(kms_public_key_der(kms, arn)) for arn in (first, second)]

    assert [jwk["kid"] for jwk in store.public_jwks()] == kids
    assert [(info.kid, info.state.value) for info in store.list_keys()] == [
        (kids[0], "signing"),
        (kids[1], "previous"),
    ]
    signer = store.signer()
    assert signer.kid == kids[0]
    signature = signer.sign(b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0")
    jwk_public_key(store.public_jwks()[0]).verify(
        signature, b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0", padding.PKCS1v15(), hashes.SHA256()
    )
    sign_calls = [
        call for call in kms.requests if call.headers.get("X-Amz-Target") == "TrentService.Sign"
    ]
    assert len(sign_calls) == 1
    assert store.ready


@pytest.mark.parametrize(
    ("spec", "usage", "problem"),
    [
        ("ECC_NIST_P256", "SIGN_VERIFY", "KeySpec ECC_NIST_P256 is not one of"),
        ("RSA_2048", "ENCRYPT_DECRYPT", "KeyUsage must be SIGN_VERIFY"),
    ],
)
def test_a_key_that_cannot_sign_rs256_is_a_configuration_error(
    kms: AwsEmulator, spec: str, usage: str, problem: str
) -> None:
    arn = create_key(kms, spec, usage)
    store = KmsKeyStore([create_key(kms), arn], endpoint_url=kms.endpoint_url)
    with pytest.raises(KmsKeyError) as caught:
        store.load()
    assert isinstance(caught.value, ConfigError)
    assert caught.value.variable == "STS_SIGNING_KMS_KEY_IDS"
    assert problem in str(caught.value)
    assert arn in str(caught.value)


def test_a_key_that_does_not_exist_is_a_configuration_error(kms: AwsEmulator) -> None:
    missing = "arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555"
    with pytest.raises(KmsKeyError, match=r"GetPublicKey refused \(NotFoundException\)"):
        KmsKeyStore([missing], endpoint_url=kms.endpoint_url).load()


def test_access_denied_to_get_public_key_is_a_configuration_error(kms: AwsEmulator) -> None:
    arn = create_key(kms)
    kms_error(kms, 400, "AccessDeniedException")
    with pytest.raises(KmsKeyError, match="AccessDeniedException"):
        KmsKeyStore([arn], endpoint_url=kms.endpoint_url).load()


def test_unreachable_kms_is_temporarily_unavailable_with_retry_after(kms: AwsEmulator) -> None:
    arn = "arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555"
    store = KmsKeyStore([arn], endpoint_url=f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(TemporarilyUnavailable) as caught:
        store.signer()
    assert caught.value.status == 503
    assert caught.value.headers == {"Retry-After": "5"}
    assert caught.value.cause == "kms GetPublicKey: EndpointConnectionError"
    assert not store.ready


def test_throttled_get_public_key_is_temporarily_unavailable(kms: AwsEmulator) -> None:
    arn = create_key(kms)
    kms_error(kms, 400, "ThrottlingException", times=2)
    store = KmsKeyStore([arn], endpoint_url=kms.endpoint_url)
    with pytest.raises(TemporarilyUnavailable):
        store.load()
    store.load()
    assert store.ready


@pytest.mark.parametrize(
    ("status", "code", "attempts"),
    [
        (400, "ThrottlingException", 2),
        (500, "KMSInternalException", 2),
        (503, "ServiceUnavailable", 2),
        # botocore retries throttling and 5xx only; this one is answered at once.
        (400, "DependencyTimeoutException", 1),
    ],
)
def test_sign_throttled_or_failing_is_temporarily_unavailable_with_retry_after(
    kms: AwsEmulator, status: int, code: str, attempts: int
) -> None:
    store = KmsKeyStore([create_key(kms)], endpoint_url=kms.endpoint_url)
    signer = store.signer()
    kms_error(kms, status, code, times=2)
    with pytest.raises(TemporarilyUnavailable) as caught:
        signer.sign(b"a.b")
    assert caught.value.headers == {"Retry-After": "5"}
    assert caught.value.cause == f"kms Sign: {code}"
    # At most one retry, then the answer: a request thread never waits on KMS indefinitely.
    targets = [call.headers.get("X-Amz-Target") for call in kms.requests]
    assert targets.count("TrentService.Sign") == attempts


def test_sign_unreachable_after_loading_is_temporarily_unavailable(kms: AwsEmulator) -> None:
    with AwsEmulator() as going_away:
        store = KmsKeyStore([create_key(going_away)], endpoint_url=going_away.endpoint_url)
        signer = store.signer()
    with pytest.raises(TemporarilyUnavailable) as caught:
        signer.sign(b"a.b")
    assert caught.value.cause == "kms Sign: EndpointConnectionError"


def test_sign_refused_is_a_server_error_with_the_code_as_cause(kms: AwsEmulator) -> None:
    store = KmsKeyStore([create_key(kms)], endpoint_url=kms.endpoint_url)
    signer = store.signer()
    kms_error(kms, 400, "DisabledException")
    with pytest.raises(ServerError) as caught:
        signer.sign(b"a.b")
    assert caught.value.status == 500
    assert caught.value.cause == "kms Sign refused: DisabledException"


def test_sign_answer_without_a_signature_is_a_server_error(kms: AwsEmulator) -> None:
    store = KmsKeyStore([create_key(kms)], endpoint_url=kms.endpoint_url)
    signer = store.signer()
    kms.fail_next(200, body=b"{}", headers=JSON_ERROR)
    with pytest.raises(ServerError) as caught:
        signer.sign(b"a.b")
    assert caught.value.cause == "kms Sign: no signature in the answer"


def test_no_key_or_a_malformed_arn_is_a_configuration_error() -> None:
    with pytest.raises(KmsKeyError):
        KmsKeyStore([])
    with pytest.raises(KmsKeyError, match="KMS key ARN"):
        KmsKeyStore(["alias/sts"])


def test_the_endpoint_defaults_to_the_key_arns_region(kms: AwsEmulator) -> None:
    arn = "arn:aws:kms:eu-central-1:123456789012:key/11111111-2222-3333-4444-555555555555"
    other = "arn:aws:kms:us-west-2:123456789012:key/11111111-2222-3333-4444-555555555555"
    assert KmsKeyStore([arn, other]).endpoints() == {
        arn: "https://kms.eu-central-1.amazonaws.com",
        other: "https://kms.us-west-2.amazonaws.com",
    }
    assert KmsKeyStore([arn], endpoint_url=kms.endpoint_url).endpoints() == {arn: kms.endpoint_url}


def public_key_answer(der: bytes, **overrides: Any) -> bytes:
    """A GetPublicKey answer as KMS sends it (JSON protocol, blobs base64)."""
    answer = {
        "KeyId": "injected",
        "KeySpec": "RSA_2048",
        "KeyUsage": "SIGN_VERIFY",
        "SigningAlgorithms": ["RSASSA_PKCS1_V1_5_SHA_256"],
        "PublicKey": base64.b64encode(der).decode(),
        **overrides,
    }
    return json.dumps(answer).encode()


def test_a_key_without_pkcs1_v1_5_sha_256_is_a_configuration_error(kms: AwsEmulator) -> None:
    arn = create_key(kms)
    der = kms_public_key_der(kms, arn)
    kms.fail_next(
        200,
        body=public_key_answer(der, SigningAlgorithms=["RSASSA_PSS_SHA_256"]),
        headers=JSON_ERROR,
    )
    with pytest.raises(KmsKeyError, match="does not offer RSASSA_PKCS1_V1_5_SHA_256"):
        KmsKeyStore([arn], endpoint_url=kms.endpoint_url).load()


def test_a_public_key_that_is_not_rsa_is_a_configuration_error(kms: AwsEmulator) -> None:
    arn = create_key(kms)
    der = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    kms.fail_next(200, body=public_key_answer(der), headers=JSON_ERROR)
    with pytest.raises(KmsKeyError, match="did not return an RSA key"):
        KmsKeyStore([arn], endpoint_url=kms.endpoint_url).load()
