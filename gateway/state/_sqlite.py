"""The embedded state store: one SQLite file in WAL mode, mode 0600.

Writes are small and rare (admin actions, a periodic last-seen flush), so
they run synchronously; the request path reads nothing from here.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.state._records import PrincipalKey
from gateway.state._sql import R, SqlStore

SCHEMA_VERSION = 5
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS certificates (
    serial TEXT PRIMARY KEY, tenant TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,
    issuer_ca TEXT NOT NULL, not_before TEXT NOT NULL, not_after TEXT NOT NULL,
    fingerprint TEXT NOT NULL, pem TEXT NOT NULL, issued_at TEXT NOT NULL,
    status TEXT NOT NULL, revoked_at TEXT, revoke_reason TEXT, replaces TEXT, retire_at TEXT);
CREATE INDEX IF NOT EXISTS certificates_principal ON certificates (tenant, kind, name);
CREATE TABLE IF NOT EXISTS principal_states (
    tenant TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL, disabled INTEGER NOT NULL,
    changed_at TEXT NOT NULL, reason TEXT NOT NULL, changed_by TEXT NOT NULL,
    PRIMARY KEY (tenant, kind, name));
CREATE TABLE IF NOT EXISTS last_seen (
    tenant TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL, at TEXT NOT NULL,
    PRIMARY KEY (tenant, kind, name));
CREATE TABLE IF NOT EXISTS cas (
    id TEXT PRIMARY KEY, cert_pem TEXT NOT NULL, key_pem TEXT NOT NULL, created TEXT NOT NULL,
    status TEXT NOT NULL, retire_at TEXT);
CREATE TABLE IF NOT EXISTS breakglass (
    id TEXT PRIMARY KEY, account TEXT NOT NULL, requester TEXT NOT NULL,
    requester_team TEXT NOT NULL, reason TEXT NOT NULL, ticket TEXT NOT NULL,
    duration_s REAL NOT NULL, emergency INTEGER NOT NULL, created TEXT NOT NULL,
    status TEXT NOT NULL, approver TEXT, decided_at TEXT, checked_out_at TEXT,
    lease_expires_at TEXT, closed_at TEXT, close_reason TEXT, rotated INTEGER NOT NULL,
    review_status TEXT NOT NULL, reviewer TEXT, review_notes TEXT);
CREATE TABLE IF NOT EXISTS consultations (
    incident TEXT PRIMARY KEY, at TEXT NOT NULL, tenant TEXT NOT NULL, principal TEXT NOT NULL,
    route TEXT NOT NULL, resource TEXT NOT NULL, purpose TEXT NOT NULL,
    justification TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS signing_keys (
    kid TEXT PRIMARY KEY, key_pem TEXT NOT NULL, created TEXT NOT NULL,
    activate_at TEXT NOT NULL, unpublish_at TEXT);
"""
# Schema changes after version 1, applied in order to an older file (the
# version is kept in ``meta``); each step is idempotent.
_MIGRATIONS: dict[int, str] = {
    # 2: admin actions pending a second security admin (D6).
    2: """
CREATE TABLE IF NOT EXISTS pending_actions (
    id TEXT PRIMARY KEY, action TEXT NOT NULL, target TEXT NOT NULL, principal TEXT NOT NULL,
    params TEXT NOT NULL, reason TEXT NOT NULL, requester TEXT NOT NULL,
    requester_team TEXT NOT NULL, rule TEXT NOT NULL, created TEXT NOT NULL,
    expires_at TEXT NOT NULL, status TEXT NOT NULL, approver TEXT, decided_at TEXT,
    decision_reason TEXT, result TEXT);
CREATE INDEX IF NOT EXISTS pending_actions_status ON pending_actions (status);
""",
    # 3: the CRLs the signing process published, for the others to serve.
    3: """
CREATE TABLE IF NOT EXISTS crls (
    ca_id TEXT PRIMARY KEY, position INTEGER NOT NULL, pem BLOB NOT NULL);
""",
    # 4: national-register lookups approved beforehand by a manager (D8).
    4: """
CREATE TABLE IF NOT EXISTS nrn_approvals (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, requester TEXT NOT NULL,
    requester_team TEXT NOT NULL, nrn TEXT NOT NULL, purpose TEXT NOT NULL,
    justification TEXT NOT NULL, created TEXT NOT NULL, expires_at TEXT NOT NULL,
    status TEXT NOT NULL, approver TEXT, decided_at TEXT);
""",
    # 5: the tenant lockbox: each reached tenant's part in a break-glass case (D7).
    5: """
CREATE TABLE IF NOT EXISTS lockbox (
    case_id TEXT NOT NULL, tenant TEXT NOT NULL, account TEXT NOT NULL,
    requester TEXT NOT NULL, requester_team TEXT NOT NULL, reason TEXT NOT NULL,
    ticket TEXT NOT NULL, emergency INTEGER NOT NULL, mode TEXT NOT NULL,
    created TEXT NOT NULL, expires_at TEXT, notice TEXT NOT NULL, status TEXT NOT NULL,
    approver TEXT, decided_at TEXT, decision_reason TEXT, review_status TEXT NOT NULL,
    reviewer TEXT, reviewed_at TEXT, review_notes TEXT, PRIMARY KEY (case_id, tenant));
CREATE INDEX IF NOT EXISTS lockbox_tenant ON lockbox (tenant);
""",
}
# Columns added to a table after version 1 (SQLite has no ADD COLUMN IF NOT
# EXISTS): step -> (table, column, definition), added where missing.
_NEW_COLUMNS: dict[int, tuple[tuple[str, str, str], ...]] = {
    4: (("consultations", "approval", "TEXT NOT NULL DEFAULT ''"),
        ("consultations", "approver", "TEXT NOT NULL DEFAULT ''")),
}

