"""The durable, encrypted outbox of pushed data (D5, D10).

A *part* is one tenant's share of one batch. It waits here, encrypted with
AES-256-GCM under the outbox data key (kept in the vault; the part id is the
associated data, so a part cannot be swapped for another), until its
receiver acknowledges it. Then the payload is deleted (``secure_delete``
zeroes the freed pages): the gateway keeps no meter data, only counts.
Retries back off exponentially with jitter; a part the receiver refuses for
good, or that keeps failing, becomes a dead letter, visible to ops, never
silently dropped.

Batch ids are a namespace per source system (D1): a batch is keyed by
``(source, batch_id)`` and a part id (the receiver's idempotency key) is
``<source>/<batch id>/<tenant>``, so one system can never occupy or block
another's ids. An outbox written before (schema version 0, batches keyed by
their id alone) is migrated in place on open, in one transaction; its parts
keep their ids.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SCHEMA_VERSION = 1  # PRAGMA user_version
_BATCHES = """CREATE TABLE batches (
    batch_id TEXT NOT NULL, source TEXT NOT NULL, fingerprint TEXT NOT NULL,
    received INTEGER NOT NULL, quarantined INTEGER NOT NULL, created TEXT NOT NULL,
    PRIMARY KEY (source, batch_id))"""
_PARTS = """CREATE TABLE parts (
    id TEXT PRIMARY KEY, batch_id TEXT NOT NULL, tenant TEXT NOT NULL, kind TEXT NOT NULL,
    records INTEGER NOT NULL, created TEXT NOT NULL, status TEXT NOT NULL,
    attempts INTEGER NOT NULL, next_attempt_at TEXT NOT NULL, last_error TEXT,
    nonce BLOB, payload BLOB, done_at TEXT, source TEXT)"""
_INDEXES = ("CREATE INDEX IF NOT EXISTS parts_queue ON parts (tenant, status, created)",
            "CREATE INDEX IF NOT EXISTS parts_batch ON parts (source, batch_id, tenant)")
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


def part_key(source: str, batch_id: str, tenant: str) -> str:
    """A part's id and idempotency key: unique across source systems (D1)."""
    return f"{source}/{batch_id}/{tenant}"


@dataclass(frozen=True, slots=True)
class Part:
    id: str  # also the idempotency key the receiver sees
    batch_id: str
    tenant: str
    kind: str  # "hes-readings" | "cmh-request" | "cmh-status"
    records: int
    created: datetime
    status: str  # pending | delivered | dead
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    source: str = ""  # the pushing system (tenant id)


@dataclass(frozen=True, slots=True)
class EncodedPart:
    id: str
    tenant: str
    kind: str
    records: int  # what the queue bound and the metrics count (readings)
    body: bytes  # the records as one JSON array


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base: timedelta = timedelta(seconds=1)
    cap: timedelta = timedelta(minutes=10)
    max_attempts: int = 12  # then: dead letter

    def delay(self, attempts: int, rnd: Callable[[], float] = random.random) -> timedelta:
        """Exponential backoff with jitter in [0.5, 1.5) of the step."""
        step: timedelta = min(self.base * (2 ** max(attempts - 1, 0)), self.cap)
        return step * (0.5 + rnd())


