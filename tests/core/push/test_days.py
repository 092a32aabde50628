"""route_meter_days(): the columnar push format gives every reading the outcome
route_batch() gives the same reading in the per-record format (D1, D5)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.jsonlimits import DuplicateKey
from gateway.core.push.days import FORMAT, RoutedDays, route_meter_days
from gateway.core.push.records import QUARANTINE_REASONS, BatchRejected, route_batch
from gateway.core.push.scan import Spans, scan_batch, scan_days
from gateway.core.relations.index import RelationIndex
from tests.core.conftest import METER_MOVED, METER_ORES, METER_WATER, NOW, SWITCH
from tests.core.push.test_records import (
    EAN_BAD,
    EAN_FLUVIUS,
    EAN_MOVED_AFTER,
    EAN_MOVED_BEFORE,
    EAN_OK,
    METER_AIRPLANE,
    METER_TWO_OWNERS,
    METER_UNKNOWN,
    RELATIONS,
    YESTERDAY,
)

# Every test here on each way a meter-day may be routed (tests/core/push/conftest.py).
pytestmark = pytest.mark.usefixtures("days_path")

Outcome = tuple[str, str]  # ("to", tenant) or ("q", reason)


def day(meter: str, start: datetime = YESTERDAY, n: int = 96, interval: int = 900,
        **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"meter": meter, "start": start.isoformat(), "interval": interval,
                           "obis": "1-0:1.8.1", "unit": "kWh",
                           "values": [round(0.01 * i, 3) for i in range(n)],
                           "quality": "01" * n}
    doc.update(extra)
    return doc


def batch(days: list[Any]) -> dict[str, Any]:
    return {"format": FORMAT, "batch_id": "hes-2026-06-14", "source": "hes",
            "meter_days": days}


# How route() parses: as the intake does (the days_path fixture of
# tests/core/push/conftest.py may swap in scan_batch).
parse: Callable[[str], tuple[Any, Spans | None]] = scan_days


def route(days: list[Any], relations: RelationIndex = RELATIONS) -> RoutedDays:
    text = json.dumps(batch(days))
    doc, spans = parse(text)
    return route_meter_days(doc, relations, NOW, text=text, spans=spans)


def delivered(routed: RoutedDays) -> dict[str, list[dict[str, Any]]]:
    return {t: [json.loads(m) for m in p.meter_days] for t, p in routed.parts.items()}


Readings = Counter[tuple[str, str, str, datetime, float, str]]


def outcomes(routed: RoutedDays) -> tuple[dict[tuple[int, int], str], Readings]:
    """Quarantine reason per (meter-day index, value position), and the delivered
    readings: (tenant, meter, OBIS, instant, value, quality code)."""
    quarantine: dict[tuple[int, int], str] = {}
    for q in routed.quarantined:
        for i in range(q.first, q.first + q.count):
            assert (q.index, i) not in quarantine
            quarantine[(q.index, i)] = q.reason
    readings: Readings = Counter()
    for tenant, part in delivered(routed).items():
        for m in part:
            assert set(m) <= {"meter", "start", "interval", "obis", "unit", "quality", "values",
                              "ean"}  # D1: no routing hints for the tenant
            at = datetime.fromisoformat(m["start"])
            for i, value in enumerate(m["values"]):
                readings[(tenant, m["meter"], m["obis"],
                          at + timedelta(seconds=i * m["interval"]), value,
                          m["quality"][2 * i:2 * i + 2])] += 1
    return quarantine, readings


def _codes(d: dict[str, Any]) -> list[str]:
    q = d["quality"]
    return [q[i:i + 2] for i in range(0, len(q), 2)] if isinstance(q, str) else list(q)


def expand(days: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same readings in the per-record format, in batch order."""
    records = []
    for d in days:
        t0 = datetime.fromisoformat(d["start"])
        for i, (value, code) in enumerate(zip(d["values"], _codes(d), strict=True)):
            rec = {"meter": d["meter"],
                   "timestamp": (t0 + timedelta(seconds=i * d["interval"])).isoformat(),
                   "obis": d["obis"], "value": value, "unit": d["unit"], "quality": code}
            rec.update({k: d[k] for k in ("operator", "via", "ean") if k in d})
            records.append(rec)
    return records


