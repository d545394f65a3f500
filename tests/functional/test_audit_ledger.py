"""The ledger (docs/reference.md section 12) through HTTP, ``sts serve`` and ``sts audit`` on real
SQLite and PostgreSQL: the AWS fields of a row, the row written before the call and completed
after it, the row a killed worker leaves, and the filters."""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import sqlalchemy as sa
from click.testing import CliRunner, Result

from sts.audit import IssuanceRecord
from sts.cli import cli
from sts.db import Database
from sts.db.models import IssuanceEvent
from sts.dev.aws_emulator import AwsEmulator
from sts.dev.issuer import DevIssuer
from sts.providers.aws import session_name
from tests.conftest import AUDIENCE
from tests.functional.conftest import DEFAULT_MAPPINGS, GRANT, ID_TOKEN, ROLE, SA, Stack
from tests.functional.serving import run_sts, serve_env, sts_serve

#: How long something that takes milliseconds or a few seconds may take before the test calls it
#: stuck (a loaded 2-core machine).
NOT_STUCK = 30.0
#: An AWS that holds its answer this long: under the AWS call's 5 s read time-out, so the held
#: call completes (no retry); the test looks at the ledger while it is held.
HELD = 4.5


def events(database: Database) -> list[dict[str, Any]]:
    with database.engine.connect() as conn:
        result = conn.execute(sa.select(IssuanceEvent.__table__).order_by(IssuanceEvent.id))
        return [dict(row._mapping) for row in result]


def wait_for_call(aws: AwsEmulator, seen: int) -> None:
    """Until the emulator has received a request beyond the first ``seen``."""
    deadline = time.monotonic() + NOT_STUCK
    while len(aws.requests) <= seen:
        assert time.monotonic() < deadline, "the call never reached AWS"
        time.sleep(0.01)


@pytest.fixture
def held(aws: AwsEmulator) -> Iterator[AwsEmulator]:
    """The AWS emulator holding every answer for ``HELD`` seconds until the test ends."""
    aws.delay = HELD
    try:
        yield aws
    finally:
        aws.delay = 0.0


# -- through HTTP --------------------------------------------------------------------------------


def test_aws_row_has_the_access_key_id_and_the_session_name_aws_received(
    stack_factory: Any, database_url: str
) -> None:
    stack: Stack = stack_factory(database_url=database_url)
    response = stack.post(stack.token(deployment="ledger/aws é"))
    assert response.status_code == 200, response.text
    creds = response.json()["aws_credentials"]
    [call] = stack.aws_requests()
    [row] = events(stack.services.database)
    assert row["outcome"] == "issued"
    assert row["access_key_id"] == creds["AccessKeyId"]
    assert row["session_name"] == call.role_session_name == "ledger-aws--"
    assert row["expires_at"].replace(microsecond=0) == datetime.fromisoformat(creds["Expiration"])
    # CloudTrail's AssumeRoleWithWebIdentity event carries the same request id.
    assert row["provider_request_id"]


def test_gcp_row_has_no_aws_fields(stack_factory: Any, database_url: str) -> None:
    stack: Stack = stack_factory(database_url=database_url)
    response = stack.post(stack.token(account="gcp-account", project="analytics"))
    assert response.status_code == 200, response.text
    [row] = events(stack.services.database)
    assert (row["outcome"], row["provider"]) == ("issued", "gcp")
    assert (row["access_key_id"], row["session_name"]) == (None, None)
    assert row["expires_at"] is not None


def test_the_call_is_recorded_pending_before_it_is_made_and_that_row_completed(
    stack_factory: Any, database_url: str, held: AwsEmulator
) -> None:
    stack: Stack = stack_factory(database_url=database_url)
    database = stack.services.database
    with ThreadPoolExecutor(1) as pool:
        seen = len(held.requests)
        answer = pool.submit(stack.post, stack.token(deployment="held-call"))
        wait_for_call(held, seen)
        # AWS holds the call: the ledger already has it.
        [row] = events(database)
        assert not answer.done()
        assert row["outcome"] == "pending"
        assert (row["deployment"], row["mapping"], row["target"]) == (
            "held-call",
            "orders-prod",
            ROLE,
        )
        assert row["session_name"] == "held-call"
        assert row["expires_at"] is None
        response = answer.result(timeout=NOT_STUCK)
    assert response.status_code == 200, response.text
    [done] = events(database)
    assert done["id"] == row["id"]
    assert done["outcome"] == "issued"
    assert done["access_key_id"] == response.json()["aws_credentials"]["AccessKeyId"]


