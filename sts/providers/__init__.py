"""Cloud credential providers: AWS STS and GCP workload identity federation.

Only the protocol and the credential type are exported here: ``sts.providers.aws`` and
``sts.providers.gcp`` load boto3 and google-auth (half a second), which code that merely
handles ``Credentials`` (the cache, the CLI) should not pay for.
"""

from sts.providers.base import CredentialProvider, Credentials

__all__ = ["CredentialProvider", "Credentials"]
