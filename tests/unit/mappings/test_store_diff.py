"""Re-applying unchanged mappings costs a comparison of the stored columns: no stored row is
turned back into a spec (which re-validates it), so a 100,000-mapping file that did not change
is a diff, not a rebuild."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

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
    # The listing spelled out (explicit default tokens) is no change either, without a rebuild.
    spelled = [spec.with_default_token(False) for spec in specs]
    assert store.apply(database, spelled, actor="t", source="t").unchanged == [
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
    # An explicit broker token over an unset one is a change when the default is zuplo.
    broker = [spec.with_token("broker") if spec.name == "a-aws" else spec for spec in edited]
    assert [u.after.name for u in store.apply(database, broker, actor="t", source="t").updated] == [
        "a-aws"
    ]
