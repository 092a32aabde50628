"""``route_runs`` in C (gateway/core/_native_runs.c) against its
specification, ``route_runs_reference`` of gateway/core/push/readings.py:
for every batch the parse gives, the same answer. Declined by both, or taken
by both with the same runs, the same tenants in the same order (a carrier's
owner among them, part or none) and the same readings, a hinted run's
without its hints (D1, D5). And what the C reads of a record it reads only
where the record is what the parse makes."""

from __future__ import annotations

import json
import random
from datetime import datetime
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from msgspec import UNSET

from gateway.core.model import Relation
from gateway.core.native import native
from gateway.core.push import readings
from gateway.core.push.readings import (
    Reading,
    decode_readings,
    route_runs,
    route_runs_reference,
)
from gateway.core.relations.index import RelationIndex
from tests.core.conftest import METER_MOVED, METER_ORES, METER_WATER, NOW
from tests.core.push.test_readings import RECORD, spelt
from tests.core.push.test_readings_runs import BATCH_ID, clean_batches, records_of
from tests.core.push.test_records import (
    EAN_OK,
    METER_AIRPLANE,
    METER_TWO_OWNERS,
    METER_UNKNOWN,
    RELATIONS,
    at,
    reading,
    world,
)

pytestmark = pytest.mark.skipif(native is None, reason="gateway.core._native was not built")

Routed = tuple[list[tuple[str, int, int, bool]], dict[str, list[Reading]]] | None


def both(records: list[Reading], relations: RelationIndex = RELATIONS,
         now: datetime = NOW) -> Routed:
    """The C's answer, which must be the reference's."""
    context = readings._native_context(relations, now)
    assert context is not None and native is not None
    got: Routed = native.route_runs(context, list(records))
    want = route_runs_reference(records, relations, now)
    if want is None:
        assert got is None
        return None
    assert got is not None, "the reference takes the batch"
    runs, parts = got
    assert runs == want[0]
    assert list(parts) == list(want[1])  # the tenants in the loop's order, carriers' too
    assert parts == want[1]
    for owner, start, end, stripped in runs:
        assert type(start) is int and type(end) is int and type(stripped) is bool
        delivered = [r for r in parts[owner] if r.meter == records[start].meter]
        assert len(delivered) == end - start
        if stripped:  # D1: the HES's routing hints never reach a tenant
            assert all(r.via is UNSET and r.operator is UNSET for r in delivered)
            assert all(r is not records[start + k] for k, r in enumerate(delivered))
        else:
            assert all(r is records[start + k] for k, r in enumerate(delivered))
    return got


# One member of one reading changed: every check of the run, met once.
CHANGES: list[dict[str, Any]] = [
    {"meter": METER_ORES}, {"meter": METER_MOVED}, {"meter": METER_UNKNOWN},
    {"meter": METER_TWO_OWNERS}, {"meter": METER_AIRPLANE}, {"meter": "bad serial"},
    {"meter": "1SAG\u00e91000000"}, {"timestamp": at(1)}, {"timestamp": at(13)},
    {"timestamp": at(1).replace("+00:00", "Z")}, {"timestamp": "2026-06-14T10:00:00"},
    {"timestamp": "nonsense"}, {"timestamp": (NOW.replace(year=2027)).isoformat()},
    {"obis": "1-0:1.8.1*255"}, {"obis": "1-0:1.8"}, {"obis": "1-0:2.8.1"},
    {"obis": "8-0:1.0.0", "unit": "m3"}, {"unit": "m3"}, {"unit": "kW"},
    {"ean": EAN_OK}, {"ean": None}, {"via": METER_ORES}, {"via": METER_AIRPLANE},
    {"via": METER_MOVED}, {"via": "x"}, {"via": None}, {"operator": "ores"},
    {"operator": "fluvius"}, {"operator": "pidpa"}, {"operator": None},
]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clean_batches(), st.data())
def test_a_clean_batch_changed_in_one_reading_is_answered_alike(
        batch: list[dict[str, Any]], data: st.DataObject) -> None:
    assert both(records_of(batch)) is not None, "the clean batch itself is taken"
    index = data.draw(st.integers(0, len(batch) - 1))
    batch[index] = {**batch[index], **data.draw(st.sampled_from(CHANGES))}
    if data.draw(st.booleans()):  # and now and then the readings in another order
        data.draw(st.randoms(use_true_random=False)).shuffle(batch)
    both(records_of(batch))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(RECORD, max_size=30), st.randoms(use_true_random=False))
