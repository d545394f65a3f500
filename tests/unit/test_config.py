"""Settings: defaults, and one clear error naming the variable for each bad value."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from sts import config
from sts.config import ZUPLO_ISSUER, ConfigError, Settings

KEY = base64.urlsafe_b64encode(bytes(range(32))).decode()


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.database_url == "sqlite:///sts.db"
    assert settings.trusted_issuers == (ZUPLO_ISSUER,)
    assert settings.audiences == ()
    assert settings.clock_skew_seconds == 60
    assert settings.aws_region == "us-east-1"
    assert settings.aws_endpoint_url is None
    assert settings.gcp_sts_url == "https://sts.googleapis.com/v1/token"
    assert settings.gcp_iam_credentials_url == "https://iamcredentials.googleapis.com"
    assert settings.redis_url is None
    assert settings.log_format == "json"
    assert not settings.allow_http_loopback


def test_full_environment() -> None:
    settings = Settings.from_env(
        {
            "STS_DATABASE_URL": "postgresql+psycopg://u@h/db",
            "STS_AUDIENCE": "https://a.example, https://b.example",
            "STS_TRUSTED_ISSUERS": "http://127.0.0.1:8080/iss,https://x.example/iss",
            "STS_ALLOW_HTTP_LOOPBACK": "true",
            "STS_CLOCK_SKEW_SECONDS": "30",
            "STS_AWS_REGION": "eu-west-1",
            "STS_AWS_ENDPOINT_URL": "http://localhost:5000",
            "STS_GCP_STS_URL": "http://[::1]:9000/v1/token",
            "STS_GCP_IAM_CREDENTIALS_URL": "http://127.0.0.2:9000/",
            "STS_AZURE_AUTHORITY_URL": "http://127.0.0.3:9100/",
            "STS_REDIS_URL": "redis://127.0.0.1:6379/0",
            "STS_CACHE_ENCRYPTION_KEY": KEY.rstrip("="),
            "STS_LOG_FORMAT": "text",
        }
    )
    assert settings.audiences == ("https://a.example", "https://b.example")
    assert settings.trusted_issuers == ("http://127.0.0.1:8080/iss", "https://x.example/iss")
    assert settings.clock_skew_seconds == 30
    assert settings.cache_encryption_key == bytes(range(32))
    assert settings.gcp_iam_credentials_url == "http://127.0.0.2:9000"
    assert settings.azure_authority_url == "http://127.0.0.3:9100"
    assert settings.log_format == "text"
    assert "cache_encryption_key" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"STS_DATABASE_URL": "not a url"}, "STS_DATABASE_URL"),
        ({"STS_DATABASE_URL": " "}, "STS_DATABASE_URL"),
        ({"STS_TRUSTED_ISSUERS": "http://127.0.0.1/iss"}, "STS_TRUSTED_ISSUERS"),
        (
            {"STS_TRUSTED_ISSUERS": "http://example.com/iss", "STS_ALLOW_HTTP_LOOPBACK": "1"},
            "STS_TRUSTED_ISSUERS",
        ),
        ({"STS_TRUSTED_ISSUERS": "ftp://example.com"}, "STS_TRUSTED_ISSUERS"),
        ({"STS_TRUSTED_ISSUERS": ""}, "STS_TRUSTED_ISSUERS"),
        ({"STS_TRUSTED_ISSUERS": "https://a.example,,https://b.example"}, "STS_TRUSTED_ISSUERS"),
        ({"STS_ALLOW_HTTP_LOOPBACK": "maybe"}, "STS_ALLOW_HTTP_LOOPBACK"),
        ({"STS_CLOCK_SKEW_SECONDS": "-1"}, "STS_CLOCK_SKEW_SECONDS"),
        ({"STS_CLOCK_SKEW_SECONDS": "1.5"}, "STS_CLOCK_SKEW_SECONDS"),
        ({"STS_CLOCK_SKEW_SECONDS": "3600"}, "STS_CLOCK_SKEW_SECONDS"),
        ({"STS_AWS_REGION": "mars"}, "STS_AWS_REGION"),
        ({"STS_AWS_ENDPOINT_URL": "http://sts.example.com"}, "STS_AWS_ENDPOINT_URL"),
        ({"STS_GCP_STS_URL": "sts.googleapis.com"}, "STS_GCP_STS_URL"),
        ({"STS_GCP_IAM_CREDENTIALS_URL": "http://10.0.0.1"}, "STS_GCP_IAM_CREDENTIALS_URL"),
        ({"STS_AZURE_AUTHORITY_URL": "http://login.example.com"}, "STS_AZURE_AUTHORITY_URL"),
        ({"STS_AZURE_AUTHORITY_URL": "login.microsoftonline.com"}, "STS_AZURE_AUTHORITY_URL"),
        ({"STS_REDIS_URL": "http://127.0.0.1:6379"}, "STS_REDIS_URL"),
        ({"STS_REDIS_URL": "redis://127.0.0.1:6379"}, "STS_CACHE_ENCRYPTION_KEY"),
        ({"STS_CACHE_ENCRYPTION_KEY": "short"}, "STS_CACHE_ENCRYPTION_KEY"),
        ({"STS_CACHE_ENCRYPTION_KEY": "not base64!"}, "STS_CACHE_ENCRYPTION_KEY"),
        ({"STS_LOG_FORMAT": "xml"}, "STS_LOG_FORMAT"),
        ({"STS_AUDIT_RETENTION_DAYS": "0"}, "STS_AUDIT_RETENTION_DAYS"),
        ({"STS_AUDIT_RETENTION_DAYS": "3651"}, "STS_AUDIT_RETENTION_DAYS"),
        ({"STS_AUDIT_RETENTION_DAYS": "7d"}, "STS_AUDIT_RETENTION_DAYS"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert caught.value.variable == variable
    message = str(caught.value)
    assert message.startswith(variable + ":")
    assert "\n" not in message


def test_audit_retention_days() -> None:
    assert Settings.from_env({}).audit_retention_days == 90
    assert Settings.from_env({"STS_AUDIT_RETENTION_DAYS": " 3650 "}).audit_retention_days == 3650
    assert Settings.from_env({"STS_AUDIT_RETENTION_DAYS": "1"}).audit_retention_days == 1


def test_audience_required_for_serving() -> None:
    with pytest.raises(ConfigError, match=r"^STS_AUDIENCE:"):
        Settings.from_env({}).require_audience()
    Settings.from_env({"STS_AUDIENCE": "https://a.example"}).require_audience()


def test_jwks_url_rule() -> None:
    assert (
        Settings().jwks_url("https://x.example/iss")
        == "https://x.example/iss/.well-known/jwks.json"
    )


@pytest.mark.parametrize("variable", ["STS_CACHE_ENCRYPTION_KEY", "STS_KEY_ENCRYPTION_KEY"])
def test_a_standard_base64_key_says_how_to_convert_it(variable: str) -> None:
    standard = base64.b64encode(bytes([0xFB, 0xFF] * 16)).decode()  # holds + and /
    assert "+" in standard
    assert "/" in standard
    env = {variable: standard, "STS_REDIS_URL": "redis://127.0.0.1:6379"}
    if variable == "STS_KEY_ENCRYPTION_KEY":
        env = {variable: standard, "STS_BROKER_ISSUER": "https://sts.example.com"}
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert caught.value.variable == variable
    assert "not standard base64 (openssl rand -base64): write - for + and _ for /" in str(
        caught.value
    )
    converted = standard.replace("+", "-").replace("/", "_")
    assert Settings.from_env({**env, variable: converted})


def test_variables_lists_every_name_the_settings_read() -> None:
    source = Path(config.__file__).read_text()
    assert set(re.findall(r'"(STS_[A-Z0-9_]+)"', source)) == config.VARIABLES


@pytest.mark.parametrize("variable", sorted(config.VARIABLES))
@pytest.mark.parametrize("bad", ["\n", "\x07", "\u202e", "\u200b"])
def test_a_control_or_format_character_in_any_value_names_the_variable(
    variable: str, bad: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: f"https://a.example{bad}https://b.example"})
    assert caught.value.variable == variable
    assert "control or format characters" in str(caught.value)


def test_a_trailing_newline_from_a_file_is_still_stripped() -> None:
    settings = Settings.from_env({"STS_TRUSTED_ISSUERS": "https://a.example\n"})
    assert settings.trusted_issuers == ("https://a.example",)


@pytest.mark.parametrize("variable", ["STS_CACHE_ENCRYPTION_KEY", "STS_KEY_ENCRYPTION_KEY"])
@pytest.mark.parametrize(
    ("value", "length"),
    [("short", 5), ("a" * 42, 42), ("a" * 44, 44), (base64.urlsafe_b64encode(b"k" * 16), 22)],
)
def test_a_key_of_the_wrong_length_is_told_its_length(
    variable: str, value: str | bytes, length: int
) -> None:
    """Reference section 5: "short" is base64url characters of the wrong length, and the
    message says so rather than "must be base64url"."""
    text = value.decode().rstrip("=") if isinstance(value, bytes) else value
    env = {variable: text, "STS_BROKER_ISSUER": "https://sts.example.com"}
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert caught.value.variable == variable
    message = str(caught.value)
    assert f"43 characters (padding optional), got {length}" in message
    assert "must be base64url:" not in message.split("32 random bytes, ", maxsplit=1)[0]


def test_the_mappings_file_is_a_path_checked_by_serve(tmp_path: Path) -> None:
    assert Settings.from_env({}).mappings_file is None
    assert Settings.from_env({"STS_MAPPINGS_FILE": "  "}).mappings_file is None
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"STS_MAPPINGS_FILE": "x" * 4097})
    assert caught.value.variable == "STS_MAPPINGS_FILE"
    serving = {"STS_AUDIENCE": "a"}
    for path, why in (
        (tmp_path / "absent.yaml", "cannot read"),
        (tmp_path, "is not a regular file"),
    ):
        settings = Settings.from_env({**serving, "STS_MAPPINGS_FILE": str(path)})
        assert settings.mappings_file == str(path)
        with pytest.raises(ConfigError) as caught:
            settings.require_serving()
        assert caught.value.variable == "STS_MAPPINGS_FILE"
        assert why in str(caught.value)
    present = tmp_path / "mappings.yaml"
    present.write_text("mappings: []\n")
    Settings.from_env({**serving, "STS_MAPPINGS_FILE": str(present)}).require_serving()
