"""One pass per request (docs/architecture.md): whichever way a ``/token`` request is answered
(from the cache, by an upstream call, after its issuer's key set or the mapping index had to be
loaded, as a repeat of earlier bytes), its token is verified at most once and its mapping
selected at most once. Counted by the service's own counters, read from outside."""

from __future__ import annotations

import threading
from typing import Any

import requests

from sts.dev.aws_emulator import AwsEmulator
from sts.dev.gcp_emulator import GcpEmulator
from sts.dev.issuer import DevIssuer
from sts.services import Services
from tests.conftest import AUDIENCE
from tests.functional.conftest import GRANT, ID_TOKEN, Stack, running_stack


def counts(services: Services) -> tuple[int, int, int]:
    """Tokens verified (verified-token cache hits included), RS256 signatures checked and
    mappings selected so far by this service."""
    verifier = services.verifier
    return verifier.verifications, verifier.signature_checks, services.exchanger.selections


def test_a_miss_verifies_and_selects_once(stack: Stack) -> None:
    """The upstream call carries the loop's selection to a thread: nothing is done again."""
    before = counts(stack.services)
    response = stack.post(stack.token(deployment="one-pass"))
    assert response.status_code == 200, response.text
    assert response.json()["mapping"] == "orders-prod"
    assert len(stack.aws_requests()) == 1
    assert counts(stack.services) == (before[0] + 1, before[1] + 1, before[2] + 1)


def test_a_hit_of_a_fresh_token_verifies_once_and_selects_once(stack: Stack) -> None:
    stack.post(stack.token(deployment="warm")).raise_for_status()
    before = counts(stack.services)
    another = stack.issuer.mint(audience=AUDIENCE, deployment="warm", lifetime=35_000)
    response = stack.post(another)  # another token, same identity
    assert response.status_code == 200, response.text
    assert counts(stack.services) == (before[0] + 1, before[1] + 1, before[2] + 1)
    assert len(stack.aws_requests()) == 1


def test_a_repeated_body_is_neither_verified_nor_selected_again(stack: Stack) -> None:
    token = stack.token(deployment="repeat")
    first = stack.post(token)
    assert first.status_code == 200, first.text
    before = counts(stack.services)
    for _ in range(5):
        again = stack.post(token)
        assert again.status_code == 200, again.text
        assert again.json()["aws_credentials"] == first.json()["aws_credentials"]
    assert counts(stack.services) == before


def test_a_refusal_after_selection_is_selected_once(stack: Stack) -> None:
    before = counts(stack.services)
    response = stack.post(stack.token(), scope="s3")  # AWS takes no scope
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_scope"
    assert counts(stack.services) == (before[0] + 1, before[1] + 1, before[2] + 1)
    assert stack.aws_requests() == []


def test_a_key_set_fetched_first_is_verified_once(
    aws: AwsEmulator, gcp: GcpEmulator, tmp_path: Any
) -> None:
    """An unknown kid stops the loop's stage before the signature; the thread fetches the key
    set and goes on from there: one verification, one selection."""
    with (
        DevIssuer() as dev,
        running_stack(
            dev, aws, gcp, f"sqlite:///{tmp_path / 'kid.db'}", trusted_issuers=(dev.url,)
        ) as stack,
    ):
        assert stack.post(dev.mint(audience=AUDIENCE)).status_code == 200
        fetched = dev.fetches
        dev.rotate()
        before = counts(stack.services)
        response = stack.post(dev.mint(audience=AUDIENCE, deployment="rotated"))
        assert response.status_code == 200, response.text
        assert dev.fetches == fetched + 1
        assert counts(stack.services) == (before[0] + 1, before[1] + 1, before[2] + 1)


def test_the_index_loaded_first_selects_once(
    issuer: DevIssuer, aws: AwsEmulator, gcp: GcpEmulator, tmp_path: Any
) -> None:
    """Requests that arrive before the mapping index's first load wait for it on a thread
    and are selected there, once each."""
    with running_stack(issuer, aws, gcp, f"sqlite:///{tmp_path / 'index.db'}", wait=False) as stack:
        answers: list[requests.Response] = []
        tokens = [stack.token(deployment=f"early-{n}") for n in range(4)]
        threads = [
            threading.Thread(target=lambda token=token: answers.append(stack.post(token)))
            for token in tokens
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(answers) == 4
        statuses = sorted(response.status_code for response in answers)
        # Each is answered (200) or told to come back (503 "mappings unavailable"): never twice.
        assert set(statuses) <= {200, 503}, [r.text for r in answers]
        verified, checks, selections = counts(stack.services)
        assert verified == checks == 4  # four distinct tokens, each verified once
        assert selections == statuses.count(200)  # a 503 "mappings unavailable" selects nothing


def test_an_unknown_kid_that_stays_unknown_is_refused(stack: Stack) -> None:
    """Left to a thread (the key set may have to be fetched), refused there once."""
    token = stack.issuer.mint(
        audience=AUDIENCE, header={"alg": "RS256", "typ": "JWT", "kid": "invented-kid"}
    )
    before = counts(stack.services)
    response = stack.post(token)
    assert response.status_code in (400, 503)
    # Verified once (it fails: no key), never selected.
    assert counts(stack.services) == (before[0] + 1, before[1], before[2])


def test_form_and_json_of_one_token_are_two_requests(stack: Stack) -> None:
    """The bytes and the media type make a repeat: the same fields as JSON are selected anew."""
    token = stack.token(deployment="as-json")
    assert stack.post(token).status_code == 200
    before = counts(stack.services)
    body = {"grant_type": GRANT, "subject_token_type": ID_TOKEN, "subject_token": token}
    response = requests.post(stack.url + "/token", json=body, timeout=30)
    assert response.status_code == 200, response.text
    assert counts(stack.services) == (before[0] + 1, before[1], before[2] + 1)
