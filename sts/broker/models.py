"""The ``signing_keys`` table: the broker's RSA keys when they live in the database.

The model is declared in :mod:`sts.db.models` with every other table (so the declarative base
never imports its users: no import cycle) and re-exported here for :mod:`sts.broker.keys`.
"""

from __future__ import annotations

from sts.db.models import Base, SigningKeyRow

__all__ = ["Base", "SigningKeyRow"]
