"""The verifier's refusal phrases, spelled out as docs/reference.md section 3 words them.

Tests compare answers with these, never with the implementation's own constants.
"""

TOKEN_UNPARSABLE = "token unparsable"
TOKEN_TOO_LARGE = "token too large"
ALGORITHM_NOT_ALLOWED = "algorithm not allowed"
HEADER_NOT_ALLOWED = "header not allowed"
KEY_NOT_FOUND = "signing key not found"
SIGNATURE_INVALID = "signature invalid"
ISSUER_NOT_TRUSTED = "issuer not trusted"
AUDIENCE_NOT_ACCEPTED = "audience not accepted"
TOKEN_EXPIRED = "token expired"
TOKEN_NOT_YET_VALID = "token not yet valid"
TOKEN_ISSUED_IN_FUTURE = "token issued in the future"
CLAIM_INVALID = "claim missing or invalid"
TOKEN_LIFETIME_TOO_LONG = "token lifetime too long"
KEYS_UNAVAILABLE = "signing keys unavailable"
IDENTITY_CLAIMS = ("sub", "account", "project", "deployment", "environment_type")
MAX_TOKEN_BYTES = 16 * 1024
