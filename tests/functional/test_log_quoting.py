"""A real ``sts serve`` in ``text`` format: a request path that holds spaces, ``=`` and quotes
(``/x%20status=200``, decoded to ``/x status=200``) is logged quoted, so its access line parses
back to the path as sent and no field of the caller's making (docs/reference.md section 10)."""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import quote

from sts.dev.issuer import DevIssuer
from tests.functional.serving import serve_env, sts_serve_on_a_pipe
from tests.unit.test_log_quoting import parse

PATHS = [
    "/q0 status=200",
    '/q1 outcome=ok cause="forged" pid=1',
    '/q2\\" status=200',
    "/q3=\tlevel=ERROR",
]


def test_a_path_with_spaces_and_equals_signs_adds_no_field(
    tmp_path: Path, issuer: DevIssuer
) -> None:
    env = serve_env(f"sqlite:///{tmp_path / 'serve.db'}", issuer, STS_LOG_FORMAT="text")
    with sts_serve_on_a_pipe(env, "--workers", "1") as (url, lines):
        host, port = url.removeprefix("http://").split(":")
        for path in PATHS:
            target = quote(path, safe="/=")
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                sock.sendall(f"GET {target} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
                assert sock.recv(65536).startswith(b"HTTP/1.1 404")
    access = [
        parse(line)
        for line in b"".join(lines).decode("utf-8").splitlines()
        if " sts.access: " in line
    ]
    logged = {fields["path"]: fields for fields in access if fields["path"].startswith("/q")}
    assert set(logged) == set(PATHS)
    for fields in logged.values():
        assert fields["status"] == "404"
        assert fields["method"] == "GET"
        assert fields.get("outcome") != "ok"
        assert "cause" not in fields
        assert "level" not in fields
        assert fields["pid"] != "1"
