"""``sts keys`` through the real command line on SQLite and PostgreSQL, and on moto's KMS.

States and timings (sts.broker.keys), exit codes (sts.broker.commands), the exported documents,
and that the database never holds private key material in any encoding.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
import secrets
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sts.broker.documents import discovery_document, jwks_document
from sts.broker.keys import DatabaseKeyStore
from sts.cli import cli
from sts.db import Database
from sts.dev.aws_emulator import AwsEmulator

ISSUER = "https://sts.example.com/broker"


@pytest.fixture
def kek() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def kek_bytes(kek: str) -> bytes:
    return base64.urlsafe_b64decode(kek + "=" * (-len(kek) % 4))


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    db.upgrade()
    yield db
    db.dispose()


@pytest.fixture
def run(database_url: str, kek: str) -> Any:
    def invoke(*args: str, **env: str | None) -> Result:
        environment: dict[str, str | None] = {
            "STS_DATABASE_URL": database_url,
            "STS_BROKER_ISSUER": ISSUER,
            "STS_KEY_ENCRYPTION_KEY": kek,
            **env,
        }
        return CliRunner().invoke(cli, ["keys", *args], env=environment)

    return invoke


def listed(run: Any) -> list[dict[str, Any]]:
    result = run("list", "--json")
    assert result.exit_code == 0, result.output
    keys: list[dict[str, Any]] = json.loads(result.stdout)
    return keys


def moment(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def table_rows(database: Database, table: str) -> list[dict[str, Any]]:
    with database.engine.connect() as conn:
        query = sa.text(f'SELECT * FROM "{table}"')  # noqa: S608 - a table name of ours
        return [dict(row) for row in conn.execute(query).mappings()]


def one_line_error(result: Result, code: int) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


# -- list, rotate, retire, export ---------------------------------------------------------------


def test_rotate_on_an_empty_database_makes_a_signing_key(database: Database, run: Any) -> None:
    empty = run("list")
    assert empty.exit_code == 0
    assert empty.stdout.startswith("no signing keys")
    assert listed(run) == []

    result = run("rotate")
    assert result.exit_code == 0, result.output
    (key,) = listed(run)
    assert result.stdout == f"key {key['kid']} signs now\n"
    assert key["state"] == "signing"
    assert key["signs_from"] == key["created_at"]


def test_rotate_publishes_at_once_and_signs_600_s_later_on_a_controlled_clock(
    database: Database, run: Any, kek: str
) -> None:
    assert run("rotate").exit_code == 0
    (first,) = listed(run)
    result = run("rotate")
    assert result.exit_code == 0, result.output
    keys = listed(run)
    assert [(key["state"]) for key in keys] == ["signing", "next"]
    new = keys[1]
    assert result.stdout == (
        f"added key {new['kid']}: published now, signs from {new['signs_from']}\n"
    )
    assert moment(new["signs_from"]) - moment(new["created_at"]) == timedelta(seconds=600)

    (stored,) = [row for row in table_rows(database, "signing_keys") if row["kid"] == new["kid"]]
    signs_from = stored["signs_from"]
    if isinstance(signs_from, str):  # SQLite hands the raw text to a textual SELECT
        signs_from = datetime.fromisoformat(signs_from).replace(tzinfo=UTC)
    replica_time = {"now": signs_from.timestamp() - 1}
    replica = DatabaseKeyStore(database, kek_bytes(kek), clock=lambda: replica_time["now"])
    assert replica.signer().kid == first["kid"]
    assert [jwk["kid"] for jwk in replica.public_jwks()] == [new["kid"], first["kid"]]
    replica_time["now"] += 1
    assert replica.signer().kid == new["kid"]
    assert {info.kid: info.state.value for info in replica.list_keys()} == {
        new["kid"]: "signing",
        first["kid"]: "previous",
    }

    second = run("rotate")
    assert second.exit_code == 0, second.output
    assert [key["state"] for key in listed(run)] == ["signing", "next", "next"]


def test_rotate_now_promotes_the_next_key_and_the_old_one_stays_published(
    database: Database, run: Any
) -> None:
    assert run("rotate").exit_code == 0
    assert run("rotate").exit_code == 0
    first, pending = listed(run)
    result = run("rotate", "--now")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"key {pending['kid']} signs now\n"
    keys = listed(run)
    assert [(key["kid"], key["state"]) for key in keys] == [
        (pending["kid"], "signing"),
        (first["kid"], "previous"),
    ]
    assert keys[1]["signed_until"] == keys[0]["signs_from"]


def test_retire_removes_a_previous_key_from_the_exported_jwks_for_good(
    database: Database, run: Any, tmp_path: Path
) -> None:
    assert run("rotate").exit_code == 0
    assert run("rotate", "--now").exit_code == 0
    signing, previous = listed(run)

    result = run("retire", previous["kid"])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"retired key {previous['kid']} (previous): removed from the JWKS\n"
    # It signed a moment ago: tokens it signed may still be in flight.
    assert "signed less than 600 s ago" in result.stderr
    assert [key["kid"] for key in listed(run)] == [signing["kid"]]

    assert run("export", str(tmp_path)).exit_code == 0
    jwks = json.loads((tmp_path / ".well-known" / "jwks.json").read_text())
    assert [key["kid"] for key in jwks["keys"]] == [signing["kid"]]

    again = run("retire", previous["kid"])
    assert "no published key" in one_line_error(again, 1)
    (row,) = [r for r in table_rows(database, "signing_keys") if r["kid"] == previous["kid"]]
    assert row["retired_at"] is not None
    assert row["sealed_private_key"] is None


def test_retire_a_next_key_needs_no_warning(database: Database, run: Any) -> None:
    assert run("rotate").exit_code == 0
    assert run("rotate").exit_code == 0
    _, pending = listed(run)
    result = run("retire", pending["kid"])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert [key["state"] for key in listed(run)] == ["signing"]


def test_retire_takes_a_kid_that_begins_with_a_dash(database: Database, run: Any) -> None:
    assert "no published key with kid '-vmiRQ'" in one_line_error(run("retire", "-vmiRQ"), 1)
    assert "no published key with kid '--x'" in one_line_error(run("retire", "--x"), 1)


def test_retire_of_the_signing_key_or_an_unknown_kid_is_exit_1(
    database: Database, run: Any
) -> None:
    assert run("rotate").exit_code == 0
    (signing,) = listed(run)
    assert "is the signing key" in one_line_error(run("retire", signing["kid"]), 1)
    assert "no published key" in one_line_error(run("retire", "no-such-kid"), 1)
    assert listed(run) == [signing]


def test_export_writes_the_documents_the_service_serves(
    database: Database, run: Any, kek: str, tmp_path: Path
) -> None:
    assert run("rotate").exit_code == 0
    assert run("rotate").exit_code == 0
    target = tmp_path / "site"
    result = run("export", str(target))
    assert result.exit_code == 0, result.output
    discovery = target / ".well-known" / "openid-configuration"
    jwks = target / ".well-known" / "jwks.json"
    assert result.stdout == f"wrote {discovery} and {jwks}\n"
    store = DatabaseKeyStore(database, kek_bytes(kek))
    assert discovery.read_bytes() == discovery_document(ISSUER)
    assert jwks.read_bytes() == jwks_document(store)
    assert json.loads(discovery.read_text())["jwks_uri"] == ISSUER + "/.well-known/jwks.json"
    assert len(json.loads(jwks.read_text())["keys"]) == 2


def test_export_without_keys_or_into_a_file_fails_with_exit_1(
    database: Database, run: Any, tmp_path: Path
) -> None:
    assert "no signing keys yet" in one_line_error(run("export", str(tmp_path / "out")), 1)
    assert not (tmp_path / "out").exists()
    assert run("rotate").exit_code == 0
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert "cannot write" in one_line_error(run("export", str(blocker / "x")), 1)


def test_two_running_replicas_agree_and_follow_a_cli_change_within_10_seconds(
    database_url: str, database: Database, run: Any, kek: str
) -> None:
    replicas = [Database(database_url), Database(database_url)]
    stores = [DatabaseKeyStore(db, kek_bytes(kek)) for db in replicas]
    try:
        for store in stores:
            store.bootstrap()
            store.start()
        assert stores[0].signer().kid == stores[1].signer().kid
        assert stores[0].public_jwks() == stores[1].public_jwks()
        (first,) = listed(run)

        assert run("rotate", "--now").exit_code == 0
        signing, previous = listed(run)
        assert previous["kid"] == first["kid"]
        deadline = time.monotonic() + 10
        while any(store.signer().kid != signing["kid"] for store in stores):
            assert time.monotonic() < deadline, "a replica still signs with the old key"
            time.sleep(0.05)
        assert stores[0].public_jwks() == stores[1].public_jwks()
        assert [jwk["kid"] for jwk in stores[0].public_jwks()] == [signing["kid"], first["kid"]]

        assert run("retire", first["kid"]).exit_code == 0
        deadline = time.monotonic() + 10
        while any(len(store.public_jwks()) != 1 for store in stores):
            assert time.monotonic() < deadline, "a replica still publishes the retired key"
            time.sleep(0.05)
        assert stores[0].list_keys() == stores[1].list_keys()
    finally:
        for store in stores:
            store.stop()
        for db in replicas:
            db.dispose()


# -- configuration and database failures --------------------------------------------------------


def test_wrong_key_encryption_key_is_exit_2_naming_the_variable_and_writes_nothing(
    database: Database, run: Any, tmp_path: Path
) -> None:
    assert run("rotate").exit_code == 0
    before = table_rows(database, "signing_keys")
    other = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    for args in (("list",), ("rotate",), ("rotate", "--now"), ("export", str(tmp_path / "x"))):
        error = one_line_error(run(*args, STS_KEY_ENCRYPTION_KEY=other), 2)
        assert error.startswith("error: STS_KEY_ENCRYPTION_KEY: cannot decrypt")
        assert other not in error
    assert table_rows(database, "signing_keys") == before
    assert not (tmp_path / "x").exists()


def test_a_stored_row_altered_without_the_key_encryption_key_is_exit_1(
    database: Database, run: Any
) -> None:
    assert run("rotate").exit_code == 0
    (key,) = listed(run)
    intruder = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    numbers = intruder.public_numbers()
    n = base64.urlsafe_b64encode(numbers.n.to_bytes(256, "big")).decode().rstrip("=")
    with database.engine.begin() as conn:
        row = conn.execute(sa.text("SELECT public_jwk FROM signing_keys")).scalar_one()
        jwk = json.loads(row) if isinstance(row, str) else dict(row)
        conn.execute(
            sa.text("UPDATE signing_keys SET public_jwk = :jwk"),
            {"jwk": json.dumps({**jwk, "n": n})},
        )
    error = one_line_error(run("list"), 1)
    assert error == (
        f"error: signing key {key['kid']}: the stored public key does not match the sealed "
        "private key"
    )


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"STS_BROKER_ISSUER": None}, "STS_BROKER_ISSUER"),
        ({"STS_BROKER_ISSUER": "https://sts.example.com/"}, "STS_BROKER_ISSUER"),
        ({"STS_KEY_ENCRYPTION_KEY": None}, "STS_KEY_ENCRYPTION_KEY"),
        ({"STS_KEY_ENCRYPTION_KEY": "short"}, "STS_KEY_ENCRYPTION_KEY"),
        ({"STS_SIGNING_KEY_ROTATION_DAYS": "-3"}, "STS_SIGNING_KEY_ROTATION_DAYS"),
        ({"STS_DATABASE_URL": "nosuchdb://x/y"}, "STS_DATABASE_URL"),
    ],
)
@pytest.mark.parametrize("command", [("list",), ("rotate",), ("retire", "kid"), ("export", "d")])
def test_bad_configuration_is_exit_2_with_one_line_naming_the_variable(
    database: Database,
    run: Any,
    env: dict[str, str | None],
    variable: str,
    command: tuple[str, ...],
) -> None:
    error = one_line_error(run(*command, **env), 2)
    assert error.startswith(f"error: {variable}: ")
    assert table_rows(database, "signing_keys") == []


def test_an_unmigrated_database_is_exit_1(database_url: str, run: Any) -> None:
    assert "run sts db upgrade" in one_line_error(run("list"), 1)


def test_an_unreachable_database_is_exit_1(database: Database, run: Any) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    error = one_line_error(
        run("list", STS_DATABASE_URL=f"postgresql+psycopg://postgres@127.0.0.1:{port}/test"), 1
    )
    assert error.startswith("error: database unreachable: ")


# -- what the database holds --------------------------------------------------------------------


def private_keys(database: Database, kek: str) -> list[rsa.RSAPrivateKey]:
    """Unseal every stored private key as the model documents it: nonce || AES-GCM, AAD kid."""
    aead = AESGCM(kek_bytes(kek))
    keys = []
    for row in table_rows(database, "signing_keys"):
        sealed = row["sealed_private_key"]
        if sealed is None:
            continue
        sealed = bytes(sealed)
        der = aead.decrypt(sealed[:12], sealed[12:], row["kid"].encode())
        key = serialization.load_der_private_key(der, password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        keys.append(key)
    return keys


def database_dump(database: Database, files: list[Path]) -> list[bytes]:
    """Every column of every row of every table, as bytes, plus the database's own files."""
    blobs = [path.read_bytes() for path in files if path.exists()]
    with database.engine.connect() as conn:
        for table in sa.inspect(conn).get_table_names():
            query = sa.text(f'SELECT * FROM "{table}"')  # noqa: S608 - names from the schema
            for row in conn.execute(query):
                for value in row:
                    if isinstance(value, bytes | bytearray | memoryview):
                        blobs.append(bytes(value))
                    elif value is not None:
                        blobs.append(str(value).encode())
                        blobs.append(json.dumps(value, default=str).encode())
    return blobs


