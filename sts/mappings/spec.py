"""The mapping value types shared by the file format, the database and the selection index.

A :class:`MappingSpec` is one validated entry of a mapping document (docs/reference.md section 4)
with its defaults filled in. It is immutable; :meth:`MappingSpec.to_document` gives back the file
form that ``sts mappings apply`` accepts unchanged.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

Provider = Literal["aws", "gcp"]

DEFAULT_GCP_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
IAM_SCOPE = "https://www.googleapis.com/auth/iam"
AWS_DURATION_RANGE = (900, 43200)
GCP_LIFETIME_RANGE = (600, 43200)
DEFAULT_DURATION_SECONDS = 3600


@dataclass(frozen=True)
class AwsTarget:
    role_arn: str
    duration_seconds: int = DEFAULT_DURATION_SECONDS
    # Inline session policy as parsed from the file; None = none sent to AWS.
    session_policy: dict[str, Any] | None = field(default=None, hash=False)

    def to_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "role_arn": self.role_arn,
            "duration_seconds": self.duration_seconds,
        }
        if self.session_policy is not None:
            doc["session_policy"] = self.session_policy
        return doc


@dataclass(frozen=True)
class GcpTarget:
    workload_identity_provider: str
    service_account: str | None = None
    scopes: tuple[str, ...] = (DEFAULT_GCP_SCOPE,)
    lifetime_seconds: int = DEFAULT_DURATION_SECONDS

    def to_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"workload_identity_provider": self.workload_identity_provider}
        if self.service_account is not None:
            doc["service_account"] = self.service_account
        doc["scopes"] = list(self.scopes)
        doc["lifetime_seconds"] = self.lifetime_seconds
        return doc


@dataclass(frozen=True)
class MappingSpec:
    """One mapping, validated, defaults filled in. Exactly one of ``aws``/``gcp`` is set."""

    name: str
    account: str
    project: str
    deployment: str = "*"
    environment_type: str = "*"
    enabled: bool = True
    description: str = ""
    aws: AwsTarget | None = None
    gcp: GcpTarget | None = None

    @property
    def provider(self) -> Provider:
        return "aws" if self.aws is not None else "gcp"

    @property
    def targets(self) -> tuple[str, ...]:
        """Values a caller may name in ``resource`` to pick this mapping (reference section 2)."""
        if self.aws is not None:
            return (self.aws.role_arn,)
        assert self.gcp is not None
        if self.gcp.service_account is not None:
            return (self.gcp.service_account,)
        return (self.gcp.workload_identity_provider,)

    def to_document(self) -> dict[str, Any]:
        """The file form, every default spelled out; ``parse`` of it gives back an equal spec."""
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
        return doc

    @cached_property
    def fingerprint(self) -> str:
        """Hash of the definition: part of the credential cache key, so an edit is a new key."""
        canonical = json.dumps(self.to_document(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]
