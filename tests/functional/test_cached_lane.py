"""``TokenEndpoint.respond(..., may_wait=False)``: what ``sts serve`` answers on its event loop
(sts/rsgi.py). Only answers that need no wait; everything else is None, with nothing logged or
counted, and then runs on a request thread as before."""

from __future__ import annotations

import json
from typing import Any

from werkzeug.test import EnvironBuilder

from sts.api.token import TokenEndpoint
from sts.metrics import EXCHANGES
from tests.functional.conftest import GRANT, ID_TOKEN, Stack


def environ(token: str, **fields: str) -> dict[str, Any]:
    data = {"grant_type": GRANT, "subject_token_type": ID_TOKEN, "subject_token": token, **fields}
    return dict(EnvironBuilder(path="/token", method="POST", data=data).get_environ())


def endpoint(stack: Stack) -> TokenEndpoint:
    def not_here(environ: Any, start_response: Any) -> Any:
        raise AssertionError("only /token is asked")

    return TokenEndpoint(not_here, stack.services)


def exchanges_counted() -> float:
    return sum(
        sample.value
        for metric in EXCHANGES.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    )


def test_a_miss_is_not_answered_and_leaves_no_trace(stack: Stack) -> None:
    counted = exchanges_counted()
    assert endpoint(stack).respond(environ(stack.token()), may_wait=False) is None
    assert exchanges_counted() == counted
    assert stack.aws_requests() == []


def test_a_cached_exchange_is_answered_as_on_a_thread(stack: Stack) -> None:
    token = stack.token()
    lane = endpoint(stack)
    on_thread = lane.respond(environ(token))
    assert on_thread is not None
    assert on_thread[0] == 200
    on_loop = lane.respond(environ(token), may_wait=False)
    assert on_loop is not None
    status, headers, body = on_loop
    assert status == 200
    assert [name for name, _ in headers] == [name for name, _ in on_thread[1]]
    first, again = json.loads(on_thread[2]), json.loads(body)
    assert again["aws_credentials"] == first["aws_credentials"]
    assert len(stack.aws_requests()) == 1
    # A new token of the same identity (its key held): verified on the loop, still no call.
    fresh = lane.respond(environ(stack.token()), may_wait=False)
    assert fresh is not None
    assert fresh[0] == 200
    assert len(stack.aws_requests()) == 1


def test_refusals_that_need_no_wait_are_answered_on_the_loop(stack: Stack) -> None:
    lane = endpoint(stack)
    assert lane.respond(environ(stack.token())) is not None  # the key set is held now
    header, payload, signature = stack.token().split(".")
    forged = f"{header}.{payload}.{signature[::-1]}"
    answer = lane.respond(environ(forged), may_wait=False)
    assert answer is not None
    assert answer[0] == 400
    assert json.loads(answer[2])["error"] == "invalid_request"
    wrong_grant = lane.respond(environ(stack.token(), grant_type="password"), may_wait=False)
    assert wrong_grant is not None
    assert wrong_grant[0] == 400


def test_an_unknown_kid_is_left_to_a_thread(stack: Stack) -> None:
    """Its key set may have to be fetched: never on the loop."""
    token = stack.issuer.mint(
        audience=stack.issuer.claims()["aud"],
        header={"alg": "RS256", "typ": "JWT", "kid": "invented-kid"},
    )
    assert endpoint(stack).respond(environ(token), may_wait=False) is None
