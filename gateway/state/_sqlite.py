"""The embedded state store: one SQLite file in WAL mode, mode 0600.

Writes are small and rare (admin actions, a periodic last-seen flush), so
they run synchronously; the request path reads nothing from here.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from gateway.state._records import (
    BreakGlassCase,
    CaRecord,
    CertificateRecord,
    Consultation,
    PendingAction,
    PrincipalKey,
    PrincipalState,
    SigningKeyRecord,
)

SCHEMA_VERSION = 2
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
}

R = TypeVar("R")
_TIME_FIELDS = {"not_before", "not_after", "issued_at", "revoked_at", "retire_at", "changed_at",
                "created", "activate_at", "unpublish_at", "decided_at", "checked_out_at",
                "lease_expires_at", "closed_at", "at", "expires_at"}
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


def _record(cls: type[R], row: sqlite3.Row) -> R:
    return cls(**{f.name: _from_db(f.name, row[f.name])
                  for f in fields(cls)})  # type: ignore[arg-type]


class SqliteStore:
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
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                             (str(step),))
        assert max(_MIGRATIONS) == SCHEMA_VERSION

    def schema_version(self) -> int:
        row = self._exec("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0])

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, tuple(_to_db(a) for a in args))

    def change_seq(self) -> int:
        row = self._exec("SELECT value FROM meta WHERE key = 'change_seq'").fetchone()
        return int(row[0])

    def _changed(self) -> None:
        # After the write it announces: a reader that sees the new number
        # also sees the write.
        self._exec("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'change_seq'")

    def _insert(self, table: str, rec: Any) -> None:
        names = [f.name for f in fields(rec)]
        if table == "principal_states":
            names = ["tenant", "kind", "name", *names[1:]]
            values = [*rec.key, *(getattr(rec, n) for n in names[3:])]
        else:
            values = [getattr(rec, n) for n in names]
        self._exec(f"INSERT OR REPLACE INTO {table} ({', '.join(names)}) "  # noqa: S608
                   f"VALUES ({', '.join('?' for _ in names)})", tuple(values))

    # -- certificates ----------------------------------------------------------
    def add_certificate(self, rec: CertificateRecord) -> None:
        self._insert("certificates", rec)

    def certificate(self, serial: str) -> CertificateRecord | None:
        row = self._exec("SELECT * FROM certificates WHERE serial = ?", (serial,)).fetchone()
        return _record(CertificateRecord, row) if row else None

    def certificates(self, *, principal: PrincipalKey | None = None,
                     status: str | None = None) -> list[CertificateRecord]:
        sql, args = "SELECT * FROM certificates WHERE 1=1", []
        if principal is not None:
            sql += " AND tenant = ? AND kind = ? AND name = ?"
            args += list(principal)
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        rows = self._exec(sql + " ORDER BY issued_at", tuple(args)).fetchall()
        return [_record(CertificateRecord, r) for r in rows]

    def revoke_certificate(self, serial: str, reason: str, at: datetime) -> bool:
        cur = self._exec("UPDATE certificates SET status = 'revoked', revoked_at = ?, "
                         "revoke_reason = ?, retire_at = NULL "
                         "WHERE serial = ? AND status = 'active'", (at, reason, serial))
        if cur.rowcount == 1:
            self._changed()
        return cur.rowcount == 1

    def schedule_retirement(self, serial: str, at: datetime) -> None:
        self._exec("UPDATE certificates SET retire_at = ? WHERE serial = ?", (at, serial))

    def due_retirements(self, now: datetime) -> list[CertificateRecord]:
        rows = self._exec("SELECT * FROM certificates WHERE status = 'active' AND "
                          "retire_at IS NOT NULL AND retire_at <= ?", (now,)).fetchall()
        return [_record(CertificateRecord, r) for r in rows]

    # -- principals ------------------------------------------------------------
    def set_principal_state(self, state: PrincipalState) -> None:
        self._insert("principal_states", state)
        self._changed()

    def principal_states(self) -> list[PrincipalState]:
        rows = self._exec("SELECT * FROM principal_states").fetchall()
        return [PrincipalState((r["tenant"], r["kind"], r["name"]), bool(r["disabled"]),
                               datetime.fromisoformat(r["changed_at"]), r["reason"],
                               r["changed_by"]) for r in rows]

    def record_last_seen(self, seen: dict[PrincipalKey, datetime]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO last_seen VALUES (?, ?, ?, ?) ON CONFLICT (tenant, kind, name) "
                "DO UPDATE SET at = max(at, excluded.at)",
                [(*key, _to_db(at)) for key, at in seen.items()])
            self._db.execute("COMMIT")

    def last_seen(self) -> dict[PrincipalKey, datetime]:
        rows = self._exec("SELECT * FROM last_seen").fetchall()
        return {(r["tenant"], r["kind"], r["name"]): datetime.fromisoformat(r["at"])
                for r in rows}

    # -- certificate authorities -------------------------------------------
    def add_ca(self, rec: CaRecord) -> None:
        self._insert("cas", rec)
        self._changed()

    def cas(self) -> list[CaRecord]:
        return [_record(CaRecord, r)
                for r in self._exec("SELECT * FROM cas ORDER BY created").fetchall()]

    def set_ca_status(self, ca_id: str, status: str, retire_at: datetime | None) -> None:
        self._exec("UPDATE cas SET status = ?, retire_at = ? WHERE id = ?",
                   (status, retire_at, ca_id))
        self._changed()

    def next_crl_number(self) -> int:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            value = int(self._db.execute(
                "SELECT value FROM meta WHERE key = 'crl_number'").fetchone()[0]) + 1
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'crl_number'", (str(value),))
            self._db.execute("COMMIT")
        return value

    # -- break-glass cases ------------------------------------------------------
    def put_breakglass(self, case: BreakGlassCase) -> None:
        self._insert("breakglass", case)

    def breakglass(self, case_id: str) -> BreakGlassCase | None:
        row = self._exec("SELECT * FROM breakglass WHERE id = ?", (case_id,)).fetchone()
        return _record(BreakGlassCase, row) if row else None

    def breakglass_cases(self, *, status: str | None = None) -> list[BreakGlassCase]:
        sql, args = "SELECT * FROM breakglass", tuple[str, ...]()
        if status is not None:
            sql, args = sql + " WHERE status = ?", (status,)
        return [_record(BreakGlassCase, r)
                for r in self._exec(sql + " ORDER BY created", args).fetchall()]

    # -- the consultation register (D8) ------------------------------------------
    def add_consultation(self, rec: Consultation) -> None:
        self._insert("consultations", rec)

    def consultations(self, *, tenant: str | None = None) -> list[Consultation]:
        sql, args = "SELECT * FROM consultations", tuple[str, ...]()
        if tenant is not None:
            sql, args = sql + " WHERE tenant = ?", (tenant,)
        return [_record(Consultation, r)
                for r in self._exec(sql + " ORDER BY at", args).fetchall()]

    # -- signing keys --------------------------------------------------------
    def add_signing_key(self, rec: SigningKeyRecord) -> None:
        self._insert("signing_keys", rec)
        self._changed()

    def signing_keys(self) -> list[SigningKeyRecord]:
        return [_record(SigningKeyRecord, r) for r in
                self._exec("SELECT * FROM signing_keys ORDER BY activate_at").fetchall()]

    def set_unpublish(self, kid: str, at: datetime) -> None:
        self._exec("UPDATE signing_keys SET unpublish_at = ? WHERE kid = ?", (at, kid))
        self._changed()

    def delete_signing_key(self, kid: str) -> None:
        self._exec("DELETE FROM signing_keys WHERE kid = ?", (kid,))
        self._changed()

    # -- actions pending a second admin (D6) ------------------------------------
    def put_pending(self, rec: PendingAction) -> None:
        self._insert("pending_actions", rec)

    def pending(self, pending_id: str) -> PendingAction | None:
        row = self._exec("SELECT * FROM pending_actions WHERE id = ?", (pending_id,)).fetchone()
        return _record(PendingAction, row) if row else None

    def pending_actions(self, *, status: str | None = None) -> list[PendingAction]:
        sql, args = "SELECT * FROM pending_actions", tuple[str, ...]()
        if status is not None:
            sql, args = sql + " WHERE status = ?", (status,)
        return [_record(PendingAction, r)
                for r in self._exec(sql + " ORDER BY created", args).fetchall()]

    def move_pending(self, pending_id: str, from_status: str, rec: PendingAction) -> bool:
        """Store ``rec`` only if the item is still ``from_status`` (one winner
        when two admins decide at once)."""
        names = [f.name for f in fields(rec) if f.name != "id"]
        cur = self._exec(f"UPDATE pending_actions SET {', '.join(n + ' = ?' for n in names)} "  # noqa: S608
                         "WHERE id = ? AND status = ?",
                         (*(getattr(rec, n) for n in names), pending_id, from_status))
        return cur.rowcount == 1

    def close(self) -> None:
        with self._lock:
            self._db.close()
