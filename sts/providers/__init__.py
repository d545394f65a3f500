"""Cloud credential providers: AWS STS and GCP workload identity federation."""

from sts.providers.aws import AwsProvider, session_name
from sts.providers.base import CredentialProvider, Credentials
from sts.providers.gcp import GcpProvider

__all__ = ["AwsProvider", "CredentialProvider", "Credentials", "GcpProvider", "session_name"]
