"""The lean HTTP/1.1 server of the data listener: an ``asyncio.Protocol``
over httptools (llhttp, the C parser uvicorn uses) that hands each request
to the data plane and writes its :class:`~gateway.edge._answer.Answer` itself. aiohttp's
``web.Server``/``RequestHandler`` machinery stays for the admin and ops
planes; ``[gateway] http_server = "aiohttp"`` puts the data plane back on it.

The same strictness as the aiohttp path (tests/e2e/test_edge_limits.py runs
on either), rule by rule:

- llhttp in its strict mode: bare CR or LF, obs-fold, NUL, whitespace
  before a colon, CL+TE, duplicate or signed Content-Length, a final
  coding other than chunked: 400 ``http-parse-error``; an unknown method:
  501 ``method-unknown``. The connection closes after the refusal.
- What aiohttp's parser adds on top of llhttp, checked here: the request
  target longer than ``max_url_bytes`` (414), a header name or value
  longer than ``max_header_bytes`` (the first line's name and value
  together, as aiohttp counts them) (431), more header lines
  than ``max_headers + 2`` (431; the pipeline checks the exact count), a
  repeated singleton header (Host, Content-Type, ...), HTTP/1.1 without
  Host, a target that is neither origin-, absolute- (with a host),
  authority- (CONNECT) nor asterisk-form (OPTIONS): 400.
- Memory: httptools keeps the header line it is reading whole, so bytes
  that arrive without the parser getting anywhere (no target, header, body
  or chunk event) are counted; past two header sizes the line is refused
  (431) whatever it is. A request's unread body pauses reading past
  ``BODY_HIGH_WATER`` bytes, and ``MAX_PIPELINED`` parsed requests waiting
  behind a busy one likewise.
- Deadlines: the header deadline (slowloris) runs from connect and from the
  first byte of every next request to the end of its headers; an idle
  keep-alive connection closes after ``keepalive_timeout_s``. Both are swept
  by the server's one timer (gateway.edge._listeners.GuardedServer).
- Pipelined requests are answered in order, one handler task each; a
  response forced closed (refusals of framing the gateway does not trust)
  ends the connection, and nothing after it is read.

Where it differs from aiohttp (on purpose; docs/architecture.md, "The data
listener's HTTP server"): an Upgrade (or CONNECT) request is answered and
the connection closed (with a declared body: 400), where aiohttp went on
reading HTTP after it; a framing error in a body being read, and a gzip or
deflate body that does not decode (or is truncated, or has bytes after its
end), is a 400 at once, where aiohttp waited for the body timeout or
answered 500.

The request it hands on and its body are in :mod:`gateway.edge._lean_request`,
the request-target forms and the response's serialization in
:mod:`gateway.edge._lean_wire`, httptools' callbacks (the checks of a
request's head), flow control and the deadlines in
:mod:`gateway.edge._lean_head`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, cast

import httptools

from gateway.edge._answer import Answer
from gateway.edge._lean_head import (
    _HEAD,
    _IDLE,
    _NO_HEADERS,
    _NO_NAMES,
    MAX_PIPELINED,
    HeadReader,
)
from gateway.edge._lean_request import NO_BODY, Body, LeanRequest, Unparsed, _Refused
from gateway.edge._lean_wire import serialize

if TYPE_CHECKING:
    from aiohttp import web

    from gateway.edge._listeners import DataServer

log = logging.getLogger("gateway.edge")

LINGER_S = 10.0  # an unread body is read and dropped this long before the next request
BIG_BODY = 64 * 1024  # larger bodies are written apart from their head (no copy)
SLICE = 4096  # bytes parsed at a time (but for the rest of a body of known length)


def incident_of(response: Answer | web.StreamResponse) -> dict[str, str]:
    """The log fields of a request's refusal: its incident id, which the data
    plane's answers carry as ``X-Request-Id`` (gateway.logs)."""
    incident = response.headers.get("X-Request-Id")
    return {"incident": incident} if incident else {}


