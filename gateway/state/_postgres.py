"""The shared state store: PostgreSQL, for a fleet of gateway replicas
(DESIGN.md §6). Same records and the same answers as :class:`SqliteStore`
(tests/state runs one conformance suite against both).

Times are ``timestamptz`` (UTC), flags ``boolean``; every write is one
statement or one transaction, so two replicas racing on the same row get one
winner (``move_pending``, ``revoke_certificate``) and the CRL number never
repeats. The request path reads nothing from here.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row

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
CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name text PRIMARY KEY, value bigint NOT NULL);
CREATE TABLE IF NOT EXISTS certificates (
    serial text PRIMARY KEY, tenant text NOT NULL, kind text NOT NULL, name text NOT NULL,
    issuer_ca text NOT NULL, not_before timestamptz NOT NULL, not_after timestamptz NOT NULL,
    fingerprint text NOT NULL, pem text NOT NULL, issued_at timestamptz NOT NULL,
    status text NOT NULL, revoked_at timestamptz, revoke_reason text, replaces text,
    retire_at timestamptz);
CREATE INDEX IF NOT EXISTS certificates_principal ON certificates (tenant, kind, name);
CREATE TABLE IF NOT EXISTS principal_states (
    tenant text NOT NULL, kind text NOT NULL, name text NOT NULL, disabled boolean NOT NULL,
    changed_at timestamptz NOT NULL, reason text NOT NULL, changed_by text NOT NULL,
    PRIMARY KEY (tenant, kind, name));
CREATE TABLE IF NOT EXISTS last_seen (
    tenant text NOT NULL, kind text NOT NULL, name text NOT NULL, at timestamptz NOT NULL,
    PRIMARY KEY (tenant, kind, name));
CREATE TABLE IF NOT EXISTS cas (
    id text PRIMARY KEY, cert_pem text NOT NULL, key_pem text NOT NULL,
    created timestamptz NOT NULL, status text NOT NULL, retire_at timestamptz);
CREATE TABLE IF NOT EXISTS breakglass (
    id text PRIMARY KEY, account text NOT NULL, requester text NOT NULL,
    requester_team text NOT NULL, reason text NOT NULL, ticket text NOT NULL,
    duration_s double precision NOT NULL, emergency boolean NOT NULL, created timestamptz NOT NULL,
    status text NOT NULL, approver text, decided_at timestamptz, checked_out_at timestamptz,
    lease_expires_at timestamptz, closed_at timestamptz, close_reason text,
    rotated boolean NOT NULL, review_status text NOT NULL, reviewer text, review_notes text);
CREATE TABLE IF NOT EXISTS consultations (
    incident text PRIMARY KEY, at timestamptz NOT NULL, tenant text NOT NULL,
    principal text NOT NULL, route text NOT NULL, resource text NOT NULL, purpose text NOT NULL,
    justification text NOT NULL);
CREATE TABLE IF NOT EXISTS signing_keys (
    kid text PRIMARY KEY, key_pem text NOT NULL, created timestamptz NOT NULL,
    activate_at timestamptz NOT NULL, unpublish_at timestamptz);
CREATE TABLE IF NOT EXISTS pending_actions (
    id text PRIMARY KEY, action text NOT NULL, target text NOT NULL, principal text NOT NULL,
    params text NOT NULL, reason text NOT NULL, requester text NOT NULL,
    requester_team text NOT NULL, rule text NOT NULL, created timestamptz NOT NULL,
    expires_at timestamptz NOT NULL, status text NOT NULL, approver text, decided_at timestamptz,
    decision_reason text, result text);
CREATE INDEX IF NOT EXISTS pending_actions_status ON pending_actions (status);
INSERT INTO meta VALUES ('schema_version', '2') ON CONFLICT DO NOTHING;
INSERT INTO counters VALUES ('crl_number', 0) ON CONFLICT DO NOTHING;
INSERT INTO counters VALUES ('change_seq', 0) ON CONFLICT DO NOTHING;
"""
# The primary key of each table an upsert writes.
_KEYS = {"certificates": ("serial",), "principal_states": ("tenant", "kind", "name"),
         "cas": ("id",), "breakglass": ("id",), "consultations": ("incident",),
         "signing_keys": ("kid",), "pending_actions": ("id",)}
# Two processes creating the schema at once: one at a time (any constant).
_SCHEMA_LOCK = 0x67617465  # "gate"

R = TypeVar("R")


def _record(cls: type[R], row: dict[str, Any]) -> R:
    return cls(**{f.name: row[f.name] for f in fields(cls)})  # type: ignore[arg-type]


