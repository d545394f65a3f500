#!/usr/bin/env python3
"""The zuplo-sts benchmark: one command, everything on 127.0.0.1 (docs/benchmarks.md).

    python bench/run.py [--quick] [--duration 10] [--connections 32] [--profile [cached|fresh]]

It starts a dev issuer, the AWS emulator (moto) and the GCP emulator in this process, then for
each mapping count (10, 1,000, 100,000) a fresh database with generated mappings and ``sts serve``
(2 workers), and drives it with wrk:

- cached: the same token again and again (verified-token and credential caches hit);
- warm: many distinct identities whose credentials are already cached;
- cold: identities never seen before, so every request verifies RSA and calls the emulator,
  which holds each answer back by ``--cold-delay`` seconds.

Then, on the 1,000-mapping database, it runs the cached path and fresh tokens head to head
against the servers it could have been (granian with 1 or 4 blocking threads, gunicorn sync and
gthread) and the Node.js comparators (fastify + jose, express + jose, and fastify doing the same
work per request as zuplo-sts: 2 cluster workers each), and finally checks that 2 ``sts serve``
processes sharing Redis and PostgreSQL make exactly one upstream call for 20 concurrent
identical cold requests. Every process it starts is stopped on the way out.

The parts live in the ``harness`` package next to this file (bench/harness/__init__.py lists
them); this file is the command, and re-exports what other scripts import from ``run``.
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from harness.cli import main, parse_args  # noqa: E402
from harness.database import load_mappings, postgres_schema  # noqa: E402
from harness.workload import (  # noqa: E402
    caller_claims,
    form_body,
    generate_specs,
    mapping_document,
    mint,
    mint_bodies,
)

__all__ = [
    "caller_claims",
    "form_body",
    "generate_specs",
    "load_mappings",
    "main",
    "mapping_document",
    "mint",
    "mint_bodies",
    "parse_args",
    "postgres_schema",
]

if __name__ == "__main__":
    sys.exit(main())
