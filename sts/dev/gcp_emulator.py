"""A local Google STS and IAM Credentials endpoint for tests and ``sts demo``.

Emulates, over real HTTP on 127.0.0.1:

- ``POST /v1/token``: Security Token Service token exchange
  (https://cloud.google.com/iam/docs/reference/sts/rest/v1/TopLevel/token, RFC 8693) for a
  workload identity pool OIDC provider, checking what Google checks: form body, grant and token
  types, the audience's full resource name and registration, the subject token's RS256
  signature against the provider's issuer JWKS (fetched over HTTP), ``iss``, ``exp``, ``aud``,
  and a scope.
- ``POST /v1/projects/-/serviceAccounts/{email}:generateAccessToken``
  (https://cloud.google.com/iam/docs/reference/credentials/rest/v1/projects.serviceAccounts/generateAccessToken):
  a federated token issued here, a service account bound to that token's provider, scopes and
  a lifetime of 1..43200 seconds.
- ``POST /v1/projects/-/serviceAccounts/{email}:generateIdToken``
  (https://cloud.google.com/iam/docs/reference/credentials/rest/v1/projects.serviceAccounts/generateIdToken):
  the same caller checks, a non-empty ``audience``, an optional boolean ``includeEmail`` and no
  unknown field; the answer ``{"token"}`` is an RS256 ID token signed by the emulator's own key
  with Google's claims (``iss`` ``https://accounts.google.com``, ``aud``, ``azp`` and ``sub``
  the account's numeric id, ``email`` and ``email_verified`` when asked, ``iat``, ``exp``).
- ``GET /oauth2/v3/certs`` (a JWKS) and ``GET /oauth2/v1/certs`` (key id to PEM X.509
  certificate), where Google publishes the keys of its ID tokens: ``certs_url`` is what
  ``google.oauth2.id_token.verify_token`` takes.

Errors have Google's shapes: OAuth ``{"error", "error_description"}`` from STS and
``{"error": {"code", "message", "status"}}`` from IAM. Every request is recorded in
``requests``; ``fail_next`` and ``delay`` inject faults. Never imported by the service path.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from sts.dev.issuer import SigningKey, compact_rs256
from sts.dev.serving import BackgroundServer, Fault, FaultQueue, dispatching_server
from sts.protocol import ACCESS_TOKEN_TYPE, ID_TOKEN_TYPE, JWT_TOKEN_TYPE
from sts.protocol import TOKEN_EXCHANGE_GRANT_TYPE as GRANT_TYPE

#: What Google's STS accepts as ``subject_token_type`` for an OIDC provider.
SUBJECT_TOKEN_TYPES = (JWT_TOKEN_TYPE, ID_TOKEN_TYPE)
#: Scopes a federated token needs to call the IAM Credentials API.
IAM_CALLER_SCOPES = (
    "https://www.googleapis.com/auth/cloud-platform",
    "https://www.googleapis.com/auth/iam",
)
PROVIDER_NAME = re.compile(
    r"//iam\.googleapis\.com/projects/(\d+)/locations/global/"
    r"workloadIdentityPools/([a-z0-9-]{4,32})/providers/([a-z0-9-]{4,32})"
)
_GENERATE = re.compile(r"/v1/projects/-/serviceAccounts/([^/:]+):generateAccessToken")
_GENERATE_ID_TOKEN = re.compile(r"/v1/projects/-/serviceAccounts/([^/:]+):generateIdToken")
_LIFETIME = re.compile(r"(\d{1,6})s")
MAX_LIFETIME_SECONDS = 43200
JWKS_TIMEOUT_SECONDS = 2.0
#: The ``iss`` of Google-signed ID tokens (service accounts' ``generateIdToken`` included).
GOOGLE_ISSUER = "https://accounts.google.com"
#: Where Google publishes the keys of its ID tokens: a JWKS, and key id -> PEM certificate.
JWKS_PATH = "/oauth2/v3/certs"
PEM_CERTS_PATH = "/oauth2/v1/certs"
#: Google's ID tokens live an hour.
ID_TOKEN_LIFETIME_SECONDS = 3600
#: The fields of a ``GenerateIdTokenRequest``, in JSON and proto spelling (Google takes both).
#: ``delegates`` is known to Google; the emulator takes only an empty list of it.
_ID_TOKEN_FIELDS = frozenset({"audience", "includeEmail", "include_email", "delegates"})


@dataclass(frozen=True)
class RecordedRequest:
    """One request as received: header names in Title-Case; ``body`` the parsed form or JSON."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    raw: bytes = field(repr=False)


