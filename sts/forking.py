"""What a forked process must not share with its parent.

A pre-forking server's worker inherits its parent's memory: locks that a parent thread held at
the instant of the fork (held for ever in the child) and pooled connections whose sockets the
parent still uses. An object holding either registers itself here, and its ``_after_fork``
runs first thing in every forked child (``os.register_at_fork``).
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol


class RenewedAfterFork(Protocol):
    def _after_fork(self) -> None:
        """Make the locks and connections anew; called in the child, before anything else."""


_RENEWED: weakref.WeakSet[RenewedAfterFork] = weakref.WeakSet()


def renew_after_fork(instance: RenewedAfterFork) -> None:
    """Call ``instance._after_fork()`` in every process forked from here on (held weakly)."""
    _RENEWED.add(instance)


def _renew_all() -> None:
    for instance in list(_RENEWED):
        instance._after_fork()


os.register_at_fork(after_in_child=_renew_all)
