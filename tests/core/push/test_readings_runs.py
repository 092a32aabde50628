"""The per-record fast path's run-wise routing (gateway.core.push.readings,
``route_runs``): a batch that is meter after meter and quarantines nothing
is routed column by column, meter by meter. Every batch it takes gets the
outcome the reading-by-reading loop (``route_each``) gives it, the same
tenants in the same order with the same readings in batch order (D1); and
every batch in which some reading would be quarantined, hinted or paired
with an EAN is left to the loop, so no check of the loop is skipped (D1,
D5). Every case runs twice: on the C (gateway/core/_native_runs.c) and on
its Python reference."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msgspec import UNSET

from gateway.core.native import native
from gateway.core.push import readings as readings_module
from gateway.core.push.readings import (
    Reading,
    ReadingsBatch,
    batch_encoders,
    decode_readings,
    encode_readings,
    encode_runs,
    join_part,
    plain_numbers,
    readings_fingerprint,
    route_each,
    route_readings,
    route_runs,
)
from gateway.core.push.records import RoutedBatch
from tests.core.conftest import METER_MOVED, METER_ORES, METER_WATER, NOW
from tests.core.push.test_readings import RECORD, spelt
from tests.core.push.test_records import (
    EAN_OK,
    METER_AIRPLANE,
    METER_TWO_OWNERS,
    METER_UNKNOWN,
    RELATIONS,
    at,
    consortium,
    reading,
)

BATCH_ID = "hes-2026-06-14"
_, OWNERS, CARRIERS = consortium()
# A meter's own registers: each is one quantity, in its one unit.
REGISTERS = {"1SAG": [("1-0:1.8.1", "kWh"), ("1-0:2.8.1", "kWh"), ("1-0:1.7.0", "kW")],
             "2GAS": [("7-0:3.0.0", "m3")], "3WTR": [("8-0:1.0.0", "m3")]}
HOURS = [h / 4 for h in range(40)]  # quarter-hours of yesterday morning


@pytest.fixture(scope="module", autouse=True, params=["native", "reference"])
def runs_implementation(request: pytest.FixtureRequest) -> Iterator[str]:
    """route_runs in C where it was built, and its Python reference."""
    if request.param == "native" and native is None:
        pytest.skip("gateway.core._native was not built on this machine")
    with pytest.MonkeyPatch.context() as mp:
        if request.param == "reference":
            mp.setattr(readings_module, "_native", None)
        yield request.param


def records_of(batch: list[dict[str, Any]]) -> list[Reading]:
    decoded = decode_readings(json.dumps({"batch_id": BATCH_ID, "records": batch}).encode())
    assert decoded is not None
    return decoded.records


def by_loop(records: list[Reading]) -> RoutedBatch:
    return route_each(BATCH_ID, records, RELATIONS, NOW)


def same(routed: RoutedBatch, want: RoutedBatch) -> None:
    assert routed.batch_id == want.batch_id
    assert routed.received == want.received
    assert routed.quarantined == want.quarantined
    assert list(routed.parts) == list(want.parts)  # tenants in the loop's order
    assert {t: list(p) for t, p in routed.parts.items()} == \
        {t: list(p) for t, p in want.parts.items()}


def taken(batch: list[dict[str, Any]]) -> dict[str, list[Reading]]:
    """The batch routed run by run, which must be the loop's outcome."""
    records = records_of(batch)
    routed_runs = route_runs(records, RELATIONS, NOW)
    assert routed_runs is not None, "a clean batch, meter after meter, is routed run by run"
    runs, parts = routed_runs
    # The runs cover the batch in order, one meter each.
    assert [start for _, start, _, _ in runs] == [0, *(end for _, _, end, _ in runs[:-1])]
    assert runs[-1][2] == len(records)
    assert all(len({r.meter for r in records[start:end]}) == 1 for _, start, end, _ in runs)
    # A run is stripped exactly where its readings carry a hint (D1).
    for _, start, end, stripped in runs:
        assert stripped == any(r.via is not UNSET or r.operator is not UNSET
                               for r in records[start:end])
    want = by_loop(records)
    assert want.quarantined == ()
    assert [t for t, p in parts.items() if p] == list(want.parts)  # the loop's order
    assert {t: p for t, p in parts.items() if p} == {t: list(p) for t, p in want.parts.items()}
    routed = route_readings(decoded(batch), RELATIONS, NOW)
    same(routed, want)
    assert routed.runs == tuple(runs)
    return {t: p for t, p in parts.items() if p}