class PostgresStore:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._db = self._connect()
        self._closing = False
        self._lock = threading.Lock()
        with self._transaction() as cur:
            cur.execute("SET LOCAL lock_timeout = '30s'")
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            cur.execute(_SCHEMA)

    def _connect(self) -> psycopg.Connection[dict[str, Any]]:
        db = psycopg.connect(self.dsn, autocommit=True, row_factory=dict_row)
        db.execute("SET TIME ZONE 'UTC'")
        return db

    def _live(self) -> psycopg.Connection[dict[str, Any]]:
        """The connection, opened again after the server dropped it (a
        restart, a failover): the call that found it broken failed, the next
        one reconnects."""
        if (self._db.broken or self._db.closed) and not self._closing:
            self._db = self._connect()
        return self._db

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Cursor[dict[str, Any]]]:
        with self._lock:
            db = self._live()
            with db.transaction(), db.cursor() as cur:
                yield cur

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> psycopg.Cursor[dict[str, Any]]:
        with self._lock:
            return self._live().execute(sql, args)

    def schema_version(self) -> int:
        row = self._exec("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert row is not None
        return int(row["value"])

    def change_seq(self) -> int:
        row = self._exec("SELECT value FROM counters WHERE name = 'change_seq'").fetchone()
        assert row is not None
        return int(row["value"])

    def _changed(self) -> None:
        # After the write it announces: a replica that sees the new number
        # also sees the write.
        self._exec("UPDATE counters SET value = value + 1 WHERE name = 'change_seq'")

    def _insert(self, table: str, rec: Any) -> None:
        names = [f.name for f in fields(rec)]
        if table == "principal_states":
            names = ["tenant", "kind", "name", *names[1:]]
            values = [*rec.key, *(getattr(rec, n) for n in names[3:])]
        else:
            values = [getattr(rec, n) for n in names]
        keys = _KEYS[table]
        updates = ", ".join(f"{n} = excluded.{n}" for n in names if n not in keys)
        self._exec(f"INSERT INTO {table} ({', '.join(names)}) "  # noqa: S608
                   f"VALUES ({', '.join('%s' for _ in names)}) "
                   f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}", tuple(values))

    # -- certificates ----------------------------------------------------------
    def add_certificate(self, rec: CertificateRecord) -> None:
        self._insert("certificates", rec)

    def certificate(self, serial: str) -> CertificateRecord | None:
        row = self._exec("SELECT * FROM certificates WHERE serial = %s", (serial,)).fetchone()
        return _record(CertificateRecord, row) if row else None

    def certificates(self, *, principal: PrincipalKey | None = None,
                     status: str | None = None) -> list[CertificateRecord]:
        sql, args = "SELECT * FROM certificates WHERE true", list[Any]()
        if principal is not None:
            sql += " AND tenant = %s AND kind = %s AND name = %s"
            args += list(principal)
        if status is not None:
            sql += " AND status = %s"
            args.append(status)
        rows = self._exec(sql + " ORDER BY issued_at, serial", tuple(args)).fetchall()
        return [_record(CertificateRecord, r) for r in rows]

    def revoke_certificate(self, serial: str, reason: str, at: datetime) -> bool:
        cur = self._exec("UPDATE certificates SET status = 'revoked', revoked_at = %s, "
                         "revoke_reason = %s, retire_at = NULL "
                         "WHERE serial = %s AND status = 'active'", (at, reason, serial))
        if cur.rowcount == 1:
            self._changed()
        return cur.rowcount == 1

    def schedule_retirement(self, serial: str, at: datetime) -> None:
        self._exec("UPDATE certificates SET retire_at = %s WHERE serial = %s", (at, serial))

    def due_retirements(self, now: datetime) -> list[CertificateRecord]:
        rows = self._exec("SELECT * FROM certificates WHERE status = 'active' AND "
                          "retire_at IS NOT NULL AND retire_at <= %s", (now,)).fetchall()
        return [_record(CertificateRecord, r) for r in rows]

    # -- principals ------------------------------------------------------------
    def set_principal_state(self, state: PrincipalState) -> None:
        self._insert("principal_states", state)
        self._changed()

    def principal_states(self) -> list[PrincipalState]:
        rows = self._exec("SELECT * FROM principal_states").fetchall()
        return [PrincipalState((r["tenant"], r["kind"], r["name"]), r["disabled"],
                               r["changed_at"], r["reason"], r["changed_by"]) for r in rows]

    def record_last_seen(self, seen: dict[PrincipalKey, datetime]) -> None:
        with self._transaction() as cur:
            cur.executemany(
                "INSERT INTO last_seen VALUES (%s, %s, %s, %s) ON CONFLICT (tenant, kind, name) "
                "DO UPDATE SET at = GREATEST(last_seen.at, excluded.at)",
                [(*key, at) for key, at in seen.items()])

    def last_seen(self) -> dict[PrincipalKey, datetime]:
        rows = self._exec("SELECT * FROM last_seen").fetchall()
        return {(r["tenant"], r["kind"], r["name"]): r["at"] for r in rows}

    # -- certificate authorities -------------------------------------------
    def add_ca(self, rec: CaRecord) -> None:
        self._insert("cas", rec)
        self._changed()

    def cas(self) -> list[CaRecord]:
        return [_record(CaRecord, r)
                for r in self._exec("SELECT * FROM cas ORDER BY created, id").fetchall()]

    def set_ca_status(self, ca_id: str, status: str, retire_at: datetime | None) -> None:
        self._exec("UPDATE cas SET status = %s, retire_at = %s WHERE id = %s",
                   (status, retire_at, ca_id))
        self._changed()

    def next_crl_number(self) -> int:
        """RFC 5280 §5.2.3: monotonically increasing, also across replicas."""
        row = self._exec("UPDATE counters SET value = value + 1 WHERE name = 'crl_number' "
                         "RETURNING value").fetchone()
        assert row is not None
        return int(row["value"])

    # -- break-glass cases ------------------------------------------------------
    def put_breakglass(self, case: BreakGlassCase) -> None:
        self._insert("breakglass", case)

    def breakglass(self, case_id: str) -> BreakGlassCase | None:
        row = self._exec("SELECT * FROM breakglass WHERE id = %s", (case_id,)).fetchone()
        return _record(BreakGlassCase, row) if row else None

    def breakglass_cases(self, *, status: str | None = None) -> list[BreakGlassCase]:
        sql, args = "SELECT * FROM breakglass", tuple[str, ...]()
        if status is not None:
            sql, args = sql + " WHERE status = %s", (status,)
        return [_record(BreakGlassCase, r)
                for r in self._exec(sql + " ORDER BY created, id", args).fetchall()]

    # -- the consultation register (D8) ------------------------------------------
    def add_consultation(self, rec: Consultation) -> None:
        self._insert("consultations", rec)

    def consultations(self, *, tenant: str | None = None) -> list[Consultation]:
        sql, args = "SELECT * FROM consultations", tuple[str, ...]()
        if tenant is not None:
            sql, args = sql + " WHERE tenant = %s", (tenant,)
        return [_record(Consultation, r)
                for r in self._exec(sql + " ORDER BY at, incident", args).fetchall()]

    # -- signing keys --------------------------------------------------------
    def add_signing_key(self, rec: SigningKeyRecord) -> None:
        self._insert("signing_keys", rec)
        self._changed()

    def signing_keys(self) -> list[SigningKeyRecord]:
        return [_record(SigningKeyRecord, r) for r in
                self._exec("SELECT * FROM signing_keys ORDER BY activate_at, kid").fetchall()]

    def set_unpublish(self, kid: str, at: datetime) -> None:
        self._exec("UPDATE signing_keys SET unpublish_at = %s WHERE kid = %s", (at, kid))
        self._changed()

    def delete_signing_key(self, kid: str) -> None:
        self._exec("DELETE FROM signing_keys WHERE kid = %s", (kid,))
        self._changed()

    # -- actions pending a second admin (D6) ------------------------------------
    def put_pending(self, rec: PendingAction) -> None:
        self._insert("pending_actions", rec)

    def pending(self, pending_id: str) -> PendingAction | None:
        row = self._exec("SELECT * FROM pending_actions WHERE id = %s",
                         (pending_id,)).fetchone()
        return _record(PendingAction, row) if row else None

    def pending_actions(self, *, status: str | None = None) -> list[PendingAction]:
        sql, args = "SELECT * FROM pending_actions", tuple[str, ...]()
        if status is not None:
            sql, args = sql + " WHERE status = %s", (status,)
        return [_record(PendingAction, r)
                for r in self._exec(sql + " ORDER BY created, id", args).fetchall()]

    def move_pending(self, pending_id: str, from_status: str, rec: PendingAction) -> bool:
        """Store ``rec`` only if the item is still ``from_status`` (one winner
        when two admins decide at once, on any replica)."""
        names = [f.name for f in fields(rec) if f.name != "id"]
        cur = self._exec(
            f"UPDATE pending_actions SET {', '.join(n + ' = %s' for n in names)} "  # noqa: S608
            "WHERE id = %s AND status = %s",
            (*(getattr(rec, n) for n in names), pending_id, from_status))
        return cur.rowcount == 1

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._db.close()