@dataclass(frozen=True)
class WorkloadProvider:
    name: str
    issuer: str
    # None: found as Google finds it, through the issuer's discovery document.
    jwks_url: str | None
    allowed_audiences: tuple[str, ...]


@dataclass(frozen=True)
class FederatedToken:
    provider: str
    subject: str
    scopes: tuple[str, ...]
    expires_at: float


class _RejectError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def _oauth_error(error: str, description: str, status: int = 400) -> _RejectError:
    return _RejectError(status, {"error": error, "error_description": description})


def _google_error(status: int, state: str, message: str) -> _RejectError:
    return _RejectError(status, {"error": {"code": status, "message": message, "status": state}})


def _b64decode(part: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", part):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(int(timestamp), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _self_signed(key: rsa.RSAPrivateKey) -> x509.Certificate:
    """A certificate for ``key``, as Google wraps its ID token keys for ``/oauth2/v1/certs``."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gcp-emulator.invalid")])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=14))
        .sign(key, hashes.SHA256())
    )


class GcpEmulator(BackgroundServer):
    """Google STS + IAM Credentials on 127.0.0.1; start/stop or ``with``.

    Register providers with :meth:`add_provider` and impersonation grants with
    :meth:`allow_service_account`. ``token_lifetime`` is the federated token's ``expires_in``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, token_lifetime: int = 3599) -> None:
        super().__init__(host, port)
        self.token_lifetime = token_lifetime
        self.delay = 0.0
        self.requests: list[RecordedRequest] = []
        self.providers: dict[str, WorkloadProvider] = {}
        self.bindings: dict[str, set[str]] = {}
        self.federated: dict[str, FederatedToken] = {}
        self.issued: list[str] = []
        #: Seconds from ``iat`` to ``exp`` of the ID tokens ``generateIdToken`` signs.
        self.id_token_lifetime = ID_TOKEN_LIFETIME_SECONDS
        self._faults = FaultQueue()
        self._lock = threading.Lock()
        # The ID token key and its certificate: made when first needed (most uses need none).
        self._id_signing: tuple[SigningKey, x509.Certificate] | None = None

    # -- configuration -------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self.url

    @property
    def sts_url(self) -> str:
        return self.base_url + "/v1/token"

    @property
    def iam_url(self) -> str:
        return self.base_url

    @property
    def certs_url(self) -> str:
        """Key id -> PEM certificate, as ``https://www.googleapis.com/oauth2/v1/certs``: the
        ``certs_url`` for ``google.oauth2.id_token.verify_token``."""
        return self.base_url + PEM_CERTS_PATH

    @property
    def jwks_url(self) -> str:
        """The same key as a JWKS, as ``https://www.googleapis.com/oauth2/v3/certs``."""
        return self.base_url + JWKS_PATH

    @property
    def kid(self) -> str:
        """The ``kid`` of the ID tokens this emulator signs."""
        return self._id_key()[0].kid

    def _id_key(self) -> tuple[SigningKey, x509.Certificate]:
        """The emulator's own ID token key (Google's kids are 40 hexadecimal digits) and a
        certificate for it."""
        with self._lock:
            if self._id_signing is None:
                key = SigningKey.generate(kid=secrets.token_hex(20))
                self._id_signing = (key, _self_signed(key.private_key))
            return self._id_signing

    @staticmethod
    def service_account_id(email: str) -> str:
        """The account's unique id (21 digits, as Google's): ``sub`` and ``azp`` of its ID
        tokens. The same email always gets the same id."""
        digest = int.from_bytes(hashlib.sha256(email.encode()).digest()[:8], "big")
        return "1" + f"{digest % 10**20:020d}"

    def add_provider(
        self, name: str, issuer: str, jwks_url: str | None, allowed_audiences: list[str]
    ) -> None:
        """Register an OIDC workload identity pool provider by its full resource name.

        With no ``allowed_audiences`` the default applies, as in Google: the provider's
        ``https://iam.googleapis.com/...`` URL. With no ``jwks_url`` the keys are read as Google
        reads them: ``{issuer}/.well-known/openid-configuration``, whose ``issuer`` must be
        ``issuer``, names the ``jwks_uri`` (fetched on every exchange: rotation shows at once).
        """
        if not PROVIDER_NAME.fullmatch(name):
            raise ValueError(f"not a workload identity provider name: {name!r}")
        audiences = tuple(allowed_audiences) or ("https:" + name,)
        with self._lock:
            self.providers[name] = WorkloadProvider(name, issuer, jwks_url, audiences)

    def allow_service_account(self, email: str, provider_name: str) -> None:
        """Let federated identities from ``provider_name`` impersonate ``email``."""
        with self._lock:
            self.bindings.setdefault(email, set()).add(provider_name)

    def fail_next(
        self,
        status: int,
        body: Any,
        times: int = 1,
        *,
        path: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next ``times`` requests (whose path starts with ``path``, if given).

        str or bytes are sent as they are (malformed answers); anything else as JSON.
        """
        if isinstance(body, bytes):
            payload = body
        elif isinstance(body, str):
            payload = body.encode()
        else:
            payload = json.dumps(body).encode()
        self._faults.add(Fault(status, payload, dict(headers or {}), times, path))

    def clear(self) -> None:
        """Forget recorded requests, the ``issued`` record and pending faults; reset ``delay``.

        Tokens already issued stay valid.
        """
        with self._lock:
            self.requests.clear()
            self.issued.clear()
            self._faults.clear()
            self.delay = 0.0

    # -- Google STS ----------------------------------------------------------------------

    def _token(self, headers: dict[str, str], raw: bytes) -> dict[str, Any]:
        content_type = headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            raise _oauth_error("invalid_request", "Request must be form-urlencoded.")
        try:
            form = parse_qs(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
        except (UnicodeDecodeError, ValueError):
            raise _oauth_error("invalid_request", "Malformed request body.") from None
        if any(len(values) != 1 for values in form.values()):
            raise _oauth_error("invalid_request", "Repeated parameter.")
        fields = {name: values[0] for name, values in form.items()}

        if fields.get("grant_type") != GRANT_TYPE:
            raise _oauth_error("unsupported_grant_type", 'Invalid value for "grant_type".')
        if fields.get("requested_token_type") != ACCESS_TOKEN_TYPE:
            raise _oauth_error("invalid_request", 'Invalid value for "requested_token_type".')
        if fields.get("subject_token_type") not in SUBJECT_TOKEN_TYPES:
            raise _oauth_error("invalid_request", 'Invalid value for "subject_token_type".')
        if not fields.get("subject_token"):
            raise _oauth_error("invalid_request", 'Missing required parameter "subject_token".')
        audience = fields.get("audience", "")
        if not PROVIDER_NAME.fullmatch(audience):
            raise _oauth_error(
                "invalid_request",
                'Invalid value for "audience". This value should be the full resource name '
                "of the Identity Provider.",
            )
        provider = self.providers.get(audience)
        if provider is None:
            raise _oauth_error(
                "invalid_target",
                'The target service indicated by the "audience" parameters is invalid.',
            )
        scopes = tuple(fields.get("scope", "").split())
        if not scopes:
            raise _oauth_error("invalid_scope", "Scope(s) must be provided.")

        claims = self._verify(provider, fields["subject_token"])
        token = "ya29.d." + secrets.token_urlsafe(48)
        with self._lock:
            self.federated[token] = FederatedToken(
                provider.name, str(claims.get("sub", "")), scopes, time.time() + self.token_lifetime
            )
            self.issued.append(token)
        return {
            "access_token": token,
            "issued_token_type": ACCESS_TOKEN_TYPE,
            "token_type": "Bearer",
            "expires_in": self.token_lifetime,
        }

    def _verify(self, provider: WorkloadProvider, token: str) -> dict[str, Any]:
        """RS256 signature, ``iss``, ``exp`` and ``aud`` of an OIDC ID token (RFC 7519 7.2)."""
        parts = token.split(".")
        if len(parts) != 3:
            raise _oauth_error("invalid_grant", "The input token is malformed.")
        try:
            header = json.loads(_b64decode(parts[0]))
            claims = json.loads(_b64decode(parts[1]))
            signature = _b64decode(parts[2])
        except (ValueError, binascii.Error):
            raise _oauth_error("invalid_grant", "The input token is malformed.") from None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise _oauth_error("invalid_grant", "The input token is malformed.")
        if header.get("alg") != "RS256":
            raise _oauth_error("invalid_grant", "The token signature algorithm is not supported.")
        key = self._key(provider, header.get("kid"))
        try:
            key.verify(
                signature,
                f"{parts[0]}.{parts[1]}".encode("ascii"),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except InvalidSignature:
            raise _oauth_error("invalid_grant", "Invalid ID Token signature.") from None
        if claims.get("iss") != provider.issuer:
            raise _oauth_error("invalid_grant", "The issuer in ID Token does not match.")
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool) or exp <= time.time():
            raise _oauth_error("invalid_grant", "ID Token has expired.")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if not any(a in provider.allowed_audiences for a in audiences):
            raise _oauth_error(
                "invalid_grant", "The audience in ID Token does not match the expected audience."
            )
        return claims

    @staticmethod
    def _key(provider: WorkloadProvider, kid: object) -> rsa.RSAPublicKey:
        # The emulator's own fetch of a URL registered by the test; no proxies from the env.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

        def fetch(url: str) -> Any:
            with opener.open(url, timeout=JWKS_TIMEOUT_SECONDS) as response:
                return json.loads(response.read())

        try:
            jwks_url = provider.jwks_url
            if jwks_url is None:
                discovery = fetch(provider.issuer.rstrip("/") + "/.well-known/openid-configuration")
                if not isinstance(discovery, dict) or discovery.get("issuer") != provider.issuer:
                    raise ValueError("discovery names another issuer")
                jwks_url = str(discovery["jwks_uri"])
            jwks = fetch(jwks_url)
        except (OSError, ValueError, KeyError):
            raise _oauth_error("invalid_grant", "Unable to fetch the issuer's JWKS.") from None
        for jwk in jwks.get("keys", []) if isinstance(jwks, dict) else []:
            if isinstance(jwk, dict) and jwk.get("kid") == kid and jwk.get("kty") == "RSA":
                n = int.from_bytes(_b64decode(jwk["n"]), "big")
                e = int.from_bytes(_b64decode(jwk["e"]), "big")
                return rsa.RSAPublicNumbers(e, n).public_key()
        raise _oauth_error("invalid_grant", "No key in the issuer's JWKS matches the token.")

    # -- IAM Credentials -----------------------------------------------------------------

    def _authorize(self, email: str, headers: dict[str, str], permission: str) -> None:
        """IAM Credentials' caller checks: a live federated token issued here, with a scope
        that may call the API, of a provider bound to ``email`` (``permission`` is named in
        the refusal, as Google names it)."""
        authorization = headers.get("Authorization", "")
        scheme, _, bearer = authorization.partition(" ")
        federated = self.federated.get(bearer) if scheme.lower() == "bearer" else None
        if federated is None or federated.expires_at <= time.time():
            raise _google_error(
                401, "UNAUTHENTICATED", "Request had invalid authentication credentials."
            )
        if not any(scope in federated.scopes for scope in IAM_CALLER_SCOPES):
            raise _google_error(
                403, "PERMISSION_DENIED", "Request had insufficient authentication scopes."
            )
        if federated.provider not in self.bindings.get(email, set()):
            raise _google_error(
                403,
                "PERMISSION_DENIED",
                f"Permission '{permission}' denied on resource (or it may not exist).",
            )

    @staticmethod
    def _json_body(headers: dict[str, str], raw: bytes) -> dict[str, Any]:
        content_type = headers.get("Content-Type", "").split(";")[0].strip().lower()
        try:
            if content_type != "application/json":
                raise ValueError("not JSON")
            body = json.loads(raw)
        except ValueError:
            raise _google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload.") from None
        if not isinstance(body, dict):
            raise _google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload.")
        return body

    def _generate(self, email: str, headers: dict[str, str], raw: bytes) -> dict[str, Any]:
        self._authorize(email, headers, "iam.serviceAccounts.getAccessToken")
        body = self._json_body(headers, raw)
        scope = body.get("scope")
        if (
            not isinstance(scope, list)
            or not scope
            or not all(isinstance(s, str) and s for s in scope)
        ):
            raise _google_error(400, "INVALID_ARGUMENT", "Scope required.")
        lifetime = body.get("lifetime", "3600s")
        match = _LIFETIME.fullmatch(lifetime) if isinstance(lifetime, str) else None
        if match is None or not 1 <= int(match.group(1)) <= MAX_LIFETIME_SECONDS:
            raise _google_error(
                400, "INVALID_ARGUMENT", "The lifetime must be between 1s and 43200s."
            )
        token = "ya29.c." + secrets.token_urlsafe(48)
        with self._lock:
            self.issued.append(token)
        return {"accessToken": token, "expireTime": _rfc3339(time.time() + int(match.group(1)))}

    def _generate_id_token(self, email: str, headers: dict[str, str], raw: bytes) -> dict[str, Any]:
        """``generateIdToken``: an ID token for ``audience`` signed by the emulator's key."""
        self._authorize(email, headers, "iam.serviceAccounts.getOpenIdToken")
        body = self._json_body(headers, raw)
        for name in body:
            if name not in _ID_TOKEN_FIELDS:
                raise _google_error(
                    400,
                    "INVALID_ARGUMENT",
                    f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.',
                )
        audience = body.get("audience")
        if not isinstance(audience, str) or not audience:
            raise _google_error(400, "INVALID_ARGUMENT", "Audience is required.")
        if "includeEmail" in body and "include_email" in body:
            raise _google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        include_email = body.get("includeEmail", body.get("include_email", False))
        if not isinstance(include_email, bool):
            raise _google_error(
                400, "INVALID_ARGUMENT", "Invalid value for includeEmail: expected a boolean."
            )
        if body.get("delegates", []) != []:
            raise _google_error(400, "INVALID_ARGUMENT", "Delegation is not emulated.")
        now = int(time.time())
        account_id = self.service_account_id(email)
        claims: dict[str, Any] = {
            "aud": audience,
            "azp": account_id,
            "exp": now + self.id_token_lifetime,
            "iat": now,
            "iss": GOOGLE_ISSUER,
            "sub": account_id,
        }
        if include_email:
            claims.update(email=email, email_verified=True)
        token = compact_rs256(self._id_key()[0], claims)
        with self._lock:
            self.issued.append(token)
        return {"token": token}

    def _certs(self, path: str) -> dict[str, Any]:
        key, certificate = self._id_key()
        if path == JWKS_PATH:
            return {"keys": [key.public_jwk()]}
        return {key.kid: certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")}

    # -- HTTP ----------------------------------------------------------------------------

    def _handle(
        self, method: str, path: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, bytes, dict[str, str]]:
        body: Any
        try:
            if headers.get("Content-Type", "").startswith("application/json"):
                body = json.loads(raw)
            else:
                body = {name: values[0] for name, values in parse_qs(raw.decode()).items()}
        except (ValueError, UnicodeDecodeError):
            body = None
        with self._lock:
            self.requests.append(RecordedRequest(method, path, headers, body, raw))
        if self.delay:
            time.sleep(self.delay)
        fault = self._faults.take(path)
        if fault is not None:
            return fault.status, fault.body, {"Content-Type": "application/json", **fault.headers}
        try:
            if path in (JWKS_PATH, PEM_CERTS_PATH):
                if method != "GET":
                    raise _google_error(405, "METHOD_NOT_ALLOWED", "Method not allowed.")
                answer = self._certs(path)
            elif method != "POST":
                raise _google_error(405, "METHOD_NOT_ALLOWED", "Method not allowed.")
            elif path == "/v1/token":
                answer = self._token(headers, raw)
            elif match := _GENERATE.fullmatch(path):
                answer = self._generate(match.group(1), headers, raw)
            elif match := _GENERATE_ID_TOKEN.fullmatch(path):
                answer = self._generate_id_token(match.group(1), headers, raw)
            else:
                raise _google_error(404, "NOT_FOUND", "Not found.")
        except _RejectError as reject:
            return (
                reject.status,
                json.dumps(reject.body).encode(),
                {"Content-Type": "application/json"},
            )
        return 200, json.dumps(answer).encode(), {"Content-Type": "application/json"}

    def _build(self) -> ThreadingHTTPServer:
        return dispatching_server(self.host, self.port, self._handle)