def decoded(batch: list[dict[str, Any]]) -> ReadingsBatch:
    found = decode_readings(json.dumps({"batch_id": BATCH_ID, "records": batch}).encode())
    assert found is not None
    return found


def left(batch: list[dict[str, Any]]) -> RoutedBatch:
    """The batch is the loop's: route_runs declines it, and route_readings
    gives the loop's outcome."""
    records = records_of(batch)
    assert route_runs(records, RELATIONS, NOW) is None
    want = by_loop(records)
    routed = route_readings(decoded(batch), RELATIONS, NOW)
    same(routed, want)
    assert routed.runs is None
    return want


@st.composite
def clean_batches(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Meter after meter, each reading of a known owner in its own register
    at a distinct instant, with or without the HES's routing hints (a water
    meter's carrier, the owner's label, either null): what an HES posts
    every day."""
    meters = draw(st.lists(st.sampled_from(sorted(OWNERS)), min_size=1, max_size=8,
                           unique=True))
    batch: list[dict[str, Any]] = []
    for meter in meters:
        registers = draw(st.lists(st.sampled_from(REGISTERS[meter[:4]]), min_size=1,
                                  max_size=3, unique=True))
        hours = draw(st.lists(st.sampled_from(HOURS), min_size=1, max_size=6, unique=True))
        hints = draw(st.fixed_dictionaries({}, optional={
            "via": st.sampled_from([CARRIERS.get(meter), None]),
            "operator": st.sampled_from([OWNERS[meter], None])}))
        for hour in hours:
            for obis, unit in registers:
                batch.append(reading(meter, at(hour), obis, unit=unit,
                                     value=draw(st.integers(0, 10**6)),
                                     quality=draw(st.sampled_from(["01", "02", "99"])),
                                     **hints))
    return batch


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clean_batches())
def test_a_clean_batch_is_routed_run_by_run_as_the_loop_routes_it(
        batch: list[dict[str, Any]]) -> None:
    parts = taken(batch)
    assert sum(map(len, parts.values())) == len(batch)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(RECORD, max_size=30), st.randoms(use_true_random=False))
def test_any_well_typed_batch_has_the_loops_outcome(records: list[dict[str, Any]],
                                                     rnd: random.Random) -> None:
    """Generated batches of every kind (hints, EANs, unknown meters, bad
    instants and codes, duplicates): taken or not, the loop's outcome."""
    decoded = decode_readings(spelt(records, rnd))
    assert decoded is not None
    same(route_readings(decoded, RELATIONS, NOW), by_loop(decoded.records))


ORES_DAY = [reading(METER_ORES, at(h), value=i) for i, h in enumerate((1, 2, 3))]
TWO_METERS = ORES_DAY + [reading("1SAG1000000000", at(h), value=3 + i)
                         for i, h in enumerate((1, 2))]


def test_the_clean_batches_below_are_taken() -> None:
    """The batches the next tests change in one respect are taken as they are."""
    assert taken(ORES_DAY) == {"ores": records_of(ORES_DAY)}
    assert list(taken(TWO_METERS)) == ["ores"]
    assert list(taken([*TWO_METERS[3:], reading("1SAG2000000000", at(1), value=9)])) == \
        ["ores", "fluvius"]
    # A null EAN is no EAN: nothing to pair, nothing to strip.
    taken([{**ORES_DAY[0], "ean": None}, *ORES_DAY[1:]])


def one_off(index: int, **change: Any) -> list[dict[str, Any]]:
    batch = [dict(r) for r in TWO_METERS]
    batch[index].update(change)
    return batch


