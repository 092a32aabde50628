"""The per-record fast path (gateway.core.push.readings) gives every batch it
takes the outcome of the general path (gateway.core.push.records): the same
parts, the same quarantine with the same reasons (D1, D5), the same
fingerprint (D1 idempotency); and it takes no body the general path would
read otherwise."""

from __future__ import annotations

import inspect
import json
import random
from datetime import timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.core.jsonlimits import MAX_DEPTH
from gateway.core.push import readings
from gateway.core.push import records as records_module
from gateway.core.push.canonical import batch_fingerprint, encode_routed
from gateway.core.push.readings import (
    Quality,
    Reading,
    Unit,
    decode_readings,
    encode_readings,
    plain_numbers,
    readings_fingerprint,
    route_readings,
)
from gateway.core.push.records import (
    MAX_RECORDS,
    QUALITY_CODES,
    RECORD_MEMBERS,
    UNITS,
    BatchRejected,
    RoutedBatch,
    route_batch,
)
from tests.core.conftest import METER_MOVED, METER_ORES, METER_WATER, NOW
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
    at,
    reading,
)

BATCH_ID = "hes-2026-06-14"
METERS = [METER_ORES, METER_MOVED, METER_WATER, METER_AIRPLANE, METER_TWO_OWNERS,
          METER_UNKNOWN, "1SAG10000000000", "3WTR10000000000", "bad serial", "1SAG\u00e9"]
STAMPS = [at(h) for h in (0, 6, 11.75, 12, 13, 18, 23.75)] + [
    "2026-06-14T10:00:00Z", "2026-06-14T10:00:00", "nonsense",
    (NOW + timedelta(hours=1)).isoformat(), (NOW + timedelta(minutes=4)).isoformat()]
OWNERS = ["ores", "fluvius", "sibelga", "pidpa", "resa", "nobody"]
VALUES = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 0.0, -0.0, 1e-4, 9.99e-5, 1.5e-5, 1e16, 9999999999999998.0, 1e22,
                     123.456, 2**63, -(2**63) - 1]))
RECORD = st.fixed_dictionaries(
    {"meter": st.sampled_from(METERS),
     "timestamp": st.sampled_from(STAMPS),
     "obis": st.sampled_from(["1-0:1.8.1", "1-0:1.8.1*255", "1-0:1.29.0", "8-0:1.0.0",
                              "1-0:1.8"]),
     "value": VALUES,
     "unit": st.sampled_from(["kWh", "kW", "m3"]),
     "quality": st.sampled_from(["01", "02", "99"])},
    optional={"ean": st.sampled_from([EAN_OK, EAN_BAD, EAN_FLUVIUS, EAN_MOVED_BEFORE,
                                      EAN_MOVED_AFTER, "5", None]),
              "via": st.sampled_from([METER_ORES, METER_AIRPLANE, METER_MOVED, "x", None]),
              "operator": st.sampled_from([*OWNERS, None])})
# Records the fast path does not take: the batch goes the general way.
UNTYPED = st.one_of(
    RECORD.map(lambda r: {**r, "unit": "J"}),
    RECORD.map(lambda r: {**r, "quality": "00"}),
    RECORD.map(lambda r: {**r, "value": "1"}),
    RECORD.map(lambda r: {**r, "value": True}),
    RECORD.map(lambda r: {**r, "value": None}),
    RECORD.map(lambda r: {**r, "meter": 7}),
    RECORD.map(lambda r: {**r, "name": "Jansen"}),
    RECORD.map(lambda r: {k: v for k, v in r.items() if k != "quality"}),
    st.none(), st.integers(), st.lists(st.integers(), max_size=2))


def spelt(records: list[Any], rnd: random.Random, *, head: str = "") -> bytes:
    """The batch as an HES might post it: members in any order, some spaces,
    now and then a member given twice (the last one counts, as in json.loads)."""
    out = []
    for rec in records:
        if not isinstance(rec, dict):
            out.append(json.dumps(rec))
            continue
        pairs = list(rec.items())
        rnd.shuffle(pairs)
        if pairs and rnd.random() < 0.2:
            key, _ = rnd.choice(pairs)
            pairs.insert(0, (key, -1 if key == "value" else "kW" if key == "unit" else
                             "99" if key == "quality" else "decoy"))
        sep = rnd.choice([",", ", ", " ,\n"])
        out.append("{" + sep.join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in pairs) + "}")
    return (f'{{{head}"batch_id": "{BATCH_ID}", "source": "hes", "records": ['
            + ",".join(out) + "]}").encode()


