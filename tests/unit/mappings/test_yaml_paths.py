"""The libyaml path of the mapping loader never changes what a document means: whenever it
reads a document, the pure-Python loader reads the same values on the same lines; everything
else goes to the Python loader (sts.mappings.document._load)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from sts.mappings import document
from sts.mappings.document import MappingFileError, _LDict, _LList
from tests.unit.mappings.test_document import CONTRACT_EXAMPLE, ERRORS

pytestmark = pytest.mark.skipif(not document._LIBYAML, reason="PyYAML without libyaml")


def shape(value: Any) -> Any:
    """A value with the lines it remembers, comparable."""
    if isinstance(value, _LDict):
        return ("map", value.line, [(k, value.key_lines[k], shape(v)) for k, v in value.items()])
    if isinstance(value, _LList):
        return ("seq", value.line, list(value.item_lines), [shape(v) for v in value])
    return (type(value).__name__, value)


def outcome(load: Any, text: str) -> Any:
    try:
        return shape(load(text, "f.yaml"))
    except (MappingFileError, yaml.YAMLError, ValueError):
        return "refused"


def assert_same_meaning(text: str) -> None:
    fast = outcome(document._load_fast, text)
    if fast != "refused" and not document._PYTHON_ONLY.search(text):
        # What _load would return from libyaml: the Python loader must read the same.
        assert fast == outcome(document._load_python, text), text
    assert outcome(document._load, text) == outcome(document._load_python, text), text


CORPUS = [CONTRACT_EXAMPLE, *(case[0] for case in ERRORS)]


@pytest.mark.parametrize("text", CORPUS)
def test_the_test_documents_mean_the_same_on_both_paths(text: str) -> None:
    assert_same_meaning(text)


PIECES = [
    "mappings:\n",
    "  - ",
    "name: x\n",
    "    a: 1\n",
    "b: [1, 2]\n",
    "c: {d: e}\n",
    "&a x\n",
    "*a\n",
    "<<: {q: 1}\n",
    "!!str 5\n",
    "'s'\n",
    '"\\u00e9"\n',
    '"\\ud83d\\ude00"\n',
    "yes\n",
    "0o17\n",
    "1_000\n",
    "1e3\n",
    ".inf\n",
    "~\n",
    "\t\n",
    "# c\n",
    "---\n",
    "...\n",
    "? k\n",
    ": v\n",
    "[\n",
    "]\n",
    "{\n",
    "}\n",
    "key: |\n  text\n",
    ">-\n  folded\n",
    "\x85",
    "\u2028",
    "\ufeff",
    "- - - x\n",
]


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(PIECES), min_size=1, max_size=10))
def test_generated_documents_mean_the_same_on_both_paths(pieces: list[str]) -> None:
    assert_same_meaning("".join(pieces))


def test_a_plain_document_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(text: str, source: str) -> Any:
        raise AssertionError("the Python loader was used")

    monkeypatch.setattr(document, "_load_python", refuse)
    assert document._load(CONTRACT_EXAMPLE, "f.yaml")["mappings"][0]["name"] == "orders-prod"


def parsed(text: str) -> Any:
    try:
        return document.parse_document(text, "f.yaml")
    except MappingFileError as exc:
        return [str(error) for error in exc.all]


@pytest.mark.parametrize("text", CORPUS)
def test_entries_checked_as_they_are_read_give_the_same_specs_and_errors(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast path hands entries over while reading; the Python path checks them from the
    whole tree afterwards: the same specs, or the same mistakes in the same order."""
    fast = parsed(text)
    monkeypatch.setattr(document, "_LIBYAML", False)
    assert fast == parsed(text)


def test_a_document_refused_late_by_the_fast_path_is_checked_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An anchor after valid entries sends the document to the Python loader: the entries the
    fast path had already checked are dropped, not counted twice (which would make every
    name a duplicate)."""
    text = CONTRACT_EXAMPLE + "  - &x {name: late, account: a, project: p, aws: {role_arn: r}}\n"
    specs = parsed(text)
    monkeypatch.setattr(document, "_LIBYAML", False)
    assert parsed(text) == specs


def test_a_complex_key_line_in_a_flow_plain_scalar_means_the_same_on_both_paths() -> None:
    """Found by the generator: libyaml read "? k" as part of the scalar, PyYAML refuses it."""
    text = "{\nyes\n? k\n}\n"
    assert outcome(document._load, text) == outcome(document._load_python, text) == "refused"
