"""The columnar router's smaller guards, each pinned by a deterministic case
(mutation testing of ``gateway/core/push/days.py``, docs/mutation.md): what
a refused batch says, each field refused on its own, the bounds of a
meter-day, what a tenant receives (its EAN), the whole-day path against the
per-reading one at every boundary where an owner, a carrier or a pairing
changes (D1, D5), the posted ``values`` text, and the per-call caches."""

from __future__ import annotations

import json
from datetime import timedelta, timezone
from typing import Any

import pytest

from gateway.core.identifiers import with_check_digit
from gateway.core.model import Relation
from gateway.core.push import days as days_module
from gateway.core.push.days import (
    FORMAT,
    MAX_INTERVAL_S,
    MAX_VALUES,
    RoutedDays,
    route_meter_days,
)
from gateway.core.push.records import (
    ACCESS_POINT,
    FUTURE_SKEW,
    METER_EAN,
    BatchRejected,
    Quarantined,
    meter_ean_id,
)
from gateway.core.push.scan import scan_batch
from gateway.core.relations.index import RelationIndex
from tests.core.conftest import METER_MOVED, METER_ORES, METER_WATER, NOW, SWITCH
from tests.core.push._calls import counting
from tests.core.push.test_days import batch, day, delivered, outcomes, per_record, route
from tests.core.push.test_records import EAN_OK, METER_AIRPLANE, RELATIONS, YESTERDAY

# Every test here on each way a meter-day may be routed (tests/core/push/conftest.py).
pytestmark = pytest.mark.usefixtures("days_path")


def runs(routed: RoutedDays) -> set[tuple[int, str, str | None, int, int]]:
    return {(q.index, q.reason, q.meter, q.first, q.count) for q in routed.quarantined}


# -- what a refused batch says ------------------------------------------------------

REFUSED = {
    "format": ({"format": "meter-days/v2", "batch_id": "b", "meter_days": []},
               "unsupported-format", "format must be 'meter-days/v1' or absent"),
    "not-a-list": ({"format": FORMAT, "batch_id": "b", "meter_days": {}},
                   "meter-days-not-list", "meter_days must be a JSON array"),
    "too-many": ({"format": FORMAT, "batch_id": "b", "meter_days": [None] * 4},
                 "batch-too-large", "4 meter-days, at most 3 per batch"),
}


@pytest.mark.parametrize(("doc", "reason", "detail"), REFUSED.values(), ids=REFUSED.keys())
def test_a_refused_batch_says_exactly_what_is_wrong(doc: dict[str, Any], reason: str,
                                                    detail: str) -> None:
    with pytest.raises(BatchRejected) as info:
        route_meter_days(doc, RELATIONS, NOW, max_meter_days=3)
    assert (info.value.reason, info.value.detail) == (reason, detail)


def test_the_default_bound_is_two_hundred_thousand_meter_days() -> None:
    doc = {"format": FORMAT, "batch_id": "b", "meter_days": [None] * 200_000}
    assert route_meter_days(doc, RELATIONS, NOW).meter_days == 200_000
    doc["meter_days"].append(None)
    with pytest.raises(BatchRejected, match="200001 meter-days, at most 200000"):
        route_meter_days(doc, RELATIONS, NOW)


def test_a_naive_clock_is_refused_with_its_reason() -> None:
    with pytest.raises(ValueError, match=r"^now must be timezone-aware$"):
        route_meter_days(batch([]), RELATIONS, NOW.replace(tzinfo=None))


def test_the_batch_id_is_reported() -> None:
    assert route([day(METER_ORES, n=2)]).batch_id == "hes-2026-06-14"


# -- meter-days refused whole, one fault at a time ---------------------------------

