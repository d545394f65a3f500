"""Access review (docs/reference.md section 12): what a mapping file would change for the callers
the audit trail records (``sts mappings plan``), who can obtain a target (``who-can``), and the
stored history of mapping changes (``history``). Nothing here writes.

**What ``plan`` replays.** A plan selects with the service's own function,
:meth:`MappingIndex.select`, once over the stored mappings and once over the stored mappings with
the file applied as ``sts mappings apply [--prune]`` would apply it (the same dry-run diff,
:func:`sts.mappings.store.apply_specs`), so what it prints is what ``POST /token`` will do. Only
the request is left to decide. An audit row records the identity and the mapping the service
chose, never the request's ``audience`` or ``resource``: whether the caller named its mapping is
not recorded. Each identity is therefore replayed as

1. a request naming nothing: what a gateway sending only its token gets, the most specific
   match (docs/reference.md section 4); and
2. for each mapping the trail shows the identity obtaining that request 1 does not give it over
   the stored mappings, a request naming that mapping (``audience`` = its name). Such a caller
   named it (or the mappings have changed since); the name, not the target, is replayed because
   the name is what the row records as chosen. A request naming a mapping gets it or nothing.

A request's result is the mapping chosen and its target (or nothing, with the refusal's error
code). Two results differ when the mapping or its target differs; two refusals never differ (the
caller is refused either way), and a mapping whose other fields change (scopes, a session policy,
the lifetime) is the same result: ``apply --dry-run`` shows those.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sts.errors import OAuthError
from sts.identity.principal import Principal
from sts.mappings import store
from sts.mappings.document import (
    GUID_PATTERN,
    NAME_PATTERN,
    ROLE_ARN_PATTERN,
    SERVICE_ACCOUNT_PATTERN,
    WIF_PROVIDER_PATTERN,
    MappingFileError,
    spec_from_dict,
)
from sts.mappings.index import MappingIndex
from sts.mappings.models import MappingChange
from sts.mappings.spec import MappingSpec

#: Recorded nowhere: a plan is a dry run, which writes no history.
_PLAN_ACTOR = "plan"


def iso(moment: datetime) -> str:
    """RFC 3339 UTC with ``Z``, to the second: how the review commands print a time."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def printable(value: str) -> str:
    """``value`` with control characters and other line breaks escaped: claims come from tokens,
    and no caller may add a line of its own to what an operator reads."""
    if value.isprintable():
        return value
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in value)


# -- plan -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class Identity:
    """Who a plan replays: what selection depends on (neither ``sub`` nor the issuer)."""

    account: str
    project: str
    deployment: str
    environment_type: str

    def __str__(self) -> str:
        return printable(f"{self.account}/{self.project}/{self.deployment}/{self.environment_type}")

    def principal(self) -> Principal:
        # Selection reads the four claims only; the rest of a Principal does not take part.
        return Principal(
            issuer="",
            sub="",
            account=self.account,
            project=self.project,
            deployment=self.deployment,
            environment_type=self.environment_type,
            audiences=frozenset(),
        )

    def to_dict(self) -> dict[str, str]:
        return {
            "account": self.account,
            "project": self.project,
            "deployment": self.deployment,
            "environment_type": self.environment_type,
        }


@dataclass(frozen=True, slots=True)
class Outcome:
    """What selection gives one request: a mapping and its target, or a refusal's error code."""

    mapping: str | None
    target: str | None
    error: str | None

    @classmethod
    def of(cls, index: MappingIndex, principal: Principal, audience: str | None) -> Outcome:
        try:
            spec = index.select(principal, audience, None)
        except OAuthError as exc:
            return cls(None, None, exc.error)
        return cls(spec.name, spec.targets[0], None)

    def same(self, other: Outcome) -> bool:
        """Whether a caller would see no difference: the same mapping with the same target, or
        a refusal both times (whatever its code)."""
        return self.mapping == other.mapping and self.target == other.target

    def to_dict(self) -> dict[str, str | None]:
        return {"mapping": self.mapping, "target": self.target, "error": self.error}


ChangeKind = Literal["gains", "loses", "moves"]


