"""Broker mode (``STS_BROKER_ISSUER``, README "Configuration"): zuplo-sts as an OIDC issuer.

:mod:`sts.broker.keys` holds the signing keys (database rows sealed with AES-256-GCM, or AWS KMS
in :mod:`sts.broker.kms`), :mod:`sts.broker.mint` signs one broker token, and
:mod:`sts.broker.documents` renders the discovery document and the JWKS. The broker knows no
cloud: each provider says which audience and claims its token carries.
"""