def per_record(days: list[dict[str, Any]]) -> tuple[dict[tuple[int, int], str], Readings]:
    positions = [(k, i) for k, d in enumerate(days) for i in range(len(d["values"]))]
    routed = route_batch({"batch_id": "b", "records": expand(days)}, RELATIONS, NOW)
    readings: Readings = Counter()
    for tenant, records in routed.parts.items():
        for r in records:
            readings[(tenant, r["meter"], r["obis"], datetime.fromisoformat(r["timestamp"]),
                      r["value"], r["quality"])] += 1
    return {positions[q.index]: q.reason for q in routed.quarantined}, readings


# -- the day cut where the owner changed --------------------------------------

def test_owner_change_at_noon_cuts_the_day_exactly() -> None:
    routed = route([day(METER_MOVED)])
    got = delivered(routed)
    assert set(got) == {"fluvius", "sibelga"}
    (morning,), (afternoon,) = got["fluvius"], got["sibelga"]
    noon = (SWITCH - YESTERDAY) // timedelta(minutes=15)
    assert noon == 48
    assert datetime.fromisoformat(morning["start"]) == YESTERDAY
    assert datetime.fromisoformat(afternoon["start"]) == SWITCH
    assert morning["values"] == day(METER_MOVED)["values"][:noon]
    assert afternoon["values"] == day(METER_MOVED)["values"][noon:]
    assert len(morning["quality"]) == 2 * noon and len(afternoon["quality"]) == 2 * (96 - noon)
    assert routed.counts() == {"received": 96, "queued": 96, "quarantined": 0, "meter_days": 1}


def test_the_cut_keeps_the_posted_offset() -> None:
    start = YESTERDAY.astimezone(datetime.fromisoformat("2026-01-01T00:00+02:00").tzinfo)
    got = delivered(route([day(METER_MOVED, start)]))
    assert got["sibelga"][0]["start"].endswith("+02:00")
    assert datetime.fromisoformat(got["sibelga"][0]["start"]) == SWITCH


def test_a_whole_day_keeps_its_values_text_as_posted() -> None:
    text = json.dumps(batch([day(METER_ORES, n=2)])).replace("[0.0, 0.01]", "[0.000, 1.0e-2]")
    doc, spans = scan_batch(text)
    (part,) = route_meter_days(doc, RELATIONS, NOW, text=text, spans=spans).parts["ores"] \
        .meter_days
    assert '"values":[0.000, 1.0e-2]' in part
    assert "operator" not in part and "via" not in part


def test_an_escaped_values_key_is_re_encoded_a_repeated_one_refused() -> None:
    text = json.dumps(batch([day(METER_ORES, n=2)])).replace('"values"', '"valu\\u0065s"')
    doc, spans = scan_batch(text)
    (part,) = route_meter_days(doc, RELATIONS, NOW, text=text, spans=spans).parts["ores"] \
        .meter_days
    assert json.loads(part)["values"] == [0.0, 0.01]
    twice = json.dumps(batch([day(METER_ORES, n=2)])).replace(
        '"values": [0.0, 0.01]', '"values": [7, 7], "values": [0.0, 0.01]')
    # D1: a repeated key is refused whole (the router and a receiver could
    # otherwise read different values; test_push_scan_days has the cases).
    with pytest.raises(DuplicateKey):
        scan_batch(twice)


# -- every quarantine reason ----------------------------------------------------

def _reasons(days: list[Any]) -> dict[int, set[tuple[str, int, int]]]:
    out: dict[int, set[tuple[str, int, int]]] = {}
    for q in route(days).quarantined:
        out.setdefault(q.index, set()).add((q.reason, q.first, q.count))
    return out


