"""Broker-mode settings (README "Configuration"): defaults, accepted values, and one error naming
the variable for each bad value."""

from __future__ import annotations

import base64

import pytest

from sts.config import ConfigError, Settings, kms_key_region

KEK = base64.urlsafe_b64encode(bytes(range(32, 64))).decode()
ARN = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
MRK_ARN = "arn:aws-us-gov:kms:us-gov-west-1:123456789012:key/mrk-" + "0123456789abcdef" * 2
ISSUER = "https://sts.example.com/broker"


def test_broker_mode_is_off_by_default() -> None:
    settings = Settings.from_env({})
    assert settings.broker_issuer is None
    assert settings.key_encryption_key is None
    assert settings.signing_kms_key_ids == ()
    assert settings.kms_endpoint_url is None
    assert settings.signing_key_rotation_days == 30


def test_broker_with_database_keys() -> None:
    settings = Settings.from_env(
        {
            "STS_BROKER_ISSUER": ISSUER,
            "STS_KEY_ENCRYPTION_KEY": KEK.rstrip("="),
            "STS_SIGNING_KEY_ROTATION_DAYS": "0",
        }
    )
    assert settings.broker_issuer == ISSUER
    assert settings.require_broker() == ISSUER
    assert settings.key_encryption_key == bytes(range(32, 64))
    assert settings.signing_key_rotation_days == 0
    assert "key_encryption_key" not in repr(settings)
    assert KEK.rstrip("=") not in repr(settings)


def test_broker_with_kms_keys_needs_no_key_encryption_key() -> None:
    settings = Settings.from_env(
        {
            "STS_BROKER_ISSUER": "http://127.0.0.1:8000",
            "STS_ALLOW_HTTP_LOOPBACK": "true",
            "STS_SIGNING_KMS_KEY_IDS": f"{ARN}, {MRK_ARN}",
            "STS_KMS_ENDPOINT_URL": "http://localhost:4566",
        }
    )
    assert settings.signing_kms_key_ids == (ARN, MRK_ARN)
    assert settings.kms_endpoint_url == "http://localhost:4566"
    assert settings.key_encryption_key is None
    assert kms_key_region(ARN) == "eu-west-1"
    assert kms_key_region(MRK_ARN) == "us-gov-west-1"


def test_empty_values_mean_unset_as_in_the_configmap() -> None:
    settings = Settings.from_env(
        {
            "STS_BROKER_ISSUER": "",
            "STS_KEY_ENCRYPTION_KEY": "",
            "STS_SIGNING_KMS_KEY_IDS": " ",
            "STS_KMS_ENDPOINT_URL": "",
        }
    )
    assert settings.broker_issuer is None
    assert settings.key_encryption_key is None
    assert settings.signing_kms_key_ids == ()
    assert settings.kms_endpoint_url is None


def test_require_broker_names_the_issuer_variable_when_broker_mode_is_off() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({}).require_broker()
    assert caught.value.variable == "STS_BROKER_ISSUER"