def general(raw: bytes) -> tuple[RoutedBatch, str, dict[str, bytes]]:
    doc = json.loads(raw)
    routed = route_batch(doc, RELATIONS, NOW)
    parts = {t: encode_routed(recs) for t, recs in routed.parts.items()}
    return routed, batch_fingerprint(routed.batch_id, doc["records"]), parts


def fast(raw: bytes) -> tuple[RoutedBatch, str, dict[str, bytes]] | None:
    batch = decode_readings(raw)
    if batch is None:
        return None
    routed = route_readings(batch, RELATIONS, NOW)
    plain = plain_numbers(batch.records)
    parts = {t: encode_readings(recs, plain=plain) for t, recs in routed.parts.items()}
    return routed, readings_fingerprint(routed.batch_id, batch.records, plain=plain), parts


def canonical(part: bytes) -> str:
    """A part's content, member order aside (``1`` and ``1.0`` stay apart)."""
    return json.dumps(json.loads(part), sort_keys=True)


def assert_same(raw: bytes) -> None:
    taken = fast(raw)
    assert taken is not None, "a well-typed batch takes the fast path"
    routed, fingerprint, parts = taken
    want_routed, want_fingerprint, want_parts = general(raw)
    assert routed.batch_id == want_routed.batch_id
    assert routed.received == want_routed.received
    assert routed.quarantined == want_routed.quarantined
    assert list(routed.parts) == list(want_routed.parts)  # tenants in the same order
    assert {t: canonical(p) for t, p in parts.items()} == \
        {t: canonical(p) for t, p in want_parts.items()}
    assert fingerprint == want_fingerprint
    for part in parts.values():  # the standard library's bytes, members in name order
        assert part == json.dumps([dict(sorted(r.items())) for r in json.loads(part)],
                                  separators=(",", ":")).encode()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(RECORD, max_size=30), st.randoms(use_true_random=False))
@example([reading(METER_ORES, at(1), value=1e16), reading(METER_ORES, at(2), value=1.5e-5)],
         random.Random(0))
@example([reading(METER_ORES, at(1), operator=None, via=None, ean=None)], random.Random(0))
def test_a_well_typed_batch_has_the_general_paths_outcome(records: list[dict[str, Any]],
                                                          rnd: random.Random) -> None:
    assert_same(spelt(records, rnd))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(RECORD, max_size=8), UNTYPED, st.randoms(use_true_random=False))
def test_a_batch_with_one_untyped_record_goes_the_general_way(
        records: list[dict[str, Any]], odd: Any, rnd: random.Random) -> None:
    records.insert(rnd.randint(0, len(records)), odd)
    assert decode_readings(spelt(records, rnd)) is None


