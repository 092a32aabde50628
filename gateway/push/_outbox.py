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

One set of queries (:class:`Outbox`), two backends (``_outbox_backends``):
the SQLite file of one process, where the payloads have a table of their own
(:attr:`Outbox.PAYLOADS`), and PostgreSQL for a fleet, where they stay in
the part's row and replicas compete for the parts. A replica
**claims** due parts (``FOR UPDATE SKIP LOCKED``: two replicas never claim
the same part) under a **lease** (an owner, a token and an expiry); it
renews the lease before each delivery, and an acknowledgement or a failure
counts only while the owner and the token are still the part's (**fencing**): a replica
that lost its lease (it stalled, or it was killed and another one took the
part over after the expiry) changes nothing. Delivery is at least once, and
always under the part's own id as ``Idempotency-Key``, never a second key
for one part.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.clock import utc_now
from gateway.push._parts import DeadLetter, EncodedPart, Part, RetryPolicy, part_key

_PART_COLUMNS = ("id, batch_id, tenant, kind, records, created, status, attempts, "
                 "next_attempt_at, last_error, nonce, payload, done_at, source")
# The same without the payload, where it has a table of its own (Outbox.PAYLOADS).
_ROW_COLUMNS = _PART_COLUMNS.replace("nonce, payload, ", "")
# What a Part is read from: never the payload (a megabyte a part, copied out
# of the database for nothing, and in PostgreSQL detoasted), which
# payload_bytes reads on its own.
_PART_FIELDS = ("id, batch_id, tenant, kind, records, created, status, attempts, "
                "next_attempt_at, last_error, source")


