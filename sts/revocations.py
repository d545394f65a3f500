"""Revocation: cutting off an identity (docs/reference.md section 11).

A revocation names identities by exact selectors (``account project deployment
environment_type sub mapping``, combined with AND; at least one of ``account``, ``sub``,
``mapping``), optionally only tokens issued before a time. While it is active every replica
refuses what it covers (400 ``unauthorized_client`` "identity revoked"), on every path: the check
is part of :meth:`sts.exchange.Exchanger.prepare`, a dictionary look-up in a
:class:`RevocationIndex` that the mapping refresher reloads when the stored revision moves.

What was issued before cannot be called back, so ``sts revoke add`` also prints, for every
enabled AWS mapping the revocation can cover, an IAM policy that denies the covered sessions
issued before it (``aws:TokenIssueTime``), matched by session tags when the mapping sends them,
else by the role session name when the revocation names a deployment, else by issue time alone
(every session of the role). The documents are stored with the revocation, and every replica
holds each cached credential against them (:meth:`RevocationIndex.denies`, the same condition
logic as IAM's: :mod:`sts.iam_policy`): credentials a printed policy denies are never served
again, so other callers of that role get fresh ones.
"""

from __future__ import annotations

import fnmatch
import logging
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from sts.db import Database
from sts.db.models import Revocation, RevocationRevision, utcnow
from sts.iam_policy import Context, denied
from sts.identity.principal import Principal
from sts.mappings.spec import BROKER, MappingSpec
from sts.providers.aws import session_name

log = logging.getLogger(__name__)

SELECTORS = ("account", "project", "deployment", "environment_type", "sub", "mapping")
PRINCIPAL_SELECTORS = SELECTORS[:-1]
#: At least one of these: a revocation that names none would cut off everyone.
REQUIRED_ANY = ("account", "sub", "mapping")
#: The AWS session tags of a broker token (docs/reference.md section 8), by selector.
TAG_KEYS = {
    "account": "zuplo-account",
    "project": "zuplo-project",
    "deployment": "zuplo-deployment",
    "environment_type": "zuplo-environment-type",
    "mapping": "zuplo-mapping",
}
POLICY_PREFIX = "zuplo-sts-revocation-"
#: How long a lifted revocation still guards the caches: no credential outlives this (AWS's
#: longest session), so none issued before it can be served after it is lifted.
GUARD_SECONDS = 12 * 3600
REVOKED = "identity revoked"


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class AwsPolicy:
    """One printed deny document: attached to ``role_arn`` as inline policy ``policy_name``."""

    mapping: str
    role_arn: str
    policy_name: str
    document: dict[str, Any]
    matched_by: str  # "session tags", "session name" or "issue time"

    def to_dict(self) -> dict[str, Any]:
        return {
            "mapping": self.mapping,
            "role_arn": self.role_arn,
            "policy_name": self.policy_name,
            "matched_by": self.matched_by,
            "document": self.document,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> AwsPolicy:
        return cls(
            doc["mapping"], doc["role_arn"], doc["policy_name"], doc["document"], doc["matched_by"]
        )


@dataclass(frozen=True, slots=True)
class RevocationSpec:
    id: int
    selectors: tuple[tuple[str, str], ...]
    issued_before: datetime | None
    reason: str
    actor: str
    created_at: datetime
    aws_policies: tuple[AwsPolicy, ...] = ()
    lifted_at: datetime | None = None
    lifted_by: str | None = None

    def selector(self, name: str) -> str | None:
        return dict(self.selectors).get(name)

    def covers_identity(self, identity: Mapping[str, str]) -> bool:
        """Every selector equals the identity's value (``mapping`` included)."""
        return all(identity.get(name) == value for name, value in self.selectors)

    def covers(self, principal: Principal, mapping: str) -> bool:
        """Does this revocation refuse ``principal`` asking through ``mapping``?"""
        if self.issued_before is not None and principal.issued_at >= self.issued_before.timestamp():
            return False
        return self.covers_identity(identity_of(principal, mapping))

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"id": self.id}
        doc.update({name: self.selector(name) for name in SELECTORS})
        doc.update(
            issued_before=None if self.issued_before is None else iso(self.issued_before),
            reason=self.reason,
            actor=self.actor,
            created_at=iso(self.created_at),
        )
        if self.lifted_at is not None:
            doc.update(lifted_at=iso(self.lifted_at), lifted_by=self.lifted_by)
        return doc


def _nothing(principal: Principal) -> tuple[str, ...]:  # noqa: ARG001 - a shape of mapping only
    return ()


def identity_of(principal: Principal, mapping: str) -> dict[str, str]:
    return {
        "account": principal.account,
        "project": principal.project,
        "deployment": principal.deployment,
        "environment_type": principal.environment_type,
        "sub": principal.sub,
        "mapping": mapping,
    }


# -- the AWS deny documents -----------------------------------------------------------------------


