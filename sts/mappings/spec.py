"""The mapping value types shared by the file format, the database and the selection index.

A :class:`MappingSpec` is one validated entry of a mapping document (docs/reference.md section 4)
with its defaults filled in. It is immutable; :meth:`MappingSpec.to_document` gives back the file
form that ``sts mappings apply`` accepts unchanged.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Literal

Provider = Literal["aws", "gcp", "azure"]
#: What the cloud receives (docs/reference.md sections 4 and 8): a token zuplo-sts signs
#: (``broker``) or the Zuplo token itself (``zuplo``, "pass-through").
TokenSource = Literal["broker", "zuplo"]
BROKER: TokenSource = "broker"
ZUPLO: TokenSource = "zuplo"
TOKEN_SOURCES: tuple[TokenSource, ...] = (BROKER, ZUPLO)

DEFAULT_GCP_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
#: Azure Resource Manager (docs/reference.md section 9): the default scope of an Azure mapping.
DEFAULT_AZURE_SCOPE = "https://management.azure.com/.default"
IAM_SCOPE = "https://www.googleapis.com/auth/iam"
AWS_DURATION_RANGE = (900, 43200)
GCP_LIFETIME_RANGE = (600, 43200)
DEFAULT_DURATION_SECONDS = 3600


@dataclass(frozen=True, slots=True)
class AwsTarget:
    role_arn: str
    duration_seconds: int = DEFAULT_DURATION_SECONDS
    # Inline session policy as parsed from the file; None = none sent to AWS.
    session_policy: dict[str, Any] | None = field(default=None, hash=False)
    # None: the service's default (``broker`` with STS_BROKER_ISSUER, else ``zuplo``).
    token: TokenSource | None = None
    session_tags: bool = True

    def to_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "role_arn": self.role_arn,
            "duration_seconds": self.duration_seconds,
        }
        if self.session_policy is not None:
            doc["session_policy"] = self.session_policy
        if self.token is not None:
            doc["token"] = self.token
        doc["session_tags"] = self.session_tags
        return doc


@dataclass(frozen=True, slots=True)
class GcpTarget:
    workload_identity_provider: str
    service_account: str | None = None
    scopes: tuple[str, ...] = (DEFAULT_GCP_SCOPE,)
    lifetime_seconds: int = DEFAULT_DURATION_SECONDS
    # None: the service's default, as for AwsTarget.token.
    token: TokenSource | None = None
    # Audiences of the Google-signed ID tokens callers may ask for (docs/reference.md,
    # "GCP ID tokens"); empty: the mapping issues none. Set only with a service account.
    id_token_audiences: tuple[str, ...] = ()

    def to_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"workload_identity_provider": self.workload_identity_provider}
        if self.service_account is not None:
            doc["service_account"] = self.service_account
        doc["scopes"] = list(self.scopes)
        doc["lifetime_seconds"] = self.lifetime_seconds
        if self.token is not None:
            doc["token"] = self.token
        # Left out when empty, as the file has it: an empty list is not taken back (and a
        # mapping without audiences keeps the fingerprint it had before the field existed).
        if self.id_token_audiences:
            doc["id_token_audiences"] = list(self.id_token_audiences)
        return doc


@dataclass(frozen=True, slots=True)
class AzureTarget:
    """An Entra app registration or user-assigned managed identity (docs/reference.md
    section 9); ``scopes`` name one resource, each ending in ``/.default``."""

    tenant_id: str
    client_id: str
    scopes: tuple[str, ...] = (DEFAULT_AZURE_SCOPE,)
    # None: the service's default, as for AwsTarget.token.
    token: TokenSource | None = None

    def to_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "tenant_id": self.tenant_id,
            "client_id": self.client_id,
            "scopes": list(self.scopes),
        }
        if self.token is not None:
            doc["token"] = self.token
        return doc


Target = AwsTarget | GcpTarget | AzureTarget


@dataclass(frozen=True)
class MappingSpec:
    """One mapping, validated, defaults filled in. Exactly one of ``aws``/``gcp``/``azure``
    is set."""

    name: str
    account: str
    project: str
    deployment: str = "*"
    environment_type: str = "*"
    enabled: bool = True
    description: str = ""
    aws: AwsTarget | None = None
    gcp: GcpTarget | None = None
    azure: AzureTarget | None = None

    @property
    def provider(self) -> Provider:
        if self.aws is not None:
            return "aws"
        return "gcp" if self.gcp is not None else "azure"

    @property
    def target(self) -> Target:
        """The one cloud target that is set."""
        target = self.aws or self.gcp or self.azure
        assert target is not None
        return target

    @property
    def targets(self) -> tuple[str, ...]:
        """Values a caller may name in ``resource`` to pick this mapping (docs/reference.md
        section 2, and "GCP ID tokens"). The first is the target itself (what ``sts mappings
        list`` shows); a GCP mapping's ID token audiences follow its service account."""
        if self.aws is not None:
            return (self.aws.role_arn,)
        if self.azure is not None:
            return (self.azure.client_id,)
        assert self.gcp is not None
        if self.gcp.service_account is not None:
            return (self.gcp.service_account, *self.gcp.id_token_audiences)
        return (self.gcp.workload_identity_provider,)

    @property
    def token(self) -> TokenSource | None:
        """The target's ``token``; None until :meth:`with_default_token` resolved it."""
        return self.target.token

    def with_token(self, token: TokenSource | None) -> MappingSpec:
        if self.aws is not None:
            return replace(self, aws=replace(self.aws, token=token))
        if self.azure is not None:
            return replace(self, azure=replace(self.azure, token=token))
        assert self.gcp is not None
        return replace(self, gcp=replace(self.gcp, token=token))

    def with_default_token(self, broker: bool) -> MappingSpec:
        """This mapping as a service runs it: an unset ``token`` becomes ``broker`` when the
        service is in broker mode (``broker``), else ``zuplo`` (docs/reference.md section 4)."""
        if self.token is not None:
            return self
        return self.with_token(default_token(broker))

    def to_document(self) -> dict[str, Any]:
        """The file form, every default spelled out; ``parse`` of it gives back an equal spec.

        An unset ``token`` stays unset here: it is the service's to resolve, with its own
        ``STS_BROKER_ISSUER`` (:meth:`with_default_token`), never the CLI's (reference
        section 13).
        """
        doc: dict[str, Any] = {"name": self.name, "description": self.description}
        doc.update(
            account=self.account,
            project=self.project,
            deployment=self.deployment,
            environment_type=self.environment_type,
            enabled=self.enabled,
        )
        if self.aws is not None:
            doc["aws"] = self.aws.to_document()
        if self.gcp is not None:
            doc["gcp"] = self.gcp.to_document()
        if self.azure is not None:
            doc["azure"] = self.azure.to_document()
        return doc

    @cached_property
    def fingerprint(self) -> str:
        """Hash of the definition: part of the credential cache key, so an edit is a new key."""
        canonical = json.dumps(self.to_document(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def default_token(broker: bool) -> TokenSource:
    """What a mapping without ``token`` presents: ``broker`` on a service in broker mode."""
    return BROKER if broker else ZUPLO
