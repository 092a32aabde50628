"""The wire forms in C (gateway/core/_native_wire.c) against their Python
references: the upstream client's reading of a response head and its request
writer (gateway/upstream/_http.py), the lean server's answer head
(gateway/edge/_lean_wire.py), and what the JSON limits read of a text before
parsing it (gateway/core/jsonlimits.py).

The references stay the specification; the rule tests of the client
(tests/upstream/test_parser.py) run on both. Here: the gateway calls the C
where it is built, and the two agree on generated input, hostile input
included: a head outside the grammar is None in both, a request or answer
that would split is refused by both, and where the C declines (input that is
not plain ASCII) the reference writes it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway.core import jsonlimits
from gateway.core.native import native
from gateway.edge import Answer, _lean_wire
from gateway.upstream import _http

pytestmark = pytest.mark.skipif(native is None, reason="gateway.core._native was not built")

DATE = "Sun, 06 Dec 2026 18:00:00 GMT"


def test_the_gateway_calls_the_c_where_it_is_built() -> None:
    assert native is not None
    assert _http._read_head is native.response_head
    assert _http._native is native
    assert _lean_wire._native is native


# --- the response head ----------------------------------------------------------------

NAMES = [b"Content-Length", b"content-length", b"Transfer-Encoding", b"TRANSFER-encoding",
         b"Connection", b"connection", b"Content-Type", b"content-TYPE", b"X-A", b"Date",
         b"Content-Lengt", b"Content-Lengthx", b"Connectio", b"Content-Typ", b"!#$%&'*+.^_`|~"]
VALUE_BYTES = st.sampled_from([b"a", b"Z", b" ", b"\t", b"close", b"chunked", b",", b"12",
                               b"\xc3\xa9", b"\xc2\xa0", b"\xe2\x82", b"\xff", b"\x80",
                               b"\x00", b"\x7f", b"\x0b", b"\r", b"\n", b"\x1f", b":", b"~"])


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0",
                                    b"http/1.1", b"HTTP/1.1 "]))
    status = draw(st.sampled_from([b"200", b"100", b"199", b"204", b"304", b"500", b"599",
                                   b"600", b"099", b"20", b"2000", b"2x0"]))
    reason = draw(st.sampled_from([b"", b" ", b" OK", b" Not\tFound", b" \xc3\xa9t\xe9",
                                   b" a:b", b"\tOK", b" \x00", b" \x7f"]))
    lines = [version + b" " + status + reason]
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.sampled_from([*NAMES, b"", b"X A", b" X", b"X\xe9", b"X-A "]))
        value = b"".join(draw(st.lists(VALUE_BYTES, max_size=8)))
        sep = draw(st.sampled_from([b":", b":", b": ", b":\t", b""]))
        lines.append(name + sep + value)
    end = draw(st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b"\n\n", b"\x00\n",
                                b"\r\r\n"]))
    return b"".join(line + end for line in lines)


@settings(max_examples=2000, deadline=None)
@given(heads())
@example(b"HTTP/1.1 200 OK\r\nContent-Length:  12 \r\nConnection: close\r\n")
@example(b"HTTP/1.1 200\r\n")
@example(b"HTTP/1.0 204 \xc3\xa9\xff\r\nX: \t\xc2\xa0a\xe2\x82 \t\r\n")
# A field line must end in CR LF exactly: not in another byte before the LF.
@example(b"HTTP/1.1 200 OK\r\nX: a\n\nY: b\r\n")
@example(b"HTTP/1.1 200 OK\r\nX: a\x00\nY: b\r\n")
@example(b"HTTP/1.1 200 OK\n\nY: b\r\n")
def test_a_head_is_read_alike(block: bytes) -> None:
    assert native is not None
    assert native.response_head(block) == _http.read_head_reference(block)


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_after_a_status_line_are_read_alike(tail: bytes) -> None:
    assert native is not None
    for block in (b"HTTP/1.1 200 OK\r\n" + tail, tail, tail + b"\r\n"):
        assert native.response_head(block) == _http.read_head_reference(block)


def test_the_longest_line_counts_characters_not_bytes() -> None:
    """MAX_LINE is in characters, as the reference decodes: two-byte letters
    count once, an undecodable byte once."""
    assert native is not None
    for block in (b"HTTP/1.1 200 " + b"\xc3\xa9" * 50 + b"\r\nX: a\r\n",
                  b"HTTP/1.1 200 OK\r\nX: " + b"\xc3\xa9" * 50 + b"\xff\r\n",
                  b"HTTP/1.1 200 OK\r\nX-Long: " + b"v" * 9000 + b"\r\n"):
        read = native.response_head(block)
        assert read is not None and read == _http.read_head_reference(block)
    assert native.response_head(b"HTTP/1.1 200 OK\r\nX: " + b"\xc3\xa9" * 50 + b"\r\n")[7] == 53


def test_the_head_reader_takes_bytes_only() -> None:
    assert native is not None
    with pytest.raises(TypeError):
        native.response_head(bytearray(b"HTTP/1.1 200 OK\r\n"))  # type: ignore[arg-type]


# --- the request writer ---------------------------------------------------------------

ASCII_VALUE = st.text(st.sampled_from(list("aZ09 -_:/;,=\t\x00\r\n\x7f\x0b~\"")), max_size=12)
ANY_VALUE = st.one_of(ASCII_VALUE, st.text(max_size=6))
FIELD_NAMES = st.sampled_from(["X-A", "x-a", "X-B", "Accept", "accept", "Content-Length",
                               "content-length", "Host", "HOST", "Transfer-Encoding",
                               "Connection", "Expect", "Upgrade", "upgradE", "X A", "", "X:",
                               "X\x00A", "X\x00B", "\u212aeep", "keep", "X-\u00e9",
                               "!#$%&'*+.^_`|~"])


@settings(max_examples=2000, deadline=None)
@given(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "get", "G T", "",
                        "A" * 20, "A" * 21, "G\u00c9T", "POST "]),
       st.one_of(st.sampled_from(["/", "/a?b=1", "/a b", "a", "", "/\x7f", "/\u00e9", "/a\r\n"]),
                 st.text(st.characters(min_codepoint=0x1f, max_codepoint=0x80), max_size=10)
                 .map(lambda t: "/" + t)),
       st.sampled_from(["h", "up.example:8443", "h\r\nX: 1", "h\t", "h\x7f", "h\u00e9", ""]),
       st.dictionaries(FIELD_NAMES, ANY_VALUE, max_size=5),
       st.sampled_from([None, b"", b"{}", b"x" * 300]))
def test_a_request_is_written_alike(method: str, target: str, host: str,
                                    headers: dict[str, str], body: bytes | None) -> None:
    assert native is not None
    expected: bytes | type[ValueError]
    try:
        expected = _http.serialize_request_reference(method, target, host, headers, body)
    except ValueError:
        expected = ValueError
    try:
        written = native.request_head(method, target, host, headers, body)
    except ValueError:
        assert expected is ValueError
        return
    if written is None:
        # The C declines only what is not plain ASCII.
        assert not all(s.isascii() for s in (method, target, host, *headers, *headers.values()))
    else:
        assert written == expected
    # The gateway's writer gives the reference's answer either way.
    if expected is ValueError:
        with pytest.raises(ValueError):
            _http.serialize_request(method, target, host, headers, body)
    else:
        assert _http.serialize_request(method, target, host, headers, body) == expected


@pytest.mark.parametrize("bad", ["\x00", "\x01", "\x08", "\n", "\r", "\x1f", "\x7f", "\t"])
def test_a_control_byte_in_a_value_is_refused_wherever_it_stands(bad: str) -> None:
    """The writer looks at a value eight bytes at a time: a control byte (or
    DEL) in any place of a word or of the tail is refused as the reference
    refuses it; a tab, flagged by the same test, is let through."""
    for at in range(19):
        _refused_alike("v" * at + bad + "w" * (18 - at), refused=bad != "\t")


def _refused_alike(value: str, *, refused: bool) -> None:
    assert native is not None
    expected: bytes | type[ValueError]
    try:
        expected = _http.serialize_request_reference("GET", "/", "h", {"X-A": value}, None)
    except ValueError:
        expected = ValueError
    assert (expected is ValueError) is refused
    if expected is ValueError:
        with pytest.raises(ValueError):
            native.request_head("GET", "/", "h", {"X-A": value}, None)
        with pytest.raises(ValueError):
            native.request_head("GET", "/", value, {}, None)
    else:
        assert native.request_head("GET", "/", "h", {"X-A": value}, None) == expected


def test_a_request_field_given_twice_keeps_its_first_place_and_last_value() -> None:
    assert native is not None
    headers = {"X-A": "1", "B": "2", "x-a": "3"}
    written = native.request_head("GET", "/", "h", headers, None)
    assert written == b"GET / HTTP/1.1\r\nHost: h\r\nx-a: 3\r\nB: 2\r\n\r\n"
    assert written == _http.serialize_request_reference("GET", "/", "h", headers, None)


def test_the_request_writer_declines_what_is_not_plain_ascii() -> None:
    assert native is not None
    assert native.request_head("GET", "/", "h", {"X-A": "a\udce9"}, None) is None
    assert native.request_head("GET", "/", "h", {"\u212aeep": "1", "keep": "2"}, None) is None
    assert native.request_head("GET", "/", "h", {}, bytearray(b"x")) is None  # type: ignore[arg-type]
    # Not a dict: the reference reads any mapping.
    assert native.request_head("GET", "/", "h", _Mapping({"X-A": "1"}), None) is None
    with pytest.raises(TypeError):
        native.request_head("GET", "/", "h", {})  # type: ignore[call-arg]


class _Mapping(dict[str, str]):
    """A dict subclass: the C takes exact dicts only."""


def test_a_field_may_hold_many_headers_the_c_declines_past_its_table() -> None:
    assert native is not None
    many = {f"X-{i}": str(i) for i in range(257)}
    assert native.request_head("GET", "/", "h", many, None) is None
    assert _http.serialize_request("GET", "/", "h", many, None) == (
        _http.serialize_request_reference("GET", "/", "h", many, None))
    some = {f"X-{i}": str(i) for i in range(256)}
    assert native.request_head("GET", "/", "h", some, None) == (
        _http.serialize_request_reference("GET", "/", "h", some, None))


# --- the answer head --------------------------------------------------------------------

@pytest.fixture(autouse=True)
def fixed_date(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(_lean_wire, "http_date", lambda: DATE)
    yield


def _answer(status: int, reason: str | None, fields: list[tuple[str, str]],
            body: bytes) -> Answer:
    """An answer with exactly these fields (in this order, repeated names
    kept), this reason (its status's phrase for None) and body."""
    response = Answer(status, body, reason=reason)
    for name, value in fields:
        response.headers.add(name, value)
    return response


def _both(request: Any, response: Answer, keep_alive: bool) -> tuple[Any, Any]:
    outcomes = []
    for write in (_lean_wire.serialize, _lean_wire.serialize_reference):
        try:
            outcomes.append(write(request, response, keep_alive))
        except ValueError:
            outcomes.append(ValueError)
    return outcomes[0], outcomes[1]


ANSWER_FIELDS = st.sampled_from(["Content-Type", "content-type", "Content-Length",
                                 "CONTENT-LENGTH", "Transfer-Encoding", "Date", "date",
                                 "Connection", "connection", "X-Request-Id", "Server",
                                 "X-\u00e9", "X\r\nY"])
ANSWER_VALUES = st.one_of(
    st.sampled_from(["0", "3", "12", "000", "123456789012345678", "1234567890123456789", " 3",
                     "3 ", "-1", "+3", "1_0", "", "close", "keep-alive", "a/b", "a\r\nX: 1",
                     "a\rb", "a\nb", "\u0663", "caf\u00e9", "a\x00b"]),
    st.text(st.sampled_from(list("ab09 \t\r\n")), max_size=6))


@settings(max_examples=2000, deadline=None)
@given(st.sampled_from([200, 201, 204, 206, 304, 100, 101, 199, 400, 404, 503]),
       st.sampled_from([None, "OK", "Not Found", "", "a\r\nX: 1", "caf\u00e9", "a\nb"]),
       st.lists(st.tuples(ANSWER_FIELDS, ANSWER_VALUES), max_size=5),
       st.sampled_from([b"", b"abc", b"x" * 40]),
       st.sampled_from(["GET", "HEAD", "POST", "CONNECT", "OPTIONS"]),
       st.sampled_from([(1, 1), (1, 0)]),
       st.booleans())
def test_an_answer_is_written_alike(status: int, reason: str | None,
                                    fields: list[tuple[str, str]], body: bytes,
                                    method: str, version: tuple[int, int],
                                    keep_alive: bool) -> None:
    request = SimpleNamespace(method=method, version=version)
    response = _answer(status, reason, fields, body)
    written, expected = _both(request, response, keep_alive)
    assert written == expected


@pytest.mark.parametrize("status,method,fields,body,expected_body", [
    # Content-Length 0 over a body: nothing of the body is sent.
    (200, "GET", [("Content-Length", "0")], b"abc", b""),
    (200, "GET", [("Content-Length", "2")], b"abc", b"ab"),
    (200, "GET", [("Content-Length", "5")], b"abc", b"abc"),
    (200, "HEAD", [], b"abc", b""),
    (204, "GET", [], b"abc", b""),
    (304, "GET", [("Content-Length", "3")], b"abc", b""),
    (101, "GET", [], b"abc", b""),
])
def test_the_body_sent_is_the_references(status: int, method: str,
                                         fields: list[tuple[str, str]], body: bytes,
                                         expected_body: bytes) -> None:
    request = SimpleNamespace(method=method, version=(1, 1))
    response = _answer(status, None, fields, body)
    written, expected = _both(request, response, True)
    assert written == expected
    assert written[1] == expected_body


def test_the_answer_head_is_written_in_c(monkeypatch: pytest.MonkeyPatch) -> None:
    assert native is not None
    calls: list[tuple[Any, ...]] = []

    def answer_head(*args: Any) -> Any:
        calls.append(args)
        return native.answer_head(*args)  # type: ignore[union-attr]

    monkeypatch.setattr(_lean_wire, "_native", SimpleNamespace(answer_head=answer_head))
    request = SimpleNamespace(method="GET", version=(1, 1))
    head, body = _lean_wire.serialize(request, _answer(200, None, [("X-A", "1")], b"ab"), False)
    assert head == (b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 2\r\n"
                    b"Content-Type: application/octet-stream\r\nDate: " + DATE.encode() +
                    b"\r\nConnection: close\r\n\r\n")
    assert body == b"ab"
    assert len(calls) == 1


@pytest.mark.parametrize("fields,reason", [
    ([("X-A", "a\r\nX-Evil: 1")], "OK"),  # a whole CR LF inside a value
    ([("X-A", "a\rb")], "OK"), ([("X-A", "a\nb")], "OK"),
    ([("X\r\nY", "1")], "OK"), ([], "OK\r\nX-Evil: 1"),
])
def test_an_answer_that_would_split_is_refused_by_both(fields: list[tuple[str, str]],
                                                       reason: str) -> None:
    request = SimpleNamespace(method="GET", version=(1, 1))
    response = _answer(200, reason, fields, b"")
    assert _both(request, response, True) == (ValueError, ValueError)


def test_the_answer_writer_declines_what_is_not_plain_ascii() -> None:
    assert native is not None
    args: list[Any] = [1, 1, 200, "OK", [("X-A", "1")], "GET", 0, True, DATE]
    assert native.answer_head(*args) is not None
    for at, value in ((3, "caf\u00e9"), (4, [("X-A", "caf\u00e9")]), (4, [("X-A",)]),
                      (4, (("X-A", "1"),)), (4, [["X-A", "1"]]), (4, [("X-\u00e9", "1")]),
                      (4, [("Content-Length", " 1")]), (4, [("Content-Length", "")]),
                      (4, [("Content-Length", "1" * 19)]), (4, [("X", "1")] * 129),
                      (5, "G\u00c9T"), (8, "caf\u00e9")):
        changed = list(args)
        changed[at] = value
        assert native.answer_head(*changed) is None, (at, value)
    with pytest.raises(TypeError):
        native.answer_head(*args[:8])


# --- a JSON text's facts ----------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(10**25), 10**25),
              st.floats(allow_nan=False, allow_infinity=False),
              st.text(st.sampled_from(list('ab:"\\/\u00e9\n{}[]0123456789u')), max_size=8)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(st.sampled_from(list('ab:"\\{}[1')), max_size=3), inner,
                        max_size=4)),
    max_leaves=20)


