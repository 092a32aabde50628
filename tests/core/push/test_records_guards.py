"""The per-record router's smaller guards, each pinned by a deterministic
case (mutation testing of ``gateway/core/push/records.py``, docs/mutation.md):
what a refused batch says, the future-skew boundary, a refused record in
the middle of a batch, the snapshot readers ``owner_span`` and ``ean_span``
called directly, and the per-call caches (each distinct value checked once,
each owner read once per span: D1's routing must not cost a relation read
per reading)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

import pytest

from gateway.core.model import Relation
from gateway.core.push import records
from gateway.core.push.records import (
    ACCESS_POINT,
    FUTURE_SKEW,
    METER_EAN,
    BatchRejected,
    ean_span,
    meter_ean_id,
    owner_span,
    route_batch,
)
from gateway.core.relations.index import RelationIndex
from tests.core.conftest import METER_MOVED, METER_ORES, METER_WATER, NOW, SWITCH
from tests.core.push._calls import counting
from tests.core.push.test_records import EAN_OK, RELATIONS, at, reading, route

_MIN, _MAX = -(1 << 62), 1 << 62  # the open ends owner_span and ean_span report
_US = timedelta(microseconds=1)


def micros(when: datetime) -> int:
    return (when - datetime(1970, 1, 1, tzinfo=UTC)) // _US


# Every test here on both owner readings (tests/core/push/conftest.py).
pytestmark = pytest.mark.usefixtures("owner_reading")


# -- what a refused batch says ---------------------------------------------------

REFUSED = {
    "not-an-object": ([], "batch-not-object", "the batch must be a JSON object"),
    "bad-id": ({"batch_id": "../b", "records": []}, "bad-batch-id",
               "batch_id must be 1-64 characters of A-Z a-z 0-9 . _ -"),
    "records-not-a-list": ({"batch_id": "b", "records": {}}, "records-not-list",
                           "records must be a JSON array"),
    "too-many": ({"batch_id": "b", "records": [reading(METER_ORES, at(h)) for h in range(4)]},
                 "batch-too-large", "4 records, at most 3 per batch"),
}


@pytest.mark.parametrize(("batch", "reason", "detail"), REFUSED.values(), ids=REFUSED.keys())
def test_a_refused_batch_says_exactly_what_is_wrong(batch: Any, reason: str,
                                                    detail: str) -> None:
    """The HES's operators read the detail in the problem document."""
    with pytest.raises(BatchRejected) as info:
        route_batch(batch, RELATIONS, NOW, max_records=3)
    assert (info.value.reason, info.value.detail, info.value.message) == (reason, detail, detail)
    assert str(info.value) == f"{reason}: {detail}"
    assert info.value.args == (detail,)


def test_a_naive_clock_is_refused_with_its_reason() -> None:
    with pytest.raises(ValueError, match=r"^now must be timezone-aware$"):
        route_batch({"batch_id": "b", "records": []}, RELATIONS, NOW.replace(tzinfo=None))


# -- records ---------------------------------------------------------------------

def test_a_reading_at_the_edge_of_the_future_skew_is_taken() -> None:
    edge = NOW + FUTURE_SKEW
    routed = route([reading(METER_ORES, edge.isoformat()),
                    reading(METER_ORES, (edge + _US).isoformat())])
    assert [len(p) for p in routed.parts.values()] == [1]
    assert [(q.index, q.reason) for q in routed.quarantined] == [(1, "invalid-record")]


def test_a_record_refused_for_its_meter_does_not_end_the_batch() -> None:
    routed = route([reading(METER_ORES, meter=1234567), reading(METER_ORES, at(1))])
    assert [(q.index, q.reason) for q in routed.quarantined] == [(0, "invalid-record")]
    assert routed.parts["ores"][0]["timestamp"] == at(1)


@pytest.mark.parametrize("via", [1234567, ["1SAG0000000001"], {"serial": "x"}])
def test_a_via_that_is_not_a_string_is_an_invalid_record(via: Any) -> None:
    routed = route([reading(METER_WATER, at(0), "8-0:1.0.0", unit="m3", via=via)])
    assert [(q.index, q.reason) for q in routed.quarantined] == [(0, "invalid-record")]
    assert routed.parts == {}


