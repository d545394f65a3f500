"""``sts explain``: which mapping would be chosen for given claims, and why not the others."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sts.cli import cli
from sts.dev.issuer import DevIssuer
from tests.conftest import AUDIENCE
from tests.functional.conftest import seed
from tests.functional.serving import free_port
from tests.phrases import AUDIENCE_NOT_ACCEPTED, SIGNATURE_INVALID, TOKEN_EXPIRED

CLAIMS = {
    "account": "my-account",
    "project": "my-project",
    "deployment": "copper-bedbug-main-53c4947",
    "environment_type": "production",
}


@pytest.fixture
def runner(database_url: str) -> CliRunner:
    seed(database_url).dispose()
    return CliRunner(env={"STS_DATABASE_URL": database_url})


def test_chosen_mapping_first_line_and_reasons(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["explain", "--claims", json.dumps(CLAIMS)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "chosen: orders-prod"
    assert any("orders-preview" in line and "environment_type" in line for line in lines)


def test_json_output(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["explain", "--claims", json.dumps(CLAIMS), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["chosen"] == "orders-prod"
    assert doc["error"] is None
    names = {c["name"]: c for c in doc["candidates"]}
    assert names["orders-prod"]["matched"] is True
    assert names["orders-preview"]["matched"] is False
    assert set(names["orders-prod"]) == {"name", "matched", "reason"}


@pytest.mark.parametrize(
    ("claims", "audience", "error"),
    [
        ({**CLAIMS, "account": "nobody"}, None, "unauthorized_client"),
        (CLAIMS, "analytics-gcp", "invalid_target"),
        (CLAIMS, "no-such-mapping", "invalid_target"),
    ],
)
def test_nothing_chosen_is_exit_1(
    runner: CliRunner, claims: dict[str, str], audience: str | None, error: str
) -> None:
    args = ["explain", "--claims", json.dumps(claims)]
    if audience:
        args += ["--audience", audience]
    result = runner.invoke(cli, args)
    assert result.exit_code == 1
    assert result.output.splitlines()[0] == f"chosen: none ({error})"
    as_json = runner.invoke(cli, [*args, "--json"])
    assert as_json.exit_code == 1
    assert json.loads(as_json.output)["error"] == error


@pytest.mark.parametrize(
    "claims",
    [
        "not json",
        "[1]",
        json.dumps({**CLAIMS, "account": ""}),
        json.dumps({k: v for k, v in CLAIMS.items() if k != "deployment"}),
        json.dumps({**CLAIMS, "environment_type": "staging"}),
    ],
)
def test_bad_claims_are_exit_2(runner: CliRunner, claims: str) -> None:
    result = runner.invoke(cli, ["explain", "--claims", claims])
    assert result.exit_code == 2
    assert "--claims" in result.output


def test_explain_reads_a_real_token(runner: CliRunner, issuer: DevIssuer, tmp_path: Path) -> None:
    token = issuer.mint(audience="https://sts.example.test", **CLAIMS)
    for value, stdin in ((token, None), ("-", token), (f"@{tmp_path / 't.jwt'}", None)):
        (tmp_path / "t.jwt").write_text(token + "\n")
        result = runner.invoke(cli, ["explain", "--token", value], input=stdin)
        assert result.exit_code == 0, result.output
        assert result.output.splitlines()[0] == "chosen: orders-prod"
    other = issuer.mint(audience="x", environment_type="preview")
    result = runner.invoke(cli, ["explain", "--token", other, "--json"])
    assert json.loads(result.output)["chosen"] == "orders-preview"


@pytest.mark.parametrize(
    "args",
    [
        ["--token", "not.a"],
        ["--token", "a.!!!.c"],
        ["--token", "@/nonexistent/file"],
        [],
        ["--claims", json.dumps(CLAIMS), "--token", "a.b.c"],
    ],
)
def test_bad_token_arguments_are_exit_2(runner: CliRunner, args: list[str]) -> None:
    result = runner.invoke(cli, ["explain", *args])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "claims",
    [
        '{"account": ' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"account": ' + '{"a": ' * 101 + "1" + "}" * 101 + "}",
    ],
    ids=["100000-deep", "102-deep"],
)
def test_claims_nested_too_deep_are_exit_2_one_line(runner: CliRunner, claims: str) -> None:
    result = runner.invoke(cli, ["explain", "--claims", claims])
    assert result.exit_code == 2, result.output
    assert result.stderr == "error: --claims: nested deeper than 100 levels\n"


def test_claims_nested_one_hundred_levels_are_read(runner: CliRunner) -> None:
    claims = {**CLAIMS, "extra": json.loads("[" * 99 + "]" * 99)}
    result = runner.invoke(cli, ["explain", "--claims", json.dumps(claims)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("chosen: orders-prod\n")


@pytest.fixture
def verifying(database_url: str, issuer: DevIssuer) -> CliRunner:
    """explain with the service's token configuration: it verifies --token as POST /token does."""
    seed(database_url).dispose()
    return CliRunner(
        env={
            "STS_DATABASE_URL": database_url,
            "STS_TRUSTED_ISSUERS": issuer.url,
            "STS_AUDIENCE": AUDIENCE,
            "STS_ALLOW_HTTP_LOOPBACK": "true",
        }
    )


