"""Re-applying unchanged mappings costs a comparison of the stored columns: no stored row is
turned back into a spec (which re-validates it), so a 100,000-mapping file that did not change
is a diff, not a rebuild; and neither the file nor the table is held whole in memory on the
way (the stored rows are compared in batches as they are read, the file's entries as they are
parsed)."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml

from sts.db import Database
from sts.mappings import store
from sts.mappings.document import parse_document

DOCUMENT = """\
mappings:
  - name: a-aws
    account: acc
    project: p
    aws:
      role_arn: "arn:aws:iam::123456789012:role/a"
      session_policy:
        Version: "2012-10-17"
        Statement: [{Effect: Allow, Action: "s3:GetObject", Resource: "*"}]
  - name: b-gcp
    account: acc
    project: p
    gcp:
      workload_identity_provider: "//iam.googleapis.com/projects/1/locations/global/\\
        workloadIdentityPools/pool/providers/prov"
      scopes: [https://www.googleapis.com/auth/cloud-platform]
  - name: c-azure
    account: acc
    project: p
    azure:
      tenant_id: 72f988bf-86f1-41af-91ab-2d7cd011db47
      client_id: 9b2a4c1e-3f5d-4e6a-8b7c-0d1e2f3a4b5c
"""


@pytest.fixture
def database(tmp_path: Path) -> Any:
    db = Database(f"sqlite:///{tmp_path / 'sts.db'}")
    db.upgrade()
    yield db
    db.dispose()


def test_an_unchanged_file_builds_no_stored_spec(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    specs = parse_document(DOCUMENT)
    assert len(store.apply(database, specs, actor="t", source="t").created) == 3

    def refuse(row: Any) -> Any:
        raise AssertionError(f"row {row.name} rebuilt")

    monkeypatch.setattr(store, "spec_from_row", refuse)
    again = store.apply(database, specs, actor="t", source="t")
    assert again.unchanged == ["a-aws", "b-gcp", "c-azure"]
    assert not again.changed
    # An explicit token over an unset one is a change (it pins the mapping; section 13).
    spelled = [spec.with_default_token(False) for spec in specs]
    monkeypatch.undo()
    assert [
        u.after.name for u in store.apply(database, spelled, actor="t", source="t").updated
    ] == [
        "a-aws",
        "b-gcp",
        "c-azure",
    ]


def test_a_changed_mapping_is_still_found_and_described(database: Database) -> None:
    specs = parse_document(DOCUMENT)
    store.apply(database, specs, actor="t", source="t")
    edited = parse_document(DOCUMENT.replace("project: p\n    azure", "project: q\n    azure"))
    diff = store.apply(database, edited, actor="t", source="t")
    assert diff.unchanged == ["a-aws", "b-gcp"]
    (update,) = diff.updated
    assert update.after.name == "c-azure"
    assert [(c.path, c.before, c.after) for c in update.changes] == [("project", "p", "q")]
    # An explicit broker token over an unset one is a change.
    broker = [spec.with_token("broker") if spec.name == "a-aws" else spec for spec in edited]
    assert [u.after.name for u in store.apply(database, broker, actor="t", source="t").updated] == [
        "a-aws"
    ]


def generated(count: int, *, edit: int = -1) -> list[dict[str, Any]]:
    """``count`` file entries of both providers, some with a session policy; entry ``edit``
    gets another project."""
    entries: list[dict[str, Any]] = []
    for i in range(count):
        entry: dict[str, Any] = {
            "name": f"m{i:05d}",
            "description": f"mapping {i}",
            "account": f"acc-{i // 8}",
            "project": "edited" if i == edit else f"p{i % 4}",
        }
        if i % 5 == 4:
            entry["gcp"] = {
                "workload_identity_provider": "//iam.googleapis.com/projects/1/locations/"
                f"global/workloadIdentityPools/pool/providers/prov-{i:05d}",
            }
        else:
            entry["aws"] = {"role_arn": f"arn:aws:iam::123456789012:role/r{i}"}
            if i % 3 == 0:
                entry["aws"]["session_policy"] = {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}],
                }
        entries.append(entry)
    return entries


def test_a_diff_over_more_rows_than_a_batch_finds_every_kind_of_change(
    database_url: str,
) -> None:
    """The rows come in batches (of 500) on both databases: every stored row is still seen
    once, whichever batch it is in."""
    db = Database(database_url)
    db.upgrade()
    try:
        first = parse_document(yaml.safe_dump({"mappings": generated(1_700)}))
        assert len(store.apply(db, first, actor="t", source="t").created) == 1_700
        # Drop 0-99 and 1,650-1,699, edit 777, add 1,700-1,749.
        entries = generated(1_750, edit=777)[100:]
        entries = [entry for entry in entries if not 1_650 <= int(entry["name"][1:]) < 1_700]
        second = parse_document(yaml.safe_dump({"mappings": entries}))

        kept = store.apply(db, second, dry_run=True, actor="t", source="t")
        dropped = [f"m{i:05d}" for i in [*range(100), *range(1_650, 1_700)]]
        assert kept.kept == dropped
        assert not kept.deleted

        diff = store.apply(db, second, prune=True, actor="t", source="t")
        assert [spec.name for spec in diff.created] == [f"m{i:05d}" for i in range(1_700, 1_750)]
        assert [update.after.name for update in diff.updated] == ["m00777"]
        assert [(c.path, c.after) for c in diff.updated[0].changes] == [("project", "edited")]
        assert [spec.name for spec in diff.deleted] == dropped
        assert diff.unchanged == [f"m{i:05d}" for i in range(100, 1_650) if i != 777], (
            "unchanged, in name order"
        )
        assert not diff.kept
        assert not store.apply(db, second, prune=True, actor="t", source="t").changed
        assert (
            sorted(spec.name for spec in store.load(db)[1])
            == [spec.name for spec in second]
            == sorted(spec.name for spec in second)
        )
    finally:
        db.dispose()


def peak_above(action: Any) -> tuple[Any, int, int]:
    """``action()``, the memory it left allocated and its peak above that (tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        result = action()
        retained, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, retained - before, peak - retained


COUNT = 3_000


def test_parsing_holds_no_tree_of_the_whole_file() -> None:
    """The specs are what a parse keeps; on the way it needs about the file's size again
    (libyaml's copy of the text), not a tree of every entry (nine times the specs' size,
    before: every node stayed in the constructor's cache)."""
    text = yaml.safe_dump({"mappings": generated(COUNT)})
    specs, retained, peak = peak_above(lambda: parse_document(text))
    assert len(specs) == COUNT
    assert peak < 2 * len(text), (peak / COUNT, len(text) / COUNT, retained / COUNT)


def test_re_applying_an_unchanged_file_holds_no_copy_of_the_table(database: Database) -> None:
    """What an unchanged re-apply allocates is the names it compared (a few hundred bytes a
    mapping), not every stored row with its options (about 1.5 KB a mapping, before)."""
    specs = parse_document(yaml.safe_dump({"mappings": generated(COUNT)}))
    store.apply(database, specs, actor="t", source="t")
    diff, _, peak = peak_above(lambda: store.apply(database, specs, actor="t", source="t"))
    assert len(diff.unchanged) == COUNT
    assert peak < 600 * COUNT, peak / COUNT


def test_a_first_apply_builds_its_rows_one_batch_at_a_time(database: Database) -> None:
    """Created rows and history documents are built per 500-row statement (about 430 bytes a
    mapping at the peak), not all at once (about 1.6 KB a mapping, before)."""
    specs = parse_document(yaml.safe_dump({"mappings": generated(COUNT)}))
    diff, _, peak = peak_above(lambda: store.apply(database, specs, actor="t", source="t"))
    assert len(diff.created) == COUNT
    assert peak < 800 * COUNT, peak / COUNT
