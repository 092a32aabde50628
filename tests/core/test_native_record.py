"""``record_strings`` (gateway/core/_native_record.c) against its
specification, ``record_strings_reference`` of gateway/core/jsonlimits.py:
the response check's proof of a one-record answer without making it into
Python objects.

What matters for isolation (D1): wherever the C answers a dict, the
standard library reads the same text as an object with every key once
(``loads_limited`` takes it), and the dict holds exactly its named string
members. Everything it does not prove answers None and goes to the full
parse, which refuses what must be refused: a key twice above all.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.core import jsonlimits
from gateway.core.jsonlimits import MAX_DEPTH, RECORD_MAX_KEYS, record_strings_reference
from gateway.core.native import native

pytestmark = pytest.mark.skipif(native is None, reason="gateway.core._native was not built")

NAMES = ("serial", "at", "id")


def both(data: bytes, names: tuple[str, ...] = NAMES, max_depth: int = MAX_DEPTH) -> Any:
    """The C's answer, held to the reference's and to the full parse's."""
    assert native is not None
    got = native.record_strings(data, names, max_depth)
    assert got == record_strings_reference(data, names, max_depth), data
    if got is not None:
        parsed = jsonlimits.loads_limited(data, max_depth)  # the full path takes it too
        assert type(parsed) is dict
        assert got == {n: parsed[n] for n in names if n in parsed}, data
    return got


def test_the_response_check_calls_the_c_where_it_is_built() -> None:
    assert native is not None and jsonlimits.record_strings is native.record_strings


def test_a_records_named_strings_are_handed_back() -> None:
    data = (b'{"serial": "1SAG0000000001", "utility": "electricity", "n": -1.5e-3,'
            b' "firmware": {"serial": "nested, not read", "ok": true},'
            b' "registers": [{"obis": "1-0:1.8.1"}, null, false, 0, [], {}],'
            b' "at": "2026-06-15T09:00:00+00:00", "empty": "",'
            b' "\xc3\xa9t\xc3\xa9": "\xe2\x82\xac"}')
    assert both(data) == {"serial": "1SAG0000000001", "at": "2026-06-15T09:00:00+00:00"}
    assert both(data, ("\u00e9t\u00e9", "empty")) == {"\u00e9t\u00e9": "\u20ac", "empty": ""}
    assert both(b'{}') == {}
    assert both(b' \t\r\n{ "id" : "7" } \n') == {"id": "7"}


@pytest.mark.parametrize("data", [
    # SECURITY: D1. A key twice, at the top (the check's own field) or deeper:
    # never proven here; the full parse refuses it.
    b'{"serial": "A", "serial": "B"}',
    b'{"serial": "A", "x": 1, "serial": "A"}',
    b'{"serial": "A", "owner": {"id": "x", "id": "y"}}',
    b'{"serial": "A", "list": [{"k": 1, "k": 2}]}',
    b'{"": 1, "": 2}',
])
def test_a_key_twice_in_any_object_is_not_proven(data: bytes) -> None:
    assert both(data) is None
    with pytest.raises(jsonlimits.DuplicateKey):
        jsonlimits.loads_limited(data)


def test_an_object_of_more_members_than_it_compares_is_left_to_the_full_parse() -> None:
    def members(count: int) -> bytes:
        return ("{" + ", ".join(f'"k{i}": {i}' for i in range(count)) + "}").encode()
    assert both(members(RECORD_MAX_KEYS)) == {}
    assert both(members(RECORD_MAX_KEYS + 1)) is None
    nested = b'{"serial": "A", "x": ' + members(RECORD_MAX_KEYS + 1) + b"}"
    assert both(nested) is None


def test_the_nesting_is_bounded_by_the_limit() -> None:
    def nested(depth: int) -> bytes:  # the top-level object is depth 1
        return b'{"a": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"
    assert both(nested(MAX_DEPTH)) == {}
    assert both(nested(MAX_DEPTH + 1)) is None
    assert both(nested(5), max_depth=5) == {}
    assert both(nested(5), max_depth=4) is None
    assert both(b'{"a": {"b": {}}}', max_depth=3) == {}
    assert both(b'{"a": {"b": {}}}', max_depth=2) is None
    assert native is not None
    with pytest.raises(ValueError):
        native.record_strings(b"{}", (), 513)  # one C frame a level: bounded


