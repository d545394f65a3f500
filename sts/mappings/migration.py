"""Mappings kept in a team's own Alembic history.

Teams who review mapping changes as migrations write a revision whose ``down_revision`` is the
zuplo-sts head (or a later revision of theirs) and call these helpers::

    from sts.mappings.migration import apply_mappings, revert_mappings

    revision = "a1b2c3d4e5f6"
    down_revision = "4c5e7cca9f12"

    MAPPINGS = '''
    mappings:
      - name: orders-prod
        account: my-account
        project: my-project
        aws: {role_arn: "arn:aws:iam::123456789012:role/orders-api"}
    '''

    def upgrade() -> None:
        apply_mappings(MAPPINGS, revision=revision)

    def downgrade() -> None:
        revert_mappings(revision=revision)

and run them with their own ``alembic.ini`` (``version_locations`` listing both directories) or
``Database.upgrade(version_locations=[...])``. The document is parsed and validated exactly like
``sts mappings apply`` and written by the same code, inside the migration's transaction; history
rows carry the source ``alembic:<revision>``. Mappings not in the document are never deleted.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from sts.mappings.document import parse_document, spec_from_dict
from sts.mappings.models import MappingChange
from sts.mappings.spec import MappingSpec
from sts.mappings.store import Diff, apply_specs, bump_revision, lock_revision, set_mapping

ACTOR = "alembic"


def source_for(revision: str) -> str:
    return f"alembic:{revision}"


def revert_source_for(revision: str) -> str:
    return f"alembic:{revision}:revert"


def apply_mappings(document: str, *, revision: str) -> Diff:
    """Create or update the document's mappings from inside a migration's ``upgrade()``.

    Raises :class:`sts.mappings.document.MappingFileError` for an invalid document, which fails
    the migration before anything is written.
    """
    source = source_for(revision)
    specs = parse_document(document, source=source)
    return apply_specs(op.get_bind(), specs, prune=False, dry_run=False, actor=ACTOR, source=source)


def revert_mappings(*, revision: str) -> int:
    """Undo, newest first, what the last upgrade of ``revision`` changed; for ``downgrade()``.

    Each mapping returns to the state recorded before that upgrade touched it (even if someone
    edited it since). The undo is itself recorded, with the source ``alembic:<revision>:revert``,
    and bumps the revision once. Returns the number of changes made.

    Only changes newer than this revision's last recorded revert are undone, so an
    upgrade/downgrade/upgrade/downgrade cycle undoes each upgrade once.
    """
    conn = op.get_bind()
    source, revert_source = source_for(revision), revert_source_for(revision)
    last_revert = conn.execute(
        sa.select(sa.func.max(MappingChange.id)).where(MappingChange.source == revert_source)
    ).scalar_one_or_none()
    query = (
        sa.select(MappingChange.name, MappingChange.before)
        .where(MappingChange.source == source)
        .order_by(MappingChange.id.desc())
    )
    if last_revert is not None:
        query = query.where(MappingChange.id > last_revert)
    undo = conn.execute(query).all()
    if not undo:
        return 0

    new_revision = lock_revision(conn) + 1
    changed = 0
    for row in undo:
        before: MappingSpec | None = None
        if row.before is not None:
            before = spec_from_dict(row.before, f"mapping_changes[{row.name}].before")
        if set_mapping(
            conn, row.name, before, revision=new_revision, actor=ACTOR, source=revert_source
        ):
            changed += 1
    if changed:
        bump_revision(conn, new_revision)
    return changed