def test_every_reason_a_record_can_have_here_is_met() -> None:
    """The generated batches above reach every reason but the ones a typed
    parse rules out: here is one record per reason, on the fast path."""
    records = [
        reading("bad serial"),                                    # malformed-meter-id
        reading(METER_ORES, "nonsense"),                          # invalid-record
        reading(METER_ORES, at(1), "8-0:1.0.0"),                  # unit-mismatch
        reading(METER_ORES, at(2), ean=EAN_BAD),                  # bad-ean
        reading(METER_ORES, at(3)), reading(METER_ORES, at(3)),   # duplicate
        reading(METER_UNKNOWN, at(4)),                            # no-owner
        reading(METER_ORES, at(5), operator="fluvius"),           # owner-mismatch
        reading(METER_AIRPLANE, at(13)),                          # airplane-mode
        reading(METER_ORES, at(6), ean=EAN_FLUVIUS),              # ean-mismatch
        reading(METER_ORES, at(7), operator="ores", via=None),    # delivered, hints removed
        reading(METER_ORES, at(8), ean=EAN_OK),                   # delivered with its EAN
        reading(METER_ORES, at(9), operator="ores"),              # the label alone: removed
        reading(METER_WATER, at(9), "8-0:1.0.0", unit="m3", via=METER_ORES),  # the carrier
    ]
    raw = spelt(records, random.Random(1))
    assert_same(raw)
    routed, _, parts = fast(raw) or pytest.fail("not on the fast path")
    assert [q.reason for q in routed.quarantined] == [
        "malformed-meter-id", "invalid-record", "unit-mismatch", "bad-ean", "duplicate",
        "no-owner", "owner-mismatch", "airplane-mode", "ean-mismatch"]
    assert routed.quarantined[0].meter is None  # a malformed id is never echoed
    assert json.loads(parts["ores"]) == [
        {k: v for k, v in records[i].items() if k not in ("operator", "via")}
        for i in (4, 10, 11, 12)]
    assert json.loads(parts["pidpa"]) == [
        {k: v for k, v in records[13].items() if k != "via"}]


def test_the_types_of_the_parse_are_the_formats() -> None:
    """The parse refuses what route_batch would quarantine as invalid-record,
    so the fast path may skip those checks: the same units and codes, the
    same members. Declared in name order, the structs encode canonically."""
    assert set(Unit.__args__) == UNITS  # type: ignore[attr-defined]
    assert set(Quality.__args__) == QUALITY_CODES  # type: ignore[attr-defined]
    assert set(Reading.__struct_fields__) == RECORD_MEMBERS
    assert list(Reading.__struct_fields__) == sorted(RECORD_MEMBERS)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e400", "-1e999",
                                   "true", "null", '"1"'])
def test_a_value_that_is_not_a_finite_number_never_takes_the_fast_path(value: str) -> None:
    """D5: route_readings does not look at the value's finiteness again."""
    raw = (f'{{"batch_id": "b", "records": [{{"meter": "{METER_ORES}", '
           f'"timestamp": "{at(1)}", "obis": "1-0:1.8.1", "value": {value}, '
           f'"unit": "kWh", "quality": "01"}}]}}').encode()
    assert decode_readings(raw) is None
    routed, _, _ = general(raw)
    assert [q.reason for q in routed.quarantined] == ["invalid-record"]


@pytest.mark.parametrize("head", ['"format": null, ', '"format": "meter-days/v1", ',
                                  '"format": "records/v2", '])
def test_a_batch_naming_a_format_is_not_the_fast_paths(head: str) -> None:
    assert decode_readings(spelt([reading(METER_ORES)], random.Random(0), head=head)) is None


def test_the_batch_takes_its_source_and_no_other_member() -> None:
    """The general path ignores other members of the batch; this one leaves
    such a batch to it, so that what it parses nests three deep at most and
    needs no nesting check (MAX_DEPTH is well above that)."""
    assert MAX_DEPTH >= 3
    assert decode_readings(spelt([reading(METER_ORES)], random.Random(0))) is not None
    for head in ('"note": "x", ', '"note": {"deep": [1, {"x": null}]}, ', '"source": 5, ',
                 '"meter_days": [], '):
        assert decode_readings(spelt([reading(METER_ORES)], random.Random(0),
                                     head=head)) is None, head
    raw = spelt([reading(METER_ORES)], random.Random(0), head='"batch_id": "first", ')
    batch = decode_readings(raw)
    assert batch is not None and batch.batch_id == BATCH_ID  # the last one, as json.loads
    assert_same(raw)


@pytest.mark.parametrize("nested", ["[" * 100_000 + "]" * 100_000,
                                    '{"a":' * 100_000 + "1" + "}" * 100_000])
def test_a_body_nested_past_the_stack_is_left_to_the_general_path(nested: str) -> None:
    raw = (f'{{"batch_id": "b", "records": [], "source": {nested}}}').encode()
    assert decode_readings(raw) is None  # RecursionError caught: the nesting check decides


