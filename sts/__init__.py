"""zuplo-sts: exchange Zuplo ID tokens for short-lived AWS, GCP and Azure credentials."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sts.api import ServiceApp
    from sts.config import Settings
    from sts.services import Services

__version__ = "0.1.0"


def create_app(settings: Settings | None = None, services: Services | None = None) -> ServiceApp:
    """The WSGI application: settings from the environment unless given (ConfigError if bad)."""
    from sts.api import build_app

    return build_app(settings, services)
