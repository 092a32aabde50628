"""Usage rollups per tenant, shared system and route, kept as D10 requires.

D10: "Usage is kept aggregated: per day for 31 days, per week for 20 weeks,
per month for 20 months." Each row counts requests, denied requests (status
>= 400), bytes in and bytes out for one (period, bucket start, tenant,
upstream, route). Nothing finer than a day is ever written: no paths, no
query strings, no per-request timestamps (D10 keeps no trace of what was
consulted).

Buckets, all in UTC:

- ``day``: one calendar day; starts on that day.
- ``week``: an ISO 8601 week; starts on its Monday (2026-12-31 lies in
  2026-W53, which starts on Monday 2026-12-28).
- ``month``: one calendar month; starts on the 1st.

Retention is exact. At ``now``, with ``today = now`` as a UTC date, the kept
buckets are the current one and the ``RETENTION[period] - 1`` before it:

- days whose start >= today - 30 days (31 buckets);
- weeks whose start >= Monday of today's ISO week - 19 weeks (20 buckets);
- months whose start >= the 1st of today's month shifted back 19 months
  (20 buckets).

``prune()`` deletes every row whose start is older than ``oldest_kept``;
``flush()`` does not prune, so the caller runs ``prune()`` after flushing
(at least daily) to hold the file to exactly that.

``record()`` runs on the request path, so it only adds to an in-memory
dict under a lock. ``flush()`` moves those deltas into the day, week and
month rows in one transaction (``requests = requests + excluded.requests``),
so flushing twice never double-counts and a crash loses at most the
deltas since the last flush.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import MappingProxyType

from gateway.clock import utc_now

__all__ = ["RETENTION", "UsageLedger", "UsageRow", "bucket_start", "oldest_kept"]

RETENTION: Mapping[str, int] = MappingProxyType({"day": 31, "week": 20, "month": 20})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    period TEXT NOT NULL, start TEXT NOT NULL, tenant TEXT NOT NULL,
    upstream TEXT NOT NULL, route TEXT NOT NULL,
    requests INTEGER NOT NULL, denied INTEGER NOT NULL,
    bytes_in INTEGER NOT NULL, bytes_out INTEGER NOT NULL,
    PRIMARY KEY (period, start, tenant, upstream, route));
"""
_UPSERT = """
INSERT INTO usage VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (period, start, tenant, upstream, route) DO UPDATE SET
    requests = requests + excluded.requests, denied = denied + excluded.denied,
    bytes_in = bytes_in + excluded.bytes_in, bytes_out = bytes_out + excluded.bytes_out
"""

# (day, tenant, upstream, route) -> [requests, denied, bytes_in, bytes_out]
_DayKey = tuple[date, str, str, str]
_RowKey = tuple[str, date, str, str, str]


@dataclass(frozen=True, slots=True)
class UsageRow:
    period: str  # "day" | "week" | "month"
    start: date  # first day of the bucket (Monday for weeks, the 1st for months)
    tenant: str
    upstream: str
    route: str
    requests: int
    denied: int
    bytes_in: int
    bytes_out: int


def _check_period(period: str) -> None:
    if period not in RETENTION:
        raise ValueError(f"unknown usage period {period!r}; expected one of {sorted(RETENTION)}")


def _utc_day(moment: datetime) -> date:
    if moment.tzinfo is None:
        # A naive datetime would be read as local time and shift buckets silently.
        raise ValueError("usage timestamps must be timezone-aware")
    return moment.astimezone(UTC).date()


def _months_back(first: date, months: int) -> date:
    year, month0 = divmod(first.year * 12 + first.month - 1 - months, 12)
    return date(year, month0 + 1, 1)


def bucket_start(period: str, day: date) -> date:
    """The first day of the ``period`` bucket holding ``day``."""
    _check_period(period)
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())  # ISO 8601: weeks start on Monday
    return day.replace(day=1)


def oldest_kept(period: str, now: datetime) -> date:
    """The start of the oldest ``period`` bucket kept at ``now`` (D10)."""
    current = bucket_start(period, _utc_day(now))
    back = RETENTION[period] - 1  # the current bucket counts as one
    if period == "day":
        return current - timedelta(days=back)
    if period == "week":
        return current - timedelta(weeks=back)
    return _months_back(current, back)


