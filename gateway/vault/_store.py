"""The vault: secrets encrypted at rest in one SQLite file (WAL, mode 0600).

What the file holds per secret version: the id, the version, when it was
created, its kind and labels (plaintext, authenticated), the master-key
version, the wrapped data key and the sealed value. Per master-key version it
holds only a key check value. Never a master key, a data key in the clear or
a secret value. ``PRAGMA secure_delete`` zeroes freed space, and the WAL is
checkpointed and truncated after a shred or a rekey, so destroyed wrapped keys
do not linger in free pages or in the ``-wal`` file.

Not detected: someone who can write the file may delete a secret's newest
versions or put back an old copy of the whole file; noticing that needs state
kept outside the file.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from gateway.vault import _keys
from gateway.vault._errors import SecretNotFound, VaultError, VaultLocked
from gateway.vault._keys import Keyring, MasterKeys

log = logging.getLogger("gateway.vault")

SCHEMA_VERSION = 1
# Tables are prefixed so the vault could share a file with other stores.
_TABLES = ("vault_meta", "vault_master_keys", "vault_secrets")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS vault_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vault_master_keys (
    version INTEGER PRIMARY KEY, check_value BLOB NOT NULL, registered TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vault_secrets (
    secret_id TEXT NOT NULL, version INTEGER NOT NULL, created TEXT NOT NULL,
    kind TEXT NOT NULL, labels TEXT NOT NULL, master_version INTEGER NOT NULL,
    wrapped_key BLOB NOT NULL, ciphertext BLOB NOT NULL, PRIMARY KEY (secret_id, version));
"""
_SECRET_ID = re.compile(r"[a-z0-9][a-z0-9._/-]{0,127}")


@dataclass(frozen=True)
class SecretMeta:
    id: str
    version: int
    created: datetime
    kind: str
    labels: Mapping[str, str]


def _check_id(secret_id: str) -> None:
    if not isinstance(secret_id, str) or not _SECRET_ID.fullmatch(secret_id):
        raise ValueError(f"invalid secret id {secret_id!r}: expected {_SECRET_ID.pattern}")


def _check_version(version: int) -> None:
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"invalid secret version {version!r}: expected an integer >= 1")


def _meta(keyring: Keyring, row: sqlite3.Row) -> SecretMeta:
    keyring.unwrap(row)  # SECURITY: return only metadata that authenticates.
    return SecretMeta(row["secret_id"], row["version"], datetime.fromisoformat(row["created"]),
                      row["kind"], MappingProxyType(json.loads(row["labels"])))


def _unlock_check(db: sqlite3.Connection, keyring: Keyring) -> None:
    """Raise :class:`VaultLocked` unless ``keyring`` fits the database. Reads only."""
    names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not names.issuperset(_TABLES):
        return  # a new vault: nothing to check against
    stored = dict(db.execute("SELECT version, check_value FROM vault_master_keys").fetchall())
    for version in sorted(keyring.versions & stored.keys()):
        if not keyring.matches(version, stored[version]):
            raise VaultLocked(f"master key v{version} is wrong: it does not match the key "
                              "check value stored in the vault")
    needed = {r[0] for r in db.execute("SELECT DISTINCT master_version FROM vault_secrets")}
    if missing := sorted(needed - keyring.versions):
        raise VaultLocked("master key version(s) " + ", ".join(f"v{v}" for v in missing)
                          + " needed to read stored secrets are not loaded")
    if unverified := sorted(needed - stored.keys()):
        raise VaultLocked("no key check value stored for master key version(s) "
                          + ", ".join(f"v{v}" for v in unverified))


