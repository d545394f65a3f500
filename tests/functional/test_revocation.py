"""Revocation (docs/reference.md section 11), through the real CLI and a real ``sts serve`` with
two workers, on SQLite and PostgreSQL, with and without Redis: a revoked identity is refused on
every worker within 5 s (cached credentials and repeated requests included) while its neighbour
is served, is served again within 5 s of ``lift`` with fresh credentials, and bad input changes
nothing."""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import requests

from sts.dev.aws_emulator import AwsEmulator
from sts.dev.gcp_emulator import GcpEmulator
from sts.dev.issuer import DevIssuer
from tests.conftest import AUDIENCE
from tests.functional.conftest import DEFAULT_MAPPINGS, GRANT, ID_TOKEN, ROLE
from tests.functional.serving import run_sts, serve_env, sts_serve

REDIS_URL = "redis://127.0.0.1:6379/0?socket_timeout=5&socket_connect_timeout=5"
#: The contract's bound for every replica to refuse (or serve again).
WITHIN = 5.0
#: "Not stuck" bound of this test's polls: generous for a loaded machine; the time measured
#: against WITHIN is reported, and asserted only with a margin for the machine's load.
POLL_DEADLINE = 20.0


def token(issuer: DevIssuer, deployment: str, **claims: str) -> str:
    return issuer.mint(audience=AUDIENCE, deployment=deployment, **claims)


def post(url: str, subject_token: str) -> requests.Response:
    data = {"grant_type": GRANT, "subject_token": subject_token, "subject_token_type": ID_TOKEN}
    # A new connection per request: any worker may take it.
    return requests.post(url + "/token", data=data, timeout=30, headers={"Connection": "close"})


def on_every_worker(url: str, subject_token: str, status: int, rounds: int = 12) -> float:
    """Seconds until ``rounds`` requests in a row on new connections all answer ``status``."""
    started = time.monotonic()
    streak = 0
    while streak < rounds:
        assert time.monotonic() - started < POLL_DEADLINE, f"never {status} on every worker"
        streak = streak + 1 if post(url, subject_token).status_code == status else 0
    return time.monotonic() - started


def served_by_both(url: str, subject_token: str, deployment: str, log: Path) -> None:
    """Ask until the access log shows both workers answering ``deployment`` (so both cache it)."""
    deadline = time.monotonic() + POLL_DEADLINE
    while True:
        # A worker still loading its mappings or key set on a loaded machine answers 503 with
        # Retry-After (sts_serve waited for one worker's /readyz only): asked again, it serves.
        answer = post(url, subject_token)
        assert answer.status_code in (200, 503), answer.text
        assert time.monotonic() < deadline, "one worker never answered 200"
        pids = {
            doc.get("pid")
            for doc in (
                json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")
            )
            if doc.get("deployment") == deployment and doc.get("outcome") == "ok"
        }
        if len(pids) >= 2:
            return
        assert time.monotonic() < deadline, "one worker never answered"