@pytest.mark.parametrize("raw", [
    b'{"batch_id": "b\xff", "records": []}', b'{"batch_id": "\xed\xa0\x80", "records": []}',
    b'\xef\xbb\xbf{"batch_id": "b", "records": []}',
    '{"batch_id": "b", "records": []}'.encode("utf-16")])
def test_only_utf8_takes_the_fast_path(raw: bytes) -> None:
    assert decode_readings(raw) is None


@pytest.mark.parametrize(("batch_id", "reason"), [("has space", "bad-batch-id"),
                                                  ("", "bad-batch-id"),
                                                  ("x" * 65, "bad-batch-id")])
def test_an_unusable_batch_id_is_refused_as_by_the_general_path(batch_id: str,
                                                                reason: str) -> None:
    raw = json.dumps({"batch_id": batch_id, "records": [reading(METER_ORES)]}).encode()
    batch = decode_readings(raw)
    assert batch is not None
    with pytest.raises(BatchRejected) as fast_error:
        route_readings(batch, RELATIONS, NOW)
    with pytest.raises(BatchRejected) as general_error:
        route_batch(json.loads(raw), RELATIONS, NOW)
    assert fast_error.value.reason == general_error.value.reason == reason


def test_a_batch_over_the_limit_is_refused_whole() -> None:
    raw = json.dumps({"batch_id": BATCH_ID,
                      "records": [reading(METER_ORES, at(h)) for h in range(3)]}).encode()
    typed = decode_readings(raw)
    assert typed is not None
    assert route_readings(typed, RELATIONS, NOW, max_records=3).received == 3
    with pytest.raises(BatchRejected) as refused:
        route_readings(typed, RELATIONS, NOW, max_records=2)
    assert (refused.value.reason, refused.value.status) == ("batch-too-large", 413)
    assert refused.value.message == "3 records, at most 2 per batch"


def test_a_naive_clock_is_a_programming_error() -> None:
    batch = decode_readings(spelt([reading(METER_ORES)], random.Random(0)))
    assert batch is not None
    with pytest.raises(ValueError, match=r"^now must be timezone-aware$"):
        route_readings(batch, RELATIONS, NOW.replace(tzinfo=None))


def test_the_default_limit_is_the_general_paths() -> None:
    """The service passes no limit: both paths refuse the same batches."""
    assert inspect.signature(route_readings).parameters["max_records"].default == \
        inspect.signature(route_batch).parameters["max_records"].default == MAX_RECORDS


def typed(records: list[dict[str, Any]]) -> RoutedBatch:
    batch = decode_readings(json.dumps({"batch_id": BATCH_ID, "records": records}).encode())
    assert batch is not None
    return route_readings(batch, RELATIONS, NOW)


def outcome(routed: RoutedBatch) -> list[str]:
    """Each record's fate in batch order: its owner, or its quarantine reason."""
    fate = {q.index: q.reason for q in routed.quarantined}
    for tenant, part in routed.parts.items():
        for rec in part:
            fate[int(rec.value)] = tenant  # the tests number the records by value
    return [fate[i] for i in range(routed.received)]


def test_a_carrier_in_airplane_mode_silences_what_it_carries() -> None:
    """D5: a water meter read through an electricity meter whose
    communication is disabled at that instant is not delivered; before and
    after the window it is, to the water company."""
    records = [reading(METER_WATER, at(h), "8-0:1.0.0", unit="m3", via=METER_AIRPLANE,
                       value=i) for i, h in enumerate((11.75, 12, 17.75, 18))]
    assert outcome(typed(records)) == ["pidpa", "airplane-mode", "airplane-mode", "pidpa"]


@pytest.mark.parametrize("hours", [(11.75, 12, 11.5, 12.25), (12, 11.75, 12.25, 11.5)])
def test_the_owner_is_the_one_at_each_readings_instant(hours: tuple[float, ...]) -> None:
    """D1: METER_MOVED changed owner at noon; in order or not, a reading at
    12:00 is the new owner's and one at 11:45 the old one's."""
    records = [reading(METER_MOVED, at(h), value=i) for i, h in enumerate(hours)]
    want = ["sibelga" if h >= 12 else "fluvius" for h in hours]
    assert outcome(typed(records)) == want


