"""The vault's verbs and their SQL, written once (``?`` placeholders) for
both backends: one SQLite file (:class:`~gateway.vault._sqlite.SqliteVault`,
one process) and PostgreSQL (:class:`~gateway.vault._postgres.PostgresVault`,
a fleet of replicas sharing the state database). A backend says how a
statement runs, how a write transaction holds off the others, whether the
tables exist, and what it can do to shred deleted rows (D7: secure vaults).

What the database holds per secret version: the id, the version, when it
was created, its kind and labels (plaintext, authenticated), the master-key
version, the wrapped data key and the sealed value. Per master-key version it
holds only a key check value. Never a master key, a data key in the clear or
a secret value: the server of a shared database sees ciphertext only.

Not detected: someone who can write the database may delete a secret's
newest versions or put back an old copy of it; noticing that needs state
kept outside.
"""

from __future__ import annotations

import builtins
import json
import logging
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, ClassVar

from gateway.clock import utc_now
from gateway.vault import _keys
from gateway.vault._errors import SecretNotFound, VaultError, VaultLocked
from gateway.vault._keys import Keyring, MasterKeys

log = logging.getLogger("gateway.vault")

SCHEMA_VERSION = 1
# Tables are prefixed so the vault can share a database with other stores
# (the state store's, on PostgreSQL).
TABLES = ("vault_meta", "vault_master_keys", "vault_secrets")
_SECRET_ID = re.compile(r"[a-z0-9][a-z0-9._/-]{0,127}")
# Two replicas putting the same secret at once: the primary key (secret_id,
# version) lets one insert win, the other takes the next number (never a
# repeated one). Bounded, so a broken database cannot spin us forever.
PUT_ATTEMPTS = 50


@dataclass
class RekeyProgress:
    """How far the rekey running now is (rows re-wrapped of the rows read),
    for ``GET /admin/vault/rekey`` and the CLI's progress bar."""

    running: bool = False
    done: int = 0
    total: int = 0

    def step(self, done: int, total: int) -> None:
        self.done, self.total = done, total

    def as_json(self) -> dict[str, Any]:
        return {"running": self.running, "done": self.done, "total": self.total}


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


def _meta(keyring: Keyring, row: _keys.Record) -> SecretMeta:
    keyring.unwrap(row)  # SECURITY: return only metadata that authenticates.
    return SecretMeta(row["secret_id"], row["version"], datetime.fromisoformat(row["created"]),
                      row["kind"], MappingProxyType(json.loads(row["labels"])))


