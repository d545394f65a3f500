"""The ``sts`` command (CONTRACT section 6). Exit codes: 0 ok, 1 operation failed, 2 bad input."""

from __future__ import annotations

import sys

import click

from sts.config import ConfigError, Settings
from sts.mappings.commands import db, mappings


def load_settings() -> Settings:
    """Settings from the environment, or exit 2 with the one-line reason."""
    try:
        return Settings.from_env()
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


@click.group()
@click.version_option(package_name="zuplo-sts")
def cli() -> None:
    """zuplo-sts: exchange Zuplo ID tokens for short-lived AWS and GCP credentials."""


cli.add_command(db)
cli.add_command(mappings)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="TCP port."
)
@click.option(
    "--workers", default=2, show_default=True, type=click.IntRange(1, 64), help="Processes."
)
@click.option(
    "--threads",
    default=4,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Request threads per worker process.",
)
def serve(host: str, port: int, workers: int, threads: int) -> None:
    """Run the production server (granian, WSGI, several worker processes)."""
    from sts.serve import run

    settings = load_settings()
    try:
        settings.require_audience()
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    sys.exit(run(settings, host=host, port=port, workers=workers, threads=threads))


@cli.command()
def demo() -> None:
    """Run a complete local exchange (dev issuer, AWS and GCP emulators, SQLite), then exit."""
    from sts.dev.demo import run_demo

    sys.exit(run_demo())


def main() -> None:
    cli()
