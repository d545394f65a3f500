"""JWKS faults through real HTTP (docs/reference.md section 3, "JWKS"): rotation, removal, outages,
unknown-kid floods, a slow issuer, an oversized key set and redirects.

Each test runs its own :class:`DevIssuer`, so breaking it never disturbs the session issuer.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
import requests

from sts.dev.aws_emulator import AwsEmulator
from sts.dev.gcp_emulator import GcpEmulator
from sts.dev.issuer import DevIssuer, SigningKey
from tests.conftest import AUDIENCE
from tests.functional.conftest import GRANT, ID_TOKEN, Stack, running_stack, seed
from tests.functional.serving import serve_env, sts_serve_within
from tests.functional.test_token import assert_error

# Expected answers and limits, spelled out here rather than imported from the service.
KEY_NOT_FOUND = "signing key not found"
KEYS_UNAVAILABLE = "signing keys unavailable"
SIGNATURE_INVALID = "signature invalid"
CONNECT_TIMEOUT = 2.0  # the service's JWKS connect timeout, seconds
READ_TIMEOUT = 3.0  # and its read timeout
MAX_JWKS_BYTES = 64 * 1024
RETRY_BACKOFF_MAX = 30.0  # the longest wait between two failed fetches of the refresher
#: What a deadline may be late by on a loaded machine.
SLACK = 5.0
#: How long a wait for something that happens within a second or two may take before the
#: test calls it stuck.
NOT_STUCK = 30.0
#: A key-set answer this late is one the service never waits for: it gives up after its
#: timeouts (CONNECT_TIMEOUT + READ_TIMEOUT, 5 s); a fetch that waited would take this long.
NEVER = READ_TIMEOUT + 30.0
#: A request that waited for a key-set fetch in flight would wait for the fetch's read
#: time-out, READ_TIMEOUT (3 s) after the fetch began; one that did not is answered in
#: milliseconds. Below the one, far above the other.
AT_ONCE = 2.0


@pytest.fixture
def dev() -> Iterator[DevIssuer]:
    with DevIssuer() as issuer:
        yield issuer


@pytest.fixture
def tuned_stack(aws: AwsEmulator, gcp: GcpEmulator, tmp_path: Path) -> Any:
    """Like ``stack_factory``, with a key-set registry built from ``registry_options``.

    For what production timings would make slow: a TTL under a minute, no refetch cooldown.
    """

    def start(dev: DevIssuer, **registry_options: Any) -> AbstractContextManager[Stack]:
        url = f"sqlite:///{tmp_path / 'tuned.db'}"
        return running_stack(dev, aws, gcp, url, registry_options=registry_options)

    return start


def mint(dev: DevIssuer, key: SigningKey | None = None, **claims: Any) -> str:
    return dev.mint(audience=AUDIENCE, key=key, **claims)


def unknown_kid_token(dev: DevIssuer, kid: str | None = None) -> str:
    """Signed by the issuer's current key, but naming a ``kid`` its key set does not have."""
    header = {"alg": "RS256", "typ": "JWT", "kid": kid or "atky_" + secrets.token_urlsafe(12)}
    return dev.mint(header=header, audience=AUDIENCE, deployment="unknown-kid")


def key_not_found(response: requests.Response, token: str) -> None:
    body = assert_error(response, 400, "invalid_request", token)
    assert body["error_description"] == KEY_NOT_FOUND


def readyz(stack: Stack) -> requests.Response:
    return requests.get(stack.url + "/readyz", timeout=10)


def test_rotated_key_is_accepted_once_fetched(stack_factory: Any, dev: DevIssuer) -> None:
    stack = stack_factory(trusted_issuers=(dev.url,))
    assert stack.post(mint(dev, deployment="before-rotation")).status_code == 200
    fetched = dev.fetches

    old = dev.key
    dev.rotate()
    # An unknown kid is fetched for at once: the cooldown has not been used yet.
    response = stack.post(mint(dev, deployment="after-rotation"))
    assert response.status_code == 200, response.text
    assert dev.fetches == fetched + 1
    # keep_old: tokens under the previous key still verify, with no further fetch.
    assert stack.post(mint(dev, key=old, deployment="old-key-kept")).status_code == 200

    # A second rotation inside the 30 s cooldown is not fetched for: the new kid is unknown.
    dev.rotate()
    token = mint(dev, deployment="second-rotation")
    key_not_found(stack.post(token), token)
    assert dev.fetches == fetched + 1


