"""The relation index's smaller guards, each pinned by a deterministic case
(mutation testing of ``gateway/core/relations/index.py``, docs/mutation.md):
a tenant's own tenant resource and nobody else's (D1), the relation found
whole, the records read past the ones that do not match, a window against a
half-open relation, a row of more than 254 records, and instants as the feed
writes them."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from gateway.core.model import Relation
from gateway.core.relations.index import TENANT_KIND, RelationIndex, parse_instant

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
SWITCH = NOW - timedelta(days=1)
METER = "1SAG0000000001"
OWNER = frozenset({"owner"})


def test_a_tenant_holds_its_own_tenant_resource_and_no_other() -> None:
    """D1: the "self" relation is the caller's own tenant record, never
    another tenant's, and only where the route grants "self"."""
    index = RelationIndex([Relation("meter", METER, "ores", "owner")])
    self_only = frozenset({"self"})
    assert index.holds(TENANT_KIND, "ores", "ores", self_only, NOW) == "self"
    assert index.holds(TENANT_KIND, "fluvius", "ores", self_only, NOW) is None
    assert index.holds(TENANT_KIND, "ores", "ores", frozenset({"owner", "member"}), NOW) is None
    assert index.find(TENANT_KIND, "ores", "ores", self_only, NOW) == Relation(
        TENANT_KIND, "ores", "ores", "self")
    assert index.find(TENANT_KIND, "fluvius", "ores", self_only, NOW) is None
    assert index.find(TENANT_KIND, "ores", "ores", OWNER, NOW) is None


@pytest.mark.parametrize(("start", "end"), [
    (None, None), (SWITCH, None), (None, NOW + timedelta(days=1)),
    (SWITCH, NOW + timedelta(days=1))])
def test_the_relation_found_is_the_one_in_the_feed(start: datetime | None,
                                                   end: datetime | None) -> None:
    rel = Relation("meter", METER, "ores", "owner", start, end)
    index = RelationIndex([Relation("meter", METER, "fluvius", "reader"), rel])
    assert index.find("meter", METER, "ores", OWNER, NOW) == rel
    assert index.find_during("meter", METER, "ores", OWNER, NOW, NOW + timedelta(hours=1)) == rel


def test_records_that_do_not_match_are_read_past() -> None:
    """Whatever their order: another tenant's, another relation's."""
    for order in (1, -1):
        index = RelationIndex([Relation("meter", METER, "fluvius", "reader"),
                               Relation("meter", METER, "ores", "reader"),
                               Relation("meter", METER, "ores", "owner")][::order])
        assert index.holders("meter", METER, "owner", NOW) == {"ores"}
        assert index.holders("meter", METER, "reader", NOW) == {"fluvius", "ores"}
        found = index.find_during("meter", METER, "ores", OWNER, NOW, NOW + timedelta(hours=1))
        assert found == Relation("meter", METER, "ores", "owner")


def test_a_window_after_a_relation_that_ended_finds_nothing() -> None:
    index = RelationIndex([Relation("meter", METER, "ores", "owner", None, SWITCH)])
    assert index.find_during("meter", METER, "ores", OWNER, SWITCH,
                             SWITCH + timedelta(hours=1)) is None
    assert index.find_during("meter", METER, "ores", OWNER, SWITCH - timedelta(hours=1),
                             SWITCH) == Relation("meter", METER, "ores", "owner", None, SWITCH)


def test_a_row_of_more_records_than_its_count_byte_holds() -> None:
    """A resource with 300 relations: the count follows as a u32, and the
    first record is read after it."""
    tenants = [f"t{i:03d}" for i in range(300)]
    index = RelationIndex([Relation("meter", METER, t, "owner") for t in tenants])
    for t in (tenants[0], tenants[1], tenants[254], tenants[299]):
        assert index.holds("meter", METER, t, OWNER, NOW) == "owner"
        assert index.find("meter", METER, t, OWNER, NOW) == Relation("meter", METER, t, "owner")
    assert index.holders("meter", METER, "owner", NOW) == set(tenants)


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-06-14", datetime(2026, 6, 14, tzinfo=UTC)),
    ("2026-06-14T10:30:00Z", datetime(2026, 6, 14, 10, 30, tzinfo=UTC)),
    ("2026-06-14T10:30:00", datetime(2026, 6, 14, 10, 30, tzinfo=UTC)),
    ("2026-06-14T12:30:00+02:00", datetime(2026, 6, 14, 10, 30, tzinfo=UTC)),
    (None, None),
])
def test_instants_as_the_feed_writes_them(monkeypatch: pytest.MonkeyPatch, text: str | None,
                                          expected: datetime | None) -> None:
    """In UTC whatever the host's zone (here Brussels): a naive time is UTC."""
    monkeypatch.setenv("TZ", "Europe/Brussels")
    time.tzset()
    try:
        parsed = parse_instant(text)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert parsed == expected
    if parsed is not None:
        assert parsed.utcoffset() == timedelta(0) and parsed.tzinfo is UTC


def test_holders_read_past_a_relation_that_does_not_hold_then() -> None:
    for order in (1, -1):
        index = RelationIndex([Relation("meter", METER, "fluvius", "owner", None, SWITCH),
                               Relation("meter", METER, "sibelga", "owner", SWITCH, None)][::order])
        assert index.holders("meter", METER, "owner", NOW) == {"sibelga"}
        assert index.holders("meter", METER, "owner", SWITCH - timedelta(hours=1)) == {"fluvius"}


def test_a_window_reads_past_a_relation_outside_it() -> None:
    later = Relation("meter", METER, "ores", "owner", NOW, None)
    for order in (1, -1):
        index = RelationIndex([Relation("meter", METER, "ores", "owner", None, SWITCH),
                               later][::order])
        assert index.find_during("meter", METER, "ores", OWNER, NOW,
                                 NOW + timedelta(hours=1)) == later


def test_the_snapshot_is_named_where_it_fails() -> None:
    from gateway.core.relations.snapshot import MAGIC, SnapshotError

    assert RelationIndex([]).snapshot.source == "<memory>"
    whole = RelationIndex([Relation("meter", METER, "ores", "owner")]).snapshot.buffer
    with pytest.raises(SnapshotError, match=r"^feed\.snap: "):
        RelationIndex.from_bytes(bytes(whole[:-1]), "feed.snap")
    assert bytes(whole).startswith(MAGIC)


def test_a_bound_without_a_time_zone_is_refused_by_name() -> None:
    naive = datetime(2026, 6, 14, 12, 0)
    refused = r"^relation bound without a time zone: 2026-06-14T12:00:00$"
    with pytest.raises(ValueError, match=refused):
        RelationIndex([Relation("meter", METER, "ores", "owner", naive, None)])
