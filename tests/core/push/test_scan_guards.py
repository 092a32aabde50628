"""The push scanner's smaller guards, each pinned by a deterministic case
(mutation testing of ``gateway/core/push/scan.py``, docs/mutation.md): which
``values`` arrays are counted rather than converted (and never an infinite
one), the one check that vouches for them all, the meter-days' spans in every
spelling the HES may use, what a batch without them gets, the standard
library's own errors, and the scanner as the only parse of what it reads (the
fallback to json.loads is the exception, not the rule)."""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
import pytest

from gateway.core.jsonlimits import DuplicateKey, TooDeep
from gateway.core.push import scan
from gateway.core.push.days import route_meter_days
from gateway.core.push.scan import scan_batch, scan_days
from tests.core.conftest import NOW
from tests.core.push._calls import counting
from tests.core.push.test_records import RELATIONS
from tests.core.push.test_scan import body


def values(text: str) -> list[Any]:
    doc, _ = scan_days(text)
    return [day["values"] for day in doc["meter_days"]]


@pytest.fixture(autouse=True, params=["reference", "native"])
def finite_check(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs on both ways scan_days cuts and checks the arrays:
    the Python reference (the regular expression; msgspec's syntax check,
    orjson where an exponent may overflow) and its C twin, which calls none
    of them (tests/core/test_native.py compares the two on generated text)."""
    if request.param == "reference":
        monkeypatch.setattr(scan, "_finite_counts", scan.finite_number_counts_reference)
        monkeypatch.setattr(scan, "_cut_values", scan._CUT.split)
    elif scan._native is None:
        pytest.skip("gateway.core._native is not built")
    else:
        assert scan._finite_counts is scan._native.finite_number_counts
        assert scan._cut_values is scan._native.cut_values
    return str(request.param)


# -- which arrays are counted ------------------------------------------------------------

@pytest.mark.parametrize(("spelling", "count"), [
    ("[12345678901234567]", 1),  # 17 digits: past the one-array pattern, finite
    ("[" + "9" * 308 + "]", 1),  # the longest run that stays finite without an exponent
    ("[1e100, 2]", 2),  # a three-digit exponent: past the pattern, finite
    ("[1e-400]", 1),  # underflows to 0.0: finite
    ("[12345678901234567e0]", 1),
])
def test_finite_numbers_past_the_pattern_are_counted_not_converted(spelling: str,
                                                                    count: int) -> None:
    """scan_days' contract: a ``values`` array of finite JSON numbers is handed
    over as posted with its count, so a whole day is forwarded as the HES wrote
    it without making 96 floats (D5). The one check of all the arrays vouches
    for the ones the per-array pattern leaves to json.loads."""
    assert values(body(["[1,2]", spelling])) == [("[1,2]", 2), (spelling, count)]


@pytest.mark.parametrize(("spelling", "first"), [("[1E999]", 0), ("[-1E400, 1]", 0),
                                                ("[1, 2E308]", 1)])
def test_an_upper_case_exponent_that_overflows_is_never_counted(spelling: str,
                                                                 first: int) -> None:
    """``E`` is an exponent as ``e`` is: an infinite value is parsed (never
    vouched for as finite) and its reading quarantined, not forwarded (D5)."""
    text = body([spelling])
    (got,) = values(text)
    assert got == (spelling, json.loads(spelling))
    assert math.isinf(got[1][first])
    routed = route_meter_days(scan_days(text)[0], RELATIONS, NOW)
    assert {(q.first, q.count, q.reason) for q in routed.quarantined} == {
        (first, 1, "invalid-record")}




def test_plain_numbers_are_checked_in_one_pass_and_never_parsed(
        monkeypatch: pytest.MonkeyPatch, finite_check: str) -> None:
    """The HES's own spelling (no exponent): one syntax check of every array
    together, and no parser makes a float of any value (half the cost of the
    parse, bench/README)."""
    checked = counting(monkeypatch, scan, "_FLAT_ARRAYS")
    parsed = counting(monkeypatch, orjson, "loads", key=lambda args: bytes(args[0]))
    assert values(body(["[0.1,0.2]", "[ 1 , -2.5 ]"])) == [("[0.1,0.2]", 2),
                                                         ("[ 1 , -2.5 ]", 2)]
    assert checked == ({"[[0.1,0.2],[ 1 , -2.5 ]]": 1} if finite_check == "reference" else {})
    # orjson parses what is around the arrays once (the marker in their place), never them.
    assert list(parsed.values()) == [1]
    (around,) = parsed
    assert around.count(b'"~V~"') == 2 and b"0.1" not in around and b"2.5" not in around


def test_numbers_with_an_exponent_are_parsed_once_together(
        monkeypatch: pytest.MonkeyPatch, finite_check: str) -> None:
    """An exponent may overflow: one orjson parse of all the arrays, which
    refuses an infinite value, instead of the syntax check (in C: each number
    with an exponent read as a float, no parser of the whole)."""
    checked = counting(monkeypatch, scan, "_FLAT_ARRAYS")
    parsed = counting(monkeypatch, orjson, "loads", key=lambda args: args[0])
    assert values(body(["[1e5,2E-3]", "[0.5]"])) == [("[1e5,2E-3]", 2), ("[0.5]", 1)]
    arrays = {k: v for k, v in parsed.items() if isinstance(k, str)}  # the rest is bytes
    assert arrays == ({"[[1e5,2E-3],[0.5]]": 1} if finite_check == "reference" else {})
    assert checked == {}


# -- the nesting check -------------------------------------------------------------------
# A meter-day's values array is the fourth level: the batch, its meter_days,
# the meter-day, the array.

def test_the_nesting_limit_counts_the_cut_arrays() -> None:
    """What is around the arrays is measured, the cut arrays adding their one
    level: the limit is exact on the text as posted, and a batch within it
    keeps the fast path (its values are counted, not parsed)."""
    text = body(["[0.1,0.2]"])
    doc, _ = scan_days(text, max_depth=4)
    assert doc["meter_days"][0]["values"] == ("[0.1,0.2]", 2)
    with pytest.raises(TooDeep):
        scan_days(text, max_depth=3)


@pytest.mark.parametrize("deep", [
    '"operator":' + "[" * 70 + "]" * 70 + ",",  # around the arrays
    '"via":"a\\b",' + '"operator":' + "[" * 70 + "]" * 70 + ",",  # with an escape
])
def test_a_batch_nested_past_the_limit_is_refused_before_a_parse(
        monkeypatch: pytest.MonkeyPatch, deep: str) -> None:
    """D1: a deep batch is a 400 (TooDeep), never a parser's RecursionError,
    on the fast path and on the exact one; no parser is reached."""
    text = body(["[0.1,0.2]"]).replace('{"meter":', "{" + deep + '"meter":', 1)
    called = counting(monkeypatch, scan, "scan_batch")
    with pytest.raises(TooDeep):
        scan_days(text)
    assert called == {}
    doc, _ = scan_days(text, max_depth=73)  # the same text, within a larger limit
    assert len(doc["meter_days"]) == 1


def test_a_deep_batch_in_the_per_record_format_is_refused_too() -> None:
    text = '{"batch_id":"b","records":' + "[" * 70 + "]" * 70 + "}"
    with pytest.raises(TooDeep):
        scan_days(text)
    assert scan_days(text, max_depth=71)[0]["batch_id"] == "b"


# -- what scan_days leaves to scan_batch -------------------------------------------------

@pytest.mark.parametrize("text", [
    body(["[1, null]"]),  # no array to cut: the spans of the meter-days
    body(["[1,2]"], top='"note":"~V~",'),  # the marker posted as a string
    # An escape: the only "values" key's value is the marker spelled with one,
    # and an array sits under another member whose key ends in 'values"'. The
    # meter-day's values are that string, never the other member's array (D1).
    body(['"\\u007eV~"'], extra=',"x\\"values":[1,2]'),
])
def test_what_the_fast_path_cannot_vouch_for_is_scan_batch_own(text: str) -> None:
    assert scan_days(text) == scan_batch(text)


def test_values_under_another_key_are_never_a_meter_days_values() -> None:
    text = body(['"\\u007eV~"'], extra=',"x\\"values":[1,2]')
    (day,) = scan_days(text)[0]["meter_days"]
    assert (day["values"], day['x"values']) == ("~V~", [1, 2])


# -- the spans of the meter-days ---------------------------------------------------------

def _spans(text: str, elements: list[str]) -> list[tuple[int, int]]:
    out, at = [], text.index('"meter_days"')
    for element in elements:
        at = text.index(element, at)
        out.append((at, at + len(element)))
        at += len(element)
    return out


@pytest.mark.parametrize("separator", [",", ", ", ",\t", ",\r", ",\n", " ,\r\n\t"])
def test_the_meter_days_are_found_however_they_are_separated(separator: str) -> None:
    """Each meter-day's offsets, for the router to forward its values as
    posted (D5); compact (the HES's own spelling) or spaced alike."""
    elements = ['{"n":12}', '{"n":345,"m":"x"}', '{}']
    text = ('{"batch_id":"b","n":67,"meter_days":[' + separator.join(elements)
            + '],"m":"y"}')
    assert scan_batch(text) == (json.loads(text), _spans(text, elements))
    assert scan_batch(text, unique=False) == (json.loads(text), _spans(text, elements))


@pytest.mark.parametrize(("text", "unique"), [
    ('{"batch_id":"b"}', True),
    ('{"meter_days":{"values":[1]}}', True),  # not an array: nothing to cut
    ('{"meter_days":[{"n":1}],"meter_days":null}', False),  # the last one wins
    ("{}", True),
])
def test_without_a_meter_days_array_there_are_no_spans(text: str, unique: bool) -> None:
    assert scan_batch(text, unique=unique) == (json.loads(text), None)


# -- the standard library's answer and errors --------------------------------------------

@pytest.mark.parametrize("text", [
    "{}x", "{} }", "{}}",  # extra data after an empty object
    '{"a":1,""b":2}', '{"a":1, ""b":2}',  # a stray quote after the comma
    '{"a"::1}',
    "[1,}", '{"batch_id":"b","records":[1,}',
])
def test_what_is_not_json_raises_json_loads_own_error(text: str) -> None:
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(text)
    for parse in (scan_days, scan_batch, lambda t: scan_batch(t, unique=False)):
        with pytest.raises(json.JSONDecodeError) as info:
            parse(text)
        assert (info.value.msg, info.value.pos) == (expected.value.msg, expected.value.pos)


@pytest.mark.parametrize("text", ['{"n":12,"m":345}', '{"a":"bc","d":[67]}', "[1, 2]",
                                  '"text"', "12"])
def test_a_document_is_read_as_json_loads_reads_it(text: str) -> None:
    for unique in (True, False):
        assert scan_batch(text, unique=unique) == (json.loads(text), None)
    assert scan_days(text) == (json.loads(text), None)


def test_a_top_level_key_twice_is_named() -> None:
    with pytest.raises(DuplicateKey) as info:
        scan_batch('{"batch_id":"a","meter_days":[],"batch_id":"b"}')
    assert (info.value.reason, info.value.detail) == ("duplicate-key",
                                                      "duplicate key 'batch_id'")


@pytest.mark.parametrize("text", [
    "{}", " {} ", "{ }\n", '{"batch_id":"b","records":[]}',
    '{"batch_id":"b","records":[{"meter":"A","value":1.5},{"meter":"B","value":2}]}',
])
def test_a_document_the_scanner_reads_is_parsed_once(monkeypatch: pytest.MonkeyPatch,
                                                     text: str) -> None:
    """A per-record batch (and the empty object) is the scanner's own: no
    second parse by json.loads, which is the fallback, not the rule."""
    expected = json.loads(text)
    calls = counting(monkeypatch, json, "loads")
    assert scan_days(text) == (expected, None)
    assert calls == {}