def test_a_run_with_routing_hints_is_delivered_without_them() -> None:
    """D1: the HES's routing hints (a carrier, the owner's label, either
    null) never reach a tenant; the fingerprint is still of what was posted."""
    for hints in ({"via": None}, {"operator": None}, {"via": METER_ORES},
                  {"operator": "ores"}, {"via": METER_ORES, "operator": "ores"}):
        batch = [{**r, **hints} if r["meter"] != METER_ORES else r for r in TWO_METERS]
        parts = taken(batch)
        assert all(r.via is UNSET and r.operator is UNSET for r in parts["ores"])
        assert encoded_alike(batch)


def test_hints_the_loop_would_quarantine_or_that_differ_are_the_loops() -> None:
    """D1: a label naming another company is owner-mismatch; D5: what a
    carrier in airplane mode carries is airplane-mode; a malformed carrier is
    invalid; and a meter whose readings carry different hints is the loop's."""
    assert [q.reason for q in left(one_off(4, operator="fluvius")).quarantined] == \
        ["owner-mismatch"]
    assert [q.reason for q in left(one_off(4, via="bad serial")).quarantined] == \
        ["invalid-record"]
    water = [reading(METER_WATER, at(h), "8-0:1.0.0", unit="m3", via=METER_AIRPLANE, value=i)
             for i, h in enumerate((13, 14))]
    assert [q.reason for q in left(water).quarantined] == ["airplane-mode"] * 2
    # Before noon its carrier was not in airplane mode; across noon it changed.
    assert list(taken([{**r, "timestamp": at(h)} for r, h in zip(water, (1, 2), strict=True)])) \
        == ["pidpa"]
    assert left([{**r, "timestamp": at(h)} for r, h in zip(water, (11, 13), strict=True)]
                ).parts["pidpa"]
    assert left([{**r, "timestamp": at(h)} for r, h in zip(water, (13, 11), strict=True)]
                ).parts["pidpa"]
    # Exactly at the carrier's changes: from 18:00 it speaks again (the run
    # is taken from that instant on); at 12:00 it is silent (the loop's).
    assert list(taken([{**r, "timestamp": at(h)} for r, h in zip(water, (18, 19), strict=True)])
                ) == ["pidpa"]
    routed = left([{**r, "timestamp": at(h)} for r, h in zip(water, (11, 12), strict=True)])
    assert [q.reason for q in routed.quarantined] == ["airplane-mode"]
    for change in ({"via": METER_ORES}, {"via": None}, {"operator": "ores"},
                   {"operator": None}):
        assert left(one_off(4, **change)).quarantined == ()
    batch = [{**r, "via": METER_ORES} for r in TWO_METERS]
    batch[4]["via"] = METER_MOVED
    assert left(batch).quarantined == ()
    batch[4]["via"], batch[4]["operator"] = METER_ORES, "ores"
    assert left(batch).quarantined == ()


def test_a_carriers_owner_takes_its_place_among_the_parts_as_in_the_loop() -> None:
    """The loop reads a carrier's owner when it meets the carrier: the
    tenants come in that order (the outcome's order, not only its content)."""
    batch = [reading(METER_WATER, at(1), "8-0:1.0.0", unit="m3", via=METER_MOVED, value=0),
             reading(METER_ORES, at(1), value=1),
             reading("1SAG2000000000", at(1), value=2)]
    # METER_MOVED was fluvius's until noon: its owner is met before ores.
    assert list(by_loop(records_of(batch)).parts) == ["pidpa", "fluvius", "ores"]
    assert list(taken(batch)) == ["pidpa", "fluvius", "ores"]
    batch[0]["via"] = METER_ORES
    assert list(by_loop(records_of(batch)).parts) == ["pidpa", "ores", "fluvius"]
    assert list(taken(batch)) == ["pidpa", "ores", "fluvius"]


def test_an_ean_is_paired_by_the_loop() -> None:
    """D1: an EAN is checked against the meter's access point, reading by reading."""
    assert left(one_off(0, ean=EAN_OK)).quarantined == ()
    assert [q.reason for q in left(one_off(4, ean=EAN_OK)).quarantined] == ["ean-mismatch"]


def test_a_meter_whose_readings_are_apart_is_the_loops() -> None:
    batch = [dict(r) for r in TWO_METERS]
    batch.append(reading(METER_ORES, at(4), value=5))
    routed = left(batch)
    assert routed.quarantined == () and len(routed.parts["ores"]) == 6


