"""What replicas of a fleet share besides the state itself, in PostgreSQL:
who is alive (a heartbeat table), who runs the control duties (an advisory
lock) and when the state changed (LISTEN on the channel every write of what
the request path checks is announced on).

Each holds a connection of its own: a leader's lock lives exactly as long as
its session, and a listener must not share a connection with queries. All
calls block; the server runs them in worker threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from gateway.state._postgres import CHANNEL, ensure_schema

log = logging.getLogger("gateway.state")

# The advisory lock the active control plane holds (any constant, apart from
# the schema lock's).
CONTROL_LOCK = 0x636F6E74  # "cont"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS replicas (
    id text PRIMARY KEY, role text NOT NULL, host text NOT NULL, pid integer NOT NULL,
    data text, ops text, admin text, started_at timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL, draining boolean NOT NULL DEFAULT false,
    leader boolean NOT NULL DEFAULT false);
"""


def _connect(dsn: str) -> psycopg.Connection[dict[str, Any]]:
    db = psycopg.connect(dsn, autocommit=True, row_factory=dict_row, connect_timeout=5)
    db.execute("SET TIME ZONE 'UTC'")
    return db


@dataclass(frozen=True, slots=True)
class Replica:
    id: str
    role: str
    host: str
    pid: int
    data: str | None
    ops: str | None
    admin: str | None
    started_at: datetime
    heartbeat_at: datetime
    draining: bool
    leader: bool
    age_s: float  # since its last heartbeat, by the server's clock


class _Tables:
    """Tables of their own in the shared database, on a connection of their
    own (opened again after the server dropped it), created where missing."""

    SCHEMA = ""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._db: psycopg.Connection[dict[str, Any]] | None = None
        self._lock = threading.Lock()
        with self._lock:
            ensure_schema(self._conn(), self.SCHEMA)

    def _conn(self) -> psycopg.Connection[dict[str, Any]]:
        if self._db is None or self._db.closed or self._db.broken:
            if self._db is not None:
                self._db.close()  # the broken one
            self._db = _connect(self.dsn)
        return self._db

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self._lock:
            return self._conn().execute(sql, args).fetchall()

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()


class Heartbeats(_Tables):
    """The replicas table: each replica writes its row every interval; a row
    older than ``live_within_s`` is a replica that died or lost the database.
    The server's clock decides, so replicas' clocks need not agree."""

    SCHEMA = _SCHEMA

    def beat(self, *, replica_id: str, role: str, host: str, pid: int, data: str | None,
             ops: str | None, admin: str | None, draining: bool, leader: bool) -> None:
        with self._lock:
            self._conn().execute(
                "INSERT INTO replicas (id, role, host, pid, data, ops, admin, started_at, "
                "heartbeat_at, draining, leader) VALUES (%s, %s, %s, %s, %s, %s, %s, now(), "
                "now(), %s, %s) ON CONFLICT (id) DO UPDATE SET role = excluded.role, "
                "host = excluded.host, pid = excluded.pid, data = excluded.data, "
                "ops = excluded.ops, admin = excluded.admin, heartbeat_at = now(), "
                "draining = excluded.draining, leader = excluded.leader, started_at = "
                "CASE WHEN replicas.pid = excluded.pid THEN replicas.started_at ELSE now() END",
                (replica_id, role, host, pid, data, ops, admin, draining, leader))

    def replicas(self) -> list[Replica]:
        with self._lock:
            rows = self._conn().execute(
                "SELECT *, EXTRACT(EPOCH FROM now() - heartbeat_at)::float8 AS age_s "
                "FROM replicas ORDER BY id").fetchall()
        return [Replica(**r) for r in rows]

    def live_data_replicas(self, live_within_s: float) -> int:
        """Replicas serving the data plane now: a fresh heartbeat, not draining."""
        with self._lock:
            row = self._conn().execute(
                "SELECT count(*) AS n FROM replicas WHERE role IN ('all', 'data') AND "
                "NOT draining AND heartbeat_at > now() - make_interval(secs => %s)",
                (live_within_s,)).fetchone()
        assert row is not None
        return int(row["n"])

    def forget(self, replica_id: str) -> None:
        """A replica that stopped cleanly leaves the table at once."""
        with self._lock:
            self._conn().execute("DELETE FROM replicas WHERE id = %s", (replica_id,))