class LeanConnection(HeadReader, asyncio.Protocol):
    """One data-plane connection. Slotted: an idle connection's Python part
    is this object, its parser and its place in the deadline sweep (an
    instance dict of its 35 attributes, these slots and HeadReader's, past
    CPython's 30 shared keys, was ≈ 1.5 KiB of each idle connection;
    bench/README). What the edge
    keeps per connection (the certificate's reading, the resolved caller)
    lives in ``gw_kept`` (gateway.edge._peer.PerConnection)."""

    __slots__ = ("_admitted", "_closing", "_drained", "_pumping", "_stalled", "_stalled_max",
                 "_tenant", "_write_paused", "gw_kept")

    def __init__(self, server: DataServer) -> None:
        self.server = server
        self.loop = server.loop
        edge = server.edge
        self._max_url = edge.max_url_bytes
        self._max_field = edge.max_header_bytes
        self._max_lines = edge.max_headers + 2  # as aiohttp's parser (EdgeLimits.server_kwargs)
        self._stalled_max = 2 * edge.max_header_bytes + 64
        self.transport: asyncio.Transport | None = None
        self.buffered = 0  # unread body bytes of all this connection's requests
        self._parser = httptools.HttpRequestParser(self)
        self._admitted = False
        self._tenant = ""
        self.gw_kept: dict[str, object] | None = None  # made by the first keeper
        # Parsing.
        self._url: list[bytes] = []
        self._url_len = 0
        self._raw: list[tuple[bytes, bytes]] = []
        self._lines = 0  # header lines of this message (trailers included, as aiohttp)
        self._seen: set[bytes] | frozenset[bytes] = _NO_NAMES  # singleton headers seen
        self._noted = False  # a header of _NOTED seen
        self._in_head = False  # a message has begun and its headers are not complete
        self._body: Body | None = None  # the body being parsed
        self._fresh: list[LeanRequest] = []  # headers complete in this data_received
        self._progress = False  # the parser got somewhere in this data_received
        self._stalled = 0  # bytes received since it last did
        self._remaining = 0  # of the body being parsed, when its length is known
        self._tail = b""  # what is left of a read while MAX_PIPELINED requests wait
        self._pumping = False
        self._refusal: _Refused | None = None  # raised from a callback
        self._stop = False  # nothing more is parsed (closing message, error, upgrade)
        # Serving.
        # A list, not a deque: it holds at most MAX_PIPELINED, and an empty
        # list is 56 bytes where a deque is 600 (one per idle connection).
        self._queue: list[LeanRequest | Unparsed] = []
        self._task: asyncio.Task[None] | None = None
        self._closing = False  # no next request (drain, or a response forced closed)
        self._paused = False  # reading paused by flow control
        self._write_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._deadline = 0  # _HEAD, _IDLE or 0

    # -- the connection ---------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is no asyncio.Transport subclass, only alike.
        self.transport = transport = cast(asyncio.Transport, transport)
        book = self.server.book
        self._tenant = book.tenant_of(transport)
        self._admitted = book.admit(self._tenant)
        self.server.lean_opened(self)
        if not self._admitted:
            # SECURITY: over the connection cap: closed before any HTTP byte,
            # and nothing that arrived with the handshake is parsed (asyncio's
            # TLS transport still delivers it after the close).
            self._stop = True
            transport.close()
            return
        # TCP keep-alive: inherited from the listening socket (TlsSite).
        edge = self.server.edge
        if edge.keepalive_timeout_s < edge.header_timeout_s:
            self._arm(_IDLE)
        else:
            self._arm(_HEAD)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        self._disarm()
        if self._admitted:
            self.server.book.release(self._tenant)
            self._admitted = False
        self._stop = True
        self._tail = b""
        gone = ConnectionResetError("Connection lost")
        if self._body is not None:
            self._body.fail(gone)
        for item in self._queue:
            if isinstance(item, LeanRequest):
                item.content.fail(gone)
        self._queue.clear()
        for request in self._fresh:
            request.content.fail(gone)
        self._fresh.clear()
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)
        if self._task is None:
            self.server.lean_closed(self)
        # A handler still running finishes (its answer goes nowhere), as
        # aiohttp's do: it may be reading a body, which now fails.

    def eof_received(self) -> bool | None:
        return None  # the transport closes (as aiohttp's handler)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    # -- parsing ------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._stop:
            return
        if self._tail:
            self._tail += data  # delivered after reading paused (bounded by one read)
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        """Parse one read. httptools cannot stop in the middle of one, so it
        gets ``SLICE`` bytes at a time (the rest of a body of known length
        at once): once ``MAX_PIPELINED`` requests wait, the rest of the read
        is kept and reading paused until they are answered, as aiohttp's
        parser pauses (one read of tiny pipelined requests is thousands)."""
        end = len(data)
        # A read within one slice (most are) needs no view: a slice of bytes
        # that covers them all is the same object, not a copy.
        view = data if end <= SLICE else memoryview(data)
        pos = 0
        try:
            while pos < end:
                if len(self._queue) + len(self._fresh) >= MAX_PIPELINED:
                    self._tail = bytes(view[pos:])
                    break
                piece = view[pos:pos + (self._remaining or SLICE)]
                pos += len(piece)
                self._progress = False
                self._parser.feed_data(piece)
                if self._progress:
                    self._stalled = 0
                    continue
                self._stalled += len(piece)
                if self._stalled > self._stalled_max:
                    # Nothing parsed for more than a header line may hold: a
                    # line httptools would keep growing in memory.
                    self._failed(_Refused(431, "header-too-long") if self._in_head or
                                 self._body is not None else _Refused(400, "http-parse-error"))
                    return
        except httptools.HttpParserUpgrade:
            # The upgrade (or CONNECT) request is complete: it is answered and
            # the connection closed; what follows is never read as HTTP.
            self._stop = True
            self._tail = b""
        except httptools.HttpParserError as exc:
            self._failed(exc)
            return
        if self._fresh:
            self._queue.extend(self._fresh)
            self._fresh.clear()
            self._next_request()
        self.flow()

    def _pump(self) -> None:
        """Parse what was kept of a read, now that fewer requests wait."""
        while (self._tail and not self._pumping and not self._stop
               and len(self._queue) <= MAX_PIPELINED // 2):
            tail, self._tail = self._tail, b""
            self._pumping = True
            try:
                self._feed(tail)
            finally:
                self._pumping = False

    def _failed(self, exc: Exception) -> None:
        """The parser refused the stream (llhttp in strict mode also refuses
        bytes after a request that closes the connection): the refusal is
        answered after the requests of earlier reads; those of this read
        are dropped with it, as aiohttp does; nothing more is read."""
        refusal = exc if isinstance(exc, _Refused) else self._refusal
        self._refusal = None
        self._stop = True
        if refusal is None:
            if isinstance(exc, httptools.HttpParserInvalidMethodError):
                refusal = _Refused(501, "method-unknown")
            elif isinstance(exc, httptools.HttpParserCallbackError):
                # Not a refusal of ours: a bug in a callback below.
                log.error("error parsing a request", exc_info=exc.__context__ or exc)
                refusal = _Refused(500, "internal-error")
            else:
                refusal = _Refused(400, "http-parse-error")
        body, self._body = self._body, None
        if body is not None:
            # A request of an earlier read whose body was being parsed: its
            # handler's reading fails, and the handler refuses it.
            body.fail(refusal)
        for request in self._fresh:
            request.content.discard()
        self._fresh.clear()
        self._tail = b""
        self._remaining = 0
        self._queue.append(Unparsed(refusal.status, refusal.reason))
        self._disarm()
        self._next_request()

    # -- serving ------------------------------------------------------------------
    def _next_request(self) -> None:
        """Serve the next request waiting, if none is being served; else
        the connection is idle (or closes, when it takes no more)."""
        if self._task is not None or self.transport is None:
            return
        if self._queue and not self._closing:
            self._task = self.loop.create_task(self._serve(self._queue.pop(0)))
            if self._tail:
                self._pump()
            self.flow()
        elif self._closing:
            self.transport.close()
        else:
            if self._tail:
                self._pump()
            if self._task is None and not self._in_head and not self._deadline:
                self._arm(_IDLE)

    async def _serve(self, item: LeanRequest | Unparsed) -> None:
        """One request's task: answer it, write the answer, then start the next."""
        again = False
        try:
            if isinstance(item, Unparsed):
                request = self._unparsed_request()
                response = self._refuse_unparsed(request, item.status, item.reason)
            else:
                request = item
                # The data plane's answer, in this coroutine (one of its own
                # would be one more frame to make and to resume per request).
                try:
                    response = await self.server.plane.handle(request)
                except Exception as exc:
                    response = self._failed_answer(request, exc)
                if not isinstance(response, Answer) or not isinstance(response.body,
                                                                      bytes | bytearray):
                    log.error("the data plane answered %r: not an Answer with bytes", response)
                    response = self._refuse_unparsed(request, 500, "internal-error")
            again = await self._send(request, response)
        except Exception:
            log.exception("unhandled error serving a request")
            if self.transport is not None:
                self.transport.close()
        finally:
            self._task = None
            if self.transport is None:
                self.server.lean_closed(self)
            elif again:
                self._next_request()

    def _failed_answer(self, request: LeanRequest, exc: Exception) -> Answer:
        """The refusal of what failed under the data plane (the same statuses
        and reasons as the aiohttp path's handle_error)."""
        if isinstance(exc, _Refused):  # the body's framing failed while it was read
            return self._refuse_unparsed(request, exc.status, exc.reason)
        if isinstance(exc, ConnectionError):
            # The caller hung up and the handler failed on it: accounted and
            # audited, not logged (nobody reads the answer).
            return self._refuse_unparsed(request, 400, "client-gone")
        if isinstance(exc, TimeoutError):
            response = self._refuse_unparsed(request, 504, "internal-error")
        else:
            response = self._refuse_unparsed(request, 500, "internal-error")
        log.error("error handling request", exc_info=exc, extra=incident_of(response))
        return response

    def _refuse_unparsed(self, request: LeanRequest, status: int, reason: str) -> Answer:
        response = self.server.refuse(request, status, reason)
        assert isinstance(response, Answer)  # a DataHandler's refuse_unparsed
        response.force_close()
        return response

    def _unparsed_request(self) -> LeanRequest:
        # What aiohttp hands its error handler: no method, target or headers known.
        return LeanRequest(self, "UNKNOWN", "/", (1, 0), _NO_HEADERS, (), NO_BODY, False)

    async def _send(self, request: LeanRequest, response: Answer) -> bool:
        """Write the answer; True when the connection takes a next request."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        keep_alive = (request.keep_alive and response.keep_alive is not False
                      and not self._closing)
        try:
            head, body = serialize(request, response, keep_alive)
        except ValueError:
            log.exception("unsendable answer")
            transport.close()
            return False
        if len(body) > BIG_BODY:
            transport.write(head)
            transport.write(body)
        else:
            transport.write(head + body if body else head)
        if self._write_paused and self.transport is not None:
            self._drained = self.loop.create_future()
            try:
                await self._drained
            finally:
                self._drained = None
        if self.transport is None:
            return False
        if not keep_alive:
            self._closing = True
            self._stop = True
            self.transport.close()
            return False
        content = request.content
        if not content.done:
            # The handler left part of the body unread: it is read and dropped
            # (for a while) so that the next request can be parsed.
            content.discard()
            self.flow()
            try:
                await asyncio.wait_for(content.wait_done(), LINGER_S)
            except TimeoutError:
                if self.transport is not None:
                    self.transport.close()
                return False
        return self.transport is not None

    # -- drain (gateway stop) -----------------------------------------------------
    def close(self) -> None:
        """Stop taking requests: an idle connection closes now, a busy one
        after its answer."""
        self._closing = True
        if self._task is None and self.transport is not None:
            self.transport.close()

    async def shutdown(self, timeout_s: float | None) -> None:
        """Let the request in flight finish within ``timeout_s``, then end it."""
        self._closing = True
        task = self._task
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=timeout_s)
            if not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=1)
        if self.transport is not None:
            self.transport.close()
