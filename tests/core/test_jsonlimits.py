"""JSON with limits (gateway.core.jsonlimits): nesting capped without
recursion, one value per key, everything else as json.loads."""

from __future__ import annotations

import json

import pytest

from gateway.core.jsonlimits import MAX_DEPTH, DuplicateKey, TooDeep, check_depth, loads_limited


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