def test_a_refused_call_completes_its_pending_row(
    stack_factory: Any, database_url: str, held: AwsEmulator
) -> None:
    stack: Stack = stack_factory(database_url=database_url)
    database = stack.services.database
    held.fail_next(403, "AccessDenied", "Not authorized", request_id="5e1f0c2a-refused")
    with ThreadPoolExecutor(1) as pool:
        seen = len(held.requests)
        answer = pool.submit(stack.post, stack.token(deployment="held-refusal"))
        wait_for_call(held, seen)
        [row] = events(database)
        assert row["outcome"] == "pending"
        response = answer.result(timeout=NOT_STUCK)
    assert response.status_code == 400, response.text
    [done] = events(database)
    assert done["id"] == row["id"]
    assert done["outcome"] == "invalid_target:AccessDenied"
    assert done["provider_request_id"] == "5e1f0c2a-refused"
    assert done["access_key_id"] is None


def test_a_broker_token_that_cannot_be_minted_is_one_refused_row_and_no_pending_one(
    stack_factory: Any, database_url: str
) -> None:
    from tests.functional.serving import free_port

    port = free_port()
    stack: Stack = stack_factory(
        database_url=database_url,
        port=port,
        broker_issuer=f"http://127.0.0.1:{port}",
        key_encryption_key=secrets.token_bytes(32),
    )
    # A deployment AWS cannot carry as a session tag: refused before any cloud call.
    response = stack.post(stack.token(deployment="no#tag"))
    assert response.status_code == 400, response.text
    assert stack.aws_requests() == []
    [row] = events(stack.services.database)
    assert row["outcome"] == "invalid_target"
    assert row["deployment"] == "no#tag"


# -- a worker killed during the call -------------------------------------------------------------


def children_of(pid: int) -> set[int]:
    """PIDs whose parent is ``pid`` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after its closing paren.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.add(int(entry.name))
    return found


def server_on(port: int) -> int:
    """The pid of this process's child ``sts serve --port PORT``."""
    for pid in children_of(os.getpid()):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # ``sts serve --port PORT``, which execs into ``python -m sts.workers HOST PORT ...``.
        if str(port).encode() in argv:
            return pid
    raise AssertionError(f"no sts serve on port {port} among this process's children")