def test_removed_key_stops_verifying_cached_verifications_included(
    stack_factory: Any, dev: DevIssuer
) -> None:
    stack = stack_factory(trusted_issuers=(dev.url,))
    old_key = dev.key
    cached = mint(dev, deployment="cached-before-removal")
    assert stack.post(cached).status_code == 200
    assert stack.post(cached).status_code == 200  # now a cached verification and credential

    dev.rotate(keep_old=False)
    # The first token under the new kid makes the service refetch, learning that the old key
    # is gone.
    assert stack.post(mint(dev, deployment="after-removal")).status_code == 200

    key_not_found(stack.post(cached), cached)
    fresh_old = mint(dev, key=old_key, deployment="fresh-under-removed-key")
    key_not_found(stack.post(fresh_old), fresh_old)


def test_removed_key_is_dropped_by_the_background_refresh(tuned_stack: Any, dev: DevIssuer) -> None:
    # The issuer asks for a 1 s cache lifetime; production clamps that to a minute.
    dev.jwks_headers = {"Cache-Control": "max-age=1"}
    with tuned_stack(dev, min_ttl=0.5) as stack:
        cached = mint(dev, deployment="cached-then-removed")
        assert stack.post(cached).status_code == 200
        old_kid = dev.key.kid
        dev.rotate(keep_old=False)
        keys = stack.services.registry.get(dev.url)
        assert keys is not None
        deadline = time.monotonic() + NOT_STUCK
        while old_kid in keys.kids():
            assert time.monotonic() < deadline, "the key set was not refreshed in the background"
            time.sleep(0.05)
        # No token under the new kid was ever presented: the refresher alone removed the key.
        key_not_found(stack.post(cached), cached)
        assert stack.post(mint(dev, deployment="new-key")).status_code == 200


def test_issuer_outage_with_keys_cached_keeps_serving(stack_factory: Any, dev: DevIssuer) -> None:
    stack = stack_factory(trusted_issuers=(dev.url,))
    cached = mint(dev, deployment="cached-before-outage")
    assert stack.post(cached).status_code == 200
    dev.stop()  # the issuer is gone: connections are refused

    assert stack.post(cached).status_code == 200
    # A token never seen before, under a known kid, verifies against the cached key set.
    fresh = mint(dev, deployment="fresh-during-outage")
    response = stack.post(fresh)
    assert response.status_code == 200, response.text
    # An unknown kid during the outage is a plain refusal, not an outage: keys are loaded.
    token = unknown_kid_token(dev)
    key_not_found(stack.post(token), token)
    assert readyz(stack).status_code == 200


def test_issuer_outage_with_nothing_cached_then_recovery(
    stack_factory: Any, dev: DevIssuer
) -> None:
    dev.jwks_status = 503
    stack = stack_factory(wait=False, trusted_issuers=(dev.url,))
    token = mint(dev, deployment="before-first-keys")
    body = assert_error(stack.post(token), 503, "temporarily_unavailable", token)
    assert body["error_description"] == KEYS_UNAVAILABLE
    ready = readyz(stack)
    assert ready.status_code == 503
    assert "jwks" in ready.json()["reason"]
    assert requests.get(stack.url + "/healthz", timeout=10).status_code == 200

    dev.jwks_status = 200
    # The background refresher retries with a short backoff and the service becomes ready.
    deadline = time.monotonic() + RETRY_BACKOFF_MAX + NOT_STUCK
    while readyz(stack).status_code != 200:
        assert time.monotonic() < deadline, "never became ready after the issuer recovered"
        time.sleep(0.1)
    assert stack.post(token).status_code == 200


def test_unknown_kid_flood_makes_at_most_one_refetch(stack_factory: Any, dev: DevIssuer) -> None:
    stack = stack_factory(trusted_issuers=(dev.url,))
    fetched = dev.fetches
    tokens = [unknown_kid_token(dev) for _ in range(50)]
    with ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(pool.map(stack.post, tokens))
    for token, response in zip(tokens, responses, strict=True):
        key_not_found(response, token)
    assert dev.fetches - fetched == 1
    assert stack.post(mint(dev, deployment="after-flood")).status_code == 200


