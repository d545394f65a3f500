"""JWKS fetching and caching (docs/reference.md section 3) against live key-set servers."""

from __future__ import annotations

import base64
import json
import socket
import string
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st

from sts.config import ConfigError, Settings
from sts.dev.issuer import DevIssuer, SigningKey
from sts.errors import InvalidRequest, TemporarilyUnavailable
from sts.identity import jwks as j
from sts.identity.jwks import JWKSCache, JWKSError, JWKSRegistry, parse_jwks
from sts.identity.verifier import TokenVerifier, token_digest
from tests.unit.identity.conftest import FakeClock, settings_for

# Expected answers, spelled out as the contract words them (never imported).
KEY_NOT_FOUND = "signing key not found"
SIGNATURE_INVALID = "signature invalid"
KEYS_UNAVAILABLE = "signing keys unavailable"


def cache_for(dev: DevIssuer, clock: FakeClock, **options: Any) -> JWKSCache:
    return JWKSCache(dev.url, dev.jwks_url, allow_http_loopback=True, clock=clock, **options)


def verifier_for(
    dev: DevIssuer, clock: FakeClock, *, load: bool = True
) -> tuple[TokenVerifier, JWKSRegistry]:
    """A verifier whose keys are loaded as the registry's refresher would load them at start."""
    settings = settings_for(dev)
    registry = JWKSRegistry(settings, clock=clock)
    if load:
        for cache in registry.caches():
            assert cache.refresh()
    return TokenVerifier(settings, registry), registry


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def refreshers() -> int:
    return sum(t.name == "jwks-refresher" and t.is_alive() for t in threading.enumerate())


#: Only says "not stuck": what the tests wait for happens within a second.
NOT_STUCK = 30.0


