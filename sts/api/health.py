"""Liveness and readiness probes (docs/reference.md section 7)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from sts.api import json_response, services_of
from sts.metrics import READY

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return json_response({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    ready, reason = services_of(current_app).ready()
    READY.set(1 if ready else 0)
    if ready:
        return json_response({"status": "ready"})
    return json_response({"status": "not ready", "reason": reason}, 503)