def test_a_record_may_be_any_mapping() -> None:
    rec = reading(METER_ORES)
    routed = route([MappingProxyType(rec)])
    assert routed.quarantined == () and routed.parts["ores"] == (rec,)


# -- the snapshot readers --------------------------------------------------------

def test_owner_span_reads_past_the_relations_that_are_not_ownership() -> None:
    """Whatever order the row holds them in: another relation of the meter
    does not hide its owner, nor its airplane mode."""
    for first, then in ((("reader", "fluvius"), ("owner", "ores")),
                        (("owner", "ores"), ("reader", "fluvius"))):
        index = RelationIndex([Relation("meter", METER_ORES, first[1], first[0]),
                               Relation("meter", METER_ORES, then[1], then[0]),
                               Relation("meter", METER_ORES, "*", "airplane-mode", SWITCH,
                                        None)])
        assert owner_span(index, METER_ORES, micros(NOW)) == (
            micros(SWITCH), _MAX, "ores", True)
        assert owner_span(index, METER_ORES, micros(SWITCH) - 1) == (
            _MIN, micros(SWITCH), "ores", False)


def test_owner_span_of_a_meter_the_feed_does_not_know() -> None:
    assert owner_span(RELATIONS, "1SAG0000000099", micros(NOW)) == (_MIN, _MAX, None, False)


def test_owner_span_of_an_id_with_a_lone_surrogate() -> None:
    """Such an id is no serial, but the reader must not fail on it: it is
    read as the snapshot spells it."""
    odd = "1SAG\udcff"
    index = RelationIndex([Relation("meter", odd, "ores", "owner")])
    assert owner_span(index, odd, micros(NOW)) == (_MIN, _MAX, "ores", False)
    assert owner_span(RELATIONS, odd, micros(NOW)) == (_MIN, _MAX, None, False)


def test_ean_span_reads_past_the_relations_that_are_not_the_pairing() -> None:
    key = meter_ean_id(METER_ORES, EAN_OK)
    for names in (("noted", ACCESS_POINT), (ACCESS_POINT, "noted")):
        index = RelationIndex([
            Relation(METER_EAN, key, "ores", names[0], SWITCH, None),
            Relation(METER_EAN, key, "ores", names[1], SWITCH, None)])
        assert ean_span(index, METER_ORES, EAN_OK, micros(NOW)) == (micros(SWITCH), _MAX, True)


def test_ean_span_at_the_instant_the_pairing_starts_and_ends() -> None:
    """A bound at the instant asked about starts the span there: the span
    holds that instant, so the cache that keeps it answers it again."""
    key = meter_ean_id(METER_ORES, EAN_OK)
    ends = SWITCH + timedelta(hours=6)
    index = RelationIndex([Relation(METER_EAN, key, "ores", ACCESS_POINT, SWITCH, ends)])
    assert ean_span(index, METER_ORES, EAN_OK, micros(SWITCH)) == (
        micros(SWITCH), micros(ends), True)
    assert ean_span(index, METER_ORES, EAN_OK, micros(ends)) == (micros(ends), _MAX, False)
    assert ean_span(index, METER_ORES, EAN_OK, micros(SWITCH) - 1) == (
        _MIN, micros(SWITCH), False)
    assert ean_span(RELATIONS, METER_ORES, "5414480000000", micros(NOW)) == (_MIN, _MAX, False)


# -- the per-call caches -----------------------------------------------------------

def quarter_hours(meter: str, start: Any, n: int, obis: str = "1-0:1.8.1",
                  **extra: Any) -> Iterator[dict[str, Any]]:
    for q in range(n):
        yield reading(meter, (start + timedelta(minutes=15 * q)).isoformat(), obis, **extra)