@example([reading(METER_ORES, at(1), via=None)], random.Random(0))
def test_any_parsed_batch_is_answered_alike(records: list[dict[str, Any]],
                                            rnd: random.Random) -> None:
    decoded = decode_readings(spelt(records, rnd))
    assert decoded is not None
    both(decoded.records)


def day(meter: str, hours: list[float], obis: str = "1-0:1.8.1", unit: str = "kWh",
        **hints: Any) -> list[dict[str, Any]]:
    return [reading(meter, at(h), obis, unit=unit, value=i, **hints) for i, h in enumerate(hours)]


QUARTERS = [q / 4 for q in range(44)]  # yesterday, up to eleven o'clock


def test_a_meters_readings_out_of_order_are_sorted_for_the_duplicate_check() -> None:
    """Within a meter's readings the instants mostly rise; where they do
    not, a duplicate is still found and none is invented."""
    backwards = day(METER_ORES, QUARTERS[::-1])
    assert both(records_of(backwards)) is not None
    twice = day(METER_ORES, [*QUARTERS[::-1], QUARTERS[7]])
    assert both(records_of(twice)) is None
    rising_then_again = day(METER_ORES, [*QUARTERS, QUARTERS[0]])
    assert both(records_of(rising_then_again)) is None
    # Two registers at each instant, one interleaved with the other.
    both_registers = [r for h in QUARTERS for r in (*day(METER_ORES, [h], "1-0:2.8.1"),
                                                    *day(METER_ORES, [h]))]
    assert both(records_of(both_registers)) is not None
    assert both(records_of([*both_registers, *day(METER_ORES, [QUARTERS[3]], "1-0:2.8.1")])) \
        is None
    # One instant, two registers, then that instant and the first register again.
    assert both(records_of([*day(METER_ORES, [1], "1-0:2.8.1"), *day(METER_ORES, [1]),
                            *day(METER_ORES, [1], "1-0:2.8.1")])) is None


def test_a_batch_of_many_meters_each_a_day_is_taken() -> None:
    """The common batch: each meter's day in turn, the water meter's through
    its carrier with the owner's label (stripped, D1)."""
    batch = [*day(METER_ORES, QUARTERS), *day("1SAG1000000000", QUARTERS),
             *day(METER_WATER, QUARTERS, "8-0:1.0.0", "m3", via=METER_ORES, operator="pidpa"),
             *day("1SAG2000000000", QUARTERS)]
    routed = both(records_of(batch))
    assert routed is not None
    runs, parts = routed
    assert [(owner, stripped) for owner, _, _, stripped in runs] == \
        [("ores", False), ("ores", False), ("pidpa", True), ("fluvius", False)]
    assert list(parts) == ["ores", "pidpa", "fluvius"]


def test_a_meter_in_two_places_is_declined() -> None:
    assert both(records_of([*day(METER_ORES, [1]), *day("1SAG1000000000", [1]),
                            *day(METER_ORES, [2])])) is None


def test_a_hint_or_an_ean_that_is_not_the_runs_is_declined() -> None:
    """Hints that differ within a meter's readings, and any EAN (a null one
    is none), are the loop's."""
    clean = day(METER_WATER, [1, 2], "8-0:1.0.0", "m3")
    for hints in ({"via": None}, {"operator": None}, {"via": METER_ORES}, {"operator": "pidpa"},
                  {"ean": EAN_OK}):
        assert both(records_of([clean[0], {**clean[1], **hints}])) is None, hints
        assert both(records_of([{**clean[0], **hints}, clean[1]])) is None, hints
        if "ean" not in hints:
            assert both(records_of([{**r, **hints} for r in clean])) is not None, hints
    assert both(records_of([clean[0], {**clean[1], "ean": None}])) is not None


def parsed(batch: list[dict[str, Any]]) -> list[Reading]:
    return list(records_of(batch))


def test_a_record_of_another_type_is_declined() -> None:
    """Only a Reading is read at Reading's offsets."""

    class Other(msgspec.Struct):
        meter: str

    records: list[Any] = parsed(day(METER_ORES, [1, 2]))
    context = readings._native_context(RELATIONS, NOW)
    assert native is not None and context is not None
    assert native.route_runs(context, records) is not None
    for stranger in (Other(METER_ORES), {"meter": METER_ORES}, None):
        assert native.route_runs(context, [*records, stranger]) is None
        assert native.route_runs(context, [stranger, *records]) is None