def test_an_instant_the_loop_refuses_is_the_loops() -> None:
    """A timestamp without an offset, unparsable or in the future: invalid-record."""
    for stamp in ("2026-06-14T10:00:00", "nonsense",
                  (NOW.replace(year=2027)).isoformat()):
        assert [q.reason for q in left(one_off(2, timestamp=stamp)).quarantined] == \
            ["invalid-record"]


def test_two_spellings_of_one_instant_are_the_loops() -> None:
    """The same instant at another offset is a duplicate for the loop."""
    same_instant = at(1).replace("+00:00", "Z")
    assert same_instant != at(1)
    routed = left(one_off(1, timestamp=same_instant))
    assert [q.reason for q in routed.quarantined] == ["duplicate"]
    # At another meter the same two spellings are no duplicate, still the loop's.
    assert left(one_off(4, timestamp=at(3).replace("+00:00", "Z"))).quarantined == ()


def test_an_obis_code_the_loop_refuses_is_the_loops() -> None:
    assert [q.reason for q in left(one_off(1, obis="1-0:1.8")).quarantined] == \
        ["invalid-record"]


def test_two_spellings_of_one_obis_code_are_the_loops() -> None:
    """``1-0:1.8.1*255`` is ``1-0:1.8.1``: at one instant, a duplicate."""
    batch = [dict(r) for r in TWO_METERS]
    batch.append(reading("1SAG1000000000", at(1), "1-0:1.8.1*255", value=5))
    assert [q.reason for q in left(batch).quarantined] == ["duplicate"]
    batch[-1]["timestamp"] = at(3)
    assert left(batch).quarantined == ()


def test_a_malformed_serial_is_the_loops() -> None:
    batch = [dict(r) for r in TWO_METERS]
    for r in batch[3:]:
        r["meter"] = "bad serial"
    assert [q.reason for q in left(batch).quarantined] == ["malformed-meter-id"] * 2


def test_a_meter_without_one_owner_is_the_loops() -> None:
    for meter in (METER_UNKNOWN, METER_TWO_OWNERS):
        batch = [dict(r) for r in TWO_METERS]
        for r in batch[3:]:
            r["meter"] = meter
        assert [q.reason for q in left(batch).quarantined] == ["no-owner"] * 2


def test_a_meter_in_airplane_mode_is_the_loops() -> None:
    """D5: METER_AIRPLANE's communication was disabled from noon to six."""
    batch = [reading(METER_AIRPLANE, at(h), value=i) for i, h in enumerate((13, 14))]
    assert [q.reason for q in left(batch).quarantined] == ["airplane-mode"] * 2
    assert list(taken([reading(METER_AIRPLANE, at(h), value=i)
                       for i, h in enumerate((1, 2))])) == ["ores"]


def test_an_owner_change_within_a_meters_readings_is_the_loops() -> None:
    """D1: METER_MOVED changed owner at noon, between its readings (in
    either order): each reading goes to its own instant's owner."""
    for hours in ((11, 13), (13, 11), (11, 11.5, 12)):
        routed = left([reading(METER_MOVED, at(h), value=i) for i, h in enumerate(hours)])
        assert sorted(routed.parts) == ["fluvius", "sibelga"]
    assert list(taken([reading(METER_MOVED, at(h), value=i)
                       for i, h in enumerate((12, 13))])) == ["sibelga"]


def test_a_unit_that_is_not_the_codes_is_the_loops() -> None:
    """D5: a volume in kWh, an energy in m³ is no reading of that quantity:
    in a meter's one register and among several registers."""
    assert [q.reason for q in left(one_off(1, unit="m3")).quarantined] == ["unit-mismatch"]
    assert [q.reason for q in left(one_off(0, unit="kW")).quarantined] == ["unit-mismatch"]
    batch = [dict(r) for r in TWO_METERS]
    batch.append(reading("1SAG1000000000", at(1), "1-0:1.7.0", unit="kW", value=5))
    taken(batch)
    batch[-1]["unit"] = "kWh"
    assert [q.reason for q in left(batch).quarantined] == ["unit-mismatch"]
    batch[-1].update(obis="8-0:1.0.0", unit="m3")  # water on an electricity meter is its code
    taken(batch)
    batch[-1]["unit"] = "kWh"
    assert [q.reason for q in left(batch).quarantined] == ["unit-mismatch"]


