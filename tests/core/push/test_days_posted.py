"""``route_posted`` (gateway/core/_native_days.c, through ``route_posted_days``
of gateway/core/push/posted.py): a columnar batch read and routed from its
posted bytes in one pass. Its specification is the general path, the text
decoded, parsed by ``scan_days`` and routed by ``route_meter_days`` in Python:
whenever the C takes a body, the parts (the same texts, in the same order),
the quarantine and the accounting are that path's; whenever that path
refuses a body (a syntax error, a key twice, a bad batch id, too many
meter-days), the C does not take it (D1: a meter-day goes out as posted, so
what the router reads must be what every receiver's parser reads). Which
bodies and which meter-days the C takes is pinned too."""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.native import native
from gateway.core.push import days as days_module
from gateway.core.push.days import FORMAT, RoutedDays, route_meter_days
from gateway.core.push.posted import route_posted_days
from gateway.core.push.records import BatchRejected
from gateway.core.push.scan import scan_days
from gateway.core.relations.index import RelationIndex
from tests.core.conftest import NOW
from tests.core.push._calls import counting
from tests.core.push.test_days_native import (
    LEFT_TO_PYTHON,
    OWN,
    TAKEN_IN_C,
    WORLD,
    _batch,
    _same,
    batches,
    common,
    primer,
)

pytestmark = pytest.mark.skipif(native is None, reason="gateway.core._native is not built")

_SETTINGS = settings(max_examples=120, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture,
                                            HealthCheck.too_slow])


def _general(raw: bytes, relations: RelationIndex = WORLD) -> RoutedDays | type[Exception]:
    """The specification: what the intake's general path makes of ``raw``
    (gateway/push/_service.py), in pure Python (no route_days either)."""
    saved = days_module._native_days
    days_module._native_days = lambda st: None  # type: ignore[assignment]
    try:
        text = raw.decode()
        doc, spans = scan_days(text)
        return route_meter_days(doc, relations, NOW, text=text, spans=spans)
    except (ValueError, BatchRejected) as exc:
        return type(exc)
    finally:
        days_module._native_days = saved  # type: ignore[assignment]


def _agrees(raw: bytes, relations: RelationIndex = WORLD) -> RoutedDays | None:
    """The C's answer, held to the general path's: equal when taken, and
    not taken where the general path refuses the body."""
    posted = route_posted_days(raw, relations, NOW)
    general = _general(raw, relations)
    if posted is not None:
        assert isinstance(general, RoutedDays), f"taken, but the general path says {general}"
        _same(posted, general)
    return posted


def _untakeable(text: str) -> bool:
    """What the C leaves to the general path in the generated batches: a
    character past ASCII, NaN or Infinity (no JSON, though json.loads reads
    them)."""
    return not text.isascii() or "NaN" in text or "Infinity" in text


@_SETTINGS
@given(text=batches())
def test_a_posted_batch_is_routed_as_the_general_path_routes_it(text: str) -> None:
    posted = _agrees(text.encode())
    assert (posted is None) == _untakeable(text), "the C left a batch it can read"


def _respelt(text: str, rng: random.Random) -> str:
    """The same batch in another spelling: white space, the top level's
    members in another order, one more top-level string."""
    doc = json.loads(text)
    top = list(doc.items())
    rng.shuffle(top)
    if rng.random() < 0.5:
        top.insert(rng.randrange(len(top) + 1), ("source", "hes"))
    days = [json.dumps(day, ensure_ascii=False, indent=rng.choice([None, 1, "\t"]),
                       separators=rng.choice([(",", ":"), (", ", ": "), (" ,", " : ")]))
            for day in doc["meter_days"]]
    colons, commas = [":", " : ", ":\r\n"], [",", ",\n  "]
    members = [json.dumps(k) + rng.choice(colons)
               + ("[" + rng.choice(commas).join(days) + "]" if k == "meter_days"
                  else json.dumps(v))
               for k, v in top]
    return rng.choice(["", " ", "\n"]) + "{" + ", ".join(members) + "}" + rng.choice(["", "\n"])


