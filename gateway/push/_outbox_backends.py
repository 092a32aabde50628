"""The outbox's two backends: the SQLite file of one process and the
PostgreSQL tables a fleet's replicas share (see ``_outbox`` for what they
store and how replicas compete for parts), and how one is chosen."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from gateway.clock import utc_now
from gateway.push._outbox import Outbox
from gateway.state import ensure_schema

SCHEMA_VERSION = 5  # PRAGMA user_version
# A new outbox file's page size. A part's payload (a tenant's share of a
# batch, up to megabytes) is a chain of overflow pages, and SQLite's work per
# stored byte is mostly per page (the pager, and a frame with its checksum
# in the WAL): with 64 KiB pages instead of the default 4 KiB, an enqueue
# costs about half the CPU (bench/README, "The outbox in 64 KiB pages, the
# cut by a table"). A file keeps the page size it was created with: SQLite
# changes it only by a VACUUM outside WAL mode, which needs the file to
# itself (README: Push).
PAGE_SIZE = 65536
# The WAL is checkpointed into the file once it holds this many pages: 16
# MiB, four times the default's 1,000 pages of 4 KiB (so the WAL stays
# bounded, with checkpoints four times rarer by bytes).
WAL_AUTOCHECKPOINT_PAGES = 256
_BATCHES = """CREATE TABLE batches (
    batch_id TEXT NOT NULL, source TEXT NOT NULL, fingerprint TEXT NOT NULL,
    received INTEGER NOT NULL, quarantined INTEGER NOT NULL, created TEXT NOT NULL,
    PRIMARY KEY (source, batch_id))"""
# A part's payload has a table of its own (version 5): SQLite rewrites a
# whole row on every UPDATE, a large blob's chain of overflow pages included
# (and with secure_delete zeroes the old ones), so each claim, lease and
# status change of a part rewrote its megabyte. Before version 4 the payload
# also stood before the lease columns, which SQLite reaches only through it.
_PARTS_COLUMNS = """(
    id TEXT PRIMARY KEY, batch_id TEXT NOT NULL, tenant TEXT NOT NULL, kind TEXT NOT NULL,
    records INTEGER NOT NULL, created TEXT NOT NULL, status TEXT NOT NULL,
    attempts INTEGER NOT NULL, next_attempt_at TEXT NOT NULL, last_error TEXT,
    done_at TEXT, source TEXT, lease_owner TEXT, lease_token TEXT, lease_until TEXT)"""
_PAYLOADS = """CREATE TABLE payloads (
    id TEXT PRIMARY KEY, nonce BLOB NOT NULL, payload BLOB NOT NULL)"""
_PARTS = f"CREATE TABLE parts {_PARTS_COLUMNS}"
# Breach notifications as their owners read them (GET /notifications): the
# document only, never a record (gateway.core.breach).
_NOTIFICATIONS = """CREATE TABLE IF NOT EXISTS notifications (
    incident TEXT NOT NULL, tenant TEXT NOT NULL, created TEXT NOT NULL,
    document TEXT NOT NULL, PRIMARY KEY (incident, tenant))"""
_INDEXES = ("CREATE INDEX IF NOT EXISTS parts_queue ON parts (tenant, status, created)",
            "CREATE INDEX IF NOT EXISTS parts_batch ON parts (source, batch_id, tenant)",
            "CREATE INDEX IF NOT EXISTS notifications_tenant ON notifications (tenant, created)")
# Version 0 -> 1: batches keyed by (source, batch_id); parts name their source.
_MIGRATE_V0 = (
    "ALTER TABLE batches RENAME TO batches_v0",
    _BATCHES,
    "INSERT INTO batches SELECT batch_id, source, fingerprint, received, quarantined, "
    "created FROM batches_v0",
    "DROP TABLE batches_v0",
    "ALTER TABLE parts ADD COLUMN source TEXT",
    "UPDATE parts SET source = (SELECT b.source FROM batches AS b "
    "WHERE b.batch_id = parts.batch_id)",
)
# Version 1 -> 2: leases (a claim's owner, token and expiry).
_MIGRATE_V1 = tuple(f"ALTER TABLE parts ADD COLUMN {c} TEXT"
                    for c in ("lease_owner", "lease_token", "lease_until"))
# Version 2 -> 3: the breach notifications' register.
_MIGRATE_V2 = (_NOTIFICATIONS,)
# Version 4 -> 5 (and 0-3, after the steps above): the payloads kept go to
# their own table, the parts table is rebuilt without them (secure_delete
# zeroes the old pages; the indexes follow). This also takes version 3's
# column order (the payload in the middle) to the new one.
_ALL_PART_COLUMNS = ", ".join(  # the names of _PARTS_COLUMNS, in its order
    column.split()[0] for column in _PARTS_COLUMNS.strip().strip("()").split(","))
_MIGRATE_V4 = (
    _PAYLOADS,
    "INSERT INTO payloads (id, nonce, payload) SELECT id, nonce, payload FROM parts "
    "WHERE payload IS NOT NULL",
    f"CREATE TABLE parts_v5 {_PARTS_COLUMNS}",
    f"INSERT INTO parts_v5 ({_ALL_PART_COLUMNS}) SELECT {_ALL_PART_COLUMNS} FROM parts",
    "DROP TABLE parts",
    "ALTER TABLE parts_v5 RENAME TO parts",
)
_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox_batches (
    batch_id text NOT NULL, source text NOT NULL, fingerprint text NOT NULL,
    received bigint NOT NULL, quarantined bigint NOT NULL, created timestamptz NOT NULL,
    PRIMARY KEY (source, batch_id));
CREATE TABLE IF NOT EXISTS outbox_parts (
    id text PRIMARY KEY, batch_id text NOT NULL, tenant text NOT NULL, kind text NOT NULL,
    records bigint NOT NULL, created timestamptz NOT NULL, status text NOT NULL,
    attempts integer NOT NULL, next_attempt_at timestamptz NOT NULL, last_error text,
    nonce bytea, payload bytea, done_at timestamptz, source text, lease_owner text,
    lease_token text, lease_until timestamptz);
CREATE INDEX IF NOT EXISTS outbox_parts_queue ON outbox_parts (tenant, status, created);
CREATE INDEX IF NOT EXISTS outbox_parts_batch ON outbox_parts (source, batch_id, tenant);
CREATE TABLE IF NOT EXISTS outbox_notifications (
    incident text NOT NULL, tenant text NOT NULL, created timestamptz NOT NULL,
    document text NOT NULL, PRIMARY KEY (incident, tenant));
CREATE INDEX IF NOT EXISTS outbox_notifications_tenant ON outbox_notifications (tenant, created);
"""



