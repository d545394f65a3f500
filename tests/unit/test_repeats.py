"""``sts.exchange.Repeats``: a remembered selection is only ever given back for the index it was
made from, a new index drops every entry at once, and the table never grows past its bound."""

from __future__ import annotations

from typing import Any, cast

from sts.exchange import Repeats, Selection


def selection(index: object, name: str = "m") -> Selection:
    return Selection(
        cast(Any, None), b"d" * 32, cast(Any, index), cast(Any, name), (), cast(Any, (name,)), ""
    )


def test_a_selection_is_given_back_only_for_its_own_index() -> None:
    repeats = Repeats()
    old, new = object(), object()
    remembered = selection(old)
    repeats.put(("form", b"1"), remembered)
    assert repeats.get(("form", b"1"), cast(Any, old)) is remembered
    assert repeats.get(("form", b"1"), cast(Any, new)) is None
    assert repeats.get(("json", b"1"), cast(Any, old)) is None


def test_a_new_index_drops_every_entry_made_from_the_old_one() -> None:
    repeats = Repeats()
    old, new = object(), object()
    for n in range(10):
        repeats.put(("form", bytes([n])), selection(old))
    assert len(repeats) == 10
    repeats.put(("form", b"new"), selection(new))
    assert len(repeats) == 1
    assert repeats.get(("form", bytes([0])), cast(Any, old)) is None


def test_the_table_is_bounded() -> None:
    repeats = Repeats(max_entries=100)
    index = object()
    for n in range(1000):
        repeats.put(("form", n.to_bytes(4, "big")), selection(index))
        assert len(repeats) <= 100
    assert repeats.get(("form", (999).to_bytes(4, "big")), cast(Any, index)) is not None