BROKER = {"STS_BROKER_ISSUER": ISSUER, "STS_KEY_ENCRYPTION_KEY": KEK}


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"STS_BROKER_ISSUER": "http://sts.example.com", "STS_KEY_ENCRYPTION_KEY": KEK}, None),
        (
            {
                **BROKER,
                "STS_BROKER_ISSUER": "http://sts.example.com",
                "STS_ALLOW_HTTP_LOOPBACK": "true",
            },
            None,
        ),
        ({**BROKER, "STS_BROKER_ISSUER": "http://127.0.0.1:8000"}, None),
        ({**BROKER, "STS_BROKER_ISSUER": "https://sts.example.com/"}, None),
        ({**BROKER, "STS_BROKER_ISSUER": "https://sts.example.com/broker/"}, None),
        ({**BROKER, "STS_BROKER_ISSUER": "https://sts.example.com/?tenant=a"}, None),
        ({**BROKER, "STS_BROKER_ISSUER": "https://sts.example.com?"}, None),
        ({**BROKER, "STS_BROKER_ISSUER": "https://sts.example.com#top"}, None),
        ({**BROKER, "STS_BROKER_ISSUER": "https://sts.example.com#"}, None),
        ({**BROKER, "STS_BROKER_ISSUER": "https://sts.exa\x07mple.com"}, None),
        ({**BROKER, "STS_BROKER_ISSUER": "https://sts.example.com/a b"}, None),
        ({**BROKER, "STS_BROKER_ISSUER": "https://user:pw@sts.example.com"}, None),
        ({**BROKER, "STS_BROKER_ISSUER": "sts.example.com"}, None),
        ({**BROKER, "STS_BROKER_ISSUER": "ftp://sts.example.com"}, None),
        ({**BROKER, "STS_KEY_ENCRYPTION_KEY": "short"}, "STS_KEY_ENCRYPTION_KEY"),
        ({**BROKER, "STS_KEY_ENCRYPTION_KEY": KEK[:-4] + "+/+/"}, "STS_KEY_ENCRYPTION_KEY"),
        (
            {**BROKER, "STS_KEY_ENCRYPTION_KEY": base64.urlsafe_b64encode(bytes(33)).decode()},
            "STS_KEY_ENCRYPTION_KEY",
        ),
        # Validated whenever set, like STS_CACHE_ENCRYPTION_KEY.
        ({"STS_KEY_ENCRYPTION_KEY": "not base64!"}, "STS_KEY_ENCRYPTION_KEY"),
        ({**BROKER, "STS_SIGNING_KMS_KEY_IDS": ARN}, "STS_KEY_ENCRYPTION_KEY"),
        ({"STS_SIGNING_KMS_KEY_IDS": ARN}, "STS_SIGNING_KMS_KEY_IDS"),
        (
            {"STS_BROKER_ISSUER": ISSUER, "STS_SIGNING_KMS_KEY_IDS": f"{ARN},,{MRK_ARN}"},
            "STS_SIGNING_KMS_KEY_IDS",
        ),
        (
            {"STS_BROKER_ISSUER": ISSUER, "STS_SIGNING_KMS_KEY_IDS": f"{ARN},{ARN}"},
            "STS_SIGNING_KMS_KEY_IDS",
        ),
        (
            {"STS_BROKER_ISSUER": ISSUER, "STS_SIGNING_KMS_KEY_IDS": "alias/sts-signing"},
            "STS_SIGNING_KMS_KEY_IDS",
        ),
        (
            {
                "STS_BROKER_ISSUER": ISSUER,
                "STS_SIGNING_KMS_KEY_IDS": "arn:aws:kms:eu-west-1:123456789012:alias/sts",
            },
            "STS_SIGNING_KMS_KEY_IDS",
        ),
        (
            {"STS_BROKER_ISSUER": ISSUER, "STS_SIGNING_KMS_KEY_IDS": ARN.replace("kms", "iam")},
            "STS_SIGNING_KMS_KEY_IDS",
        ),
        (
            {"STS_BROKER_ISSUER": ISSUER, "STS_SIGNING_KMS_KEY_IDS": ARN.replace("eu-west-1", "x")},
            "STS_SIGNING_KMS_KEY_IDS",
        ),
        (
            {"STS_BROKER_ISSUER": ISSUER, "STS_SIGNING_KMS_KEY_IDS": ARN.upper()},
            "STS_SIGNING_KMS_KEY_IDS",
        ),
        ({**BROKER, "STS_BROKER_ISSUER": "https://sts.example.com/\u202eevil"}, None),
        ({**BROKER, "STS_BROKER_ISSUER": "https://sts.example.com/a\nb"}, None),
        ({"STS_KMS_ENDPOINT_URL": "https://kms.example.com/\x1b[31m"}, "STS_KMS_ENDPOINT_URL"),
        ({"STS_KMS_ENDPOINT_URL": "https://kms.exa\tmple.com"}, "STS_KMS_ENDPOINT_URL"),
        (
            {"STS_BROKER_ISSUER": ISSUER, "STS_SIGNING_KMS_KEY_IDS": ARN + "\u200b"},
            "STS_SIGNING_KMS_KEY_IDS",
        ),
        ({"STS_KMS_ENDPOINT_URL": "http://kms.example.com"}, "STS_KMS_ENDPOINT_URL"),
        ({"STS_KMS_ENDPOINT_URL": "kms.eu-west-1.amazonaws.com"}, "STS_KMS_ENDPOINT_URL"),
        ({"STS_SIGNING_KEY_ROTATION_DAYS": "-1"}, "STS_SIGNING_KEY_ROTATION_DAYS"),
        ({"STS_SIGNING_KEY_ROTATION_DAYS": "1.5"}, "STS_SIGNING_KEY_ROTATION_DAYS"),
        ({"STS_SIGNING_KEY_ROTATION_DAYS": "366"}, "STS_SIGNING_KEY_ROTATION_DAYS"),
        ({"STS_SIGNING_KEY_ROTATION_DAYS": "thirty"}, "STS_SIGNING_KEY_ROTATION_DAYS"),
        ({"STS_SIGNING_KEY_ROTATION_DAYS": ""}, "STS_SIGNING_KEY_ROTATION_DAYS"),
    ],
)
def test_bad_broker_value_names_its_variable(env: dict[str, str], variable: str | None) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    expected = variable or "STS_BROKER_ISSUER"
    assert caught.value.variable == expected
    assert str(caught.value).startswith(expected + ": ")
    assert "\n" not in str(caught.value)
    assert KEK not in str(caught.value)