def test_what_cannot_be_read_is_counted_and_ends_nothing() -> None:
    """A meter-day that is no object, or has no string meter, or no list of
    values: quarantined whole and counted (as one reading where its values
    cannot be counted), and the batch goes on."""
    days = ["not an object", {**day(METER_ORES, n=4), "meter": 5}, day("bad serial", n=3),
            day(METER_ORES, n=2, values=5, obis="1-0:2.8.1"),
            day(METER_ORES, n=4, extra=1, obis="1-0:1.8.2"), day(METER_ORES, n=2)]
    routed = route(days)
    assert routed.quarantined == (
        Quarantined(0, "invalid-record", None, 0, 1), Quarantined(1, "invalid-record", None, 0, 4),
        Quarantined(2, "malformed-meter-id", None, 0, 3),
        Quarantined(3, "invalid-record", METER_ORES, 0, 1),
        Quarantined(4, "unexpected-field", METER_ORES, 0, 4))
    assert [len(m["values"]) for m in delivered(routed)["ores"]] == [2]
    assert routed.counts() == {"received": 15, "queued": 2, "quarantined": 13, "meter_days": 6}


def test_a_refused_meter_day_without_a_list_of_values_counts_one_reading() -> None:
    days = [{**day(METER_ORES, n=2), "meter": 5, "values": 5},
            day("bad serial", n=2, values="1,2"),
            day(METER_ORES, n=2, values={"0": 1.0}, extra=1)]
    assert route(days).quarantined == (
        Quarantined(0, "invalid-record", None, 0, 1),
        Quarantined(1, "malformed-meter-id", None, 0, 1),
        Quarantined(2, "unexpected-field", METER_ORES, 0, 1))


ONE_FAULT = {
    "start-not-a-string": {"start": 1781395200},
    "start-garbage": {"start": "yesterday"},
    "start-without-offset": {"start": "2026-06-14T00:00:00"},
    "obis-not-a-string": {"obis": 181},
    "obis-malformed": {"obis": "1-0:1.8"},
    "interval-not-an-int": {"interval": "900"},
    "interval-zero": {"interval": 0},
    "interval-negative": {"interval": -900},
    "interval-over-a-day": {"interval": MAX_INTERVAL_S + 1},
    "unit-not-a-string": {"unit": ["kWh"]},
    "unit-unknown": {"unit": "MWh"},
    "operator-not-a-string": {"operator": 5},
    "via-not-a-string": {"via": 5},
    "via-malformed": {"via": "not a meter"},
    "quality-not-a-string": {"quality": 1},
    "quality-too-short": {"quality": "01" * 3},
    "quality-list-too-short": {"quality": ["01"] * 3},
    "values-empty": {"values": []},
    "values-too-many": {"values": [1.0] * (MAX_VALUES + 1),
                        "quality": "01" * (MAX_VALUES + 1)},
}


@pytest.mark.parametrize("fault", ONE_FAULT.values(), ids=ONE_FAULT.keys())
def test_each_field_alone_makes_the_meter_day_invalid(fault: dict[str, Any]) -> None:
    d = {**day(METER_ORES, n=4), **fault}
    n = len(d["values"]) or 1
    routed = route([d])
    assert routed.parts == {}
    assert runs(routed) == {(0, "invalid-record", METER_ORES, 0, n)}


@pytest.mark.parametrize("fields", [
    {"interval": 1, "n": 4},
    {"interval": MAX_INTERVAL_S, "n": 1},
    {"n": MAX_VALUES, "interval": 60},
])
def test_the_bounds_of_a_meter_day_are_taken(fields: dict[str, Any]) -> None:
    d = day(METER_ORES, **fields)
    routed = route([d])
    assert routed.quarantined == ()
    assert routed.counts()["queued"] == len(d["values"])


def test_codes_in_a_list_each_checked() -> None:
    routed = route([day(METER_ORES, n=4, quality=["01", 2, "99", "77"])])
    assert runs(routed) == {(0, "invalid-record", METER_ORES, 1, 1),
                            (0, "invalid-record", METER_ORES, 3, 1)}
    got = delivered(routed)["ores"]
    assert [(m["quality"], len(m["values"])) for m in got] == [("01", 1), ("99", 1)]


@pytest.mark.parametrize("ean", [5, ["x"], ""])
def test_an_ean_that_is_no_string_is_a_bad_ean(ean: Any) -> None:
    assert runs(route([day(METER_ORES, n=4, ean=ean)])) == {(0, "bad-ean", METER_ORES, 0, 4)}


# -- what a tenant receives --------------------------------------------------------