class HeldKeySet:
    """``dev``'s key set, served from a URL of its own that can hold its answers: while
    :meth:`hold` is in force every fetch waits, counted in ``fetches``, until :meth:`release`.
    A fetch is then in flight for exactly as long as the test says, however slow the machine."""

    def __init__(self, dev: DevIssuer) -> None:
        self.fetches = 0
        self._open = threading.Event()
        self._open.set()
        held = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                held.fetches += 1
                held._open.wait(4 * NOT_STUCK)
                body = json.dumps(dev.jwks()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/jwks.json"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def close(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def held_key_set(dev: DevIssuer) -> Iterator[HeldKeySet]:
    held = HeldKeySet(dev)
    yield held
    held.close()


def held_cache_for(dev: DevIssuer, held: HeldKeySet, clock: FakeClock) -> JWKSCache:
    """A cache of ``dev``'s keys fetched from ``held``, with a read time-out no held fetch in
    these tests comes near."""
    return JWKSCache(
        dev.url, held.url, allow_http_loopback=True, clock=clock, timeout=(5.0, 3 * NOT_STUCK)
    )


# --- refetch on unknown kid -------------------------------------------------------------------


def test_unknown_kid_refetches_at_most_once_per_cooldown(dev: DevIssuer, clock: FakeClock) -> None:
    cache = cache_for(dev, clock)
    assert cache.refresh()
    assert dev.fetches == 1

    assert cache.get_key("atky_unknown_1") is None
    assert dev.fetches == 2
    assert cache.get_key("atky_unknown_2") is None
    clock.advance(j.REFETCH_COOLDOWN - 0.1)
    assert cache.get_key("atky_unknown_3") is None
    assert dev.fetches == 2

    clock.advance(0.1)
    assert cache.get_key("atky_unknown_4") is None
    assert dev.fetches == 3
    assert cache.get_key(dev.key.kid) is not None
    assert dev.fetches == 3


def test_misses_during_a_fetch_are_answered_at_once_and_known_kids_never_wait(
    dev: DevIssuer, clock: FakeClock, held_key_set: HeldKeySet
) -> None:
    cache = held_cache_for(dev, held_key_set, clock)
    assert cache.refresh()
    known = dev.key.kid
    new = dev.rotate()
    held_key_set.hold()
    fetched: list[object] = []
    fetcher = threading.Thread(target=lambda: fetched.append(cache.get_key(new.kid)))
    fetcher.start()
    wait_for(lambda: held_key_set.fetches == 2)  # the one fetch is in flight, held

    results: list[object] = []
    others = [
        threading.Thread(target=lambda: results.append(cache.get_key(new.kid))) for _ in range(8)
    ]
    for t in others:
        t.start()
    for t in others:
        t.join(NOT_STUCK)
    assert cache.get_key(known) is not None
    # Nobody but the fetcher waited: every other miss was answered, from the current set, while
    # the fetch was still held.
    assert not any(t.is_alive() for t in others), "a miss waited for the fetch in flight"
    assert results == [None] * 8
    assert fetcher.is_alive()
    assert held_key_set.fetches == 2

    held_key_set.release()
    fetcher.join(NOT_STUCK)
    assert not fetcher.is_alive()
    assert fetched != [None]  # the thread that fetched got the new key
    assert held_key_set.fetches == 2
    assert cache.get_key(new.kid) is not None


def test_a_miss_during_the_background_refresh_does_not_wait_for_it(
    dev: DevIssuer, clock: FakeClock, held_key_set: HeldKeySet
) -> None:
    cache = held_cache_for(dev, held_key_set, clock)
    assert cache.refresh()
    held_key_set.hold()
    refresher = threading.Thread(target=cache.refresh)
    refresher.start()
    wait_for(lambda: held_key_set.fetches == 2)
    found: list[object] = []
    miss = threading.Thread(target=lambda: found.append(cache.get_key("atky_invented")))
    miss.start()
    miss.join(NOT_STUCK)
    # Answered while the refresh was still held.
    assert not miss.is_alive(), "the miss waited for the refresh in flight"
    assert found == [None]
    assert refresher.is_alive()
    held_key_set.release()
    refresher.join(NOT_STUCK)
    assert not refresher.is_alive()
    assert held_key_set.fetches == 2


def test_rotation_new_kid_accepted_after_refetch(dev: DevIssuer, clock: FakeClock) -> None:
    verifier, _ = verifier_for(dev, clock)
    old_token = dev.mint()
    verifier.verify(old_token)

    dev.rotate(keep_old=True)
    verifier.verify(dev.mint())
    verifier.verify(old_token)
    assert dev.fetches == 2


def test_rotation_new_kid_waits_for_the_cooldown(dev: DevIssuer, clock: FakeClock) -> None:
    verifier, _ = verifier_for(dev, clock)
    verifier.verify(dev.mint())
    with pytest.raises(InvalidRequest):  # spends the refetch on a kid nobody has
        verifier.verify(dev.mint(key=SigningKey.generate()))
    dev.rotate()
    rotated = dev.mint()
    with pytest.raises(InvalidRequest) as info:
        verifier.verify(rotated)
    assert info.value.description == KEY_NOT_FOUND

    clock.advance(j.REFETCH_COOLDOWN)
    verifier.verify(rotated)


def test_removed_key_stops_verifying_even_cached_tokens(dev: DevIssuer, clock: FakeClock) -> None:
    verifier, registry = verifier_for(dev, clock)
    old_token = dev.mint()
    verifier.verify(old_token)
    verifier.verify(old_token)
    assert verifier.signature_checks == 1

    dev.rotate(keep_old=False)
    cache = registry.get(dev.url)
    assert cache is not None
    assert cache.refresh()
    with pytest.raises(InvalidRequest) as info:
        verifier.verify(old_token)
    assert info.value.description == KEY_NOT_FOUND
    verifier.verify(dev.mint())


def test_key_replaced_under_the_same_kid_stops_verifying_cached_tokens(
    dev: DevIssuer, clock: FakeClock
) -> None:
    verifier, registry = verifier_for(dev, clock)
    old_token = dev.mint()
    verifier.verify(old_token)
    cache = registry.get(dev.url)
    assert cache is not None
    assert cache.refresh()  # the same key material again: the cached verification still holds
    verifier.verify(old_token)
    assert verifier.signature_checks == 1

    kid = dev.key.kid
    dev.keys = [SigningKey(kid, SigningKey.generate().private_key)]
    assert cache.refresh()
    assert cache.kids() == {kid}
    with pytest.raises(InvalidRequest) as info:
        verifier.verify(old_token)
    assert info.value.description == SIGNATURE_INVALID
    verifier.verify(dev.mint())  # tokens of the new key under the same kid verify


def test_a_verification_vouches_for_a_repeat_only_while_verify_would_accept_it(
    dev: DevIssuer, clock: FakeClock
) -> None:
    """``verified_before`` (the repeat path's check, by digest) says yes exactly where
    ``verify`` answers from its cache: never for a token not verified yet, not past its exp,
    not after its key was replaced under the same kid."""
    verifier, registry = verifier_for(dev, clock)
    now = time.time()
    token = dev.mint(lifetime=100)
    digest = token_digest(token)
    assert verifier.verified_before(digest, now) is None
    principal = verifier.verify(token, now)
    assert verifier.verified_before(digest, now) == principal
    assert verifier.verified_before(digest, now + 99) == principal
    assert verifier.verified_before(digest, now + 100 + 60) is None  # exp plus the leeway

    kid = dev.key.kid
    dev.keys = [SigningKey(kid, SigningKey.generate().private_key)]
    cache = registry.get(dev.url)
    assert cache is not None
    assert cache.refresh()
    assert verifier.verified_before(digest, now) is None
    with pytest.raises(InvalidRequest) as info:
        verifier.verify(token, now)
    assert info.value.description == SIGNATURE_INVALID
    assert verifier.verified_before(digest, now) is None


# --- failures: stale keys keep serving; nothing loaded is 503 ---------------------------------


def test_outage_with_keys_cached_still_verifies(dev: DevIssuer, clock: FakeClock) -> None:
    verifier, registry = verifier_for(dev, clock)
    token = dev.mint()
    verifier.verify(token)
    cache = registry.get(dev.url)
    assert cache is not None

    dev.jwks_status = 503
    clock.advance(3600)
    assert not cache.refresh()
    assert cache.last_error == "HTTP 503"
    assert cache.loaded
    assert cache.kids() == {dev.key.kid}
    assert cache.refresh_due_at == clock.now + 1  # retry soon, with backoff
    assert not cache.refresh()
    assert cache.refresh_due_at == clock.now + 2
    verifier.verify(token)
    verifier.verify(dev.mint(sub="atcl_other"))  # new tokens too, not only cached ones
    assert registry.ready() == (True, None)

    dev.jwks_status = 200
    assert cache.refresh()
    assert cache.last_error is None


def test_outage_with_nothing_cached_is_temporarily_unavailable(
    dev: DevIssuer, clock: FakeClock
) -> None:
    verifier, registry = verifier_for(dev, clock, load=False)
    dev.jwks_status = 500
    token = dev.mint()
    for _ in range(2):  # the second attempt is inside the cooldown: no fetch, same answer
        with pytest.raises(TemporarilyUnavailable) as info:
            verifier.verify(token)
        assert info.value.description == KEYS_UNAVAILABLE
        assert info.value.retry_after == 5
        assert info.value.status == 503
    assert dev.fetches == 1
    assert registry.ready() == (False, f"jwks not loaded for {dev.url}")


def test_unreachable_jwks_is_temporarily_unavailable(clock: FakeClock) -> None:
    with socket.socket() as s:  # a loopback port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/issuer"
    cache = JWKSCache(url, url + "/jwks.json", allow_http_loopback=True, clock=clock)
    assert not cache.refresh()
    assert cache.last_error == "request failed (ConnectionError)"
    assert not cache.loaded


def test_slow_jwks_times_out(dev: DevIssuer, clock: FakeClock) -> None:
    cache = cache_for(dev, clock, timeout=(0.5, 0.2))
    dev.jwks_delay = 0.6
    started = time.monotonic()
    # Given up after the 0.2 s read time-out: the key set, sent after 0.6 s, was not waited for
    # (a fetch that waited would have succeeded). The bound only says "not stuck".
    assert not cache.refresh()
    assert time.monotonic() - started < NOT_STUCK
    assert cache.last_error == "request failed (ReadTimeout)"


# --- what we refuse to fetch or accept ----------------------------------------------------------


def test_oversized_jwks_refused(dev: DevIssuer, clock: FakeClock) -> None:
    padding = [{"kty": "oct", "kid": f"pad{n}", "k": "A" * 100} for n in range(700)]
    body = json.dumps({"keys": [dev.key.public_jwk(), *padding]}).encode()
    assert len(body) > 64 * 1024
    dev.jwks_body = body
    cache = cache_for(dev, clock)
    assert not cache.refresh()
    assert cache.last_error == "response larger than 65536 bytes"
    assert not cache.loaded

    dev.jwks_body = json.dumps({"keys": [dev.key.public_jwk(), *padding[:100]]}).encode()
    assert cache.refresh()


class _Undeclared(BaseHTTPRequestHandler):
    """Sends its body with no Content-Length (close-delimited), so only streaming can cap it."""

    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def undeclared_server() -> Iterator[tuple[str, type[_Undeclared]]]:
    handler = type("Handler", (_Undeclared,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_oversized_body_without_length_is_cut_off(
    dev: DevIssuer, clock: FakeClock, undeclared_server: tuple[str, type[_Undeclared]]
) -> None:
    base, handler = undeclared_server
    jwks = json.dumps(dev.jwks()).encode()
    handler.body = jwks + b" " * 2000
    cache = JWKSCache(base, base + "/jwks", allow_http_loopback=True, clock=clock, max_bytes=1500)
    assert not cache.refresh()
    assert cache.last_error == "response larger than 1500 bytes"

    handler.body = jwks
    assert cache.refresh()
    assert cache.kids() == {dev.key.kid}


def test_redirect_refused(dev: DevIssuer, attacker: DevIssuer, clock: FakeClock) -> None:
    dev.jwks_status = 302
    dev.jwks_headers = {"Location": attacker.jwks_url}
    cache = cache_for(dev, clock)
    assert not cache.refresh()
    assert cache.last_error == "redirect refused (HTTP 302)"
    assert attacker.fetches == 0
    assert not cache.loaded


@pytest.mark.parametrize(
    ("url", "allow"),
    [
        ("http://sts.example.test/issuer/.well-known/jwks.json", True),
        ("http://10.0.0.1/issuer/.well-known/jwks.json", True),
        ("http://127.0.0.1:8080/issuer/.well-known/jwks.json", False),
        ("ftp://127.0.0.1/jwks.json", True),
    ],
)
def test_plain_http_only_to_loopback_when_allowed(url: str, allow: bool) -> None:
    with pytest.raises(ConfigError):
        JWKSCache("issuer", url, allow_http_loopback=allow)


def test_registry_refuses_http_non_loopback_issuer() -> None:
    settings = Settings(
        audiences=("a",), trusted_issuers=("http://sts.example.test/i",), allow_http_loopback=True
    )
    with pytest.raises(ConfigError):
        JWKSRegistry(settings)


def test_https_url_accepted_without_fetching() -> None:
    cache = JWKSCache(
        "https://issuer.example.test",
        "https://issuer.example.test/.well-known/jwks.json",
        allow_http_loopback=False,
    )
    assert not cache.loaded
    assert cache.kids() == frozenset()


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"not json", "not valid JSON"),
        (b"[]", "not a JSON object"),
        (b'{"keys": {}}', "no keys array"),
        (b'{"keys": [], "keys": []}', "duplicate member name"),
        (b'{"keys": []}', "no usable RS256 key"),
    ],
)
def test_unusable_jwks_documents(body: bytes, error: str) -> None:
    with pytest.raises(JWKSError, match=error):
        parse_jwks(body)