@_SETTINGS
@given(text=batches(), seed=st.integers(0, 2**32))
def test_any_spelling_of_a_batch_is_routed_alike(text: str, seed: int) -> None:
    respelt = _respelt(text, random.Random(seed))
    posted = _agrees(respelt.encode())
    assert (posted is None) == _untakeable(respelt)


# Damage a valid body: the general path's answer (mostly an error) stands.
_DAMAGE = ['"', "\\", "{", "}", "[", "]", ",", ":", "-", "0", "e", "\u00e9", "\x00", "\x01",
           "true", "null", '"values": [1]', '"meter": "1SAG0000000500"', "  "]


@_SETTINGS
@given(text=batches(), at=st.floats(0, 1), how=st.sampled_from(["cut", "insert", "replace"]),
       damage=st.sampled_from(_DAMAGE))
def test_a_damaged_body_is_never_taken_where_the_general_path_refuses_it(
        text: str, at: float, how: str, damage: str) -> None:
    i = int(at * len(text))
    damaged = {"cut": text[:i], "insert": text[:i] + damage + text[i:],
               "replace": text[:i] + damage + text[i + 1:]}[how]
    _agrees(damaged.encode("utf-8", "surrogatepass"))


def _second(day: str, old: str, new: str) -> bytes:
    """A batch of a primer (so that the caches hold what the C reads) and
    ``day`` with ``old`` replaced: the C reads the second meter-day itself."""
    assert old in day
    return _batch([common(OWN[1]), day.replace(old, new, 1)]).encode()


_TOP = _batch([common(OWN[1]), common(OWN[0])])


@pytest.mark.parametrize("body", [
    # the general path refuses each: a key twice, no meter_days, a bad id,
    # another format, an id that is no string, trailing data, no object
    _TOP.replace('"batch_id": "b-1"', '"batch_id": "b-1", "batch_id": "b-2"').encode(),
    _TOP.replace('"meter_days"', '"meter_dayz"').encode(),
    f'{{"format": "{FORMAT}", "batch_id": "b-1"}}'.encode(),  # no meter_days at all
    _TOP.replace('"b-1"', '"b 1"').encode(),
    _TOP.replace(FORMAT, "meter-days/v2").encode(),
    _TOP.replace('"b-1"', "1").encode(),
    (_TOP + "x").encode(),
    (_TOP[:-2] + "}}").encode(),  # the list closed by the wrong bracket
    ("[" + _TOP + "]").encode(),
    # a string no JSON parser reads: a control character, a byte that is
    # no UTF-8, an escape JSON does not have, a backslash before a comma
    _TOP.replace('"batch_id"', '"source": "h\x01es", "batch_id"').encode(),
    _TOP.replace('"batch_id"', '"source": "h\x80es", "batch_id"').encode("latin-1"),
    _TOP.replace('"batch_id"', '"source": "\\x", "batch_id"').encode(),
    _TOP.replace('"batch_id"', '"source": "a\\, "s": "b", "batch_id"').encode(),
    # in a meter-day the C reads itself: a member twice, a values array
    # that is no JSON, a meter-day closed by the wrong bracket
    _second(common(OWN[0]), '"unit"', '"unit": "kWh", "unit"'),
    _second(common(OWN[0]), '"values"', '"x": 1, "x": 2, "values"'),
    _second(common(OWN[0]), '"values": [', '"values": [1,,'),
    _second(common(OWN[0]), '"values": [', '"values": [01, '),
    # four numbers (as many as the quality's codes), one of them no JSON
    _second(common(OWN[0]), "[0.0,0.1,", "[01,0.1,"),
    _second(common(OWN[0]), "[0.0,0.1,", "[-01,0.1,"),
    _second(common(OWN[0]), "[0.0,0.1,", "[--1,0.1,"),
    _second(common(OWN[0]), "[0.0,0.1,0.2,0.3]", "[0.0,,0.2,0.3]"),
    _second(common(OWN[0]), "[0.0,0.1,0.2,0.3]", "[,0.1,0.2,0.3]"),
    _second(common(OWN[0]), "[0.0,0.1,0.2,0.3]", "[0.0 0.5,0.1,0.2,0.3]"),
    _second(common(OWN[0]), "[0.0,0.1,", "[1.2.3,0.1,"),
    _second(common(OWN[0]), "[0.0,0.1,", "[-,0.1,"),
    _second(common(OWN[0]), "[0.0,0.1,", "[1.,0.1,"),
    _second(common(OWN[0]), "]}", "]]"),
    _second(common(OWN[0]), '"kWh"', '"kWh\x01"'),
])
def test_a_body_the_general_path_refuses_is_not_taken(body: bytes) -> None:
    assert not isinstance(_general(body), RoutedDays)
    assert route_posted_days(body, WORLD, NOW) is None