def test_the_ean_goes_with_the_meter_day_and_only_when_posted() -> None:
    routed = route([day(METER_ORES, n=2, ean=EAN_OK), day(METER_ORES, n=2, obis="1-0:2.8.1")])
    got = delivered(routed)["ores"]
    assert [m.get("ean") for m in got] == [EAN_OK, None]
    assert "ean" not in got[1]


def test_a_cut_meter_day_keeps_its_ean() -> None:
    """A meter-day cut where a bad value sits: both runs carry the EAN."""
    routed = route([day(METER_ORES, n=3, ean=EAN_OK, values=[1.0, None, 2.0])])
    assert [m["ean"] for m in delivered(routed)["ores"]] == [EAN_OK, EAN_OK]


# -- the whole day, or reading by reading --------------------------------------------

def test_a_whole_day_through_a_silenced_carrier_is_not_delivered() -> None:
    """D5: water read through an electricity meter in airplane mode the whole
    day long: nothing reaches the water company."""
    water = day(METER_WATER, SWITCH, n=4, interval=3600, obis="8-0:1.0.0", unit="m3",
                via=METER_AIRPLANE)
    routed = route([water])
    assert routed.parts == {}
    assert runs(routed) == {(0, "airplane-mode", METER_WATER, 0, 4)}


def test_an_owner_change_at_the_last_reading_cuts_it_off() -> None:
    """D1: the day ends at the instant the meter changes owner; that last
    reading is the new owner's."""
    d = day(METER_MOVED, SWITCH - timedelta(hours=3), n=4, interval=3600)
    routed = route([d])
    got = delivered(routed)
    assert [len(m["values"]) for m in got["fluvius"]] == [3]
    assert [(m["start"], m["values"]) for m in got["sibelga"]] == [
        (SWITCH.isoformat(), d["values"][3:])]
    assert outcomes(routed) == per_record([d])


def test_a_day_that_starts_where_the_cached_owner_ends() -> None:
    """The owner read for the morning is not reused for a day that starts at
    the very instant it ended."""
    morning = day(METER_MOVED, SWITCH - timedelta(hours=4), n=4, interval=3600)
    afternoon = day(METER_MOVED, SWITCH, n=4, interval=3600, obis="1-0:1.8.2")
    got = delivered(route([morning, afternoon]))
    assert [m["obis"] for m in got["fluvius"]] == ["1-0:1.8.1"]
    assert [m["obis"] for m in got["sibelga"]] == ["1-0:1.8.2"]


def test_a_carrier_silenced_at_the_last_reading() -> None:
    """D5: the carrier's airplane mode starts at the day's last reading."""
    water = day(METER_WATER, SWITCH - timedelta(hours=3), n=4, interval=3600,
                obis="8-0:1.0.0", unit="m3", via=METER_AIRPLANE)
    routed = route([water])
    assert runs(routed) == {(0, "airplane-mode", METER_WATER, 3, 1)}
    assert outcomes(routed) == per_record([water])


def test_a_pairing_that_ends_at_the_last_reading() -> None:
    """D1: the access point the meter-day names is paired until its last
    reading, exclusive: that reading is an EAN mismatch."""
    index = RelationIndex([
        Relation("meter", METER_ORES, "ores", "owner"),
        Relation(METER_EAN, meter_ean_id(METER_ORES, EAN_OK), "ores", ACCESS_POINT, None,
                 SWITCH)])
    d = day(METER_ORES, SWITCH - timedelta(hours=3), n=4, interval=3600, ean=EAN_OK)
    routed = route([d], index)
    assert runs(routed) == {(0, "ean-mismatch", METER_ORES, 3, 1)}
    assert [len(m["values"]) for m in delivered(routed)["ores"]] == [3]


def test_a_day_overlapping_a_whole_day_before_it_is_a_duplicate() -> None:
    """The whole-day path records what it delivered: a later meter-day of the
    same meter and register that repeats some of its instants has those
    readings quarantined as duplicates, the rest delivered."""
    first = day(METER_ORES, n=4, interval=3600)
    again = day(METER_ORES, YESTERDAY + timedelta(hours=2), n=4, interval=3600)
    routed = route([first, again])
    assert runs(routed) == {(1, "duplicate", METER_ORES, 0, 2)}
    assert [len(m["values"]) for m in delivered(routed)["ores"]] == [4, 2]
    assert outcomes(routed) == per_record([first, again])


