"""Prometheus metrics, defined once. Names and labels follow Prometheus conventions.

Under ``sts serve`` every worker process writes to a shared directory
(``PROMETHEUS_MULTIPROC_DIR``, set by the server before workers start) and ``/metrics``
aggregates them; in a single process the default registry is used.
"""

from __future__ import annotations

import functools
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

EXCHANGES = Counter(
    "sts_exchanges_total",
    "Token exchanges answered, by outcome (ok or the OAuth error code), provider and cache use.",
    ["outcome", "provider", "cache"],
)
EXCHANGE_SECONDS = Histogram(
    "sts_exchange_duration_seconds",
    "Time to answer POST /token, from request to response body (refusals under cache none).",
    ["provider", "cache"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
UPSTREAM_CALLS = Counter(
    "sts_upstream_calls_total",
    "Calls made to a cloud provider, by provider and result (ok or the error code).",
    ["provider", "result"],
)
UPSTREAM_SECONDS = Histogram(
    "sts_upstream_duration_seconds",
    "Time spent in one upstream credential call.",
    ["provider"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SIGNATURE_CHECKS = Counter(
    "sts_token_signature_checks_total",
    "RS256 verifications of subject tokens (a token verified before costs none).",
)
SELECTIONS = Counter(
    "sts_mapping_selections_total",
    "Mappings selected for requests (a repeated request body costs none).",
)
CREDENTIAL_REFRESHES = Counter(
    "sts_credential_refreshes_total",
    "Credentials renewed ahead of expiry in the background, by result.",
    ["result"],
)
REDIS_FALLBACKS = Counter(
    "sts_redis_fallbacks_total",
    "Redis operations that failed or were skipped, so the in-process tier served alone.",
    ["operation"],
)
JWKS_FETCHES = Counter(
    "sts_jwks_fetches_total",
    "JWKS fetches, by result (ok or failed).",
    ["result"],
)
CACHE_ENTRIES = Gauge(
    "sts_cache_entries",
    "Entries held in the in-process caches (summed over live worker processes).",
    ["cache"],
    multiprocess_mode="livesum",
)
MAPPINGS_LOADED = Gauge(
    "sts_mappings_loaded",
    "Mappings in the in-memory selection index.",
    multiprocess_mode="livemax",
)
MAPPING_REVISION = Gauge(
    "sts_mapping_revision",
    "Revision of the mapping table the selection index was built from.",
    multiprocess_mode="livemax",
)
JWKS_LAST_SUCCESS = Gauge(
    "sts_jwks_last_success_timestamp_seconds",
    "Unix time of the last successful JWKS fetch, by issuer: the oldest among live worker "
    "processes (a key set is refetched at least hourly, sts.identity.jwks.MAX_TTL).",
    ["issuer"],
    multiprocess_mode="livemin",
)
SIGNING_KEY_LOADED = Gauge(
    "sts_signing_key_loaded",
    "Broker mode only: 1 when every live worker process holds a key that signs now, else 0 "
    "(set every 2 s; absent without STS_BROKER_ISSUER).",
    ["issuer"],
    multiprocess_mode="livemin",
)
READY = Gauge(
    "sts_ready",
    "The most recent GET /readyz answer of any live worker process: 1 for 200, 0 for 503 "
    "(0 until the first probe).",
    multiprocess_mode="livemostrecent",
)
AUDIT_WRITE_FAILURES = Counter(
    "sts_audit_write_failures_total",
    "Issuance events the database did not take; each one was logged by sts.audit instead.",
)
AUDIT_LATE_WRITES = Counter(
    "sts_audit_late_writes_total",
    "Issuance events whose row was committed after they were logged as not written "
    "(a duplicate of that log line).",
)


@functools.cache
def answered(outcome: str, provider: str, cache: str) -> tuple[Any, Any]:
    """The ``EXCHANGES`` and ``EXCHANGE_SECONDS`` children of one answer's labels: the same
    objects ``labels()`` returns (each worker's values follow its pid), without its lock and
    checks on every request. The label values are a handful of fixed words."""
    return EXCHANGES.labels(outcome, provider, cache), EXCHANGE_SECONDS.labels(provider, cache)
