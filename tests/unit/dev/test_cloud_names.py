"""Wherever the clouds are listed, all three are: the package description, ``sts --help``, the
demo's and the sandbox's help (issue 23 point 8: "AWS and GCP", no Azure)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

import sts
from sts.cli import cli

PYPROJECT = Path(sts.__file__).parent.parent / "pyproject.toml"


def names_every_cloud(text: str) -> bool:
    return all(cloud in text for cloud in ("AWS", "GCP", "Azure"))


def test_the_package_description_names_every_cloud() -> None:
    description = tomllib.loads(PYPROJECT.read_text())["project"]["description"]
    assert names_every_cloud(description), description


@pytest.mark.parametrize("path", [(), ("demo",), ("dev",)], ids=["sts", "demo", "dev"])
def test_the_help_names_every_cloud(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert names_every_cloud(" ".join(result.output.split())), result.output
