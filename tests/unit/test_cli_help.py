"""Every command's ``--help`` says which ``STS_*`` variables it reads (README "Commands"), and
names only variables that exist."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import sts
from sts.cli import cli

CONFIG = (Path(sts.__file__).parent / "config.py").read_text()
# Read by the commands themselves, not the service: who acts, and where --aws-apply calls IAM.
KNOWN = set(re.findall(r'"(STS_[A-Z0-9_]+)"', CONFIG)) | {"STS_ACTOR", "STS_IAM_ENDPOINT_URL"}


def leaves(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from leaves(sub, (*path, name))
        if path and command.invoke_without_command:
            yield path  # `sts dev` runs by itself
    else:
        yield path


COMMANDS = sorted(leaves(cli))


def test_every_command_is_listed() -> None:
    assert ("serve",) in COMMANDS
    assert ("mappings", "apply") in COMMANDS
    assert ("dev",) in COMMANDS
    assert len(COMMANDS) >= 17


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_help_names_the_variables_it_reads(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert re.search(r"Reads (no STS_\* variable|every STS_\* variable|STS_[A-Z])", text), text
    named = set(re.findall(r"(?<![A-Z_])STS_[A-Z0-9_]+", text))
    assert named <= KNOWN, named - KNOWN
    if path[0] in ("db", "mappings", "audit", "keys", "revoke") or path == ("explain",):
        assert "STS_DATABASE_URL" in named