def can_cover(selectors: Mapping[str, str], mapping: MappingSpec) -> bool:
    """Could a caller this revocation names obtain ``mapping``? (Its selectors against the
    mapping's patterns: docs/reference.md section 4.)"""
    if not mapping.enabled:
        return False
    if "mapping" in selectors and selectors["mapping"] != mapping.name:
        return False
    if "account" in selectors and selectors["account"] != mapping.account:
        return False
    if "project" in selectors and mapping.project not in ("*", selectors["project"]):
        return False
    if "deployment" in selectors and not fnmatch.fnmatchcase(
        selectors["deployment"], mapping.deployment
    ):
        return False
    env = selectors.get("environment_type")
    return env is None or mapping.environment_type in ("*", env)


def sends_tags(mapping: MappingSpec, broker_mode: bool) -> bool:
    """Does this AWS mapping's session carry the ``zuplo-*`` session tags? (A broker token,
    ``token`` unset meaning broker when the service runs with ``STS_BROKER_ISSUER``.)"""
    assert mapping.aws is not None
    token = mapping.aws.token or (BROKER if broker_mode else None)
    return token == BROKER and mapping.aws.session_tags


def aws_policy(
    revocation_id: int,
    selectors: Mapping[str, str],
    at: datetime,
    mapping: MappingSpec,
    broker_mode: bool,
) -> AwsPolicy:
    """The deny document for ``mapping``'s role (docs/reference.md section 11)."""
    assert mapping.aws is not None
    condition: dict[str, dict[str, str]] = {"DateLessThan": {"aws:TokenIssueTime": iso(at)}}
    tags = {
        f"aws:PrincipalTag/{TAG_KEYS[name]}": value
        for name, value in selectors.items()
        if name in TAG_KEYS
    }
    if sends_tags(mapping, broker_mode) and tags:
        condition["StringEquals"] = tags
        matched_by = "session tags"
    elif "deployment" in selectors:
        condition["StringLike"] = {"aws:userid": f"*:{session_name(selectors['deployment'])}"}
        matched_by = "session name"
    else:
        matched_by = "issue time"
    document = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": f"ZuploStsRevocation{revocation_id}",
                "Effect": "Deny",
                "Action": "*",
                "Resource": "*",
                "Condition": condition,
            }
        ],
    }
    name = f"{POLICY_PREFIX}{revocation_id}"
    return AwsPolicy(mapping.name, mapping.aws.role_arn, name, document, matched_by)


def session_context(
    mapping: MappingSpec, identity: Mapping[str, str], issued_at: float, broker_mode: bool
) -> Context:
    """What IAM knows of a session this service obtained for ``identity`` through ``mapping``
    at ``issued_at``: its issue time, its user id (role id and session name) and, for a broker
    mapping that sends them, its principal tags."""
    context: dict[str, list[str]] = {
        "aws:TokenIssueTime": [iso(datetime.fromtimestamp(issued_at, UTC))],
        "aws:userid": [f"AROAZUPLOSTS:{session_name(identity['deployment'])}"],
    }
    if sends_tags(mapping, broker_mode):
        for name, key in TAG_KEYS.items():
            context[f"aws:PrincipalTag/{key}"] = [identity[name]]
    return context


# -- the index every replica holds ----------------------------------------------------------------


class RevocationIndex:
    """The active revocations grouped by which selectors they name (their "shape": a few at
    most), each group a dictionary from those selectors' values, so a request costs one look-up
    per shape whatever the number of revocations; and every revocation still guarding the
    caches (active, or lifted less than :data:`GUARD_SECONDS` ago)."""

    def __init__(
        self,
        active: Iterable[RevocationSpec] = (),
        guarding: Iterable[RevocationSpec] = (),
        revision: int = 0,
        *,
        broker_mode: bool = False,
    ) -> None:
        self.revision = revision
        self.active = tuple(active)
        self.guarding = tuple(guarding)
        self._broker_mode = broker_mode
        # Per shape: the principal's attributes it names (read at C speed by attrgetter),
        # whether it names the mapping, and its revocations by those values (the mapping last).
        shapes: dict[tuple[str, ...], dict[tuple[str, ...], list[RevocationSpec]]] = {}
        for spec in self.active:
            named = dict(spec.selectors)
            fields = tuple(name for name in PRINCIPAL_SELECTORS if name in named)
            values = tuple(named[name] for name in fields)
            if "mapping" in named:
                fields += ("mapping",)
                values += (named["mapping"],)
            shapes.setdefault(fields, {}).setdefault(values, []).append(spec)
        self._shapes = tuple(
            (
                operator.attrgetter(*attributes) if attributes else _nothing,
                len(attributes) == 1,
                fields[-1] == "mapping",
                by_values,
            )
            for fields, by_values in shapes.items()
            for attributes in [tuple(name for name in fields if name != "mapping")]
        )
        self._policies: dict[str, list[tuple[RevocationSpec, AwsPolicy]]] = {}
        for spec in self.guarding:
            for policy in spec.aws_policies:
                self._policies.setdefault(policy.role_arn, []).append((spec, policy))

    def __len__(self) -> int:
        return len(self.active)

    def refusing(self, principal: Principal, mapping: str) -> RevocationSpec | None:
        """The active revocation that covers ``principal`` asking through ``mapping``, if any:
        one dictionary look-up per shape, none with no revocation at all."""
        shapes = self._shapes
        if not shapes:
            return None
        for read, single, with_mapping, by_values in shapes:
            values = read(principal)
            if single:
                values = (values,)
            if with_mapping:
                values = (*values, mapping)
            for spec in by_values.get(values, ()):
                if spec.issued_before is None or principal.issued_at < (
                    spec.issued_before.timestamp()
                ):
                    return spec
        return None

    def denies(
        self, mapping: MappingSpec, identity: Mapping[str, str], issued_at: float
    ) -> RevocationSpec | None:
        """The revocation whose guard a credential issued at ``issued_at`` for ``identity``
        through ``mapping`` falls under, if any: its identity is covered and it was issued
        before the revocation, or a printed AWS policy denies its session."""
        for spec in self.guarding:
            if issued_at < spec.created_at.timestamp() and spec.covers_identity(identity):
                return spec
        if mapping.aws is None:
            return None
        found = self._policies.get(mapping.aws.role_arn)
        if not found:
            return None
        context = session_context(mapping, identity, issued_at, self._broker_mode)
        for spec, policy in found:
            if denied(policy.document, "sts:AnyAction", context):
                return spec
        return None


