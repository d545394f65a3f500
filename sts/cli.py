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
@click.option("--claims", "claims_json", required=True, help="Token claims as a JSON object.")
@click.option("--audience", default=None, help="Mapping name (or GCP provider) to ask for.")
@click.option("--resource", default=None, help="Target to ask for (role ARN, SA email, WIP).")
@click.option("--json", "as_json", is_flag=True, help="Print the explanation as JSON.")
def explain(claims_json: str, audience: str | None, resource: str | None, as_json: bool) -> None:
    """Which mapping would be chosen for these claims, and why each other one was not."""
    import json

    from sts.identity.principal import ENVIRONMENT_TYPES, Principal
    from sts.mappings.index import MappingIndex
    from sts.mappings.store import Database

    settings = load_settings()
    try:
        claims = json.loads(claims_json)
    except ValueError:
        click.echo("error: --claims: not valid JSON", err=True)
        sys.exit(2)
    if not isinstance(claims, dict):
        click.echo("error: --claims: must be a JSON object", err=True)
        sys.exit(2)
    for name in ("account", "project", "deployment", "environment_type"):
        if not isinstance(claims.get(name), str) or not claims[name]:
            click.echo(f"error: --claims: {name} must be a non-empty string", err=True)
            sys.exit(2)
    if claims["environment_type"] not in ENVIRONMENT_TYPES:
        click.echo(
            "error: --claims: environment_type must be one of " + ", ".join(ENVIRONMENT_TYPES),
            err=True,
        )
        sys.exit(2)
    principal = Principal(
        issuer=str(claims.get("iss", settings.trusted_issuers[0])),
        sub=str(claims.get("sub", "-")),
        account=claims["account"],
        project=claims["project"],
        deployment=claims["deployment"],
        environment_type=claims["environment_type"],
        expires_at=0,
    )
    database = Database(settings.database_url)
    try:
        revision, specs = database.load()
    except Exception as exc:
        click.echo(f"error: database: {type(exc).__name__}: cannot read mappings", err=True)
        sys.exit(1)
    finally:
        database.dispose()
    result = MappingIndex(specs, revision=revision).explain(principal, audience, resource)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(result.summary)
        for candidate in result.candidates:
            mark = "✓" if candidate.matched else "✗"
            click.echo(f"  {mark} {candidate.name}: {candidate.reason}")
    sys.exit(0 if result.chosen is not None else 1)


@cli.command()
def demo() -> None:
    """Run a complete local exchange (dev issuer, AWS and GCP emulators, SQLite), then exit."""
    from sts.dev.demo import run_demo

    sys.exit(run_demo())


def main() -> None:
    cli()
