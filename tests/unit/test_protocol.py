"""The protocol's identifiers are spelled once, in sts.protocol, with the contract's values."""

from __future__ import annotations

import ast
from pathlib import Path

import sts
from sts import protocol

PACKAGE = Path(sts.__file__).parent


def test_identifiers_have_the_values_of_rfc_8693_and_the_readme() -> None:
    assert protocol.TOKEN_EXCHANGE_GRANT_TYPE == "urn:ietf:params:oauth:grant-type:token-exchange"
    assert protocol.ID_TOKEN_TYPE == "urn:ietf:params:oauth:token-type:id_token"
    assert protocol.JWT_TOKEN_TYPE == "urn:ietf:params:oauth:token-type:jwt"
    assert protocol.ACCESS_TOKEN_TYPE == "urn:ietf:params:oauth:token-type:access_token"
    assert protocol.AWS_CREDENTIALS_TOKEN_TYPE == "urn:zuplo-sts:token-type:aws-credentials"
    assert {
        "urn:ietf:params:oauth:token-type:id_token",
        "urn:ietf:params:oauth:token-type:jwt",
    } == protocol.SUBJECT_TOKEN_TYPES
    assert protocol.GCP_SUBJECT_TOKEN_TYPE == "urn:ietf:params:oauth:token-type:jwt"
    assert protocol.GCP_REQUESTED_TOKEN_TYPE == "urn:ietf:params:oauth:token-type:access_token"


def test_no_module_but_sts_protocol_spells_a_grant_or_token_type() -> None:
    spelled = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "protocol.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                continue
            if "urn:ietf:params:oauth:" in node.value or "urn:zuplo-sts:" in node.value:
                spelled.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert spelled == []