def wait_until(condition: Callable[[], bool], what: str, timeout: float = NOT_STUCK) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_slow_jwks_is_bounded_and_requests_do_not_pile_up(
    stack_factory: Any, dev: DevIssuer
) -> None:
    stack = stack_factory(trusted_issuers=(dev.url,))
    # Credentials cached for the known-kid caller below: its timed request makes no cloud call.
    assert stack.post(mint(dev, deployment="known-kid-while-slow")).status_code == 200
    fetched = dev.fetches
    dev.jwks_delay = NEVER
    # Bounded by the fetch's timeouts (and a loaded machine's slack), far below NEVER.
    bound = CONNECT_TIMEOUT + READ_TIMEOUT + SLACK
    tokens = [unknown_kid_token(dev) for _ in range(10)]

    def timed(token: str) -> tuple[float, requests.Response]:
        started = time.monotonic()
        response = stack.post(token)
        return time.monotonic() - started, response

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(tokens)) as pool:
        slow = [pool.submit(timed, token) for token in tokens]
        wait_until(lambda: dev.fetches > fetched, "the refetch never started")
        # Known kids never wait for a fetch in flight (a fresh token: it is verified).
        fresh = mint(dev, deployment="known-kid-while-slow", jti=secrets.token_hex(8))
        elapsed, response = timed(fresh)
        assert response.status_code == 200, response.text
        assert elapsed < AT_ONCE
        results = [future.result() for future in slow]
    assert time.monotonic() - started < bound
    for token, (elapsed, response) in zip(tokens, results, strict=True):
        key_not_found(response, token)
        assert elapsed < bound
    assert dev.fetches - fetched == 1


def served(env: dict[str, str], log_path: Path, *, threads: int) -> AbstractContextManager[str]:
    """``sts serve`` as a process, one worker with ``threads`` request threads, until ready."""
    return sts_serve_within(env, log_path, "--workers", "1", "--threads", str(threads))


def test_invented_kids_never_hold_up_a_token_whose_key_is_cached(
    dev: DevIssuer, aws: AwsEmulator, gcp: GcpEmulator, tmp_path: Path
) -> None:
    """A real server with 4 request threads, the issuer's JWKS answering far later than the
    service's read timeout: 24 requests with invented kids, then a token whose key is cached.
    The thread-per-request test server would hide threads blocked on the fetch."""
    database_url = f"sqlite:///{tmp_path / 'served.db'}"
    seed(database_url).dispose()
    env = serve_env(database_url, dev, aws, gcp)

    def timed(token: str) -> tuple[float, requests.Response]:
        started = time.monotonic()
        response = requests.post(
            url + "/token",
            data={"grant_type": GRANT, "subject_token": token, "subject_token_type": ID_TOKEN},
            timeout=30,
        )
        return time.monotonic() - started, response

    with served(env, tmp_path / "serve.log", threads=4) as url:
        # Credentials for this caller are cached first, so the timed request below measures
        # verification and the cache, never a cloud call.
        elapsed, response = timed(mint(dev, deployment="served-cached-key"))
        assert response.status_code == 200, response.text
        # A token never seen (so it is verified), for the same caller (so no cloud call).
        fresh = mint(dev, deployment="served-cached-key", jti=secrets.token_hex(8))

        fetched = dev.fetches
        dev.jwks_delay = NEVER
        invented = [unknown_kid_token(dev) for _ in range(24)]
        with ThreadPoolExecutor(max_workers=len(invented)) as pool:
            futures = [pool.submit(timed, token) for token in invented]
            wait_until(lambda: dev.fetches > fetched, "no refetch for the invented kids")
            elapsed, response = timed(fresh)
            assert response.status_code == 200, response.text
            assert elapsed < AT_ONCE, f"a token whose key is cached waited {elapsed:.2f} s"
            results = [future.result() for future in futures]

    for token, (_, answer) in zip(invented, results, strict=True):
        key_not_found(answer, token)
    waited = sorted(seconds for seconds, _ in results)
    # One thread waited for the one fetch, and no longer than its timeouts (far below NEVER,
    # when the issuer answers); the rest at once.
    assert waited[-2] < AT_ONCE, waited
    assert waited[-1] < CONNECT_TIMEOUT + READ_TIMEOUT + SLACK, waited
    assert dev.fetches == fetched + 1


