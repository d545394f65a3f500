"""Typed settings read from ``STS_*`` environment variables (docs/reference.md section 5).

Settings are parsed and cross-checked once, at start-up; any bad value raises
:class:`ConfigError` naming the variable, so nothing half-starts.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

ZUPLO_ISSUER = "https://dev.zuplo.com/v1/client-auth/auth_o8PUdhKxSTOiB794GWPwLQCD"
DEFAULT_DATABASE_URL = "sqlite:///sts.db"
DEFAULT_GCP_STS_URL = "https://sts.googleapis.com/v1/token"
DEFAULT_GCP_IAM_CREDENTIALS_URL = "https://iamcredentials.googleapis.com"
DEFAULT_AZURE_AUTHORITY_URL = "https://login.microsoftonline.com"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
MAX_CLOCK_SKEW_SECONDS = 300
AUDIT_RETENTION_RANGE = (1, 3650)
SIGNING_KEY_ROTATION_RANGE = (0, 365)
# A KMS key ARN (AWS KMS Developer Guide, "Key identifiers"): a key id is a UUID, or "mrk-" and
# 32 hex digits for a multi-Region key. Aliases are refused: an alias can be repointed, and the
# published key set must name keys, not names.
_KMS_KEY_ARN = re.compile(
    r"^arn:aws(?:-[a-z]+)*:kms:(?P<region>[a-z]{2}(?:-[a-z]+)+-\d+):\d{12}:key/"
    r"(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})$"
)


class ConfigError(ValueError):
    """A configuration value is unusable; ``str()`` is one line naming the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