class Vault(ABC):
    """Encrypted secrets, versioned; a few safe verbs over :mod:`gateway.vault._keys`.

    One connection per instance, used by one thread at a time (``_lock``);
    across processes the backend's transactions keep the answers right.
    """

    # The exception a backend raises when an insert hits the primary key.
    DUPLICATE: ClassVar[tuple[type[Exception], ...]]

    def __init__(self, master: MasterKeys, clock: Callable[[], datetime] | None) -> None:
        self._clock = clock or utc_now
        self._master = master
        self._keyring = Keyring(master)
        self._lock = threading.Lock()
        self._rekey_lock = threading.Lock()

    # -- the backend's hooks (called with ``_lock`` held) -----------------------
    @abstractmethod
    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        """Run one statement (``?`` placeholders); a cursor with rowcount and
        fetchone/fetchall of rows addressable by column name."""

    @abstractmethod
    def _transaction(self, exclusive: bool) -> AbstractContextManager[None]:
        """A write transaction: committed on success, rolled back on error.
        Shared ones (put, shred) may run side by side in other processes;
        an exclusive one (open, rekey) runs alone and sees every commit of
        those before it."""

    @abstractmethod
    def _has_tables(self) -> bool:
        """Whether the vault's tables exist (a new vault has nothing to check)."""

    @abstractmethod
    def _purge(self) -> None:
        """After a shred or a rekey, outside a transaction: rid the storage
        of the rows just deleted or rewritten, as far as the backend can."""

    @abstractmethod
    def _is_open(self) -> bool: ...

    @abstractmethod
    def _close(self) -> None: ...

    # -- shared ---------------------------------------------------------------------
    def __enter__(self) -> Vault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unlock_check(self, keyring: Keyring) -> None:
        """Raise :class:`VaultLocked` unless ``keyring`` fits the database. Reads only."""
        if not self._has_tables():
            return  # a new vault: nothing to check against
        stored = {r["version"]: bytes(r["check_value"]) for r in self._exec(
            "SELECT version, check_value FROM vault_master_keys").fetchall()}
        for version in sorted(keyring.versions & stored.keys()):
            if not keyring.matches(version, stored[version]):
                raise VaultLocked(f"master key v{version} is wrong: it does not match the key "
                                  "check value stored in the vault")
        needed = {r["master_version"] for r in self._exec(
            "SELECT DISTINCT master_version FROM vault_secrets").fetchall()}
        if missing := sorted(needed - keyring.versions):
            raise VaultLocked("master key version(s) " + ", ".join(f"v{v}" for v in missing)
                              + " needed to read stored secrets are not loaded")
        if unverified := sorted(needed - stored.keys()):
            raise VaultLocked("no key check value stored for master key version(s) "
                              + ", ".join(f"v{v}" for v in unverified))

    def _register(self, keyring: Keyring) -> None:
        """Store the check value of the current master version if it is new.
        Writes nothing when it is there: a data-plane replica, whose database
        role may only read the vault, opens it too."""
        if self._exec("SELECT 1 FROM vault_master_keys WHERE version = ?",
                      (keyring.current_version,)).fetchone() is not None:
            return
        self._exec("INSERT INTO vault_master_keys VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                   (keyring.current_version, keyring.check_value(keyring.current_version),
                    self._now()))

    def _start(self) -> None:
        """What opening does inside the backend's first exclusive transaction,
        after the tables exist: check the key, register it, mark the schema."""
        self._unlock_check(self._keyring)
        self._register(self._keyring)
        if self._exec("SELECT 1 FROM vault_meta WHERE key = 'schema_version'"
                      ).fetchone() is None:
            self._exec("INSERT INTO vault_meta VALUES ('schema_version', ?) "
                       "ON CONFLICT DO NOTHING", (str(SCHEMA_VERSION),))

    def _newest_is_loaded(self, keyring: Keyring) -> None:
        """Refuse to wrap under an older master version than stored secrets
        already use (another replica rekeyed, or runs a newer key file): the
        old version is about to leave the key file, and what it wraps would
        become unreadable."""
        newest = self._exec("SELECT MAX(master_version) AS newest FROM vault_secrets"
                            ).fetchone()["newest"]
        if newest is not None and newest > keyring.current_version:
            raise VaultLocked(f"stored secrets use master key v{newest}, newer than the v"
                              f"{keyring.current_version} loaded here: load the new key file")

    def _now(self) -> str:
        return self._clock().astimezone(UTC).isoformat(timespec="microseconds")

    def _use(self, master: MasterKeys, keyring: Keyring) -> None:
        self._master, self._keyring = master, keyring

    @contextmanager
    def _connection(self, *, write: bool = False, exclusive: bool = False,
                    on_commit: Callable[[], None] | None = None) -> Iterator[Keyring]:
        """The keyring that fits the connection, under the lock; with
        ``write``, inside a transaction. ``on_commit`` runs after a successful
        commit, still under the lock."""
        with self._lock:
            if not self._is_open():
                raise VaultError("the vault is closed")
            if not write:
                yield self._keyring
                return
            with self._transaction(exclusive):
                yield self._keyring
            if on_commit is not None:
                on_commit()  # rekey: no put can slip in under the old master version

    def _rows(self, sql: str, args: tuple[Any, ...]) -> tuple[builtins.list[Any], Keyring]:
        with self._connection() as keyring:
            return self._exec(sql, args).fetchall(), keyring

    def _shred(self) -> None:
        with self._connection():
            self._purge()

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
        for _ in range(PUT_ATTEMPTS):
            try:
                with self._connection(write=True) as keyring:
                    self._newest_is_loaded(keyring)
                    latest = self._exec("SELECT MAX(version) AS latest FROM vault_secrets "
                                        "WHERE secret_id = ?", (secret_id,)).fetchone()["latest"]
                    version = (latest or 0) + 1
                    created = self._now()
                    row = {"secret_id": secret_id, "version": version, "created": created,
                           "kind": kind, "labels": labels_text}
                    # Bound to the version: a retry wraps and seals again.
                    wrapped = keyring.wrap(data_key, row)
                    sealed = _keys.seal_value(data_key, row, value)
                    self._exec("INSERT INTO vault_secrets VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                               (secret_id, version, created, kind, labels_text,
                                keyring.current_version, wrapped, sealed))
                break
            except self.DUPLICATE:
                # Another replica stored this version number first; take the next.
                log.debug("vault: version %d of %s taken meanwhile; retrying", version,
                          secret_id)
        else:
            raise VaultError(f"could not store secret {secret_id!r}: every version number "
                             f"tried was taken ({PUT_ATTEMPTS} attempts)")
        log.debug("vault: stored secret %s version %d", secret_id, version)
        return SecretMeta(secret_id, version, datetime.fromisoformat(created), kind,
                          MappingProxyType(labels))

    def _row(self, secret_id: str, version: int | None) -> tuple[Any, Keyring]:
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
        What is left of the deleted rows afterwards depends on the backend
        (``_purge``: nothing on SQLite; see PostgresVault for PostgreSQL).
        """
        _check_id(secret_id)
        _check_version(version)
        with self._connection(write=True):
            latest = self._exec("SELECT MAX(version) AS latest FROM vault_secrets "
                                "WHERE secret_id = ?", (secret_id,)).fetchone()["latest"]
            if latest is None:
                raise SecretNotFound(f"no secret {secret_id!r}")
            if version > latest:
                raise ValueError(f"secret {secret_id!r} has no version {version}; "
                                 "the latest version cannot be deleted")
            count = self._exec("DELETE FROM vault_secrets WHERE secret_id = ? AND version < ?",
                               (secret_id, version)).rowcount
        self._shred()
        log.info("vault: destroyed %d old version(s) of secret %s", count, secret_id)
        return int(count)

    def rekey(self, new_master: MasterKeys,
              progress: Callable[[int, int], None] | None = None) -> int:
        """Re-wrap every data key under ``new_master.current_version``; returns how many.

        ``new_master`` must hold a newer version than the current one and every
        version stored secrets use now (else :class:`VaultLocked`), and must
        not change the key of a version (``ValueError``). Online: the slow part
        (unwrap and wrap) runs outside the lock, and the rows are switched in
        one exclusive transaction; until then the old versions keep working.
        Afterwards the vault uses ``new_master``, and older versions can leave
        the key file. Other replicas read the re-wrapped rows once they hold
        the new version too; until then they refuse (``VaultLocked``) rather
        than write under the old one.
        """
        with self._rekey_lock:
            old = self._master
            if not _keys.agree(new_master, old):
                raise ValueError("new master keys must not change the key of a version")
            if new_master.current_version <= old.current_version:
                raise ValueError("new master keys need a version newer than "
                                 f"v{old.current_version}")
            new = Keyring(new_master)
            with self._connection():
                self._unlock_check(new)  # a wrong new key fails here, before any change
            rows, keyring = self._rows("SELECT * FROM vault_secrets", ())
            done: dict[tuple[Any, Any, bytes], bytes] = {}
            for n, r in enumerate(rows, 1):
                done[(r["secret_id"], r["version"], bytes(r["wrapped_key"]))] = \
                    self._rewrap(keyring, new, r)
                if progress is not None:
                    progress(n, len(rows))  # the slow part: one unwrap and wrap per row
            with self._connection(write=True, exclusive=True,
                                  on_commit=lambda: self._use(new_master, new)) as keyring:
                # Exclusive: puts of other replicas wait, so none lands under
                # the old version after the rows below were read; another
                # replica's rekey to a different key for the same version
                # waits, then fails this check.
                self._unlock_check(new)
                self._register(new)
                current = self._exec("SELECT * FROM vault_secrets").fetchall()
                for row in current:  # rows put or changed meanwhile are re-wrapped here
                    key = (row["secret_id"], row["version"], bytes(row["wrapped_key"]))
                    wrapped = done.get(key) or self._rewrap(keyring, new, row)
                    self._exec("UPDATE vault_secrets SET master_version = ?, wrapped_key = ? "
                               "WHERE secret_id = ? AND version = ?",
                               (new.current_version, wrapped, row["secret_id"], row["version"]))
            self._shred()
        log.info("vault: re-wrapped %d data key(s) under master key v%d",
                 len(current), new.current_version)
        return len(current)

    @staticmethod
    def _rewrap(old: Keyring, new: Keyring, row: _keys.Record) -> bytes:
        return new.wrap(old.unwrap(row), row)

    def close(self) -> None:
        with self._lock:
            if self._is_open():
                self._close()
