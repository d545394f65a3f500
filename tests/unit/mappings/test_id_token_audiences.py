"""``gcp.id_token_audiences`` (docs/reference.md, "GCP ID tokens"): the file format, the round
trip, selection by ``resource``, the credential key, ``check_request`` and
:func:`id_token_audience`, and the commands (``sts mappings apply``/``list``, ``sts explain``)
on a real database."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from sts.cli import cli
from sts.errors import InvalidScope, InvalidTarget, OAuthError
from sts.identity.principal import Principal
from sts.mappings.document import MappingFileError, dump_json, parse_document, spec_from_dict
from sts.mappings.index import (
    AUDIENCE_NOT_ALLOWED,
    CHOOSE_AUDIENCE,
    ID_TOKEN_REQUESTED,
    NOT_AVAILABLE,
    TOKEN_TYPE_NOT_AVAILABLE,
    MappingIndex,
    check_request,
    id_token_audience,
)
from sts.mappings.spec import (
    DEFAULT_GCP_SCOPE,
    AwsTarget,
    AzureTarget,
    GcpTarget,
    MappingSpec,
)
from sts.protocol import ACCESS_TOKEN_TYPE, AWS_CREDENTIALS_TOKEN_TYPE, ID_TOKEN_TYPE

WIP = (
    "//iam.googleapis.com/projects/123456789/locations/global/"
    "workloadIdentityPools/zuplo/providers/zuplo"
)
SA = "invoker@my-gcp.iam.gserviceaccount.com"
ORDERS = "https://orders-abc123-uc.a.run.app"
BILLING = "https://billing-abc123-uc.a.run.app"
READ_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"
AUDIENCES = "mappings[0].gcp.id_token_audiences"


def gcp(
    name: str = "orders-run",
    audiences: tuple[str, ...] = (ORDERS,),
    *,
    service_account: str | None = SA,
    scopes: tuple[str, ...] = (DEFAULT_GCP_SCOPE,),
    deployment: str = "*",
) -> MappingSpec:
    return MappingSpec(
        name=name,
        account="acct",
        project="proj",
        deployment=deployment,
        gcp=GcpTarget(
            workload_identity_provider=WIP,
            service_account=service_account,
            scopes=scopes,
            id_token_audiences=audiences,
        ),
    )


AWS = MappingSpec(
    name="orders-aws",
    account="acct",
    project="proj",
    aws=AwsTarget(role_arn="arn:aws:iam::123456789012:role/orders"),
)
AZURE = MappingSpec(
    name="orders-azure",
    account="acct",
    project="proj",
    azure=AzureTarget(
        tenant_id="72f988bf-86f1-41af-91ab-2d7cd011db47",
        client_id="9b2a4c1e-3f5d-4e6a-8b7c-0d1e2f3a4b5c",
    ),
)


def principal(deployment: str = "orders-main-1") -> Principal:
    return Principal(
        issuer="https://issuer.test",
        sub="client-1",
        account="acct",
        project="proj",
        deployment=deployment,
        environment_type="production",
        audiences=frozenset({"https://sts.example.test"}),
    )


# -- the file format ---------------------------------------------------------------------


def entry(gcp_lines: str, name: str = "orders-run") -> str:
    """One entry; its gcp block is the provider (line 6), then ``gcp_lines`` from line 7."""
    return (
        "mappings:\n"
        f"  - name: {name}\n"
        "    account: acct\n"
        "    project: proj\n"
        "    gcp:\n"
        f"      workload_identity_provider: {WIP}\n"
        f"{gcp_lines}"
    )


def with_sa(audiences: str) -> str:
    """The service account on line 7, ``id_token_audiences`` on line 8."""
    return entry(f"      service_account: {SA}\n      id_token_audiences: {audiences}\n")


def test_the_contract_example_parses() -> None:
    (spec,) = parse_document(with_sa(f"[{ORDERS}]"), "mappings.yaml")
    assert spec.gcp == GcpTarget(
        workload_identity_provider=WIP, service_account=SA, id_token_audiences=(ORDERS,)
    )


@pytest.mark.parametrize(
    "audience",
    [
        ORDERS,
        "https://example.com",
        "https://example.com/",
        "https://api.example.com:8443/orders?region=eu",
        "https://[2001:db8::1]/x",
        "https://xn--bcher-kva.example/",
    ],
)
def test_valid_audiences(audience: str) -> None:
    (spec,) = parse_document(with_sa(json.dumps([audience])))
    assert spec.gcp is not None
    assert spec.gcp.id_token_audiences == (audience,)


def test_absent_and_null_mean_none() -> None:
    for document in (entry(f"      service_account: {SA}\n"), with_sa("null")):
        (spec,) = parse_document(document)
        assert spec.gcp is not None
        assert spec.gcp.id_token_audiences == ()


def test_order_is_kept() -> None:
    (spec,) = parse_document(with_sa(f"[{BILLING}, {ORDERS}]"))
    assert spec.gcp is not None
    assert spec.gcp.id_token_audiences == (BILLING, ORDERS)


# (document, line, path, problem fragment)
ERRORS = [
    (
        entry(f"      id_token_audiences: [{ORDERS}]\n"),
        7,
        AUDIENCES,
        "requires service_account",
    ),
    (
        entry(f"      service_account: null\n      id_token_audiences: [{ORDERS}]\n"),
        8,
        AUDIENCES,
        "requires service_account",
    ),
    (with_sa("[]"), 8, AUDIENCES, "non-empty list"),
    (with_sa(ORDERS), 8, AUDIENCES, "non-empty list"),
    (with_sa("{a: b}"), 8, AUDIENCES, "non-empty list"),
    (with_sa("[1]"), 8, f"{AUDIENCES}[0]", "must be a string"),
    (with_sa("[null]"), 8, f"{AUDIENCES}[0]", "must be a string"),
    (with_sa('[""]'), 8, f"{AUDIENCES}[0]", "https:// URL"),
    (with_sa("[http://orders.example.com]"), 8, f"{AUDIENCES}[0]", "https:// URL"),
    (with_sa("[orders.example.com]"), 8, f"{AUDIENCES}[0]", "https:// URL"),
    (with_sa('["HTTPS://orders.example.com"]'), 8, f"{AUDIENCES}[0]", "https:// URL"),
    (with_sa('["https://"]'), 8, f"{AUDIENCES}[0]", "https:// URL"),
    (with_sa('["https:///path"]'), 8, f"{AUDIENCES}[0]", "https:// URL"),
    (with_sa('["https://:443/"]'), 8, f"{AUDIENCES}[0]", "https:// URL"),
    (with_sa('["https://user@orders.example.com"]'), 8, f"{AUDIENCES}[0]", "userinfo"),
    (with_sa('["https://user:pw@orders.example.com"]'), 8, f"{AUDIENCES}[0]", "userinfo"),
    (with_sa('["https://@orders.example.com"]'), 8, f"{AUDIENCES}[0]", "userinfo"),
    (with_sa('["https://orders.example.com/#top"]'), 8, f"{AUDIENCES}[0]", "fragment"),
    (with_sa('["https://orders.example.com#"]'), 8, f"{AUDIENCES}[0]", "fragment"),
    (with_sa('["https://orders.example.com:99999/"]'), 8, f"{AUDIENCES}[0]", "https:// URL"),
    (with_sa('["https://orders.example.com:x/"]'), 8, f"{AUDIENCES}[0]", "https:// URL"),
    (with_sa('["https://orders example.com"]'), 8, f"{AUDIENCES}[0]", "https:// URL"),
    (with_sa('["https://orders.example.com/a b"]'), 8, f"{AUDIENCES}[0]", "https:// URL"),
    (with_sa('["https://orders.example.com/\\u0007"]'), 8, f"{AUDIENCES}[0]", "U+0007"),
    (with_sa('["https://orders.example.com/\\u202e"]'), 8, f"{AUDIENCES}[0]", "U+202E"),
    (with_sa(json.dumps(["https://a.example/" + "x" * 2048])), 8, f"{AUDIENCES}[0]", "2048"),
    (with_sa(f"[{ORDERS}, {ORDERS}]"), 8, f"{AUDIENCES}[1]", "duplicate"),
    (
        entry(
            f"      service_account: {SA}\n      id_token_audiences:\n"
            f"        - {ORDERS}\n        - http://billing.example.com\n"
        ),
        10,
        f"{AUDIENCES}[1]",
        "https:// URL",
    ),
]


@pytest.mark.parametrize(("document", "line", "path", "problem"), ERRORS)
def test_invalid_audiences_name_the_line_and_path(
    document: str, line: int, path: str, problem: str
) -> None:
    with pytest.raises(MappingFileError) as caught:
        parse_document(document, "mappings.yaml")
    error = caught.value
    assert (error.line, error.path) == (line, path), str(error)
    assert problem in error.problem, error.problem
    assert str(error).startswith(f"mappings.yaml:{line}: {path}: ")


def test_every_entrys_mistake_is_reported_in_one_run() -> None:
    text = (
        with_sa("[http://orders.example.com]")
        + "  - name: Bad-Name\n    account: acct\n    project: proj\n"
        f"    gcp: {{workload_identity_provider: {WIP}, id_token_audiences: [{ORDERS}]}}\n"
    )
    with pytest.raises(MappingFileError) as caught:
        parse_document(text, "m.yaml")
    assert [str(e) for e in caught.value.all] == [
        "m.yaml:8: mappings[0].gcp.id_token_audiences[0]: must be an https:// URL with a host, "
        "without userinfo or fragment",
        "m.yaml:9: mappings[1].name: must match [a-z0-9][a-z0-9-]{0,62}",
        "m.yaml:12: mappings[1].gcp.id_token_audiences: requires service_account "
        "(ID tokens are issued for a service account)",
    ]


def test_spec_from_dict_checks_them_too() -> None:
    """Rows read back from the database pass the same rules."""
    document = {
        "name": "x",
        "account": "a",
        "project": "p",
        "gcp": {"workload_identity_provider": WIP, "id_token_audiences": [ORDERS]},
    }
    with pytest.raises(MappingFileError, match="requires service_account"):
        spec_from_dict(document, "role_mappings[x]")


# -- the round trip, the targets and the credential key ----------------------------------


def test_to_document_lists_them_and_parse_takes_them_back() -> None:
    spec = gcp(audiences=(BILLING, ORDERS))
    assert spec.to_document()["gcp"]["id_token_audiences"] == [BILLING, ORDERS]
    assert parse_document(dump_json([spec])) == [spec]


def test_no_audiences_leave_the_document_and_fingerprint_as_before() -> None:
    """An empty list would not be taken back by apply; and existing keys must not move."""
    spec = gcp(audiences=())
    assert "id_token_audiences" not in spec.to_document()["gcp"]
    assert parse_document(dump_json([spec])) == [spec]
    before = MappingSpec(
        name="orders-run",
        account="acct",
        project="proj",
        gcp=GcpTarget(workload_identity_provider=WIP, service_account=SA),
    )
    assert spec.fingerprint == before.fingerprint


def test_the_fingerprint_follows_the_list() -> None:
    prints = {
        gcp(audiences=()).fingerprint,
        gcp(audiences=(ORDERS,)).fingerprint,
        gcp(audiences=(BILLING,)).fingerprint,
        gcp(audiences=(ORDERS, BILLING)).fingerprint,
    }
    assert len(prints) == 4
    assert gcp(audiences=(ORDERS,)).fingerprint == gcp(audiences=(ORDERS,)).fingerprint


def test_targets_are_the_service_account_then_the_audiences() -> None:
    assert gcp(audiences=(ORDERS, BILLING)).targets == (SA, ORDERS, BILLING)
    assert gcp(audiences=()).targets == (SA,)


# -- selection by resource ---------------------------------------------------------------


def two_services() -> MappingIndex:
    return MappingIndex(
        [gcp("orders-run", (ORDERS,)), gcp("billing-run", (BILLING,)), AWS],
    )


def test_resource_naming_an_audience_selects_its_mapping() -> None:
    index = two_services()
    assert index.select(principal(), None, ORDERS).name == "orders-run"
    assert index.select(principal(), None, BILLING).name == "billing-run"
    assert index.select(principal(), "billing-run", BILLING).name == "billing-run"


@pytest.mark.parametrize(
    ("audience", "resource"),
    [
        (None, "https://other-abc123-uc.a.run.app"),
        (None, ORDERS + "/"),
        ("orders-run", BILLING),
    ],
)
def test_resource_naming_no_audience_of_the_mapping_is_not_available(
    audience: str | None, resource: str
) -> None:
    with pytest.raises(InvalidTarget) as caught:
        two_services().select(principal(), audience, resource)
    assert caught.value.description == NOT_AVAILABLE


def test_explain_shows_the_choice_by_audience() -> None:
    result = two_services().explain(principal(), None, BILLING)
    assert result.chosen == "billing-run"
    reasons = {c.name: c.reason for c in result.candidates}
    assert reasons["billing-run"] == "chosen"
    assert reasons["orders-run"] == "resource names another target"


# -- check_request -----------------------------------------------------------------------

CLOUD = (DEFAULT_GCP_SCOPE,)
NOT_AVAILABLE_TYPE = ("target", TOKEN_TYPE_NOT_AVAILABLE)
SCOPE_REFUSED = ("scope", "scope not allowed by the mapping")

# (mapping, scope, requested_token_type, granted scopes or (kind, description))
CHECKS: list[tuple[MappingSpec, str | None, str | None, object]] = [
    (gcp(), None, ID_TOKEN_TYPE, CLOUD),
    (gcp(), "", ID_TOKEN_TYPE, CLOUD),
    (gcp(), "   ", ID_TOKEN_TYPE, CLOUD),
    (gcp(scopes=(READ_SCOPE,)), None, ID_TOKEN_TYPE, CLOUD),
    (gcp(), DEFAULT_GCP_SCOPE, ID_TOKEN_TYPE, SCOPE_REFUSED),
    (gcp(scopes=(READ_SCOPE,)), READ_SCOPE, ID_TOKEN_TYPE, SCOPE_REFUSED),
    (gcp(audiences=()), None, ID_TOKEN_TYPE, NOT_AVAILABLE_TYPE),
    (gcp(audiences=(), service_account=None), None, ID_TOKEN_TYPE, NOT_AVAILABLE_TYPE),
    (AWS, None, ID_TOKEN_TYPE, NOT_AVAILABLE_TYPE),
    (AZURE, None, ID_TOKEN_TYPE, NOT_AVAILABLE_TYPE),
    # An access token from a mapping with audiences: as before.
    (gcp(scopes=(READ_SCOPE,)), None, None, (READ_SCOPE,)),
    (gcp(scopes=(READ_SCOPE,)), None, "", (READ_SCOPE,)),
    (gcp(scopes=(READ_SCOPE,)), None, ACCESS_TOKEN_TYPE, (READ_SCOPE,)),
    (gcp(), None, AWS_CREDENTIALS_TOKEN_TYPE, NOT_AVAILABLE_TYPE),
    (gcp(), None, "urn:ietf:params:oauth:token-type:jwt", NOT_AVAILABLE_TYPE),
    (gcp(), None, ID_TOKEN_TYPE.upper(), NOT_AVAILABLE_TYPE),
]


@pytest.mark.parametrize(("mapping", "scope", "requested", "expected"), CHECKS)
def test_check_request(
    mapping: MappingSpec, scope: str | None, requested: str | None, expected: object
) -> None:
    if isinstance(expected, tuple) and expected and expected[0] in ("target", "scope"):
        kind = InvalidTarget if expected[0] == "target" else InvalidScope
        with pytest.raises(kind) as caught:
            check_request(mapping, scope, requested)
        assert caught.value.description == expected[1]
    else:
        assert check_request(mapping, scope, requested) == expected


def test_id_token_requested_is_the_rfc_8693_id_token_type() -> None:
    assert ID_TOKEN_REQUESTED == "urn:ietf:params:oauth:token-type:id_token"


# -- id_token_audience -------------------------------------------------------------------

ONE = gcp(audiences=(ORDERS,))
TWO = gcp(audiences=(ORDERS, BILLING))
NOT_ALLOWED = ("error", AUDIENCE_NOT_ALLOWED)
CHOOSE = ("error", CHOOSE_AUDIENCE)
NO_TYPE = ("error", TOKEN_TYPE_NOT_AVAILABLE)

# (mapping, resource, requested_token_type, audience or ("error", description))
AUDIENCE_CASES: list[tuple[MappingSpec, str | None, str | None, object]] = [
    # No ID token asked for: no audience, whatever the resource.
    (ONE, None, None, None),
    (ONE, ORDERS, None, None),
    (ONE, ORDERS, "", None),
    (ONE, ORDERS, ACCESS_TOKEN_TYPE, None),
    (AWS, None, AWS_CREDENTIALS_TOKEN_TYPE, None),
    # One audience: named, left out, or the mapping named by its service account.
    (ONE, ORDERS, ID_TOKEN_TYPE, ORDERS),
    (ONE, None, ID_TOKEN_TYPE, ORDERS),
    (ONE, "", ID_TOKEN_TYPE, ORDERS),
    (ONE, SA, ID_TOKEN_TYPE, ORDERS),
    # Several: resource must name one.
    (TWO, ORDERS, ID_TOKEN_TYPE, ORDERS),
    (TWO, BILLING, ID_TOKEN_TYPE, BILLING),
    (TWO, None, ID_TOKEN_TYPE, CHOOSE),
    (TWO, "", ID_TOKEN_TYPE, CHOOSE),
    (TWO, SA, ID_TOKEN_TYPE, CHOOSE),
    # Anything else is not this mapping's audience.
    (ONE, BILLING, ID_TOKEN_TYPE, NOT_ALLOWED),
    (ONE, ORDERS + "/", ID_TOKEN_TYPE, NOT_ALLOWED),
    (ONE, ORDERS.upper(), ID_TOKEN_TYPE, NOT_ALLOWED),
    (ONE, WIP, ID_TOKEN_TYPE, NOT_ALLOWED),
    (TWO, "https://other.example.com", ID_TOKEN_TYPE, NOT_ALLOWED),
    # No audiences at all: the mapping issues no ID token.
    (gcp(audiences=()), None, ID_TOKEN_TYPE, NO_TYPE),
    (gcp(audiences=()), SA, ID_TOKEN_TYPE, NO_TYPE),
    (AWS, None, ID_TOKEN_TYPE, NO_TYPE),
    (AZURE, None, ID_TOKEN_TYPE, NO_TYPE),
]


@pytest.mark.parametrize(("mapping", "resource", "requested", "expected"), AUDIENCE_CASES)
def test_id_token_audience(
    mapping: MappingSpec, resource: str | None, requested: str | None, expected: object
) -> None:
    if isinstance(expected, tuple):
        with pytest.raises(InvalidTarget) as caught:
            id_token_audience(mapping, resource, requested)
        assert caught.value.error == "invalid_target"
        assert caught.value.description == expected[1]
    else:
        assert id_token_audience(mapping, resource, requested) == expected


def test_the_phrases_are_fixed_and_echo_nothing() -> None:
    secret = "https://secret-abc123-uc.a.run.app"
    for mapping, resource in ((ONE, secret), (TWO, None)):
        with pytest.raises(OAuthError) as caught:
            id_token_audience(mapping, resource, ID_TOKEN_TYPE)
        assert secret not in str(caught.value)
        assert caught.value.description in (AUDIENCE_NOT_ALLOWED, CHOOSE_AUDIENCE)


# -- the commands on a real database ------------------------------------------------------

DOCUMENT = f"""\
mappings:
  - name: orders-run
    account: my-account
    project: my-project
    gcp:
      workload_identity_provider: {WIP}
      service_account: {SA}
      id_token_audiences: [{ORDERS}, {BILLING}]
  - name: reports-run
    account: my-account
    project: my-project
    gcp:
      workload_identity_provider: {WIP}
      service_account: reports@my-gcp.iam.gserviceaccount.com
      id_token_audiences: [https://reports-abc123-uc.a.run.app]
"""
CLAIMS = {
    "account": "my-account",
    "project": "my-project",
    "deployment": "copper-bedbug-main-53c4947",
    "environment_type": "production",
}


Run = Callable[..., Result]


@pytest.fixture
def run(database_url: str) -> Run:
    def invoke(*args: str) -> Result:
        env = {"STS_DATABASE_URL": database_url, "USER": "alice"}
        return CliRunner().invoke(cli, list(args), env=env)

    assert invoke("db", "upgrade").exit_code == 0
    return invoke


def write(tmp_path: Path, text: str, name: str = "mappings.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_apply_list_json_and_apply_again_changes_nothing(run: Run, tmp_path: Path) -> None:
    applied = run("mappings", "apply", write(tmp_path, DOCUMENT))
    assert applied.exit_code == 0, applied.output
    listed = run("mappings", "list", "--json")
    assert listed.exit_code == 0
    entries = {entry["name"]: entry for entry in json.loads(listed.stdout)}
    assert entries["orders-run"]["gcp"]["id_token_audiences"] == [ORDERS, BILLING]
    again = run("mappings", "apply", "--prune", write(tmp_path, listed.stdout, "listed.json"))
    assert again.exit_code == 0, again.output
    assert again.stdout.strip() == "no changes"
    # A changed list is a change (and so a new credential key).
    changed = DOCUMENT.replace(f"[{ORDERS}, {BILLING}]", f"[{ORDERS}]")
    updated = run("mappings", "apply", write(tmp_path, changed, "changed.yaml"))
    assert updated.exit_code == 0
    assert "id_token_audiences" in updated.stdout


def test_apply_refuses_bad_audiences_with_every_line(run: Run, tmp_path: Path) -> None:
    bad = (
        DOCUMENT.replace(f"[{ORDERS}, {BILLING}]", "[http://orders.example.com]")
        .replace("      service_account: reports@my-gcp.iam.gserviceaccount.com\n", "")
        .replace("name: reports-run", "name: Reports")
    )
    path = write(tmp_path, bad)
    result = run("mappings", "apply", path)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: {path}:8: mappings[0].gcp.id_token_audiences[0]: must be an https:// URL "
        "with a host, without userinfo or fragment",
        f"error: {path}:9: mappings[1].name: must match [a-z0-9][a-z0-9-]{{0,62}}",
        f"error: {path}:14: mappings[1].gcp.id_token_audiences: requires service_account "
        "(ID tokens are issued for a service account)",
    ]
    assert run("mappings", "list", "--json").stdout == "[]\n"


def test_explain_picks_the_mapping_by_audience(run: Run, tmp_path: Path) -> None:
    assert run("mappings", "apply", write(tmp_path, DOCUMENT)).exit_code == 0
    claims = json.dumps(CLAIMS)
    tie = run("explain", "--claims", claims)
    assert tie.output.splitlines()[0] == "chosen: none (invalid_target)"
    for audience, chosen in ((BILLING, "orders-run"), (ORDERS, "orders-run")):
        result = run("explain", "--claims", claims, "--resource", audience)
        assert result.exit_code == 0, result.output
        assert result.output.splitlines()[0] == f"chosen: {chosen}"
    result = run("explain", "--claims", claims, "--resource", "https://reports-abc123-uc.a.run.app")
    assert result.output.splitlines()[0] == "chosen: reports-run"
    assert "orders-run: resource names another target" in result.output
    unknown = run("explain", "--claims", claims, "--resource", "https://x.example.com", "--json")
    assert unknown.exit_code == 1
    assert json.loads(unknown.output)["error"] == "invalid_target"


def test_the_readme_example_is_a_mapping_apply_takes() -> None:
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    section = readme.split("**GCP ID tokens**", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    (spec,) = parse_document("mappings:\n" + block, "README.md")
    assert spec.gcp is not None
    assert spec.gcp.id_token_audiences == ("https://orders-abc123-uc.a.run.app",)
    assert "`resource=https://orders-abc123-uc.a.run.app`" in section
