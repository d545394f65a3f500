"""The ``sts`` command (docs/reference.md section 6).

Exit codes: 0 ok, 1 the operation failed, 2 bad usage, input or configuration.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from sts.audit_commands import audit
from sts.broker.commands import keys
from sts.config import ConfigError, Settings
from sts.db.commands import db
from sts.mappings.commands import mappings
from sts.revoke_commands import revoke

# The same bound as for mapping files (README, "Mappings"): the root object is level 1.
MAX_CLAIMS_NESTING = 100


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
    """zuplo-sts: exchange Zuplo ID tokens for short-lived AWS, GCP and Azure credentials."""


cli.add_command(db)
cli.add_command(mappings)
cli.add_command(audit)
cli.add_command(keys)
cli.add_command(revoke)


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
    """Run the production server (granian; bodies read on its event loop, the app on request
    threads; several worker processes).

    Reads every STS_* variable of README "Configuration"; STS_AUDIENCE is required."""
    from sts.serve import run

    settings = load_settings()
    try:
        settings.require_audience()
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    sys.exit(run(settings, host=host, port=port, workers=workers, threads=threads))


@cli.command()
@click.option("--claims", "claims_json", default=None, help="Token claims as a JSON object.")
@click.option(
    "--token",
    "token",
    default=None,
    help="A real ID token (or @FILE, or - for stdin): verified as POST /token verifies it "
    "(the issuer's JWKS fetched), then its claims explained.",
)
@click.option("--audience", default=None, help="Mapping name (or GCP provider) to ask for.")
@click.option("--resource", default=None, help="Target to ask for (role ARN, SA email, WIP).")
@click.option("--json", "as_json", is_flag=True, help="Print the explanation as JSON.")
def explain(
    claims_json: str | None,
    token: str | None,
    audience: str | None,
    resource: str | None,
    as_json: bool,
) -> None:
    """Which mapping would be chosen for these claims, and why each other one was not.

    Give the claims with --claims, or a token with --token. A token is first verified as the
    service verifies it (signature against the issuer's JWKS, issuer, audience, expiry, claims):
    a token the service would refuse is "chosen: none (invalid_request)" and the reason; when the
    keys cannot be fetched, explain says the token was not verified and explains its claims.

    Reads STS_DATABASE_URL, and for --token STS_TRUSTED_ISSUERS, STS_AUDIENCE,
    STS_CLOCK_SKEW_SECONDS and STS_ALLOW_HTTP_LOOPBACK.
    """
    import json

    from sts.db.commands import guard, open_database
    from sts.identity.principal import ENVIRONMENT_TYPES, Principal
    from sts.mappings import store
    from sts.mappings.index import MappingIndex

    settings = load_settings()
    if (claims_json is None) == (token is None):
        click.echo("error: give exactly one of --claims or --token", err=True)
        sys.exit(2)
    option = "--claims" if token is None else "--token"
    verdict: dict[str, Any] | None = None
    if token is not None:
        token, claims = _token_claims(token)
        verdict = _verify(settings, token)
        if verdict["accepted"] is False:
            _refused(verdict, as_json)
    else:
        claims = _json_claims(claims_json or "")
    for name in ("account", "project", "deployment", "environment_type"):
        if not isinstance(claims.get(name), str) or not claims[name]:
            click.echo(f"error: {option}: {name} must be a non-empty string", err=True)
            sys.exit(2)
    if claims["environment_type"] not in ENVIRONMENT_TYPES:
        click.echo(
            f"error: {option}: environment_type must be one of " + ", ".join(ENVIRONMENT_TYPES),
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
        audiences=frozenset(),  # selection never depends on aud; only the credential cache does
    )
    # The same one-line failures as every other database command: exit 2 for a URL no driver
    # can open, exit 1 for a database that does not answer or is not migrated.
    with open_database(read_only=True) as database:
        guard(database.require_current)
        revision, specs = guard(lambda: store.load(database))
    result = MappingIndex(specs, revision=revision).explain(principal, audience, resource)
    if as_json:
        doc = result.to_dict()
        if verdict is not None:
            doc["token"] = verdict
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(result.summary)
        if verdict is not None:
            click.echo(f"  token: {verdict['reason']}")
        for candidate in result.candidates:
            mark = "✓" if candidate.matched else "✗"
            click.echo(f"  {mark} {candidate.name}: {candidate.reason}")
    sys.exit(0 if result.chosen is not None else 1)


def _verify(settings: Settings, token: str) -> dict[str, Any]:
    """What ``POST /token`` would make of the token itself: ``accepted`` True (verified),
    False (refused: ``error`` and the service's ``reason``) or None (could not be verified)."""
    from sts.errors import OAuthError, TemporarilyUnavailable
    from sts.identity.jwks import JWKSRegistry
    from sts.identity.verifier import TokenVerifier

    if not settings.audiences:
        return {"accepted": None, "error": None, "reason": "not verified: STS_AUDIENCE is not set"}
    registry = JWKSRegistry(settings)
    try:
        for cache in registry.caches():
            cache.refresh()  # bounded by the fetch's own time-outs
        TokenVerifier(settings, registry).verify(token)
    except TemporarilyUnavailable as exc:
        reason = f"not verified: the issuer's keys could not be fetched ({exc.cause or exc})"
        return {"accepted": None, "error": None, "reason": reason}
    except OAuthError as exc:
        return {"accepted": False, "error": exc.error, "reason": exc.description}
    finally:
        registry.stop()
    return {"accepted": True, "error": None, "reason": "accepted (signature, issuer, audience, "
            "expiry and claims verified as POST /token verifies them)"}  # fmt: skip


def _refused(verdict: dict[str, Any], as_json: bool) -> None:
    """The token itself would be refused: no mapping is looked at (exit 1)."""
    import json

    if as_json:
        doc = {"chosen": None, "error": verdict["error"], "candidates": [], "token": verdict}
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(f"chosen: none ({verdict['error']})")
        click.echo(f"  token refused: {verdict['reason']}")
    sys.exit(1)


def _json_claims(text: str) -> dict[str, Any]:
    import json

    try:
        claims = json.loads(text)
    except RecursionError:
        claims = None
        too_deep = True
    except ValueError:
        click.echo("error: --claims: not valid JSON", err=True)
        sys.exit(2)
    else:
        too_deep = _nesting(claims) > MAX_CLAIMS_NESTING
    if too_deep:
        click.echo(f"error: --claims: nested deeper than {MAX_CLAIMS_NESTING} levels", err=True)
        sys.exit(2)
    if not isinstance(claims, dict):
        click.echo("error: --claims: must be a JSON object", err=True)
        sys.exit(2)
    return claims


def _nesting(value: object) -> int:
    """How many arrays and objects are nested in ``value``, counted without recursion."""
    deepest = 0
    pending: list[tuple[object, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth)
            pending.extend((child, depth + 1) for child in item)
    return deepest


def _token_claims(value: str) -> tuple[str, dict[str, Any]]:
    """The token (read from @FILE or stdin when asked) and its payload, decoded as strictly as
    the service decodes it."""
    from sts.identity.jwks import JWKSError, decode_b64url, loads_json_object

    if value == "-":
        value = sys.stdin.read()
    elif value.startswith("@"):
        try:
            with open(value[1:], encoding="ascii") as handle:
                value = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            click.echo(f"error: --token: cannot read {value[1:]}: {type(exc).__name__}", err=True)
            sys.exit(2)
    parts = value.strip().split(".")
    if len(parts) != 3:
        click.echo("error: --token: not a compact JWS (three dot-separated parts)", err=True)
        sys.exit(2)
    try:
        return value.strip(), loads_json_object(decode_b64url(parts[1]))
    except JWKSError:
        click.echo("error: --token: payload is not base64url-encoded JSON", err=True)
        sys.exit(2)


@cli.command()
def demo() -> None:
    """Run a complete local exchange (dev issuer, AWS, GCP and Azure (Entra) emulators, SQLite),
    then exit. Reads no STS_* variable: everything is embedded."""
    from sts.dev.demo import run_demo

    sys.exit(run_demo())


@cli.group(invoke_without_command=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.pass_context
def dev(context: click.Context, port: int) -> None:
    """A local sandbox that stays up until Ctrl-C: a Zuplo-like issuer, the AWS, GCP and Azure
    (Entra) emulators and `sts serve` in broker mode on 127.0.0.1:PORT with example mappings;
    prints the URLs, the database URL, and a curl and an `sts explain --token` to paste into
    another shell. `sts dev token` prints a token it accepts.

    Reads no STS_* variable (ZUPLO_STS_DEV_STATE: where the running sandbox leaves its state)."""
    if context.invoked_subcommand is None:
        from sts.dev.sandbox import run_sandbox

        sys.exit(run_sandbox(port))


@dev.command("token")
@click.option("--account", default="my-account", show_default=True)
@click.option("--project", default="my-project", show_default=True)
@click.option("--deployment", default="copper-bedbug-main-53c4947", show_default=True)
@click.option(
    "--environment-type",
    type=click.Choice(["production", "preview", "development"]),
    default="production",
    show_default=True,
)
@click.option("--audience", default=None, help="default: the sandbox's STS_AUDIENCE")
@click.option("--lifetime", type=click.IntRange(60, 86400), default=3600, show_default=True)
def dev_token(  # noqa: PLR0917 - one option each
    account: str,
    project: str,
    deployment: str,
    environment_type: str,
    audience: str | None,
    lifetime: int,
) -> None:
    """Print an ID token from the running sandbox's issuer (exit 1 when none is running).

    Reads no STS_* variable (ZUPLO_STS_DEV_STATE: where the sandbox left its state)."""
    from sts.dev.sandbox import mint_dev_token

    click.echo(mint_dev_token(account, project, deployment, environment_type, audience, lifetime))


def main() -> None:
    cli()
