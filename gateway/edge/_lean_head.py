"""The reading side of a lean connection
(:class:`gateway.edge._lean.LeanConnection`): httptools' callbacks, which
check a request's head as llhttp reports it (what aiohttp's parser adds to
llhttp's checks; :mod:`gateway.edge._lean` lists them) and hand its body to
:class:`~gateway.edge._lean_request.Body`; flow control; and the deadlines
of a head and of an idle connection.

:class:`HeadReader` is a slotted base of the connection: it declares the
slots it reads and sets (the connection's ``__init__`` fills them; the
connection declares the rest). A callback that refuses the request raises
``_Refused`` (through httptools, which the connection's ``_feed`` catches).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.edge._lean_request import NO_BODY, Body, LeanRequest, Unparsed, _Refused
from gateway.edge._lean_wire import target_form_ok

if TYPE_CHECKING:
    from gateway.edge._listeners import DataServer

MAX_PIPELINED = 32  # parsed requests waiting behind a busy one; then reading pauses
BODY_HIGH_WATER = 128 * 1024  # unread body bytes per connection; then reading pauses
BODY_LOW_WATER = 64 * 1024  # ... and resumes at this

_SINGLETONS = frozenset({b"content-length", b"content-location", b"content-range",
                         b"content-type", b"etag", b"host", b"max-forwards", b"server",
                         b"transfer-encoding", b"user-agent"})
_VERSIONS = {"1.1": (1, 1), "1.0": (1, 0)}
_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
# No singleton header seen yet: shared and immutable (on_header makes a set).
_NO_NAMES: frozenset[bytes] = frozenset()
# Not singletons, but looked up once the headers are complete: a request
# without any (nearly all) skips the lookups.
_NOTED = frozenset({b"content-encoding", b"sec-websocket-key1"})
_METHOD_NAMES = {m.encode("ascii"): m for m in ("GET", "HEAD", "POST", "PUT", "PATCH",
                                                "DELETE", "OPTIONS")}


_HEAD, _IDLE = 1, 2  # what a connection's deadline is for


class HeadReader:
    """httptools' callbacks, flow control and deadlines of a lean connection
    (a base of gateway.edge._lean.LeanConnection, whose __init__ sets these slots)."""

    __slots__ = ("_body", "_deadline", "_fresh", "_in_head", "_lines", "_max_field", "_max_lines",
                 "_max_url", "_noted", "_parser", "_paused", "_progress", "_queue", "_raw",
                 "_refusal", "_remaining", "_seen", "_stop", "_tail", "_task", "_url", "_url_len",
                 "buffered", "loop", "server", "transport")

    # The slots of the reading side, and of the connection's state it reads or sets.
    server: DataServer
    transport: asyncio.Transport | None
    buffered: int
    loop: asyncio.AbstractEventLoop
    _parser: httptools.HttpRequestParser
    _max_url: int
    _max_field: int
    _max_lines: int
    _progress: bool
    _in_head: bool
    _url: list[bytes]
    _url_len: int
    _lines: int
    _raw: list[tuple[bytes, bytes]]
    _seen: set[bytes] | frozenset[bytes]
    _noted: bool
    _body: Body | None
    _remaining: int
    _fresh: list[LeanRequest]
    _refusal: _Refused | None
    _stop: bool
    _paused: bool
    _queue: list[LeanRequest | Unparsed]
    _tail: bytes
    _task: asyncio.Task[None] | None
    _deadline: int

    # -- httptools' callbacks -------------------------------------------------------
    def _refuse(self, status: int, reason: str) -> None:
        self._refusal = _Refused(status, reason)
        raise self._refusal

    def on_message_begin(self) -> None:
        self._progress = True
        self._in_head = True
        # _url, _raw and _seen are empty: made so at start and when the last
        # message's headers were complete.
        self._url_len = 0
        self._lines = 0
        self._arm(_HEAD)  # the first byte of a request: its headers must follow in time

    def on_url(self, part: bytes) -> None:
        self._progress = True
        self._url_len += len(part)
        if self._url_len > self._max_url:
            self._refuse(414, "request-line-too-long")
        self._url.append(part)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._progress = True
        max_field = self._max_field
        if len(name) > max_field or len(value) > max_field or (
                not self._lines and len(name) + len(value) > max_field):
            # As aiohttp's parser: the name and the value each within the
            # limit, and the first line's name and value together.
            self._refuse(431, "header-too-long")
        self._lines += 1
        if self._lines > self._max_lines:
            self._refuse(431, "too-many-headers")
        if not self._in_head:
            return  # a trailer: counted, not kept (as aiohttp)
        lname = name.lower()
        if lname in _SINGLETONS:
            seen = self._seen
            if lname in seen:
                self._refuse(400, "http-parse-error")
            if not isinstance(seen, set):
                seen = self._seen = set()
            seen.add(lname)
        elif lname in _NOTED:
            self._noted = True
        self._raw.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        self._progress = True
        self._in_head = False
        if self._deadline == _HEAD:
            self._disarm()
        parser = self._parser
        raw_method = parser.get_method()
        method = _METHOD_NAMES.get(raw_method) or raw_method.decode("ascii")
        version = _VERSIONS.get(parser.get_http_version())
        if version is None:
            major, _, minor = parser.get_http_version().partition(".")
            version = (int(major), int(minor))
        raw_headers = tuple(self._raw)
        url = self._url
        target = (url[0] if len(url) == 1 else b"".join(url)).decode("utf-8", "surrogateescape")
        # The singletons seen (lower-case names) say which framing headers
        # there are without asking the multidict.
        seen, noted = self._seen, self._noted
        # Not kept while the connection idles (the request holds what it needs).
        self._url, self._raw, self._seen, self._noted = [], [], _NO_NAMES, False
        headers = CIMultiDictProxy(CIMultiDict([
            (n.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
            for n, v in raw_headers])) if raw_headers else _NO_HEADERS
        if not target_form_ok(method, target):
            self._refuse(400, "http-parse-error")
        if version == (1, 1) and b"host" not in seen:
            self._refuse(400, "http-parse-error")
        if noted and "Sec-WebSocket-Key1" in headers:
            self._refuse(400, "http-parse-error")  # the old WebSocket handshake (aiohttp)
        chunked = b"transfer-encoding" in seen
        length = headers.get("Content-Length") if b"content-length" in seen else None
        has_body = chunked or (length is not None and int(length) > 0)
        encoding = None
        if has_body and noted and "Content-Encoding" in headers:
            # As aiohttp: gzip and deflate are decoded (the last of the
            # header's values), br and zstd refused (not installed), any
            # other coding left as it is.
            coding = headers.getall("Content-Encoding")[-1].lower()
            if coding in ("gzip", "deflate"):
                encoding = coding
            elif coding in ("br", "zstd"):
                self._refuse(400, "http-parse-error")
        keep_alive = parser.should_keep_alive()
        if parser.should_upgrade() or method == "CONNECT":
            if has_body:
                self._refuse(400, "http-parse-error")  # its body would be read as the next request
            keep_alive = False
        body = Body(self, encoding) if has_body else NO_BODY
        self._body = body if has_body else None
        self._remaining = int(length) if has_body and not chunked and length is not None else 0
        self._fresh.append(LeanRequest(self, method, target, version, headers, raw_headers,
                                       body, keep_alive))

    def on_body(self, data: bytes) -> None:
        self._progress = True
        if self._remaining:
            self._remaining -= len(data)
        if self._body is not None:
            self._body.feed(data)

    def on_chunk_header(self) -> None:
        self._progress = True

    def on_chunk_complete(self) -> None:
        self._progress = True

    def on_message_complete(self) -> None:
        self._progress = True
        self._in_head = False
        self._remaining = 0
        if self._body is not None:
            self._body.feed_eof()
            self._body = None
        if not self._parser.should_keep_alive():
            self._stop = True  # the last request: nothing after it is read


    # -- flow control -------------------------------------------------------------
    def flow(self) -> None:
        transport = self.transport
        if transport is None:
            return
        if self._paused:
            if (self.buffered <= BODY_LOW_WATER and len(self._queue) <= MAX_PIPELINED // 2
                    and not self._tail):
                self._paused = False
                transport.resume_reading()
        elif (self.buffered > BODY_HIGH_WATER or len(self._queue) >= MAX_PIPELINED
              or self._tail):
            self._paused = True
            transport.pause_reading()

    # -- deadlines ----------------------------------------------------------------
    def _arm(self, kind: int) -> None:
        edge = self.server.edge
        self._deadline = kind
        self.server.wait_for_headers(
            self, edge.header_timeout_s if kind == _HEAD else edge.keepalive_timeout_s)

    def _disarm(self) -> None:
        if self._deadline:
            self._deadline = 0
            self.server.got_headers(self)

    def gw_header_timeout(self) -> None:
        """Called by the server's sweep once the deadline has passed."""
        kind, self._deadline = self._deadline, 0
        transport = self.transport
        if transport is None:
            return
        if kind == _HEAD:
            if self._paused:
                self._arm(_HEAD)  # we stopped reading, not the client: not its fault
                return
            self.server.on_header_timeout()
            transport.abort()
        elif kind == _IDLE and self._task is None and not self._queue and not self._in_head:
            transport.close()
