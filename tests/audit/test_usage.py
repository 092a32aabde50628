"""usage: D10 rollups per day (31), ISO week (20) and month (20), exact retention."""

from __future__ import annotations

import calendar
import stat
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from gateway.audit._usage import RETENTION, UsageLedger, UsageRow, bucket_start, oldest_kept

NOON = datetime(2026, 6, 17, 12, 0, tzinfo=UTC)  # a Wednesday


class FrozenClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(NOON)


@pytest.fixture
def ledger(tmp_path: Path, clock: FrozenClock) -> Iterator[UsageLedger]:
    led = UsageLedger(tmp_path / "usage.sqlite3", clock=clock)
    yield led
    led.close()


def totals(rows: list[UsageRow]) -> list[tuple[date, str, str, str, int, int, int, int]]:
    return [(r.start, r.tenant, r.upstream, r.route, r.requests, r.denied, r.bytes_in,
             r.bytes_out) for r in rows]


def test_records_roll_up_into_day_week_and_month(ledger: UsageLedger) -> None:
    ledger.record("ores", "hes", "/meters/{id}", 200, 10, 100)
    ledger.record("ores", "hes", "/meters/{id}", 403, 20, 5)
    ledger.record("ores", "hes", "/meters/{id}", 502, 1, 2)
    ledger.record("ores", "hes", "/meters", 200, 3, 4)
    ledger.record("lumen", "cmh", "/ean/{ean}", 200, 7, 8)
    # Monday of the same week, and a day in the previous month.
    ledger.record("ores", "hes", "/meters/{id}", 404, 1, 1, at=datetime(2026, 6, 15, tzinfo=UTC))
    ledger.record("ores", "hes", "/meters/{id}", 200, 1, 1, at=datetime(2026, 5, 31, tzinfo=UTC))

    assert totals(ledger.query(period="day")) == [
        (date(2026, 5, 31), "ores", "hes", "/meters/{id}", 1, 0, 1, 1),
        (date(2026, 6, 15), "ores", "hes", "/meters/{id}", 1, 1, 1, 1),
        (date(2026, 6, 17), "lumen", "cmh", "/ean/{ean}", 1, 0, 7, 8),
        (date(2026, 6, 17), "ores", "hes", "/meters", 1, 0, 3, 4),
        (date(2026, 6, 17), "ores", "hes", "/meters/{id}", 3, 2, 31, 107),
    ]
    assert totals(ledger.query(period="week")) == [
        (date(2026, 5, 25), "ores", "hes", "/meters/{id}", 1, 0, 1, 1),
        (date(2026, 6, 15), "lumen", "cmh", "/ean/{ean}", 1, 0, 7, 8),
        (date(2026, 6, 15), "ores", "hes", "/meters", 1, 0, 3, 4),
        (date(2026, 6, 15), "ores", "hes", "/meters/{id}", 4, 3, 32, 108),
    ]
    assert totals(ledger.query(period="month")) == [
        (date(2026, 5, 1), "ores", "hes", "/meters/{id}", 1, 0, 1, 1),
        (date(2026, 6, 1), "lumen", "cmh", "/ean/{ean}", 1, 0, 7, 8),
        (date(2026, 6, 1), "ores", "hes", "/meters", 1, 0, 3, 4),
        (date(2026, 6, 1), "ores", "hes", "/meters/{id}", 4, 3, 32, 108),
    ]


def test_the_day_is_the_utc_day(ledger: UsageLedger) -> None:
    brussels = timezone(timedelta(hours=2))
    ledger.record("ores", "hes", "/r", 200, 0, 0, at=datetime(2026, 7, 1, 0, 30, tzinfo=brussels))
    assert [r.start for r in ledger.query(period="day")] == [date(2026, 6, 30)]
    assert [r.start for r in ledger.query(period="month")] == [date(2026, 6, 1)]
    with pytest.raises(ValueError, match="timezone-aware"):
        ledger.record("ores", "hes", "/r", 200, 0, 0, at=datetime(2026, 7, 1))


