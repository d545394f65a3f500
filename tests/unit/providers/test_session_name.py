"""The AWS role session name rule (docs/reference.md section 4), as a table."""

from __future__ import annotations

import re

import pytest

from sts.providers.aws import session_name


@pytest.mark.parametrize(
    ("deployment", "expected"),
    [
        ("copper-bedbug-main-53c4947", "copper-bedbug-main-53c4947"),
        ("A_b+c=d,e.f@g-h", "A_b+c=d,e.f@g-h"),
        ("has space/and:colon", "has-space-and-colon"),
        ("ünïcödé", "-n-c-d-"),
        ("日本", "--"),
        ("emoji-😀", "emoji--"),  # one code point, one dash (not one per UTF-16 unit or byte)
        ("", "--"),
        ("a", "a-"),
        ("ab", "ab"),
        ("é", "--"),
        ("x" * 64, "x" * 64),
        ("x" * 65, "x" * 64),
        ("y" * 200, "y" * 64),
        ("ü" * 70, "-" * 64),
        ("tab\there\nnewline", "tab-here-newline"),
    ],
)
def test_session_name_rule(deployment: str, expected: str) -> None:
    assert session_name(deployment) == expected


@pytest.mark.parametrize("deployment", ["", "a", "x" * 1000, "\x00\u2028\U0010ffff", "*?[]"])
def test_session_name_is_always_valid_for_aws(deployment: str) -> None:
    name = session_name(deployment)
    assert re.fullmatch(r"[\w+=,.@-]{2,64}", name, flags=re.ASCII)
