"""Cloud credential providers: AWS STS and GCP workload identity federation."""

from sts.providers.base import Credentials, CredentialProvider

__all__ = ["CredentialProvider", "Credentials"]