def test_each_owner_is_read_once_per_span(monkeypatch: pytest.MonkeyPatch) -> None:
    """A day of one meter: one read of its owner. A meter that changed owner
    at noon: one read per owner, however its readings are ordered, and a
    reading at the very instant of the change reads it once."""
    calls = counting(monkeypatch, records, "owner_span")
    day = SWITCH.replace(hour=0)
    routed = route([*quarter_hours(METER_ORES, day, 96),
                    *quarter_hours(METER_MOVED, day, 96),
                    reading(METER_MOVED, SWITCH.isoformat(), "1-0:2.8.1"),
                    reading(METER_MOVED, SWITCH.isoformat(), "1-0:1.8.2")])
    assert routed.quarantined == ()
    assert len(routed.parts["ores"]) == 96
    assert (len(routed.parts["fluvius"]), len(routed.parts["sibelga"])) == (48, 50)
    assert calls == {METER_ORES: 1, METER_MOVED: 2}


def test_each_carrier_is_read_once_per_span(monkeypatch: pytest.MonkeyPatch) -> None:
    """Water read through an electricity meter: the carrier's airplane mode
    is read once per span of it too, including from the instant it starts."""
    carrier = "1SAG0000000005"
    water = "3WTR0000000005"
    index = RelationIndex([
        Relation("meter", water, "pidpa", "owner"),
        Relation("meter", carrier, "fluvius", "owner", None, SWITCH),
        Relation("meter", carrier, "sibelga", "owner", SWITCH, None)])
    calls = counting(monkeypatch, records, "owner_span")
    routed = route([*quarter_hours(water, SWITCH, 8, "8-0:1.0.0", unit="m3", via=carrier),
                    reading(water, SWITCH.isoformat(), "8-0:2.0.0", unit="m3", via=carrier)],
                   index)
    assert routed.quarantined == () and len(routed.parts["pidpa"]) == 9
    assert calls == {water: 1, carrier: 1}


def test_each_distinct_value_is_checked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """OBIS codes, EANs and timestamps, valid or not, are each checked once
    per batch, however many readings repeat them."""
    obis = counting(monkeypatch, records, "obis_key")
    eans = counting(monkeypatch, records, "is_valid_ean")
    instants = counting(monkeypatch, records._Resolver, "instant")
    bad_ean = EAN_OK[:-1] + str((int(EAN_OK[-1]) + 1) % 10)
    batch = []
    for q in range(4):
        when = at(q / 4)
        batch += [reading(METER_ORES, when, ean=EAN_OK),
                  reading(METER_ORES, when, "1-0:2.8.1", ean=bad_ean),
                  reading(METER_ORES, when, "1-0:1.8.x"),
                  reading(METER_ORES, "yesterday", "1-0:1.8.2")]
    routed = route(batch)
    assert Counter(q.reason for q in routed.quarantined) == {
        "bad-ean": 4, "invalid-record": 8}
    assert len(routed.parts["ores"]) == 4
    assert obis == {"1-0:1.8.1": 1, "1-0:2.8.1": 1, "1-0:1.8.x": 1, "1-0:1.8.2": 1}
    assert eans == {EAN_OK: 1, bad_ean: 1}
    assert instants == {**{at(q / 4): 1 for q in range(4)}, "yesterday": 1}


def test_a_carrier_s_airplane_mode_ends_at_its_instant() -> None:
    """D5: the carrier's span ends where its airplane mode does; the reading
    at that very instant is read against the next span, not the cached one."""
    carrier = "1SAG0000000005"
    water = "3WTR0000000005"
    ends = SWITCH + timedelta(hours=6)
    index = RelationIndex([
        Relation("meter", water, "pidpa", "owner"),
        Relation("meter", carrier, "ores", "owner"),
        Relation("meter", carrier, "*", "airplane-mode", SWITCH, ends)])
    routed = route([reading(water, (ends - timedelta(minutes=15)).isoformat(), "8-0:1.0.0",
                            unit="m3", via=carrier),
                    reading(water, ends.isoformat(), "8-0:1.0.0", unit="m3", via=carrier)],
                   index)
    assert [(q.index, q.reason) for q in routed.quarantined] == [(0, "airplane-mode")]
    assert [r["timestamp"] for r in routed.parts["pidpa"]] == [ends.isoformat()]
