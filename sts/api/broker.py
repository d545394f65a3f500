"""Broker mode's discovery document and JWKS (docs/reference.md section 8).

OpenID Connect Discovery 1.0 section 4 and RFC 7517 section 5: what the clouds read at
``STS_BROKER_ISSUER`` to verify the tokens the broker signs. Served at these fixed paths whatever
the issuer's path, publicly cacheable for 300 s (a key is published at least 600 s before it
signs, so a cached set never lacks it). Without broker mode both are the service's usual 404.
"""

from __future__ import annotations

from flask import Blueprint, Response, abort, current_app

from sts.api import services_of
from sts.broker.documents import CACHE_CONTROL, DISCOVERY_PATH, JWKS_PATH
from sts.broker.service import Broker

bp = Blueprint("broker", __name__)


def _broker() -> Broker:
    broker = services_of(current_app).broker
    if broker is None:
        abort(404)
    return broker


def _document(body: bytes) -> Response:
    return Response(
        body,
        mimetype="application/json",
        headers={"Cache-Control": CACHE_CONTROL},
    )


@bp.get(DISCOVERY_PATH)
def openid_configuration() -> Response:
    return _document(_broker().discovery)


@bp.get(JWKS_PATH)
def jwks() -> Response:
    return _document(_broker().jwks())