@st.composite
def json_texts(draw: st.DrawFn) -> bytes:
    value = draw(JSON_VALUES)
    text = json.dumps(value, ensure_ascii=draw(st.booleans()),
                      indent=draw(st.sampled_from([None, 1])))
    if draw(st.booleans()):  # a duplicate member, a stray byte, a cut
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.sampled_from(['"a": 1, "a": 2', '\\', '"', '[', '}',
                                                  ':', '-1234567890123456789', '\\u0061'])) \
            + text[cut:]
    return text.encode("utf-8", "surrogatepass")


@settings(max_examples=2000, deadline=None)
@given(json_texts())
@example(b'{"a": "\\\\u"}')
@example(b'"\\\\:1234567890123456789"')
@example(b'[1234567890123456789]')
@example(b'1234567890123456789')
@example(b'"a\\"[[[["')
# A quote left unpaired: which one depends on the adjacent pairs dropped first.
@example(b'"[]')
@example(b'"[{"[": null}]')
@example(b'"{"": null}')
@example(b'"""[')
@example(b'""""[')
# The member count's strings: an escaped quote inside, a backslash last, a
# backslash outside any string (no escape there), a string left open.
@example(b'{"a\\":b": 1}')
@example(b'{"a": "b\\')
@example(b'\\":1, "x": 2')
@example(b'{"a": 1, "b:')
def test_a_json_texts_facts_are_read_alike(data: bytes) -> None:
    assert native is not None
    assert native.json_facts(data) == jsonlimits.json_facts_reference(data)


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=64))
@example(b"\xff\xfe[]")
@example(b"\xfe\xff[]")
@example(b"\x00[")
@example(b"[\x00]]")
@example(b"\x00[]")
@example(b"\xef\xbb\xbf[[]]")
@example(b"\\")
def test_any_bytes_facts_are_read_alike(data: bytes) -> None:
    assert native is not None
    assert native.json_facts(data) == jsonlimits.json_facts_reference(data)


