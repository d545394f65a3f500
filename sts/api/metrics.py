"""``GET /metrics``: Prometheus text exposition (CONTRACT section 7)."""

from __future__ import annotations

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(REGISTRY), status=200, content_type=CONTENT_TYPE_LATEST)
