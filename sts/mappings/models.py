"""SQLAlchemy models of the mapping tables (README "Mappings").

``role_mappings`` holds the validated mappings; ``mapping_revision`` is a one-row counter bumped in
the same transaction as every mapping change, so a reader learns whether anything changed with one
cheap query; ``mapping_changes`` is the operator's history: what each apply/remove changed, by
whom, when, from where.

The models are declared in :mod:`sts.db.models` with every other table (so the declarative base
never imports its users: no import cycle) and re-exported here.
"""

from __future__ import annotations

from sts.db.models import Base, MappingChange, MappingRevision, RoleMapping, utcnow

__all__ = ["Base", "MappingChange", "MappingRevision", "RoleMapping", "utcnow"]