def _t(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds")


class Outbox:
    def __init__(self, path: Path, data_key: bytes, *,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # SECURITY: encrypted payloads, but tenant ids and counts: owner-only (0600),
        # also for a file an older version left wider; SQLite gives its WAL and
        # shared-memory files the database file's mode.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
            if (path.parent / name).exists():
                os.chmod(path.parent / name, 0o600)
        self._aead = AESGCM(data_key)
        self.clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
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
            if db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
                db.execute("COMMIT")  # another process (a worker) migrated it meanwhile
                return
            old = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                             "name = 'batches'").fetchone() is not None
            for statement in (_MIGRATE_V0 if old else (_BATCHES, _PARTS)):
                db.execute(statement)
            for statement in _INDEXES:
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # -- intake ----------------------------------------------------------------
    def batch(self, batch_id: str, source: str | None = None) -> sqlite3.Row | None:
        """The batch ``batch_id`` of ``source``: another source's is another batch.
        Without ``source`` (ops, tests), any source's batch of that id."""
        with self._lock:
            if source is None:
                row: sqlite3.Row | None = self._db.execute(
                    "SELECT * FROM batches WHERE batch_id = ? ORDER BY created LIMIT 1",
                    (batch_id,)).fetchone()
            else:
                row = self._db.execute(
                    "SELECT * FROM batches WHERE source = ? AND batch_id = ?",
                    (source, batch_id)).fetchone()
            return row

    def part_of(self, source: str, batch_id: str, tenant: str) -> tuple[str, str] | None:
        """``(part id, status)`` of a tenant's part of a batch, whatever the id's form."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, status FROM parts WHERE source = ? AND batch_id = ? AND tenant = ?",
                (source, batch_id, tenant)).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def enqueue(self, *, batch_id: str, source: str, fingerprint: str, received: int,
                quarantined: int, parts: Sequence[tuple[str, str, str, Sequence[Any]]]) -> None:
        """Store the batch and its parts ``(part_id, tenant, kind, records)`` in one
        transaction: all of them are durable, or none."""
        self.enqueue_encoded(
            batch_id=batch_id, source=source, fingerprint=fingerprint, received=received,
            quarantined=quarantined,
            parts=[EncodedPart(part_id, tenant, kind, len(records),
                               json.dumps(list(records)).encode())
                   for part_id, tenant, kind, records in parts])

    def enqueue_encoded(self, *, batch_id: str, source: str, fingerprint: str, received: int,
                        quarantined: int, parts: Sequence[EncodedPart]) -> None:
        """Like :meth:`enqueue`, with each part's records already encoded as one
        JSON array: they are encrypted and stored as they are, and delivered so."""
        now = self.clock()
        rows = []
        for part in parts:
            nonce = os.urandom(12)
            payload = self._aead.encrypt(nonce, part.body, part.id.encode())
            rows.append((part.id, batch_id, part.tenant, part.kind, part.records, _t(now),
                         "pending", 0, _t(now), None, nonce, payload, None, source))
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT OR IGNORE INTO batches (batch_id, source, fingerprint, received, "
                    "quarantined, created) VALUES (?, ?, ?, ?, ?, ?)",
                    (batch_id, source, fingerprint, received, quarantined, _t(now)))
                self._db.executemany(
                    "INSERT OR IGNORE INTO parts (id, batch_id, tenant, kind, records, created, "
                    "status, attempts, next_attempt_at, last_error, nonce, payload, done_at, "
                    "source) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # -- delivery ----------------------------------------------------------------
    def due(self, tenant: str, limit: int = 16) -> list[Part]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM parts WHERE tenant = ? AND status = 'pending' AND "
                "next_attempt_at <= ? ORDER BY created, id LIMIT ?",
                (tenant, _t(self.clock()), limit)).fetchall()
        return [_part(r) for r in rows]

    def payload(self, part: Part) -> list[Any]:
        records: list[Any] = json.loads(self.payload_bytes(part))
        return records

    def payload_bytes(self, part: Part) -> bytes:
        """The part's records as stored: one JSON array, decrypted, not parsed."""
        with self._lock:
            row = self._db.execute("SELECT nonce, payload FROM parts WHERE id = ?",
                                   (part.id,)).fetchone()
        if row is None or row["payload"] is None:
            raise KeyError(part.id)
        return self._aead.decrypt(row["nonce"], row["payload"], part.id.encode())

    def acknowledged(self, part_id: str) -> None:
        """Delivered: the payload goes; the counts stay (D10)."""
        with self._lock:
            self._db.execute("UPDATE parts SET status = 'delivered', payload = NULL, "
                             "nonce = NULL, done_at = ? WHERE id = ?",
                             (_t(self.clock()), part_id))

    def failed(self, part: Part, error: str, policy: RetryPolicy, *, permanent: bool) -> str:
        """Schedule the next attempt, or make it a dead letter. Returns the status."""
        attempts = part.attempts + 1
        dead = permanent or attempts >= policy.max_attempts
        when = self.clock() + policy.delay(attempts)
        with self._lock:
            self._db.execute(
                "UPDATE parts SET attempts = ?, last_error = ?, next_attempt_at = ?, "
                "status = ? WHERE id = ?",
                (attempts, error[:200], _t(when), "dead" if dead else "pending", part.id))
        return "dead" if dead else "pending"

    def requeue_dead(self, part_id: str) -> bool:
        """Ops decided the receiver is fixed: try a dead letter again."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE parts SET status = 'pending', attempts = 0, next_attempt_at = ? "
                "WHERE id = ? AND status = 'dead' AND payload IS NOT NULL",
                (_t(self.clock()), part_id))
        return cur.rowcount == 1

    # -- for ops ---------------------------------------------------------------
    def stats(self) -> dict[str, tuple[int, float, int]]:
        """tenant -> (pending parts, oldest pending age in s, dead letters)."""
        now = self.clock()
        with self._lock:
            rows = self._db.execute(
                "SELECT tenant, status, count(*) AS n, min(created) AS oldest FROM parts "
                "WHERE status IN ('pending', 'dead') GROUP BY tenant, status").fetchall()
        out: dict[str, tuple[int, float, int]] = {}
        for r in rows:
            pending, age, dead = out.get(r["tenant"], (0, 0.0, 0))
            if r["status"] == "pending":
                pending = r["n"]
                age = (now - datetime.fromisoformat(r["oldest"])).total_seconds()
            else:
                dead = r["n"]
            out[r["tenant"]] = (pending, age, dead)
        return out

    def pending_records(self, tenant: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT coalesce(sum(records), 0) FROM parts WHERE "
                                   "tenant = ? AND status = 'pending'", (tenant,)).fetchone()
        return int(row[0])

    def parts(self, *, status: str | None = None) -> list[Part]:
        sql, args = "SELECT * FROM parts", tuple[str, ...]()
        if status is not None:
            sql, args = sql + " WHERE status = ?", (status,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY created, id", args).fetchall()
        return [_part(r) for r in rows]

    def tenants_pending(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT tenant FROM parts WHERE status = "
                                    "'pending'").fetchall()
        return [str(r[0]) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()


def _part(r: sqlite3.Row) -> Part:
    return Part(r["id"], r["batch_id"], r["tenant"], r["kind"], r["records"],
                datetime.fromisoformat(r["created"]), r["status"], r["attempts"],
                datetime.fromisoformat(r["next_attempt_at"]), r["last_error"],
                r["source"] or "")
