"""``STS_MAPPINGS_FILE``: the stored mappings kept equal to one file (reference section 13).

The server process of ``sts serve`` (:mod:`sts.workers`) holds one :class:`MappingsFile`: it
applies the file before the workers start, then a daemon thread looks at it every
:data:`CHECK_INTERVAL_SECONDS`. What it applies is exactly ``sts mappings apply --prune FILE``
(actor ``file:<path>``), in one transaction under the mapping revision lock, so replicas sharing
the database converge: the first to see a change writes it, the others find nothing to change.
The workers' mapping index follows the revision as it follows any apply (:mod:`sts.mappings.live`).

A change is noticed by the file's ``stat`` (device, inode, size, modification and change times,
symbolic links followed), so a Kubernetes ConfigMap update, which swaps a directory link rather
than writing the file, is one too; the content's digest then decides whether there is anything
to do. A file with mistakes changes nothing: each mistake is logged once at ERROR (one line
each, as ``apply`` prints them) and the last good mappings keep serving. A database that does
not answer is retried at the next look, with one warning per outage.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import stat
import threading
from dataclasses import dataclass

from sts.db import Database, describe_failure
from sts.mappings import store
from sts.mappings.document import (
    MAX_DOCUMENT_BYTES,
    MappingFileError,
    mistakes,
    parse_document,
)
from sts.mappings.spec import MappingSpec

log = logging.getLogger("sts.mappings.file")

#: How often the file is looked at: a change is applied well within the 10 s the reference
#: promises, and a look costs one ``stat`` when nothing changed.
CHECK_INTERVAL_SECONDS = 2.0
#: The longest actor the history keeps (``mapping_changes.actor``).
_MAX_ACTOR = 255


@dataclass(frozen=True)
class Outcome:
    """What one look at the file did: ``applied`` (with the changes), ``unchanged`` (the same
    content as last time), ``refused`` (mistakes or an unreadable file), ``failed`` (the
    database did not answer; tried again at the next look)."""

    state: str
    created: int = 0
    updated: int = 0
    deleted: int = 0
    revision: int = 0


def check_readable(path: str) -> str | None:
    """Why ``path`` cannot serve as ``STS_MAPPINGS_FILE`` (not there, not a regular file, not
    readable), or None. ``sts serve`` refuses to start on it (exit 2)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or type(exc).__name__}"
    try:
        if not _is_regular(os.fstat(fd).st_mode):
            return f"{path} is not a regular file"
    finally:
        os.close(fd)
    return None


def _is_regular(mode: int) -> bool:
    return stat.S_ISREG(mode)


class MappingsFile:
    """Keeps the stored mappings equal to the file at ``path`` (module docstring)."""

    def __init__(
        self, path: str, database: Database, interval: float = CHECK_INTERVAL_SECONDS
    ) -> None:
        self.path = os.path.abspath(path)
        self._database = database
        self._interval = interval
        self.actor = f"file:{self.path}"[:_MAX_ACTOR]
        host = socket.gethostname()
        self.source = f"serve:{host}" if host and host.isprintable() else "serve"
        # The stat of the file as last read, and the digest of the content last dealt with
        # (applied, or refused for its mistakes): what makes a look cheap and a mistake logged
        # once.
        self._seen: tuple[int, ...] | None = None
        self._done: bytes | None = None
        self._unreadable: str | None = None
        self._database_failing = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> Outcome:
        """Look at the file once; apply it if its content changed since the last look."""
        try:
            seen = self._stat()
        except OSError as exc:
            return self._refuse_unreadable(exc)
        if seen == self._seen:
            return Outcome("unchanged")
        try:
            raw = self._read()
        except OSError as exc:
            return self._refuse_unreadable(exc)
        self._unreadable = None
        digest = hashlib.sha256(raw).digest()
        if digest == self._done:
            self._seen = seen
            return Outcome("unchanged")
        specs = self._parse(raw)
        if specs is None:
            self._seen, self._done = seen, digest
            return Outcome("refused")
        try:
            diff = store.apply(
                self._database, specs, prune=True, actor=self.actor, source=self.source
            )
        except Exception as exc:
            if not self._database_failing:
                log.warning(
                    "mappings file not applied: the database failed: %s (tried again in %g s)",
                    describe_failure(exc),
                    self._interval,
                )
            self._database_failing = True
            return Outcome("failed")
        self._database_failing = False
        self._seen, self._done = seen, digest
        outcome = Outcome(
            "applied",
            created=len(diff.created),
            updated=len(diff.updated),
            deleted=len(diff.deleted),
            revision=diff.revision,
        )
        log.info(
            "mappings file applied",
            extra={
                "file": self.path,
                # (LogRecord has a "created" of its own.)
                "added": outcome.created,
                "changed": outcome.updated,
                "removed": outcome.deleted,
                "unchanged": len(diff.unchanged),
                "revision": diff.revision,
            },
        )
        return outcome

    def _stat(self) -> tuple[int, ...]:
        found = os.stat(self.path)
        return (
            found.st_dev,
            found.st_ino,
            found.st_size,
            found.st_mtime_ns,
            found.st_ctime_ns,
        )

    def _read(self) -> bytes:
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            if not _is_regular(os.fstat(handle.fileno()).st_mode):
                raise IsADirectoryError(0, "not a regular file")
            return handle.read(MAX_DOCUMENT_BYTES + 1)

    def _parse(self, raw: bytes) -> list[MappingSpec] | None:
        """The file's mappings, or None after logging every mistake (once) at ERROR."""
        errors: list[str]
        if len(raw) > MAX_DOCUMENT_BYTES:
            errors = [f"{self.path}: larger than 64 MiB"]
        else:
            try:
                return parse_document(raw.decode("utf-8-sig"), self.path)
            except UnicodeDecodeError:
                errors = [f"{self.path}: not UTF-8 text"]
            except MappingFileError as exc:
                errors = mistakes(exc, self.path)
        for error in errors:
            log.error("mappings file refused: %s", error)
        log.warning(
            "mappings file refused: %d mistake(s); the mappings stored before keep serving",
            len(errors),
        )
        return None

    def _refuse_unreadable(self, exc: OSError) -> Outcome:
        why = f"cannot read {self.path}: {exc.strerror or type(exc).__name__}"
        if why != self._unreadable:
            log.error("mappings file refused: %s; the mappings stored before keep serving", why)
        self._unreadable = why
        # Read again once it is back, whatever its stat then.
        self._seen = None
        return Outcome("refused")

    # -- the thread -----------------------------------------------------------------------

    def start(self) -> None:
        """Look every ``interval`` seconds on a daemon thread (call after the first check)."""
        self._thread = threading.Thread(target=self._run, name="sts-mappings-file", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.check()
            except Exception as exc:  # never let the thread die: the next look tries again
                log.warning("mappings file check failed: %s", type(exc).__name__)