@dataclass(frozen=True, slots=True)
class Change:
    """One replayed request whose outcome differs; ``audience`` is the mapping it names."""

    identity: Identity
    audience: str | None
    before: Outcome
    after: Outcome

    @property
    def kind(self) -> ChangeKind:
        if self.before.mapping is None:
            return "gains"
        return "loses" if self.after.mapping is None else "moves"

    def line(self) -> str:
        """``+ IDENTITY gains NAME (TARGET)``, ``- IDENTITY loses NAME (TARGET)``, ``~ IDENTITY
        moves NAME -> NAME`` (the targets added when the name stays and the target changes)."""
        who, before, after = self.identity, self.before, self.after
        if self.kind == "gains":
            return f"+ {who} gains {after.mapping} ({after.target})"
        if self.kind == "loses":
            return f"- {who} loses {before.mapping} ({before.target})"
        line = f"~ {who} moves {before.mapping} -> {after.mapping}"
        if before.mapping == after.mapping:
            line += f" ({before.target} -> {after.target})"
        return line

    def to_dict(self) -> dict[str, Any]:
        return {
            "line": self.line(),
            "change": self.kind,
            "identity": self.identity.to_dict(),
            "audience": self.audience,
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
        }


@dataclass(frozen=True)
class Plan:
    """The outcome of ``sts mappings plan``: every change, in identity order."""

    since: datetime
    identities: int
    changes: tuple[Change, ...]

    def counts(self) -> dict[str, int]:
        kinds = [change.kind for change in self.changes]
        return {
            "identities": self.identities,
            "changed": len({change.identity for change in self.changes}),
            "gains": kinds.count("gains"),
            "loses": kinds.count("loses"),
            "moves": kinds.count("moves"),
        }

    @property
    def nothing_to_replay(self) -> str | None:
        """The line for an empty audit trail, or None."""
        if self.identities:
            return None
        return f"nothing to replay: the audit trail records no caller since {iso(self.since)}"

    def render(self) -> str:
        if self.nothing_to_replay is not None:
            return self.nothing_to_replay
        counts = self.counts()
        summary = (
            f"{_count(counts['identities'], 'identity', 'identities')} replayed since "
            f"{iso(self.since)}; {counts['changed']} change: {_count(counts['gains'], 'gain')}, "
            f"{_count(counts['loses'], 'loss', 'losses')}, {_count(counts['moves'], 'move')}; "
            "nothing written"
        )
        return "\n".join([*(change.line() for change in self.changes), summary])

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "since": iso(self.since),
            "identities": self.identities,
            "changes": [change.to_dict() for change in self.changes],
            "counts": self.counts(),
        }
        if self.nothing_to_replay is not None:
            doc["note"] = self.nothing_to_replay
        return doc


def _count(number: int, one: str, many: str | None = None) -> str:
    return f"{number} {one if number == 1 else many or one + 's'}"


def planned_specs(
    conn: Connection, specs: Sequence[MappingSpec], *, prune: bool
) -> tuple[list[MappingSpec], list[MappingSpec]]:
    """What a plan selects from: the stored mappings, and the stored mappings with ``specs``
    applied as ``sts mappings apply [--prune]`` would apply them, each side only for the accounts
    the file changes; read in ``conn``'s one transaction.

    Both come from ``apply``'s own dry run (:func:`sts.mappings.store.apply_specs`). A mapping it
    finds unchanged is the file's spec on both sides (equal to the stored one: that is what
    unchanged means), so only the rows that change, and those the file leaves alone without
    ``prune``, are read back into specs. Selection never looks beyond the caller's account
    (:meth:`MappingIndex.select`: a mapping of another account never binds, by name, target or
    specificity), so the callers of an account the file does not change get the same result on
    both sides; leaving those accounts out of both makes them refused on both sides, which is
    no change either, and keeps the two indexes the size of the change (docs/benchmarks.md,
    "Planning a mapping change").
    """
    diff = store.apply_specs(
        conn, specs, prune=prune, dry_run=True, actor=_PLAN_ACTOR, source=_PLAN_ACTOR
    )
    updated_before = [update.before for update in diff.updated]
    updated_after = [update.after for update in diff.updated]
    changed = [*updated_before, *updated_after, *diff.deleted, *diff.created]
    accounts = {spec.account for spec in changed}
    unchanged = set(diff.unchanged)
    same = [spec for spec in specs if spec.name in unchanged and spec.account in accounts]
    same.extend(_stored_specs(conn, set(diff.kept), accounts))
    return [*same, *updated_before, *diff.deleted], [*same, *updated_after, *diff.created]


