"""``sts audit``: read and prune the issuance events (:mod:`sts.audit`), docs/reference.md
section 12.

Exit codes as for the other commands: 0 success; 1 the operation failed (database unreachable or
not migrated); 2 bad usage, a bad option value or bad configuration, as one line naming it, with
nothing read or written.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import click

from sts.audit import DEFAULT_LIMIT, PENDING, AuditRecorder, IssuanceRecord
from sts.config import ConfigError, Settings
from sts.db.commands import fail, guard, open_database

_DURATION = re.compile(r"(\d{1,6})([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_DURATION_HELP = "a duration such as 30m, 24h, 7d"


def parse_duration(value: str) -> timedelta | None:
    """``30m``, ``24h``, ``7d``, ``2w``, ``90s`` as a positive timedelta; None if not one."""
    match = _DURATION.fullmatch(value.strip())
    if match is None or int(match.group(1)) == 0:
        return None
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def parse_since(value: str, now: datetime) -> datetime | None:
    """A duration back from ``now``, or an RFC 3339 / ISO-8601 timestamp (no zone: UTC); None
    if neither. Used for ``--since`` and ``--until``."""
    duration = parse_duration(value)
    if duration is not None:
        try:
            return now - duration
        except OverflowError:
            return None
    try:
        # RFC 3339 allows a lower-case "t" and "z"; fromisoformat takes only upper case.
        moment = datetime.fromisoformat(value.strip().upper())
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _iso(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


#: What the table shows as the expiry of a ``pending`` row.
MAY_HAVE_BEEN_ISSUED = "may have been issued"


def render_table(records: list[IssuanceRecord]) -> str:
    """One line per event, newest first; the credential as the first 16 hex digits of its hash.
    A ``pending`` row's expiry reads "may have been issued": its call's result is unknown."""
    header = (
        "TIME",
        "MAPPING",
        "OUTCOME",
        "IDENTITY",
        "SUB",
        "EXPIRES",
        "ACCESS_KEY",
        "SHA256",
        "TARGET",
    )
    rows = [header] + [
        (
            _iso(record.created_at),
            record.mapping,
            record.outcome,
            f"{record.account}/{record.project}/{record.deployment} ({record.environment_type})",
            record.sub,
            MAY_HAVE_BEEN_ISSUED if record.outcome == PENDING else _iso(record.expires_at),
            record.access_key_id or "-",
            (record.credential_sha256 or "-")[:16],
            f"{record.provider} {record.target}",
        )
        for record in records
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header) - 1)]
    return "\n".join(
        "  ".join(
            [*(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)), row[-1]]
        )
        for row in rows
    )


@click.group("audit")
def audit() -> None:
    """Issuance events: every credential issued upstream and every upstream refusal."""


@audit.command("list")
@click.option("--account", default=None, help="Only this Zuplo account.")
@click.option("--project", default=None, help="Only this project.")
@click.option("--deployment", default=None, help="Only this deployment.")
@click.option("--sub", default=None, help="Only this subject (the token's sub).")
@click.option("--mapping", default=None, help="Only events of this mapping.")
@click.option(
    "--outcome",
    default=None,
    help="Only this outcome: pending, issued, or an error code (with or without :provider code).",
)
@click.option("--since", default=None, help="Only calls from then on: 30m, 24h, 7d or RFC 3339.")
@click.option("--until", default=None, help="Only calls before then: 30m, 24h, 7d or RFC 3339.")
@click.option(
    "--valid",
    is_flag=True,
    help="Only credentials not yet expired, and pending calls (they may have been issued).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of objects.")
@click.option(
    "--limit",
    default=DEFAULT_LIMIT,
    show_default=True,
    type=click.IntRange(1, 1_000_000),
    help="At most this many events (newest first).",
)
def audit_list(  # click passes every option by name
    *,
    account: str | None,
    project: str | None,
    deployment: str | None,
    sub: str | None,
    mapping: str | None,
    outcome: str | None,
    since: str | None,
    until: str | None,
    valid: bool,
    as_json: bool,
    limit: int,
) -> None:
    """List issuance events, newest first; the filters combine.

    Reads STS_DATABASE_URL."""
    now = datetime.now(UTC)
    bounds: dict[str, datetime | None] = {}
    for name, value in (("since", since), ("until", until)):
        moment = None
        if value is not None:
            moment = parse_since(value, now)
            if moment is None:
                fail(f"--{name}: expected {_DURATION_HELP}, or an RFC 3339 timestamp", 2)
        bounds[name] = moment
    with open_database(read_only=True) as database:
        guard(database.require_current)
        recorder = AuditRecorder(database)
        records = guard(
            lambda: recorder.query(
                account=account,
                project=project,
                deployment=deployment,
                sub=sub,
                mapping=mapping,
                outcome=outcome,
                since=bounds["since"],
                until=bounds["until"],
                valid_at=now if valid else None,
                limit=limit,
            )
        )
    if as_json:
        click.echo(json.dumps([record.to_dict() for record in records], indent=2))
    elif not records:
        click.echo("no issuance events")
    else:
        click.echo(render_table(records))


@audit.command("prune")
@click.option(
    "--older-than",
    "older_than",
    default=None,
    help="Delete events older than this (30m, 24h, 7d); default STS_AUDIT_RETENTION_DAYS.",
)
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
def audit_prune(older_than: str | None, dry_run: bool) -> None:
    """Delete issuance events past the retention period (pending ones included).

    Reads STS_DATABASE_URL and STS_AUDIT_RETENTION_DAYS (the default of --older-than)."""
    if older_than is not None:
        age = parse_duration(older_than)
        if age is None:
            fail(f"--older-than: expected {_DURATION_HELP}", 2)
    else:
        try:
            age = timedelta(days=Settings.from_env().audit_retention_days)
        except ConfigError as exc:
            fail(str(exc), 2)
    try:
        cutoff = datetime.now(UTC) - age
    except OverflowError:
        fail("--older-than: too far back", 2)
    with open_database() as database:
        guard(database.require_current)
        recorder = AuditRecorder(database)
        count = guard(lambda: recorder.prune(cutoff, dry_run=dry_run))
    if dry_run:
        click.echo(f"would delete {count} issuance event(s) older than {_iso(cutoff)}")
        click.echo("(dry run: nothing deleted)")
    else:
        click.echo(f"deleted {count} issuance event(s) older than {_iso(cutoff)}")
