"""The vault in one SQLite file (WAL, mode 0600): one process, embedded.

``PRAGMA secure_delete`` zeroes freed space, and the WAL is checkpointed and
truncated after a shred or a rekey, so destroyed wrapped keys do not linger
in free pages or in the ``-wal`` file (D7).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from gateway.vault._errors import VaultError
from gateway.vault._keys import MasterKeys
from gateway.vault._store import TABLES, Vault

log = logging.getLogger("gateway.vault")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vault_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vault_master_keys (
    version INTEGER PRIMARY KEY, check_value BLOB NOT NULL, registered TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vault_secrets (
    secret_id TEXT NOT NULL, version INTEGER NOT NULL, created TEXT NOT NULL,
    kind TEXT NOT NULL, labels TEXT NOT NULL, master_version INTEGER NOT NULL,
    wrapped_key BLOB NOT NULL, ciphertext BLOB NOT NULL, PRIMARY KEY (secret_id, version));
"""


class SqliteVault(Vault):
    DUPLICATE: ClassVar[tuple[type[Exception], ...]] = (sqlite3.IntegrityError,)

    def __init__(self, path: Path, master: MasterKeys, *,
                 clock: Callable[[], datetime] | None = None) -> None:
        super().__init__(master, clock)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            # SECURITY: owner-only from birth; SQLite gives -wal and -shm the same mode.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        self.path = path
        self._db: sqlite3.Connection | None = None
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        db.row_factory = sqlite3.Row
        self._db = db
        try:
            with self._lock:
                db.execute("PRAGMA busy_timeout = 5000")
                # Verify before writing anything: a wrong key must leave the file as it was.
                self._unlock_check(self._keyring)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.execute("PRAGMA secure_delete=ON")  # SECURITY: shredded keys leave no trace
                db.executescript(_SCHEMA)
                with self._transaction(exclusive=True):
                    self._start()  # checks again, under the write lock (other processes)
        except BaseException as exc:
            db.close()
            self._db = None
            if isinstance(exc, sqlite3.DatabaseError):
                raise VaultError(f"{path} is not a usable vault database: {exc}") from exc
            raise
        log.info("vault %s opened with master key versions %s", path, sorted(master.keys))

    def __repr__(self) -> str:
        return f"SqliteVault({str(self.path)!r}, master={self._master!r})"

    def _live(self) -> sqlite3.Connection:
        if self._db is None:
            raise VaultError("the vault is closed")
        return self._db

    # -- the hooks of Vault --------------------------------------------------------
    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        return self._live().execute(sql, args)

    @contextmanager
    def _transaction(self, exclusive: bool) -> Iterator[None]:
        # BEGIN IMMEDIATE takes the file's one write lock: every write runs alone.
        db = self._live()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _has_tables(self) -> bool:
        names = {r["name"] for r in self._exec(
            "SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()}
        return names.issuperset(TABLES)

    def _purge(self) -> None:
        """Push the WAL into the file (zeroed by secure_delete) and truncate it."""
        self._exec("PRAGMA wal_checkpoint(TRUNCATE)")

    def _is_open(self) -> bool:
        return self._db is not None

    def _close(self) -> None:
        self._live().close()
        self._db = None