def connected_to(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a TCP connection to 127.0.0.1:``port``."""
    sockets = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                sockets.add(target[len("socket:[") : -1])
    except OSError:
        return False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port == port and fields[9] in sockets:
                return True
    return False


def dead(pid: int) -> bool:
    """Gone, or a zombie its parent has not reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_a_worker_killed_during_the_call_leaves_a_pending_row(
    database_url: str, tmp_path: Path, issuer: DevIssuer, aws: AwsEmulator
) -> None:
    """``sts serve --workers 2``; AWS holds a call; the worker making it is SIGKILLed. The ledger
    keeps that call as ``pending``, and ``--valid`` lists it as possibly issued."""
    env = serve_env(database_url, issuer, aws)
    assert run_sts("db", "upgrade", env=env).returncode == 0
    mappings = tmp_path / "mappings.yaml"
    mappings.write_text(DEFAULT_MAPPINGS)
    applied = run_sts("mappings", "apply", str(mappings), env=env)
    assert applied.returncode == 0, applied.stderr
    deployment = "killed-" + secrets.token_hex(4)
    aws_port = urlsplit(aws.endpoint_url).port
    assert aws_port is not None
    # Held beyond the AWS call's time-outs and retries: the call ends only when the worker dies.
    aws.delay = 60.0
    try:
        with sts_serve(env, tmp_path / "serve.log", "--workers", "2") as url:
            port = urlsplit(url).port
            assert port is not None
            server = server_on(port)
            deadline = time.monotonic() + NOT_STUCK
            while len(workers := children_of(server)) < 2:
                assert time.monotonic() < deadline, workers
                time.sleep(0.05)
            with ThreadPoolExecutor(1) as pool:
                seen = len(aws.requests)
                answer = pool.submit(
                    requests.post,
                    url + "/token",
                    data={
                        "grant_type": GRANT,
                        "subject_token_type": ID_TOKEN,
                        "subject_token": issuer.mint(audience=AUDIENCE, deployment=deployment),
                    },
                    timeout=NOT_STUCK * 2,
                )
                wait_for_call(aws, seen)
                assert aws.requests[seen].role_session_name == deployment
                holding = [pid for pid in workers if connected_to(pid, aws_port)]
                assert len(holding) == 1, (workers, holding)
                os.kill(holding[0], signal.SIGKILL)
                deadline = time.monotonic() + NOT_STUCK
                while not dead(holding[0]):
                    assert time.monotonic() < deadline, "the worker outlived SIGKILL"
                    time.sleep(0.05)
                # The caller got no credentials: its connection died with the worker.
                try:
                    response = answer.result(timeout=NOT_STUCK * 2)
                except requests.RequestException:
                    pass
                else:
                    assert response.status_code != 200, response.text
    finally:
        aws.delay = 0.0

    listed = run_sts("audit", "list", "--json", "--deployment", deployment, env=env)
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert row["outcome"] == "pending"
    assert (row["deployment"], row["mapping"], row["target"]) == (deployment, "orders-prod", ROLE)
    assert row["session_name"] == session_name(deployment)
    assert row["expires_at"] is None
    valid = run_sts("audit", "list", "--valid", "--json", env=env)
    assert valid.returncode == 0, valid.stderr
    assert [r["id"] for r in json.loads(valid.stdout) if r["deployment"] == deployment] == [
        row["id"]
    ]
    table = run_sts("audit", "list", "--valid", "--deployment", deployment, env=env)
    assert table.returncode == 0, table.stderr
    [line] = table.stdout.splitlines()[1:]
    assert "pending" in line
    assert "may have been issued" in line


# -- sts audit list and prune --------------------------------------------------------------------


def run(*args: str, url: str, **env: str) -> Result:
    return CliRunner().invoke(cli, list(args), env={"STS_DATABASE_URL": url, **env})


def listed(url: str, *args: str) -> list[dict[str, Any]]:
    result = run("audit", "list", "--json", *args, url=url)
    assert result.exit_code == 0, result.output
    documents: list[dict[str, Any]] = json.loads(result.output)
    return documents


def labels(url: str, *args: str) -> set[str]:
    return {document["provider_request_id"] for document in listed(url, *args)}


@pytest.fixture
def seeded(database_url: str) -> str:
    """A migrated database with rows labelled by their provider_request_id."""
    database = Database(database_url)
    database.upgrade()
    now = datetime.now(UTC)

    def row(label: str, age: timedelta, **fields: Any) -> IssuanceRecord:
        values: dict[str, Any] = {
            "created_at": now - age,
            "issuer": "https://issuer.example",
            "sub": "sub-a",
            "account": "acct-a",
            "project": "proj-a",
            "deployment": "dep-a",
            "environment_type": "production",
            "mapping": "orders-prod",
            "provider": "aws",
            "target": ROLE,
            "outcome": "issued",
            "provider_request_id": label,
        }
        values.update(fields)
        if values["outcome"] == "issued" and "expires_at" not in fields:
            values["expires_at"] = now - age + timedelta(hours=1)
        return IssuanceRecord(**values)

    records = [
        row(
            "valid",
            timedelta(minutes=10),
            access_key_id="ASIAVALIDKEY",
            session_name="dep-a",
            credential_sha256="ab" * 32,
        ),
        row("expired", timedelta(hours=3), expires_at=now - timedelta(hours=2)),
        row("pending-old", timedelta(days=100), outcome="pending", session_name="dep-a"),
        row("pending-new", timedelta(minutes=1), outcome="pending", sub="sub-b"),
        row("denied", timedelta(hours=1), outcome="invalid_target:AccessDenied"),
        row("other-acct", timedelta(minutes=5), account="acct-b", project="proj-b"),
        row("other-dep", timedelta(minutes=20), deployment="dep-b"),
        row("gcp", timedelta(days=2), mapping="analytics-gcp", provider="gcp", target=SA),
    ]
    with database.engine.begin() as conn:
        for record in records:
            conn.execute(sa.insert(IssuanceEvent).values(**record.row()))
    database.dispose()
    return database_url


def test_list_json_has_every_recorded_field(seeded: str) -> None:
    documents = {d["provider_request_id"]: d for d in listed(seeded)}
    valid = documents["valid"]
    assert set(valid) == {
        "id",
        "created_at",
        "issuer",
        "sub",
        "account",
        "project",
        "deployment",
        "environment_type",
        "mapping",
        "provider",
        "target",
        "outcome",
        "provider_request_id",
        "expires_at",
        "credential_sha256",
        "scopes",
        "access_key_id",
        "session_name",
        "audience",
    }
    assert isinstance(valid["id"], int)
    assert (valid["access_key_id"], valid["session_name"]) == ("ASIAVALIDKEY", "dep-a")
    for moment in (valid["created_at"], valid["expires_at"]):
        assert moment.endswith("Z")
        assert datetime.fromisoformat(moment).utcoffset() == timedelta(0)
    assert documents["pending-new"]["expires_at"] is None


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--account", "acct-b"), {"other-acct"}),
        (("--project", "proj-b"), {"other-acct"}),
        (("--deployment", "dep-b"), {"other-dep"}),
        (("--sub", "sub-b"), {"pending-new"}),
        (("--mapping", "analytics-gcp"), {"gcp"}),
        (("--outcome", "pending"), {"pending-new", "pending-old"}),
        (("--outcome", "invalid_target"), {"denied"}),
        (("--outcome", "invalid_target:AccessDenied"), {"denied"}),
        (("--since", "30m"), {"pending-new", "other-acct", "valid", "other-dep"}),
        (("--since", "24h", "--until", "15m"), {"other-dep", "denied", "expired"}),
        (("--until", "7d"), {"pending-old"}),
        (("--since", "7d", "--until", "1d"), {"gcp"}),
        (
            ("--valid",),
            {"valid", "other-acct", "other-dep", "pending-new", "pending-old"},
        ),
        (
            ("--valid", "--account", "acct-a", "--sub", "sub-a"),
            {"valid", "other-dep", "pending-old"},
        ),
        (("--valid", "--outcome", "issued"), {"valid", "other-acct", "other-dep"}),
        (("--account", "nobody"), set()),
    ],
)
def test_list_filters(seeded: str, args: tuple[str, ...], expected: set[str]) -> None:
    assert labels(seeded, *args) == expected


