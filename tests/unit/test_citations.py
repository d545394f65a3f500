"""What the code cites, a reader of the repository can open (docs/reference.md, docs/*.md)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [
    path
    for folder in ("sts", "tests", "migrations", "bench")
    for path in (ROOT / folder).rglob("*.py")
    if path != Path(__file__).resolve()
]


def test_no_source_cites_documents_outside_the_repository() -> None:
    # The shared contract and design documents are not part of the repository.
    outside = re.compile(r"\bCONTRACT(?:\.md)?\s+(?:section|\d)|\bDESIGN(?:\.md)?\b")
    cited = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in SOURCES
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if outside.search(line)
    ]
    assert cited == []


def test_every_cited_reference_section_exists() -> None:
    headings = set(
        re.findall(r"^## (\d+)\. ", (ROOT / "docs" / "reference.md").read_text(), re.MULTILINE)
    )
    cited = {
        number
        for path in SOURCES
        for number in re.findall(r"docs/reference\.md sections? (\d+)", path.read_text())
    }
    assert cited
    assert cited <= headings, cited - headings