def test_a_reading_at_the_edge_of_the_future_skew_is_taken_reading_by_reading() -> None:
    edge = NOW + FUTURE_SKEW
    d = day(METER_ORES, edge - timedelta(minutes=15), n=2, values=[None, 1.0])
    routed = route([d])
    assert runs(routed) == {(0, "invalid-record", METER_ORES, 0, 1)}
    assert [(m["start"], m["values"]) for m in delivered(routed)["ores"]] == [
        (edge.isoformat(), [1.0])]


# -- the values text as posted ---------------------------------------------------------

def test_each_whole_day_keeps_its_own_posted_values() -> None:
    """The cut-out is bounded by the meter-day's own span: an escape in the
    meter-day before or after it, or the next one's values key, changes nothing."""
    days = [day(METER_ORES, n=2, obis="1-0:1.8.0"), day(METER_ORES, n=2),
            day(METER_ORES, n=2, obis="1-0:2.8.1")]
    text = json.dumps(batch(days)).replace('"1-0:1.8.0"', '"1-0:1.8.\\u0030"')
    text = text.replace('"1-0:1.8.1", "unit": "kWh", "values": [0.0, 0.01]',
                        '"1-0:1.8.1", "unit": "kWh", "values": [0.000, 1.0e-2]')
    text = text.replace('"1-0:2.8.1"', '"1-0:2.8.\\u0031"')
    doc, spans = scan_batch(text)
    before, first, second = route_meter_days(doc, RELATIONS, NOW, text=text,
                                             spans=spans).parts["ores"].meter_days
    assert '"values":[0.000, 1.0e-2]' in first
    assert json.loads(before)["obis"] == "1-0:1.8.0" and '"values":[0.0, 0.01]' in before
    assert json.loads(second)["obis"] == "1-0:2.8.1" and '"values":[0.0, 0.01]' in second


def test_an_escape_anywhere_in_the_meter_day_re_encodes_its_values() -> None:
    text = json.dumps(batch([day(METER_ORES, n=2, operator="ores")]))
    text = text.replace("[0.0, 0.01]", "[0.000, 1.0e-2]").replace('"ores"', '"\\u006fres"')
    doc, spans = scan_batch(text)
    (part,) = route_meter_days(doc, RELATIONS, NOW, text=text, spans=spans).parts["ores"] \
        .meter_days
    assert '"values":[0.0, 0.01]' in part


@pytest.mark.parametrize("spans", ["none", "too-few"])
def test_without_the_spans_the_values_are_re_encoded(spans: str) -> None:
    text = json.dumps(batch([day(METER_ORES, n=2)])).replace("[0.0, 0.01]", "[0.000, 1.0e-2]")
    doc, found = scan_batch(text)
    given = None if spans == "none" else found[:0]
    (part,) = route_meter_days(doc, RELATIONS, NOW, text=text, spans=given).parts["ores"] \
        .meter_days
    assert '"values":[0.0, 0.01]' in part


# -- the per-call caches ------------------------------------------------------------------

