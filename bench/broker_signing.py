#!/usr/bin/env python3
"""What broker mode adds to the cold path: signing one token per upstream call (docs/benchmarks.md).

    python bench/broker_signing.py [--exchanges 300] [--mints 2000]

Everything on 127.0.0.1, in one run so the ratios compare like with like:

- mint: ``BrokerMinter.mint`` with a database key (RSA-2048, signed in process) and with an AWS
  KMS key (moto's KMS server: a real RSA signature behind an HTTP round trip), ``--mints`` times
  each (KMS: a tenth of that);
- cold exchanges: ``sts serve --workers 1`` in pass-through, in broker mode with a database key
  and in broker mode with KMS, each request from a new identity (so every one verifies a Zuplo
  token and calls the AWS emulator), ``--exchanges`` sequential requests each. The comparator is
  pass-through in the same run: the report gives each mode's median and p99 and their ratios to
  it.

The AWS emulator answers as moto does (no trust policy: it does not verify the token), so the
difference between the modes is the service's own work.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import requests

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sts.broker.keys import DatabaseKeyStore  # noqa: E402
from sts.broker.kms import KmsKeyStore  # noqa: E402
from sts.broker.mint import BrokerMinter  # noqa: E402
from sts.db import Database  # noqa: E402
from sts.dev.aws_emulator import AwsEmulator  # noqa: E402
from sts.dev.issuer import DevIssuer  # noqa: E402
from sts.dev.serving import free_port, sts_serve_process  # noqa: E402
from sts.identity.principal import Principal  # noqa: E402
from sts.protocol import AWS_BROKER_AUDIENCE, ID_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT_TYPE  # noqa: E402

AUDIENCE = "https://sts.bench.localhost"
ROLE = "arn:aws:iam::123456789012:role/bench"
MAPPINGS = f"""
mappings:
  - name: bench
    account: bench-account
    project: "*"
    aws:
      role_arn: {ROLE}
"""
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_CONFIG_FILE": "/nonexistent",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
}


def percentiles(samples: list[float]) -> dict[str, float]:
    """Median and p99 in milliseconds."""
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"median_ms": statistics.median(ordered) * 1000, "p99_ms": p99 * 1000}


def timed(action: Callable[[], Any], times: int) -> list[float]:
    samples = []
    for _ in range(times):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return samples


def principal(i: int) -> Principal:
    return Principal(
        issuer="https://issuer.bench",
        sub=f"atcl_{i:020d}",
        account="bench-account",
        project="orders",
        deployment=f"orders-main-{i}",
        environment_type="production",
        audiences=frozenset({AUDIENCE}),
    )


def cold_exchanges(url: str, issuer: DevIssuer, count: int, tag: str) -> list[float]:
    session = requests.Session()
    bodies = [
        {
            "grant_type": TOKEN_EXCHANGE_GRANT_TYPE,
            "subject_token_type": ID_TOKEN_TYPE,
            "subject_token": issuer.mint(
                audience=AUDIENCE,
                account="bench-account",
                project="orders",
                deployment=f"{tag}-{i}",
                sub=f"atcl_{tag}{i:016d}",
            ),
        }
        for i in range(count + 20)
    ]
    for body in bodies[:20]:  # warm-up: connections, the JWKS, the first key load
        session.post(url + "/token", data=body, timeout=30).raise_for_status()
    samples = []
    for body in bodies[20:]:
        started = time.perf_counter()
        answer = session.post(url + "/token", data=body, timeout=30)
        samples.append(time.perf_counter() - started)
        if answer.status_code != 200:
            raise SystemExit(f"exchange failed: {answer.status_code} {answer.text}")
    return samples


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--exchanges", type=int, default=300, help="cold exchanges per mode")
    parser.add_argument("--mints", type=int, default=2000, help="local mints (KMS: a tenth)")
    args = parser.parse_args(argv)
    os.environ.update(AWS_ENV)
    os.environ.pop("AWS_PROFILE", None)
    results: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
    }
    with tempfile.TemporaryDirectory(prefix="sts-bench-broker-") as work, DevIssuer() as issuer:
        workdir = Path(work)
        with AwsEmulator() as aws:
            kms = boto3.client("kms", region_name="us-east-1", endpoint_url=aws.endpoint_url)
            arn = kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]

            # -- mint, in process ----------------------------------------------------------
            database = Database(f"sqlite:///{workdir / 'keys.db'}")
            database.upgrade()
            local = DatabaseKeyStore(database, secrets.token_bytes(32))
            local.bootstrap()
            remote = KmsKeyStore([arn], endpoint_url=aws.endpoint_url)
            remote.load()
            counter = iter(range(10**9))
            for name, store, times in (
                ("mint_database_key", local, args.mints),
                ("mint_kms", remote, max(20, args.mints // 10)),
            ):
                minter = BrokerMinter(store, "https://sts.bench.localhost")
                samples = timed(
                    lambda minter=minter: minter.mint(
                        principal(next(counter)), "bench", AWS_BROKER_AUDIENCE, session_tags=True
                    ),
                    times,
                )
                results[name] = {"count": times, **percentiles(samples)}
                print(f"{name}: {results[name]}", flush=True)
            database.dispose()

            # -- cold exchanges through sts serve ------------------------------------------
            base_env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("STS_")},
                "STS_AUDIENCE": AUDIENCE,
                "STS_TRUSTED_ISSUERS": issuer.url,
                "STS_ALLOW_HTTP_LOOPBACK": "true",
                "STS_AWS_ENDPOINT_URL": aws.endpoint_url,
                "STS_LOG_FORMAT": "json",
            }
            from sts.mappings.document import parse_document
            from sts.mappings.store import apply

            modes: dict[str, dict[str, str]] = {
                "pass_through": {},
                "broker_database_key": {
                    "STS_KEY_ENCRYPTION_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32))
                    .decode()
                    .rstrip("=")
                },
                "broker_kms": {
                    "STS_SIGNING_KMS_KEY_IDS": arn,
                    "STS_KMS_ENDPOINT_URL": aws.endpoint_url,
                },
            }
            for name, extra in modes.items():
                url_db = f"sqlite:///{workdir / (name + '.db')}"
                db = Database(url_db)
                db.upgrade()
                apply(db, parse_document(MAPPINGS), actor="bench", source="bench")
                db.dispose()
                port = free_port()
                env = {**base_env, "STS_DATABASE_URL": url_db, **extra}
                if extra:
                    env["STS_BROKER_ISSUER"] = f"http://127.0.0.1:{port}"
                with sts_serve_process(env, port, workdir / f"{name}.log") as url:
                    samples = cold_exchanges(url, issuer, args.exchanges, name.replace("_", ""))
                results[name] = {"count": args.exchanges, **percentiles(samples)}
                print(f"{name}: {results[name]}", flush=True)

    base = results["pass_through"]
    for name in ("broker_database_key", "broker_kms"):
        for stat in ("median_ms", "p99_ms"):
            results[name][f"{stat[:-3]}_ratio"] = round(results[name][stat] / base[stat], 3)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
