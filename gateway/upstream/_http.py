"""The HTTP/1.1 wire format of the gateway's calls to the shared systems:
one write per request and a strict response parser (the keep-alive
connection that carries them is gateway/upstream/_connection.py). In the benchmark aiohttp's
``ClientSession`` was a third of the gateway's CPU; per the edge limits, an
upstream's answer is untrusted input too.

:class:`ResponseReader` is sans-IO (bytes in, one response out, no sockets,
no clock); ``Connection`` in gateway/upstream/_connection.py is the asyncio
protocol around it (the pool of connections is ``ConnectionPool`` in
gateway/upstream/_pool.py). Errors, all
internal: gateway/upstream/_pool.py translates them into ``UpstreamFailed``::

    ClientError
    ├── NoResponse           nothing came back: connect failed, or the
    │                        connection closed before the first byte (retryable)
    ├── ResponseBroken       closed or reset in the middle of a response
    └── MalformedResponse    not a valid HTTP/1.1 response, or over a limit
        └── ResponseTooLarge the body is over the upstream's cap

Timeouts raise the built-in ``TimeoutError``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from gateway.core.native import native as _native
from gateway.errors import GatewayError

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})

# Limits on an upstream's response head: the edge's own request limits.
MAX_LINE = 8 * 1024  # status line, one header or trailer field, one chunk-size line
MAX_HEAD = 64 * 1024  # the whole header block; the trailer section as well
MAX_FIELDS = 100  # header fields; trailer fields as well
MAX_INTERIM = 8  # 1xx answers before the final one

_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_VALUE = rb"[^\x00-\x08\x0a-\x1f\x7f]*"  # SECURITY: no NUL, no bare CR or LF, no CTL
# RFC 9112 §4 and §5: one pass over the head. A line that starts with white
# space (obs-fold) or has white space before the colon is not a field.
_HEAD = re.compile(rb"HTTP/1\.([01]) ([1-5][0-9][0-9])(?: [\t\x20-\x7e\x80-\xff]*)?\r\n"
                   rb"(?:" + _TOKEN + rb":" + _VALUE + rb"\r\n)*")
_FIELD = re.compile(_TOKEN + rb":" + _VALUE)
# RFC 9112 §7.1: hex digits only (int(x, 16) would take "0x", "+", "_", spaces).
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;" + _VALUE + rb")?")
_BARE_LF = re.compile(rb"(?<!\r)\n")
_DIGITS = re.compile(r"[0-9]{1,18}")
# What this client writes: method, origin-form target, fields it may pass on.
_REQUEST_LINE = re.compile(r"[A-Z]{1,20} /[\x21-\x7e]*")
# Fields the client writes itself: one from the caller would contradict its framing.
_FRAMING = frozenset({"host", "content-length", "transfer-encoding", "connection", "expect",
                      "upgrade"})
_FIELD_NAMES = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+(?:\n[!#$%&'*+.^_`|~0-9A-Za-z-]+)*")
# The bytes a request head may hold besides its line ends (RFC 9110 §5.5: HTAB,
# SP, VCHAR, obs-text): deleting them from the head must leave only CR LF pairs.
_HEAD_BYTES = bytes([0x09, *range(0x20, 0x7F), *range(0x80, 0x100)])
_NO_BODY_STATUS = frozenset({204, 304})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

_HEAD_STATE, _LENGTH, _CHUNK_LINE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _UNTIL_EOF, _DONE = range(8)


class ClientError(GatewayError):
    """Base of the client's own errors; they never leave gateway.upstream, whose
    pool translates them into :class:`~gateway.errors.UpstreamFailed`."""


class NoResponse(ClientError):
    """Not a byte of an answer: safe to retry an idempotent request."""


class ResponseBroken(ClientError):
    """The connection ended in the middle of a response."""


class MalformedResponse(ClientError):
    """The upstream's bytes are not a valid HTTP/1.1 response."""


class ResponseTooLarge(MalformedResponse):
    """The response body is over the cap."""


HeadRead = tuple[bool, int, list[tuple[str, str]], list[str], list[str], list[str],
                 str | None, int]


def read_head_reference(block: bytes) -> HeadRead | None:
    """A response head (up to the CRLF of its last line) read, or None where
    it is not one (RFC 9112 §4 and §5, the grammar of ``_HEAD``): HTTP/1.0 or
    not, the status, the fields as (name, value) with the value stripped of
    SP and HTAB, the values of Content-Length, Transfer-Encoding and
    Connection, the first Content-Type, and the longest line's length in
    characters (the status line's included). The specification of
    ``response_head`` in gateway/core/_native_wire.c."""
    match = _HEAD.fullmatch(block)
    if match is None:
        return None
    lines = block.decode("utf-8", "surrogateescape").split("\r\n")
    lines.pop()  # the empty string after the last CRLF
    headers: list[tuple[str, str]] = []
    lengths: list[str] = []
    codings: list[str] = []
    connections: list[str] = []
    content_type: str | None = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        value = value.strip(" \t")
        headers.append((name, value))
        lname = name.lower()
        if lname == "content-length":
            lengths.append(value)
        elif lname == "transfer-encoding":
            codings.append(value)
        elif lname == "connection":
            connections.append(value)
        elif lname == "content-type" and content_type is None:
            content_type = value
    return (match[1] == b"0", int(match[2]), headers, lengths, codings, connections,
            content_type, max(len(line) for line in lines))


