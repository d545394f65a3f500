"""Mapping selection (docs/reference.md sections 2 and 4) and ``sts explain`` data (section 6)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from sts.errors import InvalidScope, InvalidTarget, OAuthError, UnauthorizedClient
from sts.identity.principal import Principal
from sts.mappings.index import (
    ACCESS_TOKEN_TYPE,
    AWS_CREDENTIALS_TOKEN_TYPE,
    Candidate,
    MappingIndex,
    check_request,
)
from sts.mappings.spec import DEFAULT_GCP_SCOPE, IAM_SCOPE, AwsTarget, GcpTarget, MappingSpec

WIP_A = "//iam.googleapis.com/projects/111/locations/global/workloadIdentityPools/zuplo/providers/a"
WIP_B = "//iam.googleapis.com/projects/222/locations/global/workloadIdentityPools/zuplo/providers/b"
STORAGE_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"
CHOOSE = "several mappings bind this identity; choose one with audience or resource"


def arn(name: str) -> str:
    return f"arn:aws:iam::123456789012:role/{name}"


def aws(
    name: str,
    project: str = "proj",
    deployment: str = "*",
    environment_type: str = "*",
    *,
    account: str = "acct",
    enabled: bool = True,
    role: str | None = None,
) -> MappingSpec:
    return MappingSpec(
        name=name,
        account=account,
        project=project,
        deployment=deployment,
        environment_type=environment_type,
        enabled=enabled,
        aws=AwsTarget(role_arn=role or arn(name)),
    )


def gcp(
    name: str,
    project: str = "proj",
    deployment: str = "*",
    environment_type: str = "*",
    *,
    account: str = "acct",
    enabled: bool = True,
    wip: str = WIP_A,
    service_account: str | None = None,
    scopes: tuple[str, ...] = (DEFAULT_GCP_SCOPE,),
) -> MappingSpec:
    return MappingSpec(
        name=name,
        account=account,
        project=project,
        deployment=deployment,
        environment_type=environment_type,
        enabled=enabled,
        gcp=GcpTarget(
            workload_identity_provider=wip, service_account=service_account, scopes=scopes
        ),
    )


def caller(
    account: str = "acct",
    project: str = "proj",
    deployment: str = "dep-main",
    environment_type: str = "production",
) -> Principal:
    return Principal(
        issuer="https://issuer.test",
        sub="sub",
        account=account,
        project=project,
        deployment=deployment,
        environment_type=environment_type,
        audiences=frozenset({"https://sts.example.test"}),
    )


def outcome(index: MappingIndex, who: Principal, audience: str | None, resource: str | None) -> str:
    """The chosen name, or "tie", "none" (unauthorized_client), "unavailable" (invalid_target)."""
    try:
        return index.select(who, audience, resource).name
    except UnauthorizedClient as exc:
        return "none" if exc.description == "no mapping binds this identity" else exc.description
    except InvalidTarget as exc:
        names = {CHOOSE: "tie", "target not available to this identity": "unavailable"}
        return names.get(exc.description, exc.description)


# (mappings as (name, project, deployment, environment_type[, enabled]), winner) for the caller
# (acct, proj, dep-main, production). Every ordering of the contract's specificity list appears.
PRECEDENCE: list[tuple[str, Sequence[tuple[str, ...] | tuple[str, str, str, str, bool]], str]] = [
    (
        "exact deployment over glob",
        [("a", "proj", "dep-main", "*"), ("b", "proj", "dep-*", "*")],
        "a",
    ),
    ("glob over star", [("a", "proj", "dep-*", "*"), ("b", "proj", "*", "*")], "a"),
    ("exact deployment over star", [("a", "proj", "dep-main", "*"), ("b", "proj", "*", "*")], "a"),
    (
        "deployment before environment",
        [("a", "proj", "dep-*", "*"), ("b", "proj", "*", "production")],
        "a",
    ),
    (
        "exact deployment before environment",
        [("a", "proj", "dep-main", "*"), ("b", "proj", "dep-*", "production")],
        "a",
    ),
    ("deployment before project", [("a", "*", "dep-*", "*"), ("b", "proj", "*", "*")], "a"),
    (
        "environment exact over star",
        [("a", "proj", "*", "production"), ("b", "proj", "*", "*")],
        "a",
    ),
    ("environment before project", [("a", "*", "*", "production"), ("b", "proj", "*", "*")], "a"),
    ("project exact over star", [("a", "proj", "*", "*"), ("b", "*", "*", "*")], "a"),
    (
        "project breaks a tie on deployment and environment",
        [("a", "proj", "dep-*", "production"), ("b", "*", "dep-*", "production")],
        "a",
    ),
    ("same patterns tie", [("a", "proj", "*", "*"), ("b", "proj", "*", "*")], "tie"),
    (
        "two different globs tie",
        [("a", "proj", "dep-*", "*"), ("b", "proj", "dep-m?in", "*")],
        "tie",
    ),
    (
        "narrow and wide globs tie",
        [("a", "proj", "*-main", "*"), ("b", "proj", "[d]ep-main", "*")],
        "tie",
    ),
    (
        "exact deployments tie",
        [("a", "proj", "dep-main", "*"), ("b", "proj", "dep-main", "*")],
        "tie",
    ),
    (
        "tie in a less specific tier does not matter",
        [("a", "proj", "dep-main", "*"), ("b", "proj", "*", "*"), ("c", "proj", "*", "*")],
        "a",
    ),
    (
        "tie above a less specific single",
        [("a", "*", "*", "*"), ("b", "proj", "dep-*", "*"), ("c", "proj", "d*", "*")],
        "tie",
    ),
    (
        "disabled exact is ignored",
        [("a", "proj", "dep-main", "*", False), ("b", "proj", "*", "*")],
        "b",
    ),
    (
        "disabled tie partner is ignored",
        [("a", "proj", "*", "*", False), ("b", "proj", "*", "*")],
        "b",
    ),
    ("only disabled", [("a", "proj", "*", "*", False)], "none"),
    ("globs are case-sensitive", [("a", "proj", "DEP-*", "*"), ("b", "proj", "*", "*")], "b"),
    ("exact is case-sensitive", [("a", "proj", "Dep-Main", "*")], "none"),
    ("project star matches", [("a", "*", "*", "*")], "a"),
    ("environment star matches", [("a", "proj", "dep-main", "*")], "a"),
    ("environment differs", [("a", "proj", "dep-main", "preview"), ("b", "proj", "*", "*")], "b"),
    ("project differs", [("a", "other", "dep-main", "*"), ("b", "*", "*", "*")], "b"),
    ("glob does not match", [("a", "proj", "dep-x*", "*")], "none"),
    ("bracket glob", [("a", "proj", "[de]ep-main", "*"), ("b", "proj", "*", "*")], "a"),
    ("nothing", [], "none"),
    (
        "full chain",
        [
            ("p1", "*", "*", "*"),
            ("p2", "proj", "*", "*"),
            ("p3", "*", "*", "production"),
            ("p4", "proj", "*", "production"),
            ("p5", "*", "dep-*", "*"),
            ("p6", "proj", "dep-*", "*"),
            ("p7", "*", "dep-*", "production"),
            ("p8", "proj", "dep-*", "production"),
            ("p9", "*", "dep-main", "*"),
            ("pa", "proj", "dep-main", "*"),
            ("pb", "*", "dep-main", "production"),
            ("pc", "proj", "dep-main", "production"),
        ],
        "pc",
    ),
]


def build(rows: Sequence[tuple[object, ...]]) -> list[MappingSpec]:
    specs = []
    for row in rows:
        name, project, deployment, env = (str(v) for v in row[:4])
        enabled = bool(row[4]) if len(row) > 4 else True
        specs.append(aws(name, project, deployment, env, enabled=enabled))
    return specs


@pytest.mark.parametrize(
    ("rows", "winner"), [(r, w) for _, r, w in PRECEDENCE], ids=[i for i, _, _ in PRECEDENCE]
)
def test_precedence(rows: Sequence[tuple[object, ...]], winner: str) -> None:
    specs = build(rows)
    for ordering in (specs, list(reversed(specs))):
        index = MappingIndex(ordering)
        assert outcome(index, caller(), None, None) == winner
        explanation = index.explain(caller(), None, None)
        expected_error = {"tie": "invalid_target", "none": "unauthorized_client"}.get(winner)
        assert explanation.error == expected_error
        assert explanation.chosen == (None if expected_error else winner)


def test_full_chain_peels_off_in_order() -> None:
    """Removing the winner each time walks the whole specificity order."""
    rows = dict(PRECEDENCE_BY_ID)["full chain"]
    specs = build(rows)
    order = []
    while specs:
        chosen = MappingIndex(specs).select(caller(), None, None).name
        order.append(chosen)
        specs = [s for s in specs if s.name != chosen]
    assert order == ["pc", "pb", "pa", "p9", "p8", "p7", "p6", "p5", "p4", "p3", "p2", "p1"]


PRECEDENCE_BY_ID = [(i, r) for i, r, _ in PRECEDENCE]


def test_other_accounts_never_bind() -> None:
    index = MappingIndex(
        [aws("mine", account="acct"), aws("theirs", "proj", "dep-main", account="other")]
    )
    assert outcome(index, caller(), None, None) == "mine"
    assert outcome(index, caller(account="nobody"), None, None) == "none"
    assert outcome(index, caller(account="ACCT"), None, None) == "none"


def test_caller_project_star_is_not_a_wildcard() -> None:
    index = MappingIndex([aws("a", "proj")])
    assert outcome(index, caller(project="*"), None, None) == "none"
    index = MappingIndex([aws("a", "*")])
    assert outcome(index, caller(project="*"), None, None) == "a"


def test_glob_is_anchored_and_matches_newline_free_names() -> None:
    index = MappingIndex([aws("a", "proj", "dep-*")])
    assert outcome(index, caller(deployment="dep-main"), None, None) == "a"
    assert outcome(index, caller(deployment="xdep-main"), None, None) == "none"
    assert outcome(index, caller(deployment="DEP-main"), None, None) == "none"


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        MappingIndex([aws("a"), aws("a", "other")])


def test_index_keeps_revision_and_lookups() -> None:
    specs = [aws("b"), aws("a", role=arn("shared")), aws("c", account="x", role=arn("shared"))]
    index = MappingIndex(specs, revision=7)
    assert index.revision == 7
    assert len(index) == 3
    assert [s.name for s in index.specs] == ["a", "b", "c"]
    assert index.get("b") == specs[0]
    assert index.get("zz") is None


# --- audience and resource -------------------------------------------------------------------


@pytest.fixture
def mixed() -> MappingIndex:
    return MappingIndex(
        [
            aws("orders-exact", "proj", "dep-main", role=arn("orders")),
            aws("orders-any", "proj", "*", role=arn("orders-any")),
            aws("shared-1", "proj", "*", "production", role=arn("shared")),
            aws("shared-2", "*", "*", "*", role=arn("shared")),
            aws("tie-1", "proj", "dep-*", role=arn("tie")),
            aws("tie-2", "proj", "d*", role=arn("tie")),
            gcp("gcp-sa", wip=WIP_A, service_account="reader@p.iam.gserviceaccount.com"),
            gcp("gcp-direct", wip=WIP_B),
            gcp("gcp-sa-2", wip=WIP_B, service_account="writer@p.iam.gserviceaccount.com"),
            aws("disabled", enabled=False, role=arn("disabled")),
            aws("other-account", account="other", role=arn("other")),
            aws("other-project", "elsewhere", role=arn("elsewhere")),
            gcp("other-account-gcp", account="other", wip=WIP_A, service_account="o@x.com"),
        ]
    )


@pytest.mark.parametrize(
    ("audience", "resource", "expected"),
    [
        # audience by mapping name overrides specificity
        ("orders-any", None, "orders-any"),
        ("orders-exact", None, "orders-exact"),
        ("tie-2", None, "tie-2"),
        # audience by workload identity provider name
        (WIP_A, None, "gcp-sa"),
        (WIP_B, None, "tie"),
        (WIP_B, "writer@p.iam.gserviceaccount.com", "gcp-sa-2"),
        (WIP_B, WIP_B, "gcp-direct"),
        # resource by role ARN, SA email, WIP (mapping without service account)
        (None, arn("orders"), "orders-exact"),
        (None, arn("orders-any"), "orders-any"),
        (None, "reader@p.iam.gserviceaccount.com", "gcp-sa"),
        (None, WIP_B, "gcp-direct"),
        # a WIP is not the resource of a mapping that impersonates a service account
        (None, WIP_A, "unavailable"),
        # several candidates for one resource: specificity, then tie
        (None, arn("shared"), "shared-1"),
        (None, arn("tie"), "tie"),
        # audience and resource together
        ("orders-any", arn("orders-any"), "orders-any"),
        ("shared-2", arn("shared"), "shared-2"),
        ("orders-any", arn("orders"), "unavailable"),
        (WIP_A, arn("orders"), "unavailable"),
        # empty counts as absent
        ("", "", "orders-exact"),
        ("", arn("orders"), "orders-exact"),
    ],
)
def test_audience_and_resource(
    mixed: MappingIndex, audience: str | None, resource: str | None, expected: str
) -> None:
    assert outcome(mixed, caller(), audience, resource) == expected


def test_audience_resolves_what_would_be_a_tie() -> None:
    index = MappingIndex([aws("a"), aws("b")])
    assert outcome(index, caller(), None, None) == "tie"
    assert outcome(index, caller(), "a", None) == "a"
    assert outcome(index, caller(), None, arn("b")) == "b"


def test_every_failed_lookup_is_the_same_invalid_target(mixed: MappingIndex) -> None:
    """No enumeration: unknown, disabled, unbound, conflicting all look alike (reference 2)."""
    attempts = [
        ("no-such-mapping", None),
        ("disabled", None),
        ("other-account", None),
        ("other-project", None),
        ("other-account-gcp", None),
        (None, arn("no-such-role")),
        (None, arn("disabled")),
        (None, arn("other")),
        (None, arn("elsewhere")),
        (None, "o@x.com"),
        (
            "//iam.googleapis.com/projects/9/locations/global/workloadIdentityPools/p/providers/x",
            None,
        ),
        ("orders-any", arn("orders")),
        ("orders-exact", "reader@p.iam.gserviceaccount.com"),
    ]
    answers = []
    for audience, resource in attempts:
        with pytest.raises(InvalidTarget) as info:
            mixed.select(caller(), audience, resource)
        answers.append((info.value.status, info.value.to_dict(), str(info.value)))
    # Nothing binds this caller at all, yet a named look-up is still invalid_target.
    with pytest.raises(InvalidTarget) as info:
        mixed.select(caller(account="stranger"), "orders-any", None)
    answers.append((info.value.status, info.value.to_dict(), str(info.value)))
    assert len({json.dumps(a) for a in answers}) == 1
    assert answers[0][1] == {
        "error": "invalid_target",
        "error_description": "target not available to this identity",
    }


def test_no_mapping_without_audience_is_unauthorized_client(mixed: MappingIndex) -> None:
    with pytest.raises(UnauthorizedClient) as info:
        mixed.select(caller(account="stranger"), None, None)
    assert info.value.to_dict() == {
        "error": "unauthorized_client",
        "error_description": "no mapping binds this identity",
    }


def test_tie_description_names_no_mapping() -> None:
    index = MappingIndex([aws("secret-one"), aws("secret-two")])
    with pytest.raises(InvalidTarget) as info:
        index.select(caller(), None, None)
    assert info.value.description == CHOOSE
    assert "secret" not in info.value.description


# --- scope and requested_token_type ----------------------------------------------------------

GCP_SA = gcp(
    "g-sa",
    service_account="sa@p.iam.gserviceaccount.com",
    scopes=(DEFAULT_GCP_SCOPE, STORAGE_SCOPE),
)
GCP_DIRECT = gcp("g-direct", scopes=(STORAGE_SCOPE,))
AWS = aws("a")


@pytest.mark.parametrize(
    ("mapping", "scope", "granted"),
    [
        (AWS, None, ()),
        (AWS, "", ()),
        (AWS, "  ", ()),
        (AWS, DEFAULT_GCP_SCOPE, InvalidScope),
        (AWS, "openid", InvalidScope),
        (GCP_SA, None, (DEFAULT_GCP_SCOPE, STORAGE_SCOPE)),
        (GCP_SA, "", (DEFAULT_GCP_SCOPE, STORAGE_SCOPE)),
        (GCP_SA, STORAGE_SCOPE, (STORAGE_SCOPE,)),
        (GCP_SA, f"{STORAGE_SCOPE}  {DEFAULT_GCP_SCOPE}", (STORAGE_SCOPE, DEFAULT_GCP_SCOPE)),
        (GCP_SA, f"{STORAGE_SCOPE} {STORAGE_SCOPE}", (STORAGE_SCOPE,)),
        (GCP_SA, IAM_SCOPE, InvalidScope),
        (GCP_SA, f"{STORAGE_SCOPE} https://www.googleapis.com/auth/other", InvalidScope),
        (GCP_SA, f"{STORAGE_SCOPE}\t{DEFAULT_GCP_SCOPE}", InvalidScope),
        (GCP_DIRECT, None, (STORAGE_SCOPE,)),
        (GCP_DIRECT, IAM_SCOPE, (IAM_SCOPE,)),
        (GCP_DIRECT, f"{STORAGE_SCOPE} {IAM_SCOPE}", (STORAGE_SCOPE, IAM_SCOPE)),
        (GCP_DIRECT, DEFAULT_GCP_SCOPE, InvalidScope),
        (GCP_DIRECT, STORAGE_SCOPE.upper(), InvalidScope),
    ],
)
def test_scope(mapping: MappingSpec, scope: str | None, granted: object) -> None:
    if isinstance(granted, tuple):
        assert check_request(mapping, scope, None) == granted
    else:
        with pytest.raises(InvalidScope) as info:
            check_request(mapping, scope, None)
        assert info.value.description == "scope not allowed by the mapping"


@pytest.mark.parametrize(
    ("mapping", "requested", "ok"),
    [
        (AWS, None, True),
        (AWS, "", True),
        (AWS, AWS_CREDENTIALS_TOKEN_TYPE, True),
        (AWS, ACCESS_TOKEN_TYPE, False),
        (AWS, "urn:ietf:params:oauth:token-type:jwt", False),
        (GCP_SA, ACCESS_TOKEN_TYPE, True),
        (GCP_DIRECT, ACCESS_TOKEN_TYPE, True),
        (GCP_DIRECT, None, True),
        (GCP_SA, AWS_CREDENTIALS_TOKEN_TYPE, False),
        (GCP_SA, "urn:ietf:params:oauth:token-type:id_token", False),
    ],
)
def test_requested_token_type(mapping: MappingSpec, requested: str | None, ok: bool) -> None:
    if ok:
        check_request(mapping, None, requested)
        return
    with pytest.raises(InvalidTarget) as info:
        check_request(mapping, None, requested)
    assert info.value.description == "requested_token_type not available for this mapping"


def test_token_type_constants() -> None:
    assert AWS_CREDENTIALS_TOKEN_TYPE == "urn:zuplo-sts:token-type:aws-credentials"
    assert ACCESS_TOKEN_TYPE == "urn:ietf:params:oauth:token-type:access_token"


# --- explain --------------------------------------------------------------------------------


def reasons(candidates: Sequence[Candidate]) -> dict[str, tuple[bool, str]]:
    return {c.name: (c.matched, c.reason) for c in candidates}


def test_explain_chosen_and_why_not_the_others() -> None:
    index = MappingIndex(
        [
            aws("best", "proj", "dep-main", "production"),
            aws("glob", "proj", "dep-*"),
            aws("wide", "*"),
            aws("off", "proj", "dep-main", enabled=False),
            aws("proj-x", "x"),
            aws("glob-x", "proj", "x-*"),
            aws("dep-x", "proj", "dep-x"),
            aws("env-x", "proj", "*", "preview"),
            aws("elsewhere", account="other"),
        ]
    )
    explanation = index.explain(caller(), None, None)
    assert explanation.chosen == "best"
    assert explanation.error is None
    assert explanation.summary == "chosen: best"
    assert reasons(explanation.candidates) == {
        "best": (True, "chosen"),
        "glob": (True, "less specific than best"),
        "wide": (True, "less specific than best"),
        "off": (False, "disabled"),
        "proj-x": (False, "project differs"),
        "glob-x": (False, "deployment does not match glob"),
        "dep-x": (False, "deployment differs"),
        "env-x": (False, "environment_type differs"),
    }
    assert [c.name for c in explanation.candidates] == sorted(reasons(explanation.candidates))
    assert index.select(caller(), None, None).name == explanation.chosen


def test_explain_tie() -> None:
    index = MappingIndex([aws("a", "proj", "dep-*"), aws("b", "proj", "d*"), aws("c", "*")])
    explanation = index.explain(caller(), None, None)
    assert explanation.chosen is None
    assert explanation.error == "invalid_target"
    assert explanation.summary == "chosen: none (invalid_target)"
    assert reasons(explanation.candidates) == {
        "a": (True, "tie with b"),
        "b": (True, "tie with a"),
        "c": (True, "less specific than a"),
    }


def test_explain_nothing_binds() -> None:
    index = MappingIndex([aws("a", "x"), aws("b", enabled=False)])
    explanation = index.explain(caller(), None, None)
    assert explanation.to_dict() == {
        "chosen": None,
        "error": "unauthorized_client",
        "candidates": [
            {"name": "a", "matched": False, "reason": "project differs"},
            {"name": "b", "matched": False, "reason": "disabled"},
        ],
    }
    assert explanation.summary == "chosen: none (unauthorized_client)"


def test_explain_audience_names_another_accounts_mapping() -> None:
    index = MappingIndex(
        [aws("mine"), aws("theirs", account="other"), aws("unrelated", account="z")]
    )
    explanation = index.explain(caller(), "theirs", None)
    assert explanation.chosen is None
    assert explanation.error == "invalid_target"
    assert reasons(explanation.candidates) == {
        "mine": (True, "not the named mapping"),
        "theirs": (False, "account differs"),
    }


def test_explain_audience_picks_a_less_specific_one() -> None:
    index = MappingIndex([aws("exact", "proj", "dep-main"), aws("wide", "*")])
    explanation = index.explain(caller(), "wide", None)
    assert explanation.chosen == "wide"
    assert reasons(explanation.candidates) == {
        "exact": (True, "not the named mapping"),
        "wide": (True, "chosen"),
    }


def test_explain_resource_and_conflicts(mixed: MappingIndex) -> None:
    explanation = mixed.explain(caller(), None, arn("shared"))
    assert explanation.chosen == "shared-1"
    got = reasons(explanation.candidates)
    assert got["shared-1"] == (True, "chosen")
    assert got["shared-2"] == (True, "less specific than shared-1")
    assert got["orders-any"] == (True, "resource names another target")
    assert "other-account" not in got

    conflict = mixed.explain(caller(), "orders-any", arn("orders"))
    assert (conflict.chosen, conflict.error) == (None, "invalid_target")
    got = reasons(conflict.candidates)
    assert got["orders-any"] == (True, "resource names another target")
    assert got["orders-exact"] == (True, "not the named mapping")

    wip = mixed.explain(caller(), WIP_A, None)
    got = reasons(wip.candidates)
    assert wip.chosen == "gcp-sa"
    assert got["other-account-gcp"] == (False, "account differs")
    assert got["gcp-direct"] == (True, "not the named mapping")


def test_explain_json_shape() -> None:
    explanation = MappingIndex([aws("a")]).explain(caller(), None, None)
    document = json.loads(json.dumps(explanation.to_dict()))
    assert document == {
        "chosen": "a",
        "error": None,
        "candidates": [{"name": "a", "matched": True, "reason": "chosen"}],
    }


def test_explain_agrees_with_select(mixed: MappingIndex) -> None:
    audiences = [None, "orders-any", "disabled", "nope", WIP_A, WIP_B]
    resources = [None, arn("orders"), arn("shared"), arn("tie"), WIP_B, "o@x.com"]
    callers = [
        caller(),
        caller(environment_type="preview"),
        caller(project="p2"),
        caller(account="z"),
    ]
    for who in callers:
        for audience in audiences:
            for resource in resources:
                explanation = mixed.explain(who, audience, resource)
                try:
                    chosen: str | None = mixed.select(who, audience, resource).name
                    error = None
                except OAuthError as exc:
                    chosen, error = None, exc.error
                assert (explanation.chosen, explanation.error) == (chosen, error)
                chosen_lines = [c for c in explanation.candidates if c.reason == "chosen"]
                assert [c.name for c in chosen_lines] == ([chosen] if chosen else [])


# --- scale ----------------------------------------------------------------------------------


def test_hundred_thousand_mappings() -> None:
    """10,000 accounts x 10 mappings: selection still answers correctly for any account."""
    globs = ("dep-*", "d?p-*", "[d]ep-*", "*-main")
    specs = []
    for n in range(10_000):
        account = f"acct-{n}"
        role = arn("common")
        specs += [
            aws(f"a{n}-star", "*", account=account, role=role),
            aws(f"a{n}-proj", "proj", account=account, role=role),
            aws(f"a{n}-env", "proj", "*", "production", account=account, role=arn(f"env-{n}")),
            aws(f"a{n}-glob", "proj", globs[n % 4], account=account, role=arn(f"glob-{n}")),
            aws(f"a{n}-exact", "proj", "dep-main", "preview", account=account),
            aws(f"a{n}-other", f"p{n}", "dep-main", "production", account=account),
            aws(f"a{n}-off", "proj", "dep-main", "production", account=account, enabled=False),
            aws(f"a{n}-dep", "proj", f"dep-{n}", account=account),
            gcp(f"a{n}-gcp", "proj", "nope-*", account=account, wip=WIP_A),
            gcp(
                f"a{n}-gcp2",
                "proj",
                "gcp-*",
                account=account,
                wip=WIP_B,
                service_account=f"sa{n}@x.com",
            ),
        ]
    index = MappingIndex(specs, revision=3)
    assert len(index) == 100_000
    for n in (0, 1, 2, 3, 4_321, 9_999):
        account = f"acct-{n}"
        assert index.select(caller(account), None, None).name == f"a{n}-glob"
        assert index.select(caller(account, deployment=f"dep-{n}"), None, None).name == f"a{n}-dep"
        assert index.select(caller(account, deployment="zzz"), None, None).name == f"a{n}-env"
        assert (
            index.select(
                caller(account, deployment="zzz", environment_type="preview"), None, None
            ).name
            == f"a{n}-proj"
        )
        assert index.select(caller(account, project="q"), None, None).name == f"a{n}-star"
        assert index.select(caller(account, project=f"p{n}"), None, None).name == f"a{n}-other"
        assert index.select(caller(account), f"a{n}-star", None).name == f"a{n}-star"
        assert index.select(caller(account), None, arn("common")).name == f"a{n}-proj"
        assert index.select(caller(account, deployment="gcp-1"), WIP_B, None).name == f"a{n}-gcp2"
        assert outcome(index, caller(account), WIP_A, None) == "unavailable"
        assert outcome(index, caller(account), f"a{(n + 1) % 10_000}-star", None) == "unavailable"
    assert outcome(index, caller("acct-10000"), None, None) == "none"
    assert len(index.explain(caller("acct-5"), None, None).candidates) == 10
