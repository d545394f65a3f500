"""Access review logic (docs/reference.md section 12): the replay behind ``sts mappings plan``,
the target kinds of ``who-can``, and the history's field changes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sts.mappings.index import MappingIndex
from sts.mappings.review import (
    Change,
    Identity,
    Outcome,
    Plan,
    grants,
    printable,
    replay,
    target_kinds,
)
from sts.mappings.spec import AwsTarget, AzureTarget, GcpTarget, MappingSpec

SINCE = datetime(2026, 11, 1, tzinfo=UTC)
WIP = (
    "//iam.googleapis.com/projects/111/locations/global/workloadIdentityPools/zuplo/providers/aa11"
)
SA = "reader@my-gcp.iam.gserviceaccount.com"
CLIENT = "9b2a4c1e-3f5d-4e6a-8b7c-0d1e2f3a4b5c"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
WHO = Identity("acct", "proj", "dep-main", "production")


def arn(name: str) -> str:
    return f"arn:aws:iam::123456789012:role/{name}"


def aws(
    name: str,
    project: str = "proj",
    deployment: str = "*",
    environment_type: str = "*",
    *,
    role: str | None = None,
    enabled: bool = True,
    duration: int = 3600,
) -> MappingSpec:
    return MappingSpec(
        name=name,
        account="acct",
        project=project,
        deployment=deployment,
        environment_type=environment_type,
        enabled=enabled,
        aws=AwsTarget(role_arn=role or arn(name), duration_seconds=duration),
    )


def plan(
    before: list[MappingSpec], after: list[MappingSpec], *callers: tuple[Identity, str]
) -> Plan:
    return replay(MappingIndex(before), MappingIndex(after), callers or ((WHO, "x"),), since=SINCE)


def lines(result: Plan) -> list[str]:
    return [change.line() for change in result.changes]


# (case, stored, planned, expected lines) for WHO, whose trail records only mapping "x" (which
# never exists), so only the request naming nothing is replayed.
CASES: list[tuple[str, list[MappingSpec], list[MappingSpec], list[str]]] = [
    ("nothing changes", [aws("a")], [aws("a")], []),
    (
        "a new mapping binds",
        [],
        [aws("a")],
        [f"+ acct/proj/dep-main/production gains a ({arn('a')})"],
    ),
    (
        "the mapping goes",
        [aws("a")],
        [],
        [f"- acct/proj/dep-main/production loses a ({arn('a')})"],
    ),
    (
        "disabled",
        [aws("a")],
        [aws("a", enabled=False)],
        [f"- acct/proj/dep-main/production loses a ({arn('a')})"],
    ),
    (
        "no longer matches the environment",
        [aws("a", environment_type="production")],
        [aws("a", environment_type="preview")],
        [f"- acct/proj/dep-main/production loses a ({arn('a')})"],
    ),
    (
        "a more specific mapping wins",
        [aws("a")],
        [aws("a"), aws("b", deployment="dep-*")],
        ["~ acct/proj/dep-main/production moves a -> b"],
    ),
    (
        "renamed",
        [aws("a")],
        [aws("b", role=arn("a"))],
        ["~ acct/proj/dep-main/production moves a -> b"],
    ),
    (
        "the same mapping, another role",
        [aws("a")],
        [aws("a", role=arn("z"))],
        [f"~ acct/proj/dep-main/production moves a -> a ({arn('a')} -> {arn('z')})"],
    ),
    ("another field only", [aws("a")], [aws("a", duration=900)], []),
    (
        "a tie is made: the caller is refused",
        [aws("a")],
        [aws("a"), aws("b")],
        [f"- acct/proj/dep-main/production loses a ({arn('a')})"],
    ),
    (
        "a tie is broken",
        [aws("a"), aws("b")],
        [aws("a"), aws("b", environment_type="production")],
        [f"+ acct/proj/dep-main/production gains b ({arn('b')})"],
    ),
    (
        "refused either way, for another reason: no change",
        [aws("a"), aws("b")],
        [],
        [],
    ),
]


@pytest.mark.parametrize(
    ("stored", "planned", "expected"), [case[1:] for case in CASES], ids=[c[0] for c in CASES]
)
def test_the_request_naming_nothing(
    stored: list[MappingSpec], planned: list[MappingSpec], expected: list[str]
) -> None:
    assert lines(plan(stored, planned)) == expected


def test_a_recorded_mapping_the_selection_does_not_give_is_replayed_by_name() -> None:
    # a and b tie: the trail's caller of b named it. Deleting b refuses it; a alone then binds.
    result = plan([aws("a"), aws("b")], [aws("a")], (WHO, "b"))
    assert lines(result) == [
        f"+ acct/proj/dep-main/production gains a ({arn('a')})",
        f"- acct/proj/dep-main/production loses b ({arn('b')})",
    ]
    unnamed, named = result.changes
    assert unnamed.audience is None
    assert named.audience == "b"
    assert named.after == Outcome(None, None, "invalid_target")


def test_a_recorded_mapping_the_selection_gives_is_not_replayed_twice() -> None:
    result = plan([aws("a")], [], (WHO, "a"))
    assert lines(result) == [f"- acct/proj/dep-main/production loses a ({arn('a')})"]


def test_a_named_change_equal_to_the_unnamed_one_is_shown_once() -> None:
    # b was deleted before the plan (the trail still shows it); the file brings it back alone.
    result = plan([], [aws("b")], (WHO, "b"))
    assert lines(result) == [f"+ acct/proj/dep-main/production gains b ({arn('b')})"]


def test_a_named_mapping_that_still_binds_is_no_change() -> None:
    result = plan(
        [aws("a"), aws("b", environment_type="preview")],
        [aws("a"), aws("b", environment_type="*"), aws("c", deployment="dep-main")],
        (WHO, "a"),
    )
    # Unnamed: a -> c; a itself, the unnamed request's mapping before, is not replayed by name.
    assert lines(result) == ["~ acct/proj/dep-main/production moves a -> c"]
    # Named b: refused before (preview only), granted after.
    exact = aws("c", deployment="dep-main")
    result = plan([exact, aws("b", environment_type="preview")], [exact, aws("b")], (WHO, "b"))
    assert lines(result) == [f"+ acct/proj/dep-main/production gains b ({arn('b')})"]
    assert result.changes[0].audience == "b"


def test_identities_in_order_with_counts() -> None:
    other = Identity("acct", "proj", "dep-other", "preview")
    alien = Identity("nobody", "proj", "dep", "production")
    result = plan(
        [aws("a", environment_type="production"), aws("p", environment_type="preview")],
        [aws("p", environment_type="preview", role=arn("q"))],
        (WHO, "a"),
        (other, "p"),
        (WHO, "a"),
        (alien, "a"),
    )
    assert lines(result) == [
        f"- acct/proj/dep-main/production loses a ({arn('a')})",
        f"~ acct/proj/dep-other/preview moves p -> p ({arn('p')} -> {arn('q')})",
    ]
    assert result.counts() == {"identities": 3, "changed": 2, "gains": 0, "loses": 1, "moves": 1}
    assert result.render().splitlines()[-1] == (
        "3 identities replayed since 2026-11-01T00:00:00Z; 2 change: 0 gains, 1 loss, 1 move; "
        "nothing written"
    )


def test_an_empty_trail_has_nothing_to_replay() -> None:
    result = replay(MappingIndex([]), MappingIndex([aws("a")]), [], since=SINCE)
    assert result.render() == (
        "nothing to replay: the audit trail records no caller since 2026-11-01T00:00:00Z"
    )
    assert result.to_dict()["counts"]["identities"] == 0
    assert "nothing to replay" in result.to_dict()["note"]


def test_change_documents() -> None:
    change = Change(WHO, None, Outcome("a", arn("a"), None), Outcome(None, None, "invalid_target"))
    assert change.to_dict() == {
        "line": f"- acct/proj/dep-main/production loses a ({arn('a')})",
        "change": "loses",
        "identity": {
            "account": "acct",
            "project": "proj",
            "deployment": "dep-main",
            "environment_type": "production",
        },
        "audience": None,
        "before": {"mapping": "a", "target": arn("a"), "error": None},
        "after": {"mapping": None, "target": None, "error": "invalid_target"},
    }


def test_claims_cannot_add_lines() -> None:
    who = Identity("acct", "proj", "dep\n+ forged gains x (y)", "production")
    result = plan([], [aws("a", deployment="dep*")], (who, "a"))
    (line,) = lines(result)
    assert "\n" not in line
    assert line.startswith("+ acct/proj/dep\\n+ forged")
    assert printable("a\x1b[31mb\u202e") == "a\\x1b[31mb\\u202e"


@pytest.mark.parametrize(
    ("target", "kinds"),
    [
        (arn("orders"), ("aws_role_arn",)),
        ("arn:aws-cn:iam::123456789012:role/path/orders", ("aws_role_arn",)),
        (SA, ("gcp_service_account",)),
        (WIP, ("gcp_provider",)),
        (CLIENT, ("azure_client_id", "mapping")),
        (CLIENT.upper(), ("azure_client_id",)),
        ("orders-prod", ("mapping",)),
        ("arn:aws:iam::123:role/x", ()),
        ("https://orders.example.com", ()),
        ("Orders", ()),
        ("", ()),
        ("orders prod", ()),
        ("//iam.googleapis.com/projects/1/locations/us/workloadIdentityPools/p/providers/q", ()),
    ],
)
def test_target_kinds(target: str, kinds: tuple[str, ...]) -> None:
    assert target_kinds(target) == kinds


def test_grants_by_kind() -> None:
    gcp_sa = MappingSpec(
        name="with-sa",
        account="acct",
        project="proj",
        gcp=GcpTarget(workload_identity_provider=WIP, service_account=SA),
    )
    gcp_wip = MappingSpec(
        name="federated", account="acct", project="proj", gcp=GcpTarget(WIP), enabled=False
    )
    azure = MappingSpec(
        name="billing", account="acct", project="proj", azure=AzureTarget(TENANT, CLIENT)
    )
    specs = [aws("a"), aws("b", role=arn("a"), enabled=False), gcp_sa, gcp_wip, azure]

    by_role = grants(specs, arn("a"), target_kinds(arn("a")))
    assert [s.name for s in by_role.enabled] == ["a"]
    assert [s.name for s in by_role.disabled] == ["b"]
    assert by_role.audit_targets == [arn("a")]
    assert by_role.audit_mappings == []

    by_wip = grants(specs, WIP, target_kinds(WIP))
    assert [s.name for s in by_wip.enabled] == ["with-sa"]
    assert [s.name for s in by_wip.disabled] == ["federated"]
    # The service account's rows record the service account, not the provider.
    assert by_wip.audit_mappings == ["federated", "with-sa"]

    assert [s.name for s in grants(specs, SA, target_kinds(SA)).enabled] == ["with-sa"]
    upper = grants(specs, CLIENT.upper(), target_kinds(CLIENT.upper()))
    assert [s.name for s in upper.enabled] == ["billing"]
    assert upper.audit_targets == [CLIENT]
    by_name = grants(specs, "federated", target_kinds("federated"))
    assert (by_name.enabled, [s.name for s in by_name.disabled]) == ((), ["federated"])
    assert by_name.audit_mappings == ["federated"]
    assert grants(specs, arn("none"), target_kinds(arn("none"))).enabled == ()