_read_head: Callable[[bytes], HeadRead | None] = (
    read_head_reference if _native is None else _native.response_head)


def _says_close(connections: list[str]) -> bool:
    """Whether a Connection field's options hold ``close`` (RFC 9112 §9.6),
    in any case, among any others. Options without the letters of "close"
    anywhere (most: none, or "keep-alive") need no split."""
    if not connections or "close" not in ",".join(connections).lower():
        return False
    return any("close" in (t.strip().lower() for t in value.split(",")) for value in connections)


class ResponseReader:
    """Parses exactly one response from bytes fed in any fragmentation."""

    __slots__ = ("_body", "_buf", "_interim", "_max_body", "_no_body", "_remaining", "_state",
                 "_trailer_count", "_trailer_size", "content_type", "headers", "keep_alive",
                 "started", "status")

    def __init__(self, *, head_request: bool, max_body: int) -> None:
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.content_type: str | None = None  # the first Content-Type, as sent
        self.keep_alive = True
        self.started = False  # a byte of the answer has arrived
        self._no_body = head_request
        self._max_body = max_body
        self._buf = bytearray()
        self._state = _HEAD_STATE
        self._remaining = 0
        self._body = bytearray()
        self._interim = 0
        self._trailer_size = 0
        self._trailer_count = 0

    @property
    def done(self) -> bool:
        return self._state == _DONE

    @property
    def body(self) -> bytes:
        return bytes(self._body)

    def _take_body(self, buf: bytearray, then: int) -> bool:
        """Move up to ``_remaining`` body bytes out of ``buf``; True (and on to
        state ``then``) once all of them are there."""
        take = min(self._remaining, len(buf))
        self._body += buf[:take]
        del buf[:take]
        self._remaining -= take
        if self._remaining:
            return False
        self._state = then
        return True

    def feed(self, data: bytes) -> bool:
        """Take more bytes; True once the response is complete."""
        self.started = True
        buf = self._buf
        buf += data
        while True:
            state = self._state
            if state == _HEAD_STATE:
                if not self._parse_head():
                    return False
            elif state == _LENGTH:
                if not self._take_body(buf, _DONE):
                    return False
            elif state == _CHUNK_LINE:
                if not self._chunk_line():
                    return False
            elif state == _CHUNK_DATA:
                if not self._take_body(buf, _CHUNK_END):
                    return False
            elif state == _CHUNK_END:
                if len(buf) < 2:
                    if buf and buf[0] != 0x0D:
                        raise MalformedResponse("chunk not followed by CRLF")
                    return False
                if buf[:2] != b"\r\n":
                    raise MalformedResponse("chunk not followed by CRLF")
                del buf[:2]
                self._state = _CHUNK_LINE
            elif state == _TRAILER:
                if not self._trailer_line():
                    return False
            elif state == _UNTIL_EOF:
                self._add_body(buf)
                buf.clear()
                return False
            else:  # _DONE
                if buf:
                    # SECURITY: bytes after the response were not asked for (a
                    # second, forged answer?): this connection is not reused.
                    self.keep_alive = False
                    buf.clear()
                return True

    def feed_eof(self) -> bool:
        """The connection ended: True if that completed the response."""
        if self._state == _UNTIL_EOF:
            self._state = _DONE
            return True
        if self._state == _DONE:
            return True
        if not self.started:
            raise NoResponse("connection closed before any answer")
        raise ResponseBroken("connection closed in the middle of the response")

    def _add_body(self, data: bytes | bytearray) -> None:
        if len(self._body) + len(data) > self._max_body:
            raise ResponseTooLarge("response body over the cap")
        self._body += data

    def _parse_head(self) -> bool:
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD:
                raise MalformedResponse("response head over the limit")
            if _BARE_LF.search(buf):
                raise MalformedResponse("bare LF in the response head")
            return False
        if end > MAX_HEAD:
            raise MalformedResponse("response head over the limit")
        read = _read_head(bytes(buf[:end + 2]))
        if read is None:
            raise MalformedResponse("malformed response head")
        del buf[:end + 4]
        http10, status, headers, lengths, codings, connections, content_type, longest = read
        if 100 <= status < 200:
            self._interim += 1
            if status == 101 or self._interim > MAX_INTERIM:
                raise MalformedResponse("unexpected 1xx answer")
            return True  # RFC 9110 §15.2: an interim answer; the final one follows
        if len(headers) > MAX_FIELDS:
            raise MalformedResponse("too many header fields")
        if longest > MAX_LINE:
            raise MalformedResponse("response header line over the limit")
        self.status = status
        self.headers = headers
        self.content_type = content_type
        # HTTP/1.0: one answer per connection; so is one that says "close".
        self.keep_alive = not http10 and not _says_close(connections)
        self._frame(status, lengths, codings, http10)
        return True

    def _frame(self, status: int, lengths: list[str], codings: list[str], http10: bool) -> None:
        """RFC 9112 §6.3, strictly: ambiguous framing is refused, not guessed."""
        if codings:
            # SECURITY: CL+TE together, TE on HTTP/1.0 and any coding but a lone
            # "chunked" are the classic response-splitting ambiguities.
            if lengths or http10:
                raise MalformedResponse("Transfer-Encoding with Content-Length or HTTP/1.0")
            if [c.strip().lower() for c in ",".join(codings).split(",")] != ["chunked"]:
                raise MalformedResponse("unsupported Transfer-Encoding")
        length = -1
        if lengths:
            if len(lengths) > 1 or not _DIGITS.fullmatch(lengths[0]):
                raise MalformedResponse("duplicate or invalid Content-Length")
            length = int(lengths[0])
        if self._no_body or status in _NO_BODY_STATUS:
            if codings and not self._no_body:
                self.keep_alive = False  # a 204/304 that claims a body: it may follow
            self._state = _DONE
        elif codings:
            self._state = _CHUNK_LINE
        elif length >= 0:
            if length > self._max_body:
                raise ResponseTooLarge("Content-Length over the cap")
            self._remaining = length
            self._state = _LENGTH if length else _DONE
        else:
            self.keep_alive = False  # RFC 9112 §6.3 item 8: delimited by the close
            self._state = _UNTIL_EOF

    def _chunk_line(self) -> bool:
        buf = self._buf
        end = buf.find(b"\r\n")
        if end < 0:
            if len(buf) > MAX_LINE:
                raise MalformedResponse("chunk-size line over the limit")
            return False
        match = _CHUNK_SIZE.fullmatch(buf, 0, end)
        if match is None:
            raise MalformedResponse("malformed chunk-size line")
        size = int(match[1], 16)
        del buf[:end + 2]
        if size == 0:
            self._state = _TRAILER
        else:
            if len(self._body) + size > self._max_body:
                raise ResponseTooLarge("chunked body over the cap")
            self._remaining = size
            self._state = _CHUNK_DATA
        return True

    def _trailer_line(self) -> bool:
        """Trailer fields are checked like header fields, then dropped."""
        buf = self._buf
        end = buf.find(b"\r\n")
        if end < 0:
            if len(buf) > MAX_LINE:
                raise MalformedResponse("trailer line over the limit")
            return False
        if end == 0:
            del buf[:2]
            self._state = _DONE
            return True
        self._trailer_count += 1
        self._trailer_size += end + 2
        if (end > MAX_LINE or self._trailer_count > MAX_FIELDS
                or self._trailer_size > MAX_HEAD or not _FIELD.fullmatch(buf, 0, end)):
            raise MalformedResponse("malformed or oversized trailer")
        del buf[:end + 2]
        return True


