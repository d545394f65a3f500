"""``sts revoke add|list|lift`` (docs/reference.md section 11).

Exit codes: 0 done; 1 the operation failed (an unknown or already lifted id, the database, an
``--aws-apply`` call AWS refused); 2 bad input, one line, nothing written.
"""

from __future__ import annotations

import functools
import json
import os
import unicodedata
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import click
import sqlalchemy as sa

from sts import revocations
from sts.db import Database
from sts.db.commands import actor, cli_settings, fail, guard, open_database
from sts.db.models import IssuanceEvent
from sts.identity.principal import ENVIRONMENT_TYPES
from sts.mappings import store
from sts.mappings.spec import MappingSpec
from sts.revocations import SELECTORS, AwsPolicy, RevocationSpec, iso

MAX_SELECTOR_CHARS = 1024
MAX_REASON_CHARS = 1000
#: Where ``--aws-apply`` sends IAM calls instead of AWS (an emulator in tests).
IAM_ENDPOINT_VARIABLE = "STS_IAM_ENDPOINT_URL"


def _printable(value: str) -> bool:
    """No control or format characters (Unicode Cc, Cf): nothing that could forge a line."""
    return not any(unicodedata.category(char) in ("Cc", "Cf") for char in value)


def _selectors(given: Mapping[str, str | None]) -> dict[str, str]:
    chosen: dict[str, str] = {}
    for name in SELECTORS:
        value = given.get(name)
        if value is None:
            continue
        option = "--" + name.replace("_", "-")
        if not value.strip() or len(value) > MAX_SELECTOR_CHARS or not _printable(value):
            fail(f"{option}: must be 1..{MAX_SELECTOR_CHARS} printable characters", 2)
        chosen[name] = value
    if not any(name in chosen for name in revocations.REQUIRED_ANY):
        fail("at least one of --account, --sub, --mapping is required", 2)
    env = chosen.get("environment_type")
    if env is not None and env not in ENVIRONMENT_TYPES:
        fail(f"--environment-type: must be one of {', '.join(ENVIRONMENT_TYPES)}", 2)
    return chosen


def _issued_before(value: str | None, skew: int) -> datetime | None:
    if value is None:
        return None
    now = datetime.now(UTC)
    if value == "now":
        return now
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        fail("--issued-before: must be now or an RFC 3339 time (2026-12-06T10:00:00Z)", 2)
    if moment.tzinfo is None:
        fail("--issued-before: give the time zone (Z or +hh:mm)", 2)
    if moment > now + timedelta(seconds=skew):
        fail("--issued-before: must not be in the future", 2)
    return moment.astimezone(UTC)


def _reason(value: str) -> str:
    if not value.strip() or len(value) > MAX_REASON_CHARS or not _printable(value):
        fail(f"--reason: must be 1..{MAX_REASON_CHARS} printable characters", 2)
    return value.strip()


def still_valid_until(
    database: Database, selectors: Mapping[str, str], mapping: str
) -> datetime | None:
    """The latest expiry among credentials the audit trail shows as issued through
    ``mapping`` to the identities ``selectors`` names, and still valid now."""
    event = IssuanceEvent
    query = sa.select(sa.func.max(event.expires_at)).where(
        event.mapping == mapping, event.outcome == "issued", event.expires_at > datetime.now(UTC)
    )
    for name in ("account", "project", "deployment", "environment_type", "sub"):
        if name in selectors:
            query = query.where(getattr(event, name) == selectors[name])
    with database.engine.connect() as conn:
        latest: datetime | None = conn.execute(query).scalar_one()
    if latest is not None and latest.tzinfo is None:
        latest = latest.replace(tzinfo=UTC)
    return latest


def _iam_client() -> Any:
    """IAM with the operator's credentials (the standard AWS chain), never the service's."""
    import boto3

    endpoint = os.environ.get(IAM_ENDPOINT_VARIABLE) or None
    return boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1")


def role_name(role_arn: str) -> str:
    """``arn:aws:iam::123456789012:role/path/name`` -> ``name``."""
    return role_arn.rsplit("/", 1)[-1]


def _apply(policies: tuple[AwsPolicy, ...], *, attach: bool) -> None:
    """Attach (or delete) the deny documents; the first refusal is exit 1, naming the role."""
    if not policies:
        return
    client = _iam_client()
    for policy in policies:
        try:
            if attach:
                client.put_role_policy(
                    RoleName=role_name(policy.role_arn),
                    PolicyName=policy.policy_name,
                    PolicyDocument=json.dumps(policy.document),
                )
            else:
                client.delete_role_policy(
                    RoleName=role_name(policy.role_arn), PolicyName=policy.policy_name
                )
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
            verb = "attach" if attach else "delete"
            fail(
                f"--aws-apply: could not {verb} {policy.policy_name} on {policy.role_arn}: {code}",
                1,
            )
        done = "attached" if attach else "deleted"
        click.echo(f"aws: {done} {policy.policy_name} on {policy.role_arn}")


@click.group("revoke")
def revoke() -> None:
    """Cut an identity off at once, on every replica (docs/reference.md section 11)."""