# The texts without a backslash take a path of their own in the C (strings
# found by memchr, digit runs by stride): these are built of what that path
# reads, quotes left unpaired and runs of digits of every length near the
# limit (19) at every offset.
_PLAIN_PIECES = st.sampled_from(['"', '"', "[", "]", "{", "}", ":", ",", " ", "-", "a", "\n",
                                 "0", "7", '""', '": ', "null"])


@st.composite
def plain_texts(draw: st.DrawFn) -> bytes:
    pieces = draw(st.lists(st.one_of(
        _PLAIN_PIECES, st.integers(15, 42).map(lambda k: "1" * k)), max_size=60))
    return "".join(pieces).encode()


@settings(max_examples=3000, deadline=None)
@given(plain_texts())
@example(b'"{"": null}')  # the quote left unpaired is the first, not the last
@example(b'[' + b'1' * 19 + b']')
@example(b'[' + b'1' * 18 + b']')
@example(b'a' + b'1' * 40)  # a long run after a byte no number follows
@example(b'"' + b'1' * 19 + b'"')  # inside a string, at the 19th byte
@example(b'{"a": 1, "b:')  # no colon after a quote left unpaired counts
def test_a_text_without_a_backslash_has_the_references_facts(data: bytes) -> None:
    assert native is not None and b"\\" not in data
    assert native.json_facts(data) == jsonlimits.json_facts_reference(data)