def test_a_member_changed_after_the_parse_to_another_type_is_declined() -> None:
    """A struct's members can be set to anything; the C reads each one only
    as the type the parse gives it, else declines."""
    context = readings._native_context(RELATIONS, NOW)
    assert native is not None and context is not None
    for name, value in (("meter", 5), ("timestamp", None), ("obis", 1.5), ("unit", b"kWh"),
                        ("via", 7), ("operator", ["ores"]), ("ean", EAN_OK)):
        for changed in ([0], [1], [0, 1]):
            records = parsed(day(METER_ORES, [1, 2]))
            for index in changed:
                setattr(records[index], name, value)
            assert native.route_runs(context, records) is None, (name, changed)


def test_what_the_routers_functions_change_is_read_again() -> None:
    """The instant and OBIS readers are Python: a record they change is read
    again after them, never through a stale pointer, and declined where the
    change touched what the C reads."""
    context = list(readings._native_context(RELATIONS, NOW) or ())
    assert native is not None and context
    instant, obis = context[3], context[4]
    records: list[Reading] = []

    def meddling(reader: Any, call: int, indexes: list[int], **change: Any) -> Any:
        """``reader``, which at its ``call``-th call sets ``change`` on those records."""
        calls = 0

        def meddle(*args: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == call:
                for index in indexes:
                    for name, value in change.items():
                        setattr(records[index], name, value)
            return reader(*args)
        return meddle

    for index, meddler in (
            (3, meddling(instant, 1, [0, 1, 2], meter=12345)),
            (3, meddling(instant, 2, [1], meter=12345)),  # after its own checks
            (3, meddling(instant, 3, [2], obis="8-0:1.0.0")),  # an energy in m3 (D5)
            (3, meddling(instant, 1, [0], obis=None)),
            (4, meddling(obis, 1, [0], unit=None)),
            (4, meddling(obis, 1, [0], unit=["kWh"])),  # not even hashable
            (4, meddling(obis, 1, [0], unit="m3")),
            # The spelling the reader was given is no longer the record's.
            (3, meddling(instant, 1, [0], timestamp=at(5))),
            (4, meddling(obis, 1, [0], obis="1-0:2.8.1"))):
        records = parsed(day(METER_ORES, [1, 2, 3]))
        changed = list(context)
        changed[index] = meddler
        assert native.route_runs(tuple(changed), records) is None


def test_a_look_alike_struct_is_not_read_as_a_reading() -> None:
    """Another struct with Reading's members in Reading's order (so its
    slots lie where Reading's do) is still declined."""

    class LookAlike(msgspec.Struct, kw_only=True):
        ean: Any = UNSET
        meter: str
        obis: str
        operator: Any = UNSET
        quality: str
        timestamp: str
        unit: str
        value: Any
        via: Any = UNSET

    records = parsed(day(METER_ORES, [1, 2]))
    twins = [LookAlike(**msgspec.structs.asdict(r)) for r in records]
    context = readings._native_context(RELATIONS, NOW)
    assert native is not None and context is not None
    assert native.route_runs(context, records) is not None
    assert native.route_runs(context, twins) is None
    assert native.route_runs(context, [records[0], twins[1]]) is None


def test_a_malformed_serial_is_declined_even_where_the_feed_names_an_owner() -> None:
    """A serial that is not one (lower case, a letter past ASCII) is the
    loop's, which quarantines it, whatever the feed says of it; as meter and
    as carrier."""
    odd = ["1sag0000000501", "1SAG000000050\u00c9"]
    relations = world(*(Relation("meter", serial, "ores", "owner") for serial in odd))
    for serial in odd:
        assert both(records_of(day(serial, [1, 2])), relations) is None
        assert both(records_of(day(METER_WATER, [1, 2], "8-0:1.0.0", "m3", via=serial)),
                    relations) is None
    assert both(records_of(day(METER_WATER, [1, 2], "8-0:1.0.0", "m3", via=METER_ORES)),
                relations) is not None


def test_a_carrier_whose_owner_changes_among_the_readings_is_declined() -> None:
    """The carrier's span is checked on both sides of the readings: the first
    after noon, another before (METER_MOVED changed owner at noon)."""
    for hours in ([13, 11], [11, 13], [13, 14, 11.5]):
        assert both(records_of(day(METER_WATER, hours, "8-0:1.0.0", "m3",
                                   via=METER_MOVED))) is None, hours
    assert both(records_of(day(METER_WATER, [13, 14], "8-0:1.0.0", "m3",
                               via=METER_MOVED))) is not None


def test_a_register_read_in_another_unit_by_the_next_reading_is_declined() -> None:
    """D5: each reading's unit is checked against its code, also where the
    code is the previous reading's."""
    for unit in ("kW", "m3"):
        batch = day(METER_ORES, [1, 2, 3])
        batch[1]["unit"] = unit
        assert both(records_of(batch)) is None, unit
        # Instants already met: the code is the last one's, the unit another.
        batch = [*day(METER_ORES, [1, 2, 3]), *day("1SAG1000000000", [1, 2, 3])]
        batch[4]["unit"] = unit
        assert both(records_of(batch)) is None, unit
    batch = day(METER_WATER, [1, 2, 3], "8-0:1.0.0", "m3")
    batch[2]["unit"] = "kWh"
    assert both(records_of(batch)) is None


def test_an_instant_past_64_bits_is_declined() -> None:
    """An instant is used only where it fits 64 bits (the router's never
    does otherwise; a reader that did is not believed)."""
    context = readings._native_context(RELATIONS, NOW)
    assert native is not None and context is not None
    for huge in (2**63, -(2**63) - 1, 2**70):
        changed = (*context[:3], lambda _stamp, v=huge: v, *context[4:])
        assert native.route_runs(changed, parsed(day(METER_ORES, [1]))) is None, huge


def test_a_tenant_past_the_snapshots_list_is_an_error() -> None:
    context = readings._native_context(RELATIONS, NOW)
    assert native is not None and context is not None
    with pytest.raises(IndexError):
        native.route_runs((*context[:13], ()), parsed(day(METER_ORES, [1])))


def test_an_error_in_the_routers_functions_is_raised() -> None:
    context = list(readings._native_context(RELATIONS, NOW) or ())
    assert native is not None and context

    def broken(*_: Any) -> Any:
        raise RuntimeError("reader")

    for index in (3, 4, 6):
        changed = list(context)
        changed[index] = broken
        with pytest.raises(RuntimeError, match="reader"):
            native.route_runs(tuple(changed), parsed(day(METER_WATER, [1], "8-0:1.0.0", "m3",
                                                         operator="pidpa")))


def test_a_context_that_is_not_the_routers_is_refused() -> None:
    """Offsets come only from Reading's own object slots."""

    class Other(msgspec.Struct):
        meter: str

    context = readings._native_context(RELATIONS, NOW)
    assert native is not None and context is not None
    records = parsed(day(METER_ORES, [1]))
    slots = context[2]
    for wrong in (slots[:-1], (*slots[:-1], Other.__dict__["meter"]),
                  (*slots[:-1], "via"), (*slots[:-1], type.__dict__["__basicsize__"])):
        with pytest.raises(TypeError):
            native.route_runs((*context[:2], wrong, *context[3:]), records)
    for index, wrong_value in ((0, "Reading"), (3, None), (7, object()), (13, ["ores"])):
        with pytest.raises(TypeError):
            native.route_runs((*context[:index], wrong_value, *context[index + 1:]), records)
    with pytest.raises(TypeError):
        native.route_runs(context[:-1], records)
    with pytest.raises(TypeError):
        native.route_runs(context, tuple(records))
    with pytest.raises(ValueError):
        native.route_runs((*context[:11], context[12], context[11], context[13]), records)


def test_an_empty_batch_is_declined() -> None:
    context = readings._native_context(RELATIONS, NOW)
    assert native is not None and context is not None
    assert native.route_runs(context, []) is None


def test_the_intake_routes_in_c_where_it_was_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """route_runs hands a list to the C and anything else to the reference."""
    calls: list[str] = []
    monkeypatch.setattr(readings, "route_runs_reference",
                        lambda *a: calls.append("reference") or route_runs_reference(*a))
    records = parsed(day(METER_ORES, [1, 2]))
    assert route_runs(records, RELATIONS, NOW) is not None
    assert calls == []
    assert route_runs(tuple(records), RELATIONS, NOW) is not None
    assert calls == ["reference"]
    monkeypatch.setattr(readings, "_native", None)
    assert route_runs(records, RELATIONS, NOW) is not None
    assert calls == ["reference"] * 2


def test_the_batch_decoded_from_json_is_a_list() -> None:
    batch = decode_readings(json.dumps({"batch_id": BATCH_ID,
                                        "records": day(METER_ORES, [1])}).encode())
    assert batch is not None and type(batch.records) is list
