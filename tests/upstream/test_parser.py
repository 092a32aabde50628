"""The upstream HTTP/1.1 client's response parser and request writer
(gateway/upstream/_http.py), sans-IO: strict parsing of what a shared system
answers; the pool over real sockets is in tests/upstream/test_http.py.

Every test here runs twice: with the head read and the request written in C
(gateway/core/_native_wire.c) where it was built, and with the Python
references, so both are held to every rule (tests/core/test_native_wire.py
compares the two on generated input)."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.native import native
from gateway.upstream import _http
from gateway.upstream._http import (
    MAX_FIELDS,
    MAX_HEAD,
    MAX_LINE,
    ClientError,
    MalformedResponse,
    NoResponse,
    ResponseBroken,
    ResponseReader,
    ResponseTooLarge,
    serialize_request,
)
from gateway.upstream._pool import media_type

CAP = 1024


@pytest.fixture(scope="module", autouse=True, params=["native", "reference"])
def wire_implementation(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "native" and native is None:
        pytest.skip("gateway.core._native was not built on this machine")
    with pytest.MonkeyPatch.context() as mp:
        if request.param == "reference":
            mp.setattr(_http, "_native", None)
            mp.setattr(_http, "_read_head", _http.read_head_reference)
        yield request.param


def parse(raw: bytes, *, head: bool = False, eof: bool = False, cap: int = CAP) -> ResponseReader:
    reader = ResponseReader(head_request=head, max_body=cap)
    done = reader.feed(raw)
    if eof:
        done = reader.feed_eof()
    assert done
    return reader


def split(raw: bytes, cuts: list[int]) -> Iterator[bytes]:
    points = sorted({c % (len(raw) + 1) for c in cuts} | {0, len(raw)})
    for a, b in itertools.pairwise(points):
        yield raw[a:b]


def chunked(body: bytes, sizes: list[int]) -> bytes:
    out, pos = [], 0
    for size in sizes:
        if pos >= len(body):
            break
        part = body[pos:pos + max(size, 1)]
        out.append(b"%x;ext=1\r\n%s\r\n" % (len(part), part))
        pos += len(part)
    if pos < len(body):
        out.append(b"%X\r\n%s\r\n" % (len(body) - pos, body[pos:]))
    return b"".join(out) + b"0\r\nX-Trailer: t\r\n\r\n"


# --- the parser, sans-IO ------------------------------------------------------

def test_content_length_answer() -> None:
    r = parse(b"HTTP/1.1 200 OK\r\nContent-Type: Application/JSON; charset=utf-8\r\n"
              b"X-Classification:  internal \r\nContent-Length: 2\r\n\r\n{}")
    assert (r.status, r.body, r.keep_alive) == (200, b"{}", True)
    assert r.headers[1] == ("X-Classification", "internal")
    assert media_type(r.content_type) == "application/json"
    assert media_type(None) == media_type("nonsense") == "application/octet-stream"


@settings(max_examples=150, deadline=None)
@given(body=st.binary(max_size=300), sizes=st.lists(st.integers(1, 70), max_size=8),
       cuts=st.lists(st.integers(0, 2000), max_size=12), use_chunked=st.booleans())
def test_any_fragmentation_gives_the_same_answer(body: bytes, sizes: list[int],
                                                  cuts: list[int], use_chunked: bool) -> None:
    if use_chunked:
        raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(body, sizes)
    else:
        raw = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    reader = ResponseReader(head_request=False, max_body=CAP)
    results = [reader.feed(part) for part in split(raw, cuts)]
    assert results[-1] and not any(results[:-1])
    assert reader.body == body and reader.keep_alive


@settings(max_examples=500, deadline=None)
@given(prefix=st.sampled_from([b"", b"HTTP/1.1 200 OK\r\n",
                               b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"]),
       raw=st.binary(max_size=400), cuts=st.lists(st.integers(0, 500), max_size=4))
def test_garbage_only_ever_raises_the_clients_own_errors(prefix: bytes, raw: bytes,
                                                         cuts: list[int]) -> None:
    reader = ResponseReader(head_request=False, max_body=CAP)
    with contextlib.suppress(ClientError):
        for part in split(prefix + raw, cuts):
            reader.feed(part)
        reader.feed_eof()


def test_close_delimited_body_ends_at_eof_and_is_not_reused() -> None:
    r = parse(b"HTTP/1.1 200 OK\r\n\r\nabc", eof=True)
    assert r.body == b"abc" and not r.keep_alive


@pytest.mark.parametrize("raw,head", [
    (b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", False),
    (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", True),
])
def test_no_body_for_head_204_304(raw: bytes, head: bool) -> None:
    r = parse(raw, head=head)
    assert r.body == b"" and r.keep_alive


def test_interim_answers_are_skipped() -> None:
    r = parse(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
              b"HTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nx")
    assert (r.status, r.body, r.headers) == (201, b"x", [("Content-Length", "1")])


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive, Close\r\n\r\nx",
    b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1 200 OK\r\n",  # a second answer
])
def test_connection_not_reused(raw: bytes) -> None:
    assert not parse(raw).keep_alive


@pytest.mark.parametrize(("options", "reused"), [
    ([], True), (["keep-alive"], True), (["Keep-Alive"], True),
    (["close"], False), (["CLOSE"], False), ([" close "], False), (["upgrade,close"], False),
    (["keep-alive", "close"], False), (["close", "keep-alive"], False), (["x,  Close"], False),
    # "close" inside an option is no "close" option.
    (["closed"], True), (["enclose"], True), (["x-close-y"], True),
    (["keep-alive, closeout"], True),
])
def test_only_a_close_option_ends_the_connection(options: list[str], reused: bool) -> None:
    """RFC 9112 §9.6: the connection closes after an answer whose Connection
    field lists the ``close`` option, in any case, among any others."""
    head = "".join(f"Connection: {o}\r\n" for o in options).encode()
    r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n" + head + b"\r\nx")
    assert r.keep_alive is reused


HEAD_OK = b"HTTP/1.1 200 OK\r\n"


@pytest.mark.parametrize("raw", [
    HEAD_OK + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",  # CL.TE
    HEAD_OK + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
    HEAD_OK + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc",  # duplicate
    HEAD_OK + b"Content-Length: 3, 3\r\n\r\nabc",
    HEAD_OK + b"Content-Length: +3\r\n\r\nabc",
    HEAD_OK + b"Content-Length: -1\r\n\r\n",
    HEAD_OK + b"Content-Length: 0x3\r\n\r\nabc",
    HEAD_OK + b"Content-Length: 1 2\r\n\r\n",
    HEAD_OK + b"Transfer-Encoding: gzip, chunked\r\n\r\n",
    HEAD_OK + b"Transfer-Encoding: chunked, chunked\r\n\r\n",
    HEAD_OK + b"Transfer-Encoding: xchunked\r\n\r\n",
    HEAD_OK + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    HEAD_OK + b"X-A: 1\r\n folded\r\n\r\n",  # obs-fold
    HEAD_OK + b"X-A : 1\r\n\r\n",  # white space before the colon
    HEAD_OK + b" X-A: 1\r\n\r\n",
    HEAD_OK + b"X-A: a\x00b\r\n\r\n",  # NUL
    HEAD_OK + b"X-A: a\rb\r\n\r\n",  # bare CR
    HEAD_OK + b"X-A: a\nb\r\n\r\n",  # bare LF
    HEAD_OK + b"X-A: a\x1bb\r\n\r\n",  # other control character
    HEAD_OK + b"X[A]: 1\r\n\r\n",  # not a token
    HEAD_OK + b"NoColon\r\n\r\n",
    HEAD_OK + b": empty-name\r\n\r\n",
    b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",  # LF-only line endings
    b"HTTP/2 200 OK\r\n\r\n",
    b"HTTP/1.1 20 OK\r\n\r\n",
    b"HTTP/1.1 600 Nope\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"http/1.1 200 OK\r\n\r\n",
    b"HTTP/1.1 200 O\x00K\r\n\r\n",
    b"HTTP/1.1  200 OK\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n" * 9,
    HEAD_OK + b"X-A: " + b"x" * MAX_LINE + b"\r\n\r\n",  # one field over the limit
    HEAD_OK + b"X-A: 1\r\n" * (MAX_FIELDS + 1) + b"\r\n",  # too many fields
    HEAD_OK + (b"X-A: " + b"x" * 4000 + b"\r\n") * 17 + b"\r\n",  # block over the limit
    HEAD_OK + b"X-A: " + b"x" * (MAX_HEAD + 10),  # no end of the head in sight
])
def test_malformed_heads_are_refused(raw: bytes) -> None:
    reader = ResponseReader(head_request=False, max_body=CAP)
    with pytest.raises(MalformedResponse):
        reader.feed(raw)


CHUNKED = HEAD_OK + b"Transfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("body", [
    b"0x3\r\nabc\r\n0\r\n\r\n", b"+3\r\nabc\r\n0\r\n\r\n", b" 3\r\nabc\r\n0\r\n\r\n",
    b"3_0\r\nabc\r\n0\r\n\r\n", b"-3\r\nabc\r\n0\r\n\r\n", b"\r\nabc\r\n0\r\n\r\n",
    b"3\nabc\r\n0\r\n\r\n", b"3;a\x00b\r\nabc\r\n0\r\n\r\n",
    b"1" * 17 + b"\r\n",  # a chunk size beyond 64 bits
    b"3\r\nabcX\r\n0\r\n\r\n",  # no CRLF after the chunk data
    b"3\r\nabc\rX",
    b"0\r\nX-T: a\x00\r\n\r\n",  # a NUL in a trailer
    b"0\r\nX-T : a\r\n\r\n",
    b"0\r\n" + b"X-T: 1\r\n" * (MAX_FIELDS + 1) + b"\r\n",
    b"3;" + b"e" * MAX_LINE,  # chunk extensions without end
])
def test_malformed_chunked_bodies_are_refused(body: bytes) -> None:
    reader = ResponseReader(head_request=False, max_body=CAP)
    with pytest.raises(MalformedResponse):
        reader.feed(CHUNKED + body)


@pytest.mark.parametrize("raw", [
    HEAD_OK + b"Content-Length: 1025\r\n\r\n",
    CHUNKED + b"400\r\n" + b"x" * 1024 + b"\r\n1\r\n",
    HEAD_OK + b"\r\n" + b"x" * 1025,
])
def test_bodies_over_the_cap_are_refused_while_reading(raw: bytes) -> None:
    reader = ResponseReader(head_request=False, max_body=CAP)
    with pytest.raises(ResponseTooLarge):
        reader.feed(raw)


def test_eof_before_and_in_the_middle_of_an_answer() -> None:
    with pytest.raises(NoResponse):
        ResponseReader(head_request=False, max_body=CAP).feed_eof()
    for partial in (b"HTTP/1.1 200 OK\r\nContent-", HEAD_OK + b"Content-Length: 5\r\n\r\nab",
                    CHUNKED + b"5\r\nab", CHUNKED + b"0\r\n"):
        reader = ResponseReader(head_request=False, max_body=CAP)
        assert not reader.feed(partial)
        with pytest.raises(ResponseBroken):
            reader.feed_eof()


def test_request_bytes() -> None:
    raw = serialize_request("POST", "/t?a=1", "up.example:8443",
                            {"content-type": "text/plain", "Content-Type": "application/json",
                             "X-Request-Id": "r1"}, b"{}")
    assert raw == (b"POST /t?a=1 HTTP/1.1\r\nHost: up.example:8443\r\n"
                   b"Content-Type: application/json\r\nX-Request-Id: r1\r\n"
                   b"Content-Length: 2\r\n\r\n{}")
    assert serialize_request("GET", "/", "h", {}, None) == b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    assert b"Content-Length: 0\r\n" in serialize_request("POST", "/", "h", {}, None)
    # A tab and obs-text are field-value bytes (RFC 9110 §5.5)
    assert serialize_request("GET", "/", "h", {"X-A": "a\tb\udce9"}, None) == (
        b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\tb\xe9\r\n\r\n")


@pytest.mark.parametrize("method,target,headers", [
    ("GET", "/a b", {}), ("GET", "/a\r\nX: 1", {}), ("GET", "a", {}), ("G T", "/", {}),
    ("GET", "/", {"X-A": "1\r\nX-Evil: 1"}), ("GET", "/", {"X-A": "1\nX"}),
    ("GET", "/", {"X-A": "a\x00"}), ("GET", "/", {"X A": "1"}), ("GET", "/", {"X-A:": "1"}),
    ("GET", "/", {"Content-Length": "5"}), ("GET", "/", {"transfer-encoding": "chunked"}),
    ("GET", "/", {"Host": "other"}), ("GET", "/", {"Connection": "close"}),
    ("GET", "/", {"X-A": "1\r"}), ("GET", "/", {"X-A": "\x7f"}), ("GET", "/", {"X-A": "\x0b"}),
    ("GET", "/", {"X-A": "1", "X-B": "2\n"}), ("GET", "/", {"": "1"}),
    # Kelvin sign: lowers to an ASCII "k", but is no token as written
    ("GET", "/", {"\u212aeep": "1"}), ("GET", "/", {"X-\u00e9": "1"}),
])
def test_request_splitting_is_refused(method: str, target: str,
                                      headers: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="refused"):
        serialize_request(method, target, "h", headers, None)
