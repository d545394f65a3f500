"""What AWS checks in ``AssumeRoleWithWebIdentity`` that moto does not: the web identity side.

moto accepts any token for any role. Real AWS, for a role whose trust policy names an IAM OIDC
identity provider (IAM User Guide, "Create an OpenID Connect (OIDC) identity provider in IAM" and
"Pass session tags in AWS STS"):

1. finds the provider by the token's ``iss`` (``https://`` + the provider's URL);
2. reads the issuer's discovery document (``/.well-known/openid-configuration``), then its
   ``jwks_uri``, and verifies the RS256 signature with the key named by ``kid``;
3. requires ``aud`` to be one of the provider's client IDs, and ``exp``/``nbf``/``iat`` to hold;
4. evaluates the role's trust policy: an ``Allow`` statement for ``sts:AssumeRoleWithWebIdentity``
   whose ``Principal.Federated`` is the provider's ARN and whose conditions hold, on the keys
   ``<provider>:sub``, ``<provider>:aud``, ``aws:RequestTag/<key>`` and ``aws:TagKeys``; no
   matching ``Deny``;
5. when the token carries session tags (claim ``https://aws.amazon.com/tags``), requires
   ``sts:TagSession`` to be allowed the same way and the tags to be well formed: at most 50,
   keys 1..128 and values 0..256 characters of letters, digits, spaces and ``_ . : / = + - @``,
   no ``aws:`` prefix, no key twice (keys are case-insensitive), each value a one-element list,
   and every transitive key among the tags.

A role that does not exist is refused as one whose trust policy does not match (403
``AccessDenied``, "Not authorized to perform sts:AssumeRoleWithWebIdentity"): AWS does not tell a
caller which roles exist. The token is judged first, so a token from an issuer with no provider is
``InvalidIdentityToken`` whatever the role.

:class:`IamTrust` does exactly that for the roles it is given a trust policy for; the AWS emulator
asks it before handing the call to moto. A *strict* :class:`IamTrust` is a whole account: every
role it was not given does not exist (``sts demo`` and ``sts dev``). Otherwise roles without a
registered trust policy go straight to moto, which accepts anything (the tests that use moto for
roles they never set up). Never imported by the service path; the condition logic is the
service's own (:mod:`sts.iam_policy`).
"""

from __future__ import annotations

import fnmatch
import json
import threading
import time
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from sts.iam_policy import as_list, conditions_hold

TAGS_CLAIM = "https://aws.amazon.com/tags"
ASSUME_ACTION = "sts:AssumeRoleWithWebIdentity"
TAG_ACTION = "sts:TagSession"
MAX_SESSION_TAGS = 50
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 256
# IAM's tag character rule, [\p{L}\p{Z}\p{N}_.:/=+\-@]*: letters, separators, numbers and these.
_TAG_PUNCTUATION = frozenset("_.:/=+-@")
CLOCK_SKEW_SECONDS = 300
FETCH_TIMEOUT = (2.0, 3.0)


@dataclass(frozen=True)
class Refusal:
    """An AWS error answer: HTTP status, error code, message."""

    status: int
    code: str
    message: str


@dataclass(frozen=True)
class OidcProvider:
    """An IAM OIDC identity provider: the issuer URL without scheme, and its client IDs."""

    url: str
    client_ids: tuple[str, ...]
    account: str = "123456789012"

    @property
    def arn(self) -> str:
        return f"arn:aws:iam::{self.account}:oidc-provider/{self.url}"


def provider_url(issuer: str) -> str:
    """The provider URL IAM derives from an issuer: no scheme, no trailing slash."""
    parts = urlsplit(issuer)
    return (parts.netloc + parts.path).rstrip("/")