def test_each_distinct_value_is_checked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Serials (meters and carriers), start times, quality strings and EANs,
    valid or not, are each checked once per batch."""
    serials = counting(monkeypatch, days_module, "is_valid_meter_serial", lambda a: a[0])
    eans = counting(monkeypatch, days_module, "is_valid_ean", lambda a: a[0])
    starts = counting(monkeypatch, days_module._Days, "start", lambda a: a[1])
    qualities = counting(monkeypatch, days_module, "_quality", lambda a: a[0])
    batch_days = []
    for k, obis in enumerate(("1-0:1.8.1", "1-0:1.8.2", "1-0:2.8.1")):
        batch_days += [
            day(METER_ORES, YESTERDAY + timedelta(days=-k), n=2, obis=obis, ean=EAN_OK),
            day(METER_WATER, YESTERDAY, n=2, obis=f"8-0:1.0.{k}", unit="m3",
                via="1SAG0000000001", quality="0101"),
            {**day(METER_ORES, n=2, obis="1-0:3.8.1"), "start": "yesterday"},
            day("bad serial", n=2)]
    routed = route(batch_days)
    assert routed.counts()["queued"] == 12
    assert serials == {METER_ORES: 1, METER_WATER: 1, "bad serial": 1}
    assert eans == {EAN_OK: 1}
    assert starts == {**{(YESTERDAY - timedelta(days=k)).isoformat(): 1 for k in (1, 2)},
                      YESTERDAY.isoformat(): 1, "yesterday": 1}
    assert qualities == {"0101": 1}


def test_each_owner_and_pairing_is_read_once_per_span(monkeypatch: pytest.MonkeyPatch) -> None:
    """From the instant a span starts, on both paths: the meter's new owner
    from noon (whole days, then a day read reading by reading), and a pairing
    that starts at the days' first reading."""
    index = RelationIndex([
        Relation("meter", METER_MOVED, "fluvius", "owner", None, SWITCH),
        Relation("meter", METER_MOVED, "sibelga", "owner", SWITCH, None),
        Relation("meter", METER_ORES, "ores", "owner"),
        Relation(METER_EAN, meter_ean_id(METER_ORES, EAN_OK), "ores", ACCESS_POINT, SWITCH,
                 None)])
    owners = counting(monkeypatch, days_module, "owner_span", lambda a: a[1])
    pairings = counting(monkeypatch, days_module, "ean_span", lambda a: (a[1], a[2]))
    batch_days = [day(METER_MOVED, SWITCH, n=4, interval=3600, obis=f"1-0:1.8.{k}")
                  for k in range(2)]
    batch_days.append(day(METER_MOVED, SWITCH, n=4, interval=3600, obis="1-0:1.8.2",
                          values=[1.0, None, 2.0, 3.0]))
    batch_days += [day(METER_ORES, SWITCH, n=4, interval=3600, obis=f"1-0:2.8.{k}",
                       ean=EAN_OK) for k in range(3)]
    routed = route(batch_days, index)
    assert routed.counts()["queued"] == 2 * 4 + 3 + 3 * 4
    assert set(delivered(routed)) == {"sibelga", "ores"}
    assert owners == {METER_MOVED: 1, METER_ORES: 1}
    assert pairings == {(METER_ORES, EAN_OK): 1}


def test_a_pairing_is_cached_per_meter_and_access_point() -> None:
    """Two meters, each with its own access point: one's pairing is never
    read as the other's."""
    other_ean = with_check_digit("54144800000000091")
    index = RelationIndex([
        Relation("meter", METER_ORES, "ores", "owner"),
        Relation("meter", METER_MOVED, "ores", "owner"),
        Relation(METER_EAN, meter_ean_id(METER_ORES, EAN_OK), "ores", ACCESS_POINT),
        Relation(METER_EAN, meter_ean_id(METER_MOVED, other_ean), "ores", ACCESS_POINT)])
    routed = route([day(METER_ORES, n=2, ean=EAN_OK),
                    day(METER_MOVED, n=2, ean=EAN_OK),
                    day(METER_MOVED, n=2, obis="1-0:2.8.1", ean=other_ean),
                    day(METER_ORES, n=2, obis="1-0:2.8.1", ean=other_ean)], index)
    assert runs(routed) == {(1, "ean-mismatch", METER_MOVED, 0, 2),
                            (3, "ean-mismatch", METER_ORES, 0, 2)}
    assert [(m["meter"], m["ean"]) for m in delivered(routed)["ores"]] == [
        (METER_ORES, EAN_OK), (METER_MOVED, other_ean)]


def test_a_start_time_is_kept_as_posted(monkeypatch: pytest.MonkeyPatch) -> None:
    """(The parse is of the posted text: one instant in two spellings is two
    entries, each parsed once.)"""
    starts = counting(monkeypatch, days_module._Days, "start", lambda a: a[1])
    east = YESTERDAY.astimezone(timezone(timedelta(hours=2)))
    routed = route([day(METER_ORES, n=2), day(METER_ORES, n=2, obis="1-0:2.8.1"),
                    day(METER_ORES, east, n=2, obis="1-0:2.8.2")])
    assert routed.counts()["queued"] == 6
    assert starts == {YESTERDAY.isoformat(): 1, east.isoformat(): 1}
    assert [m["start"] for m in delivered(routed)["ores"]] == [
        YESTERDAY.isoformat(), YESTERDAY.isoformat(), east.isoformat()]