def test_key_replaced_under_the_same_kid_refuses_tokens_verified_before(
    stack_factory: Any, dev: DevIssuer
) -> None:
    stack = stack_factory(trusted_issuers=(dev.url,))
    verified = mint(dev, deployment="verified-before-replacement")
    assert stack.post(verified).status_code == 200
    assert stack.post(verified).status_code == 200  # now a cached verification

    kid = dev.key.kid
    dev.keys = [SigningKey(kid, SigningKey.generate().private_key)]
    fetched = dev.fetches
    trigger = unknown_kid_token(dev)  # an unknown kid makes the service refetch now
    key_not_found(stack.post(trigger), trigger)
    assert dev.fetches == fetched + 1

    body = assert_error(stack.post(verified), 400, "invalid_request", verified)
    assert body["error_description"] == SIGNATURE_INVALID
    replacement = mint(dev, deployment="signed-by-the-replacement")
    assert stack.post(replacement).status_code == 200


def oversized_jwks(dev: DevIssuer) -> bytes:
    """A well-formed key set, holding the issuer's real keys, padded past the size cap."""
    document = {"keys": dev.jwks()["keys"], "padding": "x" * (MAX_JWKS_BYTES + 1024)}
    return json.dumps(document).encode()


def test_oversized_jwks_at_start_up_is_refused(stack_factory: Any, dev: DevIssuer) -> None:
    dev.jwks_body = oversized_jwks(dev)
    stack = stack_factory(wait=False, trusted_issuers=(dev.url,))
    token = mint(dev, deployment="oversized-at-start")
    assert_error(stack.post(token), 503, "temporarily_unavailable", token)
    assert readyz(stack).status_code == 503
    assert dev.fetches >= 1


def test_oversized_jwks_keeps_the_last_good_set(stack_factory: Any, dev: DevIssuer) -> None:
    stack = stack_factory(trusted_issuers=(dev.url,))
    cached = mint(dev, deployment="before-oversized")
    assert stack.post(cached).status_code == 200
    dev.rotate()
    dev.jwks_body = oversized_jwks(dev)  # it does hold the new key
    fetched = dev.fetches
    token = mint(dev, deployment="new-kid-in-oversized-set")
    key_not_found(stack.post(token), token)
    assert dev.fetches == fetched + 1
    assert stack.post(cached).status_code == 200
    assert readyz(stack).status_code == 200


@pytest.fixture
def elsewhere() -> Iterator[DevIssuer]:
    """Another host (127.0.0.2) serving a key set of its own: what a redirect would lead to."""
    with DevIssuer(host="127.0.0.2") as other:
        yield other


def test_redirect_at_start_up_is_not_followed(
    stack_factory: Any, dev: DevIssuer, elsewhere: DevIssuer
) -> None:
    dev.jwks_status = 302
    dev.jwks_headers = {"Location": elsewhere.jwks_url}
    stack = stack_factory(wait=False, trusted_issuers=(dev.url,))
    # Claims of the trusted issuer, signed with the other host's key under its kid.
    token = mint(dev, key=elsewhere.key, deployment="redirected-at-start")
    assert_error(stack.post(token), 503, "temporarily_unavailable", token)
    assert readyz(stack).status_code == 503
    assert dev.fetches >= 1
    assert elsewhere.fetches == 0


def test_redirect_on_refetch_is_not_followed(
    tuned_stack: Any, dev: DevIssuer, elsewhere: DevIssuer
) -> None:
    # No refetch cooldown, so that one service can be tried with every redirect status.
    with tuned_stack(dev, refetch_cooldown=0.0) as stack:
        assert stack.post(mint(dev, deployment="before-redirect")).status_code == 200
        dev.jwks_headers = {"Location": elsewhere.jwks_url}
        for status in (301, 302, 303, 307, 308):
            dev.jwks_status = status
            fetched = dev.fetches
            token = mint(dev, key=elsewhere.key, deployment=f"redirected-{status}")
            key_not_found(stack.post(token), token)
            assert dev.fetches == fetched + 1, status
        assert elsewhere.fetches == 0
        # The last good key set keeps serving.
        assert stack.post(mint(dev, deployment="after-redirect")).status_code == 200