@pytest.mark.parametrize("before", [b"", b"[", b":", b",", b"-", b" ", b"a", b'"'])
def test_a_run_of_digits_is_found_at_any_offset(before: bytes) -> None:
    """The stride of the digit check (one byte in 19, each digit there widened
    to its run) finds a run of 19 or more wherever it starts and ends."""
    assert native is not None
    for offset in range(41):
        for length in (18, 19, 20, 37, 38, 39):
            data = b"x" * offset + before + b"5" * length + b"]" * (offset % 3)
            if offset == 0 and before == b"":
                assert native.json_facts(data)[2] is (length >= 19), data
            assert native.json_facts(data) == jsonlimits.json_facts_reference(data), data


def test_a_run_right_after_a_short_one_is_found() -> None:
    """A digit at a stride's byte is widened to its run; the next run may
    start one byte past its end and hold exactly 19 digits."""
    assert native is not None
    for offset in range(41):
        data = b"x" * offset + b"12," + b"5" * 19
        assert native.json_facts(data) == jsonlimits.json_facts_reference(data) == (
            0, 0, True), data


@settings(max_examples=1500, deadline=None)
@given(JSON_VALUES)
@example({"a": [1, {"b": {}, "c": [{"d": None}]}], "e": "f"})
def test_a_parsed_values_members_are_counted_alike(value: Any) -> None:
    assert native is not None
    assert native.json_members(value) == jsonlimits.json_members_reference(value)


