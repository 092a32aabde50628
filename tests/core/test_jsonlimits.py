"""JSON with limits (gateway.core.jsonlimits): nesting capped without
recursion, one value per key, everything else as json.loads."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.jsonlimits import (
    MAX_DEPTH,
    DuplicateKey,
    TooDeep,
    check_depth,
    loads_limited,
    unique_object,
)


def nested(depth: int, open_: str = "[", close: str = "]") -> str:
    return open_ * depth + close * depth


def test_the_limit_is_exact() -> None:
    assert MAX_DEPTH == 64
    assert loads_limited(nested(64)) == json.loads(nested(64))
    with pytest.raises(TooDeep):
        loads_limited(nested(65))
    objects = '{"a":' * 64 + "1" + "}" * 64
    assert loads_limited(objects)
    with pytest.raises(TooDeep):
        loads_limited('{"a":' * 65 + "1" + "}" * 65)
    with pytest.raises(TooDeep):
        loads_limited(nested(3), max_depth=2)


def test_far_too_deep_is_too_deep_not_a_recursion_error() -> None:
    for text in (nested(3000), nested(100_000), "[" * 100_000):
        with pytest.raises(TooDeep):
            loads_limited(text)
        with pytest.raises(TooDeep):
            loads_limited(text.encode())


@pytest.mark.parametrize("text", [
    '{"a": "' + "[" * 100 + '"}',  # brackets inside a string do not nest
    '{"a": "\\"' + "[" * 100 + '"}',  # nor after an escaped quote
    '["' + "]" * 100 + '", ' + nested(60) + "]",
])
def test_brackets_inside_strings_do_not_count(text: str) -> None:
    assert loads_limited(text) == json.loads(text)


@pytest.mark.parametrize("text", [
    # A string's closing brackets must not hide real nesting after it.
    '["' + "]" * 100 + '", ' + nested(70) + "]",
    '{"a": "\\\\", "b": ' + nested(70) + "}",  # an escaped backslash ends the string
    '{"a": "\\"", "b": ' + nested(70) + "}",
    '{"é": "\ud800", "b": ' + nested(70) + "}",
])
def test_nesting_after_strings_is_measured(text: str) -> None:
    with pytest.raises(TooDeep):
        check_depth(text)


def test_every_encoding_json_loads_takes() -> None:
    for codec in ("utf-8", "utf-16", "utf-16-le", "utf-32"):
        assert loads_limited('{"a": [1]}'.encode(codec)) == {"a": [1]}
        with pytest.raises(TooDeep):
            loads_limited(nested(65).encode(codec))


@pytest.mark.parametrize("text", ['{"a": 1, "a": 2}', '{"a": 1, "a": 1}',
                                  '[{"x": {"s": "1", "s": "2"}}]'])
def test_a_key_twice_in_one_object_is_refused(text: str) -> None:
    with pytest.raises(DuplicateKey):
        loads_limited(text)


def test_the_same_key_in_different_objects_is_fine() -> None:
    assert loads_limited('[{"a": 1}, {"a": 2, "b": {"a": 3}}]') == [
        {"a": 1}, {"a": 2, "b": {"a": 3}}]


@pytest.mark.parametrize("text", ['{"a": ', "\\u", '"\\u12"', "[1,]", b"\xff\xfe\xff"])
def test_other_errors_are_json_loads_own(text: str | bytes) -> None:
    with pytest.raises(ValueError) as caught:
        loads_limited(text)
    assert not isinstance(caught.value, TooDeep | DuplicateKey)


def test_both_errors_are_value_errors() -> None:
    assert issubclass(TooDeep, ValueError) and issubclass(DuplicateKey, ValueError)


# -- the native parse (orjson) and its proof that no member was dropped --------

@pytest.mark.parametrize("text", [
    '{"a": 1, "a": 2}',
    # Colons inside strings do not hide a dropped member...
    '{"t": "10:00", "t": "11:00"}',
    '[{"ts": "2026-12-05T10:00:00Z", "a": {"k": "x:y:z"}, "a": 1}]',
    # ...nor does a colon spelled as an escape, which the re-serialised
    # copy writes as a colon: one colon fewer among the members, one more
    # inside a string, equal counts (refused only because any \u escape goes
    # the exact way).
    '{"a": 1, "a": 2, "x": "\\u003a"}',
    '{"a": 1, "\\u0061": 2}',  # the same name, spelled two ways
    b'{"meter": "1SAG1", "meter": "1SAG2"}',
    bytearray(b'{"k": [1], "k": [1]}'),
])
def test_a_dropped_member_is_always_found(text: str | bytes) -> None:
    with pytest.raises(DuplicateKey):
        loads_limited(text)


@pytest.mark.parametrize("text", [
    '{"big": 123456789012345678901234567890}',  # past orjson's 64 bits
    '{"x": NaN, "y": -Infinity}',  # not JSON, but json.loads's (as before)
    '{"a": "\\ud800"}',  # a lone surrogate
    b"\xef\xbb\xbf[1]",  # a byte order mark
    '[9223372036854775807, -9223372036854775808, 18446744073709551616, "s"]',
    '[12345678901234567890123, -0, 0.1, 1.0]',
    '123456789012345678901',  # at the very start, past 2**64
    '{"a":\n-12345678901234567890,"q":"0101010101010101010101"}',
    '[1,\t12345678901234567890]',
    '{"s": "\\u00e9:\\u003a", "n": 1e400}',
])
def test_what_orjson_refuses_or_cannot_prove_is_the_standard_librarys(
        text: str | bytes) -> None:
    expected = json.loads(text)
    got = loads_limited(text)
    assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True)


_names = st.sampled_from(["a", "b", "t", "ts", "a:b", "\u00e9", ""])
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                     st.floats(allow_nan=False), st.text(alphabet=':ab"\\\u00e9 \n', max_size=6))


def _member_lists(values: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Objects written by hand, so a name may repeat."""
    members = st.lists(st.tuples(_names, values), max_size=4)
    return members.map(lambda ms: "{" + ", ".join(
        f"{json.dumps(k)}: {v}" for k, v in ms) + "}")


_documents = st.recursive(
    _scalars.map(json.dumps),
    lambda inner: st.one_of(st.lists(inner, max_size=3).map(lambda xs: "[" + ",".join(xs) + "]"),
                            _member_lists(inner)),
    max_leaves=12)


@given(_documents, st.booleans())
@settings(max_examples=400, deadline=None)
def test_the_native_parse_agrees_with_the_exact_one(text: str, as_bytes: bool) -> None:
    raw: str | bytes = text.encode() if as_bytes else text
    try:
        expected = json.loads(raw, object_pairs_hook=unique_object)
    except DuplicateKey:
        with pytest.raises(DuplicateKey):
            loads_limited(raw)
        return
    got = loads_limited(raw)
    # Written back, so an integer read as a float (1 == 1.0) would show.
    assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True)
