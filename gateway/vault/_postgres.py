"""The vault in PostgreSQL: one vault for a fleet of replicas, in the
database the state store uses (``[state] url``; the tables are prefixed
``vault_``). The same envelope encryption as the SQLite file, byte for byte:
the server only ever receives wrapped data keys, sealed values and key check
values (D7).

Across replicas:

* opening (schema, unlock check, key registration) and the final step of a
  rekey take an exclusive advisory lock; puts and shreds a shared one. So two
  processes starting at once create the schema once, a rekey sees every put
  committed before it and holds new ones off until it has committed, and two
  rekeys to different keys for one version cannot both succeed.
* version numbers never repeat: (secret_id, version) is the primary key, and
  a put that loses the race for a number takes the next one.
* ``created`` and ``labels`` are ``text``, not ``timestamptz``/``jsonb``: the
  wrapped key is bound to their exact bytes, which those types would
  normalise.

Shredding (what PostgreSQL can and cannot do). SQLite overwrites freed
pages (``secure_delete``) and truncates its WAL; PostgreSQL has no such
switch. A DELETE (or the UPDATE of a rekey) only marks the old row version
dead: it stays in the table's pages until VACUUM removes it, so we VACUUM the
secrets table right after a shred or a rekey (``_purge``). That makes the
dead rows unreachable through SQL and their space reusable, but:

* VACUUM cannot remove a row that a transaction still running anywhere in
  the cluster may see (an old snapshot on another connection); it is then
  removed by a later VACUUM or autovacuum;
* VACUUM does not promise to zero the bytes it frees: until the page space
  is reused they may remain in the data file;
* the write-ahead log keeps the old row (and full-page images) until its
  segments are recycled, and WAL archives, streaming replicas and base
  backups keep their own copies for as long as they are retained.

So on PostgreSQL a destroyed version is gone for every reader of the
database, but its wrapped key may survive in files and backups. It is
wrapped under a master key: the version is irrecoverable once that master
version is retired (``rekey`` to a new version, then drop the old one from
the key file) -- that, not the DELETE, is the crypto-shred to rely on here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, ClassVar

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from gateway.vault._errors import VaultError
from gateway.vault._keys import MasterKeys
from gateway.vault._store import TABLES, Vault

log = logging.getLogger("gateway.vault")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vault_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS vault_master_keys (
    version integer PRIMARY KEY, check_value bytea NOT NULL, registered text NOT NULL);
CREATE TABLE IF NOT EXISTS vault_secrets (
    secret_id text NOT NULL, version integer NOT NULL, created text NOT NULL,
    kind text NOT NULL, labels text NOT NULL, master_version integer NOT NULL,
    wrapped_key bytea NOT NULL, ciphertext bytea NOT NULL, PRIMARY KEY (secret_id, version));
"""
# The vault's advisory lock (any constant other than the state store's).
_VAULT_LOCK = 0x7661756C  # "vaul"


class PostgresVault(Vault):
    DUPLICATE: ClassVar[tuple[type[Exception], ...]] = (psycopg.errors.UniqueViolation,)

    def __init__(self, dsn: str, master: MasterKeys, *,
                 clock: Callable[[], datetime] | None = None) -> None:
        super().__init__(master, clock)
        self.dsn = dsn
        info = conninfo_to_dict(dsn)
        # SECURITY: the database's name only; never the DSN (it may hold a password).
        self.name = str(info.get("dbname") or "postgres")
        self._closing = False
        self._db: psycopg.Connection[dict[str, Any]] | None = None
        try:
            self._db = self._connect()
        except psycopg.Error as exc:
            raise VaultError(f"vault database {self.name!r} cannot be reached: "
                             f"{type(exc).__name__}") from None
        try:
            with self._lock, self._transaction(exclusive=True):
                # One transaction: a wrong key rolls the schema back too, so
                # it leaves the database as it was.
                if not self._has_tables():  # a read-only role opens an existing vault
                    self._exec(_SCHEMA)
                self._start()
        except BaseException as exc:
            self._closing = True
            self._db.close()
            if isinstance(exc, psycopg.Error):
                raise VaultError(f"vault database {self.name!r} is not usable: "
                                 f"{type(exc).__name__}: {exc}") from exc
            raise
        log.info("vault in PostgreSQL database %s opened with master key versions %s",
                 self.name, sorted(master.keys))

    def __repr__(self) -> str:
        return f"PostgresVault(database={self.name!r}, master={self._master!r})"

    def _connect(self) -> psycopg.Connection[dict[str, Any]]:
        return psycopg.connect(self.dsn, autocommit=True, row_factory=dict_row)

    def _live(self) -> psycopg.Connection[dict[str, Any]]:
        """The connection, opened again after the server dropped it (a
        restart, a failover): the call that found it broken failed, the next
        one reconnects."""
        if self._db is None or self._closing:
            raise VaultError("the vault is closed")
        if self._db.broken or self._db.closed:
            self._db.close()  # the broken one
            self._db = self._connect()
        return self._db

    # -- the hooks of Vault --------------------------------------------------------
    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> psycopg.Cursor[dict[str, Any]]:
        # The shared queries use "?"; none has a literal question mark or percent.
        return self._live().execute(sql.replace("?", "%s"), args or None)

    @contextmanager
    def _transaction(self, exclusive: bool) -> Iterator[None]:
        with self._live().transaction():
            self._exec("SET LOCAL lock_timeout = '30s'")
            lock = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
            self._exec(f"SELECT {lock}(?)", (_VAULT_LOCK,))
            yield

    def _has_tables(self) -> bool:
        row = self._exec("SELECT count(*) AS n FROM pg_catalog.pg_tables "
                         "WHERE schemaname = current_schema() AND tablename = ANY(?)",
                         (list(TABLES),)).fetchone()
        return row is not None and bool(row["n"] == len(TABLES))

    def _purge(self) -> None:
        """VACUUM the secrets table: dead row versions (the shredded rows, the
        rows a rekey replaced) leave it; see the module's docstring for what
        remains outside PostgreSQL's reach."""
        self._exec("VACUUM vault_secrets")

    def _is_open(self) -> bool:
        return self._db is not None and not self._closing

    def _close(self) -> None:
        self._closing = True
        if self._db is not None:
            self._db.close()