@pytest.mark.parametrize("data", [
    b'["serial", "A"]', b'"serial"', b"1", b"null", b"",  # not an object at the top
    b'{"serial": "A"', b'{"serial": "A"}}', b'{"serial": "A"} x', b'{"serial" "A"}',
    b'{"serial": "A",}', b'{"a": [1,]}', b'{"a": [,1]}', b'{,}', b'{"a"}', b'{"a":}',
    b'{"a": [1;2]}', b'{"a": [1x2]}', b'{"a": [1 2]}', b'{"a": 1;"b": 2}', b'{"a": 1 "b": 2}',
    b'{"a": "x"."b": 2}', b'{"a": [[]][]}', b'{"a": {}{}}',  # no comma between two
    b"{'a': 1}", b'{a: 1}', b'{"a": tru}', b'{"a": True}', b'{"a": nul}', b'{"a": falsey}',
    b'{"a": NaN}', b'{"a": Infinity}', b'{"a": -Infinity}',  # the standard library takes these
    b'{"a": 01}', b'{"a": 1.}', b'{"a": .5}', b'{"a": 1e}', b'{"a": 1e+}', b'{"a": -}',
    b'{"a": +1}', b'{"a": 0x1}', b'{"a": 1_0}', b'{"a": --1}',
    b'{"a":\x0c1}', b'{"a":\x0b1}', b'\xc2\xa0{}',  # white space JSON does not know
    b'\xef\xbb\xbf{}',  # a byte order mark
    b'{"a": "\\u0041"}', b'{"a\\"": 1}', b'{"a": 1}\\',  # a backslash anywhere
    b'{"a": "line\nbreak"}', b'{"a": "\x00"}', b'{"a": "\x1f"}', b'{"a\t": 1}',
    b'{"serial": 1}', b'{"serial": null}', b'{"serial": {"x": "y"}}', b'{"at": ["x"]}',
])
def test_what_it_does_not_prove_is_none(data: bytes) -> None:
    assert both(data) is None


@pytest.mark.parametrize(("data", "ok"), [
    (b'{"a": "\xc3\xa9"}', True), (b'{"a": "\xe2\x82\xac"}', True),
    (b'{"a": "\xf0\x9f\x98\x80"}', True), (b'{"a": "\xf4\x8f\xbf\xbf"}', True),  # U+10FFFF
    (b'{"a": "\xed\x9f\xbf"}', True), (b'{"a": "\xee\x80\x80"}', True),  # around surrogates
    (b'{"a": "\x7f"}', True),  # DEL is no control character to JSON
    (b'{"a": "\xc0\x80"}', False), (b'{"a": "\xc1\xbf"}', False),  # overlong
    (b'{"a": "\xe0\x80\x80"}', False), (b'{"a": "\xe0\x9f\xbf"}', False),
    (b'{"a": "\xf0\x80\x80\x80"}', False), (b'{"a": "\xf0\x8f\xbf\xbf"}', False),
    (b'{"a": "\xed\xa0\x80"}', False), (b'{"a": "\xed\xbf\xbf"}', False),  # surrogates
    (b'{"a": "\xf4\x90\x80\x80"}', False), (b'{"a": "\xf5\x80\x80\x80"}', False),  # > U+10FFFF
    (b'{"a": "\x80"}', False), (b'{"a": "\xbf"}', False), (b'{"a": "\xff"}', False),
    (b'{"a": "\xc3"}', False), (b'{"a": "\xe2\x82"}', False), (b'{"a": "\xf0\x9f\x98"}', False),
    (b'{"a": "\xc3\x28"}', False), (b'{"a": "\xe2\x28\xa1"}', False),
    (b'{"a": "\xe2\x82\xc3\xa9"}', False), (b'{"a": "\xf0\x9f\x98\xc0"}', False),
    (b'{"a": "\xf0\x9f\x28\x80"}', False), (b'{"a": "\xc3\xc3"}', False),
    (b'{"\xc3\xa9": 1}', True), (b'{"\xc3": 1}', False),  # keys too
    (b'{"a": 1}\xc3\xa9', False), (b'{"a": 1, \xc3\xa9}', False),  # outside strings
])
def test_strings_are_strict_utf8(data: bytes, ok: bool) -> None:
    assert (both(data) is not None) is ok