def test_every_quarantine_reason() -> None:
    water = day(METER_WATER, obis="8-0:1.0.0", unit="m3", via=METER_AIRPLANE, n=4,
                start=SWITCH - timedelta(hours=1), interval=3600)
    days = [
        day(METER_ORES, n=4, values=[1.0, float("nan"), 2, True]),  # 0: two bad values
        day("bad serial", n=4),  # 1
        day(METER_ORES, n=4, ean=EAN_BAD),  # 2
        day(METER_ORES, n=4, start=YESTERDAY + timedelta(minutes=30)),  # 3: overlaps 0 by 2
        day(METER_UNKNOWN, n=4),  # 4
        day(METER_TWO_OWNERS, n=4),  # 5
        day(METER_ORES, n=4, obis="1-0:2.8.1", operator="fluvius"),  # 6
        day(METER_AIRPLANE, n=4, start=SWITCH - timedelta(hours=1), interval=3600),  # 7
        water,  # 8: its carrier is silenced from noon
        day(METER_ORES, n=4, obis="1-0:1.8.2", quality="01029901"[:6] + "77"),  # 9
        day(METER_ORES, n=4, obis="1-0:1.8.2", start=NOW - timedelta(minutes=30)),  # 10
        day(METER_ORES, n=4, obis="1-0:1.8.0", extra="member"),  # 11
        "not an object",  # 12
        day(METER_ORES, n=4, obis="1-0:2.8.0", ean=EAN_FLUVIUS),  # 13: a foreign EAN
        day(METER_ORES, n=4, obis="1-0:2.8.2", name="J. Dupont", values=[1, 2]),  # 14
        # D5: the unit of another quantity (a volume in kWh, an energy in m3)
        day(METER_ORES, n=4, obis="8-0:1.0.0", unit="kWh"),  # 15
        day(METER_ORES, n=4, obis="1-0:1.8.1.255", unit="m3"),  # 16
        # the code of day 0 in its six-group spelling: the same readings again
        day(METER_ORES, n=2, obis="1-0:1.8.1*255"),  # 17
        day(METER_ORES, n=4, obis="1-0:1.8.1*256"),  # 18: a group out of range
        day(METER_ORES, n=4, obis="16-0:1.8.1"),  # 19: no such medium
    ]
    got = _reasons(days)
    assert got[0] == {("invalid-record", 1, 1), ("invalid-record", 3, 1)}
    assert got[1] == {("malformed-meter-id", 0, 4)}
    assert got[2] == {("bad-ean", 0, 4)}
    assert got[3] == {("duplicate", 0, 1)}  # 00:30 came with meter-day 0 (00:45 was invalid)
    assert got[4] == {("no-owner", 0, 4)} and got[5] == {("no-owner", 0, 4)}
    assert got[6] == {("owner-mismatch", 0, 4)}
    assert got[7] == {("airplane-mode", 1, 3)}  # from noon, the reading at 11:00 goes
    assert got[8] == {("airplane-mode", 1, 3)}
    assert got[9] == {("invalid-record", 3, 1)}  # the code "77"
    assert got[10] == {("invalid-record", 3, 1)}  # more than 5 minutes ahead of now
    assert got[11] == {("unexpected-field", 0, 4)}  # the format is versioned, not open
    assert got[12] == {("invalid-record", 0, 1)}
    assert got[13] == {("ean-mismatch", 0, 4)}  # D1: never delivered to ORES
    assert got[14] == {("unexpected-field", 0, 2)}  # whatever else is wrong with it
    assert got[15] == {("unit-mismatch", 0, 4)} and got[16] == {("unit-mismatch", 0, 4)}
    assert got[17] == {("duplicate", 0, 1)}  # 00:00 came with meter-day 0, 00:15 did not
    assert got[18] == {("invalid-record", 0, 4)} and got[19] == {("invalid-record", 0, 4)}
    routed = route(days)
    assert {q.reason for q in routed.quarantined} == QUARANTINE_REASONS
    counts = routed.counts()
    received = 13 * 4 + 1 + 2 + 4 * 4 + 2
    assert counts["queued"] + counts["quarantined"] == counts["received"] == received
    assert {m["meter"] for m in delivered(routed)["pidpa"]} == {METER_WATER}


@pytest.mark.parametrize(("doc", "reason"), [
    ({"format": "meter-days/v2", "batch_id": "b", "meter_days": []}, "unsupported-format"),
    ({"format": FORMAT, "batch_id": "b", "records": []}, "meter-days-not-list"),
    ({"format": FORMAT, "batch_id": "../b", "meter_days": []}, "bad-batch-id"),
])
def test_unusable_batch_is_rejected(doc: dict[str, Any], reason: str) -> None:
    with pytest.raises(BatchRejected) as info:
        route_meter_days(doc, RELATIONS, NOW)
    assert info.value.reason == reason


