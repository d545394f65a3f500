"""Paths, addresses, sizes and the labels of the servers in the results table."""

from __future__ import annotations

from pathlib import Path

from sts.identity.verifier import VERIFIED_CACHE_SIZE

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
NODE_DIR = BENCH / ".node"
COMPARATOR = BENCH / "comparator"
LUA_SCRIPT = BENCH / "lua" / "exchange.lua"

HOST = "127.0.0.1"
AUDIENCE = "https://sts.bench.example"
GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
# Four workload identity pool providers shared by every GCP mapping, as an organisation would.
WIPS = tuple(
    f"//iam.googleapis.com/projects/{100000000 + n}/locations/global/workloadIdentityPools/"
    f"zuplo-pool-{n}/providers/zuplo-oidc"
    for n in range(4)
)
MAPPINGS_PER_ACCOUNT = 8
SERVER_WORKERS = 2
# What each worker logs when its selection index is built (sts/mappings/live.py).
INDEX_LOADED = '"msg":"mapping index loaded"'
#: The isolation scenario: clients sending cold exchanges while the cached path is measured,
#: and how long the AWS emulator holds each of their calls.
ISOLATION_CALLERS = 16
ISOLATION_DELAY_SECONDS = 1.0
COLD_BODIES_ISOLATION = 2_000
#: Distinct tokens of the fresh-token head-to-head: more than the verified-token cache holds.
FRESH_TOKENS = VERIFIED_CACHE_SIZE + 2_000
FRESH = "head-to-head fresh"
GRANIAN_4 = "sts serve --threads 4 (granian)"
GRANIAN_1 = "sts serve --threads 1 (granian)"
GRANIAN_WSGI = "granian WSGI, 2 workers x 4 blocking threads (sts serve before RSGI)"
FASTIFY = "node fastify + jose, 2 workers"
EXPRESS = "node express + jose, 2 workers"
SAMEWORK = "node same work (fastify + jose + selection, cache, metrics, log), 2 workers"
#: Servers that are not zuplo-sts: no warm-up of its caches (no mapping index to wait for).
OTHER_SERVERS = ("fastify", "express", "floor", "samework")
#: Servers that never call a cloud: no upstream calls counted. The same-work comparator calls the
#: AWS, GCP and Entra emulators on a credential-cache miss, so its calls are counted like ours.
NO_UPSTREAM = ("fastify", "express", "floor")
FLOOR = "floor: granian RSGI, 2 workers, one RS256 verify, nothing else (bench/floor_app.py)"
# Upper bound on how fast the cold path can go; cold tokens are minted for this rate so no
# identity repeats within one measurement (the report warns if one did).
COLD_RATE_CEILING = 400
READY_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 10.0