def test_a_duplicate_is_the_loops() -> None:
    """A meter's reading of one register at one instant, twice: in a meter's
    one register, and among several registers."""
    assert [q.reason for q in left(one_off(2, timestamp=at(1))).quarantined] == ["duplicate"]
    batch = [dict(r) for r in TWO_METERS]
    batch.append(reading("1SAG1000000000", at(1), "1-0:2.8.1", value=5))
    taken(batch)  # another register at the same instant: no duplicate
    batch.append(reading("1SAG1000000000", at(1), "1-0:2.8.1", value=6))
    assert [q.reason for q in left(batch).quarantined] == ["duplicate"]


def test_an_empty_batch_is_the_loops() -> None:
    assert route_runs([], RELATIONS, NOW) is None
    assert by_loop([]).parts == {}


def test_the_water_meter_is_its_water_companys() -> None:
    assert list(taken([reading(METER_WATER, at(1), "8-0:1.0.0", unit="m3", value=0)])) == \
        ["pidpa"]


def encoded_alike(batch: list[dict[str, Any]]) -> bool:
    """encode_runs gives the fingerprint and parts the two encoders give, or
    declines (False) and leaves them to those."""
    typed = decoded(batch)
    routed = route_readings(typed, RELATIONS, NOW)
    assert routed.runs is not None
    plain = plain_numbers(typed.records)
    encoded = encode_runs(BATCH_ID, typed.records, routed.runs, routed.parts, plain=plain)
    if encoded is None:
        return False
    fingerprint, pieces = encoded
    assert fingerprint == readings_fingerprint(BATCH_ID, typed.records, plain=plain)
    assert pieces.keys() == routed.parts.keys()
    for tenant, part in routed.parts.items():
        assert join_part(pieces[tenant]) == encode_readings(part, plain=plain)
    return True


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clean_batches())
def test_each_run_is_encoded_once_for_the_fingerprint_and_its_part(
        batch: list[dict[str, Any]]) -> None:
    """D1 idempotency: the fingerprint of a batch routed run by run is the
    one of the whole batch; each tenant's part is the standard encoding."""
    assert encoded_alike(batch)


def test_a_run_msgspec_would_spell_otherwise_is_left_to_the_standard_encoders() -> None:
    """Numbers json.dumps writes otherwise (1e16), and text it escapes (a
    non-ASCII or DEL character, which an instant's separator may be): the
    two encoders of the general case write the batch."""
    assert not encoded_alike(one_off(4, value=1e16))
    for odd in ("\u00e9", "\x7f"):
        stamp = at(5).replace("T", odd)
        assert not encoded_alike(one_off(4, timestamp=stamp))
        assert not encoded_alike(one_off(0, timestamp=stamp))
    assert encoded_alike(one_off(4, value=1e15))


def test_the_service_gets_the_same_fingerprint_and_parts_either_way() -> None:
    """batch_encoders: the runs' encodings where the batch was routed run by
    run and msgspec spells it as json.dumps, else the two encoders; the same
    fingerprint and bytes in every case (D1 idempotency)."""
    for batch, by_runs in ((TWO_METERS, True),
                           (one_off(4, value=1e16), True),  # numbers msgspec spells otherwise
                           (one_off(4, operator="fluvius"), False)):  # quarantined: the loop
        typed = decoded(batch)
        routed = route_readings(typed, RELATIONS, NOW)
        assert (routed.runs is not None) is by_runs
        plain = plain_numbers(typed.records)
        fingerprint, encoders = batch_encoders(routed, typed.records)
        assert fingerprint == readings_fingerprint(BATCH_ID, typed.records, plain=plain)
        assert encoders.keys() == routed.parts.keys()
        for tenant, part in routed.parts.items():
            assert encoders[tenant]() == encode_readings(part, plain=plain)
