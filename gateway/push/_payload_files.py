"""The SQLite outbox's payloads as files of their own (D5, D10).

A part's encrypted payload (megabytes: a tenant's share of a batch) is one
file in a directory beside the outbox file, written once: created, written
and ``fdatasync``-ed, the directory synced, before the transaction that
names it in the ``payloads`` table commits. Inside SQLite the same bytes
were written twice, into the WAL and again by the checkpoint, and read back
in between (bench/README, "The outbox's payloads in files of their own").

Such a payload is encrypted under a key of its own, which only its row
holds (wrapped under the outbox data key; gateway.push._outbox_backends):
when the payload goes (delivered, or a dead letter's erased), the row goes
(``secure_delete`` zeroes it in the database file) and the file is
unlinked. What the file's blocks still hold is ciphertext whose key no
longer exists anywhere (crypto-erasure): unlike overwriting the file with
zeros, this holds on a copy-on-write filesystem or an SSD too, and costs no
second write of the payload. A file no row names (the process stopped
between writing it and the commit, or between the commit that dropped the
row and the unlink) is an orphan whose key was never stored or is gone:
:meth:`PayloadFiles.sweep` removes it when the outbox is opened.

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
        """The file's bytes; None when it is not there (removed meanwhile)."""
        try:
            with open(self.dir / _checked(name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def remove(self, name: str) -> None:
        """Unlink the file (nothing if it is gone already)."""
        (self.dir / _checked(name)).unlink(missing_ok=True)

    def sweep(self, named: Callable[[], Collection[str]], *,
              min_age_s: float = ORPHAN_AGE_S) -> int:
        """Remove every payload file older than ``min_age_s`` that ``named()``
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
            self.remove(name)
        return len(orphans)


def _checked(name: str) -> str:
    """A name as write() makes them, never a path (a row's text is not trusted to be one)."""
    if not _NAME.match(name):
        raise ValueError(f"not a payload file name: {name!r}")
    return name


__all__ = ["ORPHAN_AGE_S", "PayloadFiles"]