def _stored_specs(conn: Connection, names: set[str], accounts: set[str]) -> list[MappingSpec]:
    """The stored mappings called ``names`` of ``accounts``, read as the store reads them."""
    if not names or not accounts:
        return []
    rows = conn.execute(sa.select(*store.SPEC_COLUMNS).execution_options(yield_per=1000))
    return [
        store.spec_from_row(row) for row in rows if row.account in accounts and row.name in names
    ]


def replay(
    before: MappingIndex,
    after: MappingIndex,
    callers: Iterable[tuple[Identity, str]],
    *,
    since: datetime,
) -> Plan:
    """Replay every identity of ``callers`` (with a mapping the trail shows it obtaining) over
    ``before`` and ``after`` (module docstring: what is replayed)."""
    recorded: dict[Identity, set[str]] = {}
    for identity, mapping in callers:
        recorded.setdefault(identity, set()).add(mapping)
    changes: list[Change] = []
    for identity in sorted(recorded):
        principal = identity.principal()
        unnamed = Change(
            identity,
            None,
            Outcome.of(before, principal, None),
            Outcome.of(after, principal, None),
        )
        lines = set()
        if not unnamed.before.same(unnamed.after):
            changes.append(unnamed)
            lines.add(unnamed.line())
        for name in sorted(recorded[identity]):
            if name == unnamed.before.mapping:
                continue  # the unnamed request gets it: replayed above
            named = Change(
                identity,
                name,
                Outcome.of(before, principal, name),
                Outcome.of(after, principal, name),
            )
            if not named.before.same(named.after) and named.line() not in lines:
                changes.append(named)
                lines.add(named.line())
    return Plan(since=since, identities=len(recorded), changes=tuple(changes))


# -- who-can ----------------------------------------------------------------------------------

TargetKind = Literal[
    "aws_role_arn", "gcp_service_account", "gcp_provider", "azure_client_id", "mapping"
]

#: How ``who-can`` names each kind.
KIND_NAMES: dict[TargetKind, str] = {
    "aws_role_arn": "AWS role ARN",
    "gcp_service_account": "GCP service account",
    "gcp_provider": "GCP workload identity provider",
    "azure_client_id": "Azure client_id",
    "mapping": "mapping name",
}


def target_kinds(target: str) -> tuple[TargetKind, ...]:
    """What ``target`` can be, by the same patterns a mapping file is checked with; empty when
    it is none of them. A lower-case GUID is also a valid mapping name: both are looked up."""
    kinds: list[TargetKind] = []
    if ROLE_ARN_PATTERN.fullmatch(target):
        kinds.append("aws_role_arn")
    if SERVICE_ACCOUNT_PATTERN.fullmatch(target):
        kinds.append("gcp_service_account")
    if WIF_PROVIDER_PATTERN.fullmatch(target):
        kinds.append("gcp_provider")
    # Entra shows GUIDs in lower case; the file takes either and stores lower case.
    if GUID_PATTERN.fullmatch(target.lower()):
        kinds.append("azure_client_id")
    if NAME_PATTERN.fullmatch(target):
        kinds.append("mapping")
    return tuple(kinds)


def names_target(spec: MappingSpec, target: str, kinds: Iterable[TargetKind]) -> bool:
    """Whether ``spec`` (enabled or not) grants ``target`` of one of ``kinds``."""
    gcp = spec.gcp
    held: dict[TargetKind, str | None] = {
        "aws_role_arn": spec.aws.role_arn if spec.aws is not None else None,
        "gcp_service_account": gcp.service_account if gcp is not None else None,
        "gcp_provider": gcp.workload_identity_provider if gcp is not None else None,
        "azure_client_id": spec.azure.client_id if spec.azure is not None else None,
        "mapping": spec.name,
    }
    return any(held[kind] == normal_target(target, kind) for kind in kinds)


def normal_target(target: str, kind: TargetKind) -> str:
    """``target`` as a mapping stores it: a client_id in lower case, anything else as given."""
    return target.lower() if kind == "azure_client_id" else target


