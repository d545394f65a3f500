"""docs/reference.md section 6 lists every command of the real command tree with every option
and argument, and nothing the tree does not have (an operator reads the table, not the code)."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from sts.cli import cli
from tests.unit.test_cli_help import COMMANDS

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "reference.md"


def section_6() -> str:
    text = REFERENCE.read_text()
    start = text.index("## 6. Command line")
    return text[start : text.index("\n## 7.", start)]


def documented() -> dict[tuple[str, ...], str]:
    """Each ``sts ...`` usage in the first cell of the section's table, by command path: the
    usage as written (options and arguments included)."""
    found: dict[tuple[str, ...], str] = {}
    for line in section_6().splitlines():
        if not line.startswith("| `sts"):
            continue
        first_cell = line.split(" | ", 1)[0]
        for usage in re.findall(r"`(sts [^`]*)`", first_cell):
            words = usage.split()[1:]
            path = tuple(word for word in words[:2] if re.fullmatch(r"[a-z][a-z-]*", word))
            while path and path not in COMMANDS:
                path = path[:-1]
            assert path, f"{usage!r} names no command"
            assert path not in found, f"{path} documented twice"
            found[path] = usage
    return found


def command(path: tuple[str, ...]) -> click.Command:
    found: click.Command = cli
    for name in path:
        assert isinstance(found, click.Group)
        found = found.commands[name]
    return found


def test_every_command_is_in_section_6_and_nothing_else() -> None:
    assert sorted(documented()) == COMMANDS


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_option_and_argument_is_in_the_usage(path: tuple[str, ...]) -> None:
    usage = documented()[path]
    for param in command(path).params:
        if isinstance(param, click.Option):
            names = [name for name in param.opts if name.startswith("--")]
            assert any(re.search(rf"{re.escape(name)}\b", usage) for name in names), (
                f"{' '.join(path)}: {names[0]} missing from {usage!r}"
            )
        else:
            name = (param.name or "").upper()
            assert name in usage or (param.metavar or "\0") in usage, (
                f"{' '.join(path)}: argument {name} missing from {usage!r}"
            )
