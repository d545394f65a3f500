"""``sts mappings plan``, ``who-can`` and ``history`` (docs/reference.md section 12): access
review over the stored mappings and the audit trail. Nothing is written.

Exit codes as for the other commands: 0 success (an empty audit trail and a target nothing
grants included); 1 the operation failed (database unreachable or not migrated); 2 bad usage: a
mapping file with mistakes (exactly as ``apply`` reports them), a window that is neither a
duration nor an RFC 3339 time, a TARGET of no known kind, one line naming what is wrong.

The commands are registered on the ``mappings`` group by :mod:`sts.mappings.commands`; this
module imports that one only inside the commands, so either can be imported first.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

import click

from sts.audit import PENDING, AuditRecorder, Holder
from sts.audit_commands import parse_since
from sts.db.commands import fail, guard, open_database
from sts.mappings import review, store
from sts.mappings.document import NAME_PATTERN
from sts.mappings.index import MappingIndex
from sts.mappings.review import iso, printable
from sts.mappings.spec import MappingSpec
from sts.mappings.store import show_value

_WINDOW_HELP = "a duration back from now (30m, 24h, 7d) or an RFC 3339 time"
_JSON_HELP = "Print one JSON document instead of text."


def _window(option: str, value: str, now: datetime) -> datetime:
    """``--since``'s time, or exit 2 with one line."""
    moment = parse_since(value, now)
    if moment is None:
        fail(f"{option}: expected {_WINDOW_HELP}", 2)
    return moment


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns aligned on their widest cell; the last column is not padded."""
    lines = [header, *rows]
    widths = [max(len(line[column]) for line in lines) for column in range(len(header) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(w) for cell, w in zip(line[:-1], widths, strict=True)), line[-1]])
        for line in lines
    )


# -- plan -------------------------------------------------------------------------------------


@click.command("plan")
@click.argument("file", metavar="FILE")
@click.option("--prune", is_flag=True, help="Plan apply --prune: delete what FILE does not name.")
@click.option(
    "--since",
    default="30d",
    show_default=True,
    help=f"Replay the callers the audit trail records from then on: {_WINDOW_HELP}.",
)
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
def plan(file: str, prune: bool, since: str, as_json: bool) -> None:
    """What applying FILE (YAML or JSON; - for stdin) would change for real callers.

    Every identity the audit trail records since --since (issued, refused or pending) is
    selected as POST /token selects, over the stored mappings and over them with FILE applied
    as `apply [--prune]` would; one line for each whose result differs (+ gains, - loses,
    ~ moves), then a count line. Nothing is written. A request that names no mapping is
    replayed for every identity, and a request naming each other mapping the trail shows it
    obtaining (docs/reference.md section 12).

    Reads STS_DATABASE_URL."""
    from sts.mappings.commands import _read, parse_or_exit

    start = _window("--since", since, datetime.now(UTC))
    text, path = _read(file)
    specs = parse_or_exit(text, path)
    with open_database(read_only=True) as database:
        guard(database.require_current)
        callers = guard(lambda: AuditRecorder(database).callers(since=start))
        before: list[MappingSpec] = []
        after: list[MappingSpec] = []
        if callers:

            def read() -> tuple[list[MappingSpec], list[MappingSpec]]:
                with database.snapshot() as conn:
                    return review.planned_specs(conn, specs, prune=prune)

            before, after = guard(read)
    result = review.replay(
        MappingIndex(before),
        MappingIndex(after),
        (
            (
                review.Identity(
                    caller.account, caller.project, caller.deployment, caller.environment_type
                ),
                caller.mapping,
            )
            for caller in callers
        ),
        since=start,
    )
    if as_json:
        click.echo(json.dumps({"file": path, "prune": prune, **result.to_dict()}, indent=2))
    else:
        click.echo(result.render())


# -- who-can ----------------------------------------------------------------------------------


@click.command("who-can")
@click.argument("target", metavar="TARGET")
@click.option(
    "--since",
    default="30d",
    show_default=True,
    help=f"Identities that obtained it from then on: {_WINDOW_HELP}.",
)
@click.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
def who_can(target: str, since: str, as_json: bool) -> None:
    """Which enabled mappings grant TARGET, and who obtained it.

    TARGET is an AWS role ARN, a GCP service account or workload identity provider name, an
    Azure client_id, or a mapping name. Prints the enabled mappings that grant it, with their
    selectors, and the identities (account project deployment environment_type sub) the audit
    trail shows obtaining it since --since: issued, or pending (may have been issued).

    Reads STS_DATABASE_URL."""
    from sts.mappings.commands import render_table

    kinds = review.target_kinds(target)
    if not kinds:
        fail(
            "TARGET: not an AWS role ARN, a GCP service account or provider name, an Azure "
            "client_id or a mapping name",
            2,
        )
    start = _window("--since", since, datetime.now(UTC))
    with open_database(read_only=True) as database:
        guard(database.require_current)
        _, specs = guard(lambda: store.load(database))
        granted = review.grants(specs, target, kinds)
        holders = guard(
            lambda: AuditRecorder(database).holders(
                since=start, targets=granted.audit_targets, mappings=granted.audit_mappings
            )
        )
    if as_json:
        doc = {
            "target": target,
            "kinds": list(kinds),
            "since": iso(start),
            "mappings": [spec.to_document() for spec in granted.enabled],
            "disabled": [spec.name for spec in granted.disabled],
            "identities": [_holder_dict(holder) for holder in holders],
        }
        click.echo(json.dumps(doc, indent=2))
        return
    what = " or ".join(review.KIND_NAMES[kind] for kind in kinds)
    click.echo(f"{target} ({what})")
    if granted.enabled:
        click.echo(f"granted by {_count(len(granted.enabled), 'enabled mapping')}:")
        click.echo(render_table(list(granted.enabled)))
    else:
        click.echo("no enabled mapping grants it")
    if granted.disabled:
        names = ", ".join(spec.name for spec in granted.disabled)
        click.echo(f"disabled mappings that name it (they grant nothing): {names}")
    identities = {holder[:5] for holder in holders}
    if holders:
        click.echo(
            f"obtained by {_count(len(identities), 'identity', 'identities')} since {iso(start)}:"
        )
        click.echo(_holders_table(holders))
    else:
        click.echo(f"the audit trail shows no identity obtaining it since {iso(start)}")


def _count(number: int, one: str, many: str | None = None) -> str:
    return f"{number} {one if number == 1 else many or one + 's'}"


def _holder_dict(holder: Holder) -> dict[str, str]:
    doc = holder._asdict()
    doc["last"] = iso(holder.last)
    return doc


def _holders_table(holders: Sequence[Holder]) -> str:
    header = (
        "ACCOUNT",
        "PROJECT",
        "DEPLOYMENT",
        "ENVIRONMENT",
        "SUB",
        "MAPPING",
        "LAST",
        "OUTCOME",
    )
    rows = [
        (
            *(printable(value) for value in holder[:6]),
            iso(holder.last),
            "pending (may have been issued)" if holder.outcome == PENDING else holder.outcome,
        )
        for holder in holders
    ]
    return _table(header, rows)


# -- history ----------------------------------------------------------------------------------


@click.command("history")
@click.argument("name", metavar="[NAME]", required=False)
@click.option("--since", default=None, help=f"Only changes from then on: {_WINDOW_HELP}.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of objects.")
def history(name: str | None, since: str | None, as_json: bool) -> None:
    """The stored mapping changes (of NAME only, if given), newest first.

    Each: time, actor, source, name, created/updated/deleted, and the fields changed (a created
    or deleted mapping: its target; --json: both whole documents).

    Reads STS_DATABASE_URL."""
    if name is not None and not NAME_PATTERN.fullmatch(name):
        fail("NAME: not a mapping name ([a-z0-9][a-z0-9-]{0,62})", 2)
    start = _window("--since", since, datetime.now(UTC)) if since is not None else None

    with open_database(read_only=True) as database:
        guard(database.require_current)

        def read() -> list[review.HistoryEntry]:
            with database.engine.connect() as conn:
                return review.history(conn, name=name, since=start)

        entries = guard(read)
    if as_json:
        click.echo(json.dumps([entry.to_dict() for entry in entries], indent=2))
        return
    if not entries:
        about = f" of {name}" if name is not None else ""
        after = f" since {iso(start)}" if start is not None else ""
        click.echo(f"no mapping changes{about} recorded{after}")
        return
    header = ("TIME", "ACTOR", "SOURCE", "NAME", "CHANGE", "FIELDS")
    rows = [
        (
            iso(entry.changed_at),
            printable(entry.actor),
            printable(entry.source),
            entry.name,
            entry.action,
            _fields_text(entry),
        )
        for entry in entries
    ]
    click.echo(_table(header, rows))


def _fields_text(entry: review.HistoryEntry) -> str:
    """An update's fields as ``apply`` prints them; a created or deleted mapping's target."""
    if entry.fields:
        return printable(
            ", ".join(
                f"{change.path} {show_value(change.before)} -> {show_value(change.after)}"
                for change in entry.fields
            )
        )
    return printable(entry.target) if entry.target is not None else "-"


def register(group: click.Group) -> None:
    """Add the three commands to ``sts mappings``."""
    for command in (plan, who_can, history):
        group.add_command(command)