@pytest.mark.parametrize("body", [
    # read by the general path, left to it by the C (an escape, deeper
    # nesting, a number where a top-level string is, past ASCII, NaN)
    _batch([common(OWN[0])]).replace('"b-1"', '"b\\u002d1"'),
    _batch([common(OWN[0], note={"a": 1})]),
    _batch([common(OWN[0])]).replace('"batch_id"', '"n": 1, "batch_id"'),
    _batch([common(OWN[0], operator="Or\u00e8s")]),
    _batch([common(OWN[0]).replace('"values": [', '"values": [NaN, ')]),
])
def test_a_body_only_the_general_path_reads_is_left_to_it(body: str) -> None:
    assert isinstance(_general(body.encode()), RoutedDays)
    assert route_posted_days(body.encode(), WORLD, NOW) is None


def test_too_many_meter_days_are_left_to_the_general_path() -> None:
    """Its 413 stands; one fewer is taken."""
    raw = _batch([common(meter) for meter in OWN[:3]]).encode()
    assert route_posted_days(raw, WORLD, NOW, max_meter_days=2) is None
    taken = route_posted_days(raw, WORLD, NOW, max_meter_days=3)
    assert taken is not None and taken.meter_days == 3
    with pytest.raises(BatchRejected):
        text = raw.decode()
        route_meter_days(scan_days(text)[0], WORLD, NOW, max_meter_days=2)


def test_a_nesting_limit_below_a_batch_s_is_left_to_the_general_path() -> None:
    raw = _batch([common(OWN[0])]).encode()
    assert route_posted_days(raw, WORLD, NOW, max_depth=3) is None
    assert route_posted_days(raw, WORLD, NOW, max_depth=4) is not None


def test_an_empty_batch_is_taken() -> None:
    posted = _agrees(_batch([]).encode())
    assert posted is not None and posted.counts() == {
        "received": 0, "queued": 0, "quarantined": 0, "meter_days": 0}


def _leave_count(raw: bytes, monkeypatch: pytest.MonkeyPatch) -> Counter[Any]:
    """Which meter-days the C left to _route_day; the result held to the
    general path's."""
    called = counting(monkeypatch, days_module, "_route_day", key=lambda args: args[1])
    posted = route_posted_days(raw, WORLD, NOW)
    left = Counter(called)
    monkeypatch.undo()
    assert posted is not None and _agrees(raw) is not None
    return left


def test_the_common_meter_day_is_routed_from_the_posted_bytes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Python reads each start, OBIS code and quality string the first time
    (filling the caches the C reads); every other common meter-day is the
    C's, straight from the body."""
    registers = ["1-0:1.8.1", "1-0:1.8.2", "1-0:2.8.1"]
    raw = _batch([common(meter, registers[i % 3]) for i, meter in enumerate(OWN)]).encode()
    called = _leave_count(raw, monkeypatch)
    assert sorted(called) == [0, 1, 2] and set(called.values()) == {1}
    routed = route_posted_days(raw, WORLD, NOW)
    assert routed is not None
    assert [json.loads(text)["meter"] for text in routed.parts["ores"].meter_days] == OWN
    # the values as posted, not re-encoded
    assert all('"values":[0.0,0.1,0.2,0.3]}' in t for t in routed.parts["ores"].meter_days)


