"""Broker mode served over HTTP: discovery, JWKS, readiness, and ``sts serve``'s start-up check
(docs/reference.md sections 7 and 8). Keys are changed from outside, with the real ``sts keys``."""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from joserfc import jwt
from joserfc.jwk import KeySet

from sts.cli import cli
from sts.db import Database
from tests.conftest import AUDIENCE

ISSUER = "https://sts.example.com/broker"
DISCOVERY = "/.well-known/openid-configuration"
JWKS = "/.well-known/jwks.json"


def new_kek() -> tuple[str, bytes]:
    raw = secrets.token_bytes(32)
    return base64.urlsafe_b64encode(raw).decode().rstrip("="), raw


def keys_cli(database_url: str, kek: str, *args: str) -> str:
    result = CliRunner().invoke(
        cli,
        ["keys", *args],
        env={
            "STS_DATABASE_URL": database_url,
            "STS_BROKER_ISSUER": ISSUER,
            "STS_KEY_ENCRYPTION_KEY": kek,
        },
    )
    assert result.exit_code == 0, result.output
    return result.stdout


def test_without_broker_mode_both_documents_are_404(stack: Any) -> None:
    for path in (DISCOVERY, JWKS):
        answer = requests.get(stack.url + path, timeout=10)
        assert answer.status_code == 404
        assert answer.json()["error"] == "not_found"


@pytest.fixture
def broker_stack(stack_factory: Any, tmp_path: Path) -> Any:
    kek, raw = new_kek()
    url = f"sqlite:///{tmp_path / 'broker.db'}"
    return stack_factory(database_url=url, broker_issuer=ISSUER, key_encryption_key=raw), url, kek


def test_discovery_names_the_issuer_and_its_jwks(broker_stack: Any) -> None:
    stack, _, _ = broker_stack
    answer = requests.get(stack.url + DISCOVERY, timeout=10)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.headers["Cache-Control"] == "public, max-age=300"
    document = answer.json()
    assert document["issuer"] == ISSUER
    # At the fixed path whatever the issuer's own path (/broker here).
    assert document["jwks_uri"] == "https://sts.example.com/broker/.well-known/jwks.json"
    assert document["id_token_signing_alg_values_supported"] == ["RS256"]
    assert {"response_types_supported", "subject_types_supported", "claims_supported"} <= set(
        document
    )


def served_keys(stack: Any) -> list[dict[str, Any]]:
    answer = requests.get(stack.url + JWKS, timeout=10)
    assert answer.status_code == 200
    assert answer.headers["Cache-Control"] == "public, max-age=300"
    keys: list[dict[str, Any]] = answer.json()["keys"]
    return keys


def test_the_served_jwks_verifies_what_the_broker_signs_and_holds_no_private_part(
    broker_stack: Any,
) -> None:
    stack, _, _ = broker_stack
    keys = served_keys(stack)
    assert len(keys) == 1
    for key in keys:
        assert set(key) == {"kty", "kid", "use", "alg", "n", "e"}
        assert (key["kty"], key["use"], key["alg"]) == ("RSA", "sig", "RS256")
    principal = stack.services.verifier.verify(stack.token())
    token = stack.services.broker.minter.mint(
        principal, "orders-prod", "sts.amazonaws.com", session_tags=True
    )
    decoded = jwt.decode(token, KeySet.import_key_set({"keys": keys}), algorithms=["RS256"])
    assert decoded.claims["iss"] == ISSUER
    assert decoded.claims["sub"] == "mapping:orders-prod"
    assert decoded.header["kid"] == keys[0]["kid"]


def test_a_rotation_from_the_cli_reaches_the_served_jwks_within_10_seconds(
    broker_stack: Any,
) -> None:
    stack, url, kek = broker_stack
    (first,) = (key["kid"] for key in served_keys(stack))
    keys_cli(url, kek, "rotate", "--now")
    deadline = time.monotonic() + 10
    kids = {first}
    while time.monotonic() < deadline and len(kids) < 2:
        time.sleep(0.2)
        kids = {key["kid"] for key in served_keys(stack)}
    assert len(kids) == 2, kids
    assert first in kids
    (second,) = kids - {first}
    keys_cli(url, kek, "retire", first)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and kids != {second}:
        time.sleep(0.2)
        kids = {key["kid"] for key in served_keys(stack)}
    assert kids == {second}


def test_readyz_waits_for_a_signing_key_and_says_why(stack_factory: Any, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sealed.db'}"
    database = Database(url)
    database.upgrade()
    database.dispose()
    sealing, _ = new_kek()
    keys_cli(url, sealing, "rotate")  # a key sealed under another key-encryption key
    _, other = new_kek()
    stack = stack_factory(
        database_url=url, wait=False, broker_issuer=ISSUER, key_encryption_key=other
    )
    deadline = time.monotonic() + 10
    reason = None
    while time.monotonic() < deadline:
        answer = requests.get(stack.url + "/readyz", timeout=10)
        assert answer.status_code == 503
        reason = answer.json()["reason"]
        if "STS_KEY_ENCRYPTION_KEY" in reason:
            break
        time.sleep(0.1)
    assert reason is not None
    assert "STS_KEY_ENCRYPTION_KEY" in reason, reason
    # Nothing to publish yet: answered at once, never by reading the keys on this thread.
    jwks = requests.get(stack.url + JWKS, timeout=10)
    assert jwks.status_code == 503
    assert jwks.json()["error"] == "temporarily_unavailable"
    assert jwks.headers["Retry-After"] == "5"


def test_serve_with_a_key_encryption_key_that_cannot_open_the_keys_exits_2(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'serve.db'}"
    database = Database(url)
    database.upgrade()
    database.dispose()
    sealing, _ = new_kek()
    keys_cli(url, sealing, "rotate")
    other, _ = new_kek()
    env = {
        **os.environ,
        "STS_DATABASE_URL": url,
        "STS_AUDIENCE": AUDIENCE,
        "STS_BROKER_ISSUER": ISSUER,
        "STS_KEY_ENCRYPTION_KEY": other,
    }
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "sts", "serve", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: STS_KEY_ENCRYPTION_KEY: ")
    assert time.monotonic() - started < 30


def test_serve_with_an_issuer_and_no_key_store_exits_2_naming_the_key(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STS_")},
        "STS_DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}",
        "STS_AUDIENCE": AUDIENCE,
        "STS_BROKER_ISSUER": ISSUER,
    }
    result = subprocess.run(
        [sys.executable, "-m", "sts", "serve", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "error: STS_KEY_ENCRYPTION_KEY: is required with STS_BROKER_ISSUER"
        " (unless STS_SIGNING_KMS_KEY_IDS is set)"
    ]