@pytest.mark.parametrize(("day", "week", "month"), [
    (date(2026, 12, 31), date(2026, 12, 28), date(2026, 12, 1)),  # 2026-W53
    (date(2027, 1, 3), date(2026, 12, 28), date(2027, 1, 1)),  # still 2026-W53, a Sunday
    (date(2027, 1, 4), date(2027, 1, 4), date(2027, 1, 1)),  # 2027-W01 starts Monday
    (date(2025, 12, 31), date(2025, 12, 29), date(2025, 12, 1)),  # 2026-W01 starts in 2025
    (date(2024, 2, 29), date(2024, 2, 26), date(2024, 2, 1)),
])
def test_bucket_starts_follow_iso_weeks_and_calendar_months(day: date, week: date,
                                                            month: date) -> None:
    assert bucket_start("day", day) == day
    assert bucket_start("week", day) == week
    assert week.isoweekday() == 1 and week.isocalendar()[:2] == day.isocalendar()[:2]
    assert bucket_start("month", day) == month


def test_year_boundary_week_is_one_row(ledger: UsageLedger) -> None:
    for day in (28, 31):
        ledger.record("ores", "hes", "/r", 200, 1, 1, at=datetime(2026, 12, day, tzinfo=UTC))
    ledger.record("ores", "hes", "/r", 200, 1, 1, at=datetime(2027, 1, 3, 23, 59, tzinfo=UTC))
    ledger.record("ores", "hes", "/r", 200, 1, 1, at=datetime(2027, 1, 4, tzinfo=UTC))
    weeks = ledger.query(period="week")
    assert [(r.start, r.requests) for r in weeks] == [(date(2026, 12, 28), 3),
                                                     (date(2027, 1, 4), 1)]
    months = ledger.query(period="month")
    assert [(r.start, r.requests) for r in months] == [(date(2026, 12, 1), 2),
                                                      (date(2027, 1, 1), 2)]


def test_oldest_kept_is_exact() -> None:
    now = datetime(2026, 12, 31, 23, 59, tzinfo=UTC)
    assert oldest_kept("day", now) == date(2026, 12, 1)
    assert oldest_kept("week", now) == date(2026, 8, 17)  # 2026-12-28 minus 19 weeks
    assert oldest_kept("month", now) == date(2025, 5, 1)
    assert oldest_kept("month", datetime(2026, 3, 31, tzinfo=UTC)) == date(2024, 8, 1)
    with pytest.raises(ValueError, match="period"):
        oldest_kept("year", now)


def test_two_simulated_years_keep_exactly_the_retention(tmp_path: Path) -> None:
    clock = FrozenClock(datetime(2025, 1, 1, 12, 0, tzinfo=UTC))
    ledger = UsageLedger(tmp_path / "usage.sqlite3", clock=clock)
    first = clock.now
    for i in range(730):
        clock.now = first + timedelta(days=i)
        for tenant in ("ores", "lumen"):
            ledger.record(tenant, "hes", "/meters/{id}", 200 if i % 3 else 403, 2, 5)
        ledger.flush()
        ledger.prune()
    now = clock.now
    assert now.date() == date(2026, 12, 31)
    for tenant in ("ores", "lumen"):
        days = ledger.query(period="day", tenant=tenant)
        weeks = ledger.query(period="week", tenant=tenant)
        months = ledger.query(period="month", tenant=tenant)
        assert (len(days), len(weeks), len(months)) == (31, 20, 20)
        assert days[0].start == now.date() - timedelta(days=30) == date(2026, 12, 1)
        assert days[-1].start == now.date()
        assert weeks[0].start == date(2026, 12, 28) - timedelta(weeks=19) == date(2026, 8, 17)
        assert weeks[-1].start == date(2026, 12, 28)
        assert months[0].start == date(2025, 5, 1)  # 19 months before 2026-12
        assert months[-1].start == date(2026, 12, 1)
        assert all(r.requests == 1 for r in days)
        assert all(r.requests == 7 for r in weeks[:-1]) and weeks[-1].requests == 4
        for row in months:  # every kept month is full: the run ends on 31 December
            assert row.requests == calendar.monthrange(row.start.year, row.start.month)[1]
            assert row.bytes_in == 2 * row.requests and row.bytes_out == 5 * row.requests
        assert sum(r.denied for r in days) == sum(1 for i in range(699, 730) if i % 3 == 0)
    # The bucket just before each boundary is gone.
    assert ledger.query(period="day", until=date(2026, 11, 30)) == []
    assert ledger.query(period="week", until=date(2026, 8, 10)) == []
    assert ledger.query(period="month", until=date(2025, 4, 1)) == []
    assert ledger.prune(now) == 0
    # 2027-01-01 is still in 2026-W53: day 2026-12-01 and month 2025-05 go, per tenant.
    assert ledger.prune(now + timedelta(days=1)) == 4
    assert ledger.query(period="month", tenant="ores")[0].start == date(2025, 6, 1)
    assert len(ledger.query(period="week", tenant="ores")) == 20
    ledger.close()


