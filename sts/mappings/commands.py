"""``sts mappings`` (docs/reference.md section 6).

Exit codes: 0 success; 1 the operation failed (database unreachable or not migrated, unknown
mapping name); 2 bad usage, a bad mapping file or bad configuration, reported as one line naming
what is wrong, with nothing written.
"""

from __future__ import annotations

import sys

import click

from sts.db.commands import actor, fail, guard, open_database
from sts.db.commands import source as change_source
from sts.mappings import store
from sts.mappings.document import (
    MAX_DOCUMENT_BYTES,
    MappingFileError,
    dump_json,
    mistakes,
    parse_document,
)
from sts.mappings.spec import BROKER, ZUPLO, MappingSpec


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

    Reads STS_DATABASE_URL and STS_ACTOR."""
    text, path = _read(file)
    changed_by = actor(who)
    specs = parse_or_exit(text, path)
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
            )
        )
    click.echo(diff.render())
    if dry_run:
        click.echo("(dry run: nothing written)")
    for warning in token_warnings(specs):
        click.echo(warning, err=True)


def parse_or_exit(text: str, path: str) -> list[MappingSpec]:
    """FILE's mappings; every mistake printed (one ``error: file:line: ...`` line each, at most
    50 and a count) and exit 2 when it has any."""
    try:
        return parse_document(text, path)
    except MappingFileError as exc:
        for line in mistakes(exc, path):
            click.echo(f"error: {line}", err=True)
        sys.exit(2)


def token_warnings(specs: list[MappingSpec]) -> list[str]:
    """A warning for each enabled AWS mapping that hands, or may hand, AWS the Zuplo token
    (reference sections 4 and 13).

    AWS cannot check the Zuplo account, so a role trusting the Zuplo issuer trusts every Zuplo
    deployment its trust policy does not pin. An unset ``token`` is the service's to resolve
    with its own ``STS_BROKER_ISSUER``: the CLI does not know that configuration (it never
    reads its own shell's), so the warning names both outcomes.
    """
    warnings = []
    for spec in specs:
        if not spec.enabled or spec.aws is None or spec.aws.token == BROKER:
            continue
        if spec.aws.token == ZUPLO:
            warnings.append(
                f"warning: mapping {spec.name} passes the Zuplo token through to AWS (aws.token "
                "is zuplo): AWS cannot check the Zuplo account, so pin sub in the role's trust "
                "policy, or use token: broker"
            )
        else:
            warnings.append(
                f"warning: mapping {spec.name} leaves aws.token unset: a service running with "
                "STS_BROKER_ISSUER signs a broker token for it; one without passes the Zuplo "
                "token through to AWS, which cannot check the Zuplo account (pin sub in the "
                "role's trust policy). Set token: broker or token: zuplo to decide here"
            )
    return warnings


@mappings.command("list")
@click.option("--json", "as_json", is_flag=True, help="The file format, as a JSON array.")
def mappings_list(as_json: bool) -> None:
    """List the stored mappings (disabled ones too), as stored: an unset token is absent.

    Reads STS_DATABASE_URL."""
    with open_database(read_only=True) as database:
        guard(database.require_current)
        _, specs = guard(lambda: store.load(database))
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


# plan, who-can and history: access review (docs/reference.md section 12).
from sts.mappings.review_commands import register  # noqa: E402

register(mappings)
