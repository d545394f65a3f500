"""Per-request Python cost of ``POST /token``, in one process, without HTTP.

Calls ``TokenEndpoint.respond`` (what ``sts.rsgi`` calls on the event loop) with a prepared
environ, over the real service: dev issuer, the AWS emulator, a migrated SQLite database, the
service's own log handler writing to ``/dev/null``. Two paths:

- **cached**: one token again and again (verified-token cache hit, credentials cached; a
  repeated body, answered from what was made of it the first time: ``Exchanger.repeat``);
- **fresh**: a new token per request for the same identity, credentials cached: one RS256
  verification per request, as the comparators in ``bench/run.py`` do.

    python bench/inprocess.py [--requests 20000] [--rounds 5] [--profile cached|fresh]

Prints the median microseconds per request over the rounds (and with ``--profile`` the top
functions by own time). Numbers move from machine to machine; compare runs of one machine.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import os
import pstats
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from sts import create_app
from sts.api.token import TokenEndpoint
from sts.config import Settings
from sts.dev.aws_emulator import AwsEmulator
from sts.dev.issuer import DevIssuer
from sts.mappings.document import parse_document
from sts.protocol import ID_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT_TYPE
from sts.services import Services

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from run import load_mappings  # noqa: E402

AUDIENCE = "https://sts.bench.test"
MAPPINGS = """
mappings:
  - name: orders-prod
    account: my-account
    project: my-project
    environment_type: production
    aws:
      role_arn: arn:aws:iam::123456789012:role/orders-api
      duration_seconds: 3600
"""


def form(token: str) -> bytes:
    """The form body a gateway sends for ``token``."""
    fields = {
        "grant_type": TOKEN_EXCHANGE_GRANT_TYPE,
        "subject_token": token,
        "subject_token_type": ID_TOKEN_TYPE,
    }
    return urlencode(fields).encode()


def environ(body: bytes) -> dict[str, Any]:
    """The WSGI environ of ``POST /token`` with ``body``, as :mod:`sts.rsgi` builds it."""
    return {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/token",
        "CONTENT_TYPE": "application/x-www-form-urlencoded",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
    }


def request(token: str) -> dict[str, Any]:
    """An environ that keeps its body (``sts.bench.body``), so that it can be sent again."""
    body = form(token)
    return {**environ(body), "sts.bench.body": body}


def running_service(
    stack: ExitStack, work: Path, issuer: DevIssuer, aws_endpoint_url: str
) -> TokenEndpoint:
    """The service on a fresh SQLite database in ``work`` with :data:`MAPPINGS`, trusting
    ``issuer``, its AWS calls to ``aws_endpoint_url``, ready (keys and index loaded); its
    ``/token`` endpoint. Stopped, and stderr given back, by ``stack``."""
    database_url = f"sqlite:///{work / 'sts.db'}"
    load_mappings(database_url, parse_document(MAPPINGS, "bench.yaml"))
    settings = Settings(
        database_url=database_url,
        audiences=(AUDIENCE,),
        trusted_issuers=(issuer.url,),
        allow_http_loopback=True,
        aws_endpoint_url=aws_endpoint_url,
    )
    # The service's log (one access line per request) goes to stderr: /dev/null while it
    # runs, as a container's log pipe would take it, and stderr back for what fails.
    saved = os.dup(2)
    stack.callback(os.close, saved)
    stack.callback(os.dup2, saved, 2)
    sink = os.open(os.devnull, os.O_WRONLY)
    os.dup2(sink, 2)
    os.close(sink)
    stack.callback(lambda: [h.flush() for h in logging.getLogger("sts").handlers])
    services = Services.build(settings)
    stack.callback(services.close)
    endpoint = create_app(services=services).wsgi_app
    assert isinstance(endpoint, TokenEndpoint)
    services.start()
    deadline = time.monotonic() + 10
    while not services.ready()[0]:
        if time.monotonic() > deadline:
            raise SystemExit(f"not ready: {services.ready()[1]}")
        time.sleep(0.05)
    return endpoint


def run(endpoint: TokenEndpoint, environs: list[dict[str, Any]]) -> float:
    """Microseconds per request over ``environs`` (each answered on the loop's path)."""
    for env in environs:
        env["wsgi.input"] = io.BytesIO(env["sts.bench.body"])
    respond = endpoint.respond
    started = time.perf_counter()
    for env in environs:
        answer = respond(
            env, may_wait=False, request_body=env["sts.bench.body"]
        )  # as sts.rsgi calls it
        if answer is None or answer[0] != 200:
            raise SystemExit(f"not answered on the cached path: {answer!r}")
    return (time.perf_counter() - started) / len(environs) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", choices=("cached", "fresh"))
    parser.add_argument("--sort", default="tottime", help="pstats sort key with --profile")
    parser.add_argument("--top", type=int, default=25, help="functions shown with --profile")
    args = parser.parse_args()

    with ExitStack() as stack, tempfile.TemporaryDirectory() as work:
        issuer = stack.enter_context(DevIssuer())
        aws = stack.enter_context(AwsEmulator())
        endpoint = running_service(stack, Path(work), issuer, aws.endpoint_url)

        claims = {
            "account": "my-account",
            "project": "my-project",
            "environment_type": "production",
        }
        token = issuer.mint(audience=AUDIENCE, **claims)
        first = endpoint.respond(environ(form(token)))  # the one upstream call: credentials cached
        if first is None or first[0] != 200:
            raise SystemExit(f"the first exchange failed: {first!r}")
        n = args.requests
        cached = [request(token) for _ in range(n)]
        # With more than the 10,000 the verified-token cache holds, every round misses on each.
        fresh = [request(issuer.mint(audience=AUDIENCE, jti=f"f{i}", **claims)) for i in range(n)]
        paths = {"cached": cached, "fresh": fresh}
        if args.profile:
            profile = cProfile.Profile()
            profile.enable()
            run(endpoint, paths[args.profile])
            profile.disable()
            pstats.Stats(profile, stream=sys.stdout).sort_stats(args.sort).print_stats(args.top)
            return 0
        results: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(args.rounds):
            for name, environs in paths.items():
                results[name].append(run(endpoint, environs))
        for name, values in results.items():
            print(
                f"{name:7s} {statistics.median(values):6.1f} us per request "
                f"(rounds: {', '.join(f'{v:.1f}' for v in values)})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