_TIME_FIELDS = {"not_before", "not_after", "issued_at", "revoked_at", "retire_at", "changed_at",
                "created", "activate_at", "unpublish_at", "decided_at", "checked_out_at",
                "lease_expires_at", "closed_at", "at", "expires_at", "reviewed_at"}
_BOOL_FIELDS = {"emergency", "rotated"}


def _to_db(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    return value


def _from_db(name: str, value: Any) -> Any:
    if name in _TIME_FIELDS and value is not None:
        return datetime.fromisoformat(value)
    if name in _BOOL_FIELDS:
        return bool(value)
    return value


class SqliteStore(SqlStore):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            # SECURITY: the file holds CA and signing keys; owner-only from birth.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            # A new file starts at version 1 and is migrated like an old one.
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', '1')")
            self._migrate()
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('crl_number', '0')")
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('change_seq', '0')")

    def _migrate(self) -> None:
        version = int(self._db.execute(
            "SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])
        for step in sorted(v for v in _MIGRATIONS if v > version):
            self._db.executescript(_MIGRATIONS[step])
            for table, column, definition in _NEW_COLUMNS.get(step, ()):
                have = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                             (str(step),))
        assert max(_MIGRATIONS) == SCHEMA_VERSION

    def schema_version(self) -> int:
        row = self._exec("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0])

    # -- the hooks of SqlStore -------------------------------------------------------
    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, tuple(_to_db(a) for a in args))

    def _record(self, cls: type[R], row: Mapping[str, Any]) -> R:
        return cls(**{f.name: _from_db(f.name, row[f.name])
                      for f in fields(cls)})  # type: ignore[arg-type]

    def _time(self, value: Any) -> datetime:
        return datetime.fromisoformat(value)

    def change_seq(self) -> int:
        row = self._exec("SELECT value FROM meta WHERE key = 'change_seq'").fetchone()
        return int(row[0])

    def _changed(self) -> None:
        # After the write it announces: a reader that sees the new number
        # also sees the write.
        self._exec("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'change_seq'")

    # -- what differs in SQL -------------------------------------------------------
    def record_last_seen(self, seen: dict[PrincipalKey, datetime]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO last_seen VALUES (?, ?, ?, ?) ON CONFLICT (tenant, kind, name) "
                "DO UPDATE SET at = max(at, excluded.at)",
                [(*key, _to_db(at)) for key, at in seen.items()])
            self._db.execute("COMMIT")

    def next_crl_number(self) -> int:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            value = int(self._db.execute(
                "SELECT value FROM meta WHERE key = 'crl_number'").fetchone()[0]) + 1
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'crl_number'", (str(value),))
            self._db.execute("COMMIT")
        return value

    def publish_crls(self, crls: Sequence[tuple[str, bytes]]) -> int:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM crls")
                self._db.executemany("INSERT INTO crls VALUES (?, ?, ?)",
                                     [(ca, i, pem) for i, (ca, pem) in enumerate(crls)])
                self._db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 "
                                 "WHERE key = 'change_seq'")
                seq = int(self._db.execute(
                    "SELECT value FROM meta WHERE key = 'change_seq'").fetchone()[0])
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return seq

    def close(self) -> None:
        with self._lock:
            self._db.close()