class SqliteOutbox(Outbox):
    """One process's outbox: a SQLite file, WAL, 0600, freed pages zeroed."""

    PAYLOADS = "payloads"

    def __init__(self, path: Path, data_key: bytes | None, *, owner: str = "",
                 clock: Callable[[], datetime] = utc_now) -> None:
        super().__init__(data_key, owner=owner, clock=clock)
        path.parent.mkdir(parents=True, exist_ok=True)
        # SECURITY: encrypted payloads, but tenant ids and counts: owner-only (0600),
        # also for a file an older version left wider; SQLite gives its WAL and
        # shared-memory files the database file's mode.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
            if (path.parent / name).exists():
                os.chmod(path.parent / name, 0o600)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            # A new file's page size; an older file keeps its own.
            self._db.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA secure_delete=ON")  # freed payload pages are zeroed
            self._migrate()

    def _migrate(self) -> None:
        """Create the schema, or bring an older outbox to :data:`SCHEMA_VERSION`."""
        db = self._db
        if db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version >= SCHEMA_VERSION:
                db.execute("COMMIT")  # another process (a worker) migrated it meanwhile
                return
            old = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                             "name = 'batches'").fetchone() is not None
            steps: tuple[str, ...] = (_BATCHES, _PARTS, _PAYLOADS, _NOTIFICATIONS)
            if old:
                steps = (*(_MIGRATE_V0 if version == 0 else ()),
                         *(_MIGRATE_V1 if version <= 1 else ()),
                         *(_MIGRATE_V2 if version <= 2 else ()), *_MIGRATE_V4)
            for statement in (*steps, *_INDEXES):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _exec(self, sql: str, args: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self._db.execute(sql, tuple(args))

    def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._db.executemany(sql, rows)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _t(self, at: datetime) -> str:
        return at.astimezone(UTC).isoformat(timespec="microseconds")

    def _time(self, value: Any) -> datetime:
        return datetime.fromisoformat(value)

    def close(self) -> None:
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()


class PostgresOutbox(Outbox):
    """A fleet's outbox in the shared state database (tables ``outbox_*``):
    replicas claim parts with ``FOR UPDATE SKIP LOCKED`` under leases.

    A delivered part's payload is set to NULL at once; the old row version
    stays in the table's pages until VACUUM (and in the write-ahead log and
    backups): encrypted under the outbox data key, which the vault holds."""

    BATCHES = "outbox_batches"
    PARTS = "outbox_parts"
    NOTIFICATIONS = "outbox_notifications"
    SKIP_LOCKED = " FOR UPDATE SKIP LOCKED"

    def __init__(self, dsn: str, data_key: bytes | None, *, owner: str = "",
                 clock: Callable[[], datetime] = utc_now) -> None:
        super().__init__(data_key, owner=owner, clock=clock)
        self.dsn = dsn
        self._closing = False
        self._db = self._connect()
        with self._lock:
            ensure_schema(self._db, _PG_SCHEMA)

    def _connect(self) -> psycopg.Connection[dict[str, Any]]:
        db = psycopg.connect(self.dsn, autocommit=True, row_factory=dict_row)
        db.execute("SET TIME ZONE 'UTC'")
        return db

    def _live(self) -> psycopg.Connection[dict[str, Any]]:
        if (self._db.broken or self._db.closed) and not self._closing:
            self._db.close()  # the broken one; the call that found it so failed
            self._db = self._connect()
        return self._db

    def _exec(self, sql: str, args: Sequence[Any] = ()) -> psycopg.Cursor[dict[str, Any]]:
        # The shared queries use "?"; none has a literal question mark.
        return self._live().execute(sql.replace("?", "%s"), tuple(args))

    def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._live().cursor() as cur:
            cur.executemany(sql.replace("?", "%s"), [tuple(r) for r in rows])

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._live().transaction():
            yield

    def _t(self, at: datetime) -> datetime:
        return at

    def _time(self, value: Any) -> datetime:
        assert isinstance(value, datetime)
        return value

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._db.close()


def open_outbox(state_url: str | None, path: Path, data_key: bytes, *, owner: str,
                clock: Callable[[], datetime] | None = None) -> Outbox:
    """PostgreSQL when the state is there (the replicas of a fleet share one
    outbox and compete for its parts), else the SQLite file at ``path``."""
    kw: dict[str, Any] = {"owner": owner} | ({"clock": clock} if clock else {})
    if state_url is not None and state_url.startswith(("postgresql://", "postgres://")):
        return PostgresOutbox(state_url, data_key, **kw)
    return SqliteOutbox(path, data_key, **kw)


__all__ = ["PostgresOutbox", "SqliteOutbox", "open_outbox"]