class IamTrust:
    """OIDC providers and role trust policies, checked as AWS checks them.

    ``strict``: these are all the account's roles; any other role does not exist and is refused.
    Otherwise only the roles given a trust policy are checked (:meth:`governs`).
    """

    def __init__(self, clock: Any = time.time, *, strict: bool = False) -> None:
        self.strict = strict
        self._providers: dict[str, OidcProvider] = {}
        self._policies: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._clock = clock
        self._session = requests.Session()
        self._session.trust_env = False

    def add_oidc_provider(
        self, issuer: str, client_ids: Sequence[str], *, account: str = "123456789012"
    ) -> OidcProvider:
        """Register ``issuer`` (an ``https://`` or loopback ``http://`` URL) as a provider."""
        provider = OidcProvider(provider_url(issuer), tuple(client_ids), account)
        with self._lock:
            self._providers[provider.url] = provider
        return provider

    def set_trust_policy(self, role_arn: str, policy: Mapping[str, Any]) -> None:
        """Give ``role_arn`` a trust policy (the role's ``AssumeRolePolicyDocument``)."""
        with self._lock:
            self._policies[role_arn] = json.loads(json.dumps(policy))

    def governs(self, role_arn: str | None) -> bool:
        """True when :meth:`check` decides for this role: every role of a strict account, else
        those with a trust policy here (others are left to moto)."""
        with self._lock:
            return role_arn is not None and (self.strict or role_arn in self._policies)

    def clear(self) -> None:
        """Forget every provider and role (a strict account stays strict: it has none now)."""
        with self._lock:
            self._providers.clear()
            self._policies.clear()

    # -- the check ---------------------------------------------------------------------------

    def check(self, role_arn: str, token: str) -> Refusal | None:
        """None when AWS would issue credentials for ``role_arn`` with ``token``, else why not."""
        with self._lock:
            policy = self._policies.get(role_arn)
        if policy is None and not self.strict:
            return None
        try:
            unverified = _unverified_claims(token)
        except ValueError:
            return _invalid("The web identity token could not be parsed")
        issuer = unverified.get("iss")
        if not isinstance(issuer, str):
            return _invalid("No OpenIDConnect provider found in your account for the token")
        with self._lock:
            provider = self._providers.get(provider_url(issuer))
        if provider is None:
            return _invalid(f"No OpenIDConnect provider found in your account for {issuer}")
        try:
            keys = self._keys(issuer)
        except (requests.RequestException, ValueError, KeyError) as exc:
            return Refusal(
                400,
                "IDPCommunicationError",
                f"Couldn't retrieve verification key from your identity provider ({exc})",
            )
        try:
            claims = jwt.decode(token, keys, algorithms=["RS256"]).claims
        except (JoseError, ValueError):
            return _invalid("Incorrect token signature")
        refusal = self._check_claims(claims, provider)
        if refusal is not None:
            return refusal
        tags, tag_refusal = _session_tags(claims)
        if tag_refusal is not None:
            return tag_refusal
        context: dict[str, list[str]] = {
            f"{provider.url}:sub": as_list(claims.get("sub")),
            f"{provider.url}:aud": [str(a) for a in as_list(claims.get("aud"))],
            f"{provider.url}:oaud": [str(a) for a in as_list(claims.get("aud"))],
        }
        if tags:
            context["aws:TagKeys"] = list(tags)
            for key, value in tags.items():
                context[f"aws:RequestTag/{key}"] = [value]
        if policy is None or not _allowed(policy, provider.arn, ASSUME_ACTION, context):
            # An unknown role and a trust policy that does not match are one answer in AWS.
            return Refusal(
                403, "AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity"
            )
        if tags and not _allowed(policy, provider.arn, TAG_ACTION, context):
            return Refusal(403, "AccessDenied", "Not authorized to perform sts:TagSession")
        return None

    def _keys(self, issuer: str) -> KeySet:
        """Discovery, then the key set it names (fetched on every call: rotation shows at once)."""
        discovery = self._session.get(
            issuer.rstrip("/") + "/.well-known/openid-configuration",
            timeout=FETCH_TIMEOUT,
            allow_redirects=False,
        )
        discovery.raise_for_status()
        document = discovery.json()
        if document.get("issuer") != issuer:
            raise ValueError("discovery issuer does not match the token's iss")
        answer = self._session.get(
            document["jwks_uri"], timeout=FETCH_TIMEOUT, allow_redirects=False
        )
        answer.raise_for_status()
        return KeySet.import_key_set(answer.json())

    def _check_claims(self, claims: Mapping[str, Any], provider: OidcProvider) -> Refusal | None:
        audiences = [str(a) for a in as_list(claims.get("aud"))]
        if not set(audiences) & set(provider.client_ids):
            return _invalid("Incorrect token audience")
        now = self._clock()
        exp, iat, nbf = claims.get("exp"), claims.get("iat"), claims.get("nbf")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            return _invalid("Token has no expiry")
        if now >= exp:
            return Refusal(400, "ExpiredTokenException", "Token expired")
        if isinstance(iat, int | float) and iat > now + CLOCK_SKEW_SECONDS:
            return _invalid("Token issued in the future")
        if isinstance(nbf, int | float) and nbf > now + CLOCK_SKEW_SECONDS:
            return _invalid("Token not yet valid")
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            return _invalid("Token has no subject")
        return None


