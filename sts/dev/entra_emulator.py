"""A local Microsoft Entra ID v2.0 token endpoint for tests: workload identity federation.

Emulates, over real HTTP on 127.0.0.1:

- ``POST /{tenant}/oauth2/v2.0/token``: the OAuth 2.0 client credentials grant with a federated
  credential as the client assertion (Microsoft identity platform, "OAuth 2.0 client credentials
  flow", third case: access token request with a federated credential; RFC 6749 section 4.4 and
  RFC 7523 section 2.2).
- ``GET /{tenant}/v2.0/.well-known/openid-configuration``: the tenant's discovery document
  (OpenID Connect Discovery 1.0 section 4), and ``GET /{tenant}/discovery/v2.0/keys``, the
  ``jwks_uri`` it names (empty: the access tokens issued here are opaque).
- anything else: 404.

A token request is refused, in this order, by the first check it fails; every refusal has
Entra's body (``error``, ``error_description`` starting ``AADSTS<n>: ``, ``error_codes``,
``timestamp``, ``trace_id``, ``correlation_id``, ``error_uri``). The status is 401 for
``invalid_client`` (as Entra answers a failed client authentication, RFC 6749 section 5.2) and
400 otherwise.

==  =====================================================  =======================  =========
#   check                                                  error                    AADSTS
==  =====================================================  =======================  =========
1   a fault from :meth:`EntraEmulator.fail_next`           as given                 as given
2   tenant not a GUID, or not registered                   invalid_request          90002
3   body not ``application/x-www-form-urlencoded``         invalid_request          900144
3   body not UTF-8 form data                               invalid_request          90014
3   a parameter repeated                                   invalid_request          9000411
4   ``grant_type``, ``client_id``, ``scope``,              invalid_request          900144
    ``client_assertion_type`` or ``client_assertion``
    missing or empty (RFC 6749 section 3.1)
5   ``grant_type`` not ``client_credentials``              unsupported_grant_type   70003
6   ``client_assertion_type`` not the JWT bearer URN       invalid_request          90011
7   ``client_id`` not an application of the tenant         unauthorized_client      700016
8   a scope not ending in ``/.default``                    invalid_scope            1002012
8   more than one scope                                    invalid_scope            70011
8   the resource not in the tenant                         invalid_resource         500011
9   assertion not a compact JWS, ``alg`` not RS256, no     invalid_client           50027
    ``kid``
9   no credential of the app with the assertion's ``iss``  invalid_client           700211
9   ... with that ``iss`` and ``sub``                      invalid_client           700213
9   ... whose audience is in ``aud``                       invalid_client           700212
9   the issuer's discovery or JWKS unreachable/malformed   invalid_request          50166
9   ``kid`` not in the JWKS, or a bad RS256 signature      invalid_client           700027
9   ``exp`` missing or not after now (no leeway), or       invalid_client           700024
    ``nbf`` later than now + ``NBF_SKEW_SECONDS``
==  =====================================================  =======================  =========

The codes and phrases follow answers Entra has been seen to give (90011 "Unexpected client
assertion type", 50166 "Request to External OIDC endpoint failed", 9000411 for a duplicated
parameter); the emulator's own choices are 90014 for a body that is not UTF-8 form data, the
order of the missing-parameter check (the first missing of ``REQUIRED_PARAMETERS`` is named),
and the skew allowed on ``nbf``. A token request that is not a POST is 400 AADSTS900561. The
descriptions echo the presented issuer, subject and audience, as Entra's do: a service must not
pass them on. ``iat`` is not checked (Entra does not require it).

Every request is recorded in ``requests``; ``fail_next`` and ``delay`` inject faults. Never
imported by the service path.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from sts.dev.gcp_emulator import RecordedRequest
from sts.dev.serving import BackgroundServer, Fault, FaultQueue, dispatching_server
from sts.protocol import AZURE_BROKER_AUDIENCE, CLIENT_ASSERTION_TYPE, CLIENT_CREDENTIALS_GRANT_TYPE

__all__ = [
    "AZURE_EXCHANGE_AUDIENCE",
    "CLIENT_ASSERTION_TYPE",
    "DEFAULT_RESOURCES",
    "EntraEmulator",
    "FederatedCredential",
    "IssuedToken",
    "RecordedRequest",
    "Tenant",
]

#: The audience Entra recommends for a federated identity credential.
AZURE_EXCHANGE_AUDIENCE = AZURE_BROKER_AUDIENCE
#: Resource application ID URIs every Entra tenant has (Azure Resource Manager, Microsoft Graph,
#: Key Vault, Storage).
DEFAULT_RESOURCES = (
    "https://management.azure.com",
    "https://graph.microsoft.com",
    "https://vault.azure.net",
    "https://storage.azure.com",
)
GRANT_TYPE = CLIENT_CREDENTIALS_GRANT_TYPE
DEFAULT_SCOPE_SUFFIX = "/.default"
#: In the order Entra names the first one missing.
REQUIRED_PARAMETERS = (
    "grant_type",
    "client_id",
    "scope",
    "client_assertion_type",
    "client_assertion",
)
#: Entra's limit on federated identity credentials per application or managed identity.
MAX_FEDERATED_CREDENTIALS = 20
#: ``exp`` must be after now, with no leeway; ``nbf`` may be this far ahead (clock skew).
EXP_LEEWAY_SECONDS = 0
NBF_SKEW_SECONDS = 60
JWKS_TIMEOUT_SECONDS = 2.0
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
JSON_CONTENT_TYPE = "application/json; charset=utf-8"
_WIF_DOCS = "https://learn.microsoft.com/entra/workload-id/workload-identity-federation"

_GUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_TOKEN = re.compile(r"/([^/]+)/oauth2/v2\.0/token")
_DISCOVERY = re.compile(r"/([^/]+)/v2\.0/\.well-known/openid-configuration")
_KEYS = re.compile(r"/([^/]+)/discovery/v2\.0/keys")


@dataclass(frozen=True)
class FederatedCredential:
    """A federated identity credential: tokens from ``issuer`` about ``subject``, for
    ``audience``."""

    issuer: str
    subject: str
    audience: str
    # None: found as Entra finds it, through the issuer's discovery document.
    jwks_url: str | None


@dataclass
class Tenant:
    """A directory: its resources (application ID URIs) and applications by client id."""

    tenant_id: str
    resources: tuple[str, ...]
    applications: dict[str, list[FederatedCredential]] = field(default_factory=dict)


@dataclass(frozen=True)
class IssuedToken:
    """An access token this emulator issued; ``subject`` is the assertion's ``sub``."""

    tenant_id: str
    client_id: str
    scope: str
    access_token: str = field(repr=False)
    expires_in: int
    subject: str


