"""A request body ``sts serve`` has answered before is answered again without being parsed or
matched again (``sts.exchange.Repeats``), but never past what time changes: the token's expiry,
the mappings, the content type it was read as. One worker, so every repeat meets what the
earlier requests left behind; real HTTP, a real server process."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
import requests

from sts.dev.aws_emulator import AwsEmulator
from sts.dev.gcp_emulator import GcpEmulator
from sts.dev.issuer import DevIssuer
from tests.conftest import AUDIENCE
from tests.functional.conftest import DEFAULT_MAPPINGS, GRANT, ID_TOKEN
from tests.functional.serving import run_sts, serve_env, sts_serve

FORM = "application/x-www-form-urlencoded"
REPEATS = 5


@pytest.fixture
def env(tmp_path: Path, issuer: DevIssuer, aws: AwsEmulator, gcp: GcpEmulator) -> dict[str, str]:
    database_url = f"sqlite:///{tmp_path / 'serve.db'}"
    # Expiry exactly at exp: the expiry test need not wait out a minute of leeway.
    return serve_env(database_url, issuer, aws, gcp, STS_CLOCK_SKEW_SECONDS="0")


def apply(env: dict[str, str], path: Path, document: str) -> None:
    path.write_text(document)
    result = run_sts("mappings", "apply", "--prune", str(path), env=env)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def server(env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    with sts_serve(env, tmp_path / "serve.log", "--workers", "1") as url:
        apply(env, tmp_path / "mappings.yaml", DEFAULT_MAPPINGS)
        yield url


def body_of(token: str) -> bytes:
    fields = {"grant_type": GRANT, "subject_token": token, "subject_token_type": ID_TOKEN}
    return urlencode(fields).encode()


def post(url: str, body: bytes, content_type: str = FORM) -> requests.Response:
    return requests.post(
        url + "/token", data=body, headers={"Content-Type": content_type}, timeout=30
    )


def answered(url: str, body: bytes, timeout: float = 10) -> requests.Response:
    """The first 200 for ``body`` (the worker picks the applied mappings up within 2 s)."""
    deadline = time.monotonic() + timeout
    while True:
        response = post(url, body)
        if response.status_code == 200 or time.monotonic() > deadline:
            assert response.status_code == 200, response.text
            return response
        time.sleep(0.2)


def selections(url: str) -> float:
    """``sts_mapping_selections_total`` as the server's /metrics shows it."""
    text = requests.get(url + "/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("sts_mapping_selections_total "):
            return float(line.split()[1])
    raise AssertionError("sts_mapping_selections_total not exported")


def test_repeats_get_the_first_answer_and_make_no_cloud_call(
    server: str, issuer: DevIssuer, aws: AwsEmulator
) -> None:
    body = body_of(issuer.mint(audience=AUDIENCE, deployment="repeated"))
    first = answered(server, body).json()
    calls = len(aws.requests)
    selected = selections(server)
    for _ in range(REPEATS):
        again = post(server, body)
        assert again.status_code == 200, again.text
        assert again.json()["aws_credentials"] == first["aws_credentials"]
        assert again.json()["mapping"] == first["mapping"] == "orders-prod"
    assert len(aws.requests) == calls
    # Neither parsed nor selected again: the repeats were answered from what was made of the
    # first (with Repeats gone, each would select its mapping anew).
    assert selections(server) == selected
    another = body_of(issuer.mint(audience=AUDIENCE, deployment="repeated", lifetime=35_000))
    assert post(server, another).status_code == 200
    assert selections(server) == selected + 1


def test_a_repeated_body_is_refused_once_its_token_expires(server: str, issuer: DevIssuer) -> None:
    lifetime = 4
    body = body_of(issuer.mint(audience=AUDIENCE, deployment="expiring", lifetime=lifetime))
    answered(server, body)
    expires = time.time() + lifetime
    for _ in range(REPEATS):
        assert post(server, body).status_code == 200
    time.sleep(max(0.0, expires - time.time()) + 1.2)
    late = post(server, body)
    assert late.status_code == 400, late.text
    assert late.json() == {"error": "invalid_request", "error_description": "token expired"}


def test_a_repeated_body_follows_a_mapping_change_at_once(
    server: str, issuer: DevIssuer, env: dict[str, str], tmp_path: Path
) -> None:
    body = body_of(issuer.mint(audience=AUDIENCE, deployment="remapped"))
    answered(server, body)
    for _ in range(REPEATS):
        assert post(server, body).status_code == 200
    disabled = DEFAULT_MAPPINGS.replace(
        "  - name: orders-prod\n", "  - name: orders-prod\n    enabled: false\n"
    )
    assert disabled != DEFAULT_MAPPINGS
    apply(env, tmp_path / "mappings.yaml", disabled)
    deadline = time.monotonic() + 10
    while (response := post(server, body)).status_code == 200:
        assert time.monotonic() < deadline, "still answered from the mapping that was disabled"
        time.sleep(0.1)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "unauthorized_client"


def test_the_same_bytes_under_another_content_type_are_read_again(
    server: str, issuer: DevIssuer
) -> None:
    body = body_of(issuer.mint(audience=AUDIENCE, deployment="retyped"))
    answered(server, body)
    for _ in range(REPEATS):
        assert post(server, body).status_code == 200
    as_json = post(server, body, "application/json")
    assert as_json.status_code == 400, as_json.text
    assert as_json.json() == {
        "error": "invalid_request",
        "error_description": "malformed request body",
    }
    assert post(server, body, FORM + "; charset=utf-8").status_code == 200