@pytest.mark.parametrize(("value", "members"), [
    ({}, 0), ([], 0), ("a:b", 0), (3, 0),
    ({"a": 1, "b": {"c": 2, "d": [{"e": 3}, {}]}}, 5),
    ([{"a": 1}, [{"b": 2, "c": 3}]], 3),
    # Only what a JSON parser makes is looked into: not a tuple, nor a subclass.
    (({"a": 1},), 0),
    ([CIMultiDict(a="1")], 0),
])
def test_members_are_the_entries_of_every_object(value: Any, members: int) -> None:
    assert native is not None
    assert native.json_members(value) == jsonlimits.json_members_reference(value) == members


def test_members_past_the_recursion_limit_raise_not_crash() -> None:
    assert native is not None
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(RecursionError):
        native.json_members(deep)
    assert jsonlimits.json_members_reference(deep) == 0


def _outcome(parse: Any, data: bytes, max_depth: int) -> Any:
    try:
        return ("ok", parse(data, max_depth))
    except ValueError as exc:  # TooDeep, DuplicateKey, JSONDecodeError, UnicodeDecodeError
        return (type(exc).__name__, str(exc))


def _reference_loads(data: bytes, max_depth: int) -> Any:
    jsonlimits.check_depth(data, max_depth)
    return jsonlimits.loads_unique(data)