@pytest.mark.parametrize("day", LEFT_TO_PYTHON)
def test_what_the_posted_reader_leaves_to_python(day: dict[str, Any],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The meter-days route_days leaves to _route_day, the reader leaves too."""
    day = dict(day)
    meter = day.pop("meter", OWN[1])
    raw = _batch([primer(day), common(meter, **day)]).encode()
    if not raw.isascii():
        assert route_posted_days(raw, WORLD, NOW) is None
        return
    assert _leave_count(raw, monkeypatch)[1] == 1, "the C took a meter-day it must leave"


@pytest.mark.parametrize("day", TAKEN_IN_C)
def test_what_the_posted_reader_takes(day: dict[str, Any],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    day = dict(day)
    meter = day.pop("meter", OWN[1])
    raw = _batch([primer(day), common(meter, **day)]).encode()
    assert _leave_count(raw, monkeypatch)[1] == 0, "the C left a common meter-day to Python"


def test_a_values_array_the_c_cannot_vouch_for_is_parsed_as_posted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """17 digits and an exponent that underflows are finite: the C vouches
    for them. 1e999 is not: the day goes to _route_day with its values
    parsed, that reading to quarantine, the rest to the owner."""
    raw = _batch([common(OWN[0]), common(OWN[1]).replace(
        '"values": [0.0,0.1', '"values": [12345678901234567, 1e-400')]).encode()
    assert _leave_count(raw, monkeypatch)[1] == 0
    raw = _batch([common(OWN[0]), common(OWN[1]).replace('"values": [0.0',
                                                         '"values": [1e999')]).encode()
    assert _leave_count(raw, monkeypatch)[1] == 1
    routed = route_posted_days(raw, WORLD, NOW)
    assert routed is not None
    assert [(q.index, q.first, q.count, q.reason) for q in routed.quarantined] == [
        (1, 0, 1, "invalid-record")]
    assert len(routed.parts["ores"].meter_days) == 2  # the rest of the day goes


@pytest.mark.parametrize("first, valid", [
    ("9" * 400 + ".5", False),  # no float: infinity
    ("9" * 308, True),  # an int, any size
    ("9" * 17 + ".5", True),
    ("1" + "0" * 308 + "e-10", True),
])
def test_a_long_number_is_read_as_python_reads_it(first: str, valid: bool) -> None:
    """Past 16 integer digits a number is read as json.loads reads it: a
    float that overflows is an invalid reading (D5), an int is not."""
    routed = _agrees(_second(common(OWN[0]), "[0.0,", f"[{first},"))
    assert routed is not None
    assert [(q.index, q.first, q.count) for q in routed.quarantined] == (
        [] if valid else [(1, 0, 1)])


def test_route_posted_refuses_arguments_of_the_wrong_shape() -> None:
    assert native is not None
    with pytest.raises(TypeError):
        native.route_posted((), b"{}", 64, 10, print)
    with pytest.raises(TypeError):
        native.route_posted(("x",) * 17, "{}", 64, 10, print)
    with pytest.raises(TypeError):
        native.route_posted(("x",) * 17, b"{}", 64, 10, None)


_NUMBER = st.from_regex(r"-?(0|[1-9][0-9]{0,18})(\.[0-9]{1,3})?([eE][+-]?[0-9]{1,3})?",
                        fullmatch=True)
_SPACE = st.sampled_from(["", "", " ", "\n", "\t ", "\r\n"])


@_SETTINGS
@given(numbers=st.lists(st.tuples(_SPACE, _NUMBER, _SPACE), min_size=4, max_size=4))
def test_any_spelling_of_four_numbers_is_read_as_the_general_path_reads_it(
        numbers: list[tuple[str, str, str]]) -> None:
    """Each number as JSON may spell it (a sign, a leading zero, up to 19
    integer digits, a fraction, an exponent, white space around): the
    meter-day is taken, and as the general path takes it."""
    array = "[" + ",".join(a + n + b for a, n, b in numbers) + "]"
    assert _agrees(_second(common(OWN[0]), "[0.0,0.1,0.2,0.3]", array)) is not None


@_SETTINGS
@given(inner=st.text(alphabet="0123456789.,-+eE \n]x", max_size=30))
def test_any_text_in_a_values_array_is_read_as_the_general_path_reads_it(inner: str) -> None:
    _agrees(_second(common(OWN[0]), "[0.0,0.1,0.2,0.3]", "[" + inner + "]"))
