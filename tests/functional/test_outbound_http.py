"""What the service's own upstream calls take from the environment (README, "Configuration").

Every upstream (the issuer's JWKS, GCP STS and IAM Credentials, AWS STS) follows one rule:
no credential from the environment (a ``~/.netrc`` naming 127.0.0.1 must never become an
``Authorization`` header), and the proxy variables ``HTTP_PROXY`` / ``HTTPS_PROXY`` /
``NO_PROXY`` are honoured alike. The environment is set with ``monkeypatch.setenv`` before the
service is built, as an operator would set it; nothing of the service is replaced.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from sts.dev.aws_emulator import AwsEmulator
from sts.dev.gcp_emulator import GcpEmulator
from sts.dev.issuer import ISSUER_PATH, DevIssuer
from tests.conftest import AUDIENCE
from tests.functional.conftest import SA, WIP, running_stack

NETRC_PASSWORD = "netrc-secret-5d2c9a"
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te"}


@dataclass(frozen=True)
class Seen:
    method: str
    url: str
    headers: dict[str, str]


class Recorder:
    """An HTTP forward proxy (absolute-form requests) that can also front one origin server.

    Every request is recorded, then passed on unchanged apart from hop-by-hop headers.
    """

    def __init__(self, origin: str | None = None) -> None:
        self.origin = origin
        self.seen: list[Seen] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _relay(self) -> None:
                url = self.path if "://" in self.path else f"{recorder.origin}{self.path}"
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                recorder.seen.append(Seen(self.command, url, dict(self.headers.items())))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                parts = urlsplit(url)
                upstream = http.client.HTTPConnection(parts.netloc, timeout=10)
                try:
                    path = parts.path + (f"?{parts.query}" if parts.query else "")
                    upstream.request(self.command, path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    data = answer.read()
                    self.send_response(answer.status)
                    for name, value in answer.getheaders():
                        if name.lower() not in HOP_BY_HOP | {"content-length"}:
                            self.send_header(name, value)
                finally:
                    upstream.close()
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)
                self.close_connection = True

            do_GET = do_POST = _relay

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def from_service(self, prefix: str, agent: str) -> list[Seen]:
        """Requests to URLs under ``prefix`` made by a client whose User-Agent starts so."""
        return [
            seen
            for seen in self.seen
            if seen.url.startswith(prefix) and seen.headers.get("User-Agent", "").startswith(agent)
        ]


@pytest.fixture
def netrc_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A home whose ``.netrc`` (also named by ``NETRC``) holds credentials for 127.0.0.1."""
    home = tmp_path / "home"
    home.mkdir()
    netrc = home / ".netrc"
    netrc.write_text(
        f"machine 127.0.0.1 login netrc-user password {NETRC_PASSWORD}\n"
        f"default login netrc-default password {NETRC_PASSWORD}\n"
    )
    netrc.chmod(0o600)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(netrc))
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return home


@pytest.fixture
def no_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def test_netrc_credentials_never_reach_the_issuer_gcp_or_aws(
    netrc_home: Path, issuer: DevIssuer, aws: AwsEmulator, tmp_path: Path
) -> None:
    # The issuer is reached through a recorder in front of it, so its requests can be seen.
    origin = issuer.url.removesuffix(ISSUER_PATH)
    front = Recorder(origin=origin)
    issuer_url = front.url + ISSUER_PATH
    try:
        # The netrc file is really read in this environment: a stock session sends it.
        canary = requests.get(issuer_url + "/.well-known/jwks.json", timeout=10)
        assert canary.status_code == 200
        assert front.seen[-1].headers.get("Authorization", "").startswith("Basic ")
        front.seen.clear()

        with GcpEmulator() as gcp:
            gcp.add_provider(WIP, issuer_url, issuer_url + "/.well-known/jwks.json", [AUDIENCE])
            gcp.allow_service_account(SA, WIP)
            url = f"sqlite:///{tmp_path / 'sts.db'}"
            aws_before = len(aws.requests)
            with running_stack(issuer, aws, gcp, url, trusted_issuers=(issuer_url,)) as stack:
                aws_token = issuer.mint(audience=AUDIENCE, iss=issuer_url, deployment="netrc-aws")
                assert stack.post(aws_token).status_code == 200
                gcp_token = issuer.mint(
                    audience=AUDIENCE,
                    iss=issuer_url,
                    account="gcp-account",
                    project="analytics",
                    deployment="netrc-gcp",
                )
                response = stack.post(gcp_token)
                assert response.status_code == 200, response.text

            # The recorder names what it fronts by the origin's URL.
            fetches = front.from_service(issuer.url, "python-requests/")
            assert fetches, front.seen
            assert all("Authorization" not in seen.headers for seen in fetches)

            sts_call, iam_call = gcp.requests
            assert sts_call.path == "/v1/token"
            assert "Authorization" not in sts_call.headers
            federated, _ = gcp.issued
            assert iam_call.headers["Authorization"] == f"Bearer {federated}"
            assert NETRC_PASSWORD not in repr(gcp.requests)

            (aws_call,) = aws.requests[aws_before:]
            assert "Authorization" not in aws_call.headers
    finally:
        front.stop()


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch, no_proxy_variables: None) -> Iterator[Recorder]:
    """A recording forward proxy named by ``HTTP_PROXY`` and ``HTTPS_PROXY``."""
    recorder = Recorder()
    monkeypatch.setenv("HTTP_PROXY", recorder.url)
    monkeypatch.setenv("HTTPS_PROXY", recorder.url)
    yield recorder
    recorder.stop()


def exchange_on_every_upstream(
    issuer: DevIssuer, aws: AwsEmulator, tmp_path: Path
) -> tuple[str, str]:
    """Start a service (its JWKS fetch), then one AWS and one impersonating GCP exchange.

    Returns the GCP emulator's STS and IAM Credentials URLs.
    """
    with GcpEmulator() as gcp:
        gcp.add_provider(WIP, issuer.url, issuer.jwks_url, [AUDIENCE])
        gcp.allow_service_account(SA, WIP)
        url = f"sqlite:///{tmp_path / 'sts.db'}"
        with running_stack(issuer, aws, gcp, url) as stack:
            assert stack.post(stack.token(deployment="proxied-aws")).status_code == 200
            token = stack.token(account="gcp-account", project="analytics", deployment="proxy-g")
            response = stack.post(token)
            assert response.status_code == 200, response.text
            assert [r.path.split(":")[0] for r in gcp.requests] == [
                "/v1/token",
                f"/v1/projects/-/serviceAccounts/{SA}",
            ]
            return gcp.sts_url, gcp.iam_url


def test_proxy_variables_send_jwks_gcp_and_aws_through_the_proxy(
    proxy: Recorder, issuer: DevIssuer, aws: AwsEmulator, tmp_path: Path
) -> None:
    sts_url, iam_url = exchange_on_every_upstream(issuer, aws, tmp_path)
    assert proxy.from_service(issuer.jwks_url, "python-requests/")
    assert proxy.from_service(sts_url, "python-requests/")
    assert proxy.from_service(iam_url + "/v1/projects/", "python-requests/")
    assert proxy.from_service(aws.endpoint_url, "Boto3/")


def test_no_proxy_hosts_are_reached_directly_by_every_upstream(
    proxy: Recorder,
    monkeypatch: pytest.MonkeyPatch,
    issuer: DevIssuer,
    aws: AwsEmulator,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    exchange_on_every_upstream(issuer, aws, tmp_path)
    assert proxy.from_service("http://", "python-requests/") == []
    assert proxy.from_service("http://", "Boto3/") == []