def test_a_token_the_service_accepts_is_said_to_be_verified(
    verifying: CliRunner, issuer: DevIssuer
) -> None:
    result = verifying.invoke(cli, ["explain", "--token", issuer.mint(audience=AUDIENCE)])
    assert result.exit_code == 0, result.output
    first, second = result.output.splitlines()[:2]
    assert first == "chosen: orders-prod"
    assert second.startswith("  token: accepted (signature, issuer, audience, expiry")
    as_json = verifying.invoke(
        cli, ["explain", "--token", issuer.mint(audience=AUDIENCE), "--json"]
    )
    assert json.loads(as_json.output)["token"] == {
        "accepted": True,
        "error": None,
        "reason": second.removeprefix("  token: "),
    }


@pytest.mark.parametrize(
    ("make", "phrase"),
    [
        (lambda i: i.mint(audience=AUDIENCE, exp=1_000_000_000, iat=999_999_000), TOKEN_EXPIRED),
        (lambda i: i.mint(audience="https://someone-else.example"), AUDIENCE_NOT_ACCEPTED),
        (lambda i: i.mint(audience=AUDIENCE)[:-6] + "AAAAAA", SIGNATURE_INVALID),
    ],
)
def test_a_token_the_service_refuses_is_chosen_none_with_its_reason(
    verifying: CliRunner, issuer: DevIssuer, make: Any, phrase: str
) -> None:
    token = make(issuer)
    result = verifying.invoke(cli, ["explain", "--token", token])
    assert result.exit_code == 1, result.output
    assert result.output.splitlines() == [
        "chosen: none (invalid_request)",
        f"  token refused: {phrase}",
    ]
    as_json = json.loads(verifying.invoke(cli, ["explain", "--token", token, "--json"]).output)
    assert as_json["chosen"] is None
    assert as_json["error"] == "invalid_request"
    assert as_json["token"] == {"accepted": False, "error": "invalid_request", "reason": phrase}


def test_keys_out_of_reach_say_the_token_was_not_verified(
    database_url: str, issuer: DevIssuer
) -> None:
    seed(database_url).dispose()
    port = free_port()
    unreachable = f"http://127.0.0.1:{port}/v1/client-auth/auth_dev"
    runner = CliRunner(
        env={
            "STS_DATABASE_URL": database_url,
            "STS_TRUSTED_ISSUERS": unreachable,
            "STS_AUDIENCE": AUDIENCE,
            "STS_ALLOW_HTTP_LOOPBACK": "true",
        }
    )
    token = issuer.mint(issuer.claims(AUDIENCE, iss=unreachable))
    result = runner.invoke(cli, ["explain", "--token", token])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "chosen: orders-prod"
    assert lines[1].startswith("  token: not verified: the issuer's keys could not be fetched")