@dataclass(kw_only=True)
class _EntraFault(Fault):
    error: str
    code: int


class _Refusal(Exception):
    def __init__(
        self,
        error: str,
        code: int,
        message: str,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(code)
        self.error = error
        self.code = code
        self.message = message
        self.status = status if status is not None else 401 if error == "invalid_client" else 400
        self.headers = headers or {}


def _b64decode(part: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", part):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _number(value: object) -> float | None:
    """A JSON number claim (RFC 7519 section 2, NumericDate), else None."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _fault_message(status: int) -> str:
    if status == 429:
        return "TenantThrottlingError - There are too many incoming requests. Try again later."
    return "The service is temporarily unavailable. Try again later."


def _malformed() -> _Refusal:
    return _Refusal("invalid_client", 50027, "JWT token is invalid or malformed.")


def _no_record(part: str, value: object) -> _Refusal:
    code = {"issuer": 700211, "audience": 700212, "subject": 700213}[part]
    return _Refusal(
        "invalid_client",
        code,
        f"No matching federated identity record found for presented assertion {part} "
        f"'{value}'. Please check your federated identity credential Subject, Audience and "
        f"Issuer against the presented assertion. {_WIF_DOCS}",
    )


def _oidc_failure() -> _Refusal:
    return _Refusal("invalid_request", 50166, "Request to External OIDC endpoint failed.")


class EntraEmulator(BackgroundServer):
    """Microsoft Entra ID's v2.0 token endpoint on 127.0.0.1; start/stop or ``with``.

    Register directories with :meth:`add_tenant`, their applications (or user-assigned managed
    identities) with :meth:`add_application` and the trust with :meth:`add_federated_credential`.
    ``token_lifetime`` is the access token's ``expires_in``; ``delay`` holds back every answer.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, token_lifetime: int = 3599) -> None:
        super().__init__(host, port)
        self.token_lifetime = token_lifetime
        self.delay = 0.0
        self.requests: list[RecordedRequest] = []
        self.tenants: dict[str, Tenant] = {}
        self.issued: list[IssuedToken] = []
        self._faults = FaultQueue()
        self._lock = threading.Lock()

    # -- configuration -------------------------------------------------------------------

    @property
    def authority_url(self) -> str:
        """What ``STS_AZURE_AUTHORITY_URL`` is set to: ``http://127.0.0.1:<port>``."""
        return self.url

    def token_url(self, tenant_id: str) -> str:
        return f"{self.authority_url}/{tenant_id}/oauth2/v2.0/token"

    def add_tenant(self, tenant_id: str, resources: tuple[str, ...] = DEFAULT_RESOURCES) -> None:
        """Register a directory by its id (a GUID) with the resources tokens may be asked for."""
        if not _GUID.fullmatch(tenant_id):
            raise ValueError(f"a tenant id is a GUID: {tenant_id!r}")
        with self._lock:
            self.tenants[tenant_id.lower()] = Tenant(
                tenant_id.lower(), tuple(r.rstrip("/") for r in resources)
            )

    def add_application(self, tenant_id: str, client_id: str) -> None:
        """Register an app registration or user-assigned managed identity by its client id."""
        if not _GUID.fullmatch(client_id):
            raise ValueError(f"a client id is a GUID: {client_id!r}")
        with self._lock:
            self._tenant(tenant_id).applications.setdefault(client_id.lower(), [])

    def add_federated_credential(
        self,
        tenant_id: str,
        client_id: str,
        *,
        issuer: str,
        subject: str,
        audience: str = AZURE_EXCHANGE_AUDIENCE,
        jwks_url: str | None = None,
    ) -> None:
        """Let tokens from ``issuer`` about ``subject`` for ``audience`` authenticate the app.

        With no ``jwks_url`` the keys are read as Entra reads them:
        ``{issuer}/.well-known/openid-configuration``, whose ``issuer`` must be ``issuer``, names
        the ``jwks_uri``; both are fetched on every request (a rotation shows at once). As in
        Entra, an issuer and subject pair is unique within an app, and an app has at most
        :data:`MAX_FEDERATED_CREDENTIALS`.
        """
        with self._lock:
            credentials = self._tenant(tenant_id).applications.get(client_id.lower())
            if credentials is None:
                raise ValueError(f"no application {client_id!r} in tenant {tenant_id!r}")
            if any(c.issuer == issuer and c.subject == subject for c in credentials):
                raise ValueError(f"a credential for {issuer!r} and {subject!r} exists")
            if len(credentials) >= MAX_FEDERATED_CREDENTIALS:
                raise ValueError(f"at most {MAX_FEDERATED_CREDENTIALS} federated credentials")
            credentials.append(FederatedCredential(issuer, subject, audience, jwks_url))

    def fail_next(
        self,
        status: int,
        *,
        error: str = "temporarily_unavailable",
        aadsts: int = 90055,
        retry_after: int | None = None,
        count: int = 1,
    ) -> None:
        """Answer the next ``count`` token requests with ``status`` and an Entra error body,
        before any check (a ``Retry-After`` header when ``retry_after`` is given)."""
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        self._faults.add(_EntraFault(status, b"", headers, count, error=error, code=aadsts))

    def clear(self) -> None:
        """Forget recorded requests, the ``issued`` record and pending faults; reset ``delay``.

        Tenants, applications and credentials stay.
        """
        with self._lock:
            self.requests.clear()
            self.issued.clear()
            self._faults.clear()
            self.delay = 0.0

    def _tenant(self, tenant_id: str) -> Tenant:
        tenant = self.tenants.get(tenant_id.lower())
        if tenant is None:
            raise ValueError(f"no tenant {tenant_id!r}")
        return tenant

    # -- the token endpoint --------------------------------------------------------------

    def _token(self, segment: str, headers: dict[str, str], raw: bytes) -> dict[str, Any]:
        with self._lock:
            tenant = self.tenants.get(segment.lower()) if _GUID.fullmatch(segment) else None
            resources = tenant.resources if tenant is not None else ()
            applications = (
                {c: tuple(creds) for c, creds in tenant.applications.items()} if tenant else {}
            )
        if tenant is None:
            raise _Refusal(
                "invalid_request",
                90002,
                f"Tenant '{segment}' not found. Check to make sure you have the correct tenant "
                "ID and are signing into the correct cloud. Check with your subscription "
                "administrator, this may happen if there are no active subscriptions for the "
                "tenant.",
            )
        fields = self._form(headers, raw)
        for name in REQUIRED_PARAMETERS:
            if not fields.get(name):
                raise _Refusal(
                    "invalid_request",
                    900144,
                    f"The request body must contain the following parameter: '{name}'.",
                )
        if fields["grant_type"] != GRANT_TYPE:
            raise _Refusal(
                "unsupported_grant_type",
                70003,
                f"The app requested an unsupported grant type '{fields['grant_type']}'.",
            )
        if fields["client_assertion_type"] != CLIENT_ASSERTION_TYPE:
            raise _Refusal("invalid_request", 90011, "Unexpected client assertion type.")
        client_id = fields["client_id"]
        credentials = applications.get(client_id.lower()) if _GUID.fullmatch(client_id) else None
        if credentials is None:
            raise _Refusal(
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{tenant.tenant_id}'. This can happen if the application has not been "
                "installed by the administrator of the tenant or consented to by any user in the "
                "tenant. You may have sent your authentication request to the wrong tenant.",
            )
        scope = fields["scope"]
        self._check_scope(tenant.tenant_id, resources, scope)
        claims = self._verify(credentials, fields["client_assertion"])

        token = secrets.token_urlsafe(64)
        issued = IssuedToken(
            tenant.tenant_id,
            client_id.lower(),
            scope,
            token,
            self.token_lifetime,
            str(claims["sub"]),
        )
        with self._lock:
            self.issued.append(issued)
        return {
            "token_type": "Bearer",
            "expires_in": self.token_lifetime,
            "ext_expires_in": self.token_lifetime,
            "access_token": token,
        }

    @staticmethod
    def _form(headers: dict[str, str], raw: bytes) -> dict[str, str]:
        content_type = headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != FORM_CONTENT_TYPE:
            # Entra reads no parameters from any other body: the grant type is the first missing.
            raise _Refusal(
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'grant_type'.",
            )
        try:
            form = parse_qs(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(raw))
        except (UnicodeDecodeError, ValueError):
            raise _Refusal(
                "invalid_request",
                90014,
                "The required field 'grant_type' is missing from the credential. Ensure that "
                "you have all the necessary parameters for the login request.",
            ) from None
        for name, values in form.items():
            if len(values) != 1:
                raise _Refusal(
                    "invalid_request",
                    9000411,
                    f"The request is not properly formatted. The parameter '{name}' is duplicated.",
                )
        return {name: values[0] for name, values in form.items()}

    @staticmethod
    def _check_scope(tenant_id: str, resources: tuple[str, ...], scope: str) -> None:
        """One ``<resource>/.default`` scope, for a resource of the tenant."""
        scopes = scope.split()
        for value in scopes:
            if not value.endswith(DEFAULT_SCOPE_SUFFIX):
                raise _Refusal(
                    "invalid_scope",
                    1002012,
                    f"The provided value for scope {value} is not valid. Client credential flows "
                    "must have a scope value with /.default suffixed to the resource identifier "
                    "(application ID URI).",
                )
        if len(scopes) != 1:
            raise _Refusal(
                "invalid_scope",
                70011,
                "The provided request must include a 'scope' input parameter. The provided "
                f"value for the input parameter 'scope' is not valid. The scope {scope} is not "
                "valid.",
            )
        resource = scopes[0].removesuffix(DEFAULT_SCOPE_SUFFIX)
        # ``https://management.azure.com//.default`` names the same resource as without the '/'.
        if not resource or resource.rstrip("/") not in resources:
            raise _Refusal(
                "invalid_resource",
                500011,
                f"The resource principal named {resource} was not found in the tenant named "
                f"{tenant_id}. This can happen if the application has not been installed by the "
                "administrator of the tenant or consented to by any user in the tenant. You "
                "might have sent your authentication request to the wrong tenant.",
            )

    def _verify(
        self, credentials: tuple[FederatedCredential, ...], assertion: str
    ) -> dict[str, Any]:
        """Pick the credential by the unverified ``iss``, ``sub`` and ``aud``, then check the
        RS256 signature against that issuer's keys, then ``exp`` and ``nbf``."""
        parts = assertion.split(".")
        if len(parts) != 3:
            raise _malformed()
        try:
            header = json.loads(_b64decode(parts[0]))
            claims = json.loads(_b64decode(parts[1]))
            signature = _b64decode(parts[2])
        except (ValueError, binascii.Error):
            raise _malformed() from None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise _malformed()
        kid = header.get("kid")
        if header.get("alg") != "RS256" or not isinstance(kid, str) or not kid:
            raise _malformed()

        issuer = claims.get("iss")
        matching = [c for c in credentials if c.issuer == issuer]
        if not matching:
            raise _no_record("issuer", issuer)
        subject = claims.get("sub")
        matching = [c for c in matching if c.subject == subject]
        if not matching:
            raise _no_record("subject", subject)
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        matching = [c for c in matching if c.audience in audiences]
        if not matching:
            shown = ",".join(str(a) for a in audiences) if audiences else aud
            raise _no_record("audience", shown)

        key = self._key(matching[0], kid)
        try:
            key.verify(
                signature,
                f"{parts[0]}.{parts[1]}".encode("ascii"),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except InvalidSignature:
            raise _Refusal(
                "invalid_client",
                700027,
                "Client assertion failed signature validation. [Reason - The provided signature "
                f"value did not match the expected signature value., Key id: '{kid}']",
            ) from None

        now = time.time()
        exp = _number(claims.get("exp"))
        nbf = _number(claims.get("nbf"))
        expired = exp is None or exp <= now - EXP_LEEWAY_SECONDS
        early = "nbf" in claims and (nbf is None or nbf > now + NBF_SKEW_SECONDS)
        if expired or early:
            raise _Refusal(
                "invalid_client",
                700024,
                f"Client assertion is not within its valid time range. Current time: "
                f"{_iso(now)}, assertion valid from {_iso(nbf or 0)}, expiry time of assertion "
                f"{'(none)' if exp is None else _iso(exp)}.",
            )
        return claims

    @staticmethod
    def _key(credential: FederatedCredential, kid: str) -> rsa.RSAPublicKey:
        # The emulator's own fetch of a URL registered by the test; no proxies from the env.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

        def fetch(url: str) -> Any:
            with opener.open(url, timeout=JWKS_TIMEOUT_SECONDS) as response:
                return json.loads(response.read())

        try:
            jwks_url = credential.jwks_url
            if jwks_url is None:
                discovery_url = credential.issuer.rstrip("/") + "/.well-known/openid-configuration"
                discovery = fetch(discovery_url)
                if not isinstance(discovery, dict) or discovery.get("issuer") != credential.issuer:
                    raise ValueError("discovery names another issuer")
                jwks_url = str(discovery["jwks_uri"])
            jwks = fetch(jwks_url)
            keys = jwks["keys"] if isinstance(jwks, dict) else None
            if not isinstance(keys, list):
                raise ValueError("not a JWK set")
        except (OSError, ValueError, KeyError):
            raise _oidc_failure() from None
        for jwk in keys:
            if isinstance(jwk, dict) and jwk.get("kid") == kid and jwk.get("kty") == "RSA":
                try:
                    n = int.from_bytes(_b64decode(str(jwk["n"])), "big")
                    e = int.from_bytes(_b64decode(str(jwk["e"])), "big")
                    return rsa.RSAPublicNumbers(e, n).public_key()
                except (KeyError, ValueError, binascii.Error):
                    continue
        raise _Refusal(
            "invalid_client",
            700027,
            f"Client assertion failed signature validation. [Reason - The key was not found., "
            f"Key id: '{kid}']",
        )

    # -- discovery -----------------------------------------------------------------------

    def _discovery(self, tenant_id: str) -> dict[str, Any]:
        base = f"{self.authority_url}/{tenant_id}"
        return {
            "token_endpoint": base + "/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "jwks_uri": base + "/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": base + "/v2.0",
            "request_uri_parameter_supported": False,
            "authorization_endpoint": base + "/oauth2/v2.0/authorize",
            "device_authorization_endpoint": base + "/oauth2/v2.0/devicecode",
            "end_session_endpoint": base + "/oauth2/v2.0/logout",
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "tid", "oid"],
            "tenant_region_scope": "NA",
            "cloud_instance_name": "microsoftonline.com",
        }

    # -- HTTP ----------------------------------------------------------------------------

    def _error(
        self, refusal: _Refusal, correlation_id: str, trace_id: str
    ) -> tuple[int, bytes, dict[str, str]]:
        timestamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        body = {
            "error": refusal.error,
            "error_description": (
                f"AADSTS{refusal.code}: {refusal.message}\r\nTrace ID: {trace_id}\r\n"
                f"Correlation ID: {correlation_id}\r\nTimestamp: {timestamp}"
            ),
            "error_codes": [refusal.code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": f"{self.authority_url}/error?code={refusal.code}",
        }
        return refusal.status, json.dumps(body).encode(), dict(refusal.headers)

    def _route(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> Any:
        if match := _TOKEN.fullmatch(path):
            if method != "POST":
                raise _Refusal(
                    "invalid_request",
                    900561,
                    f"The endpoint only accepts POST, OPTIONS requests. Received a {method} "
                    "request.",
                )
            fault = self._faults.take(path)
            if isinstance(fault, _EntraFault):
                raise _Refusal(
                    fault.error,
                    fault.code,
                    _fault_message(fault.status),
                    status=fault.status,
                    headers=fault.headers,
                )
            return self._token(match.group(1), headers, raw)
        if method == "GET" and (match := _DISCOVERY.fullmatch(path) or _KEYS.fullmatch(path)):
            segment = match.group(1)
            with self._lock:
                known = _GUID.fullmatch(segment) is not None and segment.lower() in self.tenants
            if not known:
                raise _Refusal(
                    "invalid_tenant",
                    90002,
                    f"Tenant '{segment}' not found. Check to make sure you have the correct "
                    "tenant ID and are signing into the correct cloud.",
                )
            if match.re is _KEYS:
                return {"keys": []}
            return self._discovery(segment.lower())
        return None

    def _handle(
        self, method: str, target: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, bytes, dict[str, str]]:
        path = urlsplit(target).path
        body: dict[str, str] | None
        try:
            body = {name: values[0] for name, values in parse_qs(raw.decode()).items()}
        except (ValueError, UnicodeDecodeError):
            body = None
        with self._lock:
            self.requests.append(RecordedRequest(method, target, headers, body, raw))
        if self.delay:
            time.sleep(self.delay)

        # Entra takes a caller's client-request-id (a GUID) as the correlation id.
        requested = headers.get("Client-Request-Id", "")
        correlation_id = requested.lower() if _GUID.fullmatch(requested) else str(uuid.uuid4())
        trace_id = str(uuid.uuid4())
        common = {"X-Ms-Request-Id": trace_id, "Client-Request-Id": correlation_id}
        try:
            answer = self._route(method, path, headers, raw)
        except _Refusal as refusal:
            status, payload, extra = self._error(refusal, correlation_id, trace_id)
            return status, payload, {"Content-Type": JSON_CONTENT_TYPE, **common, **extra}
        if answer is None:
            return 404, b"Not Found", {"Content-Type": "text/plain; charset=utf-8"}
        no_store = {"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"}
        return (
            200,
            json.dumps(answer).encode(),
            {"Content-Type": JSON_CONTENT_TYPE, **common, **no_store},
        )

    def _build(self) -> ThreadingHTTPServer:
        return dispatching_server(self.host, self.port, self._handle)