_BASE64_RUN = re.compile(rb"[A-Za-z0-9+/_-]{16,}={0,2}")
_HEX_RUN = re.compile(rb"[0-9A-Fa-f]{32,}")


def decodings(blob: bytes) -> Iterator[bytes]:
    """The blob, and whatever its base64, base64url, hex and PEM-looking runs decode to."""
    yield blob
    flat = re.sub(rb"-----[A-Z ]+-----|\s", b"", blob)
    for text in (blob, flat):
        for run in _BASE64_RUN.findall(text):
            body = run.rstrip(b"=")
            for decode in (base64.urlsafe_b64decode, base64.standard_b64decode):
                for start in range(4):
                    chunk = body[start:]
                    chunk = chunk[: len(chunk) - len(chunk) % 4 or None]
                    with contextlib.suppress(binascii.Error, ValueError):
                        yield decode(chunk.replace(b"-", b"+").replace(b"_", b"/"))
        for run in _HEX_RUN.findall(text):
            yield binascii.unhexlify(run[: len(run) - len(run) % 2])


def fragments(value: int) -> list[bytes]:
    """16-byte windows of a big number: any one of them found means the number leaked."""
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return [raw[index : index + 16] for index in range(0, len(raw) - 15, 8)]


def found(blobs: list[bytes], value: int) -> bool:
    windows = fragments(value)
    digits = str(value)[:40].encode()
    for blob in blobs:
        if digits in blob:
            return True
        for decoded in decodings(blob):
            if any(window in decoded for window in windows):
                return True
    return False