@revoke.command("add")
@click.option("--account", default=None, help="Exact Zuplo account.")
@click.option("--project", default=None, help="Exact Zuplo project.")
@click.option("--deployment", default=None, help="Exact deployment name.")
@click.option("--environment-type", default=None, help="production, preview or development.")
@click.option("--sub", default=None, help="Exact token subject.")
@click.option("--mapping", default=None, help="Exact mapping name.")
@click.option(
    "--issued-before", default=None, help="Only tokens issued before: now, or an RFC 3339 time."
)
@click.option("--reason", required=True, help="Why (kept with the revocation).")
@click.option("--actor", "actor_name", default=None, help="Who (else STS_ACTOR, else login).")
@click.option("--aws-apply", is_flag=True, help="Attach the AWS deny policies (iam:PutRolePolicy).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def revoke_add(  # noqa: PLR0917 - one option each
    account: str | None,
    project: str | None,
    deployment: str | None,
    environment_type: str | None,
    sub: str | None,
    mapping: str | None,
    issued_before: str | None,
    reason: str,
    actor_name: str | None,
    aws_apply: bool,
    as_json: bool,
) -> None:
    """Refuse the identities the selectors name (exact values, AND), and print what to do
    about the credentials already issued.

    Reads STS_DATABASE_URL, STS_CLOCK_SKEW_SECONDS, STS_BROKER_ISSUER (which AWS sessions carry
    session tags) and STS_ACTOR; with --aws-apply also STS_IAM_ENDPOINT_URL and the standard AWS
    credential chain."""
    settings = cli_settings()
    chosen = _selectors(
        {
            "account": account,
            "project": project,
            "deployment": deployment,
            "environment_type": environment_type,
            "sub": sub,
            "mapping": mapping,
        }
    )
    before = _issued_before(issued_before, settings.clock_skew_seconds)
    why = _reason(reason)
    who = actor(actor_name)
    broker_mode = settings.broker_issuer is not None
    with open_database() as database:
        _, specs = guard(lambda: store.load(database))
        if mapping is not None and mapping not in {spec.name for spec in specs}:
            fail(f"--mapping: no mapping named {mapping}", 2)
        added = guard(
            lambda: revocations.add(
                database,
                chosen,
                issued_before=before,
                reason=why,
                actor=who,
                mappings=specs,
                broker_mode=broker_mode,
            )
        )
        covered = [spec for spec in specs if revocations.can_cover(chosen, spec)]
        valid = {
            spec.name: guard(functools.partial(still_valid_until, database, chosen, spec.name))
            for spec in covered
            if spec.aws is None
        }
    _report(added, covered, valid, as_json=as_json)
    if aws_apply:
        _apply(added.aws_policies, attach=True)


def _report(
    added: RevocationSpec,
    covered: list[MappingSpec],
    valid: dict[str, datetime | None],
    *,
    as_json: bool,
) -> None:
    if as_json:
        click.echo(
            json.dumps(
                {
                    "id": added.id,
                    "covers": [spec.name for spec in covered],
                    "aws_policies": [
                        {
                            "role_arn": p.role_arn,
                            "policy_name": p.policy_name,
                            "document": p.document,
                            "mapping": p.mapping,
                            "matched_by": p.matched_by,
                        }
                        for p in added.aws_policies
                    ],
                    "still_valid_until": {
                        name: None if until is None else iso(until) for name, until in valid.items()
                    },
                },
                indent=2,
            )
        )
        return
    click.echo(f"revoked: {added.id}")
    shown = " ".join(f"{name}={value}" for name, value in added.selectors)
    if added.issued_before is not None:
        shown += f" (tokens issued before {iso(added.issued_before)})"
    click.echo(f"refused within 5 s on every replica: {shown}")
    click.echo(
        "covers mappings: " + (", ".join(spec.name for spec in covered) or "none enabled today")
    )
    for policy in added.aws_policies:
        scope = (
            "EVERY session of this role issued before now (the mapping sends no session tags "
            "and the revocation names no deployment)"
            if policy.matched_by == "issue time"
            else f"the covered sessions issued before now, matched by {policy.matched_by}"
        )
        click.echo(
            f"aws {policy.mapping}: attach to {policy.role_arn} as inline policy "
            f"{policy.policy_name} (or pass --aws-apply); it denies {scope}:"
        )
        click.echo(json.dumps(policy.document, indent=2))
    for name, until in valid.items():
        if until is None:
            click.echo(f"{name}: no credential the audit trail shows is still valid")
        else:
            click.echo(
                f"{name}: credentials already issued stay valid until {iso(until)} "
                "(they cannot be revoked one by one)"
            )


@revoke.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def revoke_list(as_json: bool) -> None:
    """The active revocations.

    Reads STS_DATABASE_URL."""
    with open_database(read_only=True) as database:
        found = guard(lambda: revocations.active(database))
    if as_json:
        click.echo(json.dumps([spec.to_dict() for spec in found], indent=2))
        return
    if not found:
        click.echo("no active revocations")
        return
    for spec in found:
        doc = spec.to_dict()
        selectors = " ".join(f"{name}={doc[name]}" for name in SELECTORS if doc[name] is not None)
        before = f" issued_before={doc['issued_before']}" if doc["issued_before"] else ""
        click.echo(
            f"{spec.id}  {selectors}{before}  by {spec.actor} at {doc['created_at']}: {spec.reason}"
        )


@revoke.command("lift")
@click.argument("revocation_id", type=click.IntRange(1))
@click.option("--actor", "actor_name", default=None, help="Who (else STS_ACTOR, else login).")
@click.option("--aws-apply", is_flag=True, help="Delete its AWS deny policies.")
def revoke_lift(revocation_id: int, actor_name: str | None, aws_apply: bool) -> None:
    """End one revocation (kept, with its actor and reason).

    Reads STS_DATABASE_URL and STS_ACTOR; with --aws-apply also STS_IAM_ENDPOINT_URL and the
    standard AWS credential chain."""
    who = actor(actor_name)
    with open_database() as database:
        lifted = guard(lambda: revocations.lift(database, revocation_id, who))
    if lifted is None:
        fail(f"no active revocation {revocation_id}", 1)
    click.echo(f"lifted: {lifted.id} (served again within 5 s on every replica)")
    if aws_apply:
        _apply(lifted.aws_policies, attach=False)
