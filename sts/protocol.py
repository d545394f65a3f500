"""Protocol constants, defined once: grant and token type identifiers.

- RFC 8693 section 2.1: the token-exchange grant type and the ``subject_token_type`` values this
  service accepts (a Zuplo ID token is an OpenID Connect ID token, and a JWT).
- RFC 8693 section 3: the token type URIs, including ``access_token``, the ``issued_token_type``
  of a GCP answer; GCP's STS ``token`` method takes the same grant type, a ``jwt`` subject token
  and ``access_token`` as its ``requested_token_type``.
- RFC 7523 section 2.2: the client assertion type of Entra's client credentials grant with a
  federated credential (Azure, docs/reference.md section 9).
- ``urn:zuplo-sts:token-type:aws-credentials``: this service's ``issued_token_type`` for an
  AWS ``credential_process`` document (README, "Run it").
"""

from __future__ import annotations

from typing import Final

# The S105 waivers: these are URNs, not passwords.
TOKEN_EXCHANGE_GRANT_TYPE: Final = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105
ID_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:id_token"  # noqa: S105
JWT_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105
ACCESS_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105
AWS_CREDENTIALS_TOKEN_TYPE: Final = "urn:zuplo-sts:token-type:aws-credentials"  # noqa: S105

#: What ``POST /token`` accepts as ``subject_token_type``.
SUBJECT_TOKEN_TYPES: Final = frozenset({ID_TOKEN_TYPE, JWT_TOKEN_TYPE})

#: What the service sends to GCP's STS ``token`` method (RFC 8693 section 2.1 fields).
GCP_SUBJECT_TOKEN_TYPE: Final = JWT_TOKEN_TYPE
GCP_REQUESTED_TOKEN_TYPE: Final = ACCESS_TOKEN_TYPE

#: The broker token's ``aud`` for AWS: the client ID of an IAM OIDC provider, as EKS uses it
#: (docs/reference.md section 8).
AWS_BROKER_AUDIENCE: Final = "sts.amazonaws.com"
#: For GCP the broker token's ``aud`` is this prefix + the provider name (``//iam...``): the
#: audience a workload identity provider allows by default.
GCP_BROKER_AUDIENCE_PREFIX: Final = "https:"
#: The audience of a Microsoft Entra federated identity credential: the broker token's ``aud``
#: for Azure (docs/reference.md section 9).
AZURE_BROKER_AUDIENCE: Final = "api://AzureADTokenExchange"
#: RFC 7523 section 2.2: ``client_assertion_type`` of a JWT used for client authentication,
#: what Entra's client credentials grant takes with a federated credential.
CLIENT_ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: RFC 6749 section 4.4: the client credentials grant.
CLIENT_CREDENTIALS_GRANT_TYPE: Final = "client_credentials"

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "AWS_BROKER_AUDIENCE",
    "AWS_CREDENTIALS_TOKEN_TYPE",
    "AZURE_BROKER_AUDIENCE",
    "CLIENT_ASSERTION_TYPE",
    "CLIENT_CREDENTIALS_GRANT_TYPE",
    "GCP_BROKER_AUDIENCE_PREFIX",
    "GCP_REQUESTED_TOKEN_TYPE",
    "GCP_SUBJECT_TOKEN_TYPE",
    "ID_TOKEN_TYPE",
    "JWT_TOKEN_TYPE",
    "SUBJECT_TOKEN_TYPES",
    "TOKEN_EXCHANGE_GRANT_TYPE",
]
