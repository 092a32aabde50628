"""``route_days`` (gateway/core/_native_days.c) against its specification,
``_route_day`` of gateway/core/push/days.py: generated batches, parsed as
the intake parses them, routed with the C fast path and without it, give
the same parts (the same texts, in the same order), quarantine, counts
and accounting (D1, D5). Which meter-days the C takes is pinned too: the
common one, and nothing it must leave to Python."""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.identifiers import obis_key, obis_units
from gateway.core.model import Relation
from gateway.core.native import native
from gateway.core.push import days as days_module
from gateway.core.push.days import FORMAT, RoutedDays, route_meter_days
from gateway.core.push.records import FUTURE_SKEW, UNITS
from gateway.core.push.scan import scan_days
from gateway.core.relations.index import RelationIndex
from tests.core.conftest import METER_MOVED, METER_ORES, METER_WATER, NOW, SWITCH
from tests.core.push._calls import counting
from tests.core.push.test_records import (
    EAN_OK,
    METER_AIRPLANE,
    METER_TWO_OWNERS,
    METER_UNKNOWN,
    YESTERDAY,
    world,
)

pytestmark = pytest.mark.skipif(native is None, reason="gateway.core._native is not built")

# Meters of ores alone, each a meter-day of its own (no key twice).
OWN = [f"1SAG{i:010d}" for i in range(500, 509)]
LOWER, ACCENTED = "1sag0000000501", "1SAG000000050\u00c9"  # malformed serials
WORLD = world(*(Relation("meter", serial, "ores", "owner") for serial in [*OWN, LOWER, ACCENTED]))

SPRING = YESTERDAY.astimezone(timezone(timedelta(hours=2)))
_METERS = [METER_ORES, *OWN[:3], METER_MOVED, METER_WATER, METER_AIRPLANE, METER_TWO_OWNERS,
           METER_UNKNOWN, "1sag0000000001", "1SAG", "1SAG000000000\u00c9", 7]
_STARTS = [YESTERDAY.isoformat(), SPRING.isoformat(), (YESTERDAY - timedelta(days=3)).isoformat(),
           (SWITCH - timedelta(hours=1)).isoformat(), NOW.isoformat(),
           (NOW + timedelta(days=1)).isoformat(), "2026-06-13T00:00:00", "yesterday", None]
_OBIS = ["1-0:1.8.1", "1-0:1.8.2", "1-0:1.8.1*255", "8-0:1.0.0", "1-0:99.99.99.1",
         "\uff11-0:1.8.1", "x"]
_UNITS = ["kWh", "m3", "kW", "Wh", None]
_INTERVALS = [900, 3600, 1, 86_400, 0, 86_401, "900", True]
_LABELS = [None, "ores", "fluvius", "sibelga", "pidpa", 5]
_EXTRA = [{}, {}, {}, {"via": METER_ORES}, {"via": None}, {"ean": EAN_OK}, {"ean": None},
          {"note": "x"}, {"operator": None}]


def _values(draw: st.DrawFn, n: int) -> str:
    kind = draw(st.sampled_from(["plain"] * 6 + ["exponent", "bad", "empty"]))
    if kind == "empty":
        return "[]"
    numbers = [str(draw(st.integers(0, 999)) / 10) for _ in range(n)]
    if kind == "exponent":
        numbers[0] = "1e2"
    elif kind == "bad":
        numbers[-1] = draw(st.sampled_from(["NaN", '"1"', "null", "1e999"]))
    return "[" + ",".join(numbers) + "]"