@dataclass(frozen=True)
class Grants:
    """The mappings that name a target: ``enabled`` grant it, ``disabled`` would."""

    target: str
    kinds: tuple[TargetKind, ...]
    enabled: tuple[MappingSpec, ...]
    disabled: tuple[MappingSpec, ...]

    @property
    def audit_targets(self) -> list[str]:
        """The values of the audit trail's ``target`` column that mean this target (a mapping
        name is no target; a client_id is recorded in lower case)."""
        targets = {normal_target(self.target, kind) for kind in self.kinds if kind != "mapping"}
        return sorted(targets)

    @property
    def audit_mappings(self) -> list[str]:
        """The mappings whose calls obtain the target although the trail records another one: a
        mapping named by TARGET, and mappings with a service account behind a named provider
        (their rows record the service account)."""
        names = {self.target} if "mapping" in self.kinds else set()
        if "gcp_provider" in self.kinds:
            names.update(
                spec.name for spec in (*self.enabled, *self.disabled) if spec.provider == "gcp"
            )
        return sorted(names)


def grants(specs: Iterable[MappingSpec], target: str, kinds: tuple[TargetKind, ...]) -> Grants:
    named = [spec for spec in specs if names_target(spec, target, kinds)]
    named.sort(key=lambda spec: spec.name)
    return Grants(
        target=target,
        kinds=kinds,
        enabled=tuple(spec for spec in named if spec.enabled),
        disabled=tuple(spec for spec in named if not spec.enabled),
    )


# -- history ----------------------------------------------------------------------------------

#: ``mapping_changes.action`` as the history prints it.
ACTIONS = {"create": "created", "update": "updated", "delete": "deleted"}


@dataclass(frozen=True)
class HistoryEntry:
    """One stored change: who made it, from where, and the fields it changed."""

    changed_at: datetime
    actor: str
    source: str
    name: str
    action: str
    revision: int
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    #: The fields an update changed, as ``apply`` computes them (none for a created or deleted
    #: mapping: its whole document is the change).
    fields: tuple[store.FieldChange, ...]
    #: ``<provider> <target>`` of the mapping after the change (before it, for a deletion).
    target: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "changed_at": iso(self.changed_at),
            "actor": self.actor,
            "source": self.source,
            "name": self.name,
            "action": self.action,
            "revision": self.revision,
            "fields": [
                {"path": change.path, "before": change.before, "after": change.after}
                for change in self.fields
            ],
            "before": self.before,
            "after": self.after,
        }


def history(
    conn: Connection, *, name: str | None = None, since: datetime | None = None
) -> list[HistoryEntry]:
    """The stored changes, newest first (the order they were made in, for one time)."""
    statement = sa.select(*MappingChange.__table__.c)
    if name is not None:
        statement = statement.where(MappingChange.name == name)
    if since is not None:
        statement = statement.where(MappingChange.changed_at >= since)
    statement = statement.order_by(MappingChange.changed_at.desc(), MappingChange.id.desc())
    entries = []
    for row in conn.execute(statement):
        before, after = _spec(row.before), _spec(row.after)
        fields: tuple[store.FieldChange, ...] = ()
        if before is not None and after is not None:
            fields = store.field_changes(before, after)
        elif row.before is not None and row.after is not None:
            fields = _document_changes(row.before, row.after)
        shown = after or before
        entries.append(
            HistoryEntry(
                changed_at=row.changed_at,
                actor=row.actor,
                source=row.source,
                name=row.name,
                action=ACTIONS.get(row.action, row.action),
                revision=row.revision,
                before=row.before,
                after=row.after,
                fields=fields,
                target=f"{shown.provider} {shown.targets[0]}" if shown is not None else None,
            )
        )
    return entries


def _spec(document: dict[str, Any] | None) -> MappingSpec | None:
    """A stored document as a mapping; None when there is none, or when it no longer passes
    today's checks (written under older rules)."""
    if document is None:
        return None
    try:
        return spec_from_dict(document, "mapping_changes")
    except MappingFileError:
        return None


def _document_changes(
    before: dict[str, Any], after: dict[str, Any]
) -> tuple[store.FieldChange, ...]:
    """The top-level keys two documents differ in, for documents :func:`_spec` cannot read."""
    keys = list(before) + [key for key in after if key not in before]
    return tuple(
        store.FieldChange(key, before.get(key), after.get(key))
        for key in keys
        if before.get(key) != after.get(key)
    )