# -- the table ------------------------------------------------------------------------------------


def _spec(row: Revocation) -> RevocationSpec:
    selectors = tuple(
        (name, value) for name in SELECTORS if (value := getattr(row, name)) is not None
    )
    return RevocationSpec(
        id=row.id,
        selectors=selectors,
        issued_before=row.issued_before,
        reason=row.reason,
        actor=row.actor,
        created_at=row.created_at,
        aws_policies=tuple(AwsPolicy.from_dict(doc) for doc in row.aws_policies),
        lifted_at=row.lifted_at,
        lifted_by=row.lifted_by,
    )


def _bump(session: Any) -> None:
    session.execute(
        sa.update(RevocationRevision)
        .where(RevocationRevision.id == 1)
        .values(revision=RevocationRevision.revision + 1)
    )


def add(
    database: Database,
    selectors: Mapping[str, str],
    *,
    issued_before: datetime | None,
    reason: str,
    actor: str,
    mappings: Sequence[MappingSpec],
    broker_mode: bool,
) -> RevocationSpec:
    """Record a revocation and the AWS deny documents for the mappings it can cover, in one
    transaction (the revision moves with it)."""
    with database.session() as session:
        now = utcnow()
        row = Revocation(
            created_at=now,
            issued_before=issued_before,
            reason=reason,
            actor=actor,
            aws_policies=[],
            **{name: selectors.get(name) for name in SELECTORS},
        )
        session.add(row)
        session.flush()
        policies = [
            aws_policy(row.id, selectors, now, mapping, broker_mode)
            for mapping in mappings
            if mapping.aws is not None and can_cover(selectors, mapping)
        ]
        row.aws_policies = [policy.to_dict() for policy in policies]
        _bump(session)
        session.flush()
        return _spec(row)


def get(database: Database, revocation_id: int) -> RevocationSpec | None:
    with database.session() as session:
        row = session.get(Revocation, revocation_id)
        return None if row is None else _spec(row)


def lift(database: Database, revocation_id: int, actor: str) -> RevocationSpec | None:
    """End an active revocation (kept, with who lifted it when); None if there is none."""
    with database.session() as session:
        row = session.get(Revocation, revocation_id, with_for_update=True)
        if row is None or row.lifted_at is not None:
            return None
        row.lifted_at = utcnow()
        row.lifted_by = actor
        _bump(session)
        session.flush()
        return _spec(row)


def active(database: Database) -> list[RevocationSpec]:
    with database.session() as session:
        rows = session.scalars(
            sa.select(Revocation).where(Revocation.lifted_at.is_(None)).order_by(Revocation.id)
        )
        return [_spec(row) for row in rows]


def revision(database: Database) -> int:
    with database.engine.connect() as conn:
        return conn.execute(
            sa.select(RevocationRevision.revision).where(RevocationRevision.id == 1)
        ).scalar_one()


def load(database: Database, *, broker_mode: bool) -> RevocationIndex:
    """The index of what is stored now, read in one snapshot."""
    guard_from = utcnow() - timedelta(seconds=GUARD_SECONDS)
    with database.snapshot() as conn:
        current = conn.execute(
            sa.select(RevocationRevision.revision).where(RevocationRevision.id == 1)
        ).scalar_one()
        rows = conn.execute(
            sa.select(Revocation.__table__).where(
                sa.or_(Revocation.lifted_at.is_(None), Revocation.lifted_at > guard_from)
            )
        ).all()
    specs = [_spec(Revocation(**row._asdict())) for row in rows]
    return RevocationIndex(
        (spec for spec in specs if spec.lifted_at is None),
        specs,
        current,
        broker_mode=broker_mode,
    )