@st.composite
def batches(draw: st.DrawFn) -> str:
    """A batch in the HES's common form (one start, register, unit, quality
    and count for most meter-days, a primer first so the caches hold them),
    each field of each meter-day now and then something the C must leave to
    Python, and meters that repeat, move, have no owner or are silenced."""
    one = st.sampled_from
    n, interval = draw(one([(1, 86_400), (4, 3600), (96, 900), (1440, 60), (1441, 60)]))
    template: dict[str, Any] = {
        "start": draw(one(_STARTS[:2])), "interval": interval,
        "obis": draw(one(_OBIS[:2])), "unit": "kWh",
        "quality": draw(one(["01" * n, "02" * n, "0199" * (n // 2) + "01" * (n % 2)])),
    }
    odd: dict[str, list[Any]] = {
        "start": _STARTS, "interval": _INTERVALS, "obis": _OBIS, "unit": _UNITS,
        "quality": ["01" * n, "01" * (n - 1) + "77", "01" * (n + 1), ["01"] * n, 1]}
    texts = []
    for k in range(draw(st.integers(1, 10))):
        meters = _METERS if draw(st.integers(0, 2)) == 0 else [METER_ORES, *OWN[:8]]
        fields = {"meter": OWN[8] if k == 0 else draw(one(meters)), **template}
        if k:
            for name, choices in odd.items():
                if draw(st.integers(0, 19)) == 0:
                    fields[name] = draw(one(choices))
            if draw(st.integers(0, 3)) == 0:
                fields["operator"] = draw(one(_LABELS))
            if draw(st.integers(0, 5)) == 0:
                fields.update(draw(one(_EXTRA)))
            if draw(st.booleans()):
                fields = dict(reversed(fields.items()))
        text = json.dumps(fields, ensure_ascii=False)
        texts.append(text[:-1] + ', "values": ' + _values(draw, n) + "}")
    return _batch(texts)


def _route(text: str, *, fast: bool, monkeypatch: pytest.MonkeyPatch,
           relations: RelationIndex = WORLD) -> RoutedDays:
    doc, spans = scan_days(text)
    with monkeypatch.context() as m:
        if not fast:
            m.setattr(days_module, "_native_days", lambda st: None)
        return route_meter_days(doc, relations, NOW, text=text, spans=spans)


def _same(a: RoutedDays, b: RoutedDays) -> None:
    assert a.batch_id == b.batch_id
    assert list(a.parts) == list(b.parts)  # the same tenants, in the same order
    for tenant in a.parts:
        assert a.parts[tenant] == b.parts[tenant]
    assert a.quarantined == b.quarantined
    assert (a.received, a.meter_days) == (b.received, b.meter_days)


def _batch(days: list[str]) -> str:
    return f'{{"format": "{FORMAT}", "batch_id": "b-1", "meter_days": [' + ",".join(days) + "]}"


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=batches())
def test_route_days_equals_its_specification(text: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _same(_route(text, fast=True, monkeypatch=monkeypatch),
          _route(text, fast=False, monkeypatch=monkeypatch))


def common(meter: str = METER_ORES, obis: str = "1-0:1.8.1", *, n: int = 4,
           **fields: Any) -> str:
    """A meter-day in the HES's common form, ``fields`` replacing or adding members."""
    doc = {"meter": meter, "start": YESTERDAY.isoformat(), "interval": 900, "obis": obis,
           "unit": "kWh", "quality": "01" * n, **fields}
    values = ",".join(f"0.{i % 10}" for i in range(n))
    return json.dumps(doc, ensure_ascii=False)[:-1] + f', "values": [{values}]}}'


def test_the_common_meter_day_is_routed_in_c(monkeypatch: pytest.MonkeyPatch) -> None:
    """Python reads each start, OBIS code and quality string the first time
    (filling the caches the C reads); every other common meter-day is the C's."""
    called = counting(monkeypatch, days_module, "_route_day", key=lambda args: args[1])
    registers = ["1-0:1.8.1", "1-0:1.8.2", "1-0:2.8.1"]
    days = [common(meter, registers[i % 3]) for i, meter in enumerate(OWN)]
    routed = _route(_batch(days), fast=True, monkeypatch=monkeypatch, relations=WORLD)
    assert sorted(called) == [0, 1, 2] and set(called.values()) == {1}
    assert routed.counts() == {"received": 36, "queued": 36, "quarantined": 0, "meter_days": 9}
    assert [json.loads(text)["meter"] for text in routed.parts["ores"].meter_days] == OWN


# The latest instant a reading may have: NOW plus the clock skew tolerated.
LATEST = NOW + FUTURE_SKEW
_LAST_AT_LATEST = (LATEST - timedelta(seconds=3 * 900)).isoformat()  # 4 readings
_LAST_PAST_LATEST = (LATEST - timedelta(seconds=3 * 900 - 1)).isoformat()


def primer(day: dict[str, Any]) -> str:
    """A meter-day of its own meter with ``day``'s start, register, unit,
    count and quality (which _route_day then caches, whatever it makes of
    the day) and none of its other members (which may stop it before)."""
    return common(OWN[0], **{k: v for k, v in day.items()
                             if k in ("start", "obis", "unit", "n", "interval", "quality")})


def _both_ways(day: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Counter[Any]:
    """Route a primer (:func:`primer`, so the caches hold its start, code and
    quality and only the meter and the odd members differ) and ``day``, with the
    C and without; the same result. Returns which meter-days Python routed."""
    day = dict(day)  # the parameter lists are shared (test_days_posted.py)
    meter = day.pop("meter", METER_ORES)
    text = _batch([primer(day), common(meter, **day)])
    called = counting(monkeypatch, days_module, "_route_day", key=lambda args: args[1])
    fast = _route(text, fast=True, monkeypatch=monkeypatch)
    taken = Counter(called)
    _same(fast, _route(text, fast=False, monkeypatch=monkeypatch))
    return taken


# Meter-days that are not "the whole day to its owner" (or not the common form).
LEFT_TO_PYTHON: list[dict[str, Any]] = [
    {"operator": "fluvius"},  # a label that names another (D1)
    {"operator": 5},
    {"meter": METER_AIRPLANE, "start": SWITCH.isoformat()},  # D5: silenced
    {"meter": METER_UNKNOWN},  # no owner
    {"meter": METER_TWO_OWNERS},  # several owners: none (fail closed, D1)
    {"meter": METER_MOVED, "start": (SWITCH - timedelta(minutes=30)).isoformat()},  # cut
    # the owner's span ends at the day's last reading: cut before it
    {"meter": METER_MOVED, "start": (SWITCH - timedelta(minutes=45)).isoformat()},
    {"meter": LOWER},  # malformed, though the feed names an owner
    {"meter": ACCENTED},
    {"via": METER_ORES},
    {"ean": EAN_OK},
    {"note": "x"},  # D1: a member the format does not define
    {"unit": "m3"},  # D5: not the register's unit
    {"unit": "Wh"},
    {"interval": 0},
    {"interval": 86_401, "n": 1},
    {"interval": "900"},
    {"interval": True},
    {"interval": 900.0},  # a float, though a whole one
    {"operator": False},
    {"quality": "01010177"},
    {"quality": ["01"] * 4},
    {"start": _LAST_PAST_LATEST},  # the last reading a second in the future
    {"start": "2026-06-13T00:00:00"},  # no offset
    {"n": 1441, "interval": 60},
]
# Meter-days in the common form that go whole to their owner.
TAKEN_IN_C: list[dict[str, Any]] = [
    {},
    {"operator": "ores"},  # the label names the owner
    {"operator": None},
    {"via": None, "ean": None},
    {"start": _LAST_AT_LATEST},  # the last reading exactly at the latest instant
    {"interval": 86_400, "n": 1},
    {"n": 1440, "interval": 60},
    {"quality": "01029901"},
    {"meter": METER_MOVED, "start": SWITCH.isoformat()},  # from the owner change on
    {"meter": METER_AIRPLANE, "start": (SWITCH + timedelta(hours=6)).isoformat()},
]


@pytest.mark.parametrize("day", LEFT_TO_PYTHON)
def test_what_the_c_leaves_to_python(day: dict[str, Any],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Each meter-day that is not "the whole day to its owner" goes to
    _route_day, even with every cache holding what it reads."""
    assert _both_ways(day, monkeypatch)[1] == 1, "the C took a meter-day it must leave"


@pytest.mark.parametrize("day", TAKEN_IN_C)
def test_what_the_c_takes(day: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    assert _both_ways(day, monkeypatch)[1] == 0, "the C left a common meter-day to Python"


def test_a_cached_owner_is_read_again_outside_its_span(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """METER_MOVED after its owner changed, then before (another register):
    the second day is outside the first's span, whichever side (D1)."""
    after = (SWITCH + timedelta(hours=1)).isoformat()
    before = (SWITCH - timedelta(hours=3)).isoformat()
    for first, second, owners in ((after, before, ["sibelga", "fluvius"]),
                                  (before, after, ["fluvius", "sibelga"])):
        text = _batch([common(OWN[0], start=first), common(OWN[0], "1-0:1.8.2", start=second),
                       common(METER_MOVED, start=first),
                       common(METER_MOVED, "1-0:1.8.2", start=second)])
        called = counting(monkeypatch, days_module, "_route_day", key=lambda args: args[1])
        fast = _route(text, fast=True, monkeypatch=monkeypatch)
        assert sorted(called) == [0, 1]  # both METER_MOVED days in C
        assert [tenant for tenant in fast.parts if tenant != "ores"] == owners
        _same(fast, _route(text, fast=False, monkeypatch=monkeypatch))
        monkeypatch.undo()


def test_a_quality_string_cached_for_another_count_is_not_taken(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Five codes (cached for a meter-day of five values) with four values:
    invalid, as the reference says."""
    text = _batch([common(OWN[0], n=5), common(OWN[1], quality="01" * 5)])
    called = counting(monkeypatch, days_module, "_route_day", key=lambda args: args[1])
    fast = _route(text, fast=True, monkeypatch=monkeypatch)
    assert called[1] == 1
    assert [(q.index, q.reason) for q in fast.quarantined] == [(1, "invalid-record")]
    _same(fast, _route(text, fast=False, monkeypatch=monkeypatch))


def test_a_count_of_no_values_is_not_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """scan_days never hands over a count of 0; a caller that does gets the
    reference's answer (invalid) from the C too."""
    def doc() -> dict[str, Any]:
        one = json.loads(common(quality=""))
        days = [dict(one, meter=OWN[0], values=("[]", 0)), dict(one, values=("[]", 0))]
        return {"format": FORMAT, "batch_id": "b-1", "meter_days": days}
    fast = route_meter_days(doc(), WORLD, NOW)
    monkeypatch.setattr(days_module, "_native_days", lambda st: None)
    assert fast == route_meter_days(doc(), WORLD, NOW)
    assert [q.reason for q in fast.quarantined] == ["invalid-record"] * 2


def test_every_unit_a_code_may_be_in_is_a_unit() -> None:
    """route_days reads only the code's units (obis_units), the reference
    also UNITS: the same as long as every answer of obis_units is in UNITS."""
    codes = ["1-0:1.8.1", "1-0:1.7.0", "7-0:3.0.0", "8-0:1.0.0", "9-0:1.0.0", "0-1:24.2.1",
             "1-0:99.99.99", "0-0:1.0.0"]
    assert set().union(*(obis_units(obis_key(c) or "") for c in codes)) == UNITS


def test_route_days_refuses_a_context_of_the_wrong_shape() -> None:
    assert native is not None
    with pytest.raises(TypeError):
        native.route_days((), [], 0)
    with pytest.raises(TypeError):
        native.route_days(("x",) * 17, [], 0)