def is_loopback_host(host: str | None) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ::1: the only hosts plain HTTP may reach."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(variable: str, url: str, *, allow_http_loopback: bool) -> str:
    """Validate an outbound URL: HTTPS, or HTTP to a loopback host when allowed."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError(variable, f"not a valid URL: {url!r}") from None
    if not parts.hostname or parts.username or parts.password or parts.fragment:
        raise ConfigError(variable, f"not a valid URL: {url!r}")
    if parts.scheme == "https":
        return url
    if parts.scheme == "http":
        if not allow_http_loopback:
            raise ConfigError(
                variable, "must use https (http is allowed only with STS_ALLOW_HTTP_LOOPBACK)"
            )
        if not is_loopback_host(parts.hostname):
            raise ConfigError(variable, "http is allowed only to 127.0.0.0/8, ::1 or localhost")
        return url
    raise ConfigError(variable, f"unsupported URL scheme {parts.scheme!r}")


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(name, f"expected true or false, got {raw!r}")


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    raw = env.get(name, "")
    items = tuple(item.strip() for item in raw.split(","))
    if any(not item for item in items) and raw.strip():
        raise ConfigError(name, "empty entry in comma-separated list")
    return tuple(item for item in items if item)


def decode_encryption_key(raw: str, variable: str = "STS_CACHE_ENCRYPTION_KEY") -> bytes:
    """Decode an AES-256 key given as 32 bytes, base64url, padding optional."""
    value = raw.strip()
    if not re.fullmatch(r"[A-Za-z0-9_-]+={0,2}", value):
        if re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", value):
            raise ConfigError(
                variable,
                "must be base64url, not standard base64 (openssl rand -base64): write - for +"
                " and _ for /, or make one with: python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'",
            )
        raise ConfigError(variable, "must be base64url")
    digits = value.rstrip("=")
    # 32 bytes are 43 base64url characters: any other length is the wrong length, said as such
    # (a length that no base64 has, such as 5, is not a decoding problem to the operator).
    if len(digits) != KEY_CHARACTERS:
        raise ConfigError(
            variable,
            f"must be 32 random bytes, base64url: {KEY_CHARACTERS} characters (padding "
            f"optional), got {len(digits)}; make one with: python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'",
        )
    try:
        key = base64.urlsafe_b64decode(digits + "=" * (-len(digits) % 4))
    except (binascii.Error, ValueError):
        raise ConfigError(variable, "must be base64url") from None
    if len(key) != 32:
        raise ConfigError(variable, f"must decode to 32 bytes, got {len(key)}")
    return key


#: Base64url characters of a 32-byte key, without padding.
KEY_CHARACTERS = 43


#: The longest ``STS_MAPPINGS_FILE`` accepted (Linux's PATH_MAX).
MAX_PATH_CHARS = 4096


#: Every variable :meth:`Settings.from_env` reads (README "Configuration").
VARIABLES = frozenset(
    {
        "STS_ALLOW_HTTP_LOOPBACK",
        "STS_AUDIENCE",
        "STS_AUDIT_RETENTION_DAYS",
        "STS_AWS_ENDPOINT_URL",
        "STS_AWS_REGION",
        "STS_AZURE_AUTHORITY_URL",
        "STS_BROKER_ISSUER",
        "STS_CACHE_ENCRYPTION_KEY",
        "STS_CLOCK_SKEW_SECONDS",
        "STS_DATABASE_URL",
        "STS_GCP_IAM_CREDENTIALS_URL",
        "STS_GCP_STS_URL",
        "STS_KEY_ENCRYPTION_KEY",
        "STS_KMS_ENDPOINT_URL",
        "STS_LOG_FORMAT",
        "STS_MAPPINGS_FILE",
        "STS_REDIS_URL",
        "STS_SIGNING_KEY_ROTATION_DAYS",
        "STS_SIGNING_KMS_KEY_IDS",
        "STS_TRUSTED_ISSUERS",
    }
)


def _printable(name: str, value: str) -> str:
    """Refuse control and format characters (Unicode Cc, Cf: newlines, bidi overrides)."""
    if any(unicodedata.category(char) in ("Cc", "Cf") for char in value):
        raise ConfigError(name, "must not contain control or format characters")
    return value


def check_broker_issuer(raw: str, *, allow_http_loopback: bool) -> str:
    """``STS_BROKER_ISSUER``: the exact ``iss`` of broker tokens (OpenID Connect Discovery 1.0
    section 3: the discovery document lives at issuer + ``/.well-known/openid-configuration``,
    so the issuer has no query or fragment; a trailing slash would make a second spelling of it).
    """
    name = "STS_BROKER_ISSUER"
    _printable(name, raw)
    if any(char.isspace() for char in raw):
        raise ConfigError(name, "must not contain spaces")
    issuer = check_url(name, raw, allow_http_loopback=allow_http_loopback)
    if "?" in issuer or "#" in issuer:
        raise ConfigError(name, "must not have a query or fragment")
    if issuer.endswith("/"):
        raise ConfigError(name, "must not end with a slash")
    return issuer


_DEFAULT_PORTS = {"http": 80, "https": 443}


def same_issuer(one: str, other: str) -> bool:
    """Whether two issuer URLs name one issuer: the same keys, at the same
    ``<issuer>/.well-known/jwks.json`` (:meth:`Settings.jwks_url` drops a trailing slash).

    Scheme and host compare case-insensitively and a default port is the same as none
    (RFC 3986 section 6.2.3); the path compares exactly, but for a trailing slash.
    """

    def identity(url: str) -> tuple[str, str, int | None, str]:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        port = parts.port if parts.port is not None else _DEFAULT_PORTS.get(scheme)
        return scheme, (parts.hostname or "").lower(), port, parts.path.rstrip("/")

    return identity(one) == identity(other)


def kms_key_region(arn: str) -> str:
    """The region named in a KMS key ARN that :class:`Settings` accepted."""
    match = _KMS_KEY_ARN.fullmatch(arn)
    if match is None:
        raise ValueError("not a KMS key ARN")
    return match["region"]


def _kms_key_ids(env: Mapping[str, str]) -> tuple[str, ...]:
    name = "STS_SIGNING_KMS_KEY_IDS"
    key_ids = _list(env, name)
    for key_id in key_ids:
        _printable(name, key_id)
    for key_id in key_ids:
        if not _KMS_KEY_ARN.fullmatch(key_id):
            raise ConfigError(
                name, "each entry must be a KMS key ARN (arn:aws:kms:<region>:<account>:key/<id>)"
            )
    if len(set(key_ids)) != len(key_ids):
        raise ConfigError(name, "names a key twice")
    return key_ids


#: The PostgreSQL dialect and driver the package depends on (psycopg 3).
PSYCOPG = "postgresql+psycopg"


def parse_database_url(raw: str) -> URL:
    """An SQLAlchemy URL whose dialect and driver are installed, or :class:`ConfigError`.

    Checked when settings load, so an unknown dialect (``nosuchdb://``) or a missing driver is a
    one-line configuration error for every command, not a stack trace at first use.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(raw)
    except (ArgumentError, ValueError):
        raise ConfigError("STS_DATABASE_URL", "not a valid SQLAlchemy URL") from None
    postgres_hint = ""
    if url.get_backend_name() in ("postgres", "postgresql") and url.drivername != PSYCOPG:
        postgres_hint = f": write {PSYCOPG}://... (the driver zuplo-sts installs)"
    try:
        dialect = url.get_dialect()
    except ArgumentError:
        raise ConfigError(
            "STS_DATABASE_URL", f"unknown database dialect {url.drivername!r}{postgres_hint}"
        ) from None
    try:
        dialect.import_dbapi()
    except ImportError:
        raise ConfigError(
            "STS_DATABASE_URL",
            f"the driver for {url.drivername!r} is not installed{postgres_hint}",
        ) from None
    return url


@dataclass(frozen=True)
class Settings:
    """Everything the service reads from its environment, validated."""

    database_url: str = DEFAULT_DATABASE_URL
    audiences: tuple[str, ...] = ()
    trusted_issuers: tuple[str, ...] = (ZUPLO_ISSUER,)
    allow_http_loopback: bool = False
    clock_skew_seconds: int = 60
    aws_region: str = "us-east-1"
    aws_endpoint_url: str | None = None
    gcp_sts_url: str = DEFAULT_GCP_STS_URL
    gcp_iam_credentials_url: str = DEFAULT_GCP_IAM_CREDENTIALS_URL
    azure_authority_url: str = DEFAULT_AZURE_AUTHORITY_URL
    redis_url: str | None = None
    cache_encryption_key: bytes | None = field(default=None, repr=False)
    log_format: Literal["json", "text"] = "json"
    audit_retention_days: int = 90
    broker_issuer: str | None = None
    key_encryption_key: bytes | None = field(default=None, repr=False)
    signing_kms_key_ids: tuple[str, ...] = ()
    kms_endpoint_url: str | None = None
    signing_key_rotation_days: int = 30
    mappings_file: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate settings; raises :class:`ConfigError` on the first bad value."""
        env = os.environ if env is None else env
        # docs/reference.md section 6: a control or format character inside any value (a
        # newline that would split one issuer in two, a bidi override) is bad configuration.
        # Surrounding whitespace, a file's trailing newline included, is stripped as before.
        for name in sorted(set(env) & VARIABLES):
            _printable(name, env[name].strip())
        allow_http = _bool(env, "STS_ALLOW_HTTP_LOOPBACK", False)

        database_url = env.get("STS_DATABASE_URL", DEFAULT_DATABASE_URL).strip()
        if not database_url:
            raise ConfigError("STS_DATABASE_URL", "must not be empty")
        parse_database_url(database_url)

        audiences = _list(env, "STS_AUDIENCE")

        issuers = _list(env, "STS_TRUSTED_ISSUERS") if "STS_TRUSTED_ISSUERS" in env else ()
        if "STS_TRUSTED_ISSUERS" in env and not issuers:
            raise ConfigError("STS_TRUSTED_ISSUERS", "must name at least one issuer")
        issuers = issuers or (ZUPLO_ISSUER,)
        for issuer in issuers:
            check_url("STS_TRUSTED_ISSUERS", issuer, allow_http_loopback=allow_http)
            if urlsplit(issuer).query:
                raise ConfigError("STS_TRUSTED_ISSUERS", "an issuer URL must not have a query")

        skew_raw = env.get("STS_CLOCK_SKEW_SECONDS", "60").strip()
        if not re.fullmatch(r"\d{1,6}", skew_raw):
            raise ConfigError("STS_CLOCK_SKEW_SECONDS", "must be a whole number of seconds")
        skew = int(skew_raw)
        if skew > MAX_CLOCK_SKEW_SECONDS:
            raise ConfigError("STS_CLOCK_SKEW_SECONDS", f"must be at most {MAX_CLOCK_SKEW_SECONDS}")

        region = env.get("STS_AWS_REGION", "us-east-1").strip()
        if not _REGION.fullmatch(region):
            raise ConfigError("STS_AWS_REGION", f"not an AWS region name: {region!r}")

        aws_endpoint = env.get("STS_AWS_ENDPOINT_URL", "").strip() or None
        if aws_endpoint is not None:
            check_url("STS_AWS_ENDPOINT_URL", aws_endpoint, allow_http_loopback=allow_http)

        gcp_sts = env.get("STS_GCP_STS_URL", DEFAULT_GCP_STS_URL).strip()
        check_url("STS_GCP_STS_URL", gcp_sts, allow_http_loopback=allow_http)
        gcp_iam = env.get("STS_GCP_IAM_CREDENTIALS_URL", DEFAULT_GCP_IAM_CREDENTIALS_URL).strip()
        check_url("STS_GCP_IAM_CREDENTIALS_URL", gcp_iam, allow_http_loopback=allow_http)
        azure = env.get("STS_AZURE_AUTHORITY_URL", DEFAULT_AZURE_AUTHORITY_URL).strip()
        check_url("STS_AZURE_AUTHORITY_URL", azure, allow_http_loopback=allow_http)

        redis_url = env.get("STS_REDIS_URL", "").strip() or None
        if redis_url is not None and urlsplit(redis_url).scheme not in {"redis", "rediss", "unix"}:
            raise ConfigError("STS_REDIS_URL", "must be a redis://, rediss:// or unix:// URL")
        raw_key = env.get("STS_CACHE_ENCRYPTION_KEY")
        key = decode_encryption_key(raw_key) if raw_key is not None and raw_key.strip() else None
        if redis_url is not None and key is None:
            raise ConfigError("STS_CACHE_ENCRYPTION_KEY", "is required when STS_REDIS_URL is set")

        log_format = env.get("STS_LOG_FORMAT", "json").strip().lower()
        if log_format not in ("json", "text"):
            raise ConfigError("STS_LOG_FORMAT", "must be json or text")

        retention_raw = env.get("STS_AUDIT_RETENTION_DAYS", "90").strip()
        low, high = AUDIT_RETENTION_RANGE
        if not re.fullmatch(r"\d{1,4}", retention_raw) or not low <= int(retention_raw) <= high:
            raise ConfigError(
                "STS_AUDIT_RETENTION_DAYS", f"must be a whole number of days, {low}..{high}"
            )

        broker_issuer_raw = env.get("STS_BROKER_ISSUER", "").strip()
        broker_issuer = (
            check_broker_issuer(broker_issuer_raw, allow_http_loopback=allow_http)
            if broker_issuer_raw
            else None
        )
        if broker_issuer is not None and any(
            same_issuer(issuer, broker_issuer) for issuer in issuers
        ):
            # docs/reference.md section 5: a broker token is a credential for one cloud call,
            # never a subject token.
            raise ConfigError(
                "STS_TRUSTED_ISSUERS",
                "must not contain STS_BROKER_ISSUER: the service never accepts its own tokens",
            )
        raw_kek = env.get("STS_KEY_ENCRYPTION_KEY")
        kek = (
            decode_encryption_key(raw_kek, "STS_KEY_ENCRYPTION_KEY")
            if raw_kek is not None and raw_kek.strip()
            else None
        )
        kms_key_ids = _kms_key_ids(env)
        if kms_key_ids and broker_issuer is None:
            raise ConfigError("STS_SIGNING_KMS_KEY_IDS", "is used only with STS_BROKER_ISSUER")
        if kms_key_ids and kek is not None:
            # Two key stores at once would leave which one signs to guesswork.
            raise ConfigError(
                "STS_KEY_ENCRYPTION_KEY", "must not be set together with STS_SIGNING_KMS_KEY_IDS"
            )
        # An issuer with neither key store is refused where keys are used (require_signing_keys:
        # sts serve through require_serving, before the database is touched; sts keys);
        # commands that only read or write mappings need no key.
        kms_endpoint = env.get("STS_KMS_ENDPOINT_URL", "").strip() or None
        if kms_endpoint is not None:
            _printable("STS_KMS_ENDPOINT_URL", kms_endpoint)
            check_url("STS_KMS_ENDPOINT_URL", kms_endpoint, allow_http_loopback=allow_http)
        rotation_raw = env.get("STS_SIGNING_KEY_ROTATION_DAYS", "30").strip()
        low, high = SIGNING_KEY_ROTATION_RANGE
        if not re.fullmatch(r"\d{1,3}", rotation_raw) or not low <= int(rotation_raw) <= high:
            raise ConfigError(
                "STS_SIGNING_KEY_ROTATION_DAYS",
                f"must be a whole number of days, {low}..{high} (0: only by sts keys rotate)",
            )

        mappings_file = env.get("STS_MAPPINGS_FILE", "").strip() or None
        if mappings_file is not None and len(mappings_file) > MAX_PATH_CHARS:
            raise ConfigError("STS_MAPPINGS_FILE", f"must be at most {MAX_PATH_CHARS} characters")

        return cls(
            database_url=database_url,
            audiences=audiences,
            trusted_issuers=issuers,
            allow_http_loopback=allow_http,
            clock_skew_seconds=skew,
            aws_region=region,
            aws_endpoint_url=aws_endpoint,
            gcp_sts_url=gcp_sts,
            gcp_iam_credentials_url=gcp_iam.rstrip("/"),
            azure_authority_url=azure.rstrip("/"),
            redis_url=redis_url,
            cache_encryption_key=key,
            log_format="json" if log_format == "json" else "text",
            audit_retention_days=int(retention_raw),
            broker_issuer=broker_issuer,
            key_encryption_key=kek,
            signing_kms_key_ids=kms_key_ids,
            kms_endpoint_url=kms_endpoint,
            signing_key_rotation_days=int(rotation_raw),
            mappings_file=mappings_file,
        )

    def require_audience(self) -> None:
        """``sts serve`` refuses to start without an audience to accept."""
        if not self.audiences:
            raise ConfigError("STS_AUDIENCE", "is required: the audiences accepted in ID tokens")

    def require_broker(self) -> str:
        """The broker issuer, for commands that exist only in broker mode (``sts keys``)."""
        if self.broker_issuer is None:
            raise ConfigError("STS_BROKER_ISSUER", "is required: broker mode is off")
        return self.broker_issuer

    def require_signing_keys(self) -> None:
        """Broker mode needs a key store: the key-encryption key or KMS keys (``sts serve``,
        ``sts keys``). Mapping, audit and explain commands never need the key that opens the
        signing keys (and never resolve a mapping's ``token`` from their own environment)."""
        self.require_broker()
        if not self.signing_kms_key_ids and self.key_encryption_key is None:
            raise ConfigError(
                "STS_KEY_ENCRYPTION_KEY",
                "is required with STS_BROKER_ISSUER (unless STS_SIGNING_KMS_KEY_IDS is set)",
            )

    def require_serving(self) -> None:
        """Everything ``sts serve`` needs beyond valid values, checked before it touches the
        database: an audience, and in broker mode a key store (one line, exit 2)."""
        self.require_audience()
        if self.broker_issuer is not None:
            self.require_signing_keys()
        if self.mappings_file is not None:
            from sts.mappings.watch import check_readable

            problem = check_readable(self.mappings_file)
            if problem is not None:
                raise ConfigError("STS_MAPPINGS_FILE", problem)

    def jwks_url(self, issuer: str) -> str:
        """The issuer's key set, by the fixed rule ``<issuer>/.well-known/jwks.json``."""
        return issuer.rstrip("/") + "/.well-known/jwks.json"