def audit_rows(env: dict[str, str], deployment: str) -> int:
    listed = run_sts("audit", "list", "--deployment", deployment, "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    return len(json.loads(listed.stdout))


def logged_refusals(log: Path) -> list[dict[str, object]]:
    """The access lines of revoked requests, once the log flusher has written some."""
    deadline = time.monotonic() + POLL_DEADLINE
    while True:
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        found = [line for line in lines if line.get("reason") == "identity revoked"]
        if found:
            return found
        assert time.monotonic() < deadline, "no access line of a revoked request"
        time.sleep(0.1)


@pytest.fixture(params=["no-redis", "redis"])
def env(
    request: pytest.FixtureRequest,
    database_url: str,
    issuer: DevIssuer,
    aws: AwsEmulator,
    gcp: GcpEmulator,
    tmp_path: Path,
) -> dict[str, str]:
    extra: dict[str, str] = {}
    if request.param == "redis":
        key = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
        extra = {"STS_REDIS_URL": REDIS_URL, "STS_CACHE_ENCRYPTION_KEY": key}
    env = serve_env(database_url, issuer, aws, gcp, **extra)
    mappings = tmp_path / "mappings.yaml"
    mappings.write_text(DEFAULT_MAPPINGS)
    assert run_sts("db", "upgrade", env=env).returncode == 0
    assert run_sts("mappings", "apply", str(mappings), env=env).returncode == 0
    return env


@pytest.fixture
def server(env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    with sts_serve(env, tmp_path / "serve.log", "--workers", "2") as url:
        yield url


def test_a_revoked_deployment_is_refused_everywhere_and_its_neighbour_served(
    server: str, env: dict[str, str], issuer: DevIssuer, aws: AwsEmulator, tmp_path: Path
) -> None:
    bad, good = token(issuer, "compromised"), token(issuer, "neighbour")
    first = post(server, bad)
    assert first.status_code == 200, first.text
    assert post(server, good).status_code == 200
    # Cached on both workers (and the repeated bodies remembered there).
    for deployment, subject_token in (("compromised", bad), ("neighbour", good)):
        served_by_both(server, subject_token, deployment, tmp_path / "serve.log")
    calls = len(aws.requests)
    rows = audit_rows(env, "compromised")

    added = run_sts(
        "revoke", "add", "--account", "my-account", "--deployment", "compromised",
        "--reason", "incident 42", "--actor", "oncall", env=env,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith("revoked: ")
    took = on_every_worker(server, bad, 400)
    print(f"refused on every worker {took:.2f} s after revoke add exited")
    assert took < WITHIN * 2, f"refused on every worker {took:.1f} s after revoke add"
    refused = post(server, bad)
    assert refused.json() == {
        "error": "unauthorized_client",
        "error_description": "identity revoked",
    }
    assert post(server, good).status_code == 200
    assert post(server, token(issuer, "compromised", project="other")).status_code in (400,)
    assert len(aws.requests) == calls  # no cloud call for a revoked identity, none for the cached
    assert audit_rows(env, "compromised") == rows  # and no audit row

    revoked_lines = logged_refusals(tmp_path / "serve.log")
    assert {line["outcome"] for line in revoked_lines} == {"unauthorized_client"}
    metrics = requests.get(server + "/metrics", timeout=10).text
    assert 'sts_exchanges_total{cache="none",outcome="unauthorized_client"' in metrics

    listed = json.loads(run_sts("revoke", "list", "--json", env=env).stdout)
    assert len(listed) == 1
    assert listed[0]["deployment"] == "compromised"
    assert listed[0]["reason"] == "incident 42"
    assert listed[0]["actor"] == "oncall"

    lifted = run_sts("revoke", "lift", str(listed[0]["id"]), env=env)
    assert lifted.returncode == 0, lifted.stderr
    took = on_every_worker(server, bad, 200)
    print(f"served again on every worker {took:.2f} s after lift exited")
    assert took < WITHIN * 2, f"served again {took:.1f} s after lift"
    again = post(server, bad).json()
    # Fresh credentials: the ones cached before the revocation were dropped, never served again.
    assert again["aws_credentials"]["AccessKeyId"] != first.json()["aws_credentials"]["AccessKeyId"]
    assert json.loads(run_sts("revoke", "list", "--json", env=env).stdout) == []
    assert run_sts("revoke", "lift", str(listed[0]["id"]), env=env).returncode == 1


def test_issued_before_cuts_off_a_leaked_token_and_not_the_next_one(
    server: str, env: dict[str, str], issuer: DevIssuer
) -> None:
    leaked = issuer.mint(audience=AUDIENCE, deployment="leaky", iat=int(time.time()) - 600)
    assert post(server, leaked).status_code == 200
    added = run_sts(
        "revoke", "add", "--sub", issuer.claims(deployment="leaky")["sub"],
        "--issued-before", "now", "--reason", "token leaked", env=env,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    on_every_worker(server, leaked, 400)
    time.sleep(1.1)  # iat is whole seconds: the next token is issued after "now"
    assert post(server, issuer.mint(audience=AUDIENCE, deployment="leaky")).status_code == 200


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--reason", "x"], "at least one of --account, --sub, --mapping"),
        (["--project", "p", "--reason", "x"], "at least one of --account, --sub, --mapping"),
        (["--mapping", "no-such-mapping", "--reason", "x"], "--mapping"),
        (["--account", "a", "--issued-before", "2999-01-01T00:00:00Z", "--reason", "x"], "future"),
        (["--account", "a", "--issued-before", "yesterday", "--reason", "x"], "--issued-before"),
        (["--account", "a", "--reason", "bad\nline"], "--reason"),
        (["--account", "a", "--reason", "bidi \u202e"], "--reason"),
        (["--account", "a", "--reason", " "], "--reason"),
        (["--account", "a\x1b[31m", "--reason", "x"], "--account"),
        (["--account", "a", "--environment-type", "staging", "--reason", "x"], "--environment"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    database_url: str, issuer: DevIssuer, tmp_path: Path, args: list[str], message: str
) -> None:
    env = serve_env(database_url, issuer)
    mappings = tmp_path / "mappings.yaml"
    mappings.write_text(DEFAULT_MAPPINGS)
    assert run_sts("db", "upgrade", env=env).returncode == 0
    assert run_sts("mappings", "apply", str(mappings), env=env).returncode == 0
    result = run_sts("revoke", "add", *args, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert message in result.stderr
    assert result.stdout == ""
    assert json.loads(run_sts("revoke", "list", "--json", env=env).stdout) == []


def test_aws_apply_attaches_and_lift_deletes_the_deny_policies(
    database_url: str, issuer: DevIssuer, aws: AwsEmulator, tmp_path: Path
) -> None:
    """Against moto's IAM: the printed documents are the attached ones, by the operator's own
    credentials from the standard chain."""
    env = serve_env(
        database_url,
        issuer,
        STS_IAM_ENDPOINT_URL=aws.endpoint_url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
    )
    mappings = tmp_path / "mappings.yaml"
    mappings.write_text(DEFAULT_MAPPINGS)
    assert run_sts("db", "upgrade", env=env).returncode == 0
    assert run_sts("mappings", "apply", str(mappings), env=env).returncode == 0
    iam = boto3.client(
        "iam",
        endpoint_url=aws.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    role = ROLE.rsplit("/", 1)[-1]
    with contextlib.suppress(iam.exceptions.EntityAlreadyExistsException):
        iam.create_role(RoleName=role, AssumeRolePolicyDocument="{}")
    added = run_sts(
        "revoke", "add", "--mapping", "orders-prod", "--deployment", "d1",
        "--reason", "x", "--aws-apply", "--json", env=env,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    doc = json.loads(added.stdout.split("\naws: ", 1)[0])
    (policy,) = doc["aws_policies"]
    assert policy["role_arn"] == ROLE
    assert policy["policy_name"] == f"zuplo-sts-revocation-{doc['id']}"
    attached = iam.get_role_policy(RoleName=role, PolicyName=policy["policy_name"])
    assert attached["PolicyDocument"] == policy["document"]
    lifted = run_sts("revoke", "lift", str(doc["id"]), "--aws-apply", env=env)
    assert lifted.returncode == 0, lifted.stderr
    names = iam.list_role_policies(RoleName=role)["PolicyNames"]
    assert policy["policy_name"] not in names
