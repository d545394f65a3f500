"""Mapping selection: which mapping a verified caller gets (docs/reference.md sections 2 and 4).

A :class:`MappingIndex` is compiled once from the stored mappings and never changes; the caller
builds a new one when the stored revision moves. Compilation does the work selection would
otherwise repeat on every request: enabled mappings are grouped by ``(account, project)`` (the
project of the group being exact or ``"*"``), each group split into exact deployments (a dict),
glob deployments (compiled, case-sensitive) and ``"*"``. Selecting for a caller therefore touches
at most two groups, whatever the number of mappings of other accounts or projects.

Selection rules (docs/reference.md section 4): without ``audience``/``resource`` the most specific
enabled match wins, compared by deployment (exact > glob > ``"*"``), then environment_type (exact >
``"*"``), then project (exact > ``"*"``); equal on all three is a tie and ``invalid_target``. With
``audience`` (a mapping name, or a GCP workload identity provider name) and/or ``resource`` (a
target) every failure is one and the same ``invalid_target``, so a caller cannot learn which
mappings exist for other tenants (docs/reference.md section 2).

:meth:`MappingIndex.explain` answers ``sts explain`` (docs/reference.md section 6) from the
same matching and ranking code that :meth:`MappingIndex.select` runs.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from sts.errors import InvalidScope, InvalidTarget, OAuthError, UnauthorizedClient
from sts.identity.principal import Principal
from sts.mappings.spec import DEFAULT_GCP_SCOPE, IAM_SCOPE, MappingSpec

# Re-exported (the "as" form) for modules that still import them from here.
from sts.protocol import ACCESS_TOKEN_TYPE as ACCESS_TOKEN_TYPE  # noqa: PLC0414
from sts.protocol import AWS_CREDENTIALS_TOKEN_TYPE as AWS_CREDENTIALS_TOKEN_TYPE  # noqa: PLC0414
from sts.protocol import ID_TOKEN_TYPE

#: ``requested_token_type`` asking a GCP mapping for a Google-signed ID token (docs/reference.md,
#: "GCP ID tokens"): RFC 8693's ``id_token`` type, the same URN as the ``subject_token_type``.
ID_TOKEN_REQUESTED = ID_TOKEN_TYPE
#: The scope of the federated token behind an ID token (docs/reference.md, "GCP ID tokens").
ID_TOKEN_SCOPES = (DEFAULT_GCP_SCOPE,)

# Mapping names are [a-z0-9][a-z0-9-]{0,62}, so an audience with this prefix is never a name.
WIP_PREFIX = "//iam.googleapis.com/"

# The fixed descriptions. NOT_AVAILABLE is deliberately the only answer to every failed
# audience/resource look-up: unknown, disabled and bound-to-someone-else must be indistinguishable.
NOT_AVAILABLE = "target not available to this identity"
CHOOSE_ONE = "several mappings bind this identity; choose one with audience or resource"
NO_MAPPING = "no mapping binds this identity"
TOKEN_TYPE_NOT_AVAILABLE = "requested_token_type not available for this mapping"  # noqa: S105
SCOPE_NOT_ALLOWED = "scope not allowed by the mapping"
AUDIENCE_NOT_ALLOWED = "audience not allowed for this mapping"
CHOOSE_AUDIENCE = "several audiences: resource must name one"

_GLOB_CHARS = frozenset("*?[")

# Specificity ranks, higher wins; compared as the tuple (deployment, environment, project).
_EXACT_DEPLOYMENT, _GLOB_DEPLOYMENT, _ANY_DEPLOYMENT = 2, 1, 0


class _Entry:
    """One compiled mapping. ``mismatch`` is the single definition of "binds this caller"."""

    __slots__ = (
        "account",
        "any_environment",
        "any_project",
        "deployment",
        "environment_type",
        "name",
        "project",
        "rank",
        "regex",
        "spec",
        "targets",
    )

    def __init__(self, spec: MappingSpec, regex: re.Pattern[str] | None) -> None:
        self.spec = spec
        self.name = spec.name
        self.account = spec.account
        self.project = spec.project
        self.deployment = spec.deployment
        self.environment_type = spec.environment_type
        self.any_project = spec.project == "*"
        self.any_environment = spec.environment_type == "*"
        self.regex = regex
        self.targets = frozenset(spec.targets)
        if spec.deployment == "*":
            deployment_rank = _ANY_DEPLOYMENT
        elif regex is not None:
            deployment_rank = _GLOB_DEPLOYMENT
        else:
            deployment_rank = _EXACT_DEPLOYMENT
        self.rank = (
            deployment_rank,
            int(spec.environment_type != "*"),
            int(spec.project != "*"),
        )

    def mismatch(self, principal: Principal) -> str | None:
        """None when this mapping binds ``principal``, else the first reason it does not."""
        if not self.spec.enabled:
            return "disabled"
        if self.account != principal.account:
            return "account differs"
        if not self.any_project and self.project != principal.project:
            return "project differs"
        if self.regex is not None:
            if self.regex.match(principal.deployment) is None:
                return "deployment does not match glob"
        elif self.rank[0] == _EXACT_DEPLOYMENT and self.deployment != principal.deployment:
            return "deployment differs"
        if not self.any_environment and self.environment_type != principal.environment_type:
            return "environment_type differs"
        return None


class _Group:
    """Enabled mappings of one (account, project-or-"*"), split by deployment kind."""

    __slots__ = ("exact", "globs", "star")

    def __init__(self) -> None:
        self.exact: dict[str, list[_Entry]] = {}
        self.globs: list[_Entry] = []
        self.star: list[_Entry] = []


class Candidate(NamedTuple):
    """One line of ``sts explain``: a mapping, whether it binds the claims, and why (not) chosen."""

    name: str
    matched: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Explanation:
    """What :meth:`MappingIndex.select` would do for some claims, and why (``sts explain``)."""

    chosen: str | None
    error: str | None
    candidates: tuple[Candidate, ...]

    @property
    def summary(self) -> str:
        """The first output line of ``sts explain``."""
        return (
            f"chosen: {self.chosen}" if self.chosen is not None else f"chosen: none ({self.error})"
        )

    def to_dict(self) -> dict[str, Any]:
        """The ``sts explain --json`` document."""
        return {
            "chosen": self.chosen,
            "error": self.error,
            "candidates": [c._asdict() for c in self.candidates],
        }


_NO_GROUPS: tuple[_Group, ...] = ()
_NO_ENTRIES: tuple[_Entry, ...] = ()


class MappingIndex:
    """The compiled, immutable selection index over one revision of the stored mappings."""

    __slots__ = (
        "_account_entries",
        "_by_account_target",
        "_by_account_wip",
        "_by_name",
        "_by_target",
        "_by_wip",
        "_groups",
        "revision",
        "specs",
    )

    def __init__(self, specs: Iterable[MappingSpec], revision: int = 0) -> None:
        """Compile ``specs``; raises ValueError on a duplicate name (the store forbids them)."""
        self.revision = revision
        self.specs: tuple[MappingSpec, ...] = tuple(sorted(specs, key=lambda s: s.name))
        compiled: dict[str, re.Pattern[str]] = {}
        by_name: dict[str, _Entry] = {}
        by_target: dict[str, list[_Entry]] = {}
        by_wip: dict[str, list[_Entry]] = {}
        by_account_target: dict[tuple[str, str], list[_Entry]] = {}
        by_account_wip: dict[tuple[str, str], list[_Entry]] = {}
        account_entries: dict[str, list[_Entry]] = {}
        groups: dict[tuple[str, str], _Group] = {}
        for spec in self.specs:
            if spec.name in by_name:
                raise ValueError(f"duplicate mapping name {spec.name!r}")
            regex = None
            if spec.deployment != "*" and not _GLOB_CHARS.isdisjoint(spec.deployment):
                regex = compiled.get(spec.deployment)
                if regex is None:
                    # re, not fnmatch.fnmatch: that one folds case on case-insensitive OSes,
                    # and the contract's globs are case-sensitive everywhere.
                    regex = compiled[spec.deployment] = re.compile(
                        fnmatch.translate(spec.deployment)
                    )
            entry = _Entry(spec, regex)
            by_name[spec.name] = entry
            account_entries.setdefault(spec.account, []).append(entry)
            for target in entry.targets:
                by_target.setdefault(target, []).append(entry)
            wip = spec.gcp.workload_identity_provider if spec.gcp is not None else None
            if wip is not None:
                by_wip.setdefault(wip, []).append(entry)
            if not spec.enabled:
                continue
            for target in entry.targets:
                by_account_target.setdefault((spec.account, target), []).append(entry)
            if wip is not None:
                by_account_wip.setdefault((spec.account, wip), []).append(entry)
            group = groups.get((spec.account, spec.project))
            if group is None:
                group = groups[(spec.account, spec.project)] = _Group()
            if regex is not None:
                group.globs.append(entry)
            elif spec.deployment == "*":
                group.star.append(entry)
            else:
                group.exact.setdefault(spec.deployment, []).append(entry)
        self._by_name = by_name
        self._by_target = _freeze(by_target)
        self._by_wip = _freeze(by_wip)
        self._by_account_target = _freeze(by_account_target)
        self._by_account_wip = _freeze(by_account_wip)
        self._account_entries = _freeze(account_entries)
        self._groups = groups

    def __len__(self) -> int:
        return len(self.specs)

    def get(self, name: str) -> MappingSpec | None:
        """The mapping called ``name``, enabled or not."""
        entry = self._by_name.get(name)
        return entry.spec if entry is not None else None

    def select(
        self, principal: Principal, audience: str | None, resource: str | None
    ) -> MappingSpec:
        """The mapping for ``principal`` (docs/reference.md sections 2 and 4; RFC 8693 section 2.1).

        An empty ``audience`` or ``resource`` counts as absent. Raises
        :class:`~sts.errors.UnauthorizedClient` when nothing binds the caller and neither was
        given, :class:`~sts.errors.InvalidTarget` for every other failure.
        """
        audience = audience or None
        resource = resource or None
        candidates = self._candidates(principal, audience, resource)
        best, tie = _pick(candidates)
        return _decide(best, tie, named=audience is not None or resource is not None).spec

    def explain(
        self, principal: Principal, audience: str | None, resource: str | None = None
    ) -> Explanation:
        """What :meth:`select` does for ``principal``, with a reason for every mapping considered.

        Lists every mapping of the principal's account, then those of other accounts that
        ``audience`` or ``resource`` names. This is the operator's tool: unlike the token
        endpoint it says exactly why each mapping was or was not chosen.
        """
        audience = audience or None
        resource = resource or None
        named = audience is not None or resource is not None
        candidates = self._candidates(principal, audience, resource)
        best, tie = _pick(candidates)
        chosen: str | None = None
        error: str | None = None
        try:
            chosen = _decide(best, tie, named=named).name
        except OAuthError as exc:
            error = exc.error

        shown = list(self._account_entries.get(principal.account, _NO_ENTRIES))
        seen = {e.name for e in shown}
        others = [
            e
            for e in self._named_pool(principal.account, audience, resource, any_account=True)
            if e.name not in seen
        ]
        shown.extend(sorted(others, key=lambda e: e.name))

        in_candidates = {e.name for e in candidates}
        lines: list[Candidate] = []
        for entry in shown:
            mismatch = entry.mismatch(principal)
            if mismatch is not None:
                lines.append(Candidate(entry.name, False, mismatch))
                continue
            if entry.name not in in_candidates:
                # Bound to the caller, yet not a candidate: excluded by the audience/resource
                # filter, or left behind in a less specific deployment tier.
                if named:
                    reason = _not_named_reason(entry, audience, resource)
                else:
                    assert best is not None
                    reason = f"less specific than {best.name}"
            elif entry is best:
                reason = "chosen" if chosen is not None else f"tie with {_name(tie)}"
            else:
                assert best is not None
                if entry.rank == best.rank:
                    reason = f"tie with {best.name}"
                else:
                    reason = f"less specific than {best.name}"
            lines.append(Candidate(entry.name, True, reason))
        return Explanation(chosen=chosen, error=error, candidates=tuple(lines))

    def _candidates(
        self, principal: Principal, audience: str | None, resource: str | None
    ) -> Sequence[_Entry]:
        """Enabled mappings binding ``principal`` among which specificity decides."""
        if audience is not None or resource is not None:
            pool = self._named_pool(principal.account, audience, resource, any_account=False)
            return [e for e in pool if e.mismatch(principal) is None]
        account = principal.account
        exact_project = self._groups.get((account, principal.project))
        any_project = self._groups.get((account, "*")) if principal.project != "*" else None
        if exact_project is None and any_project is None:
            return _NO_ENTRIES
        groups = tuple(g for g in (exact_project, any_project) if g is not None)
        # The deployment kind is the first specificity key, so the first non-empty tier holds
        # every mapping that can win; the later tiers need not be looked at.
        deployment = principal.deployment
        found = [
            e
            for g in groups
            for e in g.exact.get(deployment, _NO_ENTRIES)
            if e.mismatch(principal) is None
        ]
        if not found:
            found = [e for g in groups for e in g.globs if e.mismatch(principal) is None]
        if not found:
            found = [e for g in groups for e in g.star if e.mismatch(principal) is None]
        return found

    def _named_pool(
        self, account: str, audience: str | None, resource: str | None, *, any_account: bool
    ) -> Sequence[_Entry]:
        """Mappings ``audience`` and ``resource`` both name (of ``account`` unless any_account).

        The per-account dicts hold enabled mappings only; both ways give the same candidates
        once :meth:`_Entry.mismatch` has filtered them.
        """
        pool: Sequence[_Entry]
        if audience is not None:
            if audience.startswith(WIP_PREFIX):
                if any_account:
                    pool = self._by_wip.get(audience, _NO_ENTRIES)
                else:
                    pool = self._by_account_wip.get((account, audience), _NO_ENTRIES)
            else:
                entry = self._by_name.get(audience)
                pool = (entry,) if entry is not None else _NO_ENTRIES
            if resource is not None:
                pool = [e for e in pool if resource in e.targets]
            return pool
        if resource is None:
            return _NO_ENTRIES
        if any_account:
            return self._by_target.get(resource, _NO_ENTRIES)
        return self._by_account_target.get((account, resource), _NO_ENTRIES)


def _freeze(d: dict[Any, list[_Entry]]) -> dict[Any, tuple[_Entry, ...]]:
    return {k: tuple(v) for k, v in d.items()}


def _pick(candidates: Sequence[_Entry]) -> tuple[_Entry | None, _Entry | None]:
    """The most specific candidate, and another one equally specific if there is one."""
    best: _Entry | None = None
    tie: _Entry | None = None
    for entry in candidates:
        if best is None or entry.rank > best.rank:
            best, tie = entry, None
        elif tie is None and entry.rank == best.rank:
            tie = entry
    return best, tie


def _decide(best: _Entry | None, tie: _Entry | None, *, named: bool) -> _Entry:
    if best is None:
        if named:
            raise InvalidTarget(NOT_AVAILABLE)
        raise UnauthorizedClient(NO_MAPPING)
    if tie is not None:
        raise InvalidTarget(CHOOSE_ONE)
    return best


def _name(entry: _Entry | None) -> str:
    assert entry is not None
    return entry.name


def _not_named_reason(entry: _Entry, audience: str | None, resource: str | None) -> str:
    if audience is not None:
        named_by_audience = (
            entry.spec.gcp is not None and entry.spec.gcp.workload_identity_provider == audience
            if audience.startswith(WIP_PREFIX)
            else entry.name == audience
        )
        if not named_by_audience:
            return "not the named mapping"
    if resource is not None and resource not in entry.targets:
        return "resource names another target"
    return "not the named mapping"


def check_request(
    mapping: MappingSpec, scope: str | None, requested_token_type: str | None
) -> tuple[str, ...]:
    """Check ``scope`` and ``requested_token_type`` against ``mapping``; return granted scopes.

    RFC 8693 section 2.1 and docs/reference.md section 2: ``scope`` is space-delimited
    (RFC 6749 section 3.3); empty counts as absent. AWS mappings take no scope; an Azure
    mapping only its own (section 9). A GCP mapping
    grants what was asked if its scopes allow every token (plus the IAM scope when it
    impersonates nothing), or its own scopes when nothing was asked. An empty
    ``requested_token_type`` counts as absent.

    An ID token (:data:`ID_TOKEN_REQUESTED`; docs/reference.md, "GCP ID tokens") is available
    only from a GCP mapping with ``id_token_audiences``; it takes no ``scope`` and is granted
    :data:`ID_TOKEN_SCOPES`, the scope of the federated token that asks Google for it.
    Raises :class:`~sts.errors.InvalidTarget` or :class:`~sts.errors.InvalidScope`.
    """
    requested = tuple(dict.fromkeys(t for t in (scope or "").split(" ") if t))
    if requested_token_type == ID_TOKEN_REQUESTED:
        if mapping.gcp is None or not mapping.gcp.id_token_audiences:
            raise InvalidTarget(TOKEN_TYPE_NOT_AVAILABLE)
        if requested:
            raise InvalidScope(SCOPE_NOT_ALLOWED)
        return ID_TOKEN_SCOPES
    issued = AWS_CREDENTIALS_TOKEN_TYPE if mapping.aws is not None else ACCESS_TOKEN_TYPE
    if requested_token_type and requested_token_type != issued:
        raise InvalidTarget(TOKEN_TYPE_NOT_AVAILABLE)
    if mapping.azure is not None:
        # Azure: what was asked must be the mapping's scope (one resource's /.default).
        if any(token not in mapping.azure.scopes for token in requested):
            raise InvalidScope(SCOPE_NOT_ALLOWED)
        return requested or mapping.azure.scopes
    if mapping.gcp is None:
        if requested:
            raise InvalidScope(SCOPE_NOT_ALLOWED)
        return ()
    if not requested:
        return mapping.gcp.scopes
    allowed = mapping.gcp.scopes
    if mapping.gcp.service_account is None:
        # google-auth asks for the IAM scope before impersonating a service account itself.
        allowed = (*allowed, IAM_SCOPE)
    for token in requested:
        if token not in allowed:
            raise InvalidScope(SCOPE_NOT_ALLOWED)
    return requested


def id_token_audience(
    mapping: MappingSpec, resource: str | None, requested_token_type: str | None
) -> str | None:
    """The audience of the ID token to issue (docs/reference.md, "GCP ID tokens"), or None
    when the request asks for no ID token.

    ``resource`` names one of the mapping's ``id_token_audiences``; left out (or empty, or
    naming the mapping by another of its targets, its service account) it stands for the only
    one. Raises :class:`~sts.errors.InvalidTarget` when the mapping issues no ID tokens, when
    ``resource`` names no audience of the mapping, and when several are possible and none was
    named. The descriptions are fixed: ``resource`` is never echoed.
    """
    if requested_token_type != ID_TOKEN_REQUESTED:
        return None
    audiences = mapping.gcp.id_token_audiences if mapping.gcp is not None else ()
    if not audiences:
        raise InvalidTarget(TOKEN_TYPE_NOT_AVAILABLE)
    if resource and resource in audiences:
        return resource
    if resource and resource not in mapping.targets:
        raise InvalidTarget(AUDIENCE_NOT_ALLOWED)
    if len(audiences) != 1:
        raise InvalidTarget(CHOOSE_AUDIENCE)
    return audiences[0]
