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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from gateway.state._postgres import CHANNEL

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
_SCHEMA_LOCK = 0x67617465  # the state store's: one schema writer at a time


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


class Heartbeats:
    """The replicas table: each replica writes its row every interval; a row
    older than ``live_within_s`` is a replica that died or lost the database.
    The server's clock decides, so replicas' clocks need not agree."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._db: psycopg.Connection[dict[str, Any]] | None = None
        self._lock = threading.Lock()
        with self._conn() as db, db.transaction():
            db.execute("SET LOCAL lock_timeout = '30s'")
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            db.execute(_SCHEMA)

    def _conn(self) -> psycopg.Connection[dict[str, Any]]:
        if self._db is None or self._db.closed or self._db.broken:
            self._db = _connect(self.dsn)
        return self._db

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

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()


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
