"""The shared state store: PostgreSQL, for a fleet of gateway replicas
(DESIGN.md §6). Same records and the same answers as :class:`SqliteStore`
(tests/state runs one conformance suite against both).

Times are ``timestamptz`` (UTC), flags ``boolean``; every write is one
statement or one transaction, so two replicas racing on the same row get one
winner (``move_pending``, ``revoke_certificate``) and the CRL number never
repeats. The request path reads nothing from here.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import fields
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from gateway.state._records import PrincipalKey
from gateway.state._sql import R, SqlStore

SCHEMA_VERSION = 5
# Every write of what the request path checks is announced on this channel
# (the new change_seq as payload); replicas LISTEN (gateway.state.ChangeListener).
CHANNEL = "gateway_state"
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
CREATE TABLE IF NOT EXISTS crls (
    ca_id text PRIMARY KEY, position integer NOT NULL, pem bytea NOT NULL);
CREATE TABLE IF NOT EXISTS nrn_approvals (
    id text PRIMARY KEY, tenant text NOT NULL, requester text NOT NULL,
    requester_team text NOT NULL, nrn text NOT NULL, purpose text NOT NULL,
    justification text NOT NULL, created timestamptz NOT NULL,
    expires_at timestamptz NOT NULL, status text NOT NULL, approver text,
    decided_at timestamptz);
ALTER TABLE consultations ADD COLUMN IF NOT EXISTS approval text NOT NULL DEFAULT '';
ALTER TABLE consultations ADD COLUMN IF NOT EXISTS approver text NOT NULL DEFAULT '';
CREATE TABLE IF NOT EXISTS lockbox (
    case_id text NOT NULL, tenant text NOT NULL, account text NOT NULL,
    requester text NOT NULL, requester_team text NOT NULL, reason text NOT NULL,
    ticket text NOT NULL, emergency boolean NOT NULL, mode text NOT NULL,
    created timestamptz NOT NULL, expires_at timestamptz, notice text NOT NULL,
    status text NOT NULL, approver text, decided_at timestamptz, decision_reason text,
    review_status text NOT NULL, reviewer text, reviewed_at timestamptz, review_notes text,
    PRIMARY KEY (case_id, tenant));
CREATE INDEX IF NOT EXISTS lockbox_tenant ON lockbox (tenant);
INSERT INTO meta VALUES ('schema_version', '5') ON CONFLICT (key) DO UPDATE SET value = '5';
INSERT INTO counters VALUES ('crl_number', 0) ON CONFLICT DO NOTHING;
INSERT INTO counters VALUES ('change_seq', 0) ON CONFLICT DO NOTHING;
"""
# Two processes creating the schema at once: one at a time (any constant).
SCHEMA_LOCK = 0x67617465  # "gate"

_TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+)")


def ensure_schema(db: psycopg.Connection[dict[str, Any]], ddl: str) -> None:
    """Create the tables of ``ddl`` that are missing, one process at a time.
    When every one is there nothing is written: a data-plane replica whose
    database role may not create tables (deploy: the grants of
    ``gateway.state.data_plane_grants``) starts on a schema the control plane made."""
    tables = _TABLE.findall(ddl)
    row = db.execute("SELECT count(*) AS n FROM unnest(%s::text[]) AS t(name) "
                     "WHERE to_regclass(t.name) IS NOT NULL", (tables,)).fetchone()
    if row is not None and row["n"] == len(tables):
        return
    with db.transaction():
        db.execute("SET LOCAL lock_timeout = '30s'")
        db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        db.execute(ddl.encode())  # our own constant DDL


class PostgresStore(SqlStore):
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._closing = False
        self._db = self._connect()
        self._lock = threading.Lock()
        with self._lock:
            ensure_schema(self._db, _SCHEMA)

    def _connect(self) -> psycopg.Connection[dict[str, Any]]:
        db = psycopg.connect(self.dsn, autocommit=True, row_factory=dict_row)
        db.execute("SET TIME ZONE 'UTC'")
        return db

    def _live(self) -> psycopg.Connection[dict[str, Any]]:
        """The connection, opened again after the server dropped it (a
        restart, a failover): the call that found it broken failed, the next
        one reconnects."""
        if (self._db.broken or self._db.closed) and not self._closing:
            self._db.close()  # the broken one
            self._db = self._connect()
        return self._db

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Cursor[dict[str, Any]]]:
        with self._lock:
            db = self._live()
            with db.transaction(), db.cursor() as cur:
                yield cur

    def schema_version(self) -> int:
        row = self._exec("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert row is not None
        return int(row["value"])

    # -- the hooks of SqlStore -------------------------------------------------------
    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> psycopg.Cursor[dict[str, Any]]:
        # The shared queries use "?"; none has a literal question mark.
        with self._lock:
            return self._live().execute(sql.replace("?", "%s"), args)

    def _record(self, cls: type[R], row: Mapping[str, Any]) -> R:
        return cls(**{f.name: row[f.name] for f in fields(cls)})  # type: ignore[arg-type]

    def _time(self, value: Any) -> datetime:
        assert isinstance(value, datetime)
        return value

    def change_seq(self) -> int:
        row = self._exec("SELECT value FROM counters WHERE name = 'change_seq'").fetchone()
        assert row is not None
        return int(row["value"])

    _BUMP = ("WITH bumped AS (UPDATE counters SET value = value + 1 WHERE name = 'change_seq' "
             "RETURNING value) SELECT value, pg_notify(%s, value::text) FROM bumped")

    def _changed(self) -> None:
        # After the write it announces: a replica that sees the new number
        # also sees the write. NOTIFY wakes the followers at once; it is not
        # durable, so they also poll the number (a missed notification is
        # seen within a cycle).
        with self._lock:
            self._live().execute(self._BUMP, (CHANNEL,))

    def publish_crls(self, crls: Sequence[tuple[str, bytes]]) -> int:
        with self._transaction() as cur:
            cur.execute("DELETE FROM crls")
            cur.executemany("INSERT INTO crls VALUES (%s, %s, %s)",
                            [(ca, i, pem) for i, (ca, pem) in enumerate(crls)])
            cur.execute(self._BUMP, (CHANNEL,))
            row = cur.fetchone()
        assert row is not None
        return int(row["value"])

    # -- what differs in SQL -------------------------------------------------------
    def record_last_seen(self, seen: dict[PrincipalKey, datetime]) -> None:
        with self._transaction() as cur:
            cur.executemany(
                "INSERT INTO last_seen VALUES (%s, %s, %s, %s) ON CONFLICT (tenant, kind, name) "
                "DO UPDATE SET at = GREATEST(last_seen.at, excluded.at)",
                [(*key, at) for key, at in seen.items()])

    def next_crl_number(self) -> int:
        """RFC 5280 §5.2.3: monotonically increasing, also across replicas."""
        row = self._exec("UPDATE counters SET value = value + 1 WHERE name = 'crl_number' "
                         "RETURNING value").fetchone()
        assert row is not None
        return int(row["value"])

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._db.close()