def test_flush_is_idempotent_and_accumulates(ledger: UsageLedger) -> None:
    ledger.record("ores", "hes", "/r", 200, 1, 2)
    ledger.record("ores", "hes", "/r", 500, 1, 2)
    assert ledger.flush() == 3  # one day, one week, one month row
    assert ledger.flush() == 0
    ledger.record("ores", "hes", "/r", 200, 10, 20)
    assert ledger.flush() == 3
    for period in RETENTION:
        assert totals(ledger.query(period=period)) == [
            (bucket_start(period, NOON.date()), "ores", "hes", "/r", 3, 1, 12, 24)]


def test_query_filters(ledger: UsageLedger) -> None:
    for day, tenant, upstream in [(1, "ores", "hes"), (2, "ores", "cmh"), (3, "lumen", "hes"),
                                  (4, "ores", "hes")]:
        ledger.record(tenant, upstream, "/r", 200, 0, 0, at=datetime(2026, 6, day, tzinfo=UTC))
    q = ledger.query
    assert [r.start.day for r in q(period="day", tenant="ores")] == [1, 2, 4]
    assert [r.start.day for r in q(period="day", upstream="hes")] == [1, 3, 4]
    assert [r.start.day for r in q(period="day", tenant="ores", upstream="hes")] == [1, 4]
    assert [r.start.day for r in q(period="day", since=date(2026, 6, 2),
                                   until=date(2026, 6, 3))] == [2, 3]
    assert [(r.tenant, r.upstream) for r in q(period="month")] == [
        ("lumen", "hes"), ("ores", "cmh"), ("ores", "hes")]
    with pytest.raises(ValueError, match="period"):
        q(period="hour")


def test_close_flushes_and_reopening_keeps_data(tmp_path: Path, clock: FrozenClock) -> None:
    path = tmp_path / "sub" / "usage.sqlite3"
    ledger = UsageLedger(path, clock=clock)
    ledger.record("ores", "hes", "/r", 200, 1, 1)
    ledger.close()
    ledger.close()  # a second close is harmless
    if sys.platform != "win32":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = UsageLedger(path, clock=clock)
    again.record("ores", "hes", "/r", 404, 1, 1)
    rows = again.query(period="week")
    again.close()
    assert totals(rows) == [(date(2026, 6, 15), "ores", "hes", "/r", 2, 1, 2, 2)]


def test_concurrent_records_are_all_counted(ledger: UsageLedger) -> None:
    def work() -> None:
        for _ in range(500):
            ledger.record("ores", "hes", "/r", 200, 1, 0)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for _ in range(20):
        ledger.flush()
    for t in threads:
        t.join()
    assert [r.requests for r in ledger.query(period="month")] == [2000]


def test_without_a_clock_a_request_counts_to_the_utc_day_of_the_wall_clock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ledger of a running gateway (no clock given) tells a request's day
    from time.time() and a day it made once: the same day as datetime.now's
    up to the last instant before UTC midnight, the next from midnight on,
    and the right one again when the clock steps back."""
    import time

    from gateway.audit import _usage

    midnight = (time.time() // 86400 + 1) * 86400
    now = [midnight - 0.5]
    monkeypatch.setattr(_usage, "time", type("T", (), {"time": staticmethod(lambda: now[0])}))
    ledger = UsageLedger(tmp_path / "usage.sqlite3")
    today = datetime.fromtimestamp(midnight - 1, UTC).date()
    for at in (midnight - 0.5, midnight - 1e-6, midnight, midnight + 86400 - 1, midnight - 3600):
        now[0] = at
        ledger.record("ores", "hes", "/meters/{id}", 200, 1, 1)
    assert [(row.start, row.requests) for row in ledger.query(period="day")] == [
        (today, 3), (today + timedelta(days=1), 2)]
    ledger.close()
