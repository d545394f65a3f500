"""``sts dev`` and ``sts dev token`` as processes (README "Try it"): the sandbox stays up, the
printed curl performs a real exchange, the printed ``sts explain`` works from another shell and
directory, every mapping's cloud answers, its AWS emulator refuses what AWS would refuse, and
Ctrl-C stops it all."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest
import requests
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

from sts.dev.demo import ROLE_ARN
from sts.protocol import ID_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT_TYPE
from tests.functional.serving import free_port
from tests.oidc import TAGS, Issuer

STS = [sys.executable, "-m", "sts"]


@dataclass
class Sandbox:
    process: subprocess.Popen[str]
    url: str
    env: dict[str, str]
    state: Path
    output: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    def text(self) -> str:
        return "".join(self.output)

    def token(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*STS, "dev", "token", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )


def clean_env(state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STS_")}
    return {**env, "ZUPLO_STS_DEV_STATE": str(state)}


def start(tmp_path: Path, port: int) -> Sandbox:
    state = tmp_path / "state.json"
    env = clean_env(state)
    process = subprocess.Popen(
        [*STS, "dev", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    sandbox = Sandbox(process, f"http://127.0.0.1:{port}", env, state)

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            sandbox.output.append(line)

    sandbox.reader = threading.Thread(target=read, daemon=True)
    sandbox.reader.start()
    deadline = time.monotonic() + 60
    while "--data-urlencode" not in sandbox.text():
        assert process.poll() is None, sandbox.text()
        assert time.monotonic() < deadline, sandbox.text()
        time.sleep(0.1)
    return sandbox


def stop(sandbox: Sandbox) -> int:
    sandbox.process.send_signal(signal.SIGINT)
    try:
        return sandbox.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        sandbox.process.kill()
        sandbox.process.wait()
        raise
    finally:
        close(sandbox)


def close(sandbox: Sandbox) -> None:
    """The output pipe, once the reader saw its end."""
    if sandbox.reader is not None:
        sandbox.reader.join(timeout=10)
    if sandbox.process.stdout is not None:
        sandbox.process.stdout.close()


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    running = start(tmp_path, free_port())
    try:
        yield running
    finally:
        if running.process.poll() is None:
            stop(running)
        close(running)


def the_printed_curl(text: str) -> str:
    found = re.search(r"^curl -s .*?subject_token=\$\(sts dev token\)\"$", text, re.M | re.S)
    assert found is not None, text
    return found.group(0)


def the_printed_explain(text: str) -> str:
    """The ``sts explain --token`` block: variable lines, then the command, ``\\``-continued."""
    found = re.search(
        r"^STS_DATABASE_URL=\S+ \\\n(?:  STS_[A-Z_]+=\S+ \\\n)*  sts explain --token .*$",
        text,
        re.M,
    )
    assert found is not None, text
    return found.group(0)


def another_shell(sandbox: Sandbox, tmp_path: Path) -> dict[str, str]:
    """The environment of another terminal: `sts` on PATH as the newcomer has it (this
    interpreter's, through a shim), and no STS_* variable."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "sts"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m sts "$@"\n')
    shim.chmod(0o755)
    return {**sandbox.env, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def test_the_printed_curl_is_a_real_exchange(sandbox: Sandbox, tmp_path: Path) -> None:
    text = sandbox.text()
    for name in ("Zuplo-like issuer", "AWS STS emulator", "GCP STS", "Azure (Entra) emulator"):
        assert name in text
    command = the_printed_curl(text)
    env = another_shell(sandbox, tmp_path)
    done = subprocess.run(
        ["bash", "-c", command], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert '"mapping":"orders-prod"' in done.stdout, done.stdout
    assert '"aws_credentials"' in done.stdout


def test_the_banner_prints_the_database_url_absolute(sandbox: Sandbox) -> None:
    found = re.search(r"^The sandbox's database: STS_DATABASE_URL=(\S+)$", sandbox.text(), re.M)
    assert found is not None, sandbox.text()
    (url,) = shlex.split(found.group(1))
    assert url.startswith("sqlite:///")
    path = Path(url.removeprefix("sqlite:///"))
    assert path.is_absolute()
    assert path.is_file()


def test_the_printed_explain_works_from_another_shell_and_directory(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    command = the_printed_explain(sandbox.text())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=elsewhere,
        env=another_shell(sandbox, tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "chosen: orders-prod", done.stdout
    # The token was verified against the running sandbox's issuer, not merely decoded.
    assert lines[1].startswith("  token: accepted"), done.stdout
    assert "✓ orders-prod: chosen" in done.stdout
    assert list(elsewhere.iterdir()) == []  # no database of its own in the working directory


def aws_emulator_url(sandbox: Sandbox) -> str:
    found = re.search(r"AWS STS emulator +(http://127\.0\.0\.1:\d+)", sandbox.text())
    assert found is not None, sandbox.text()
    return found.group(1)


def assume(endpoint: str, role_arn: str, token: str) -> tuple[int, str]:
    """What AWS STS answers anyone on the machine (HTTP status, error code; 200 and "")."""
    client = boto3.client(
        "sts",
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id="unused",
        aws_secret_access_key="unused",
        config=Config(signature_version=UNSIGNED, retries={"max_attempts": 1}),
    )
    try:
        client.assume_role_with_web_identity(
            RoleArn=role_arn, RoleSessionName="outsider", WebIdentityToken=token
        )
    except ClientError as refused:
        answer = refused.response
        return answer["ResponseMetadata"]["HTTPStatusCode"], answer["Error"]["Code"]
    return 200, ""


def test_the_sandbox_aws_refuses_other_issuers_and_unknown_roles(sandbox: Sandbox) -> None:
    """A broker-shaped token that meets the role's trust policy in every claim, but from an issuer
    the sandbox's AWS has no OIDC provider for: refused for the sandbox's role and for a role it
    does not have (issue 23 point 8: the second used to be served)."""
    endpoint = aws_emulator_url(sandbox)
    stranger = Issuer()
    try:
        token = stranger.mint(
            sub="mapping:orders-prod",
            **{
                TAGS: {
                    "principal_tags": {"zuplo-account": ["my-account"]},
                    "transitive_tag_keys": [],
                }
            },
        )
        assert assume(endpoint, ROLE_ARN, token) == (400, "InvalidIdentityToken")
        unknown = "arn:aws:iam::123456789012:role/nobody-made-this-role"
        assert assume(endpoint, unknown, token) == (400, "InvalidIdentityToken")
    finally:
        stranger.close()
    zuplo = sandbox.token("--audience", "sts.amazonaws.com")
    assert zuplo.returncode == 0, zuplo.stderr
    assert assume(endpoint, ROLE_ARN, zuplo.stdout.strip()) == (400, "InvalidIdentityToken")


@pytest.mark.parametrize(
    ("audience", "field_name"),
    [("orders-prod", "aws_credentials"), ("analytics-gcp", "scope"), ("billing-azure", "scope")],
)
def test_every_mapping_exchanges_a_dev_token(
    sandbox: Sandbox, audience: str, field_name: str
) -> None:
    minted = sandbox.token("--deployment", f"dev-{audience}")
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    assert token.count(".") == 2
    answer = requests.post(
        sandbox.url + "/token",
        data={
            "grant_type": TOKEN_EXCHANGE_GRANT_TYPE,
            "subject_token_type": ID_TOKEN_TYPE,
            "subject_token": token,
            "audience": audience,
        },
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["mapping"] == audience
    assert field_name in answer.json()


def test_dev_token_options_shape_the_identity(sandbox: Sandbox) -> None:
    minted = sandbox.token("--account", "someone-else", "--environment-type", "preview")
    assert minted.returncode == 0, minted.stderr
    answer = requests.post(
        sandbox.url + "/token",
        data={
            "grant_type": TOKEN_EXCHANGE_GRANT_TYPE,
            "subject_token_type": ID_TOKEN_TYPE,
            "subject_token": minted.stdout.strip(),
        },
        timeout=30,
    )
    # No mapping binds another account: the service says so, as it would in production.
    assert answer.status_code == 400
    assert answer.json()["error"] == "unauthorized_client"
    wrong = sandbox.token("--audience", "https://someone-else.example")
    assert wrong.returncode == 0
    refused = requests.post(
        sandbox.url + "/token",
        data={
            "grant_type": TOKEN_EXCHANGE_GRANT_TYPE,
            "subject_token_type": ID_TOKEN_TYPE,
            "subject_token": wrong.stdout.strip(),
        },
        timeout=30,
    )
    assert refused.json()["error_description"] == "audience not accepted"
    bad = sandbox.token("--environment-type", "staging")
    assert bad.returncode == 2


def test_a_second_sandbox_on_the_same_state_is_exit_1(sandbox: Sandbox) -> None:
    again = subprocess.run(
        [*STS, "dev", "--port", str(free_port())],
        env=sandbox.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert again.returncode == 1
    assert "already running" in again.stderr


def test_ctrl_c_stops_everything_and_removes_the_state(sandbox: Sandbox) -> None:
    assert sandbox.state.exists()
    assert sandbox.state.stat().st_mode & 0o077 == 0  # it holds the issuer's private key
    assert stop(sandbox) == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(sandbox.url + "/healthz", timeout=2)
    assert not sandbox.state.exists()
    after = sandbox.token()
    assert after.returncode == 1
    assert "no sts dev sandbox is running" in after.stderr


def test_a_taken_port_is_exit_1_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run(
            [*STS, "dev", "--port", str(port)],
            env=clean_env(tmp_path / "state.json"),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot listen on 127.0.0.1:{port}")


def a_dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


def run_to_its_end(tmp_path: Path, state: Path) -> subprocess.CompletedProcess[str]:
    """``sts dev`` on a free port, expected to stop by itself; stopped with Ctrl-C (and the
    test failed) if it is still up after 60 s."""
    process = subprocess.Popen(
        [*STS, "dev", "--port", str(free_port())],
        env=clean_env(state),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
        pytest.fail("sts dev did not refuse its state path:\n" + out + err)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def test_a_symlink_at_the_state_path_is_refused_in_one_line(tmp_path: Path) -> None:
    target = tmp_path / "someone-elses"
    target.write_text("untouched")
    state = tmp_path / "state.json"
    state.symlink_to(target)
    done = run_to_its_end(tmp_path, state)
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert str(state) in line
    assert "symlink" in line
    assert target.read_text() == "untouched"
    assert state.is_symlink()


def test_planted_world_readable_files_never_receive_the_key(tmp_path: Path) -> None:
    """A stale 0666 state file and a 0666 file beside it, both held open by someone: the running
    sandbox's state is a new 0600 file, and neither holder reads a byte of it."""
    state = tmp_path / "state.json"
    stale = json.dumps({"pid": a_dead_pid(), "url": "http://127.0.0.1:1"})
    state.write_text(stale)
    beside = tmp_path / "state.json.tmp"
    beside.write_text("")
    for planted in (state, beside):
        planted.chmod(0o666)
    with open(state) as holder, open(beside) as neighbour:
        running = start(tmp_path, free_port())
        try:
            info = os.lstat(state)
            assert stat.S_ISREG(info.st_mode)
            assert stat.S_IMODE(info.st_mode) == 0o600
            assert info.st_uid == os.geteuid()
            assert json.loads(state.read_text())["pid"] == running.process.pid
            minted = running.token()
            assert minted.returncode == 0, minted.stderr
            assert holder.read() == stale
            assert neighbour.read() == ""
        finally:
            assert stop(running) == 0
    assert not state.exists()
