"""``GET /openapi.json``: the OpenAPI 3.1 description of the service (docs/reference.md section 7).

The document is built from the same constants the handlers use (grant type, token types, size
caps), serialized once at import and served as bytes. It describes every route the app serves
and every response each one gives, errors included, so schemathesis can fuzz the service against
it (tests/functional/test_schemathesis.py) and a test keeps it in step with ``app.url_map``.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response

from sts import __version__
from sts.api import REQUEST_ID
from sts.api.token import GRANT_TYPE, MAX_BODY_BYTES, SUBJECT_TOKEN_TYPES
from sts.identity.verifier import MAX_TOKEN_BYTES
from sts.mappings.index import ACCESS_TOKEN_TYPE, AWS_CREDENTIALS_TOKEN_TYPE

bp = Blueprint("openapi", __name__)

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
# The document changes only with a new release, so an hour in any cache is harmless.
CACHE_CONTROL = "public, max-age=3600"
MAPPING_NAME = "^[a-z0-9][a-z0-9-]{0,62}$"
TOKEN_ERRORS_400 = (
    "invalid_request",
    "unsupported_grant_type",
    "unauthorized_client",
    "invalid_target",
    "invalid_scope",
)


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {JSON: {"schema": schema}}


# Every JSON answer of the app goes through sts.api.json_response, which always adds these two.
_NO_STORE_HEADERS = {
    "Cache-Control": _ref("headers", "CacheControlNoStore"),
    "Pragma": _ref("headers", "PragmaNoCache"),
}


def _token_request(optional: dict[str, Any]) -> dict[str, Any]:
    """RFC 8693 section 2.1 request parameters; unknown ones are ignored (RFC 6749 section 3.2)."""
    described = {
        "audience": "Name of the mapping to use, or a GCP workload identity provider name "
        "(//iam.googleapis.com/projects/.../providers/...). Needed only when several mappings "
        "bind the caller.",
        "resource": "The target itself: an AWS role ARN, a GCP service-account email, the "
        "workload identity provider name of a GCP mapping without a service account, or an "
        "Azure mapping's client_id.",
        "scope": "GCP and Azure only: space-separated OAuth scopes, each allowed by the mapping "
        "(an Azure mapping allows its one <resource>/.default scope). An empty value counts as "
        "absent.",
        "requested_token_type": "If given, must be the token type the mapping issues: "
        f"{AWS_CREDENTIALS_TOKEN_TYPE} (AWS) or {ACCESS_TOKEN_TYPE} (GCP, Azure).",
    }
    return {
        "type": "object",
        "required": ["grant_type", "subject_token", "subject_token_type"],
        "properties": {
            "grant_type": {"type": "string", "enum": [GRANT_TYPE]},
            "subject_token": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_TOKEN_BYTES,
                "description": "The Zuplo ID token (RS256 compact JWS).",
            },
            "subject_token_type": {"type": "string", "enum": sorted(SUBJECT_TOKEN_TYPES)},
            **{name: {**optional, "description": text} for name, text in described.items()},
            # Delegation (RFC 8693 section 1.1) is not supported: present means rejected.
            "actor_token": False,
            "actor_token_type": False,
        },
        "additionalProperties": True,
    }


def _error(codes: tuple[str, ...], description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "required": ["error", "error_description"],
        "properties": {
            "error": {"type": "string", "enum": list(codes)},
            "error_description": {
                "type": "string",
                "description": "A fixed phrase naming the failed check; never caller input.",
            },
        },
        "additionalProperties": False,
    }


_AWS_CREDENTIALS = {
    "type": "object",
    "description": "Exactly the AWS SDK credential_process document.",
    "required": ["Version", "AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"],
    "properties": {
        "Version": {"const": 1},
        "AccessKeyId": {"type": "string", "minLength": 1},
        "SecretAccessKey": {"type": "string", "minLength": 1},
        "SessionToken": {"type": "string", "minLength": 1},
        "Expiration": {
            "type": "string",
            "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$",
            "format": "date-time",
        },
    },
    "additionalProperties": False,
}

_EXPIRES_IN = {
    "type": "integer",
    "minimum": 0,
    "description": "Whole seconds left on the credentials when the response is sent.",
}

_SCHEMAS: dict[str, Any] = {
    "TokenRequestForm": _token_request({"type": "string"}),
    # JSON null is treated as an absent parameter.
    "TokenRequestJson": _token_request({"type": ["string", "null"]}),
    "AwsTokenResponse": {
        "type": "object",
        "required": [
            "access_token",
            "issued_token_type",
            "token_type",
            "expires_in",
            "mapping",
            "aws_credentials",
        ],
        "properties": {
            "access_token": {"type": "string", "description": "The AWS session token."},
            "issued_token_type": {"const": AWS_CREDENTIALS_TOKEN_TYPE},
            "token_type": {"const": "N_A"},
            "expires_in": _EXPIRES_IN,
            "mapping": {"type": "string", "pattern": MAPPING_NAME},
            "aws_credentials": _AWS_CREDENTIALS,
        },
        "additionalProperties": False,
    },
    "GcpTokenResponse": {
        "description": "A GCP or Azure mapping's answer: an OAuth access token.",
        "type": "object",
        "required": ["access_token", "issued_token_type", "token_type", "expires_in", "mapping"],
        "properties": {
            "access_token": {"type": "string", "minLength": 1},
            "issued_token_type": {"const": ACCESS_TOKEN_TYPE},
            "token_type": {"const": "Bearer"},
            "expires_in": _EXPIRES_IN,
            "scope": {"type": "string", "description": "Space-separated granted scopes."},
            "mapping": {"type": "string", "pattern": MAPPING_NAME},
        },
        "additionalProperties": False,
    },
    "TokenResponse": {
        "oneOf": [_ref("schemas", "AwsTokenResponse"), _ref("schemas", "GcpTokenResponse")],
    },
    "TokenError": _error(
        TOKEN_ERRORS_400,
        "RFC 6749 section 5.2 / RFC 8693 section 2.2.2 error. A subject token that fails "
        "validation for any reason is invalid_request; a provider refusal is invalid_target "
        "with a description starting 'aws: ', 'gcp: ' or 'azure: AADSTS<number>'.",
    ),
    "TemporarilyUnavailable": _error(
        ("temporarily_unavailable",),
        "Issuer keys not loaded yet or unreachable, mappings unavailable, or provider "
        "throttling, 5xx or timeout: retry after Retry-After seconds.",
    ),
    "ServerError": _error(("server_error",), "Anything else."),
    "NotFound": _error(("not_found",), "No route with this path."),
    "MethodNotAllowed": _error(("method_not_allowed",), "The path exists, the method does not."),
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"const": "ok"}},
        "additionalProperties": False,
    },
    "OpenIDConfiguration": {
        "type": "object",
        "required": [
            "issuer",
            "jwks_uri",
            "response_types_supported",
            "subject_types_supported",
            "id_token_signing_alg_values_supported",
            "claims_supported",
        ],
        "properties": {
            "issuer": {"type": "string", "format": "uri"},
            "jwks_uri": {"type": "string", "format": "uri"},
            "response_types_supported": {"type": "array", "items": {"type": "string"}},
            "subject_types_supported": {"type": "array", "items": {"type": "string"}},
            "id_token_signing_alg_values_supported": {
                "type": "array",
                "items": {"const": "RS256"},
            },
            "claims_supported": {"type": "array", "items": {"type": "string"}},
        },
    },
    "JWKSet": {
        "type": "object",
        "required": ["keys"],
        "properties": {
            "keys": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["kty", "kid", "use", "alg", "n", "e"],
                    "additionalProperties": False,
                    "properties": {
                        "kty": {"const": "RSA"},
                        "kid": {"type": "string"},
                        "use": {"const": "sig"},
                        "alg": {"const": "RS256"},
                        "n": {"type": "string"},
                        "e": {"type": "string"},
                    },
                },
            }
        },
    },
    "Ready": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"const": "ready"}},
        "additionalProperties": False,
    },
    "NotReady": {
        "type": "object",
        "required": ["status", "reason"],
        "properties": {
            "status": {"const": "not ready"},
            "reason": {"type": "string", "description": "What is missing: database or keys."},
        },
        "additionalProperties": False,
    },
}

_HEADERS: dict[str, Any] = {
    "CacheControlNoStore": {
        "required": True,
        "description": "Token responses must not be stored (RFC 6749 section 5.1).",
        "schema": {"type": "string", "const": "no-store"},
    },
    "PragmaNoCache": {
        "required": True,
        "schema": {"type": "string", "const": "no-cache"},
    },
    "RetryAfter": {
        "required": True,
        "description": "Seconds to wait before retrying (RFC 9110 section 10.2.3).",
        "schema": {"type": "integer", "minimum": 1},
    },
    "RequestId": {
        "required": True,
        "description": "The caller's X-Request-Id when it is plain and short, else a new one; "
        "the same id is in the service's log line for the request.",
        "schema": {"type": "string", "pattern": f"^{REQUEST_ID.pattern}$"},
    },
    "Allow": {
        "required": True,
        "description": "The methods the path supports (RFC 9110 section 15.5.6).",
        "schema": {"type": "string"},
    },
}

_RESPONSES: dict[str, Any] = {
    "TokenError": {
        "description": "The request, the subject token or the target was refused.",
        "headers": _NO_STORE_HEADERS,
        "content": _json(_ref("schemas", "TokenError")),
    },
    "TemporarilyUnavailable": {
        "description": "Retry later.",
        "headers": {**_NO_STORE_HEADERS, "Retry-After": _ref("headers", "RetryAfter")},
        "content": _json(_ref("schemas", "TemporarilyUnavailable")),
    },
    "ServerError": {
        "description": "Unexpected failure; no detail is given.",
        "headers": _NO_STORE_HEADERS,
        "content": _json(_ref("schemas", "ServerError")),
    },
    "NotFound": {
        "description": "Any path not listed in this document.",
        "headers": _NO_STORE_HEADERS,
        "content": _json(_ref("schemas", "NotFound")),
    },
    "MethodNotAllowed": {
        "description": "A method the path does not support (OPTIONS and, for GET paths, HEAD "
        "are always supported).",
        "headers": {**_NO_STORE_HEADERS, "Allow": _ref("headers", "Allow")},
        "content": _json(_ref("schemas", "MethodNotAllowed")),
    },
}

_PUBLIC_CACHE_HEADERS = {
    "Cache-Control": {
        "required": True,
        "schema": {"type": "string", "const": "public, max-age=300"},
    }
}

_PATHS: dict[str, Any] = {
    "/token": {
        "post": {
            "operationId": "exchangeToken",
            "summary": "RFC 8693 token exchange: a Zuplo ID token for AWS, GCP or Azure "
            "credentials",
            "description": "The body is form-encoded (RFC 8693) or JSON with the same fields; "
            f"media-type parameters such as charset are accepted. Bodies over {MAX_BODY_BYTES} "
            f"bytes and subject tokens over {MAX_TOKEN_BYTES} bytes are invalid_request.",
            "requestBody": {
                "required": True,
                "content": {
                    FORM: {"schema": _ref("schemas", "TokenRequestForm")},
                    JSON: {"schema": _ref("schemas", "TokenRequestJson")},
                },
            },
            "responses": {
                "200": {
                    "description": "Credentials from the mapping that binds the caller.",
                    "headers": _NO_STORE_HEADERS,
                    "content": _json(_ref("schemas", "TokenResponse")),
                },
                "400": _ref("responses", "TokenError"),
                # Only for other methods on /token; OpenAPI has no place for undeclared ones.
                "405": _ref("responses", "MethodNotAllowed"),
                "500": _ref("responses", "ServerError"),
                "503": _ref("responses", "TemporarilyUnavailable"),
            },
        },
    },
    "/healthz": {
        "get": {
            "operationId": "healthz",
            "summary": "Liveness: the process answers",
            "responses": {
                "200": {
                    "description": "Alive.",
                    "headers": _NO_STORE_HEADERS,
                    "content": _json(_ref("schemas", "Health")),
                },
            },
        },
    },
    "/readyz": {
        "get": {
            "operationId": "readyz",
            "summary": "Readiness: the database answers and every issuer's keys are loaded",
            "responses": {
                "200": {
                    "description": "Ready to exchange tokens.",
                    "headers": _NO_STORE_HEADERS,
                    "content": _json(_ref("schemas", "Ready")),
                },
                "503": {
                    "description": "Not ready; the reason names what is missing.",
                    "headers": _NO_STORE_HEADERS,
                    "content": _json(_ref("schemas", "NotReady")),
                },
            },
        },
    },
    "/.well-known/openid-configuration": {
        "get": {
            "operationId": "openidConfiguration",
            "summary": "Broker mode: the OpenID provider metadata the clouds read",
            "responses": {
                "200": {
                    "description": "OpenID Connect Discovery 1.0 metadata of STS_BROKER_ISSUER.",
                    "headers": _PUBLIC_CACHE_HEADERS,
                    "content": _json(_ref("schemas", "OpenIDConfiguration")),
                },
                "404": _ref("responses", "NotFound"),
            },
        },
    },
    "/.well-known/jwks.json": {
        "get": {
            "operationId": "jwks",
            "summary": "Broker mode: the public keys that verify the tokens the broker signs",
            "responses": {
                "200": {
                    "description": "An RFC 7517 JWK Set: every published key, public parts only.",
                    "headers": _PUBLIC_CACHE_HEADERS,
                    "content": _json(_ref("schemas", "JWKSet")),
                },
                "404": _ref("responses", "NotFound"),
                "503": _ref("responses", "TemporarilyUnavailable"),
            },
        },
    },
    "/metrics": {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics",
            "responses": {
                "200": {
                    "description": "Prometheus text exposition format.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
            },
        },
    },
    "/openapi.json": {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "responses": {
                "200": {
                    "description": "The OpenAPI 3.1 description of the service.",
                    "headers": {
                        "Cache-Control": {
                            "required": True,
                            "schema": {"type": "string", "const": CACHE_CONTROL},
                        }
                    },
                    "content": _json(
                        {
                            "type": "object",
                            "required": ["openapi", "info", "paths"],
                            "properties": {"openapi": {"type": "string", "pattern": r"^3\.1\."}},
                        }
                    ),
                },
            },
        },
    },
}

_PARAMETERS: dict[str, Any] = {
    "RequestId": {
        "name": "X-Request-Id",
        "in": "header",
        "required": False,
        "description": f"Echoed in the response when it matches {REQUEST_ID.pattern}.",
        "schema": {"type": "string"},
    },
}


def _with_request_id(paths: dict[str, Any], responses: dict[str, Any]) -> None:
    """Every answer, documented or not, carries X-Request-Id (set in sts.api.build_app)."""
    for item in paths.values():
        for operation in item.values():
            operation["parameters"] = [_ref("parameters", "RequestId")]
            for response in operation["responses"].values():
                if "$ref" not in response:
                    response["headers"] = {
                        **response.get("headers", {}),
                        "X-Request-Id": _ref("headers", "RequestId"),
                    }
    for response in responses.values():
        response["headers"] = {**response["headers"], "X-Request-Id": _ref("headers", "RequestId")}


_with_request_id(_PATHS, _RESPONSES)

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "zuplo-sts",
        "version": __version__,
        "summary": "Exchange Zuplo ID tokens for short-lived AWS, GCP and Azure credentials",
        "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
    },
    "paths": _PATHS,
    "components": {
        "schemas": _SCHEMAS,
        "headers": _HEADERS,
        "parameters": _PARAMETERS,
        "responses": _RESPONSES,
    },
}

_BODY = json.dumps(DOCUMENT, separators=(",", ":"), sort_keys=True).encode("utf-8")


@bp.get("/openapi.json")
def openapi() -> Response:
    response = Response(_BODY, status=200, mimetype="application/json")
    response.headers["Cache-Control"] = CACHE_CONTROL
    return response