class LeaderLock:
    """The control duties run on one process of the fleet: the one holding a
    session-level advisory lock. The lock goes with the session, so a holder
    that dies or loses its connection frees it, and a standby's next
    :meth:`poll` takes it."""

    def __init__(self, dsn: str, key: int = CONTROL_LOCK) -> None:
        self.dsn = dsn
        self.key = key
        self._db: psycopg.Connection[dict[str, Any]] | None = None
        self.held = False

    def poll(self) -> bool:
        """Whether this process leads now: keep the lock (the session still
        answers) or try to take it. A broken session loses it."""
        try:
            if self._db is None or self._db.closed or self._db.broken:
                self.held = False
                if self._db is not None:
                    self._db.close()  # the broken one
                self._db = _connect(self.dsn)
            if self.held:
                self._db.execute("SELECT 1")
            else:
                row = self._db.execute("SELECT pg_try_advisory_lock(%s) AS ok",
                                       (self.key,)).fetchone()
                self.held = bool(row and row["ok"])
        except psycopg.Error:
            log.warning("control-plane lock: the database is not reachable")
            self.held = False
            if self._db is not None:
                self._db.close()
        return self.held

    def release(self) -> None:
        if self._db is not None and not self._db.closed:
            try:
                if self.held:
                    self._db.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
            except psycopg.Error:
                pass
            self._db.close()
        self.held = False


class ChangeListener:
    """A thread that LISTENs on the state channel and calls ``on_change``
    for every notification, and after every (re)connect: notifications sent
    while it was away are lost (NOTIFY is not durable), so it reports a
    change it may have missed. ``on_change`` must be cheap and thread-safe
    (the server's wakes its loop)."""

    def __init__(self, dsn: str, on_change: Callable[[], None], *,
                 retry_s: float = 0.5) -> None:
        self.dsn = dsn
        self.on_change = on_change
        self.retry_s = retry_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gateway-state-listener",
                                        daemon=True)
        self.connected = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with _connect(self.dsn) as db:
                    db.execute(f"LISTEN {CHANNEL}")
                    self.connected.set()
                    self.on_change()
                    while not self._stop.is_set():
                        # A short timeout: stop() is seen within it.
                        for _ in db.notifies(timeout=0.5, stop_after=64):
                            self.on_change()
                            break
            except psycopg.Error as exc:
                self.connected.clear()
                if not self._stop.is_set():
                    log.warning("state listener: connection lost (%s); reconnecting", exc)
                    time.sleep(self.retry_s)
        self.connected.clear()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


_AUDIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_lines (
    replica text NOT NULL, seq bigint NOT NULL, line bytea NOT NULL,
    PRIMARY KEY (replica, seq));
CREATE TABLE IF NOT EXISTS audit_keys (
    replica text NOT NULL, kid text NOT NULL, jwk text NOT NULL, PRIMARY KEY (replica, kid));
CREATE TABLE IF NOT EXISTS fleet_checkpoints (n bigint PRIMARY KEY, record bytea NOT NULL);
"""


class AuditTables(_Tables):
    """The fleet's audit trail in PostgreSQL: every replica's chain, line for
    line as its local file holds it (shipped after the write, so the local
    file keeps "no trace, no answer" at its latency), the public keys of
    their checkpoints, and the fleet checkpoints the control plane signs
    over all replicas' heads (docs/audit-format.md §13). Bytes in, bytes
    out: what a line means is the audit package's business."""

    SCHEMA = _AUDIT_SCHEMA

    # -- replica chains ------------------------------------------------------------
    def shipped_seq(self, replica: str) -> int:
        """The highest seq of ``replica`` already here (0: none)."""
        rows = self._rows("SELECT coalesce(max(seq), 0) AS seq FROM audit_lines "
                          "WHERE replica = %s", (replica,))
        return int(rows[0]["seq"])

    def ship(self, replica: str, lines: list[tuple[int, bytes]]) -> None:
        """Store lines (seq, bytes); a line already shipped is kept as it was."""
        if not lines:
            return
        with self._lock:
            db = self._conn()
            with db.transaction(), db.cursor() as cur:
                cur.executemany("INSERT INTO audit_lines VALUES (%s, %s, %s) "
                                "ON CONFLICT (replica, seq) DO NOTHING",
                                [(replica, seq, line) for seq, line in lines])

    def replicas(self) -> list[str]:
        """Every replica with a chain or a published key."""
        rows = self._rows("SELECT replica FROM audit_lines GROUP BY replica UNION "
                          "SELECT replica FROM audit_keys ORDER BY replica")
        return [r["replica"] for r in rows]

    def lines(self, replica: str, *, after: int = 0,
              batch: int = 10_000) -> Iterator[tuple[int, bytes]]:
        """``replica``'s lines in seq order, read in batches."""
        while True:
            rows = self._rows("SELECT seq, line FROM audit_lines WHERE replica = %s AND "
                              "seq > %s ORDER BY seq LIMIT %s", (replica, after, batch))
            for r in rows:
                yield int(r["seq"]), bytes(r["line"])
            if len(rows) < batch:
                return
            after = int(rows[-1]["seq"])

    def heads(self) -> dict[str, tuple[int, bytes]]:
        """Each replica's last shipped line: (seq, bytes)."""
        rows = self._rows("SELECT DISTINCT ON (replica) replica, seq, line FROM audit_lines "
                          "ORDER BY replica, seq DESC")
        return {r["replica"]: (int(r["seq"]), bytes(r["line"])) for r in rows}

    # -- keys ------------------------------------------------------------------------
    def publish_key(self, replica: str, kid: str, jwk: str) -> None:
        self._rows("INSERT INTO audit_keys VALUES (%s, %s, %s) ON CONFLICT (replica, kid) "
                   "DO UPDATE SET jwk = excluded.jwk RETURNING kid", (replica, kid, jwk))

    def published_keys(self) -> list[tuple[str, str, str]]:
        """(replica, kid, JWK as JSON text) of every published key."""
        rows = self._rows("SELECT replica, kid, jwk FROM audit_keys ORDER BY replica, kid")
        return [(r["replica"], r["kid"], r["jwk"]) for r in rows]

    # -- fleet checkpoints ---------------------------------------------------------
    def add_fleet_checkpoint(self, n: int, record: bytes) -> bool:
        """Store fleet checkpoint ``n``; False when another signer stored it first."""
        rows = self._rows("INSERT INTO fleet_checkpoints VALUES (%s, %s) "
                          "ON CONFLICT (n) DO NOTHING RETURNING n", (n, record))
        return bool(rows)

    def fleet_checkpoints(self) -> list[tuple[int, bytes]]:
        rows = self._rows("SELECT n, record FROM fleet_checkpoints ORDER BY n")
        return [(int(r["n"]), bytes(r["record"])) for r in rows]

    def latest_fleet_checkpoint(self) -> tuple[int, bytes] | None:
        rows = self._rows("SELECT n, record FROM fleet_checkpoints ORDER BY n DESC LIMIT 1")
        return (int(rows[0]["n"]), bytes(rows[0]["record"])) if rows else None