@pytest.mark.parametrize("kek", [None, "", " "])
def test_an_issuer_without_a_key_store_is_refused_only_where_keys_are_used(
    kek: str | None,
) -> None:
    """Mapping commands read STS_BROKER_ISSUER for the default token and need no key; ``sts
    serve`` and ``sts keys`` call ``require_signing_keys``."""
    env = {"STS_BROKER_ISSUER": ISSUER}
    if kek is not None:
        env["STS_KEY_ENCRYPTION_KEY"] = kek
    settings = Settings.from_env(env)
    assert settings.broker_issuer == ISSUER
    with pytest.raises(ConfigError) as refused:
        settings.require_signing_keys()
    assert refused.value.variable == "STS_KEY_ENCRYPTION_KEY"
    Settings.from_env({**env, "STS_KEY_ENCRYPTION_KEY": KEK}).require_signing_keys()
    Settings.from_env({**env, "STS_SIGNING_KMS_KEY_IDS": ARN}).require_signing_keys()


@pytest.mark.parametrize(
    ("trusted", "broker"),
    [
        (ISSUER, ISSUER),
        (f"https://issuer.example.com, {ISSUER}", ISSUER),
        # The same issuer spelled otherwise: its keys are read from the same JWKS URL.
        (ISSUER + "/", ISSUER),
        ("HTTPS://STS.Example.COM/broker", ISSUER),
        ("https://sts.example.com:443/broker", ISSUER),
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000"),
        ("http://localhost:80", "http://localhost"),
    ],
)
def test_the_broker_issuer_is_never_a_trusted_issuer(trusted: str, broker: str) -> None:
    """docs/reference.md section 5: a broker token is a credential for one cloud call, never a
    subject token; exit 2 naming both variables."""
    env = {
        **BROKER,
        "STS_BROKER_ISSUER": broker,
        "STS_TRUSTED_ISSUERS": trusted,
        "STS_ALLOW_HTTP_LOOPBACK": "true",
    }
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    message = str(caught.value)
    assert caught.value.variable == "STS_TRUSTED_ISSUERS"
    assert message.startswith("STS_TRUSTED_ISSUERS: ")
    assert "STS_BROKER_ISSUER" in message
    assert "\n" not in message
    # Without a key store too: the conflict is found whatever command reads the settings.
    with pytest.raises(ConfigError):
        Settings.from_env({k: v for k, v in env.items() if k != "STS_KEY_ENCRYPTION_KEY"})


@pytest.mark.parametrize(
    ("trusted", "broker"),
    [
        ("https://sts.example.com", ISSUER),
        ("https://sts.example.com/broker/other", ISSUER),
        ("https://sts.example.com/brokers", ISSUER),
        ("https://sts.example.com/Broker", ISSUER),
        ("https://sts.example.com:8443/broker", ISSUER),
        ("http://127.0.0.1/broker", "https://127.0.0.1/broker"),
    ],
)
def test_other_issuers_beside_the_broker_are_accepted(trusted: str, broker: str) -> None:
    env = {
        **BROKER,
        "STS_BROKER_ISSUER": broker,
        "STS_TRUSTED_ISSUERS": trusted,
        "STS_ALLOW_HTTP_LOOPBACK": "true",
    }
    settings = Settings.from_env(env)
    assert settings.broker_issuer == broker
    assert settings.trusted_issuers == (trusted,)
