"""The SQLite outbox's payloads as files of their own (D5, D10).

A part's encrypted payload (megabytes: a tenant's share of a batch) is one
file in a directory beside the outbox file, written once: created, written
and ``fdatasync``-ed, the directory synced, before the transaction that
names it in the ``payloads`` table commits. Inside SQLite the same bytes
were written twice, into the WAL and again by the checkpoint, and read back
in between (bench/README, "The outbox's payloads in files of their own").

A payload that goes (delivered, or a dead letter's erased) is *shredded*:
overwritten with zeros, synced, then unlinked, as ``secure_delete`` zeroed
its pages in the database file. Unlinking alone would leave the ciphertext
in the freed blocks (the kernel drops an unlinked file's unwritten pages).
A file no row names (the process stopped between writing it and the
commit, or between the commit that dropped it and its shredding) is an
orphan: :meth:`PayloadFiles.sweep` shreds it when the outbox is opened.

Only the SQLite backend uses this: PostgreSQL keeps a large value out of
line by itself, and a fleet's replicas share no directory.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Callable, Collection
from pathlib import Path

SUFFIX = ".part"
_NAME = re.compile(r"[0-9a-f]{32}\.part\Z")  # what write() names; sweep() touches no other file
ZEROS = bytes(1 << 20)  # shred() writes this many zeros at a time
ORPHAN_AGE_S = 60.0  # sweep() leaves a younger file alone: it may be a write not committed yet


class PayloadFiles:
    """The directory of payload files (0700; each file 0600)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        # SECURITY: ciphertext of meter data: owner-only, like the outbox file.
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)

    def write(self, data: bytes) -> str:
        """A new file holding ``data``, on disk when this returns (not yet its
        name: :meth:`sync` makes the directory's new names durable)."""
        name = secrets.token_hex(16) + SUFFIX
        path = self.dir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fdatasync(fd)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)
        return name

    def sync(self) -> None:
        """Make the names written so far durable (fsync the directory)."""
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self, name: str) -> bytes | None:
        """The file's bytes; None when it is not there (shredded meanwhile)."""
        try:
            with open(self.dir / _checked(name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def shred(self, name: str) -> None:
        """Overwrite the file with zeros, sync, unlink (nothing if it is gone)."""
        path = self.dir / _checked(name)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            left = os.fstat(fd).st_size
            while left > 0:
                left -= os.write(fd, memoryview(ZEROS)[:min(left, len(ZEROS))])
            os.fdatasync(fd)
        finally:
            os.close(fd)
        path.unlink(missing_ok=True)

    def sweep(self, named: Callable[[], Collection[str]], *,
              min_age_s: float = ORPHAN_AGE_S) -> int:
        """Shred every payload file older than ``min_age_s`` that ``named()``
        (the names the outbox's rows hold) does not list; how many."""
        cutoff = time.time() - min_age_s
        old = []
        for entry in os.scandir(self.dir):
            if _NAME.match(entry.name) and entry.stat(follow_symlinks=False).st_mtime <= cutoff:
                old.append(entry.name)
        if not old:
            return 0
        keep = named()
        orphans = [name for name in old if name not in keep]
        for name in orphans:
            self.shred(name)
        return len(orphans)


def _checked(name: str) -> str:
    """A name as write() makes them, never a path (a row's text is not trusted to be one)."""
    if not _NAME.match(name):
        raise ValueError(f"not a payload file name: {name!r}")
    return name


__all__ = ["ORPHAN_AGE_S", "PayloadFiles"]