def _jwk(key: SigningKey, **changes: Any) -> dict[str, Any]:
    jwk: dict[str, Any] = dict(key.public_jwk())
    for name, value in changes.items():
        if value is None:
            jwk.pop(name, None)
        else:
            jwk[name] = value
    return jwk


@pytest.fixture(scope="module")
def keys() -> dict[str, SigningKey]:
    return {
        "good": SigningKey.generate(kid="good"),
        "other": SigningKey.generate(kid="other"),
        "weak": SigningKey.generate(kid="weak", bits=1024),
    }


@pytest.mark.parametrize(
    ("change", "usable"),
    [
        ({}, True),
        ({"use": None, "alg": None}, True),
        ({"key_ops": ["verify"]}, True),
        ({"use": "enc"}, False),
        ({"alg": "RS512"}, False),
        ({"alg": "PS256"}, False),
        ({"kty": "EC"}, False),
        ({"kid": None}, False),
        ({"kid": ""}, False),
        ({"kid": 7}, False),
        ({"key_ops": ["encrypt"]}, False),
        ({"n": None}, False),
        ({"n": "not+base64url"}, False),
        ({"e": "AAAA"}, False),
    ],
)
def test_which_keys_are_usable(
    keys: dict[str, SigningKey], change: dict[str, Any], usable: bool
) -> None:
    kids = {"other"}
    entries = [_jwk(keys["good"], **change), keys["other"].public_jwk()]
    if usable:
        kids.add("good")
    assert set(parse_jwks(json.dumps({"keys": entries}).encode())) == kids