def serialize_request(method: str, target: str, host: str, headers: Mapping[str, str],
                      body: bytes | None) -> bytes:
    """One request head (and body) as bytes. Host and Content-Length are the
    client's; nothing else is added (no User-Agent, no Accept-Encoding).
    Written in C where gateway.core._native was built, for plain ASCII
    input; the reference below is the specification, and writes the rest."""
    if _native is not None:
        data: bytes | None = _native.request_head(method, target, host, headers, body)
        if data is not None:
            return data
    return serialize_request_reference(method, target, host, headers, body)


def serialize_request_reference(method: str, target: str, host: str,
                                headers: Mapping[str, str], body: bytes | None) -> bytes:
    """``serialize_request`` in Python: the specification of ``request_head``
    in gateway/core/_native_wire.c."""
    start = f"{method} {target}"
    # Field names are case-insensitive: a name given twice is sent once, the
    # last value winning (what aiohttp did with the same mapping).
    unique = {name.lower(): (name, value) for name, value in headers.items()}
    # SECURITY: a framing field from the caller would contradict the client's
    # own, and a name that is not a token (checked as written, not lowered:
    # some non-ASCII letters lower to ASCII ones) could end the line early.
    if (not _REQUEST_LINE.fullmatch(start) or not _FRAMING.isdisjoint(unique)
            or (unique and not _FIELD_NAMES.fullmatch("\n".join([n for n, _ in unique.values()])))):
        raise ValueError("request target or header field refused")
    fields = "".join([f"{name}: {value}\r\n" for name, value in unique.values()])
    if body is not None:
        length = f"Content-Length: {len(body)}\r\n"
    else:
        length = "Content-Length: 0\r\n" if method in _BODY_METHODS else ""
    head = f"{start} HTTP/1.1\r\nHost: {host}\r\n{fields}{length}\r\n"
    data = head.encode("utf-8", "surrogateescape")
    # SECURITY: a CR, LF, NUL or other control byte in the target, the host or a
    # field value would split the request: the head holds none, and exactly the
    # CR LF pairs that end its lines (one bytes.translate, not a regex per byte).
    lines = len(unique) + (4 if length else 3)
    if data.translate(None, _HEAD_BYTES) != b"\r\n" * lines:
        raise ValueError("request target or header field refused")
    return data + body if body else data
