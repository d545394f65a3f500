"""``POST /token``'s form parser reads every body exactly as ``urllib.parse.parse_qsl`` does
(keep_blank_values, strict UTF-8, at most 64 fields), refusing what it refuses."""

from __future__ import annotations

from urllib.parse import parse_qsl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sts.api.token import MAX_FORM_FIELDS, _parse_form, _reject_duplicates
from sts.errors import InvalidRequest


def reference(body: bytes) -> dict[str, str] | str | None:
    """What parse_qsl makes of the body (last value of a name), None where it refuses, the
    refusal where a field the service reads is named twice."""
    try:
        pairs = parse_qsl(
            body.decode("ascii"),
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FORM_FIELDS,
        )
    except ValueError:
        return None
    try:
        return _reject_duplicates(pairs)
    except InvalidRequest as error:
        return error.description


def ours(body: bytes) -> dict[str, str] | str | None:
    try:
        return _parse_form(body)
    except InvalidRequest as error:
        if error.description.startswith("repeated parameter"):
            return error.description
        # Any other refusal must be the one phrase; None stands for it.
        return None if error.description == "malformed request body" else error.description


PIECES = ["a", "=", "&", "+", "%", "%2", "%3A", "%C3%A9", "%C3", "%ff", "%zz", "scope", "x", "é"]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=12))
def test_every_body_reads_as_parse_qsl_reads_it(pieces: list[str]) -> None:
    body = "".join(pieces).encode()
    assert ours(body) == reference(body)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"&&&",
        b"a",
        b"a=",
        b"=b",
        b"a=b=c",
        b"a+b=c+d",
        b"a=%3D%26",
        b"a=%C3%A9",
        b"a=%C3",  # truncated UTF-8: refused
        b"a=%ff",
        b"a=\xc3\xa9",  # not ASCII: refused
        b"a=%zz",  # not an escape: kept as it is
        b"&".join([b"f=1"] * MAX_FORM_FIELDS),
        b"&".join([b"f=1"] * (MAX_FORM_FIELDS + 1)),  # one field too many: refused
        b"&" * MAX_FORM_FIELDS,
        # Longer than the values decoded once and remembered (sts.api.token._MEMO_CHARS).
        b"a=" + b"%3A" * 50,
        b"a=" + b"%C3%A9" * 30 + b"+" * 10,
        b"a=" + b"%C3%A9" * 30 + b"%C3",
    ],
)
def test_edge_cases(body: bytes) -> None:
    assert ours(body) == reference(body)


def test_a_remembered_value_reads_the_same_every_time() -> None:
    """The short encoded values are decoded once: later bodies get the same fields, and a value
    that cannot be decoded is refused every time (a refusal is not remembered as a value)."""
    good = b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&a=%C3%A9"
    bad = b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&a=%C3"
    for _ in range(3):
        assert ours(good) == reference(good)
        assert ours(good)["a"] == "\u00e9"  # type: ignore[index]
        assert ours(bad) is None
        assert reference(bad) is None


def test_a_field_named_twice_is_refused_after_decoding() -> None:
    with pytest.raises(InvalidRequest, match="repeated parameter scope"):
        _parse_form(b"scope=a&sc%6Fpe=b")
    assert _parse_form(b"other=1&other=2") == {"other": "2"}