def _invalid(message: str) -> Refusal:
    return Refusal(400, "InvalidIdentityToken", message)


def _unverified_claims(token: str) -> dict[str, Any]:
    import base64

    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a compact JWS")
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    claims = json.loads(base64.urlsafe_b64decode(payload))
    if not isinstance(claims, dict):
        raise ValueError("claims are not an object")
    return claims


def _tag_text_ok(text: str, low: int, high: int) -> bool:
    return low <= len(text) <= high and all(
        char in _TAG_PUNCTUATION or unicodedata.category(char)[0] in "LZN" for char in text
    )


def _session_tags(claims: Mapping[str, Any]) -> tuple[dict[str, str], Refusal | None]:
    """The session tags a token carries, validated as IAM validates them."""
    if TAGS_CLAIM not in claims:
        return {}, None
    claim = claims[TAGS_CLAIM]
    if not isinstance(claim, dict):
        return {}, _invalid("The session tags claim must be an object")
    principal_tags = claim.get("principal_tags", {})
    transitive = claim.get("transitive_tag_keys", [])
    if not isinstance(principal_tags, dict) or not isinstance(transitive, list):
        return {}, _invalid("Malformed session tags")
    if len(principal_tags) > MAX_SESSION_TAGS:
        return {}, Refusal(400, "PackedPolicyTooLarge", "Session tags exceed the limit of 50 tags")
    tags: dict[str, str] = {}
    seen: set[str] = set()
    for key, values in principal_tags.items():
        if not _tag_text_ok(key, 1, MAX_TAG_KEY) or key.lower().startswith("aws:"):
            return {}, _invalid("Invalid session tag key")
        if key.lower() in seen:
            return {}, _invalid("Duplicate session tag key")
        seen.add(key.lower())
        if not isinstance(values, list) or len(values) != 1 or not isinstance(values[0], str):
            return {}, _invalid("Each session tag takes exactly one string value")
        if not _tag_text_ok(values[0], 0, MAX_TAG_VALUE):
            return {}, _invalid("Invalid session tag value")
        tags[key] = values[0]
    for key in transitive:
        if not isinstance(key, str) or key.lower() not in seen:
            return {}, _invalid("A transitive tag key is not among the session tags")
    return tags, None


# -- trust policy evaluation (IAM User Guide, "Policy evaluation logic") --------------------


def _allowed(
    policy: Mapping[str, Any], principal_arn: str, action: str, context: Mapping[str, list[str]]
) -> bool:
    allowed = False
    for statement in as_list(policy.get("Statement")):
        if not isinstance(statement, dict) or not _applies(statement, principal_arn, action):
            continue
        if not conditions_hold(statement.get("Condition", {}), context):
            continue
        if statement.get("Effect") == "Deny":
            return False
        if statement.get("Effect") == "Allow":
            allowed = True
    return allowed


def _applies(statement: Mapping[str, Any], principal_arn: str, action: str) -> bool:
    principal = statement.get("Principal", {})
    federated = as_list(principal.get("Federated")) if isinstance(principal, dict) else []
    if principal_arn not in federated:
        return False
    return any(fnmatch.fnmatchcase(action, pattern) for pattern in as_list(statement["Action"]))
