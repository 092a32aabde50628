"""route_batch(): every pushed reading goes to the tenant owning its meter at
the reading's instant, or to quarantine with a reason (D1, D5)."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.identifiers import with_check_digit
from gateway.core.model import Relation
from gateway.core.push.canonical import batch_fingerprint
from gateway.core.push.records import (
    ACCESS_POINT,
    BATCH_REJECT_REASONS,
    ISOLATION_REASONS_PUSH,
    METER_EAN,
    QUARANTINE_REASONS,
    BatchRejected,
    RoutedBatch,
    meter_ean_id,
    route_batch,
)
from gateway.core.relations.index import RelationIndex
from tests.core.conftest import METER_MOVED, METER_ORES, METER_WATER, NOW, SWITCH

YESTERDAY = SWITCH.replace(hour=0)  # the day the batch reports; METER_MOVED moved at its noon
METER_AIRPLANE = "1SAG0000000009"  # ores; communication disabled during yesterday's afternoon
METER_TWO_OWNERS = "1SAG0000000010"  # a broken feed: two owners at once
METER_UNKNOWN = "1SAG0000000099"
EAN_OK = with_check_digit("54144800000000001")
EAN_BAD = EAN_OK[:-1] + str((int(EAN_OK[-1]) + 1) % 10)
EAN_FLUVIUS = with_check_digit("54144900000000002")  # a valid EAN of another operator
# METER_MOVED's access point until the switch (yesterday noon), then another one.
EAN_MOVED_BEFORE = with_check_digit("54144900000000003")
EAN_MOVED_AFTER = with_check_digit("54144900000000004")

DSOS = ("ores", "fluvius", "sibelga", "resa")
WATER = ("pidpa", "dewatergroep", "farys")


def at(hours: float) -> str:
    return (YESTERDAY + timedelta(hours=hours)).isoformat()


def reading(meter: str, when: str | None = None, obis: str = "1-0:1.8.1", /, **extra: Any
            ) -> dict[str, Any]:
    rec: dict[str, Any] = {"meter": meter, "timestamp": when or at(0), "obis": obis,
                           "value": 1234.5, "unit": "kWh", "quality": "01"}
    rec.update(extra)
    return rec


def consortium() -> tuple[list[Relation], dict[str, str], dict[str, str]]:
    """Meters of the seven HES companies: meter -> owner, water meter -> carrier."""
    owners: dict[str, str] = {}
    carriers: dict[str, str] = {}
    for d, dso in enumerate(DSOS):
        for n in range(2):
            owners[f"1SAG{d + 1}{n:09d}"] = dso
        owners[f"2GAS{d + 1}{0:09d}"] = dso
    for w, water in enumerate(WATER):
        serial = f"3WTR{w + 1}{0:09d}"
        owners[serial] = water
        carriers[serial] = f"1SAG{w + 2}{1:09d}"  # a DSO's electricity meter
    rels = [Relation("meter", serial, owner, "owner") for serial, owner in owners.items()]
    return rels, owners, carriers


def world(*extra: Relation) -> RelationIndex:
    rels, _, _ = consortium()
    return RelationIndex([
        *rels,
        Relation("meter", METER_ORES, "ores", "owner"),
        Relation("meter", METER_MOVED, "fluvius", "owner", None, SWITCH),
        Relation("meter", METER_MOVED, "sibelga", "owner", SWITCH, None),
        Relation("meter", METER_WATER, "pidpa", "owner"),
        Relation("meter", METER_AIRPLANE, "ores", "owner"),
        Relation("meter", METER_AIRPLANE, "*", "airplane-mode", SWITCH,
                 SWITCH + timedelta(hours=6)),
        Relation("meter", METER_TWO_OWNERS, "ores", "owner"),
        Relation("meter", METER_TWO_OWNERS, "resa", "owner"),
        Relation("ean", EAN_OK, "ores", "grid-operator"),
        Relation("ean", EAN_FLUVIUS, "fluvius", "grid-operator"),
        Relation(METER_EAN, meter_ean_id(METER_ORES, EAN_OK), "ores", ACCESS_POINT),
        Relation(METER_EAN, meter_ean_id(METER_AIRPLANE, EAN_OK), "ores", ACCESS_POINT),
        Relation(METER_EAN, meter_ean_id(METER_MOVED, EAN_MOVED_BEFORE), "fluvius",
                 ACCESS_POINT, None, SWITCH),
        Relation(METER_EAN, meter_ean_id(METER_MOVED, EAN_MOVED_AFTER), "sibelga",
                 ACCESS_POINT, SWITCH, None),
        *extra,
    ])


RELATIONS = world()


def route(records: list[Any], relations: RelationIndex = RELATIONS) -> RoutedBatch:
    return route_batch({"batch_id": "hes-2026-06-14", "source": "hes", "records": records},
                       relations, NOW)


def only_reason(records: list[Any]) -> str:
    routed = route(records)
    assert routed.parts == {}
    assert [q.index for q in routed.quarantined] == list(range(len(records)))
    reasons = {q.reason for q in routed.quarantined}
    assert len(reasons) == 1
    return reasons.pop()


# -- one reason per record ---------------------------------------------------

def _without(key: str) -> dict[str, Any]:
    rec = reading(METER_ORES)
    del rec[key]
    return rec


INVALID = {
    **{f"missing-{k}": _without(k) for k in ("timestamp", "obis", "value", "unit", "quality")},
    "meter-not-string": reading(METER_ORES, meter=1234567),
    "meter-missing": _without("meter"),
    "not-an-object": ["1SAG0000000001", at(0)],
    "null-record": None,
    "timestamp-garbage": reading(METER_ORES, "yesterday"),
    "timestamp-no-offset": reading(METER_ORES, "2026-06-14T00:00:00"),
    "timestamp-date-only": reading(METER_ORES, "2026-06-14"),
    "timestamp-number": reading(METER_ORES, timestamp=1781395200),
    "timestamp-future": reading(METER_ORES, (NOW + timedelta(minutes=6)).isoformat()),
    "value-nan": reading(METER_ORES, value=float("nan")),
    "value-inf": reading(METER_ORES, value=float("-inf")),
    "value-string": reading(METER_ORES, value="1234.5"),
    "value-bool": reading(METER_ORES, value=True),
    "value-null": reading(METER_ORES, value=None),
    "unit-unknown": reading(METER_ORES, unit="MWh"),
    "unit-unhashable": reading(METER_ORES, unit=["kWh"]),
    "quality-unknown": reading(METER_ORES, quality="03"),
    "quality-number": reading(METER_ORES, quality=1),
    "obis-letters": reading(METER_ORES, obis="1-0:1.8.x"),
    "obis-short": reading(METER_ORES, obis="1-0:1.8"),
    "obis-medium-out-of-range": reading(METER_ORES, obis="16-0:1.8.1"),
    "obis-group-out-of-range": reading(METER_ORES, obis="1-0:1.8.256"),
    "obis-leading-zero": reading(METER_ORES, obis="1-0:01.8.1"),
    "obis-seventh-group": reading(METER_ORES, obis="1-0:1.8.1*255*1"),
    "obis-trailing-newline": reading(METER_ORES, obis="1-0:1.8.1\n"),
    "obis-non-ascii-digit": reading(METER_ORES, obis="1-0:1.8.\u0661"),
    "obis-unhashable": reading(METER_ORES, obis={"code": "1-0:1.8.1"}),
    "via-malformed": reading(METER_WATER, obis="8-0:1.0.0", unit="m3", via="not a meter"),
    "operator-not-string": reading(METER_ORES, operator=["ores"]),
}


@pytest.mark.parametrize("rec", INVALID.values(), ids=INVALID.keys())
def test_invalid_record(rec: Any) -> None:
    assert only_reason([rec]) == "invalid-record"


@pytest.mark.parametrize(("obis", "unit"), [
    ("1-0:1.8.1", "m3"), ("1-0:1.8.1", "kW"), ("1-0:1.6.0", "kWh"), ("8-0:1.0.0", "kWh"),
    ("0-1:24.2.3", "kWh"), ("1-0:3.8.1", "kWh"), ("1-0:1.8.1*255", "m3"),
])
def test_a_unit_that_is_not_the_quantity_s_is_quarantined(obis: str, unit: str) -> None:
    """D5: an energy in m3 or a water volume in kWh is no reading of its OBIS code."""
    assert only_reason([reading(METER_ORES, None, obis, unit=unit)]) == "unit-mismatch"


def test_a_value_that_is_invalid_outranks_a_unit_mismatch() -> None:
    assert only_reason([reading(METER_ORES, None, "8-0:1.0.0", value="x")]) == "invalid-record"


@pytest.mark.parametrize("spelling", ["1-0:1.8.1*255", "1-0:1.8.1.255"])
def test_the_six_group_spelling_is_the_same_register(spelling: str) -> None:
    routed = route([reading(METER_ORES), reading(METER_ORES, None, spelling)])
    assert [q.reason for q in routed.quarantined] == ["duplicate"]
    assert sum(len(p) for p in routed.parts.values()) == 1


def test_invalid_record_reports_a_wellformed_serial_only() -> None:
    routed = route([reading(METER_ORES, value="x"), reading(METER_ORES, meter=7)])
    assert [q.meter for q in routed.quarantined] == [METER_ORES, None]


def test_a_small_clock_skew_is_tolerated() -> None:
    routed = route([reading(METER_ORES, (NOW + timedelta(minutes=4)).isoformat())])
    assert routed.counts() == {"received": 1, "queued": 1, "quarantined": 0}


@pytest.mark.parametrize("serial", ["1sag0000000001", "1SAG", "1SAG 000000001", "",
                                    "1SAG00000000000000000", "../1SAG000001"])
def test_malformed_meter_id_is_not_echoed(serial: str) -> None:
    routed = route([reading(serial)])
    assert [(q.reason, q.meter) for q in routed.quarantined] == [("malformed-meter-id", None)]


@pytest.mark.parametrize("ean", [EAN_BAD, EAN_OK[:-1], EAN_OK + "0", int(EAN_OK),
                                 "54144800000000001X", "\uff15" * 18])
def test_bad_ean(ean: Any) -> None:
    assert only_reason([reading(METER_ORES, ean=ean)]) == "bad-ean"


def test_valid_ean_passes_through() -> None:
    routed = route([reading(METER_ORES, ean=EAN_OK)])
    assert routed.parts["ores"][0]["ean"] == EAN_OK


@pytest.mark.parametrize("meter", [METER_UNKNOWN, METER_TWO_OWNERS])
def test_no_single_owner(meter: str) -> None:
    assert only_reason([reading(meter)]) == "no-owner"


def test_no_owner_outside_the_ownership_period() -> None:
    rels = world(Relation("meter", "1SAG0000000011", "resa", "owner", SWITCH))
    routed = route([reading("1SAG0000000011", at(11)), reading("1SAG0000000011", at(12))],
                   rels)
    assert [(q.index, q.reason) for q in routed.quarantined] == [(0, "no-owner")]
    assert len(routed.parts["resa"]) == 1


def test_the_wildcard_tenant_never_owns() -> None:
    rels = world(Relation("meter", "1SAG0000000012", "*", "owner"))
    assert route([reading("1SAG0000000012")], rels).quarantined[0].reason == "no-owner"


def test_airplane_mode_only_while_it_holds() -> None:
    recs = [reading(METER_AIRPLANE, at(h)) for h in (11, 12, 17.75, 18)]
    routed = route(recs)
    assert [(q.index, q.reason, q.meter) for q in routed.quarantined] == [
        (1, "airplane-mode", METER_AIRPLANE), (2, "airplane-mode", METER_AIRPLANE)]
    assert routed.parts["ores"] == (recs[0], recs[3])


def test_water_through_a_silenced_carrier_is_not_delivered() -> None:
    # D5: a meter in airplane mode sends nothing, so it carries nothing either.
    rec = reading(METER_WATER, at(13), "8-0:1.0.0", unit="m3", via=METER_AIRPLANE)
    assert only_reason([rec]) == "airplane-mode"


def test_owner_mismatch_is_an_isolation_violation() -> None:
    recs = [reading(METER_ORES, operator="fluvius"), reading(METER_ORES, at(1), operator="ores")]
    routed = route(recs)
    assert [(q.index, q.reason) for q in routed.quarantined] == [(0, "owner-mismatch")]
    assert routed.quarantined[0].reason in ISOLATION_REASONS_PUSH
    assert "fluvius" not in routed.parts
    assert routed.parts["ores"] == ({k: v for k, v in recs[1].items() if k != "operator"},)


def test_mismatch_is_never_masked_by_airplane_mode() -> None:
    rec = reading(METER_AIRPLANE, at(13), operator="resa")
    assert only_reason([rec]) == "owner-mismatch"


def test_duplicates_are_the_same_instant_however_spelled() -> None:
    recs = [reading(METER_ORES, "2026-06-14T10:00:00+00:00"),
            reading(METER_ORES, "2026-06-14T10:00:00Z", value=1.0),
            reading(METER_ORES, "2026-06-14T12:00:00+02:00"),
            reading(METER_ORES, "2026-06-14T10:00:00+00:00", obis="1-0:1.8.2"),
            reading(METER_MOVED, "2026-06-14T10:00:00+00:00")]
    routed = route(recs)
    assert [(q.index, q.reason, q.meter) for q in routed.quarantined] == [
        (1, "duplicate", METER_ORES), (2, "duplicate", METER_ORES)]
    assert routed.parts["ores"] == (recs[0], recs[3])


def test_reasons_are_the_documented_codes() -> None:
    assert ISOLATION_REASONS_PUSH <= QUARANTINE_REASONS
    assert sorted(ISOLATION_REASONS_PUSH) == ["ean-mismatch", "owner-mismatch"]
    assert sorted(QUARANTINE_REASONS) == ["airplane-mode", "bad-ean", "duplicate",
                                          "ean-mismatch", "invalid-record",
                                          "malformed-meter-id", "no-owner", "owner-mismatch",
                                          "unexpected-field", "unit-mismatch"]


# -- only the members the format defines; only the meter's own EAN (D1) ---------

UNEXPECTED = {
    "a-name": reading(METER_ORES, name="J. Dupont"),
    "another-serial": reading(METER_ORES, serial="1SAG0000000002"),
    "a-foreign-ean": reading(METER_ORES, ean=EAN_OK, ean2=EAN_FLUVIUS),
    "nested": reading(METER_ORES, note={"nested": [1, 2]}),
    "with-hints": reading(METER_WATER, at(0), "8-0:1.0.0", unit="m3", via=METER_ORES,
                          extra="kept"),
    "otherwise-invalid": reading(METER_ORES, value=float("nan"), customer="x"),
}


@pytest.mark.parametrize("rec", UNEXPECTED.values(), ids=UNEXPECTED.keys())
def test_a_member_the_format_does_not_define_is_quarantined(rec: dict[str, Any]) -> None:
    routed = route([rec, reading(METER_ORES, at(5))])
    assert [(q.index, q.reason, q.meter) for q in routed.quarantined] == [
        (0, "unexpected-field", rec["meter"])]
    assert list(routed.parts) == ["ores"] and len(routed.parts["ores"]) == 1


def test_every_defined_member_is_taken() -> None:
    rec = reading(METER_WATER, at(0), "8-0:1.0.0", unit="m3", via=METER_ORES,
                  operator="pidpa")
    assert route([rec]).parts["pidpa"][0] == {k: v for k, v in rec.items()
                                              if k not in ("via", "operator")}
    rec = reading(METER_ORES, ean=EAN_OK, operator="ores")
    assert route([rec]).parts["ores"][0]["ean"] == EAN_OK


def test_a_missing_required_member_is_invalid_whatever_else_it_carries() -> None:
    rec = _without("quality")
    rec["name"] = "J. Dupont"
    assert only_reason([rec]) == "invalid-record"


@pytest.mark.parametrize("ean", [EAN_FLUVIUS, EAN_MOVED_BEFORE],
                         ids=["another-operators-ean", "another-meters-ean"])
def test_an_ean_not_paired_with_the_meter_is_an_isolation_violation(ean: str) -> None:
    # Reproduced: an ORES meter's reading carrying a Fluvius EAN was delivered to ORES.
    assert only_reason([reading(METER_ORES, ean=ean)]) == "ean-mismatch"
    assert "ean-mismatch" in ISOLATION_REASONS_PUSH


def test_an_ean_on_a_meter_without_an_access_point_is_a_mismatch() -> None:
    rec = reading(METER_WATER, at(0), "8-0:1.0.0", unit="m3", via=METER_ORES, ean=EAN_OK)
    assert only_reason([rec]) == "ean-mismatch"  # the carrier's EAN is not the water meter's


def test_the_ean_pairing_is_read_at_the_readings_instant() -> None:
    recs = [reading(METER_MOVED, at(h), ean=ean) for h, ean in (
        (11.75, EAN_MOVED_BEFORE), (12, EAN_MOVED_BEFORE), (11.75, EAN_MOVED_AFTER),
        (12.25, EAN_MOVED_AFTER))]
    recs[2]["obis"] = "1-0:1.8.2"  # not a duplicate of the first
    routed = route(recs)
    assert [(q.index, q.reason) for q in routed.quarantined] == [(1, "ean-mismatch"),
                                                                 (2, "ean-mismatch")]
    assert routed.parts["fluvius"] == (recs[0],) and routed.parts["sibelga"] == (recs[3],)


def test_airplane_mode_comes_before_the_ean_check() -> None:
    assert only_reason([reading(METER_AIRPLANE, at(13), ean=EAN_FLUVIUS)]) == "airplane-mode"


# -- routing -----------------------------------------------------------------

def test_seven_companies_each_get_exactly_their_records() -> None:
    _, owners, carriers = consortium()
    records: list[dict[str, Any]] = []
    expected: dict[str, list[dict[str, Any]]] = {t: [] for t in DSOS + WATER}
    for q in range(8):
        for serial, owner in owners.items():
            if serial.startswith("1SAG"):
                rec = reading(serial, at(q / 4), "1-0:1.29.0", value=0.1 * q, operator=owner)
            elif serial.startswith("2GAS"):
                rec = reading(serial, at(q), "0-1:24.2.3", unit="m3", quality="02")
            else:
                rec = reading(serial, at(q), "8-0:1.0.0", unit="m3", via=carriers[serial])
            records.append(rec)
            expected[owner].append({k: v for k, v in rec.items() if k not in ("via", "operator")})
    routed = route(records)
    assert routed.quarantined == ()
    assert set(routed.parts) == set(DSOS + WATER)
    for tenant, recs in expected.items():
        assert list(routed.parts[tenant]) == recs, tenant
    assert routed.counts() == {"received": len(records), "queued": len(records),
                               "quarantined": 0}


def test_owner_change_at_noon_splits_the_day() -> None:
    recs = [reading(METER_MOVED, at(q / 4), "1-0:1.29.0") for q in range(96)]
    routed = route(recs)
    assert routed.parts["fluvius"] == tuple(recs[:48])
    assert routed.parts["sibelga"] == tuple(recs[48:])
    assert routed.quarantined == ()


def test_owner_change_with_records_out_of_order() -> None:
    recs = [reading(METER_MOVED, at(h), "1-0:1.29.0") for h in (13, 1, 12, 11.75, 23)]
    routed = route(recs)
    assert routed.parts["fluvius"] == (recs[1], recs[3])
    assert routed.parts["sibelga"] == (recs[0], recs[2], recs[4])


def test_water_via_a_dso_meter_goes_to_the_water_company() -> None:
    rec = reading(METER_WATER, at(0), "8-0:1.0.0", unit="m3", via=METER_ORES)
    routed = route([rec])
    assert set(routed.parts) == {"pidpa"}
    assert routed.parts["pidpa"] == ({k: v for k, v in rec.items() if k != "via"},)
    assert "via" in rec  # the caller's record is not edited


def test_records_without_hints_pass_through_as_is() -> None:
    rec = reading(METER_ORES, ean=EAN_OK)
    assert route([rec]).parts["ores"][0] is rec


def test_the_result_is_read_only() -> None:
    routed = route([reading(METER_ORES)])
    with pytest.raises(TypeError):
        routed.parts["fluvius"] = routed.parts["ores"]  # type: ignore[index]


# -- accounting ----------------------------------------------------------------

_METERS = [METER_ORES, METER_MOVED, METER_WATER, METER_AIRPLANE, METER_TWO_OWNERS,
           METER_UNKNOWN, "1SAG10000000000", "3WTR10000000000", "bad serial"]
_STAMPS = [at(h) for h in (0, 6, 11.75, 12, 13, 18, 23.75)] + [
    "2026-06-14T10:00:00Z", "2026-06-14T10:00:00", "nonsense",
    (NOW + timedelta(hours=1)).isoformat()]
_OWNERS = {"ores", "fluvius", "sibelga", "pidpa", "resa", "nobody"}

_record = st.fixed_dictionaries(
    {"meter": st.sampled_from(_METERS),
     "timestamp": st.sampled_from(_STAMPS),
     "obis": st.sampled_from(["1-0:1.8.1", "1-0:1.29.0", "8-0:1.0.0", "1-0:1.8"]),
     "value": st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                        st.integers(-5, 5), st.just("1")),
     "unit": st.sampled_from(["kWh", "kW", "m3", "J"]),
     "quality": st.sampled_from(["01", "02", "99", "00"])},
    optional={"ean": st.sampled_from([EAN_OK, EAN_BAD, EAN_FLUVIUS, EAN_MOVED_BEFORE]),
              "via": st.sampled_from([METER_ORES, METER_AIRPLANE, "x"]),
              "operator": st.sampled_from(sorted(_OWNERS))})
_garbage = st.one_of(st.none(), st.integers(), st.text(max_size=3),
                     st.lists(st.integers(), max_size=2))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_record, _record, _record, _garbage), max_size=40))
def test_every_record_is_queued_or_quarantined_exactly_once(records: list[Any]) -> None:
    snapshot = copy.deepcopy(records)
    routed = route(records)
    counts = routed.counts()
    assert counts["queued"] + counts["quarantined"] == counts["received"] == len(records)
    quarantined = [q.index for q in routed.quarantined]
    assert len(set(quarantined)) == len(quarantined)
    # Every other record, in batch order, in the part of the tenant owning its meter.
    expected: dict[str, list[Any]] = {}
    for i, rec in enumerate(records):
        if i not in quarantined:
            instant = datetime.fromisoformat(rec["timestamp"])
            (owner,) = RELATIONS.holders("meter", rec["meter"], "owner", instant)
            expected.setdefault(owner, []).append(
                {k: v for k, v in rec.items() if k not in ("via", "operator")})
    assert {t: list(part) for t, part in routed.parts.items()} == expected
    assert {q.reason for q in routed.quarantined} <= QUARANTINE_REASONS
    for tenant, part in routed.parts.items():
        assert part, tenant
        for rec in part:
            instant = datetime.fromisoformat(rec["timestamp"])
            # D1: the feed, and only the feed, says whose record it is.
            assert RELATIONS.holders("meter", rec["meter"], "owner", instant) == {tenant}
            assert "via" not in rec and "operator" not in rec
    assert json.dumps(records, sort_keys=True) == json.dumps(snapshot, sort_keys=True)


# -- fingerprint ---------------------------------------------------------------

_BATCH_TEXT = ('{"batch_id": "b-1", "records": [{"meter": "1SAG0000000001", "timestamp": '
               '"2026-06-14T00:00:00+00:00", "obis": "1-0:1.8.1", "value": 1.5, "unit": "kWh", '
               '"quality": "01"}, {"meter": "3WTR0000000001", "value": 2, '
               '"via": "1SAG0000000001"}]}')


def _fp(doc: dict[str, Any]) -> str:
    return batch_fingerprint(doc["batch_id"], doc["records"])


def test_fingerprint_ignores_key_order_and_whitespace() -> None:
    doc = json.loads(_BATCH_TEXT)
    shuffled = {"records": [dict(reversed(list(r.items()))) for r in doc["records"]],
                "batch_id": "b-1"}
    respaced = json.loads(json.dumps(shuffled, indent=4))
    assert _fp(doc) == _fp(json.loads(_BATCH_TEXT)) == _fp(respaced)
    assert len(_fp(doc)) == 64 and int(_fp(doc), 16) >= 0


def _variants() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    base = json.loads(_BATCH_TEXT)
    for i, rec in enumerate(base["records"]):
        for key, value in rec.items():
            changed = copy.deepcopy(base)
            changed["records"][i][key] = (value + 1 if isinstance(value, int | float)
                                          else value[:-1] + "X")
            out[f"record{i}-{key}"] = changed
    changed = copy.deepcopy(base)
    changed["records"][1]["value"] = 2.0  # same number, another JSON text
    out["int-to-float"] = changed
    changed = copy.deepcopy(base)
    changed["records"].reverse()
    out["order"] = changed
    changed = copy.deepcopy(base)
    changed["records"][0]["extra"] = None
    out["added-key"] = changed
    changed = copy.deepcopy(base)
    changed["records"].pop()
    out["dropped-record"] = changed
    out["batch-id"] = {**base, "batch_id": "b-2"}
    return out


@pytest.mark.parametrize("changed", _variants().values(), ids=_variants().keys())
def test_fingerprint_changes_with_any_content_change(changed: dict[str, Any]) -> None:
    assert _fp(changed) != _fp(json.loads(_BATCH_TEXT))


@pytest.mark.parametrize("n", [0, 1, 4095, 4096, 4097, 9000])
def test_fingerprint_is_the_hash_of_one_canonical_document(n: int) -> None:
    records = [reading(METER_ORES, at(0), value=i) for i in range(n)]
    canonical = json.dumps({"batch_id": "b", "records": records}, sort_keys=True,
                           separators=(",", ":"))
    assert batch_fingerprint("b", records) == hashlib.sha256(canonical.encode()).hexdigest()


# -- the batch as a whole ----------------------------------------------------------

REJECTED: dict[str, tuple[Any, str]] = {
    "list": ([reading(METER_ORES)], "batch-not-object"),
    "string": ("{}", "batch-not-object"),
    "null": (None, "batch-not-object"),
    "no-id": ({"records": []}, "bad-batch-id"),
    "id-number": ({"batch_id": 7, "records": []}, "bad-batch-id"),
    "id-empty": ({"batch_id": "", "records": []}, "bad-batch-id"),
    "id-path": ({"batch_id": "../b", "records": []}, "bad-batch-id"),
    "no-records": ({"batch_id": "b"}, "records-not-list"),
    "records-object": ({"batch_id": "b", "records": {"0": reading(METER_ORES)}},
                       "records-not-list"),
}


@pytest.mark.parametrize(("batch", "reason"), REJECTED.values(), ids=REJECTED.keys())
def test_unusable_batch_is_rejected(batch: Any, reason: str) -> None:
    with pytest.raises(BatchRejected) as info:
        route_batch(batch, RELATIONS, NOW)
    assert info.value.reason == reason and info.value.status == 400
    assert reason in BATCH_REJECT_REASONS and reason in str(info.value)


def test_oversized_batch_is_rejected_whole() -> None:
    batch = {"batch_id": "b", "records": [reading(METER_ORES, at(h)) for h in range(4)]}
    assert route_batch(batch, RELATIONS, NOW, max_records=4).counts()["queued"] == 4
    with pytest.raises(BatchRejected) as info:
        route_batch(batch, RELATIONS, NOW, max_records=3)
    assert (info.value.reason, info.value.status) == ("batch-too-large", 413)


def test_empty_batch() -> None:
    routed = route([])
    assert (routed.batch_id, routed.parts, routed.quarantined) == ("hes-2026-06-14", {}, ())
    assert routed.counts() == {"received": 0, "queued": 0, "quarantined": 0}


def test_a_naive_clock_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="aware"):
        route_batch({"batch_id": "b", "records": []}, RELATIONS, NOW.replace(tzinfo=None))


def test_push_core_imports_no_io() -> None:
    code = ("import sys, gateway.core.push.records\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('aiohttp', 'asyncio', 'ssl', 'socket')]\n"
            "print(','.join(bad)); sys.exit(1 if bad else 0)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
