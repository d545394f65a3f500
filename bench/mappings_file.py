"""How long a change of ``STS_MAPPINGS_FILE`` takes to reach the database and every worker of a
real ``sts serve`` (docs/reference.md section 13: within 10 s).

The file lives in a directory laid out as the kubelet lays out a ConfigMap volume, and each change
is made as the kubelet makes it (a new ``..data`` link renamed over the old one). Each round swaps
between two documents and measures, from the swap: the stored mappings equal to the new file (read
from the database), then 12 requests in a row on new connections answered by the new mapping
(every worker has it).

    python bench/mappings_file.py [--changes 10] [--workers 2] [--database-url URL]

Prints the median and the maximum of both. The file is looked at every 2 s and each worker checks
the mapping revision every 2 s, so both numbers fall between 0 and about 4 s plus the apply.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sts.db import Database  # noqa: E402
from sts.dev.aws_emulator import AwsEmulator  # noqa: E402
from sts.dev.issuer import DevIssuer  # noqa: E402
from sts.mappings import store  # noqa: E402
from tests.conftest import AUDIENCE  # noqa: E402
from tests.functional.serving import serve_env, sts_serve_within  # noqa: E402
from tests.functional.test_mappings_file import (  # noqa: E402
    FIRST,
    SECOND,
    ConfigMapVolume,
    until_every_worker_serves,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp dir")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, DevIssuer() as issuer, AwsEmulator() as aws:
        directory = Path(tmp)
        volume = ConfigMapVolume(directory / "config")
        volume.write(FIRST)
        url = args.database_url or f"sqlite:///{directory / 'sts.db'}"
        database = Database(url)
        if args.database_url:
            database.upgrade()
        env = serve_env(url, issuer, aws, STS_MAPPINGS_FILE=str(volume.path))
        subject = issuer.mint(audience=AUDIENCE, account="my-account", project="my-project")
        stored, served = [], []
        log = directory / "serve.log"
        with sts_serve_within(env, log, "--workers", str(args.workers)) as base:
            until_every_worker_serves(base, subject, "orders-prod")
            for change in range(args.changes):
                text, name = (SECOND, "orders-main") if change % 2 == 0 else (FIRST, "orders-prod")
                # At a random point of the watcher's 2 s period, not in step with it.
                time.sleep(random.uniform(0, 2))
                swapped = time.monotonic()
                volume.write(text)
                while [spec.name for spec in store.load(database)[1]] != [name]:
                    time.sleep(0.02)
                stored.append(time.monotonic() - swapped)
                until_every_worker_serves(base, subject, name)
                served.append(time.monotonic() - swapped)
        database.dispose()
    for what, values in (("file -> database", stored), ("file -> every worker", served)):
        print(f"{what}: median {statistics.median(values):.2f} s, max {max(values):.2f} s")


if __name__ == "__main__":
    main()
