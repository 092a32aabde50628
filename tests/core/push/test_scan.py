"""scan_days(): the meter-day batch's fast parse checks the numbers of each
``values`` array instead of converting them, and is still json.loads: the same
document (each array handed over as its posted text), the same errors, and
the same routing outcome for every reading."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.jsonlimits import DuplicateKey
from gateway.core.push.days import FORMAT, RoutedDays, route_meter_days
from gateway.core.push.scan import scan_batch, scan_days
from tests.core.conftest import METER_MOVED, METER_ORES, NOW
from tests.core.push.test_days import delivered, outcomes
from tests.core.push.test_records import RELATIONS, YESTERDAY

# Spellings of a "values" array: valid ones the fast check takes, valid ones it
# leaves to json.loads, and broken ones (json.loads refuses the whole body).
_FAST = ["[0.1,0.2]", "[ 1 , -2.5 ]", "[-0]", "[-0.0]", "[0]", "[1e5,2E-3,3e+07]",
         "[1234567890123456]", "[\n1,\r\t2\n]", "[0.000, 1.0e-2]", "[1.5e99]",
         # The longest run of digits that is finite without an exponent (~1e308).
         "[" + "9" * 308 + "]", "[1, 0." + "5" * 308 + "]"]
_SLOW = ["[12345678901234567]", "[1e999]", "[-1e999]", "[1e-400]", "[1e100]",
         "[]", "[ ]", "[NaN]", "[Infinity, 1]", "[-Infinity]", "[1, \"2\"]", "[[1], 2]",
         "[true]", "[null, 1]", "[1, {}]", "[" + "9" * 400 + "]", "[0." + "1" * 50 + "]",
         "[" + ",".join(["1"] * 1441) + "]", "[" + ",".join(["0.5"] * 1440) + "]",
         "[" + "9" * 309 + "]", "[1, " + "9" * 310 + ".5]"]  # may overflow: not counted
_BROKEN = ["[01]", "[1.]", "[.5]", "[+1]", "[1,]", "[,1]", "[1 2]", "[- 1]", "[1e]",
           "[1e+]", "[--1]", "[1..2]", "[1.2.3]", "[0x10]", "[1,,2]", "[1-2]", "[1.e5]",
           "[" + "9" * 5000 + "]", "[1", "[1]]"]


def body(values: list[str], *, extra: str = "", top: str = "") -> str:
    days = [f'{{"meter":"{METER_ORES}","start":"{YESTERDAY.isoformat()}","interval":900,'
            f'"obis":"1-0:1.8.{k + 1}","unit":"kWh","quality":"{"01" * _count(v)}",'
            f'"values":{v}{extra}}}' for k, v in enumerate(values)]
    return (f'{{"format":"{FORMAT}","batch_id":"b-1",{top}"meter_days":['
            + ",".join(days) + "]}")


def _count(spelling: str) -> int:
    try:
        parsed = json.loads(spelling)
    except ValueError:
        return 1
    return len(parsed) if isinstance(parsed, list) and parsed else 1


def materialized(doc: Any, text: str) -> Any:
    """scan_days' document with each handed-over array parsed, checking what
    it claims about it."""
    for day in doc.get("meter_days", []) if isinstance(doc, dict) else []:
        if isinstance(day, dict) and type(day.get("values")) is tuple:
            posted, values = day["values"]
            assert posted in text  # a slice of the body, as posted
            parsed = json.loads(posted)
            if type(values) is int:  # that many finite numbers
                assert values == len(parsed) > 0
                assert all(type(v) in (int, float) and math.isfinite(v) for v in parsed)
            else:
                assert json.dumps(values) == json.dumps(parsed)
            day["values"] = parsed
    return doc


def same_as_json_loads(text: str) -> None:
    try:
        expected = json.loads(text)
    except ValueError:
        with pytest.raises(ValueError):
            scan_days(text)
        return
    doc, _ = scan_days(text)
    # json.dumps: NaN is not equal to itself, but is spelled the same.
    assert json.dumps(materialized(doc, text)) == json.dumps(expected)


@pytest.mark.parametrize("spelling", _FAST + _SLOW + _BROKEN)
def test_every_spelling_parses_as_json_loads_parses_it(spelling: str) -> None:
    same_as_json_loads(body([spelling]))
    same_as_json_loads(body(["[1,2]", spelling, "[3]"]))


def test_a_plain_batch_is_handed_over_unconverted() -> None:
    doc, spans = scan_days(body(["[0.1,0.2]", "[ 1 , -2.5 ]"]))
    assert spans is None
    assert [d["values"] for d in doc["meter_days"]] == [("[0.1,0.2]", 2), ("[ 1 , -2.5 ]", 2)]


@pytest.mark.parametrize("text", [
    body(["[1,2]"], extra=',"via":{"values":[3]}'),
    body(["[1,2]"], top='"values":[4],'),
    body(["[1,2]"], top='"note":"~V~",'),
    body(["[1,2]"], top='"note":"\\u007eV~",'),
    body(["[1,2]"], extra=',"operator":"a\\"values\\":[5]"'),
    body(["[1,2]"]).replace('"values"', '"valu\\u0065s"'),
    body(["[1,2]"]).replace(f'"{FORMAT}"', '"meter-days/v2"'),
    body(["[1,2]"]).replace('"format"', '"records":[],"format"', 1),
    body(["[1,2]"]) + "x",
    body(["[1,2]"]).replace("],", "]", 1),
    '[{"format":"meter-days/v1","values":[1]}]',
    '{"format":"meter-days/v1","meter_days":{"values":[1]}}',
    '{"format":"meter-days/v1","meter_days":[[{"values":[1]}]]}',
    '{"format":"meter-days/v1","meter_days":["~V~", {"values":[1]}]}',
])
def test_odd_batches_are_json_loads_own(text: str) -> None:
    same_as_json_loads(text)


_number = st.one_of(
    st.integers(-10**20, 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(json.dumps),
    st.text(alphabet="0123456789.-+eE", min_size=1, max_size=6))
_sep = st.sampled_from([",", ", ", " ,", "\n,\t", ",,", " ", ""])


@st.composite
def _array(draw: st.DrawFn) -> str:
    numbers = draw(st.lists(_number, max_size=5))
    out = "[" + draw(st.sampled_from(["", " "]))
    for k, n in enumerate(numbers):
        out += (draw(_sep) if k else "") + n
    return out + draw(st.sampled_from(["]", " ]", "\n]"]))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(_array(), st.sampled_from(_FAST + _SLOW[:12] + _BROKEN[:-3])),
                min_size=1, max_size=5))
def test_generated_arrays_parse_as_json_loads_parses_them(values: list[str]) -> None:
    same_as_json_loads(body(values))


# -- routing: the same outcome as from json.loads ------------------------------

def _routes(text: str) -> list[RoutedDays]:
    fast, _ = scan_days(text)
    slow, spans = scan_batch(text)
    return [route_meter_days(fast, RELATIONS, NOW),
            route_meter_days(slow, RELATIONS, NOW, text=text, spans=spans),
            route_meter_days(json.loads(text), RELATIONS, NOW)]


@pytest.mark.parametrize("spelling", _FAST + _SLOW)
def test_every_spelling_routes_as_before(spelling: str) -> None:
    longer = spelling.replace("[", "[7,", 1) if spelling.strip("[ ]") else "[7]"
    text = body(["[1,2]", spelling, longer])
    first, *others = _routes(text)
    for other in others:
        assert outcomes(first) == outcomes(other)
        assert first.counts() == other.counts()
        assert first.quarantined == other.quarantined


@pytest.mark.parametrize(("spelling", "reasons"), [
    ("[NaN, 1]", {(0, 1, "invalid-record")}),
    ("[Infinity, 1]", {(0, 1, "invalid-record")}),
    ("[1, -Infinity]", {(1, 1, "invalid-record")}),
    ("[1e999, 1]", {(0, 1, "invalid-record")}),
    ("[1, \"2\"]", {(1, 1, "invalid-record")}),
    ("[[1], 2]", {(0, 1, "invalid-record")}),
    ("[true, 2]", {(0, 1, "invalid-record")}),
    ("[]", {(0, 1, "invalid-record")}),
    ("5", {(0, 1, "invalid-record")}),  # not an array: not a count either
    ("96", {(0, 1, "invalid-record")}),
    ("null", {(0, 1, "invalid-record")}),
    ('"[1]"', {(0, 1, "invalid-record")}),
    ('{"values": [1]}', {(0, 1, "invalid-record")}),
    ("[" + ",".join(["1"] * 1441) + "]", {(0, 1441, "invalid-record")}),
])
def test_bad_values_are_quarantined_one_by_one(spelling: str,
                                               reasons: set[tuple[int, int, str]]) -> None:
    for routed in _routes(body([spelling])):
        assert {(q.first, q.count, q.reason) for q in routed.quarantined} == reasons


def test_a_whole_day_goes_as_posted_and_a_cut_day_is_re_encoded() -> None:
    text = body(["[0.000, 1.0e-2, -0]"])
    (part,) = route_meter_days(scan_days(text)[0], RELATIONS, NOW).parts["ores"].meter_days
    assert '"values":[0.000, 1.0e-2, -0]' in part
    moved = text.replace(METER_ORES, METER_MOVED).replace(
        "[0.000, 1.0e-2, -0]", "[" + ", ".join(["1.50"] * 96) + "]").replace(
        '"quality":"010101"', '"quality":"' + "01" * 96 + '"')
    routed = route_meter_days(scan_days(moved)[0], RELATIONS, NOW)
    got = delivered(routed)
    assert set(got) == {"fluvius", "sibelga"}
    assert got["fluvius"][0]["values"] == [1.5] * 48 and got["sibelga"][0]["values"] == [1.5] * 48
    assert routed.counts() == {"received": 96, "queued": 96, "quarantined": 0, "meter_days": 1}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_array(), st.sampled_from(_FAST + _SLOW[:12])), min_size=1,
                max_size=4))
def test_generated_batches_route_as_before(values: list[str]) -> None:
    text = body(values)
    try:
        json.loads(text)
    except ValueError:
        return
    first, *others = _routes(text)
    for other in others:
        assert outcomes(first) == outcomes(other)
        assert first.quarantined == other.quarantined


# -- D1: one value per key, or no batch ------------------------------------------------
_FLUVIUS_METER = "1SAG0000000001"


@pytest.mark.parametrize("twice", [
    f'"meter":"{_FLUVIUS_METER}",',  # the receiver may read the first "meter"
    '"values":[9.9],',  # a second values array in one meter-day
    '"obis":"1-0:2.8.1",',
])
def test_a_key_twice_in_a_meter_day_is_refused(twice: str) -> None:
    """A meter-day goes to its owner as the HES wrote it: if a key were there
    twice, the router would read the last and a receiver's parser might read
    the first (another tenant's meter, D1)."""
    text = body(["[0.1,0.2]"]).replace('{"meter"', "{" + twice + '"meter"', 1)
    with pytest.raises(DuplicateKey):
        scan_days(text)
    with pytest.raises(DuplicateKey):
        scan_batch(text)


@pytest.mark.parametrize("text", [
    body(["[0.1,0.2]"], top='"batch_id":"b-2",'),  # the envelope
    body(["[0.1,0.2]"]).replace('"meter_days":[', '"meter_days":[],"meter_days":[', 1),
    # the format spelt with an escape still gets the strict parse
    body(["[0.1,0.2]"]).replace(f'"{FORMAT}"', '"meter-days\\/v1"', 1)
    .replace('"meter"', '"meter":"X","meter"', 1),
    # a repeated "values", however spelt (once as the fast path's own marker)
    body(["[1,2]"], extra=',"values":[3]'),
    body(["[1,2]"], extra=',"values":"~V~"'),
    body(["[1,2]"], extra=',"values":"\\u007eV~"'),
    body(["[1,2]"], extra=',"valu\\u0065s":[3]'),
])
def test_a_key_twice_anywhere_in_a_batch_is_refused(text: str) -> None:
    with pytest.raises(DuplicateKey):
        scan_days(text)


@pytest.mark.parametrize("text", [
    # what the scanner leaves to json.loads (a top level that is not an object)
    # is parsed as strictly: D1 holds whichever parser reads the batch
    "[" + body(["[0.1,0.2]"], top='"batch_id":"b-2",') + "]",
    f'[{{"format":"{FORMAT}","meter_days":[{{"meter":"A","meter":"B"}}]}}]',
])
def test_a_key_twice_is_refused_whatever_parses_the_batch(text: str) -> None:
    for parse in (scan_days, scan_batch):
        with pytest.raises(DuplicateKey):
            parse(text)


def test_a_per_record_batch_keeps_the_last_key() -> None:
    """Records are re-encoded from what was parsed (never forwarded as posted),
    so json.loads's rule holds there: what is routed is what is delivered."""
    doc, _ = scan_days('{"batch_id":"b","records":[{"meter":"A","meter":"B"}]}')
    assert doc == {"batch_id": "b", "records": [{"meter": "B"}]}
