"""The ``sts`` command (CONTRACT section 6). Exit codes: 0 ok, 1 operation failed, 2 bad input."""

from __future__ import annotations

import sys

import click

from sts.config import ConfigError, Settings


def load_settings() -> Settings:
    """Settings from the environment, or exit 2 with the one-line reason."""
    try:
        return Settings.from_env()
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


@click.group()
def cli() -> None:
    """zuplo-sts: exchange Zuplo ID tokens for short-lived AWS and GCP credentials."""


def main() -> None:
    cli()