def test_an_ean_pairing_that_ends_at_noon_cuts_the_day() -> None:
    days = [day(METER_MOVED, n=24, interval=3600, ean=EAN_MOVED_BEFORE),
            day(METER_MOVED, n=24, interval=3600, obis="1-0:1.8.2", ean=EAN_MOVED_AFTER)]
    routed = route(days)
    assert {(q.index, q.first, q.count, q.reason) for q in routed.quarantined} == {
        (0, 12, 12, "ean-mismatch"), (1, 0, 12, "ean-mismatch")}
    got = delivered(routed)
    assert [(m["obis"], len(m["values"])) for m in got["fluvius"]] == [("1-0:1.8.1", 12)]
    assert [(m["obis"], len(m["values"])) for m in got["sibelga"]] == [("1-0:1.8.2", 12)]
    assert outcomes(routed) == per_record(days)


def test_oversized_batch_is_rejected_whole() -> None:
    with pytest.raises(BatchRejected) as info:
        route_meter_days(batch([day(METER_ORES)] * 3), RELATIONS, NOW, max_meter_days=2)
    assert (info.value.reason, info.value.status) == ("batch-too-large", 413)


# -- the two formats agree -----------------------------------------------------

_STARTS = [YESTERDAY, YESTERDAY + timedelta(hours=11), YESTERDAY + timedelta(hours=11.5),
           SWITCH + timedelta(hours=5), NOW - timedelta(hours=1)]
_day = st.builds(
    lambda meter, start, interval, n, obis, unit, values, codes, extra: {
        "meter": meter, "start": start.isoformat(), "interval": interval, "obis": obis,
        "unit": unit, "values": values[:n] + [0.5] * (n - len(values[:n])),
        "quality": (codes * n)[:2 * n], **extra},
    meter=st.sampled_from([METER_ORES, METER_MOVED, METER_WATER, METER_AIRPLANE,
                           METER_TWO_OWNERS, METER_UNKNOWN, "1SAG10000000000", "bad serial"]),
    start=st.sampled_from(_STARTS),
    interval=st.sampled_from([900, 1800, 3600]),
    n=st.integers(1, 10),
    obis=st.sampled_from(["1-0:1.8.1", "8-0:1.0.0", "1-0:1.8"]),
    unit=st.sampled_from(["kWh", "m3", "J"]),
    values=st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                              st.integers(-5, 5)), max_size=10),
    codes=st.sampled_from(["01", "0102", "990201", "0100", "02"]),
    extra=st.fixed_dictionaries({}, optional={
        "ean": st.sampled_from([EAN_OK, EAN_BAD, EAN_FLUVIUS, EAN_MOVED_BEFORE]),
        "via": st.sampled_from([METER_ORES, METER_AIRPLANE]),
        "operator": st.sampled_from(["ores", "fluvius", "sibelga", "pidpa"])}))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_day, max_size=8), st.booleans())
def test_the_same_readings_get_the_same_outcome_in_both_formats(
        days: list[dict[str, Any]], as_list: bool) -> None:
    if as_list:  # quality as a list of codes is the same thing
        for d in days:
            d["quality"] = _codes(d)
    expected = per_record(days)
    assert outcomes(route(days)) == expected
    # The outcome also does not depend on whether the values text could be sliced,
    # nor on whether the values were checked rather than parsed (scan_days).
    assert outcomes(route_meter_days(batch(days), RELATIONS, NOW)) == expected
    assert outcomes(route_meter_days(scan_days(json.dumps(batch(days)))[0], RELATIONS,
                                     NOW)) == expected


# -- the scanner is json.loads -------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["meter_days", "batch_id", "x", "values"]), _json),
       st.sampled_from([None, 0, 2]), st.lists(_json, max_size=4))
def test_the_scanner_reads_what_json_loads_reads(doc: dict[str, Any], indent: int | None,
                                                 days: list[Any]) -> None:
    doc.setdefault("meter_days", days)
    text = json.dumps(doc, indent=indent)
    parsed, spans = scan_batch(text)
    assert parsed == json.loads(text)
    if isinstance(parsed.get("meter_days"), list):
        assert spans is not None
        assert [json.loads(text[a:b]) for a, b in spans] == parsed["meter_days"]
    for broken in (text[:-1], text + "x", text.replace(":", "", 1)):
        with pytest.raises(ValueError):
            json.loads(broken)
        with pytest.raises(ValueError):
            scan_batch(broken)