class Outbox(ABC):
    """The outbox's verbs, written once with ``?`` placeholders; a backend
    says how a statement runs, how a transaction and a claim's row lock are
    taken, and how times are stored."""

    BATCHES = "batches"
    PARTS = "parts"
    NOTIFICATIONS = "notifications"
    SKIP_LOCKED = ""  # the claim's row lock: "" where one process is the only claimer
    # Where a part's encrypted records are kept: a table of their own
    # (id, nonce, payload), or None for the part's own row. SQLite rewrites a
    # whole row on every UPDATE, overflow pages and all (a megabyte a part
    # for each claim, lease or status change); PostgreSQL keeps a large value
    # out of line and carries it over unchanged.
    PAYLOADS: str | None = None

    def __init__(self, data_key: bytes | None, *, owner: str = "",
                 clock: Callable[[], datetime] = utc_now) -> None:
        # None: a handle that neither stores nor reads a payload (retention
        # erases payloads and reports on counts and times; it needs no key).
        self._aead = None if data_key is None else AESGCM(data_key)
        self.owner = owner or f"pid-{os.getpid()}"
        self.clock = clock
        self._lock = threading.Lock()

    # -- the backend's hooks (called with ``_lock`` held) ----------------------------
    @abstractmethod
    def _exec(self, sql: str, args: Sequence[Any] = ()) -> Any:
        """Run one statement; a cursor (rowcount, fetchone, fetchall by name)."""

    @abstractmethod
    def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement for each of ``rows``."""

    def _insert_parts(self, rows: Sequence[Sequence[Any]]) -> None:
        """Store parts ``(id, ..., nonce, payload, done_at, source)`` in the
        order of :data:`_PART_COLUMNS`, a part already stored left as it is
        (its payload too: a delivered part's stays gone)."""
        insert = (f"INSERT INTO {self.PARTS} ({_PART_COLUMNS}) VALUES "
                  "(?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING")
        if self.PAYLOADS is None:
            self._many(insert, rows)
            return
        insert = (f"INSERT INTO {self.PARTS} ({_ROW_COLUMNS}) VALUES "
                  "(?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING")
        for row in rows:  # the nonce and the payload are the 11th and 12th
            if self._exec(insert, (*row[:10], *row[12:])).rowcount == 1:
                self._exec(f"INSERT INTO {self.PAYLOADS} (id, nonce, payload) VALUES (?, ?, ?)",
                           (row[0], row[10], row[11]))

    @property
    def _kept(self) -> str:
        """SQL: the part (a row of PARTS) still holds its payload."""
        if self.PAYLOADS is None:
            return "payload IS NOT NULL"
        return f"id IN (SELECT id FROM {self.PAYLOADS})"

    @abstractmethod
    def _transaction(self) -> Any:
        """A context manager: one write transaction."""

    @abstractmethod
    def _t(self, at: datetime) -> Any:
        """A time as stored."""

    @abstractmethod
    def _time(self, value: Any) -> datetime:
        """A stored time as an aware datetime."""

    def _part(self, r: Mapping[str, Any], *, lease: str | None = None,
              reclaimed: bool = False) -> Part:
        return Part(r["id"], r["batch_id"], r["tenant"], r["kind"], int(r["records"]),
                    self._time(r["created"]), r["status"], int(r["attempts"]),
                    self._time(r["next_attempt_at"]), r["last_error"], r["source"] or "",
                    lease, reclaimed)

    # -- intake ----------------------------------------------------------------
    def batch(self, batch_id: str, source: str | None = None) -> dict[str, Any] | None:
        """The batch ``batch_id`` of ``source``: another source's is another batch.
        Without ``source`` (ops, tests), any source's batch of that id."""
        with self._lock:
            if source is None:
                row = self._exec(f"SELECT * FROM {self.BATCHES} WHERE batch_id = ? "
                                 "ORDER BY created LIMIT 1", (batch_id,)).fetchone()
            else:
                row = self._exec(f"SELECT * FROM {self.BATCHES} WHERE source = ? AND "
                                 "batch_id = ?", (source, batch_id)).fetchone()
        return None if row is None else dict(row)

    def part_of(self, source: str, batch_id: str, tenant: str) -> tuple[str, str] | None:
        """``(part id, status)`` of a tenant's part of a batch, whatever the id's form."""
        with self._lock:
            row = self._exec(f"SELECT id, status FROM {self.PARTS} WHERE source = ? AND "
                             "batch_id = ? AND tenant = ?", (source, batch_id, tenant)).fetchone()
        return None if row is None else (str(row["id"]), str(row["status"]))

    def enqueue(self, *, batch_id: str, source: str, fingerprint: str, received: int,
                quarantined: int, parts: Sequence[tuple[str, str, str, Sequence[Any]]],
                existing: bool = False) -> bool:
        """Store the batch and its parts ``(part_id, tenant, kind, records)`` in one
        transaction: all of them are durable, or none. False: see
        :meth:`enqueue_encoded`."""
        return self.enqueue_encoded(
            batch_id=batch_id, source=source, fingerprint=fingerprint, received=received,
            quarantined=quarantined,
            parts=[EncodedPart(part_id, tenant, kind, len(records),
                               json.dumps(list(records)).encode())
                   for part_id, tenant, kind, records in parts],
            existing=existing)

    def enqueue_encoded(self, *, batch_id: str, source: str, fingerprint: str, received: int,
                        quarantined: int, parts: Sequence[EncodedPart],
                        existing: bool = False) -> bool:
        """Like :meth:`enqueue`, with each part's records already encoded as one
        JSON array: they are encrypted and stored as they are, and delivered so.

        The unique key ``(source, batch_id)`` decides which of two pushes of one
        batch id (to two replicas at once) is stored: the batch found stored
        already when this call meant to store a new one (``existing`` False)
        makes it store nothing and return False, so the caller answers as for
        a re-post (the stored content decides: the same, or 409). With
        ``existing`` (a re-post storing parts refused before), the batch is
        kept as it is and the parts not stored yet are added."""
        now = self._t(self.clock())
        rows = []
        if self._aead is None:
            raise RuntimeError("this outbox handle has no data key: it stores nothing")
        for part in parts:
            nonce = os.urandom(12)
            payload = self._aead.encrypt(nonce, part.body, part.id.encode())
            rows.append((part.id, batch_id, part.tenant, part.kind, part.records, now,
                         "pending", 0, now, None, nonce, payload, None, source))
        with self._lock, self._transaction():
            cur = self._exec(
                f"INSERT INTO {self.BATCHES} (batch_id, source, fingerprint, received, "
                "quarantined, created) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (batch_id, source, fingerprint, received, quarantined, now))
            if cur.rowcount != 1 and not existing:
                return False  # another push of this batch id was stored first
            self._insert_parts(rows)
        return True

    # -- breach notifications --------------------------------------------------------
    def enqueue_notifications(self, *, incident: str, source: str,
                              notices: Sequence[tuple[str, str, EncodedPart | None]]) -> bool:
        """Store one incident's notifications ``(tenant, document, part)``: the
        document its owner reads (``GET /notifications``) and the part that
        delivers it (None: the tenant has no receiver), in one transaction.
        Exactly once per incident: the batch ``(source, incident)`` is stored
        by the first call only; a second one (the same incident processed
        again, on this replica or another) stores nothing and returns False.
        Each owner's row is unique too (``(incident, tenant)``)."""
        now = self._t(self.clock())
        aead = self._aead
        if aead is None:
            raise RuntimeError("this outbox handle has no data key: it stores nothing")
        with self._lock, self._transaction():
            cur = self._exec(
                f"INSERT INTO {self.BATCHES} (batch_id, source, fingerprint, received, "
                "quarantined, created) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (incident, source, incident, len(notices), 0, now))
            if cur.rowcount != 1:
                return False
            for tenant, document, part in notices:
                self._exec(f"INSERT INTO {self.NOTIFICATIONS} (incident, tenant, created, "
                           "document) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                           (incident, tenant, now, document))
                if part is None:
                    continue
                nonce = os.urandom(12)
                payload = aead.encrypt(nonce, part.body, part.id.encode())
                self._insert_parts([(part.id, incident, part.tenant, part.kind, part.records,
                                     now, "pending", 0, now, None, nonce, payload, None,
                                     source)])
        return True

    def notifications(self, tenant: str, limit: int) -> list[str]:
        """The newest ``limit`` notification documents of ``tenant`` (JSON
        texts), newest first; never another tenant's."""
        with self._lock:
            rows = self._exec(
                f"SELECT document FROM {self.NOTIFICATIONS} WHERE tenant = ? "
                "ORDER BY created DESC, incident DESC LIMIT ?", (tenant, limit)).fetchall()
        return [str(r["document"]) for r in rows]

    def notification_span(self, before: datetime | None = None) -> tuple[int, datetime | None]:
        """How many notifications are kept (created at or before ``before``,
        if given), and the oldest one's moment: for retention."""
        where, args = ("", ()) if before is None else ("WHERE created <= ?", (self._t(before),))
        with self._lock:
            row = self._exec(f"SELECT count(*) AS n, min(created) AS oldest FROM "
                             f"{self.NOTIFICATIONS} {where}", args).fetchone()
        oldest = None if row["oldest"] is None else self._time(row["oldest"])
        return int(row["n"]), oldest

    def delete_notifications(self, before: datetime) -> int:
        """Delete the notifications created at or before ``before`` (their
        deliveries are parts of their own, done or dead by then); the
        incident's batch row stays, so an incident processed again still
        notifies nobody twice. Returns how many went."""
        with self._lock, self._transaction():
            cur = self._exec(f"DELETE FROM {self.NOTIFICATIONS} WHERE created <= ?",
                             (self._t(before),))
        return int(cur.rowcount)

    # -- delivery ----------------------------------------------------------------
    def due(self, tenant: str, limit: int = 16) -> list[Part]:
        """The parts waiting for their next attempt (read only: ops, tests)."""
        with self._lock:
            rows = self._exec(
                f"SELECT {_PART_FIELDS} FROM {self.PARTS} WHERE tenant = ? AND "
                "status = 'pending' AND next_attempt_at <= ? ORDER BY created, id LIMIT ?",
                (tenant, self._t(self.clock()), limit)).fetchall()
        return [self._part(r) for r in rows]

    def claim(self, tenant: str, limit: int = 4,
              lease: timedelta = timedelta(seconds=60)) -> list[Part]:
        """Take up to ``limit`` due parts of ``tenant`` for this owner, under a
        lease until now + ``lease``: parts another owner holds under a live
        lease are skipped (their rows are locked or their lease runs), and a
        part whose lease ran out is taken over (``reclaimed``)."""
        now = self.clock()
        token = uuid.uuid4().hex
        with self._lock, self._transaction():
            rows = self._exec(
                f"SELECT id, lease_owner FROM {self.PARTS} WHERE tenant = ? AND "
                "status = 'pending' AND next_attempt_at <= ? AND (lease_until IS NULL OR "
                f"lease_until <= ?) ORDER BY created, id LIMIT ?{self.SKIP_LOCKED}",
                (tenant, self._t(now), self._t(now), limit)).fetchall()
            if not rows:
                return []
            previous = {r["id"]: r["lease_owner"] for r in rows}
            self._many(f"UPDATE {self.PARTS} SET lease_owner = ?, lease_token = ?, "
                       "lease_until = ? WHERE id = ?",
                       [(self.owner, token, self._t(now + lease), part_id)
                        for part_id in previous])
            # By id (the primary key), not a scan of every part for the token.
            marks = ", ".join("?" * len(previous))
            claimed = self._exec(
                f"SELECT {_PART_FIELDS} FROM {self.PARTS} WHERE id IN ({marks}) AND "
                "lease_token = ? ORDER BY created, id", (*previous, token)).fetchall()
        return [self._part(r, lease=token, reclaimed=previous[r["id"]] is not None)
                for r in claimed]

    def release_mine(self) -> int:
        """At start: the leases this owner held before it stopped (or was
        killed) are let go, so its parts are due again at once rather than
        when the leases run out. (Replica ids are unique in a fleet.)"""
        with self._lock:
            cur = self._exec(f"UPDATE {self.PARTS} SET lease_owner = NULL, lease_token = NULL, "
                             "lease_until = NULL WHERE lease_owner = ? AND status = 'pending'",
                             (self.owner,))
        return int(cur.rowcount)

    def renew(self, part: Part, lease: timedelta = timedelta(seconds=60)) -> bool:
        """Extend this owner's lease on ``part`` from now; False when it is
        not ours any more (taken over after it ran out, or done)."""
        if part.lease is None:
            return True
        fence, args = self._fence(part.lease)
        with self._lock:
            cur = self._exec(f"UPDATE {self.PARTS} SET lease_until = ? WHERE id = ? AND "
                             f"status = 'pending'{fence}",
                             (self._t(self.clock() + lease), part.id, *args))
        return bool(cur.rowcount == 1)

    def payload(self, part: Part) -> list[Any]:
        records: list[Any] = json.loads(self.payload_bytes(part))
        return records

    def payload_bytes(self, part: Part) -> bytes:
        """The part's records as stored: one JSON array, decrypted, not parsed."""
        with self._lock:
            row = self._exec(f"SELECT nonce, payload FROM {self.PAYLOADS or self.PARTS} "
                             "WHERE id = ?", (part.id,)).fetchone()
        if row is None or row["payload"] is None:
            raise KeyError(part.id)
        if self._aead is None:
            raise RuntimeError("this outbox handle has no data key: it reads no payload")
        return self._aead.decrypt(bytes(row["nonce"]), bytes(row["payload"]), part.id.encode())

    def _fence(self, lease: str | None) -> tuple[str, tuple[Any, ...]]:
        """The part is still this owner's, under this claim's token."""
        if lease is None:
            return "", ()
        return " AND lease_owner = ? AND lease_token = ?", (self.owner, lease)

    def acknowledged(self, part_id: str, lease: str | None = None) -> bool:
        """Delivered: the payload goes; the counts stay (D10). With ``lease``,
        only while that claim still holds the part (fencing); False if not."""
        fence, args = self._fence(lease)
        with self._lock, self._transaction():
            cur = self._exec(
                f"UPDATE {self.PARTS} SET status = 'delivered',{self._clear} "
                "done_at = ?, lease_owner = NULL, lease_token = NULL, lease_until = NULL "
                f"WHERE id = ? AND status = 'pending'{fence}",
                (self._t(self.clock()), part_id, *args))
            done = bool(cur.rowcount == 1)
            if done and self.PAYLOADS is not None:
                self._exec(f"DELETE FROM {self.PAYLOADS} WHERE id = ?", (part_id,))
        return done

    @property
    def _clear(self) -> str:
        """SQL: what an UPDATE that drops the payload sets in the part's row."""
        return " payload = NULL, nonce = NULL," if self.PAYLOADS is None else ""

    def failed(self, part: Part, error: str, policy: RetryPolicy, *, permanent: bool) -> str:
        """Schedule the next attempt, or make it a dead letter. Returns the
        status; ``lost`` when the part's lease is not this claim's any more."""
        attempts = part.attempts + 1
        dead = permanent or attempts >= policy.max_attempts
        when = self.clock() + policy.delay(attempts)
        fence, args = self._fence(part.lease)
        with self._lock:
            # A dead letter's done_at is when it died: its payload's retention
            # runs from there (D10, gateway.retention).
            cur = self._exec(
                f"UPDATE {self.PARTS} SET attempts = ?, last_error = ?, next_attempt_at = ?, "
                "status = ?, done_at = ?, lease_owner = NULL, lease_token = NULL, "
                f"lease_until = NULL WHERE id = ? AND status = 'pending'{fence}",
                (attempts, error[:200], self._t(when), "dead" if dead else "pending",
                 self._t(self.clock()) if dead else None, part.id, *args))
        if cur.rowcount != 1:
            return "lost"
        return "dead" if dead else "pending"

    def requeue_dead(self, part_id: str) -> bool:
        """Ops decided the receiver is fixed: try a dead letter again."""
        with self._lock:
            cur = self._exec(
                f"UPDATE {self.PARTS} SET status = 'pending', attempts = 0, "
                f"next_attempt_at = ? WHERE id = ? AND status = 'dead' AND {self._kept}",
                (self._t(self.clock()), part_id))
        return bool(cur.rowcount == 1)

    # -- retention (D10) ---------------------------------------------------------
    # A dead letter died at done_at; one that died before done_at was set for
    # dead letters (an older outbox) counts from its last scheduled attempt,
    # which is after its death: never earlier than the policy says.
    _DIED = "coalesce(done_at, next_attempt_at)"

    def dead_letters(self) -> list[DeadLetter]:
        """Every dead letter, oldest death first: whether its payload is still
        kept, and when it died."""
        with self._lock:
            rows = self._exec(
                f"SELECT {_PART_FIELDS}, {self._DIED} AS died_at, {self._kept} AS kept "
                f"FROM {self.PARTS} WHERE status = 'dead' ORDER BY died_at, id").fetchall()
        return [DeadLetter(self._part(r), self._time(r["died_at"]), bool(r["kept"]))
                for r in rows]

    def erase_dead_payloads(self, part_ids: Sequence[str], died_by: datetime) -> int:
        """Erase the payloads of these dead letters, those that died at or
        before ``died_by`` and still hold one (a part requeued meanwhile is
        not dead any more, and is left alone). The row stays as a tombstone:
        tenant, source, batch, record count, when and why it died. Returns
        how many were erased; again, the same call erases nothing."""
        if not part_ids:
            return 0
        marks = ", ".join("?" for _ in part_ids)
        dead = (f"id IN ({marks}) AND status = 'dead' AND {self._kept} AND "
                f"{self._DIED} <= ?")
        with self._lock:
            if self.PAYLOADS is None:
                cur = self._exec(f"UPDATE {self.PARTS} SET payload = NULL, nonce = NULL "
                                 f"WHERE {dead}", (*part_ids, self._t(died_by)))
            else:
                cur = self._exec(f"DELETE FROM {self.PAYLOADS} WHERE id IN (SELECT id FROM "
                                 f"{self.PARTS} WHERE {dead})", (*part_ids, self._t(died_by)))
        return int(cur.rowcount)

    # -- for ops ---------------------------------------------------------------
    def stats(self) -> dict[str, tuple[int, float, int]]:
        """tenant -> (pending parts, oldest pending age in s, dead letters)."""
        return self.survey()[1]

    def survey(self) -> tuple[set[str], dict[str, tuple[int, float, int]]]:
        """The tenants with a part ``claim`` would take now (due: its next
        attempt's time has come; free: no live lease on it), and
        :meth:`stats`, in one read of the queue: the delivery's one survey a
        second for all tenants
        (gateway.push._delivery), which wakes the loops with parts due (a
        retry fallen due, another replica's part, a lease run out) and sets
        the gauges."""
        now = self.clock()
        at = self._t(now)
        with self._lock:
            rows = self._exec(
                "SELECT tenant, status, count(*) AS n, min(created) AS oldest, "
                "sum(CASE WHEN next_attempt_at <= ? AND (lease_until IS NULL OR "
                f"lease_until <= ?) THEN 1 ELSE 0 END) AS due FROM {self.PARTS} "
                "WHERE status IN ('pending', 'dead') GROUP BY tenant, status",
                (at, at)).fetchall()
        due: set[str] = set()
        out: dict[str, tuple[int, float, int]] = {}
        for r in rows:
            tenant = r["tenant"]
            pending, age, dead = out.get(tenant, (0, 0.0, 0))
            if r["status"] == "pending":
                pending = int(r["n"])
                age = (now - self._time(r["oldest"])).total_seconds()
                if r["due"]:
                    due.add(tenant)
            else:
                dead = int(r["n"])
            out[tenant] = (pending, age, dead)
        return due, out

    def pending_records(self, tenant: str) -> int:
        with self._lock:
            row = self._exec(f"SELECT coalesce(sum(records), 0) AS n FROM {self.PARTS} WHERE "
                             "tenant = ? AND status = 'pending'", (tenant,)).fetchone()
        return int(row["n"])

    def parts(self, *, status: str | None = None) -> list[Part]:
        sql, args = f"SELECT {_PART_FIELDS} FROM {self.PARTS}", tuple[str, ...]()
        if status is not None:
            sql, args = sql + " WHERE status = ?", (status,)
        with self._lock:
            rows = self._exec(sql + " ORDER BY created, id", args).fetchall()
        return [self._part(r) for r in rows]

    def tenants_pending(self) -> list[str]:
        with self._lock:
            rows = self._exec(f"SELECT DISTINCT tenant FROM {self.PARTS} WHERE status = "
                              "'pending'").fetchall()
        return [str(r["tenant"]) for r in rows]

    @abstractmethod
    def close(self) -> None: ...


__all__ = ["DeadLetter", "EncodedPart", "Outbox", "Part", "RetryPolicy", "part_key"]