def test_weak_and_ambiguous_keys_skipped(keys: dict[str, SigningKey]) -> None:
    duplicate = _jwk(keys["other"], kid="good")
    body = {"keys": [keys["weak"].public_jwk(), keys["good"].public_jwk(), duplicate]}
    with pytest.raises(JWKSError, match="no usable RS256 key"):
        parse_jwks(json.dumps(body).encode())
    body["keys"].append(keys["other"].public_jwk())
    assert set(parse_jwks(json.dumps(body).encode())) == {"other"}


# --- TTL from Cache-Control -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "ttl"),
    [
        (None, j.DEFAULT_TTL),
        ("public", j.DEFAULT_TTL),
        ("max-age=600", 600.0),
        ("public, max-age=900, must-revalidate", 900.0),
        ("max-age=5", j.MIN_TTL),
        ("max-age=999999", j.MAX_TTL),
        ("no-store", j.MIN_TTL),
        ("no-cache, max-age=600", j.MIN_TTL),
        ("max-age=-5", j.DEFAULT_TTL),
        ("s-maxage=900", j.DEFAULT_TTL),
    ],
)
def test_ttl_from_cache_control(header: str | None, ttl: float) -> None:
    assert j.ttl_from_cache_control(header) == ttl


def test_refresh_due_follows_max_age(dev: DevIssuer, clock: FakeClock) -> None:
    dev.jwks_headers = {"Cache-Control": "public, max-age=1200"}
    cache = cache_for(dev, clock)
    assert cache.refresh_due_at < clock.now
    assert cache.refresh()
    assert cache.refresh_due_at == clock.now + 1200


