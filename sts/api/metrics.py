"""``GET /metrics``: Prometheus text exposition (docs/reference.md section 7).

Under ``sts serve`` each worker process records into ``PROMETHEUS_MULTIPROC_DIR``; a scrape,
answered by any one worker, aggregates every live worker's values.
"""

from __future__ import annotations

import os

from flask import Blueprint, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return Response(generate_latest(registry), status=200, content_type=CONTENT_TYPE_LATEST)