def test_list_time_bounds_take_rfc3339(seeded: str) -> None:
    now = datetime.now(UTC)
    since = (now - timedelta(hours=4)).strftime("%Y-%m-%dT%H:%M:%SZ")
    until = (now - timedelta(minutes=30)).isoformat()
    offset = (now - timedelta(minutes=30)).astimezone(timezone(timedelta(hours=-7))).isoformat()
    assert labels(seeded, "--since", since, "--until", until) == {"denied", "expired"}
    assert labels(seeded, "--since", since, "--until", offset) == {"denied", "expired"}
    assert labels(seeded, "--since", since.lower(), "--until", until) == {"denied", "expired"}


def test_list_table_shows_the_new_fields_and_pending_as_may_have_been_issued(seeded: str) -> None:
    result = run("audit", "list", "--valid", url=seeded)
    assert result.exit_code == 0, result.output
    header, *lines = result.output.splitlines()
    assert "ACCESS_KEY" in header.split()
    assert len(lines) == 5
    pending = [line for line in lines if " pending " in line]
    assert len(pending) == 2
    assert all("may have been issued" in line for line in pending)
    [valid] = [line for line in lines if "ASIAVALIDKEY" in line]
    assert "may have been issued" not in valid


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--since", "yesterday"), "error: --since: expected a duration"),
        (("--until", "soon"), "error: --until: expected a duration"),
        (("--until", "0h"), "error: --until: expected a duration"),
        (("--until", "2026-13-01T00:00:00Z"), "error: --until: expected a duration"),
        (("--since", "999999w"), "error: --since: expected a duration"),
        (("--valid", "--since", "1.5h"), "error: --since: expected a duration"),
    ],
)
def test_bad_time_is_exit_2_with_one_line(seeded: str, args: tuple[str, ...], message: str) -> None:
    result = run("audit", "list", *args, url=seeded)
    assert result.exit_code == 2
    assert result.output.startswith(message)
    assert result.output.count("\n") == 1


def test_prune_removes_pending_rows_past_retention(seeded: str) -> None:
    dry = run("audit", "prune", "--dry-run", url=seeded)
    assert dry.output.startswith("would delete 1 issuance event(s)"), dry.output
    done = run("audit", "prune", url=seeded)
    assert done.exit_code == 0, done.output
    assert "pending-old" not in labels(seeded)
    assert labels(seeded, "--outcome", "pending") == {"pending-new"}
