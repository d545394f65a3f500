"""Per-request Python cost of ``POST /token``, in one process, without HTTP.

Calls ``TokenEndpoint.answer`` (what ``sts.rsgi`` awaits on the event loop) with a read body,
over the real service: dev issuer, the AWS emulator, a migrated SQLite database, the
service's own log handler writing to ``/dev/null``. Two paths:

- **cached**: one token again and again (verified-token cache hit, credentials cached; a
  repeated body, answered from what was made of it the first time: ``sts.exchange.Repeats``);
- **fresh**: a new token per request for the same identity, credentials cached: one RS256
  verification per request, as the comparators in ``bench/run.py`` do.

    python bench/inprocess.py [--requests 20000] [--rounds 5] [--profile cached|fresh]
                              [--revocations 1000]

``--revocations N`` holds N active revocations of other identities (half of them filed under the
measured identity's own account) while measuring: what checking them costs every request.

Prints the median microseconds per request over the rounds (and with ``--profile`` the top
functions by own time). Numbers move from machine to machine; compare runs of one machine.
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import pstats
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlencode

from sts import create_app, revocations
from sts.api.token import FORM, TokenEndpoint, on_this_thread, run_to_end
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
    endpoint = create_app(services=services).token
    services.start()
    deadline = time.monotonic() + 10
    while not services.ready()[0]:
        if time.monotonic() > deadline:
            raise SystemExit(f"not ready: {services.ready()[1]}")
        time.sleep(0.05)
    return endpoint


def run(endpoint: TokenEndpoint, bodies: list[bytes]) -> float:
    """Microseconds per request over ``bodies``, each answered as ``sts.rsgi`` awaits it (a
    cached answer completes without suspending: driven here without an event loop)."""
    answer = endpoint.answer
    started = time.perf_counter()
    for body in bodies:
        status, _, content = run_to_end(answer("POST", FORM, None, body, on_this_thread))
        if status != 200:
            raise SystemExit(f"not answered: {status} {content!r}")
    return (time.perf_counter() - started) / len(bodies) * 1e6


def revoke_others(services: Services, count: int) -> None:
    """``count`` active revocations, none of which covers the measured identity: half by
    other accounts' deployments, half by subjects of this account (the look-ups a request
    makes find them filed under its own account)."""
    for n in range(count):
        selectors = (
            {"account": f"other-{n}", "deployment": f"d-{n}"}
            if n % 2
            else {"account": "my-account", "deployment": f"gone-{n}"}
        )
        revocations.add(
            services.database,
            selectors,
            issued_before=None,
            reason="bench",
            actor="bench",
            mappings=[],
            broker_mode=False,
        )
    deadline = time.monotonic() + 30
    while len(services.mappings.revoked) < count:
        if time.monotonic() > deadline:
            raise SystemExit("the revocations were never loaded")
        time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", choices=("cached", "fresh"))
    parser.add_argument("--sort", default="tottime", help="pstats sort key with --profile")
    parser.add_argument("--top", type=int, default=25, help="functions shown with --profile")
    parser.add_argument(
        "--revocations",
        type=int,
        default=0,
        help="active revocations of other identities held while measuring (sts revoke add)",
    )
    args = parser.parse_args()

    with ExitStack() as stack, tempfile.TemporaryDirectory() as work:
        issuer = stack.enter_context(DevIssuer())
        aws = stack.enter_context(AwsEmulator())
        endpoint = running_service(stack, Path(work), issuer, aws.endpoint_url)
        if args.revocations:
            revoke_others(endpoint.services, args.revocations)

        claims = {
            "account": "my-account",
            "project": "my-project",
            "environment_type": "production",
        }
        token = issuer.mint(audience=AUDIENCE, **claims)
        run(endpoint, [form(token)])  # the one upstream call: credentials cached
        n = args.requests
        cached = [form(token) for _ in range(n)]
        # With more than the 10,000 the verified-token cache holds, every round misses on each.
        fresh = [form(issuer.mint(audience=AUDIENCE, jti=f"f{i}", **claims)) for i in range(n)]
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