@pytest.mark.parametrize("number", [
    b"0", b"-0", b"7", b"-12", b"10", b"1.5", b"-0.25", b"1e5", b"1E5", b"1e+5", b"1e-5",
    b"2.5E-3", b"0e0", b"123456789012345678901234567890", b"1e999", b"-1.0e+308",
])
def test_every_number_form_of_json_is_taken(number: bytes) -> None:
    assert both(b'{"n": ' + number + b', "id": "x"}') == {"id": "x"}
    assert both(b'{"n": [' + number + b"]}") == {}


def test_a_string_of_any_length_is_read_to_its_closing_quote() -> None:
    """The C reads eight bytes at a time where it can: every length and
    every place of a byte it refuses or must decode is looked at."""
    for length in range(0, 40):
        for at in range(length):
            for bad, ok in ((b"\x01", False), (b"\x1f", False), (b"\xc3\xa9", True),
                            (b"\xff", False), (b" ", True), (b"\x7f", True)):
                text = bytearray(b"a" * length)
                text[at:at + 1] = bad
                data = b'{"id": "' + bytes(text) + b'", "z": 1}'
                assert (both(data) is not None) is ok, data
        assert both(b'{"id": "' + b"x" * length + b'"}') == {"id": "x" * length}


# Texts built of what the reader reads: the pieces of JSON's grammar, the
# names it is asked for, keys that repeat, and the bytes it refuses.
_PIECES = st.sampled_from([
    "{", "}", "[", "]", ":", ",", " ", "\n", '"serial"', '"id"', '"at"', '"a"', '"a"', '""',
    '"x y"', "0", "-1", "1.5", "2e3", "true", "false", "null", "NaN", '"é"', '"\u20ac"',
    '{"a": 1}', '[1, 2]', '"serial": "S1"', '"id": 7', '"a": "b"', ", ", ": ",
])


@st.composite
def texts(draw: st.DrawFn) -> bytes:
    pieces = draw(st.lists(_PIECES, max_size=40))
    data = "".join(pieces).encode()
    if draw(st.booleans()):
        data = b"{" + data + b"}"
    return data


@st.composite
def json_records(draw: st.DrawFn) -> bytes:
    """A valid record, perhaps with a key twice somewhere, perhaps spaced
    oddly: the texts an upstream would send, and a lying one."""
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20),
                        st.floats(allow_nan=False, allow_infinity=False),
                        st.text(max_size=8))
    values = st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from("abcd"), inner,
                                                     max_size=4)), max_leaves=12)
    record = draw(st.dictionaries(st.sampled_from(["serial", "id", "at", "x", "y"]),
                                  values, max_size=5))
    data = json.dumps(record, ensure_ascii=draw(st.booleans()),
                      separators=draw(st.sampled_from([(",", ":"), (", ", ": "),
                                                       (" ,\n", " :\t")])))
    if record and draw(st.booleans()):  # a key twice: the first member again at the end
        first = json.dumps(next(iter(record)))
        data = data[:-1] + ("," if len(data) > 2 else "") + f"{first}: \"again\"}}"
    return data.encode()


@settings(max_examples=3000, deadline=None)
@given(texts())
@example(b'{"serial": "S1", "serial": "S1"}')
@example(b'{"a": {"a": 1}, "b": {"a": 1}}')  # one key in two objects: not twice
@example(b'{"id": 7}')
def test_generated_texts_are_read_alike(data: bytes) -> None:
    both(data)


@settings(max_examples=2000, deadline=None)
@given(json_records())
def test_generated_records_are_read_alike(data: bytes) -> None:
    both(data)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=48))
def test_any_bytes_are_read_alike(data: bytes) -> None:
    both(data)
    both(b'{"serial": "' + data + b'"}')