_RELATIONS_SCHEMA = """
CREATE TABLE IF NOT EXISTS relation_snapshots (
    digest text PRIMARY KEY, body bytea NOT NULL, relations bigint NOT NULL,
    published_at timestamptz NOT NULL);
CREATE TABLE IF NOT EXISTS relation_pointer (
    one boolean PRIMARY KEY DEFAULT true CHECK (one), digest text NOT NULL
    REFERENCES relation_snapshots (digest), published_at timestamptz NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class RelationPointer:
    digest: str  # SHA-256 of the snapshot's bytes, lowercase hex
    relations: int
    age_s: float  # since it was published, by the server's clock


class RelationPublication(_Tables):
    """The relation snapshot the fleet decides with: immutable snapshots by
    their SHA-256 (content-addressed) and one pointer to the live one. The
    control plane publishes; replicas read the pointer each cycle and fetch a
    snapshot they do not have (the channel also wakes them at once)."""

    SCHEMA = _RELATIONS_SCHEMA

    def publish(self, digest: str, body: bytes, relations: int) -> bool:
        """Make ``body`` (whose SHA-256 is ``digest``) the live snapshot; False
        when it already was."""
        with self._lock:
            db = self._conn()
            with db.transaction():
                row = db.execute("SELECT digest FROM relation_pointer").fetchone()
                if row is not None and row["digest"] == digest:
                    return False
                db.execute("INSERT INTO relation_snapshots VALUES (%s, %s, %s, now()) "
                           "ON CONFLICT (digest) DO NOTHING", (digest, body, relations))
                db.execute("INSERT INTO relation_pointer VALUES (true, %s, now()) ON CONFLICT "
                           "(one) DO UPDATE SET digest = excluded.digest, published_at = now()",
                           (digest,))
                # Older snapshots no replica points at any more go.
                db.execute("DELETE FROM relation_snapshots WHERE digest <> %s", (digest,))
                db.execute("SELECT pg_notify(%s, 'relations')", (CHANNEL,))
        return True

    def pointer(self) -> RelationPointer | None:
        with self._lock:
            row = self._conn().execute(
                "SELECT p.digest, s.relations, EXTRACT(EPOCH FROM now() - p.published_at)"
                "::float8 AS age_s FROM relation_pointer p JOIN relation_snapshots s "
                "USING (digest)").fetchone()
        return None if row is None else RelationPointer(row["digest"], int(row["relations"]),
                                                        float(row["age_s"]))

    def fetch(self, digest: str) -> bytes | None:
        with self._lock:
            row = self._conn().execute("SELECT body FROM relation_snapshots WHERE digest = %s",
                                       (digest,)).fetchone()
        return None if row is None else bytes(row["body"])