def test_the_pairing_of_an_ean_is_the_meters_own() -> None:
    """D1: EAN_OK is METER_ORES's access point, not METER_MOVED's: the
    pairing of one meter says nothing of another's; and METER_MOVED's access
    point changed with its owner at noon."""
    records = [reading(METER_ORES, at(1), ean=EAN_OK, value=0),
               reading(METER_MOVED, at(1), ean=EAN_OK, value=1),
               reading(METER_MOVED, at(2), ean=EAN_MOVED_BEFORE, value=2),
               reading(METER_MOVED, at(12), ean=EAN_MOVED_BEFORE, value=3),
               reading(METER_MOVED, at(13), ean=EAN_MOVED_AFTER, value=4),
               reading(METER_MOVED, at(11.75), ean=EAN_MOVED_AFTER, value=5)]
    assert outcome(typed(records)) == ["ores", "ean-mismatch", "fluvius", "ean-mismatch",
                                       "sibelga", "ean-mismatch"]


def test_each_distinct_value_is_checked_once_and_each_owner_read_once_per_span(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A daily batch repeats its serials, codes and instants: each distinct
    one is checked once, and a meter's owner (a carrier's too) and an EAN's
    pairing are read from the feed once for as long as they hold, its first
    instant included, and again when a reading falls outside that span."""
    calls: dict[str, list[Any]] = {name: [] for name in
                                   ("serial", "ean", "obis", "instant", "owner", "pairing")}

    def counted(name: str, real: Any, pick: Any = lambda args: args[0]) -> Any:
        def call(*args: Any) -> Any:
            calls[name].append(pick(args))
            return real(*args)
        return call

    monkeypatch.setattr(readings, "is_valid_meter_serial",
                        counted("serial", readings.is_valid_meter_serial))
    monkeypatch.setattr(readings, "is_valid_ean", counted("ean", readings.is_valid_ean))
    monkeypatch.setattr(readings, "_obis", counted("obis", readings._obis))
    monkeypatch.setattr(records_module._Resolver, "instant",
                        counted("instant", records_module._Resolver.instant, lambda a: a[1]))
    monkeypatch.setattr(records_module, "owner_span",
                        counted("owner", records_module.owner_span, lambda a: a[1]))
    monkeypatch.setattr(records_module, "ean_span",
                        counted("pairing", records_module.ean_span, lambda a: a[1:3]))
    day = [reading(meter, at(h), value=1, ean=EAN_OK if meter == METER_ORES else None)
           for meter in (METER_ORES, METER_MOVED) for h in (1, 2, 13, 14)]
    # After 13:00, the new owner's span holds from noon: 12:30 and 12:00 are in it.
    day += [reading(METER_MOVED, at(h), ean=EAN_MOVED_AFTER, value=1) for h in (12.5, 12)]
    day += [reading(METER_WATER, at(h), "8-0:1.0.0", unit="m3", via=METER_ORES, value=1)
            for h in (1, 2)]
    # A carrier's span, read for its own records, holds for what it carries.
    day += [reading(METER_WATER, at(h), "8-0:1.0.0", unit="m3", via=METER_MOVED, value=1)
            for h in (13, 12)]
    day += [reading(METER_ORES, "nonsense", value=1)] * 2
    routed = typed(day + day[:2])  # the last two: duplicates
    assert [q.reason for q in routed.quarantined] == ["invalid-record"] * 2 + ["duplicate"] * 2
    assert sorted(calls["serial"]) == sorted([METER_ORES, METER_MOVED, METER_WATER])
    assert calls["ean"] == [EAN_OK, EAN_MOVED_AFTER]
    assert calls["obis"] == ["1-0:1.8.1", "8-0:1.0.0"]
    assert calls["instant"] == [at(h) for h in (1, 2, 13, 14, 12.5, 12)] + ["nonsense"]
    assert len(routed.parts["pidpa"]) == 4
    # METER_MOVED twice: its owner changed at noon. METER_ORES also as a carrier.
    assert calls["owner"] == [METER_ORES, METER_MOVED, METER_MOVED, METER_WATER]
    assert calls["pairing"] == [(METER_ORES, EAN_OK), (METER_MOVED, EAN_MOVED_AFTER)]


def test_an_empty_serial_first_in_the_batch_is_malformed() -> None:
    records = [reading("", at(1), value=0), reading(METER_ORES, at(1), value=1),
               reading("", at(2), value=2)]
    assert outcome(typed(records)) == ["malformed-meter-id", "ores", "malformed-meter-id"]


def test_a_plain_batch_is_written_by_msgspec(monkeypatch: pytest.MonkeyPatch) -> None:
    """The standard library writes only what msgspec would spell otherwise."""
    batch = decode_readings(spelt([reading(METER_ORES, at(h), value=h + 0.5)
                                   for h in range(4)], random.Random(0)))
    assert batch is not None
    want = (encode_readings(batch.records, plain=False),
            readings_fingerprint(BATCH_ID, batch.records, plain=False))

    def refused(records: Any) -> bytes:
        raise AssertionError("the standard library's encoding")

    monkeypatch.setattr(readings, "_standard", refused)
    assert plain_numbers(batch.records)
    assert (encode_readings(batch.records, plain=True),
            readings_fingerprint(BATCH_ID, batch.records, plain=True)) == want


@pytest.mark.parametrize(("value", "plain"), [
    (0, True), (0.0, True), (1e-4, True), (9999999999999998.0, True), (2**53, True),
    (9.99e-5, False), (-1.5e-5, False), (1e16, False), (-1e16, False), (10**16, False)])
def test_plain_numbers_are_those_msgspec_and_json_dumps_spell_alike(value: Any,
                                                                     plain: bool) -> None:
    batch = decode_readings(spelt([reading(METER_ORES, value=value)], random.Random(0)))
    assert batch is not None
    assert plain_numbers(batch.records) is plain
    assert plain_numbers([]) is True
    # Either way the bytes are the standard library's.
    want = json.dumps([dict(sorted(reading(METER_ORES, value=value).items()))],
                      separators=(",", ":")).encode()
    assert encode_readings(batch.records, plain=plain) == want


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=1e-4, max_value=9.999999999999998e15) | st.floats(
    min_value=-9.999999999999998e15, max_value=-1e-4))
def test_msgspec_spells_a_plain_float_as_json_dumps(value: float) -> None:
    assert msgspec.json.encode(value) == json.dumps(value).encode()


@pytest.mark.parametrize("text", ["Jos\u00e9", "\x7f", "tab\there", "\u2028"])
def test_text_json_dumps_escapes_is_written_by_the_standard_library(text: str) -> None:
    records = [reading(METER_ORES, at(1), operator=text), reading(text, at(2))]
    raw = json.dumps({"batch_id": BATCH_ID, "records": records}, ensure_ascii=False).encode()
    batch = decode_readings(raw)
    assert batch is not None
    assert readings_fingerprint(BATCH_ID, batch.records, plain=True) == \
        batch_fingerprint(BATCH_ID, json.loads(raw)["records"])


def _mutations(raw: bytes, rnd: random.Random, n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        b = bytearray(raw)
        i = rnd.randrange(len(b))
        op = rnd.random()
        if op < 0.4:
            del b[i]
        elif op < 0.8:
            b.insert(i, rnd.choice(b'{}[],:"\\ 0123456789.eE-+tfnaulrsNI\x00\x1f\x7f'))
        else:
            b[i] = rnd.randrange(128)
        out.append(bytes(b))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(RECORD, min_size=1, max_size=3), st.randoms(use_true_random=False))
def test_the_parse_takes_no_body_json_loads_reads_otherwise(records: list[dict[str, Any]],
                                                            rnd: random.Random) -> None:
    """Bodies one byte away from a valid batch: whatever the fast parse takes,
    json.loads takes too, and reads the same records."""
    for raw in _mutations(spelt(records, rnd), rnd, 40):
        batch = decode_readings(raw)
        if batch is None:
            continue
        doc = json.loads(raw.decode())
        assert doc["batch_id"] == batch.batch_id
        assert json.dumps(doc["records"], sort_keys=True) == json.dumps(
            msgspec.to_builtins(batch.records), sort_keys=True)
