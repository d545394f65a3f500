"""``sts mappings`` (docs/reference.md section 6).

Exit codes: 0 success; 1 the operation failed (database unreachable or not migrated, unknown
mapping name); 2 bad usage, a bad mapping file or bad configuration, reported as one line naming
what is wrong, with nothing written.
"""

from __future__ import annotations

import sys

import click

from sts.db.commands import actor, cli_settings, fail, guard, open_database
from sts.db.commands import source as change_source
from sts.mappings import store
from sts.mappings.document import (
    MAX_DOCUMENT_BYTES,
    MappingFileError,
    MappingFileErrors,
    dump_json,
    parse_document,
)
from sts.mappings.spec import ZUPLO, MappingSpec, default_token


@click.group("mappings")
def mappings() -> None:
    """Role mappings: apply a file, list, remove."""


def _read(file: str) -> tuple[str, str]:
    """The file's text and the name errors use; exits 2 if it cannot be read.

    At most :data:`MAX_DOCUMENT_BYTES` are read, so a file with no end (``/dev/zero``, a pipe
    that never closes its data) is refused instead of filling memory.
    """
    if file == "-":
        raw = sys.stdin.buffer.read(MAX_DOCUMENT_BYTES + 1)
        source = "<stdin>"
    else:
        source = file
        try:
            with open(file, "rb") as handle:
                raw = handle.read(MAX_DOCUMENT_BYTES + 1)
        except OSError as exc:
            fail(f"{file}: cannot read: {exc.strerror or type(exc).__name__}", 2)
    if len(raw) > MAX_DOCUMENT_BYTES:
        fail(f"{source}: larger than 64 MiB", 2)
    try:
        return raw.decode("utf-8-sig"), source
    except UnicodeDecodeError:
        fail(f"{source}: not UTF-8 text", 2)


_ACTOR_HELP = (
    "Who makes the change, for the history (default: STS_ACTOR, else the login name); "
    "the host is recorded with it."
)


@mappings.command("apply")
@click.argument("file", metavar="FILE")
@click.option("--dry-run", is_flag=True, help="Print the diff; write nothing.")
@click.option("--prune", is_flag=True, help="Delete stored mappings that FILE does not name.")
@click.option("--actor", "who", default=None, help=_ACTOR_HELP)
def mappings_apply(file: str, dry_run: bool, prune: bool, who: str | None) -> None:
    """Make the stored mappings match FILE (YAML or JSON; - for stdin), in one transaction.

    Reads STS_DATABASE_URL, STS_BROKER_ISSUER (what an unset token means) and STS_ACTOR."""
    text, path = _read(file)
    changed_by = actor(who)
    try:
        specs = parse_document(text, path)
    except MappingFileError as exc:
        for error in exc.all:
            click.echo(f"error: {error}", err=True)
        omitted = exc.omitted if isinstance(exc, MappingFileErrors) else 0
        if omitted:
            click.echo(f"error: {path}: {omitted} more mistakes not shown", err=True)
        sys.exit(2)
    broker_mode = cli_settings().broker_issuer is not None
    with open_database() as database:
        guard(database.require_current)
        diff = guard(
            lambda: store.apply(
                database,
                specs,
                prune=prune,
                dry_run=dry_run,
                actor=changed_by,
                source=change_source(),
                broker_mode=broker_mode,
            )
        )
    click.echo(diff.render())
    default = default_token(broker_mode)
    if dry_run:
        click.echo("(dry run: nothing written)")
    for spec in specs:
        if spec.enabled and spec.aws is not None and (spec.aws.token or default) == ZUPLO:
            click.echo(pass_through_warning(spec.name, broker_mode), err=True)


def pass_through_warning(name: str, broker_mode: bool) -> str:
    """The warning for an enabled AWS mapping that hands AWS the Zuplo token (reference
    section 4): AWS cannot check the Zuplo account, so the role trusts every Zuplo deployment
    its trust policy does not pin."""
    why = "aws.token is zuplo" if broker_mode else "STS_BROKER_ISSUER is not set here"
    return (
        f"warning: mapping {name} passes the Zuplo token through to AWS ({why}): AWS cannot "
        "check the Zuplo account, so pin sub in the role's trust policy, or set "
        "STS_BROKER_ISSUER and use broker mode"
    )


@mappings.command("list")
@click.option("--json", "as_json", is_flag=True, help="The file format, as a JSON array.")
def mappings_list(as_json: bool) -> None:
    """List the stored mappings (disabled ones too).

    Reads STS_DATABASE_URL and STS_BROKER_ISSUER (what an unset token means)."""
    broker_mode = cli_settings().broker_issuer is not None
    with open_database(read_only=True) as database:
        guard(database.require_current)
        _, stored = guard(lambda: store.load(database))
    # Defaults filled in (reference section 6): an unset token as this configuration resolves it.
    specs = [spec.with_default_token(broker_mode) for spec in stored]
    if as_json:
        click.echo(dump_json(specs))
    elif not specs:
        click.echo("no mappings")
    else:
        click.echo(render_table(specs))


def render_table(specs: list[MappingSpec]) -> str:
    header = ("NAME", "ENABLED", "ACCOUNT", "PROJECT", "DEPLOYMENT", "ENVIRONMENT", "TARGET")
    rows = [header] + [
        (
            spec.name,
            "yes" if spec.enabled else "no",
            spec.account,
            spec.project,
            spec.deployment,
            spec.environment_type,
            f"{spec.provider} {spec.targets[0]}",
        )
        for spec in specs
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header) - 1)]
    return "\n".join(
        "  ".join(
            [*(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)), row[-1]]
        )
        for row in rows
    )


@mappings.command("remove")
@click.argument("name")
@click.option("--actor", "who", default=None, help=_ACTOR_HELP)
def mappings_remove(name: str, who: str | None) -> None:
    """Remove one mapping (exit 1 if there is none by that name).

    Reads STS_DATABASE_URL and STS_ACTOR."""
    changed_by = actor(who)
    with open_database() as database:
        guard(database.require_current)
        removed = guard(
            lambda: store.remove(database, name, actor=changed_by, source=change_source())
        )
    if not removed:
        fail(f"no mapping named {name!r}", 1)
    click.echo(f"- delete {name}")
