"""docs/examples type-check with the real TypeScript compiler against the real @zuplo/runtime,
at the versions docs/examples/package.json pins (README, "Calling it from a Zuplo handler")."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
SHIPPED = ("package.json", "package-lock.json", "tsconfig.json")

pytestmark = pytest.mark.skipif(shutil.which("npm") is None, reason="needs Node.js and npm")


def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the examples with their pinned packages installed (npm ci, the lock file)."""
    work = tmp_path_factory.mktemp("examples")
    for path in EXAMPLES.iterdir():
        if path.is_file():
            shutil.copy(path, work / path.name)
    done = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return work


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return installed(tmp_path_factory)


def tsc(work: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["npx", "--no-install", "tsc", "-p", "."],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_examples_ship_what_type_checks_them() -> None:
    for name in SHIPPED:
        assert (EXAMPLES / name).is_file(), name
    assert sorted(p.name for p in EXAMPLES.glob("*.ts")) == [
        "aws-handler.ts",
        "gcp-handler.ts",
        "gcp-id-token-handler.ts",
        "sts-client.ts",
    ]


def test_every_example_type_checks(examples: Path) -> None:
    done = tsc(examples)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_type_error_is_found(examples: Path) -> None:
    """The check can fail: one wrong type in a copy of the client is reported."""
    client = examples / "sts-client.ts"
    original = client.read_text()
    try:
        client.write_text(original + '\nconst wrong: number = "text";\nexport { wrong };\n')
        done = tsc(examples)
    finally:
        client.write_text(original)
    assert done.returncode != 0
    assert "TS2322" in done.stdout


def test_a_type_error_in_the_id_token_handler_is_found(examples: Path) -> None:
    """The ID token handler is in the checked set: an answer read as the wrong type fails."""
    handler = examples / "gcp-id-token-handler.ts"
    original = handler.read_text()
    broken = original.replace("let idToken: string;", "let idToken: number;", 1)
    assert broken != original
    try:
        handler.write_text(broken)
        done = tsc(examples)
    finally:
        handler.write_text(original)
    assert done.returncode != 0
    assert "gcp-id-token-handler.ts" in done.stdout