def test_the_database_dump_holds_no_private_key_material_in_any_encoding(
    database: Database, database_url: str, run: Any, kek: str
) -> None:
    assert run("rotate").exit_code == 0
    assert run("rotate").exit_code == 0
    assert run("rotate", "--now").exit_code == 0
    assert run("rotate").exit_code == 0
    keys = private_keys(database, kek)
    assert len(keys) == 3
    retired = listed(run)[-1]["kid"]
    assert run("retire", retired).exit_code == 0

    files: list[Path] = []
    if database.is_sqlite and database.url.database:
        path = Path(database.url.database)
        files = [path, path.with_name(path.name + "-wal")]
    blobs = database_dump(database, files)

    for key in keys:
        numbers = key.private_numbers()
        # The search does find what is there: every public modulus is stored (the public JWK).
        assert found(blobs, numbers.public_numbers.n)
        for secret in (numbers.p, numbers.q, numbers.d, numbers.dmp1, numbers.dmq1, numbers.iqmp):
            assert not found(blobs, secret)


# -- KMS ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kms() -> Iterator[AwsEmulator]:
    with AwsEmulator() as emulator:
        yield emulator


@pytest.fixture
def run_kms(kms: AwsEmulator) -> Any:
    aws_env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "AWS_PROFILE": None,
    }
    client = boto3.client(
        "kms",
        region_name="us-east-1",
        endpoint_url=kms.endpoint_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    arns = [
        client.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
        for _ in range(2)
    ]

    def invoke(*args: str, **env: str | None) -> Result:
        environment: dict[str, str | None] = {
            **aws_env,
            # Never opened: with KMS, sts keys needs no database.
            "STS_DATABASE_URL": "sqlite:///unused.db",
            "STS_BROKER_ISSUER": ISSUER,
            "STS_SIGNING_KMS_KEY_IDS": ",".join(arns),
            "STS_KMS_ENDPOINT_URL": kms.endpoint_url,
            "STS_ALLOW_HTTP_LOOPBACK": "true",
            "STS_KEY_ENCRYPTION_KEY": None,
            **env,
        }
        return CliRunner().invoke(cli, ["keys", *args], env=environment)

    return invoke


def test_with_kms_list_and_export_show_the_kms_keys(run_kms: Any, tmp_path: Path) -> None:
    result = run_kms("list", "--json")
    assert result.exit_code == 0, result.output
    keys = json.loads(result.stdout)
    assert [key["state"] for key in keys] == ["signing", "previous"]
    exported = run_kms("export", str(tmp_path))
    assert exported.exit_code == 0, exported.output
    jwks = json.loads((tmp_path / ".well-known" / "jwks.json").read_text())
    assert [key["kid"] for key in jwks["keys"]] == [key["kid"] for key in keys]


@pytest.mark.parametrize("command", [("rotate",), ("rotate", "--now"), ("retire", "kid")])
def test_with_kms_rotate_and_retire_are_exit_2_in_one_line(
    run_kms: Any, command: tuple[str, ...]
) -> None:
    error = one_line_error(run_kms(*command), 2)
    assert error == (
        "error: STS_SIGNING_KMS_KEY_IDS: the signing keys are managed in AWS KMS; "
        "change the key list to rotate or retire"
    )


def test_with_kms_unreachable_list_is_exit_1(run_kms: Any) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    error = one_line_error(
        run_kms(
            "list",
            STS_KMS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        ),
        1,
    )
    assert error == "error: AWS KMS unavailable (kms GetPublicKey: EndpointConnectionError)"


def test_with_kms_a_key_that_cannot_sign_is_exit_2(run_kms: Any, kms: AwsEmulator) -> None:
    client = boto3.client(
        "kms",
        region_name="us-east-1",
        endpoint_url=kms.endpoint_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    arn = client.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
    error = one_line_error(run_kms("list", STS_SIGNING_KMS_KEY_IDS=arn), 2)
    assert error.startswith("error: STS_SIGNING_KMS_KEY_IDS: ")