class UsageLedger:
    """Usage counters: cheap in-memory ``record()``, periodic ``flush()`` to SQLite."""

    def __init__(self, path: Path, *, clock: Callable[[], datetime] | None = None) -> None:
        """``clock`` (tests): the instant of each record and flush; without
        one, the wall clock, and a request's day is told from ``time.time()``
        by the bounds of a day made once a day (``_today``: ``record`` runs
        for every data-plane request, and an aware datetime and its date
        made for each cost half of it)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            # SECURITY: who used which shared system is operator-internal; owner-only.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        self.path = path
        self._clock = clock or utc_now
        self._wall = clock is None
        # The wall clock's current UTC day: [start, end) in POSIX seconds, and its date.
        self._day: tuple[float, float, date] = (0.0, 0.0, date(1970, 1, 1))
        self._pending: dict[_DayKey, list[int]] = {}
        self._pending_lock = threading.Lock()  # held by record(): never across I/O
        self._db_lock = threading.Lock()
        self._closed = False
        # Every count recorded before this instant is in the database (the
        # audit pruner deletes raw events only once they are rolled up).
        self.flushed_through: datetime | None = None
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        with self._db_lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL survives a process crash; a power cut may lose the last
            # flush of counters, which is acceptable for aggregates.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)

    def record(self, tenant: str, upstream: str, route: str, status: int,
               bytes_in: int, bytes_out: int, at: datetime | None = None) -> None:
        """Count one request; ``route`` is the route template, never the concrete path."""
        day = _utc_day(at) if at is not None else self._today()
        key = (day, tenant, upstream, route)
        with self._pending_lock:
            counts = self._pending.get(key)
            if counts is None:
                counts = self._pending[key] = [0, 0, 0, 0]
            counts[0] += 1
            counts[1] += status >= 400
            counts[2] += bytes_in
            counts[3] += bytes_out

    def _today(self) -> date:
        """The UTC day now (the clock's, when one was given)."""
        if not self._wall:
            return _utc_day(self._clock())
        now = time.time()
        start, end, day = self._day
        if not start <= now < end:  # a new day (or the clock stepped back)
            start = now // 86400 * 86400  # POSIX time: every UTC day is 86,400 s
            day = datetime.fromtimestamp(start, UTC).date()
            self._day = (start, start + 86400, day)
        return day

    def flush(self) -> int:
        """Add the pending deltas to the day, week and month rows; return rows touched."""
        with self._db_lock:
            return self._flush_locked()

    def _flush_locked(self) -> int:
        with self._pending_lock:
            pending, self._pending = self._pending, {}
            taken_at = self._clock()
        if not pending or self._closed:
            self._restore(pending)
            if not self._closed:
                self.flushed_through = taken_at
            return 0
        rows: dict[_RowKey, list[int]] = {}
        for (day, tenant, upstream, route), counts in pending.items():
            for period in RETENTION:
                key = (period, bucket_start(period, day), tenant, upstream, route)
                acc = rows.setdefault(key, [0, 0, 0, 0])
                for i, value in enumerate(counts):
                    acc[i] += value
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(_UPSERT, [(p, s.isoformat(), t, u, r, *c)
                                           for (p, s, t, u, r), c in rows.items()])
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._restore(pending)  # keep the counts for the next flush
            raise
        self.flushed_through = taken_at
        return len(rows)

    def _restore(self, pending: dict[_DayKey, list[int]]) -> None:
        with self._pending_lock:
            for key, counts in pending.items():
                acc = self._pending.setdefault(key, [0, 0, 0, 0])
                for i, value in enumerate(counts):
                    acc[i] += value

    def prune(self, now: datetime | None = None) -> int:
        """Delete every bucket older than ``oldest_kept`` (D10); return rows deleted."""
        moment = now if now is not None else self._clock()
        cutoffs = [(period, oldest_kept(period, moment).isoformat()) for period in RETENTION]
        with self._db_lock:
            self._db.execute("BEGIN IMMEDIATE")
            deleted = 0
            for period, cutoff in cutoffs:
                # ISO dates (YYYY-MM-DD) compare as text in date order.
                cur = self._db.execute("DELETE FROM usage WHERE period = ? AND start < ?",
                                       (period, cutoff))
                deleted += cur.rowcount
            self._db.execute("COMMIT")
        return deleted

    def query(self, *, period: str, tenant: str | None = None, upstream: str | None = None,
              since: date | None = None, until: date | None = None) -> list[UsageRow]:
        """Rows of one period, flushed first; ``since``/``until`` bound the bucket start
        inclusively. Ordered by start, tenant, upstream, route."""
        _check_period(period)
        sql = "SELECT * FROM usage WHERE period = ?"
        args: list[str] = [period]
        for column, value in (("tenant = ?", tenant), ("upstream = ?", upstream),
                              ("start >= ?", since.isoformat() if since else None),
                              ("start <= ?", until.isoformat() if until else None)):
            if value is not None:
                sql += f" AND {column}"
                args.append(value)
        with self._db_lock:
            self._flush_locked()
            found = self._db.execute(sql + " ORDER BY start, tenant, upstream, route",
                                     args).fetchall()
        return [UsageRow(p, date.fromisoformat(s), t, u, r, n, d, bi, bo)
                for p, s, t, u, r, n, d, bi, bo in found]

    def close(self) -> None:
        """Flush what is pending, then close the file; a second call does nothing."""
        with self._db_lock:
            if self._closed:
                return
            try:
                self._flush_locked()
            finally:
                self._closed = True
                self._db.close()