# --- the registry and its refresher thread ------------------------------------------------------


def test_registry_ready_after_start(dev: DevIssuer, clock: FakeClock) -> None:
    registry = JWKSRegistry(settings_for(dev), clock=clock)
    assert registry.ready() == (False, f"jwks not loaded for {dev.url}")
    registry.start()
    try:
        wait_for(lambda: registry.ready()[0])
        assert registry.ready() == (True, None)
        registry.start()
        assert refreshers() == 1
        assert dev.fetches == 1

        clock.advance(j.DEFAULT_TTL)  # due: the refresher fetches again by itself
        wait_for(lambda: dev.fetches == 2)
    finally:
        registry.stop()
    assert refreshers() == 0


def test_registry_retries_a_failing_issuer(
    issuer: DevIssuer, dev: DevIssuer, clock: FakeClock
) -> None:
    dev.jwks_status = 503
    registry = JWKSRegistry(settings_for(issuer, dev), clock=clock)
    registry.start()
    try:
        cache = registry.get(dev.url)
        assert cache is not None
        wait_for(lambda: cache.last_error == "HTTP 503")
        assert registry.ready() == (False, f"jwks not loaded for {dev.url}")

        dev.jwks_status = 200
        clock.advance(1)  # the first retry is due one second after the failure
        wait_for(lambda: registry.ready()[0])
    finally:
        registry.stop()


def test_registry_stop_then_start_again(dev: DevIssuer) -> None:
    registry = JWKSRegistry(settings_for(dev))
    registry.start()
    registry.stop()
    registry.start()
    try:
        wait_for(lambda: registry.ready()[0])
    finally:
        registry.stop()


# --- base64url: one spelling per byte string -------------------------------------------------

B64_CHARACTERS = string.ascii_letters + string.digits + "-_+/= \n\t\x00\u00e9"


def unpadded(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@hypothesis.settings(max_examples=2000, deadline=None)
@hypothesis.given(st.binary(max_size=300))
def test_every_byte_string_decodes_from_its_unpadded_base64url(data: bytes) -> None:
    assert j.decode_b64url(unpadded(data)) == data


@hypothesis.settings(max_examples=5000, deadline=None)
@hypothesis.given(st.text(alphabet=B64_CHARACTERS, max_size=12))
def test_only_the_canonical_unpadded_spelling_is_accepted(text: str) -> None:
    """Padding, whitespace, ``+/``, set trailing bits, impossible lengths: refused; whatever is
    accepted is exactly the encoding of what it decodes to."""
    try:
        data = j.decode_b64url(text)
    except JWKSError:
        data = None
    if data is not None:
        assert unpadded(data) == text
    else:
        try:
            canonical = unpadded(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        except ValueError:
            return
        assert canonical != text, f"refused the canonical spelling {text!r}"
