"""The JSON limits' smaller guards, each pinned by a deterministic case
(mutation testing of ``gateway/core/jsonlimits.py``, docs/mutation.md): the
reasons and details of the two refusals, the depth measured where the quick
count cannot decide, and the native parse taken whenever it is provably
right (it is the data plane's per-request parse: the exact one is the
fallback, not the rule)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest

from gateway.core import jsonlimits
from gateway.core.jsonlimits import (
    MAX_DEPTH,
    DuplicateKey,
    TooDeep,
    check_depth,
    loads_limited,
    loads_unique,
)


def test_too_deep_says_so() -> None:
    with pytest.raises(TooDeep) as info:
        check_depth("[" * 5 + "]" * 5, 4)
    assert (info.value.reason, info.value.detail, info.value.status) == (
        "too-deep", "JSON nested deeper than 4", 400)


@pytest.mark.parametrize(("text", "key"), [
    ('{"a": 1, "a": 2}', "a"),
    ('{"a": 1, "b": 2, "b": 3}', "b"),
    ('{"x": {"a": 1, "b": 2, "c": 3, "b": 4}}', "b"),
])
def test_a_duplicate_key_names_the_key_repeated(text: str, key: str) -> None:
    with pytest.raises(DuplicateKey) as info:
        loads_limited(text)
    assert (info.value.reason, info.value.detail) == ("duplicate-key", f"duplicate key {key!r}")


def test_the_depth_at_the_limit_is_taken_where_the_quick_count_cannot_tell() -> None:
    """More brackets than the limit, nested exactly to it: measured, taken;
    one level more: refused."""
    at_limit = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    check_depth(f"[{at_limit[1:-1]}, []]")
    with pytest.raises(TooDeep):
        check_depth(f"[[{at_limit[1:-1]}], []]")


@pytest.mark.parametrize("max_depth", [0, 1, 3])
def test_brackets_only_inside_strings_have_no_depth(max_depth: int) -> None:
    text = json.dumps({"note": "[{" * 10}) if max_depth else json.dumps("[{" * 10)
    if max_depth == 0:
        check_depth(text, 0)  # a bare string: no array or object at all
    else:
        check_depth(text, max_depth)


def parses(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The standard library's parses, from now on (the exact path)."""
    calls: list[Any] = []
    exact = json.loads

    def counted(raw: Any, **kwargs: Any) -> Any:
        calls.append(raw)
        return exact(raw, **kwargs)

    monkeypatch.setattr(jsonlimits.json, "loads", counted)
    return calls


@pytest.mark.parametrize("text", [
    '{"meter": "1SAG0000000001", "values": [1.5, 2, null], "ok": true}',
    '{"note": "a line\\nand another", "path": "C:\\\\x"}',  # escapes
    '{"k\\u0065y": 1, "\\u003a": "\\u0022:"}',  # \\u escapes, a colon among them
    '{"a": {"b": {"c": [1, 2, {"d": "e"}]}}}',
    "123456789012345678",  # 18 digits: within 64 bits
    '{"n": 123456789012345678}',
    "[]",
])
@pytest.mark.parametrize("as_bytes", [False, True])
def test_what_can_be_proven_is_parsed_natively_alone(monkeypatch: pytest.MonkeyPatch,
                                                      text: str, as_bytes: bool) -> None:
    calls = parses(monkeypatch)
    raw: str | bytes = text.encode() if as_bytes else text
    assert loads_unique(raw) == json.JSONDecoder().decode(text)
    assert calls == []


@pytest.mark.parametrize("text", [
    '{"a": 1, "a": 2, "b": 3}',  # a member dropped: the exact path finds it
    '{"a": 1, "\\u0061": 2}',  # two spellings of one name: a member dropped
    "1234567890123456789",  # 19 digits: past 64 bits for orjson
])
def test_what_cannot_be_proven_goes_to_the_exact_parse(monkeypatch: pytest.MonkeyPatch,
                                                        text: str) -> None:
    calls = parses(monkeypatch)
    with contextlib.suppress(DuplicateKey):
        loads_unique(text)
    assert calls == [text]


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32-le"])
def test_a_lone_surrogate_in_utf_16_or_32_is_read_as_json_loads_reads_it(encoding: str) -> None:
    """json.loads decodes bytes with ``surrogatepass``; the depth check must
    read the same text, not fail on it."""
    raw = '["\ud800", {"a": [1, 2]}]'.encode(encoding, "surrogatepass")
    assert loads_limited(raw) == json.loads(raw)


def test_the_depth_of_utf_16_is_measured_on_its_text() -> None:
    """In UTF-16 a character's bytes may look like a quote or a bracket
    (U+0122 is the bytes 22 01): measured on the text, a string full of them
    and of brackets is one level deep."""
    raw = json.dumps({"k": "\u0122" * 3 + "[" * 70}, ensure_ascii=False).encode("utf-16-le")
    check_depth(raw)
    assert loads_limited(raw) == {"k": "\u0122" * 3 + "[" * 70}


def test_utf8_bytes_are_read_in_c_where_it_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """loads_limited reads a UTF-8 text's depth and colons in one C pass
    (json_facts) where gateway.core._native was built: the Python scans are
    then not run at all (tests/core/test_native_wire.py compares the two)."""
    from gateway.core.native import native
    if native is None:
        pytest.skip("gateway.core._native was not built on this machine")

    def not_here(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the Python scan ran for UTF-8 bytes")

    monkeypatch.setattr(jsonlimits, "check_depth", not_here)
    monkeypatch.setattr(jsonlimits, "loads_unique", not_here)
    assert loads_limited(b'{"a": [1, {"b": null}]}') == {"a": [1, {"b": None}]}
    with pytest.raises(TooDeep):
        loads_limited(b"[[[1]]]", 2)
    with pytest.raises(AssertionError, match="Python scan"):
        loads_limited('{"a": 1}')  # a str: the reference


def test_a_lone_surrogate_in_text_is_the_standard_librarys_to_read() -> None:
    # orjson refuses it; the standard library reads it as it stands.
    assert loads_limited('["\ud800"]') == ["\ud800"]
    assert loads_unique('{"a": "\udfff"}') == {"a": "\udfff"}


def test_the_depth_of_bytes_that_are_not_utf8_is_still_measured() -> None:
    """The push intake measures a body's depth before anything else reads
    it: bytes that are not valid UTF-8 are measured as they are, not
    refused by a decode."""
    check_depth(b'["\xff", [1]]', 2)
    with pytest.raises(TooDeep):
        check_depth(b'[[["\xff"]]]', 2)
