#!/usr/bin/env python3
"""How long ``/healthz`` and ``/readyz`` take while exchanges wait on a slow cloud.

Starts a dev issuer and the AWS emulator (answering after ``--delay`` seconds), migrates a fresh
SQLite database with one AWS mapping, runs ``sts serve`` (2 workers, 4 request threads each)
from ``--tree`` (default: this checkout; give another checkout to compare), then fires
``--cold`` concurrent cold exchanges (for one credential key, then for as many keys) and, while
they wait, probes ``/healthz`` and ``/readyz`` on new connections every ``--interval`` seconds.

    python bench/probes.py [--tree DIR] [--delay 4.5] [--cold 16] [--interval 0.02]

Prints p50, p99 and max of each probe per scenario, and how many probes answered.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sts.dev.aws_emulator import AwsEmulator  # noqa: E402
from sts.dev.issuer import DevIssuer  # noqa: E402
from sts.dev.serving import free_port  # noqa: E402

AUDIENCE = "https://sts.bench.test"
MAPPINGS = """
mappings:
  - name: orders-prod
    account: my-account
    project: my-project
    aws: {role_arn: "arn:aws:iam::123456789012:role/orders-api"}
"""
FORM = {
    "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
    "subject_token_type": "urn:ietf:params:oauth:token-type:id_token",
}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def sts(tree: Path, env: dict[str, str], *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "sts", *args],
        env={**env, "PYTHONPATH": str(tree)},
        cwd=tree,
        check=True,
        capture_output=True,
    )


def scenario(url: str, tokens: list[str], interval: float) -> dict[str, list[float]]:
    """Probe both paths while ``tokens`` are exchanged concurrently."""
    seconds: dict[str, list[float]] = {"/healthz": [], "/readyz": []}
    with ThreadPoolExecutor(len(tokens)) as pool:
        cold = [
            pool.submit(
                requests.post, url + "/token", data={**FORM, "subject_token": t}, timeout=60
            )
            for t in tokens
        ]
        time.sleep(0.3)  # the cold requests reach the cloud
        while not all(future.done() for future in cold):
            for path, taken in seconds.items():
                started = time.monotonic()
                requests.get(url + path, timeout=60, headers={"Connection": "close"})
                taken.append(time.monotonic() - started)
            time.sleep(interval)
        statuses = [future.result().status_code for future in cold]
    print(f"    cold answers: {sorted(set(statuses))}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout to run")
    parser.add_argument("--delay", type=float, default=4.5, help="the cloud's answer delay")
    parser.add_argument("--cold", type=int, default=16, help="concurrent cold exchanges")
    parser.add_argument("--interval", type=float, default=0.02, help="between probes")
    args = parser.parse_args()
    tree = args.tree.resolve()
    with DevIssuer() as issuer, AwsEmulator() as aws, tempfile.TemporaryDirectory() as work:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STS_")}
        env.update(
            STS_DATABASE_URL=f"sqlite:///{work}/sts.db",
            STS_AUDIENCE=AUDIENCE,
            STS_TRUSTED_ISSUERS=issuer.url,
            STS_ALLOW_HTTP_LOOPBACK="true",
            STS_AWS_ENDPOINT_URL=aws.endpoint_url,
        )
        (Path(work) / "m.yaml").write_text(MAPPINGS)
        sts(tree, env, "db", "upgrade")
        sts(tree, env, "mappings", "apply", f"{work}/m.yaml")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [sys.executable, "-m", "sts", "serve", "--port", str(port), "--workers", "2"],
            env={**env, "PYTHONPATH": str(tree)},
            cwd=tree,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if requests.get(url + "/readyz", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("sts serve never became ready")
                time.sleep(0.2)
            aws.delay = args.delay
            print(f"tree {tree}, cloud delay {args.delay} s, {args.cold} cold exchanges")
            for name, distinct in (("one key", False), ("distinct keys", True)):
                tag = threading.get_ident()
                tokens = [
                    issuer.mint(
                        audience=AUDIENCE, deployment=f"c-{tag}-{name}-{n if distinct else 0}"
                    )
                    for n in range(args.cold)
                ]
                print(f"  {name}:")
                for path, taken in scenario(url, tokens, args.interval).items():
                    ms = [t * 1000 for t in taken]
                    print(
                        f"    {path:8s} p50 {statistics.median(ms):7.1f} ms  p99 "
                        f"{percentile(ms, 0.99):7.1f} ms  max {max(ms):7.1f} ms  ({len(ms)} probes)"
                    )
        finally:
            server.terminate()
            server.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