class Vault:
    """Encrypted secrets, versioned; a few safe verbs over :mod:`gateway.vault._keys`."""

    def __init__(self, path: Path, master: MasterKeys, *,
                 clock: Callable[[], datetime] | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            # SECURITY: owner-only from birth; SQLite gives -wal and -shm the same mode.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        self.path = path
        self._clock = clock or (lambda: datetime.now(UTC))
        self._master = master
        self._keyring = Keyring(master)
        self._lock = threading.Lock()
        self._rekey_lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA busy_timeout = 5000")
            # Verify before writing anything: a wrong key must leave the file as it was.
            _unlock_check(db, self._keyring)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA secure_delete=ON")  # SECURITY: shredded keys leave no trace
            db.executescript(_SCHEMA)
            db.execute("BEGIN IMMEDIATE")
            _unlock_check(db, self._keyring)  # again, under the write lock (other processes)
            self._register(db, self._keyring)
            db.execute("INSERT OR IGNORE INTO vault_meta VALUES ('schema_version', ?)",
                       (str(SCHEMA_VERSION),))
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            db.close()
            if isinstance(exc, sqlite3.DatabaseError):
                raise VaultError(f"{path} is not a usable vault database: {exc}") from exc
            raise
        self._db = db
        log.info("vault %s opened with master key versions %s", path, sorted(master.keys))

    def __repr__(self) -> str:
        return f"Vault({str(self.path)!r}, master={self._master!r})"

    def __enter__(self) -> Vault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _register(self, db: sqlite3.Connection, keyring: Keyring) -> None:
        """Store the check value of the current master version if it is new."""
        db.execute("INSERT OR IGNORE INTO vault_master_keys VALUES (?, ?, ?)",
                   (keyring.current_version, keyring.check_value(keyring.current_version),
                    self._now()))

    def _now(self) -> str:
        return self._clock().astimezone(UTC).isoformat(timespec="microseconds")

    def _use(self, master: MasterKeys, keyring: Keyring) -> None:
        self._master, self._keyring = master, keyring

    @contextmanager
    def _connection(self, *, write: bool = False, on_commit: Callable[[], None] | None = None
                    ) -> Iterator[tuple[sqlite3.Connection, Keyring]]:
        """The connection and the keyring that fits it, under the lock.

        ``on_commit`` runs after a successful commit, still under the lock.
        """
        with self._lock:
            if self._db is None:
                raise VaultError("the vault is closed")
            if not write:
                yield self._db, self._keyring
                return
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db, self._keyring
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            if on_commit is not None:
                on_commit()  # rekey: no put can slip in under the old master version

    def _rows(self, sql: str, args: tuple[Any, ...]) -> tuple[builtins.list[sqlite3.Row], Keyring]:
        with self._connection() as (db, keyring):
            return db.execute(sql, args).fetchall(), keyring

    def _purge(self) -> None:
        """Push the WAL into the file (zeroed by secure_delete) and truncate it."""
        with self._connection() as (db, _):
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- the verbs -------------------------------------------------------------
    def put(self, secret_id: str, value: bytes, *, kind: str = "generic",
            labels: Mapping[str, str] | None = None) -> SecretMeta:
        """Store ``value`` as the next version of ``secret_id``."""
        _check_id(secret_id)
        if not isinstance(value, bytes):
            raise TypeError("secret values are bytes")
        if not isinstance(kind, str) or not kind:
            raise ValueError("kind must be a non-empty string")
        labels = dict(labels or {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise ValueError("labels map strings to strings")
        labels_text = json.dumps(labels, sort_keys=True, separators=(",", ":"))
        data_key = _keys.new_data_key()  # SECURITY: one fresh data key per version
        with self._connection(write=True) as (db, keyring):
            latest = db.execute("SELECT MAX(version) FROM vault_secrets WHERE secret_id = ?",
                                (secret_id,)).fetchone()[0]
            version = (latest or 0) + 1
            created = self._now()
            row = {"secret_id": secret_id, "version": version, "created": created,
                   "kind": kind, "labels": labels_text}
            wrapped = keyring.wrap(data_key, row)
            sealed = _keys.seal_value(data_key, row, value)
            db.execute("INSERT INTO vault_secrets VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (secret_id, version, created, kind, labels_text,
                        keyring.current_version, wrapped, sealed))
        log.debug("vault: stored secret %s version %d", secret_id, version)
        return SecretMeta(secret_id, version, datetime.fromisoformat(created), kind,
                          MappingProxyType(labels))

    def _row(self, secret_id: str, version: int | None) -> tuple[sqlite3.Row, Keyring]:
        _check_id(secret_id)
        if version is None:
            rows, keyring = self._rows("SELECT * FROM vault_secrets WHERE secret_id = ? "
                                       "ORDER BY version DESC LIMIT 1", (secret_id,))
        else:
            _check_version(version)
            rows, keyring = self._rows("SELECT * FROM vault_secrets WHERE secret_id = ? "
                                       "AND version = ?", (secret_id, version))
        if not rows:
            which = "" if version is None else f" version {version}"
            raise SecretNotFound(f"no secret {secret_id!r}{which}")
        return rows[0], keyring

    def get(self, secret_id: str, version: int | None = None) -> bytes:
        """The value of ``secret_id`` (latest version by default)."""
        row, keyring = self._row(secret_id, version)
        return _keys.open_value(keyring.unwrap(row), row)

    def meta(self, secret_id: str) -> SecretMeta:
        """Metadata of the latest version."""
        row, keyring = self._row(secret_id, None)
        return _meta(keyring, row)

    def versions(self, secret_id: str) -> builtins.list[SecretMeta]:
        """Metadata of every stored version, oldest first."""
        _check_id(secret_id)
        rows, keyring = self._rows("SELECT * FROM vault_secrets WHERE secret_id = ? "
                                   "ORDER BY version", (secret_id,))
        if not rows:
            raise SecretNotFound(f"no secret {secret_id!r}")
        return [_meta(keyring, r) for r in rows]

    def list(self) -> builtins.list[SecretMeta]:
        """Metadata of the latest version of each secret, by id."""
        rows, keyring = self._rows(
            "SELECT s.* FROM vault_secrets s JOIN (SELECT secret_id, MAX(version) AS latest "
            "FROM vault_secrets GROUP BY secret_id) m ON s.secret_id = m.secret_id "
            "AND s.version = m.latest ORDER BY s.secret_id", ())
        return [_meta(keyring, r) for r in rows]

    def delete_versions_before(self, secret_id: str, version: int) -> int:
        """Crypto-shred every version older than ``version``; returns how many.

        The latest version is never destroyed, so version numbers are never
        reused (a reused number would let an old record pass for a new one).
        """
        _check_id(secret_id)
        _check_version(version)
        with self._connection(write=True) as (db, _):
            latest = db.execute("SELECT MAX(version) FROM vault_secrets WHERE secret_id = ?",
                                (secret_id,)).fetchone()[0]
            if latest is None:
                raise SecretNotFound(f"no secret {secret_id!r}")
            if version > latest:
                raise ValueError(f"secret {secret_id!r} has no version {version}; "
                                 "the latest version cannot be deleted")
            count = db.execute("DELETE FROM vault_secrets WHERE secret_id = ? AND version < ?",
                               (secret_id, version)).rowcount
        self._purge()
        log.info("vault: destroyed %d old version(s) of secret %s", count, secret_id)
        return int(count)

    def rekey(self, new_master: MasterKeys) -> int:
        """Re-wrap every data key under ``new_master.current_version``; returns how many.

        ``new_master`` must hold a newer version than the current one and every
        version stored secrets use now (else :class:`VaultLocked`), and must
        not change the key of a version (``ValueError``). Online: the slow part
        (unwrap and wrap) runs outside the lock, and the rows are switched in
        one transaction; until then the old versions keep working. Afterwards
        the vault uses ``new_master``, and older versions can leave the key file.
        """
        with self._rekey_lock:
            old = self._master
            if not _keys.agree(new_master, old):
                raise ValueError("new master keys must not change the key of a version")
            if new_master.current_version <= old.current_version:
                raise ValueError("new master keys need a version newer than "
                                 f"v{old.current_version}")
            new = Keyring(new_master)
            with self._connection() as (db, _):
                _unlock_check(db, new)  # a wrong new key fails here, before any change
            rows, keyring = self._rows("SELECT * FROM vault_secrets", ())
            done = {(r["secret_id"], r["version"], r["wrapped_key"]): self._rewrap(keyring, new, r)
                    for r in rows}
            with self._connection(write=True, on_commit=lambda: self._use(new_master, new)
                                  ) as (db, keyring):
                _unlock_check(db, new)
                self._register(db, new)
                current = db.execute("SELECT * FROM vault_secrets").fetchall()
                for row in current:  # rows put or changed meanwhile are re-wrapped here
                    key = (row["secret_id"], row["version"], row["wrapped_key"])
                    wrapped = done.get(key) or self._rewrap(keyring, new, row)
                    db.execute("UPDATE vault_secrets SET master_version = ?, wrapped_key = ? "
                               "WHERE secret_id = ? AND version = ?",
                               (new.current_version, wrapped, row["secret_id"], row["version"]))
            self._purge()
        log.info("vault: re-wrapped %d data key(s) under master key v%d",
                 len(current), new.current_version)
        return len(current)

    @staticmethod
    def _rewrap(old: Keyring, new: Keyring, row: sqlite3.Row) -> bytes:
        return new.wrap(old.unwrap(row), row)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