@settings(max_examples=2000, deadline=None)
@given(json_texts(), st.integers(0, 4))
def test_a_json_text_is_parsed_alike(data: bytes, max_depth: int) -> None:
    assert _outcome(jsonlimits.loads_limited, data, max_depth) == _outcome(
        _reference_loads, data, max_depth)


@pytest.mark.parametrize("data,max_depth,expected", [
    (b"[[1]]", 2, ("ok", [[1]])),  # at the limit: kept
    (b"[[1]]", 1, ("TooDeep", "JSON nested deeper than 1")),
    (b'{"a": 1, "a": 2}', 64, ("DuplicateKey", "duplicate key 'a'")),
    (b'{"a": 1, "\\u0061": 2}', 64, ("DuplicateKey", "duplicate key 'a'")),
    # orjson reads an integer past 64 bits otherwise: the exact parse has it.
    (b"[12345678901234567890123]", 64, ("ok", [12345678901234567890123])),
    (b'{"a": "x:y"}', 64, ("ok", {"a": "x:y"})),
    (b'{"a": {"b": 1, "b": 2}}', 64, ("DuplicateKey", "duplicate key 'b'")),
    (b'[{"a": 1}, {"a": 1, "c": 2, "a": 3}]', 64, ("DuplicateKey", "duplicate key 'a'")),
    # A colon and a quote escaped inside a name: one member each.
    (b'{"a\\":b": 1, "c": "d:\\"e"}', 64, ("ok", {'a":b': 1, "c": 'd:"e'})),
])
def test_the_c_path_keeps_every_rule(data: bytes, max_depth: int, expected: Any) -> None:
    assert native is not None and native.json_facts(data) is not None  # the C path is taken
    assert _outcome(jsonlimits.loads_limited, data, max_depth) == expected


def test_the_parse_after_the_facts_is_orjsons_where_the_count_proves_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The exact parse is the fallback, not the rule: a plain text is parsed
    once, by orjson."""
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the standard library parsed a text orjson had proven")

    monkeypatch.setattr(jsonlimits.json, "loads", refuse)
    assert jsonlimits.loads_limited(b'{"a": [1, 2, {"b": "c"}], "d": null}') == {
        "a": [1, 2, {"b": "c"}], "d": None}


def test_the_facts_take_bytes_only() -> None:
    assert native is not None
    with pytest.raises(TypeError):
        native.json_facts("[]")  # type: ignore[arg-type]
    # Text that is not bytes takes the reference.
    assert jsonlimits.loads_limited(bytearray(b"[1]")) == [1]
    assert jsonlimits.loads_limited("[1]") == [1]
